"""Celery tasks: thin wrappers that take ids and call plain functions (CONVENTIONS.md).

PyTorch is imported inside the task bodies: web processes import this module to enqueue, and
they never load PyTorch.
"""

from __future__ import annotations

import logging

from celery import Task, shared_task

from worker.enqueue import send_on_commit

log = logging.getLogger(__name__)


@shared_task(bind=True, acks_late=True, reject_on_worker_lost=True, ignore_result=True)
def advance_job(self: Task, job_id: int, after_id: int = 0) -> None:
    """Runs one slice of a job (a training slice or one embedding batch) and queues the next.

    The job is claimed with a conditional UPDATE keyed on this task's id: a redelivered message
    (same id, after a worker died) goes on from the last checkpoint or the first image without a
    vector; a finished, cancelled or otherwise held job makes the run a no-op.
    """
    from worker import pipeline

    job = pipeline.claim(job_id, self.request.id or f"local-{job_id}")
    if job is None:
        return
    next_after = pipeline.advance(job, after_id)
    if next_after is not None:
        pipeline.release(job)
        send_on_commit(advance_job, job_id, next_after, heavy=True)
