"""The fixed cast every test draws from, and the real services integration tests need."""

from __future__ import annotations

import os
import subprocess
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
    """Rate-limit counters live in the cache (in memory in tests): each test starts with none."""
    from django.core.cache import cache

    cache.clear()


@pytest.fixture(autouse=True)
def _models_in_tmp(settings, tmp_path: Path) -> None:
    """Checkpoints (version 1's fitted head included) go to the test's own folder, which the
    worker and web processes it starts are given too (service_env)."""
    settings.MODELS_DIR = tmp_path / "models"


@pytest.fixture(autouse=True)
def _no_remembered_policies() -> None:
    """worker.retraining remembers which collections retrain after answers for 30 s: each test
    reads them from its own database."""
    from worker.retraining import forget_policies

    forget_policies()


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
    use_broker(app, broker_url=broker)
    redis_client.cache_clear()
    redis_client().flushall()
    yield url
    redis_client.cache_clear()


def use_broker(app: Any, **conf: Any) -> None:
    """Points the Celery app at another broker (broker_url and its options) for what it sends
    next. Changing the setting alone is not enough: the app keeps the connection pool it built for
    the broker it first sent to, and an earlier test's send (to the development Redis under var/)
    would leave every later one trying that socket."""
    app.conf.update(**conf)
    # Celery has no public reset; its after-fork hook drops the same two. The pools themselves
    # are kombu's, shared by URL (closing one would break the next test on the same broker).
    app._pool = None
    app.amqp._producer_pool = None


def service_env(redis_url: str, **extra: str) -> dict[str, str]:
    """Environment for a child process (worker, web) seeing this test's database and Redis."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST")}
    env.update(
        REDIS_URL=redis_url,
        AUTORET_DB_NAME=str(settings.DATABASES["default"]["NAME"]),
        AUTORET_HEARTBEAT_SECONDS="1",
        AUTORET_MEDIA_ROOT=str(settings.MEDIA_ROOT),
        AUTORET_MODELS_DIR=str(settings.MODELS_DIR),
        PYTHONUNBUFFERED="1",
    )
    env.update(extra)
    return env


@pytest.fixture(autouse=True)
def media_root(settings, tmp_path: Path) -> Path:
    """Every test's images, thumbnails and exports go to a folder of its own, never var/media."""
    settings.MEDIA_ROOT = tmp_path / "media"
    return settings.MEDIA_ROOT


@pytest.fixture
def celery_worker(live_redis: str, tmp_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    """A real Celery worker process consuming the default and gpu queues of the test Redis."""
    from config.stack import worker_command
    from tests.waiting import wait_for
    from worker.heartbeat import live_workers

    log = open(tmp_path / "worker.log", "wb")  # noqa: SIM115 - closed below
    process = subprocess.Popen(
        worker_command("default,gpu", f"test-{os.getpid()}@%h"),
        cwd=REPO, env=service_env(live_redis), stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        wait_for(live_workers, "the Celery worker's first heartbeat", 60, process=process)
    except BaseException:
        process.kill()
        log.close()
        print((tmp_path / "worker.log").read_text())  # in the failed test's captured output
        raise
    yield process
    stop_process(process)
    log.close()


def pytest_configure(config: pytest.Config) -> None:
    # PBKDF2's deliberate slowness costs about a second per test that creates the cast.
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    # The platform's cache is its Redis; tests count in memory, each process its own, and the
    # ones about the shared cache point it at the test Redis (tests/labeling/test_queue.py).
    settings.CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}
    # Django's test Client.login() authenticates without a request, which django-axes refuses;
    # tests/test_login_lockout.py turns it on.
    settings.AXES_ENABLED = False


def pytest_unconfigure(config: pytest.Config) -> None:
    """Stop the embedded PostgreSQL if this test run started it and nothing else uses it now (CI
    leaves nothing running): a `make run` or another test run that attached to the server in the
    meantime keeps it."""
    if settings.EMBEDDED_POSTGRES_DIR is not None:
        from config.embedded import release_postgres

        release_postgres(settings.EMBEDDED_POSTGRES_DIR)
