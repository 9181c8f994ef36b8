from __future__ import annotations

import re

import pytest
from django.test import Client

pytestmark = pytest.mark.django_db


def test_anonymous_visitor_is_sent_to_the_login_page(client: Client) -> None:
    response = client.get("/")
    assert response.status_code == 302
    assert response["Location"].startswith("/accounts/login/")


def test_login_page_loads_vendored_htmx_and_css(client: Client) -> None:
    html = client.get("/accounts/login/").content.decode()
    assert "/static/vendor/htmx.min.js" in html
    assert "/static/vendor/pico.min.css" in html
    assert "cdn" not in html.lower()


def test_signed_in_user_sees_system_status(client: Client, curator, password: str) -> None:
    client.login(username=curator.username, password=password)
    html = client.get("/").content.decode()
    assert "System status" in html
    # Loaded after the page (htmx), so a slow Redis never delays the list.
    assert 'hx-get="/status/"' in html
    assert "pgvector" in client.get("/status/", headers={"HX-Request": "true"}).content.decode()


def test_openapi_schema_is_served(client: Client, curator, password: str) -> None:
    client.login(username=curator.username, password=password)
    response = client.get("/api/schema/", HTTP_ACCEPT="application/json")
    assert response.status_code == 200
    assert response.json()["info"]["title"] == "AutoRet API"


def test_user_changes_password_and_the_new_one_works(
    client: Client, curator, password: str
) -> None:
    client.login(username=curator.username, password=password)
    response = client.post(
        "/accounts/password_change/",
        {
            "old_password": password,
            "new_password1": "a-new-long-pass-7",
            "new_password2": "a-new-long-pass-7",
        },
    )
    assert response.status_code == 302
    assert response["Location"] == "/accounts/password_change/done/"
    client.logout()
    assert client.login(username=curator.username, password="a-new-long-pass-7")


def test_password_reset_by_mail_is_not_offered(client: Client) -> None:
    assert client.get("/accounts/password_reset/").status_code == 404


def test_api_docs_load_swagger_ui_from_this_server(client: Client, curator, password: str) -> None:
    client.login(username=curator.username, password=password)
    html = client.get("/api/docs/").content.decode()
    assert "swagger-ui" in html
    assert "cdn.jsdelivr" not in html and "unpkg.com" not in html


def test_site_admin_grants_a_role_in_a_collection_from_the_admin(
    client: Client, admin, outsider, collection
) -> None:
    from retrieval.models import Membership

    client.force_login(admin)
    response = client.post(
        "/admin/retrieval/membership/add/",
        {"collection": collection.pk, "user": outsider.pk, "role": Membership.Role.CURATOR},
    )
    assert response.status_code == 302, response.content.decode()[:500]
    assert Membership.objects.get(user=outsider).role == Membership.Role.CURATOR
    assert client.get("/admin/retrieval/collection/").status_code == 200


def test_user_creates_uses_replaces_and_revokes_an_api_token(client: Client, curator) -> None:
    from rest_framework.test import APIClient

    client.force_login(curator)
    created = client.post("/accounts/token/", {"action": "create"}).content.decode()
    key = re.search(r'id="token-key">([0-9a-f]{40})<', created)
    assert key is not None
    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Token {key.group(1)}")
    assert api.get("/api/v1/collections/").status_code == 200

    replaced = client.post("/accounts/token/", {"action": "create"}).content.decode()
    assert key.group(1) not in replaced
    # 403 rather than 401: session authentication comes first and sends no WWW-Authenticate.
    assert api.get("/api/v1/collections/").status_code in (401, 403), "the old token stops working"

    client.post("/accounts/token/", {"action": "revoke"})
    assert "You have no token." in client.get("/accounts/token/").content.decode()
