"""Celery tasks: thin wrappers that take ids and call plain functions (CONVENTIONS.md)."""

from __future__ import annotations

import logging

from celery import shared_task

from retrieval import embedding
from retrieval.models import Collection

log = logging.getLogger(__name__)

# Images per task run: about ten seconds on two CPU cores at 32 px, far inside the broker's
# visibility timeout, so a redelivered task never overlaps a running one for long.
EMBED_BATCH = 4096


@shared_task(acks_late=True, reject_on_worker_lost=True, ignore_result=True)
def embed_collection(collection_id: int, after_id: int = 0, batch: int = EMBED_BATCH) -> None:
    """Embeds the collection's images that have no vector yet, `batch` per run.

    Idempotent: only images without a vector in the target version are picked, and a doubled
    batch inserts nothing (unique constraint), so a redelivery or a second enqueue after another
    upload is harmless. Each run re-enqueues itself with its cursor until the walk is done; the
    last run builds the index and activates the collection's first version.
    """
    collection = Collection.objects.filter(pk=collection_id).first()
    if collection is None:
        return  # deleted since the upload: nothing to do
    result = embedding.embed_new_images(collection, after_id=after_id, limit=batch)
    for image_id, error in result.failed:
        log.warning("collection %s: image %s skipped: %s", collection_id, image_id, error)
    if result.next_after is not None:
        embed_collection.delay(collection_id, result.next_after, batch)
