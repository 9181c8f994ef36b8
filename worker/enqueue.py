"""Every Celery send goes through here: it picks the queue and waits for the commit.

Heavy work (embedding, training) goes to the `gpu` queue while a live worker consumes it (its
heartbeat says so), else to the default queue. A send waits until the surrounding transaction
commits, so the task sees the rows it is about and a rolled-back request queues nothing (outside a
transaction it goes at once). A broker outage never turns a request into an error: the rows that
ask for the work are stored, the failure is logged, and `unsent` lets the caller undo a claim so a
later request tries again.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Any

from celery import Task
from django.conf import settings
from django.db import transaction

from worker.heartbeat import live_workers

log = logging.getLogger(__name__)

GPU_QUEUE = "gpu"


def heavy_queue() -> str:
    """`gpu` when a live worker consumes it (its heartbeat says so), else the default queue."""
    try:
        workers = live_workers()
    except Exception:  # Redis down: the send that follows reports it
        workers = []
    if any(GPU_QUEUE in worker.get("queues", []) for worker in workers):
        return GPU_QUEUE
    return settings.CELERY_TASK_DEFAULT_QUEUE


def send_on_commit(
    task: Task,
    *args: Any,
    heavy: bool = False,
    unsent: Callable[[], None] | None = None,
    countdown: float = 0.0,
) -> None:
    """Queues `task(*args)` once the surrounding transaction commits (to run `countdown` seconds
    later when given); `heavy` work goes to the GPU queue when a GPU worker is live."""
    transaction.on_commit(functools.partial(_send, task, args, heavy, unsent, countdown))


def _send(
    task: Task,
    args: tuple[Any, ...],
    heavy: bool,
    unsent: Callable[[], None] | None,
    countdown: float = 0.0,
) -> None:
    queue = heavy_queue() if heavy else settings.CELERY_TASK_DEFAULT_QUEUE
    try:
        task.apply_async(args, queue=queue, countdown=countdown)
    except Exception:
        log.exception("%s%r could not be queued (broker down?)", task.name, args)
        if unsent is not None:
            unsent()
