from __future__ import annotations

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
    assert "pgvector" in html


def test_openapi_schema_is_served(client: Client, curator, password: str) -> None:
    client.login(username=curator.username, password=password)
    response = client.get("/api/schema/", HTTP_ACCEPT="application/json")
    assert response.status_code == 200
    assert response.json()["info"]["title"] == "AutoRet API"
