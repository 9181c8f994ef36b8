"""What labeling does when images or a collection are deleted (retrieval.deletion sends the
signals; connected in LabelingConfig.ready()).

The pairs, answers, history and group names of a deleted image go by foreign-key cascade. What
they implied goes with them: the groups they formed are replayed from the answers that remain,
under the collection's answers lock, so no concurrent answer is judged against a state that still
holds the deleted pairs (labeling.locks).
"""

from __future__ import annotations

from typing import Any

from labeling.answers import refresh_flags
from labeling.locks import lock_collection
from labeling.models import Constraint, ConstraintRevision, Group, Pair
from retrieval.signals import collection_contents, images_deleted, images_deleting


def _lock_answers(collection_id: int, **_: Any) -> None:
    lock_collection(collection_id)


def _refresh_inference(collection_id: int, image_ids: list[int] | None, **_: Any) -> None:
    if image_ids is None:
        return  # the whole collection went: nothing is left to infer
    # A full replay (no pair given): deleted pairs change the replay order, and the new epoch it
    # stores makes every other process replay anew instead of extending its kept replay.
    refresh_flags(collection_id)


def _contents(collection_id: int, **_: Any) -> dict[str, int]:
    pairs = Pair.objects.filter(collection_id=collection_id)
    return {
        "pairs": pairs.count(),
        "answers": Constraint.objects.filter(pair__collection_id=collection_id).count(),
        "answer history entries": ConstraintRevision.objects.filter(
            pair__collection_id=collection_id
        ).count(),
        "named groups": Group.objects.filter(collection_id=collection_id).count(),
    }


def connect() -> None:
    images_deleting.connect(_lock_answers, dispatch_uid="labeling-images-deleting")
    images_deleted.connect(_refresh_inference, dispatch_uid="labeling-images-deleted")
    collection_contents.connect(_contents, dispatch_uid="labeling-collection-contents")
