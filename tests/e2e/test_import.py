"""In the browser: create a collection, upload a zip of good and bad files, read the report,
open an image, and once the real worker has embedded the upload, see its nearest neighbours."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.retrieval.conftest import image_bytes, zip_bytes

pytestmark = pytest.mark.django_db(transaction=True)


def test_upload_a_zip_see_the_report_open_an_image_and_its_neighbours(
    logged_in_page,
    celery_worker,  # embeds the upload: the upload enqueues it once the request commits
    tmp_path: Path,
) -> None:
    page = logged_in_page
    page.get_by_text("New collection").click()
    page.get_by_label("Name").fill("Browser upload")
    page.get_by_role("button", name="Create collection").click()
    page.get_by_role("heading", name="Browser upload").wait_for()

    archive = tmp_path / "mixed.zip"
    archive.write_bytes(
        zip_bytes(
            {
                "shoes/red.png": image_bytes((220, 20, 20)),
                "shoes/blue.png": image_bytes((20, 20, 220)),
                "shoes/dark-red.png": image_bytes((150, 10, 10)),
                "notes.jpg": b"plain text pretending to be a photo",
                "../escape.png": image_bytes((1, 2, 3)),
            }
        )
    )
    page.set_input_files("#id_files", str(archive))
    page.get_by_role("button", name="Upload").click()
    report = page.locator(".import-report")
    report.wait_for()
    assert "3 created" in report.inner_text()
    rejected = page.locator("ul.rejected").inner_text()
    assert "mixed.zip:notes.jpg" in rejected and "not an image" in rejected
    assert "mixed.zip:../escape.png" in rejected

    page.get_by_role("link", name="Show the new images").click()
    page.locator("a.thumb").first.click()
    page.get_by_role("heading", name="mixed.zip:shoes/red.png").wait_for()
    assert page.get_by_role("button", name="Similar").is_visible()  # a link styled as one
    natural_width = page.locator("img.large-image").evaluate("img => img.naturalWidth")
    assert natural_width == 40  # the original was served to the browser and decoded

    page.get_by_role("button", name="Similar").click()
    page.get_by_role("heading", name="Similar images").wait_for()
    hits = page.locator("#results figure.hit")
    for _ in range(60):  # the worker embeds the three images in a few seconds
        if hits.count():
            break
        page.wait_for_timeout(1000)
        page.reload()
    assert hits.count() == 2, "the two other images of the collection, nearest first"
    distances = [float(d) for d in page.locator("#results .distance").all_inner_texts()]
    assert distances == sorted(distances) and all(d >= 0 for d in distances)
    assert "ImageNet features, untrained" in page.content()
