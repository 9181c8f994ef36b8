"""Health of the parts a request depends on: database, Redis, at least one live worker."""

from __future__ import annotations

from typing import Any

from django.db import connection

from worker.broker import redis_client
from worker.heartbeat import live_workers


def check_database() -> dict[str, Any]:
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT extversion FROM pg_extension WHERE extname = 'vector'")
            row = cursor.fetchone()
    except Exception as exc:  # noqa: BLE001 - reported, not raised
        return {"ok": False, "error": _one_line(exc)}
    return {"ok": True, "pgvector": row[0] if row else None}


def check_redis() -> dict[str, Any]:
    try:
        redis_client().ping()
    except Exception as exc:  # noqa: BLE001 - reported, not raised
        return {"ok": False, "error": _one_line(exc)}
    return {"ok": True}


def check_workers() -> dict[str, Any]:
    try:
        workers = live_workers()
    except Exception as exc:  # noqa: BLE001 - reported, not raised
        return {"ok": False, "error": _one_line(exc), "live": []}
    return {"ok": bool(workers), "live": workers}


def system_health() -> dict[str, Any]:
    parts = {"database": check_database(), "redis": check_redis(), "worker": check_workers()}
    return {**parts, "ok": all(part["ok"] for part in parts.values())}


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"
