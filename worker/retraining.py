"""Retraining started by answers, on by default: after every AUTORET_RETRAIN_AFTER_ANSWERS new
answers (a collection's TrainingPolicy may set its own number, or 0 for never), heard through
labeling's `answer_recorded` signal (connected in worker/hooks.py).

The answer request only asks Redis whether a check is already on its way and, if not, queues one
(`consider_retraining`, CHECK_DELAY_S later, so a burst of answers costs one check). The check
itself (counting answers, starting a job) runs in a worker, off the labeling path.
"""

from __future__ import annotations

import contextlib
import logging
import time
from typing import Any

from celery import shared_task
from django.conf import settings
from django.core.cache import cache

from labeling.training import answers_since
from retrieval.models import Collection
from worker.actions import TrainingAlreadyRunning, active_training, start_training
from worker.enqueue import send_on_commit
from worker.models import Job, TrainingPolicy

log = logging.getLogger(__name__)

# Collections' own thresholds, read at most this often per process (and again at once after this
# process saves a policy): the answer path costs no query for them, as the labeling loop's query
# budget asks (tests/labeling/test_query_counts.py). A policy saved in another process applies
# within this.
POLICY_CACHE_SECONDS = 30.0
# Answers within this long of one another share one check.
CHECK_DELAY_S = 2.0
_policies: tuple[float, dict[int, int]] | None = None


def _own_thresholds() -> dict[int, int]:
    global _policies
    now = time.monotonic()
    if _policies is None or now - _policies[0] > POLICY_CACHE_SECONDS:
        rows = TrainingPolicy.objects.exclude(retrain_after_answers=None).values_list(
            "collection_id", "retrain_after_answers"
        )
        _policies = (now, {collection_id: n for collection_id, n in rows if n is not None})
    return _policies[1]


def _answers_needed(own: int | None) -> int:
    """A collection's own threshold, else the site's; 0: never automatically."""
    return settings.AUTORET_RETRAIN_AFTER_ANSWERS if own is None else own


def threshold(collection_id: int) -> int:
    """New answers that start retraining in this collection (cached, for the answer path)."""
    return _answers_needed(_own_thresholds().get(collection_id))


def forget_policies(**_: Any) -> None:
    """A policy changed in this process: read them again at the next answer."""
    global _policies
    _policies = None


def on_answer_recorded(collection_id: int, **_: Any) -> None:
    if threshold(collection_id) <= 0:
        return
    try:
        first = cache.add(f"retrain-check:{collection_id}", 1, timeout=CHECK_DELAY_S)
    except Exception:  # Redis down: the send below reports it, nothing is lost but a check
        first = True
    if first:
        send_on_commit(consider_retraining, collection_id, countdown=CHECK_DELAY_S)


@shared_task(acks_late=True, ignore_result=True)
def consider_retraining(collection_id: int) -> None:
    after_answer(collection_id)


def after_answer(collection_id: int) -> None:
    """Starts retraining once enough new answers arrived since the last training job started
    (the collection's threshold, else AUTORET_RETRAIN_AFTER_ANSWERS)."""
    collection = Collection.objects.filter(pk=collection_id).first()
    if collection is None:
        return
    policy = TrainingPolicy.objects.filter(collection=collection).first()
    needed = _answers_needed(policy.retrain_after_answers if policy is not None else None)
    if needed <= 0 or active_training(collection) is not None:
        return
    last = (
        Job.objects.filter(collection=collection, kind=Job.Kind.TRAIN)
        .order_by("-created_at")
        .first()
    )
    if answers_since(collection, last.created_at if last else None) < needed:
        return
    # Another check may have started it a moment ago: that one is the retraining.
    with contextlib.suppress(TrainingAlreadyRunning):
        job = start_training(collection, None, automatic=True)
        log.info(
            "collection %s: %d new answers, retraining (job %s)", collection_id, needed, job.pk
        )
