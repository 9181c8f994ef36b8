"""What the worker does when the apps below it speak: their signals, connected in
WorkerConfig.ready(). Every send goes through worker/enqueue.py."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from django.db.models.signals import post_delete, post_save

from labeling.signals import answer_recorded, mining_wanted
from labeling.tasks import mine_pairs
from retrieval.deletion import DeletionRefused
from retrieval.models import Collection, ModelVersion
from retrieval.signals import (
    collection_contents,
    images_added,
    images_deleting,
    version_activated,
)
from worker import actions, retraining
from worker.enqueue import send_on_commit
from worker.models import Job, TrainingPolicy


def queue_embedding(collection_id: int, **_: Any) -> None:
    """The collection's images without a vector get one: an embedding job, whose progress
    (features, then vectors) its job page shows. Idempotent: a second job finds nothing left."""
    collection = Collection.objects.filter(pk=collection_id).first()
    if collection is not None and actions.has_images_to_embed(collection):
        actions.enqueue(actions.start_embedding(collection))


def _after_activation(version: ModelVersion, **_: Any) -> None:
    """Images uploaded since the version was embedded get their vectors, and the pair queue is
    mined again from the new version at once (its pairs replace the old version's unanswered
    ones), rather than when the next annotator notices the change."""
    queue_embedding(version.collection_id)
    send_on_commit(mine_pairs, version.collection_id)


def _queue_mining(collection_id: int, unclaim: Callable[[], None], **_: Any) -> None:
    send_on_commit(mine_pairs, collection_id, unsent=unclaim)


def _refuse_while_jobs_run(collection_id: int, image_ids: list[int] | None, **_: Any) -> None:
    """A collection is not deleted under a queued or running job: its next step would find the
    rows gone mid-way and a training slice would write a checkpoint nobody deletes. (Deleting
    images needs no such wait: a job skips images deleted meanwhile.)"""
    if image_ids is not None:
        return
    active = Job.objects.filter(collection_id=collection_id, status__in=Job.ACTIVE).count()
    if active:
        raise DeletionRefused(
            f"{active} job{'s' if active > 1 else ''} still queued or running in this "
            "collection: cancel them on its Models page, then delete it."
        )


def _job_count(collection_id: int, **_: Any) -> dict[str, int]:
    return {"jobs": Job.objects.filter(collection_id=collection_id).count()}


def connect() -> None:
    images_added.connect(queue_embedding, dispatch_uid="worker-images-added")
    version_activated.connect(_after_activation, dispatch_uid="worker-version-activated")
    answer_recorded.connect(retraining.on_answer_recorded, dispatch_uid="worker-answer")
    mining_wanted.connect(_queue_mining, dispatch_uid="worker-mining")
    images_deleting.connect(_refuse_while_jobs_run, dispatch_uid="worker-images-deleting")
    collection_contents.connect(_job_count, dispatch_uid="worker-collection-contents")
    post_save.connect(retraining.forget_policies, TrainingPolicy, dispatch_uid="worker-policy")
    post_delete.connect(retraining.forget_policies, TrainingPolicy, dispatch_uid="worker-policy")
