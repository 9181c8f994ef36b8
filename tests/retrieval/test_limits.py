"""Request size, images per collection and files per import: each limit answers with a clear
refusal, stores nothing over it, and keeps what fits."""

from __future__ import annotations

import functools
import json
import zipfile
from pathlib import Path

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.core.management import call_command
from django.test import Client

from retrieval.models import Image
from tests.retrieval.conftest import image_bytes, stored_files, zip_bytes

pytestmark = pytest.mark.django_db


@pytest.fixture
def curator_client(client: Client, curator) -> Client:
    client.force_login(curator)
    return client


def upload(client: Client, url: str, files: dict[str, bytes]):
    return client.post(url, {"files": [SimpleUploadedFile(n, d) for n, d in files.items()]})


def colours(n: int, start: int = 0) -> dict[str, bytes]:
    return {f"{i}.png": image_bytes((i, 100, 200)) for i in range(start, start + n)}


def test_a_body_over_the_request_limit_is_a_413_in_json_and_stores_nothing(
    curator_client: Client, collection, settings, media_root: Path
) -> None:
    settings.AUTORET_MAX_REQUEST_BYTES = 2000
    response = upload(
        curator_client, f"/api/v1/collections/{collection.pk}/images/", {"a.png": b"x" * 5000}
    )
    assert response.status_code == 413
    assert "over the limit of 2000 bytes" in response.json()["detail"]
    assert not Image.objects.exists()
    assert stored_files(media_root) == []


def test_a_page_over_the_request_limit_gets_a_413_page(
    curator_client: Client, collection, settings
) -> None:
    settings.AUTORET_MAX_REQUEST_BYTES = 2000
    response = upload(curator_client, f"/collections/{collection.pk}/upload/", {"a": b"x" * 5000})
    assert response.status_code == 413
    assert response["Content-Type"].startswith("text/html")
    assert b"Request too large" in response.content
    assert not Image.objects.exists()


def test_a_json_body_over_the_form_limit_is_a_413_not_a_crash(
    client: Client, annotator, settings
) -> None:
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 1024
    client.force_login(annotator)
    response = client.post(
        "/api/v1/collections/",
        json.dumps({"name": "x" * 5000}),
        content_type="application/json",
    )
    assert response.status_code == 413
    assert "the limit is 1024 bytes" in response.json()["detail"]


def test_an_import_over_the_collection_cap_stores_what_fits_and_names_the_rest(
    curator_client: Client, collection, settings
) -> None:
    settings.AUTORET_MAX_IMAGES_PER_COLLECTION = 3
    url = f"/api/v1/collections/{collection.pk}/images/"
    assert len(upload(curator_client, url, colours(1)).json()["created"]) == 1
    files = colours(4, start=1) | {"again.png": image_bytes((0, 100, 200))}
    body = upload(curator_client, url, files).json()
    assert len(body["created"]) == 2
    assert [d["name"] for d in body["duplicates"]] == ["again.png"]
    assert {r["name"] for r in body["rejected"]} == {"3.png", "4.png"}
    for rejected in body["rejected"]:
        assert rejected["error"] == "the collection is full: it holds the limit of 3 images"
    assert Image.objects.filter(collection=collection).count() == 3
    # Full: a new image is refused with a 400, a known one is still a duplicate.
    response = upload(curator_client, url, colours(1, start=9))
    assert response.status_code == 400
    assert "collection is full" in response.json()["rejected"][0]["error"]


def test_two_imports_at_once_cannot_pass_the_collection_cap_together(collection, settings) -> None:
    from retrieval.imports import Candidate, Limits, import_items

    settings.AUTORET_MAX_IMAGES_PER_COLLECTION = 3
    other = colours(2, start=10)

    def read_while_another_import_stores() -> bytes:
        # This import counted its room (3) before; the other one fills two places meanwhile.
        import_items(
            collection, (Candidate(n, functools.partial(bytes, d)) for n, d in other.items())
        )
        return image_bytes((0, 100, 200))

    items = [Candidate("first.png", read_while_another_import_stores)]
    items += [Candidate(n, functools.partial(bytes, d)) for n, d in colours(2, start=1).items()]
    report = import_items(collection, iter(items), Limits.from_settings())
    assert Image.objects.filter(collection=collection).count() == 3
    assert len(report.created) == 1
    assert [reason for _, reason in report.rejected] == [
        "the collection is full: it holds the limit of 3 images"
    ] * 2


