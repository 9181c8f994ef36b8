"""Retraining started by answers: the collection's TrainingPolicy, heard through labeling's
`answer_recorded` signal (connected in worker/hooks.py)."""

from __future__ import annotations

import contextlib
import functools
import time
from typing import Any

from django.db import transaction

from labeling.training import answers_since
from retrieval.models import Collection
from worker.actions import TrainingAlreadyRunning, active_training, start_training
from worker.models import Job, TrainingPolicy

# Collections whose policy retrains after answers, read at most this often per process (and again
# at once after this process saves a policy): the answers of collections without such a policy,
# nearly all of them, cost no query, as the labeling loop's query budget asks
# (tests/labeling/test_query_counts.py). A policy saved in another process applies within this.
POLICY_CACHE_SECONDS = 30.0
_watched: tuple[float, frozenset[int]] | None = None


def _retraining_collections() -> frozenset[int]:
    global _watched
    now = time.monotonic()
    if _watched is None or now - _watched[0] > POLICY_CACHE_SECONDS:
        ids = TrainingPolicy.objects.filter(retrain_after_answers__gt=0).values_list(
            "collection_id", flat=True
        )
        _watched = (now, frozenset(ids))
    return _watched[1]


def forget_policies(**_: Any) -> None:
    """A policy changed in this process: read them again at the next answer."""
    global _watched
    _watched = None


def on_answer_recorded(collection_id: int, **_: Any) -> None:
    if collection_id in _retraining_collections():
        # After commit: the count sees this answer, and a failing trigger (logged) must not turn
        # a stored answer into an error the page would retry.
        transaction.on_commit(functools.partial(after_answer, collection_id), robust=True)


def after_answer(collection_id: int) -> None:
    """Starts retraining once the collection's policy says enough new answers arrived since the
    last training job started."""
    collection = Collection.objects.get(pk=collection_id)
    policy = TrainingPolicy.objects.filter(collection=collection).first()
    if policy is None or not policy.retrain_after_answers:
        return
    if active_training(collection) is not None:
        return
    last = (
        Job.objects.filter(collection=collection, kind=Job.Kind.TRAIN)
        .order_by("-created_at")
        .first()
    )
    if answers_since(collection, last.created_at if last else None) < policy.retrain_after_answers:
        return
    # Another answer's request may have started it a moment ago: that one is the retraining.
    with contextlib.suppress(TrainingAlreadyRunning):
        start_training(collection, None)
