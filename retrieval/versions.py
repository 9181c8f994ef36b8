"""A collection's model versions from first to last: the one module that creates the initial
version, marks a version ready, switches search to a version (or back: a rollback), frees a
version's vectors and abandons one that will never be complete.

The life of a version: version 1 is the head on frozen ImageNet features, fitted on the collection's
features and not trained (retrieval/features.py; collections made before issue 13 keep their
untrained 32-px network), EMBEDDING until every image has a vector;
a trained version is TRAINING, then EMBEDDING while a job fills it and search still answers from
the active one. It becomes READY once (`complete`: every image embedded, the index built), and
only a READY version is ever activated. A version that will never be complete is FAILED and its
vectors are freed (`abandon`); an old version's vectors can be freed by hand (DELETED).

Nothing here imports PyTorch (web processes call it); the network's config class is imported
where the initial version is made.
"""

from __future__ import annotations

import math
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from django.conf import settings
from django.contrib.auth.models import User
from django.db import transaction
from django.utils import timezone
from PIL import Image as PILImage

from audit.models import Event
from retrieval import indexes
from retrieval.autoret.constants import DEFAULT_ALPHA
from retrieval.models import Collection, Embedding, ModelVersion
from retrieval.signals import version_activated

# The from-scratch network (the "scratch" training recipe, and version 1 of collections made
# before the pretrained features): AutoRet at 32 px.
INITIAL_IMAGE_SIZE = 32
INITIAL_SEED = 0


class VersionNotAllowed(Exception):
    """An activation or deletion that would leave search without a complete version."""


def channels_for(collection: Collection) -> int:
    """1 when the collection's first images are all greyscale (Fashion-MNIST), else 3."""
    for image in collection.images.order_by("id")[:16]:
        try:
            with image.file.open("rb") as handle, PILImage.open(handle) as picture:
                if picture.mode not in ("L", "1", "I", "I;16", "LA"):
                    return 3
        except OSError:
            continue
    return 1 if collection.images.exists() else 3


def alpha_of(version: ModelVersion) -> float:
    """The cannot-link target distance the version was trained with (TrainConfig.alpha); a head
    on pretrained features without one uses R * sqrt(2) on its sphere of radius R, as its training
    does (HeadTrainConfig.alpha)."""
    config = version.config or {}
    train = config.get("train")
    value = (train if isinstance(train, dict) else config).get("alpha")
    head = config.get("head")
    if value is None and isinstance(head, dict):
        value = float(head.get("sphere_radius", 5.0)) * math.sqrt(2.0)
    try:
        return float(value if value is not None else DEFAULT_ALPHA)
    except (TypeError, ValueError):
        return DEFAULT_ALPHA


def initial_model_config(collection: Collection) -> dict[str, Any]:
    """The network config a collection's versions start from: AutoRet's defaults at
    INITIAL_IMAGE_SIZE, with as many input channels as its images have."""
    from retrieval.autoret.model import ModelConfig  # PyTorch: only where a version is made

    config = ModelConfig(image_size=INITIAL_IMAGE_SIZE, in_channels=channels_for(collection))
    return config.to_dict()


def ensure_initial_version(collection: Collection) -> ModelVersion:
    """The version that embeds a collection nobody has trained on yet (created once).

    Returns the collection's latest version if it has one; else creates version 1: the default
    feature stage and head (features.default_version_config), fitted once the images have
    features (embedding.fit_version_one).
    """
    from retrieval.features import default_version_config  # PyTorch: only in workers

    with transaction.atomic():
        # The row lock makes a second caller (another worker) wait here and then find version 1.
        locked = Collection.objects.select_for_update().get(pk=collection.pk)
        existing = locked.versions.order_by("-number").first()
        if existing is not None:
            return existing
        return ModelVersion.objects.create(
            collection=locked,
            number=1,
            kind=ModelVersion.Kind.PRETRAINED,
            status=ModelVersion.Status.EMBEDDING,
            config=default_version_config(),
        )


def complete(version: ModelVersion) -> None:
    """Marks `version` READY: every image has its vector and its index is built."""
    ModelVersion.objects.filter(pk=version.pk).update(status=ModelVersion.Status.READY)
    version.status = ModelVersion.Status.READY


