"""The fixed cast every test draws from, and the real services integration tests need."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings

from config.embedded import redis_socket_path, start_redis, stop_process

REPO = Path(__file__).resolve().parent.parent
PASSWORD = "correct-horse-battery-staple"


@pytest.fixture(scope="session")
def django_db_modify_db_settings(django_db_modify_db_settings_parallel_suffix: None) -> None:
    """One test database per pytest process, so two runs on one machine never share or drop it."""
    database: dict[str, Any] = settings.DATABASES["default"]
    database.setdefault("TEST", {})["NAME"] = f"test_{database['NAME']}_{os.getpid()}"


@pytest.fixture(autouse=True)
def _empty_cache() -> None:
    """Rate-limit counters live in the in-memory cache: each test starts with none."""
    from django.core.cache import cache

    cache.clear()


@pytest.fixture
def password() -> str:
    return PASSWORD


@pytest.fixture
def admin(django_user_model):
    return django_user_model.objects.create_superuser("admin", "admin@example.org", PASSWORD)


@pytest.fixture
def curator(django_user_model):
    return django_user_model.objects.create_user("curator", "curator@example.org", PASSWORD)


@pytest.fixture
def annotator(django_user_model):
    return django_user_model.objects.create_user("annotator", "annotator@example.org", PASSWORD)


@pytest.fixture
def outsider(django_user_model):
    return django_user_model.objects.create_user("outsider", "outsider@example.org", PASSWORD)


@pytest.fixture
def collection(admin, curator, annotator):  # noqa: ARG001 - admin is a superuser, no membership
    """A collection with the cast's roles: curator and annotator are members, outsider is not."""
    from retrieval.models import Collection, Membership

    collection = Collection.objects.create(name="Shoes and shirts", created_by=admin)
    Membership.objects.create(collection=collection, user=curator, role=Membership.Role.CURATOR)
    Membership.objects.create(collection=collection, user=annotator, role=Membership.Role.ANNOTATOR)
    return collection


@pytest.fixture(scope="session")
def redis_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A real Redis for the session (the embedded server binary), on its own socket."""
    path = tmp_path_factory.mktemp("redis")
    process = start_redis(path)
    yield path
    stop_process(process)


@pytest.fixture
def live_redis(redis_dir: Path, settings) -> Iterator[str]:
    """Point this process's Redis client and Celery at the session Redis, emptied for the test."""
    from config.celery_app import app
    from worker.broker import redis_client

    url = f"unix://{redis_socket_path(redis_dir)}"
    settings.REDIS_URL = url
    broker = url.replace("unix://", "redis+socket://", 1)
    settings.CELERY_BROKER_URL = broker
    app.conf.update(broker_url=broker)
    redis_client.cache_clear()
    redis_client().flushall()
    yield url
    redis_client.cache_clear()


def service_env(redis_url: str, **extra: str) -> dict[str, str]:
    """Environment for a child process (worker, web) seeing this test's database and Redis."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST")}
    env.update(
        REDIS_URL=redis_url,
        AUTORET_DB_NAME=str(settings.DATABASES["default"]["NAME"]),
        AUTORET_HEARTBEAT_SECONDS="1",
        AUTORET_MEDIA_ROOT=str(settings.MEDIA_ROOT),
        PYTHONUNBUFFERED="1",
        **extra,
    )
    return env


@pytest.fixture
def celery_worker(live_redis: str, tmp_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    """A real Celery worker process consuming the default and gpu queues of the test Redis."""
    from worker.heartbeat import live_workers

    log = open(tmp_path / "worker.log", "wb")  # noqa: SIM115 - closed below
    process = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "config", "worker", "-Q", "default,gpu",
         "--concurrency", "1", "--loglevel", "INFO", "--hostname", f"test-{os.getpid()}@%h"],
        cwd=REPO, env=service_env(live_redis), stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    deadline = time.monotonic() + 60
    while not live_workers():
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            log.close()
            pytest.fail(
                "the Celery worker did not start:\n" + (tmp_path / "worker.log").read_text()
            )
        time.sleep(0.2)
    yield process
    stop_process(process)
    log.close()


def pytest_configure(config: pytest.Config) -> None:
    # PBKDF2's deliberate slowness costs about a second per test that creates the cast.
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


def pytest_unconfigure(config: pytest.Config) -> None:
    """Stop the embedded PostgreSQL if this test run started it and nothing else uses it now (CI
    leaves nothing running): a `make run` or another test run that attached to the server in the
    meantime keeps it."""
    if settings.EMBEDDED_POSTGRES_DIR is not None:
        from config.embedded import release_postgres

        release_postgres(settings.EMBEDDED_POSTGRES_DIR)
