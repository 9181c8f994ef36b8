"""What the worker does when the apps below it speak: their signals, connected in
WorkerConfig.ready(). Every send goes through worker/enqueue.py."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from django.db.models.signals import post_delete, post_save

from labeling.signals import answer_recorded, mining_wanted
from labeling.tasks import mine_pairs
from retrieval.models import Collection, ModelVersion
from retrieval.signals import images_added, version_activated
from worker import actions, retraining
from worker.enqueue import send_on_commit
from worker.models import TrainingPolicy


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


def connect() -> None:
    images_added.connect(queue_embedding, dispatch_uid="worker-images-added")
    version_activated.connect(_after_activation, dispatch_uid="worker-version-activated")
    answer_recorded.connect(retraining.on_answer_recorded, dispatch_uid="worker-answer")
    mining_wanted.connect(_queue_mining, dispatch_uid="worker-mining")
    post_save.connect(retraining.forget_policies, TrainingPolicy, dispatch_uid="worker-policy")
    post_delete.connect(retraining.forget_policies, TrainingPolicy, dispatch_uid="worker-policy")
