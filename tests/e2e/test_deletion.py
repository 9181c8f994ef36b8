"""In the browser: tick images on the grid, delete them after the confirmation page, then delete
the collection by typing its name."""

from __future__ import annotations

from pathlib import Path

import pytest

from retrieval.models import Collection, Image
from tests.labeling.conftest import add_images

pytestmark = pytest.mark.django_db(transaction=True)


def test_delete_ticked_images_then_the_collection(
    logged_in_page, live_server, collection, media_root: Path
) -> None:
    images = add_images(collection, 3)
    page = logged_in_page
    page.goto(f"{live_server.url}/collections/{collection.pk}/")
    for image in images[:2]:
        page.get_by_label(f"Select {image.original_name}").check()
    page.get_by_role("button", name="Delete selected…").click()
    page.get_by_role("heading", name="Delete 2 images?").wait_for()
    assert Image.objects.filter(collection=collection).count() == 3  # nothing goes before
    page.get_by_role("button", name="Delete 2 images").click()
    page.get_by_text("Deleted 2 images.").wait_for()
    assert page.locator("a.thumb").count() == 1
    assert list(Image.objects.filter(collection=collection)) == [images[2]]
    assert not (media_root / str(images[0].file.name)).exists()

    page.get_by_role("link", name="Delete collection").click()
    page.get_by_label("Type the collection's name").fill(collection.name)
    page.get_by_role("button", name="Delete this collection").click()
    page.get_by_text(f"Deleted the collection {collection.name}.").wait_for()
    assert not Collection.objects.filter(pk=collection.pk).exists()
    assert not (media_root / "collections" / str(collection.pk)).exists()
