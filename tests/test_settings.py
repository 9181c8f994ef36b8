from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from django.core.exceptions import ImproperlyConfigured

from config import settings as project_settings

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize(
    ("helper", "name", "value", "message"),
    [
        (project_settings.env_int, "PORT", "abc", "PORT='abc' is not an integer"),
        (project_settings.env_bool, "DEBUG", "maybe", "DEBUG='maybe' is not a boolean"),
    ],
)
def test_malformed_value_names_the_variable(helper, name, value, message, monkeypatch) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ImproperlyConfigured, match=message):
        helper(name, 0 if helper is project_settings.env_int else False)


def test_port_out_of_range_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PORT", "70000")
    with pytest.raises(ImproperlyConfigured, match="outside 1..65535"):
        project_settings.env_int("PORT", 8000, minimum=1, maximum=65535)


def test_unset_and_blank_values_take_the_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DEBUG", "  ")
    monkeypatch.delenv("PORT", raising=False)
    assert project_settings.env_bool("DEBUG", True) is True
    assert project_settings.env_int("PORT", 8000) == 8000


def test_database_url_is_parsed_into_django_settings() -> None:
    db = project_settings.database_from_url(
        "DATABASE_URL", "postgres://ann:p%40ss@db.example.org:6543/autoret"
    )
    assert (db["USER"], db["PASSWORD"], db["HOST"], db["PORT"], db["NAME"]) == (
        "ann", "p@ss", "db.example.org", "6543", "autoret",
    )  # fmt: skip


@pytest.mark.parametrize(
    "url", ["nonsense", "mysql://u@h/db", "postgres://u@h:port/db", "postgres://u@h/"]
)
def test_malformed_database_url_is_refused(url: str) -> None:
    with pytest.raises(ImproperlyConfigured, match="DATABASE_URL="):
        project_settings.database_from_url("DATABASE_URL", url)


def test_the_cache_is_the_platforms_redis_so_limits_hold_across_processes() -> None:
    cache = project_settings.CACHES["default"]
    assert cache["BACKEND"] == "django.core.cache.backends.redis.RedisCache"
    assert cache["LOCATION"] == project_settings.REDIS_URL


def test_malformed_redis_url_is_refused() -> None:
    with pytest.raises(ImproperlyConfigured, match="REDIS_URL='localhost:6379'"):
        project_settings.redis_url("REDIS_URL", "localhost:6379")


@pytest.mark.parametrize(
    ("name", "value"),
    [("PORT", "abc"), ("DATABASE_URL", "nonsense"), ("DEBUG", "perhaps"), ("REDIS_URL", "nope")],
)
def test_manage_py_stops_with_one_line_naming_the_variable(name: str, value: str) -> None:
    env = {**os.environ, name: value}
    result = subprocess.run(
        [sys.executable, "manage.py", "check"], cwd=REPO, env=env, capture_output=True, text=True,
        timeout=60,
    )  # fmt: skip
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"error: {name}=")
    assert "Traceback" not in result.stderr


def test_production_mode_passes_djangos_deployment_checklist() -> None:
    # The browser tests' conftest allows async-unsafe ORM calls in this process; a deployment never.
    env = {
        **{k: v for k, v in os.environ.items() if k != "DJANGO_ALLOW_ASYNC_UNSAFE"},
        "AUTORET_PRODUCTION": "1",
        "SECRET_KEY": "k" * 20 + "-production-secret-key-for-the-test",
        "ALLOWED_HOSTS": "autoret.example.org",
        "DEBUG": "0",
    }
    result = subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no issues" in result.stdout


def test_production_mode_refuses_to_start_without_secret_key() -> None:
    env = {k: v for k, v in os.environ.items() if k != "SECRET_KEY"}
    env["AUTORET_PRODUCTION"] = "1"
    result = subprocess.run(
        [sys.executable, "manage.py", "check"], cwd=REPO, env=env, capture_output=True, text=True,
        timeout=60,
    )  # fmt: skip
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "error: SECRET_KEY must be set in production mode (AUTORET_PRODUCTION=1)"
    )