def test_a_full_collection_refuses_a_second_copy_within_the_upload_too(
    curator_client: Client, collection, settings
) -> None:
    settings.AUTORET_MAX_IMAGES_PER_COLLECTION = 1
    same = image_bytes((5, 5, 5))
    files = {"a.png": image_bytes((1, 1, 1)), "b.png": same, "c.png": same}
    body = upload(curator_client, f"/api/v1/collections/{collection.pk}/images/", files).json()
    assert len(body["created"]) == 1
    assert {r["name"] for r in body["rejected"]} == {"b.png", "c.png"}


def test_the_collection_cap_holds_for_the_import_command(
    collection, settings, tmp_path: Path
) -> None:
    settings.AUTORET_MAX_IMAGES_PER_COLLECTION = 2
    archive = tmp_path / "three.zip"
    archive.write_bytes(zip_bytes(colours(3)))
    call_command("import_images", collection.name, str(archive), "--no-embed", verbosity=0)
    assert Image.objects.filter(collection=collection).count() == 2


def test_the_files_per_upload_cap_is_for_the_web_not_the_command(
    collection, settings, tmp_path: Path
) -> None:
    settings.AUTORET_MAX_FILES_PER_UPLOAD = 2
    archive = tmp_path / "three.zip"
    archive.write_bytes(zip_bytes(colours(3)))
    call_command("import_images", collection.name, str(archive), "--no-embed", verbosity=0)
    assert Image.objects.filter(collection=collection).count() == 3


def test_a_zip_with_more_files_than_the_upload_cap_is_refused_whole_up_front(
    curator_client: Client, collection, settings, monkeypatch
) -> None:
    settings.AUTORET_MAX_FILES_PER_UPLOAD = 2
    archive = zip_bytes(colours(5))
    opened: list[str] = []
    real_open = zipfile.ZipFile.open

    def tracking_open(self, member, *args, **kwargs):
        opened.append(str(member))
        return real_open(self, member, *args, **kwargs)

    monkeypatch.setattr(zipfile.ZipFile, "open", tracking_open)
    response = curator_client.post(
        f"/api/v1/collections/{collection.pk}/images/",
        {"files": [SimpleUploadedFile("many.zip", archive)]},
    )
    assert response.status_code == 400
    [rejected] = response.json()["rejected"]
    assert rejected["name"] == "many.zip"
    assert "zip holds 5 files, over the limit of 2" in rejected["error"]
    assert opened == []
    assert not Image.objects.exists()


@pytest.mark.parametrize("name", ["../../../outside.png", "evil\x00.png.html", "..\\..\\x.png"])
def test_a_hostile_file_name_is_only_a_label_and_the_file_stays_inside_media(
    curator_client: Client, collection, media_root: Path, name: str
) -> None:
    response = upload(
        curator_client, f"/api/v1/collections/{collection.pk}/images/", {name: image_bytes()}
    )
    assert response.status_code == 201, response.content
    image = Image.objects.get()
    assert "\x00" not in image.original_name
    assert "/" not in image.original_name and ".." not in Path(image.original_name).parts
    stored = str(image.file.name)
    assert stored.startswith(f"collections/{collection.pk}/")
    assert stored.endswith(".png")  # by content, whatever the name claimed
    files = stored_files(media_root)
    assert len(files) == 2
    assert all(media_root in f.parents for f in files)
    assert not (media_root.parent / "outside.png").exists()


@pytest.mark.parametrize("name", ["../../../bad.jpg", "bad\x00.jpg"])
def test_a_bad_file_with_a_hostile_name_is_a_400_and_nothing_stored(
    curator_client: Client, collection, media_root: Path, name: str
) -> None:
    response = upload(
        curator_client, f"/api/v1/collections/{collection.pk}/images/", {name: b"<html>x</html>"}
    )
    assert response.status_code == 400
    assert "\x00" not in response.json()["rejected"][0]["name"]
    assert not Image.objects.exists()
    assert stored_files(media_root) == []


def test_more_loose_files_than_the_upload_cap_is_a_clear_400(
    curator_client: Client, collection, settings
) -> None:
    settings.DATA_UPLOAD_MAX_NUMBER_FILES = 2
    response = upload(curator_client, f"/api/v1/collections/{collection.pk}/images/", colours(3))
    assert response.status_code == 400
    assert response.json() == {"detail": "Too many files: the limit is 2 per request."}
    assert not Image.objects.exists()
