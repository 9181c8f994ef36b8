"""/api/v1/ collections and images: shapes, roles, token auth, keyset cursor, schema."""

from __future__ import annotations

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client
from rest_framework.authtoken.models import Token

from retrieval.models import Membership
from tests.conftest import use_broker
from tests.retrieval.conftest import image_bytes

pytestmark = pytest.mark.django_db


def files(count: int) -> list[SimpleUploadedFile]:
    return [SimpleUploadedFile(f"{i}.png", image_bytes((i, 9, 9))) for i in range(count)]


def test_token_client_creates_and_lists_collections(client: Client, outsider) -> None:
    client.defaults["HTTP_AUTHORIZATION"] = f"Token {Token.objects.create(user=outsider).key}"
    created = client.post(
        "/api/v1/collections/", {"name": "Birds"}, content_type="application/json"
    )
    assert created.status_code == 201
    body = created.json()
    assert body["name"] == "Birds" and isinstance(body["id"], int)
    assert Membership.objects.get(user=outsider).role == Membership.Role.ADMIN
    listed = client.get("/api/v1/collections/").json()
    assert [c["name"] for c in listed] == ["Birds"]


def test_anonymous_api_call_is_refused(client: Client, collection) -> None:
    assert client.get("/api/v1/collections/").status_code in (401, 403)
    assert client.get(f"/api/v1/collections/{collection.pk}/images/").status_code in (401, 403)


def test_collection_without_name_is_a_400(client: Client, curator, password: str) -> None:
    client.login(username=curator.username, password=password)
    response = client.post("/api/v1/collections/", {}, content_type="application/json")
    assert response.status_code == 400
    assert "name" in response.json()


def test_upload_then_list_every_image_once_through_the_cursor(
    client: Client, curator, collection, password: str, monkeypatch
) -> None:
    monkeypatch.setattr("retrieval.api.PAGE_SIZE", 2)
    client.login(username=curator.username, password=password)
    url = f"/api/v1/collections/{collection.pk}/images/"
    upload = client.post(url, {"files": files(5)})
    assert upload.status_code == 201
    created = upload.json()["created"]
    assert upload.json() == {"created": created, "duplicates": [], "rejected": []}
    seen: list[int] = []
    cursor = None
    while True:
        page = client.get(url, {"cursor": cursor} if cursor else {}).json()
        seen += [image["id"] for image in page["results"]]
        cursor = page["next"]
        if cursor is None:
            break
    assert seen == created
    first = client.get(url).json()["results"][0]
    assert set(first) == {"id", "url", "thumbnail_url", "width", "height", "original_name", "label"}
    assert first["url"].startswith("http://testserver/media/collections/")
    assert client.get(first["thumbnail_url"])["Content-Type"] == "image/webp"


def test_malformed_cursor_is_a_400(client: Client, curator, collection, password: str) -> None:
    client.login(username=curator.username, password=password)
    url = f"/api/v1/collections/{collection.pk}/images/?cursor=abc"
    assert client.get(url).status_code == 400


def test_upload_without_files_is_a_400(client: Client, curator, collection, password: str) -> None:
    client.login(username=curator.username, password=password)
    response = client.post(f"/api/v1/collections/{collection.pk}/images/", {})
    assert response.status_code == 400
    assert "files" in response.json()


def test_annotator_lists_but_cannot_upload(
    client: Client, annotator, collection, password: str
) -> None:
    client.login(username=annotator.username, password=password)
    url = f"/api/v1/collections/{collection.pk}/images/"
    assert client.get(url).status_code == 200
    assert client.post(url, {"files": files(1)}).status_code == 403
    assert not collection.images.exists()


def test_outsider_gets_404_on_the_collection_api(
    client: Client, outsider, collection, password: str
) -> None:
    client.login(username=outsider.username, password=password)
    url = f"/api/v1/collections/{collection.pk}/images/"
    assert client.get(url).status_code == 404
    assert client.post(url, {"files": files(1)}).status_code == 404
    assert client.get("/api/v1/collections/").json() == []
    assert not collection.images.exists()


def test_schema_describes_the_upload_and_the_page(client: Client, curator, password: str) -> None:
    client.login(username=curator.username, password=password)
    schema = client.get("/api/schema/", HTTP_ACCEPT="application/json").json()
    images = schema["paths"]["/api/v1/collections/{id}/images/"]
    body = images["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert body["$ref"].endswith("/ImageUpload")
    upload = schema["components"]["schemas"]["ImageUpload"]["properties"]["files"]
    assert upload["type"] == "array" and upload["items"]["format"] == "binary"
    report = schema["components"]["schemas"]["ImportReport"]["properties"]
    assert set(report) == {"created", "duplicates", "rejected"}
    assert "cursor" in {p["name"] for p in images["get"]["parameters"]}
    assert "201" in schema["paths"]["/api/v1/collections/"]["post"]["responses"]


@pytest.mark.django_db(transaction=True)
def test_upload_is_kept_when_the_broker_is_down(
    client: Client, curator, collection, password: str, settings
) -> None:
    from config.celery_app import app

    before = {k: app.conf[k] for k in ("broker_url", "broker_transport_options")}
    broker = "redis+socket:///nonexistent/redis.sock"
    settings.CELERY_BROKER_URL = broker
    use_broker(app, broker_url=broker, broker_transport_options={"max_retries": 0})
    try:
        client.login(username=curator.username, password=password)
        response = client.post(f"/api/v1/collections/{collection.pk}/images/", {"files": files(2)})
    finally:
        use_broker(app, **before)
    assert response.status_code == 201
    assert len(response.json()["created"]) == 2
    assert collection.images.count() == 2
