"""Celery tasks of the labeling loop."""

from __future__ import annotations

from celery import shared_task

from labeling.models import LabelingSettings
from labeling.strategies import mine
from retrieval.models import Collection


@shared_task(acks_late=True, reject_on_worker_lost=True)
def mine_pairs(collection_id: int) -> int:
    """Fills the collection's pair queue with one batch by its strategy mix.

    Idempotent: mining never queues a pair twice (unique pair, `accept` skips known ones), so a
    redelivered task only adds what is still missing. Queued after each activation and when the
    queue runs low (labeling.pair_queue.next_pair).
    """
    collection = (
        Collection.objects.select_related("active_version").filter(pk=collection_id).first()
    )
    if collection is None:
        return 0
    try:
        return mine(collection)
    finally:
        # Lets the next low-queue request queue another batch.
        LabelingSettings.objects.filter(collection_id=collection_id).update(
            mining_requested_at=None
        )