def activate(version: ModelVersion, by: User | None = None) -> None:
    """Switches search to `version` (a rollback when it is older than the active one).

    Only a READY version is complete (every image embedded, index built); anything else would let
    search see a half-done state. `by` None: the platform itself (a finished training job).
    """
    with transaction.atomic():
        # The status is read under the collection lock delete_embeddings takes to claim a
        # version: a version read as ready a moment ago may be losing its vectors now.
        Collection.objects.select_for_update().filter(pk=version.collection_id).exists()
        current = ModelVersion.objects.values_list("status", flat=True).get(pk=version.pk)
        if current != ModelVersion.Status.READY:
            raise VersionNotAllowed(
                f"Version {version.number} is {current}; only a ready version can be activated."
            )
        _switch(version, by)
    version_activated.send(sender=ModelVersion, version=version)


def activate_if_first(collection: Collection, version: ModelVersion) -> bool:
    """Completes and activates a fully embedded version when its collection has no active one."""
    with transaction.atomic():
        locked = Collection.objects.select_for_update().filter(pk=collection.pk).first()
        # None: the collection was deleted while its images were being embedded.
        if locked is None or locked.active_version_id is not None:
            return False
        complete(version)
        _switch(version, None)
    collection.active_version = version
    return True


def _switch(version: ModelVersion, by: User | None) -> None:
    """Makes `version` the one its collection's searches answer from, atomically, and logs it."""
    with transaction.atomic():
        locked = Collection.objects.select_for_update().get(pk=version.collection_id)
        previous = (
            ModelVersion.objects.filter(pk=locked.active_version_id)
            .values_list("number", flat=True)
            .first()
            if locked.active_version_id is not None
            else None
        )
        ModelVersion.objects.filter(pk=version.pk).update(activated_at=timezone.now())
        Collection.objects.filter(pk=version.collection_id).update(active_version=version)
        Event.record(
            Event.Action.ACTIVATE, by, version.collection_id, version,
            version=version.number, previous=previous,
        )  # fmt: skip


def delete_embeddings(
    version: ModelVersion,
    by: User | None = None,
    check: Callable[[], None] | None = None,
) -> int:
    """Frees an old version's space: its index, then its vectors. Never the active version, nor
    one `check` refuses by raising VersionNotAllowed (worker: a job filling it), both under the
    collection lock. Returns how many vectors were deleted."""
    with transaction.atomic():
        # Checked and claimed under the collection lock `activate` takes: once this commits,
        # activation refuses the version, so search never switches to one losing its vectors.
        collection = Collection.objects.select_for_update().get(pk=version.collection_id)
        if collection.active_version_id == version.pk:
            raise VersionNotAllowed("The active version's embeddings cannot be deleted.")
        if check is not None:
            check()
        ModelVersion.objects.filter(pk=version.pk).update(status=ModelVersion.Status.DELETED)
    # The index goes first: a half-deleted version must never be searchable through it.
    indexes.drop_index(version)
    with transaction.atomic():
        deleted, _ = version.embeddings.all().delete()
        Event.record(
            Event.Action.EMBEDDINGS_DELETE, by, collection, version,
            version=version.number, vectors=deleted,
        )  # fmt: skip
    version.refresh_from_db()
    return deleted


def fail(version_id: int) -> bool:
    """Marks a version that will never be complete FAILED; a READY one is left alone. Returns
    whether it was marked."""
    return bool(
        ModelVersion.objects.filter(pk=version_id)
        .exclude(status=ModelVersion.Status.READY)
        .update(status=ModelVersion.Status.FAILED)
    )


def new_checkpoint_name(collection_id: int, number: int) -> str:
    """A fresh ModelVersion.checkpoint for version `number` of a collection: unique even when a
    database is recreated with the same ids (tests, a restore), so a stale checkpoint under the
    same name is never taken for this version's."""
    return f"collection-{collection_id}/v{number}-{uuid.uuid4().hex[:8]}"


def checkpoint_dir(version: ModelVersion) -> Path:
    """Where a trained version's checkpoint lives (ModelVersion.checkpoint under MODELS_DIR)."""
    return Path(settings.MODELS_DIR) / version.checkpoint


def remove_checkpoint(version: ModelVersion) -> None:
    """Deletes a version's checkpoint directory (a failed version's, a deleted collection's)."""
    # An empty name would make checkpoint_dir MODELS_DIR itself: every version's checkpoints.
    if version.checkpoint:
        shutil.rmtree(checkpoint_dir(version), ignore_errors=True)


def abandon(version_id: int) -> bool:
    """A training run that ends without activating its version: the version is FAILED and the
    vectors it got so far are freed (index first). A version that became ready is left alone.
    Returns whether the version was failed (its checkpoint is then of no use)."""
    failed = fail(version_id)
    if failed and not Collection.objects.filter(active_version_id=version_id).exists():
        indexes.drop_index(version_id)
        Embedding.objects.filter(version_id=version_id).delete()
    return failed
