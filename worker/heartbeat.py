"""Worker heartbeats in Redis, so /healthz and task routing know which workers and queues are live.

Each worker process writes one key with a short expiry every few seconds from a daemon thread; a
worker that dies stops refreshing it and disappears within three intervals.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
from typing import Any

from celery.signals import worker_ready, worker_shutdown
from django.conf import settings

from worker.broker import redis_client

KEY_PREFIX = "autoret:worker:"
_stop = threading.Event()


def _key(hostname: str) -> str:
    return f"{KEY_PREFIX}{hostname}"


def _beat(hostname: str, queues: list[str], interval: int) -> None:
    payload = json.dumps({"hostname": hostname, "queues": queues, "pid": os.getpid()})
    while not _stop.is_set():
        # A Redis hiccup must not kill the worker; the next beat retries.
        with contextlib.suppress(Exception):
            redis_client().set(_key(hostname), payload, ex=interval * 3)
        _stop.wait(interval)


def _on_ready(sender: Any = None, **_: Any) -> None:
    hostname = getattr(sender, "hostname", None) or socket.gethostname()
    # The sender is the worker's Consumer; consume_from holds the queues given with -Q.
    app = getattr(sender, "app", None)
    queues = sorted(app.amqp.queues.consume_from) if app is not None else []
    interval = settings.CELERY_WORKER_HEARTBEAT_SECONDS
    _stop.clear()
    threading.Thread(
        target=_beat, args=(hostname, queues, interval), name="autoret-heartbeat", daemon=True
    ).start()


def _on_shutdown(sender: Any = None, **_: Any) -> None:
    _stop.set()
    hostname = getattr(sender, "hostname", None)
    if hostname:
        with contextlib.suppress(Exception):  # shutting down regardless
            redis_client().delete(_key(hostname))


def connect_signals() -> None:
    worker_ready.connect(_on_ready, weak=False, dispatch_uid="autoret-heartbeat-ready")
    worker_shutdown.connect(_on_shutdown, weak=False, dispatch_uid="autoret-heartbeat-stop")


def live_workers() -> list[dict[str, Any]]:
    """Workers whose heartbeat is fresh, with the queues each consumes."""
    client = redis_client()
    workers = []
    for key in client.scan_iter(match=f"{KEY_PREFIX}*", count=100):
        raw = client.get(key)
        if raw:
            workers.append(json.loads(raw))
    return sorted(workers, key=lambda w: w["hostname"])
