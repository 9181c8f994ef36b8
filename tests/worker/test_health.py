from __future__ import annotations

import subprocess
from unittest.mock import patch

import pytest
from django.test import Client

pytestmark = pytest.mark.django_db


def test_healthz_is_503_and_says_why_when_redis_is_down(client: Client, settings) -> None:
    from worker.broker import redis_client

    settings.REDIS_URL = "unix:///nonexistent/redis.sock"
    redis_client.cache_clear()
    try:
        response = client.get("/healthz")
    finally:
        redis_client.cache_clear()
    assert response.status_code == 503
    body = response.json()
    assert body["database"]["ok"] is True
    assert body["database"]["pgvector"]
    assert body["redis"]["ok"] is False and body["redis"]["error"]
    assert body["ok"] is False


def test_healthz_reports_pgvector_0_8_or_newer(client: Client) -> None:
    """Iterative index scans and halfvec, which search and the feature store rely on, came with
    pgvector 0.8."""
    version = client.get("/healthz").json()["database"]["pgvector"]
    assert tuple(int(part) for part in version.split(".")[:2]) >= (0, 8), version


def test_healthz_is_503_without_a_live_worker(client: Client, live_redis: str) -> None:
    response = client.get("/healthz")
    assert response.status_code == 503
    assert response.json()["redis"]["ok"] is True
    assert response.json()["worker"] == {"ok": False, "live": []}


@pytest.mark.integration
def test_healthz_is_200_once_a_real_worker_beats(
    client: Client, celery_worker: subprocess.Popen[bytes]
) -> None:
    response = client.get("/healthz")
    assert response.status_code == 200
    body = response.json()
    assert body["ok"] is True
    assert any("default" in w["queues"] for w in body["worker"]["live"])


@pytest.mark.integration
def test_a_stopped_worker_disappears_from_healthz(
    client: Client, celery_worker: subprocess.Popen[bytes]
) -> None:
    from config.embedded import stop_process

    stop_process(celery_worker)
    response = client.get("/healthz")
    assert response.status_code == 503
    assert response.json()["worker"]["live"] == []


def test_collections_page_loads_health_as_a_fragment(client: Client, curator, password) -> None:
    client.login(username=curator.username, password=password)
    with patch("worker.views.system_health") as health:
        page = client.get("/collections/")
    assert page.status_code == 200
    assert not health.called  # a slow Redis never delays the list
    assert b'hx-get="/status/"' in page.content and b'href="/status/"' in page.content


def test_status_fragment_names_each_part(client: Client, curator, password, live_redis) -> None:
    client.login(username=curator.username, password=password)
    fragment = client.get("/status/", headers={"HX-Request": "true"})
    assert fragment.status_code == 200
    assert b"database up" in fragment.content and b"Redis up" in fragment.content
    assert b"<html" not in fragment.content
    assert b"<html" in client.get("/status/").content
