"""Celery tasks: thin wrappers that take ids and call plain functions (CONVENTIONS.md).

PyTorch is imported inside the task bodies: web processes import this module to enqueue, and
they never load PyTorch.
"""

from __future__ import annotations

import logging

from celery import Task, shared_task
from django.conf import settings

from retrieval.models import Collection
from worker.enqueue import send_on_commit

log = logging.getLogger(__name__)


@shared_task(acks_late=True, reject_on_worker_lost=True, ignore_result=True)
def embed_collection(collection_id: int, after_id: int = 0, batch: int | None = None) -> None:
    """Embeds the collection's images that have no vector yet, `batch` per run.

    Idempotent: only images without a vector in the target version are picked, and a doubled
    batch inserts nothing (unique constraint), so a redelivery or a second enqueue after another
    upload is harmless. Each run re-enqueues itself with its cursor until the walk is done; the
    last run builds the index and activates the collection's first version.
    """
    from retrieval import embedding

    collection = Collection.objects.filter(pk=collection_id).first()
    if collection is None:
        return  # deleted since the upload: nothing to do
    size = batch or settings.AUTORET_EMBED_BATCH
    result = embedding.embed_new_images(collection, after_id=after_id, limit=size)
    for image_id, error in result.failed:
        log.warning("collection %s: image %s skipped: %s", collection_id, image_id, error)
    if result.next_after is not None:
        send_on_commit(embed_collection, collection_id, result.next_after, batch, heavy=True)


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
