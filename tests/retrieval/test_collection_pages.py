"""Collection pages, image pages and media through the test client, for each member of the cast."""

from __future__ import annotations

import re

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client
from django.urls import reverse

from retrieval import imports
from retrieval.imports import Limits, from_uploads, import_items
from retrieval.models import Collection, Image, Membership
from tests.retrieval.conftest import image_bytes, polyglot_bytes, stored_files

pytestmark = pytest.mark.django_db

POLYGLOT_COMMENT = b"<html><script>alert(document.cookie)</script></html>"


def add_images(collection: Collection, count: int) -> list[int]:
    files = [SimpleUploadedFile(f"{i}.png", image_bytes((i, 0, 0))) for i in range(count)]
    return import_items(collection, from_uploads(files, Limits.from_settings())).created


def login(client: Client, user, password: str) -> Client:
    client.login(username=user.username, password=password)
    return client


def test_home_lists_visible_collections_with_a_status_line(
    client: Client, curator, collection, password: str
) -> None:
    Collection.objects.create(name="Secret")
    html = login(client, curator, password).get("/").content.decode()
    assert collection.name in html
    assert "Secret" not in html
    assert "System status" in html


def test_anyone_signed_in_creates_a_collection_and_administers_it(
    client: Client, outsider, password: str
) -> None:
    response = login(client, outsider, password).post(
        reverse("retrieval:collection_list"), {"name": "Birds", "description": "garden"}
    )
    collection = Collection.objects.get(name="Birds")
    assert response.status_code == 302
    assert response["Location"] == reverse("retrieval:collection_detail", args=[collection.pk])
    assert (
        Membership.objects.get(collection=collection, user=outsider).role == Membership.Role.ADMIN
    )


def test_when_only_staff_may_create_collections_others_get_403(
    client: Client, outsider, admin, password: str, settings
) -> None:
    settings.AUTORET_COLLECTION_CREATORS = "staff"
    login(client, outsider, password)
    assert "New collection" not in client.get("/").content.decode()
    page = client.post(reverse("retrieval:collection_list"), {"name": "Birds"})
    api = client.post("/api/v1/collections/", {"name": "Birds"}, "application/json")
    assert (page.status_code, api.status_code) == (403, 403)
    assert not Collection.objects.filter(name="Birds").exists()
    outsider.is_staff = True
    outsider.save()
    assert client.post(reverse("retrieval:collection_list"), {"name": "Birds"}).status_code == 302


def test_a_taken_name_is_a_400_that_does_not_say_a_collection_exists(
    client: Client, outsider, collection, password: str
) -> None:
    response = login(client, outsider, password).post(
        reverse("retrieval:collection_list"), {"name": collection.name}
    )
    assert response.status_code == 400
    page = response.content.decode()
    assert "This name is not available: choose another." in page
    assert "exists" not in page
    api = client.post("/api/v1/collections/", {"name": collection.name}, "application/json")
    assert api.status_code == 400
    assert api.json() == {"name": ["This name is not available: choose another."]}


def test_keyset_pages_show_every_image_once(
    client: Client, annotator, collection, password: str, monkeypatch
) -> None:
    monkeypatch.setattr("retrieval.views.PAGE_SIZE", 3)
    ids = add_images(collection, 7)
    login(client, annotator, password)
    url = reverse("retrieval:collection_detail", args=[collection.pk])
    seen: list[int] = []
    after = ""
    for _ in range(5):
        html = client.get(url, {"after": after}, HTTP_HX_REQUEST="true").content.decode()
        assert "<html" not in html  # the partial only
        seen += [int(i) for i in re.findall(rf'href="{url}images/(\d+)/"', html)]
        next_after = re.search(r'href="\?after=(\d+)"', html)
        if next_after is None:
            break
        after = next_after[1]
        assert f'hx-get="?after={after}"' in html
    assert seen == ids


