"""Deleting images (one or a selection) and whole collections, with everything derived from them.

The rows go in one transaction: the images and, by foreign-key cascade, their vectors, cached
features, pairs with their leases and answers, and named groups; for a collection also its model
versions, memberships and jobs. The apps above retrieval take their locks and bring what they
derive up to date through retrieval.signals (labeling: the answers lock and the inference; worker:
no collection deleted under a running job). Files (originals, thumbnails, checkpoints) and HNSW
indexes go only once that transaction has committed, so a rollback never loses a file that a
remaining row still names. The audit log keeps who deleted what, names and hashes included: it
outlives the rows (audit.models.Event.collection has no database constraint).
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Iterable
from dataclasses import dataclass
from typing import cast

from django.contrib.auth.models import User
from django.core.files.storage import default_storage
from django.db import transaction

from audit.models import Event
from retrieval import indexes, versions
from retrieval.models import Collection, Embedding, Image, ModelVersion
from retrieval.signals import collection_contents, images_deleted, images_deleting

log = logging.getLogger(__name__)

# One request deletes at most this many images (a page of the grid is 60, search shows 120).
MAX_DELETE = 200


class DeletionRefused(Exception):
    """A deletion that must not happen now (a job is running in the collection); says why."""


@dataclass(frozen=True)
class DeletedImage:
    id: int
    name: str
    sha256: str


def delete_images(
    collection: Collection, image_ids: Iterable[int], by: User | None
) -> list[DeletedImage]:
    """Deletes the listed images of `collection` and everything derived from them; ids that are
    not (or no longer) in the collection are skipped, so a repeated request is harmless. Returns
    what was deleted, in id order."""
    ids = sorted({int(i) for i in image_ids})
    if len(ids) > MAX_DELETE:
        raise ValueError(f"delete at most {MAX_DELETE} images at once")
    with transaction.atomic():
        images_deleting.send(sender=Image, collection_id=collection.pk, image_ids=ids)
        # Locked before Django's cascade looks for the rows that refer to them: a vector or pair
        # written meanwhile either committed first (and is found) or waits and then fails its
        # own foreign-key check, never this deletion's.
        images = list(
            Image.objects.select_for_update()
            .filter(collection=collection, pk__in=ids)
            .order_by("pk")
        )
        if not images:
            return []
        Image.objects.filter(pk__in=[image.pk for image in images]).delete()
        images_deleted.send(
            sender=Image, collection_id=collection.pk, image_ids=[image.pk for image in images]
        )
        deleted = [DeletedImage(image.pk, image.original_name, image.sha256) for image in images]
        Event.record(
            Event.Action.IMAGES_DELETE, by, collection,
            collection_name=collection.name, count=len(deleted),
            images=[{"id": d.id, "name": d.name, "sha256": d.sha256} for d in deleted],
        )  # fmt: skip
        names = [name for image in images for name in (image.file.name, image.thumbnail.name)]
        transaction.on_commit(lambda: delete_unreferenced([name for name in names if name]))
    return deleted


def delete_unreferenced(names: list[str]) -> None:
    """Removes stored files that no image row names. Names are content addressed, so the same
    name may belong to an image imported again since (or to one an import is still writing)."""
    for name in names:
        if not (
            Image.objects.filter(file=name).exists()
            or Image.objects.filter(thumbnail=name).exists()
        ):
            try:
                default_storage.delete(name)
            except OSError:
                log.warning("could not remove %s", name)


def contents(collection: Collection) -> dict[str, int]:
    """What deleting `collection` deletes, by kind: for its confirmation page and audit row."""
    images = Image.objects.filter(collection=collection)
    counts = {
        "images": images.count(),
        "image files and thumbnails": images.exclude(file="").count()
        + images.exclude(thumbnail="").count(),
        "model versions": ModelVersion.objects.filter(collection=collection).count(),
        "model checkpoints": ModelVersion.objects.filter(collection=collection)
        .exclude(checkpoint="")
        .count(),
        "vectors": Embedding.objects.filter(version__collection=collection).count(),
    }
    for _, answer in collection_contents.send(sender=Collection, collection_id=collection.pk):
        counts |= cast("dict[str, int]", answer)  # what every receiver returns
    return counts


def delete_collection(collection: Collection, by: User | None) -> dict[str, int]:
    """Deletes `collection` with all its images, versions, answers and jobs, then its files and
    checkpoints; DeletionRefused while a job runs in it. Returns what went (contents())."""
    with transaction.atomic():
        images_deleting.send(sender=Collection, collection_id=collection.pk, image_ids=None)
        locked = Collection.objects.select_for_update().filter(pk=collection.pk).first()
        if locked is None:
            raise Collection.DoesNotExist(f"collection {collection.pk} is gone")
        counts = contents(locked)
        gone = list(ModelVersion.objects.filter(collection=locked).only("pk", "checkpoint"))
        Event.record(Event.Action.COLLECTION_DELETE, by, locked, locked, name=locked.name, **counts)
        locked.delete()
        images_deleted.send(sender=Collection, collection_id=collection.pk, image_ids=None)
        transaction.on_commit(lambda: _remove_collection_files(collection.pk, gone))
    return counts


def _remove_collection_files(collection_id: int, gone: list[ModelVersion]) -> None:
    for version in gone:
        # Empty partial indexes would otherwise stay on the embedding table for good.
        indexes.drop_index(version.pk)
        versions.remove_checkpoint(version)
    # Every file of a collection lies under its own folder (retrieval.models.image_upload_to).
    shutil.rmtree(default_storage.path(f"collections/{collection_id}"), ignore_errors=True)
