"""Every kind of bad file is rejected with its name and a reason, stores nothing, and does not
stop the good files of the same upload."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client
from PIL import Image as PILImage

from retrieval.models import Image
from tests.retrieval.conftest import (
    image_bytes,
    png_header_only,
    polyglot_bytes,
    stored_files,
    zip_bytes,
)

pytestmark = pytest.mark.django_db

SVG_WITH_SCRIPT = b'<svg xmlns="http://www.w3.org/2000/svg"><script>alert(1)</script></svg>'


def upload(client: Client, collection_id: int, files: dict[str, bytes], **data: str):
    payload = [SimpleUploadedFile(name, content) for name, content in files.items()]
    return client.post(f"/api/v1/collections/{collection_id}/images/", {"files": payload, **data})


@pytest.fixture
def curator_client(client: Client, curator, password: str) -> Client:
    client.login(username=curator.username, password=password)
    return client


def tiff_bytes() -> bytes:
    out = io.BytesIO()
    PILImage.new("RGB", (20, 20), (1, 2, 3)).save(out, format="TIFF")
    return out.getvalue()


BAD_FILES = {
    "empty.png": (b"", "empty file"),
    "notes.jpg": (b"just some text, not a picture\n" * 10, "not an image in an allowed format"),
    "truncated.png": (image_bytes(size=300)[:200], "corrupt or truncated"),
    "drawing.svg": (SVG_WITH_SCRIPT, "not an image in an allowed format"),
    "script.png": (SVG_WITH_SCRIPT, "not an image in an allowed format"),
    "scan.jpg": (tiff_bytes(), "not an image in an allowed format"),
    "bomb.png": (png_header_only(20000, 20000), "decompression bomb"),
    # Valid images that a content-sniffing browser could run as a page.
    "page.jpg": (
        polyglot_bytes(b"<html><script>alert(document.cookie)</script></html>"),
        "contains HTML markup ('<html' at byte",
    ),
    "upper.png": (
        polyglot_bytes(b"<!DOCTYPE HTML><BODY onload=alert(1)>", "PNG"),
        "contains HTML markup ('<!DOCTYPE HTML'",
    ),
    "vector.gif": (polyglot_bytes(b"<svg/onload=alert(1)>", "GIF"), "a polyglot file is not"),
    "frame.jpg": (polyglot_bytes(b"x <IFRAME src=//evil>"), "contains HTML markup ('<IFRAME'"),
    "feed.png": (polyglot_bytes(b'<?xml version="1.0"?>', "PNG"), "contains HTML markup"),
}


@pytest.mark.parametrize("name", sorted(BAD_FILES))
def test_bad_file_is_rejected_and_the_good_one_stored(
    curator_client: Client, collection, media_root: Path, name: str
) -> None:
    content, reason = BAD_FILES[name]
    response = upload(curator_client, collection.pk, {"good.png": image_bytes(), name: content})
    assert response.status_code == 201
    body = response.json()
    assert len(body["created"]) == 1
    assert [r["name"] for r in body["rejected"]] == [name]
    assert reason in body["rejected"][0]["error"]
    image = Image.objects.get(collection=collection)
    assert image.original_name == "good.png"
    # The good image and its thumbnail, nothing else.
    assert {p.name for p in stored_files(media_root)} == {
        Path(str(image.file.name)).name,
        Path(str(image.thumbnail.name)).name,
    }


def test_an_upload_of_only_bad_files_is_a_400_and_stores_nothing(
    curator_client: Client, collection, media_root: Path
) -> None:
    response = upload(curator_client, collection.pk, {"a.jpg": b"<html>hi</html>", "b.png": b""})
    assert response.status_code == 400
    assert {r["name"] for r in response.json()["rejected"]} == {"a.jpg", "b.png"}
    assert not Image.objects.exists()
    assert stored_files(media_root) == []


@pytest.mark.parametrize(
    "text", [b"a<b and c>d", b"<svgs>", b"<htm>", b"<p>caption</p>", b"<script", b"HTML body"]
)
def test_text_that_is_no_html_tag_is_not_a_polyglot(
    curator_client: Client, collection, text: bytes
) -> None:
    # Comments with "<" that sniffers would not take for a document are common in real photos.
    response = upload(curator_client, collection.pk, {"ok.jpg": polyglot_bytes(text)})
    assert response.status_code == 201, response.json()
    assert response.json()["rejected"] == []


def test_a_polyglot_zip_entry_is_rejected_and_the_rest_stored(
    curator_client: Client, collection, media_root: Path
) -> None:
    archive = zip_bytes(
        {"ok.png": image_bytes(), "page.jpg": polyglot_bytes(b"<script>alert(1)</script>")}
    )
    response = upload(curator_client, collection.pk, {"set.zip": archive})
    assert response.status_code == 201
    [rejected] = response.json()["rejected"]
    assert rejected["name"] == "set.zip:page.jpg"
    assert "a polyglot file is not accepted" in rejected["error"]
    assert list(Image.objects.values_list("original_name", flat=True)) == ["set.zip:ok.png"]
    assert len(stored_files(media_root)) == 2


def test_an_upload_of_only_a_polyglot_is_a_400_and_stores_nothing(
    curator_client: Client, collection, media_root: Path
) -> None:
    response = upload(curator_client, collection.pk, {"page.html": polyglot_bytes(b"<html>x")})
    assert response.status_code == 400
    [rejected] = response.json()["rejected"]
    assert rejected["name"] == "page.html"
    assert rejected["error"].startswith("contains HTML markup")
    assert not Image.objects.exists()
    assert stored_files(media_root) == []


def test_pixels_over_the_configured_limit_are_a_decompression_bomb(
    curator_client: Client, collection, settings
) -> None:
    settings.AUTORET_MAX_IMAGE_PIXELS = 50 * 50
    response = upload(curator_client, collection.pk, {"big.png": image_bytes(size=60)})
    assert response.status_code == 400
    error = response.json()["rejected"][0]["error"]
    assert error == "decompression bomb: 60x60 pixels is over the limit of 2500"


def test_file_over_the_byte_limit_is_rejected(curator_client: Client, collection, settings) -> None:
    small = image_bytes(size=10)
    settings.AUTORET_MAX_UPLOAD_BYTES = len(small)
    response = upload(
        curator_client, collection.pk, {"small.png": small, "large.png": image_bytes(size=200)}
    )
    assert response.status_code == 201
    [rejected] = response.json()["rejected"]
    assert rejected["name"] == "large.png"
    assert "over the limit" in rejected["error"]
    assert list(Image.objects.values_list("original_name", flat=True)) == ["small.png"]


def test_zip_slip_entries_are_rejected_and_the_rest_stored(
    curator_client: Client, collection, media_root: Path
) -> None:
    archive = zip_bytes(
        {
            "../x.png": image_bytes((1, 1, 1)),
            "/abs.png": image_bytes((2, 2, 2)),
            "shoes/deep/ok.png": image_bytes((3, 3, 3)),
            "__MACOSX/shoes/._ok.png": b"resource fork",
            ".DS_Store": b"finder",
        }
    )
    response = upload(curator_client, collection.pk, {"set.zip": archive}, labels="true")
    assert response.status_code == 201
    rejected = {r["name"]: r["error"] for r in response.json()["rejected"]}
    assert set(rejected) == {"set.zip:../x.png", "set.zip:/abs.png"}
    assert "'..'" in rejected["set.zip:../x.png"]
    assert "absolute path" in rejected["set.zip:/abs.png"]
    image = Image.objects.get()
    assert (image.original_name, image.label) == ("set.zip:shoes/deep/ok.png", "deep")
    # Nothing was written outside the media folder.
    assert not (media_root.parent / "x.png").exists()
    assert len(stored_files(media_root)) == 2


def test_zip_bomb_over_the_expanded_limit_is_rejected_whole(
    curator_client: Client, collection, settings
) -> None:
    settings.AUTORET_MAX_ZIP_BYTES = 100_000
    archive = zip_bytes({"ok.png": image_bytes(), "zeros.png": b"\0" * 1_000_000})
    assert len(archive) < 10_000  # tiny on the wire, a megabyte expanded
    response = upload(
        curator_client, collection.pk, {"bomb.zip": archive, "loose.png": image_bytes((9, 9, 9))}
    )
    assert response.status_code == 201
    [rejected] = response.json()["rejected"]
    assert rejected["name"] == "bomb.zip"
    assert "over the limit of 100000" in rejected["error"]
    assert list(Image.objects.values_list("original_name", flat=True)) == ["loose.png"]


def test_too_many_files_in_one_upload(curator_client: Client, collection, settings) -> None:
    # Each zip fits the cap; together they pass it: what fits is stored, the rest named.
    settings.AUTORET_MAX_FILES_PER_UPLOAD = 3
    first = zip_bytes({f"{i}.png": image_bytes((i, i, i)) for i in range(2)})
    second = zip_bytes({f"{i}.png": image_bytes((i, i, i)) for i in range(2, 4)})
    response = upload(curator_client, collection.pk, {"a.zip": first, "b.zip": second})
    body = response.json()
    assert len(body["created"]) == 3
    assert body["rejected"][0]["name"] == "b.zip:3.png"
    assert "limit of 3 files" in body["rejected"][0]["error"]


def test_duplicates_are_reported_not_stored_twice(
    curator_client: Client, collection, media_root: Path
) -> None:
    first = upload(curator_client, collection.pk, {"a.png": image_bytes()}).json()
    second = upload(
        curator_client,
        collection.pk,
        {"again.png": image_bytes(), "copy.png": image_bytes(), "new.png": image_bytes((0, 0, 1))},
    ).json()
    assert second["duplicates"] == [
        {"name": "again.png", "image_id": first["created"][0]},
        {"name": "copy.png", "image_id": first["created"][0]},
    ]
    assert len(second["created"]) == 1
    assert Image.objects.count() == 2
    assert len(stored_files(media_root)) == 4


def test_duplicate_within_one_upload_is_stored_once(curator_client: Client, collection) -> None:
    body = upload(curator_client, collection.pk, {"a.png": image_bytes(), "b.png": image_bytes()})
    created = body.json()["created"]
    assert body.json()["duplicates"] == [{"name": "b.png", "image_id": created[0]}]


def test_original_bytes_and_a_webp_thumbnail_are_stored(curator_client: Client, collection) -> None:
    original = image_bytes(size=600, fmt="JPEG")
    upload(curator_client, collection.pk, {"photo.jpeg": original})
    image = Image.objects.get()
    assert (image.format, image.width, image.height) == ("JPEG", 600, 600)
    assert str(image.file.name).endswith(".jpg")
    with image.file.open("rb") as f:
        assert f.read() == original
    with PILImage.open(image.thumbnail.path) as thumb:
        assert thumb.format == "WEBP"
        assert max(thumb.size) == 256


def test_failed_transaction_leaves_no_files(
    curator_client: Client, collection, media_root: Path, monkeypatch
) -> None:
    def fail(*args, **kwargs):
        raise RuntimeError("database went away")

    monkeypatch.setattr(Image.objects, "bulk_create", fail)
    with pytest.raises(RuntimeError):
        upload(curator_client, collection.pk, {"a.png": image_bytes()})
    assert stored_files(media_root) == []