def test_malformed_after_is_a_400(client: Client, annotator, collection, password: str) -> None:
    url = reverse("retrieval:collection_detail", args=[collection.pk])
    assert login(client, annotator, password).get(url, {"after": "x"}).status_code == 400


def test_curator_uploads_through_the_page_and_sees_the_report(
    client: Client, curator, collection, password: str
) -> None:
    login(client, curator, password)
    response = client.post(
        reverse("retrieval:upload", args=[collection.pk]),
        {
            "files": [
                SimpleUploadedFile("ok.png", image_bytes()),
                SimpleUploadedFile("x.jpg", b"no"),
            ]
        },
        HTTP_HX_REQUEST="true",
    )
    assert response.status_code == 200
    html = response.content.decode()
    assert "1 created" in html and "1 rejected" in html
    assert "<code>x.jpg</code>: not an image in an allowed format" in html
    assert Image.objects.filter(collection=collection).count() == 1


def test_a_long_browser_import_ends_in_time_logged_and_queued_for_embedding(
    client: Client, curator, collection, password: str, settings, monkeypatch,
    django_capture_on_commit_callbacks,
) -> None:  # fmt: skip
    from audit.models import Event

    settings.AUTORET_IMPORT_SECONDS = 1
    clock = [0.0]
    check_image = imports.check_image

    def slow_check(*args: object, **kwargs: object) -> imports._Checked:
        clock[0] += 0.6  # each file takes 0.6 s on this clock
        return check_image(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(imports.time, "monotonic", lambda: clock[0])
    monkeypatch.setattr(imports, "check_image", slow_check)
    queued: list[int] = []

    def images_added(collection_id: int, **kwargs: object) -> None:
        queued.append(collection_id)

    login(client, curator, password)
    files = [SimpleUploadedFile(f"{i}.png", image_bytes((i, 0, 0))) for i in range(4)]
    imports.images_added.connect(images_added)
    try:
        with django_capture_on_commit_callbacks(execute=True):
            response = client.post(
                reverse("retrieval:upload", args=[collection.pk]), {"files": files}
            )
    finally:
        imports.images_added.disconnect(images_added)
    assert response.status_code == 200
    assert Image.objects.filter(collection=collection).count() == 2
    assert "upload it again for the rest" in response.content.decode()
    event = Event.objects.get(action=Event.Action.IMPORT)
    assert (event.detail["created"], event.detail["rejected"]) == (2, 2)
    assert queued == [collection.pk]


def test_upload_without_files_is_a_400(client: Client, curator, collection, password: str) -> None:
    response = login(client, curator, password).post(
        reverse("retrieval:upload", args=[collection.pk])
    )
    assert response.status_code == 400
    assert "Choose at least one" in response.content.decode()


def test_annotator_sees_the_collection_but_cannot_upload(
    client: Client, annotator, collection, password: str
) -> None:
    login(client, annotator, password)
    page = client.get(reverse("retrieval:collection_detail", args=[collection.pk]))
    assert page.status_code == 200
    assert "Import images" not in page.content.decode()
    response = client.post(
        reverse("retrieval:upload", args=[collection.pk]),
        {"files": [SimpleUploadedFile("ok.png", image_bytes())]},
    )
    assert response.status_code == 403
    assert not Image.objects.exists()


def test_outsider_gets_404_for_collection_image_media_and_upload(
    client: Client, outsider, collection, password: str
) -> None:
    [image_id] = add_images(collection, 1)
    image = Image.objects.get(pk=image_id)
    login(client, outsider, password)
    for url in (
        reverse("retrieval:collection_detail", args=[collection.pk]),
        reverse("retrieval:image_detail", args=[collection.pk, image.pk]),
        image.file.url,
        image.thumbnail.url,
    ):
        assert client.get(url).status_code == 404, url
    upload = client.post(
        reverse("retrieval:upload", args=[collection.pk]),
        {"files": [SimpleUploadedFile("ok.png", image_bytes((5, 5, 5)))]},
    )
    assert upload.status_code == 404


def test_image_page_shows_metadata_and_a_similar_link(
    client: Client, annotator, collection, password: str
) -> None:
    [image_id] = add_images(collection, 1)
    html = (
        login(client, annotator, password)
        .get(reverse("retrieval:image_detail", args=[collection.pk, image_id]))
        .content.decode()
    )
    assert reverse("retrieval:similar", args=[collection.pk, image_id]) in html
    assert "40 × 40 px" in html
    assert Image.objects.get(pk=image_id).file.url in html


def test_image_of_another_collection_is_404(
    client: Client, admin, collection, password: str
) -> None:
    other = Collection.objects.create(name="Other")
    [image_id] = add_images(other, 1)
    url = reverse("retrieval:image_detail", args=[collection.pk, image_id])
    assert login(client, admin, password).get(url).status_code == 404


def test_a_polyglot_html_jpeg_upload_is_rejected_with_its_reason(
    client: Client, curator, collection, password: str, media_root
) -> None:
    polyglot = polyglot_bytes(POLYGLOT_COMMENT)
    url = reverse("retrieval:upload", args=[collection.pk])
    login(client, curator, password)
    response = client.post(
        url,
        {
            "files": [
                SimpleUploadedFile("ok.png", image_bytes()),
                SimpleUploadedFile("page.jpg", polyglot),
            ]
        },
        HTTP_HX_REQUEST="true",
    )
    assert response.status_code == 200
    html = response.content.decode()
    assert "1 created" in html and "1 rejected" in html
    assert "<code>page.jpg</code>: contains HTML markup" in html
    assert "a polyglot file is not accepted" in html
    assert list(Image.objects.values_list("original_name", flat=True)) == ["ok.png"]
    # Alone, it is a 400 that stores nothing.
    response = client.post(url, {"files": [SimpleUploadedFile("page.html", polyglot)]})
    assert response.status_code == 400
    assert Image.objects.count() == 1
    assert len(stored_files(media_root)) == 2  # ok.png and its thumbnail


def test_a_stored_polyglot_is_still_served_only_as_an_image(
    client: Client, annotator, collection, password: str, monkeypatch
) -> None:
    # The second layer, for markup the scan does not know or files stored before it existed.
    monkeypatch.setattr(imports, "MARKUP", re.compile(rb"(?!)"))
    polyglot = polyglot_bytes(POLYGLOT_COMMENT)
    files = [SimpleUploadedFile("page.html", polyglot)]
    [image_id] = import_items(collection, from_uploads(files, Limits.from_settings())).created
    image = Image.objects.get(pk=image_id)
    assert image.file.url == reverse("retrieval:media", args=[image.file.name])
    response = login(client, annotator, password).get(image.file.url)
    assert response.status_code == 200
    assert response["Content-Type"] == "image/jpeg"
    assert response["X-Content-Type-Options"] == "nosniff"
    assert response["Content-Disposition"] == "inline"
    assert response["Content-Security-Policy"] == "default-src 'none'; sandbox"
    assert b"".join(response.streaming_content) == polyglot  # type: ignore[attr-defined]
    thumb = client.get(image.thumbnail.url)
    assert thumb["Content-Type"] == "image/webp"
    assert thumb["X-Content-Type-Options"] == "nosniff"


@pytest.mark.parametrize(
    "path",
    [
        "../../config/settings.py",
        "collections/1/ab/../../../secret_key",
        "collections/x",
        "%2e%2e/",
    ],
)
def test_media_paths_outside_stored_images_are_404(
    client: Client, admin, password: str, path: str
) -> None:
    assert login(client, admin, password).get(f"/media/{path}").status_code == 404


def test_anonymous_media_request_goes_to_login(client: Client, collection) -> None:
    [image_id] = add_images(collection, 1)
    response = client.get(Image.objects.get(pk=image_id).file.url)
    assert response.status_code == 302
