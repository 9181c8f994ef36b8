"""From stored images to vectors in a model version: features or pixels, the network, COPY.

A collection is searchable before anyone trains. `versions.ensure_initial_version` gives a new
collection version 1: the head on frozen ImageNet features (features.py), fitted on the
collection's own cached features and not trained (issue 13). `embed_new_images` fills the
features, fits that head once (saved as the version's checkpoint), embeds every image from its
cached features and activates the version once every image has a vector and the index is built.
Versions of older collections (a seeded untrained network, or one trained from scratch) embed from
pixels as before. Embedding is resumable: it only ever picks images without a vector in the
version, and the unique (version, image) constraint turns a doubled batch into a no-op
(queries.copy_embeddings).
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import IO, Any

import numpy as np
import torch
from django.conf import settings
from django.db.models import Exists, OuterRef, QuerySet
from PIL import Image as PILImage
from tqdm import tqdm

from retrieval import features, indexes, queries, versions
from retrieval.autoret.checkpoint import load_model, save_head_checkpoint
from retrieval.autoret.embed import embed_images
from retrieval.autoret.features import FeatureConfig
from retrieval.autoret.head import HeadConfig, PretrainedAutoRet
from retrieval.autoret.head_training import embed_features, version_one
from retrieval.autoret.model import AutoRet, ModelConfig
from retrieval.batches import KeysetWalk
from retrieval.models import Collection, Embedding, Image, ModelVersion
from retrieval.pixels import load_pixels, pictures_to_tensor

log = logging.getLogger(__name__)

BATCH_SIZE = 256

Network = AutoRet | PretrainedAutoRet
Progress = Callable[[int], None]
# Asked between batches; True stops the walk (a cancelled job), leaving `next_after` to go on.
ShouldStop = Callable[[], bool]


class NotFitted(ValueError):
    """A pretrained-features version whose head has not been fitted yet (too few images)."""


@lru_cache(maxsize=4)
def _network(version_id: int, config_key: str, checkpoint: str) -> Network:
    # Keyed on the version's contents too, so a test database reusing an id never gets a stale net.
    version = ModelVersion.objects.get(pk=version_id)
    if checkpoint:
        return load_model(settings.MODELS_DIR / checkpoint, device="cpu")
    if features.feature_config(version) is not None:
        raise NotFitted(f"version {version.number}'s head is fitted once its images have features")
    torch.manual_seed(int(version.config.get("seed", versions.INITIAL_SEED)))
    model = AutoRet(ModelConfig.from_dict(version.config["model"]))
    model.eval()
    return model


def load_network(version: ModelVersion) -> Network:
    """The version's network, built once per process: from its checkpoint, else from its seed."""
    return _network(version.pk, repr(sorted(version.config.items())), version.checkpoint)


def _input_shape(model: Network) -> tuple[int, int]:
    if isinstance(model, PretrainedAutoRet):
        return model.image_size, 3
    size = model.config.image_size
    if size is None:
        raise ValueError("a platform model needs a fixed image_size in its config")
    return size, model.config.in_channels


def embed_pictures(version: ModelVersion, pictures: Sequence[PILImage.Image]) -> np.ndarray:
    """float32 N x 128 vectors of Pillow images under `version` (a query image, a batch)."""
    model = load_network(version)
    size, channels = _input_shape(model)
    return embed_images(model, pictures_to_tensor(pictures, size, channels), BATCH_SIZE)


def embed_upload(version: ModelVersion, upload: IO[bytes]) -> np.ndarray:
    """The vector (128,) of one uploaded, already validated image file."""
    # Embedded inside the `with`: Pillow frees the pixels when the file closes.
    with PILImage.open(upload) as picture:
        return embed_pictures(version, [picture])[0]


def fit_version_one(version: ModelVersion, cfg: FeatureConfig) -> bool:
    """Fits an untrained pretrained-features version's head on the collection's cached features
    (PCA, no training) and saves it as the version's checkpoint. False when fewer than two
    images have features. Two workers may race here: the first to record its checkpoint wins
    and the other's files are removed."""
    ids, array = features.read_all(version.collection, cfg, features.FIT_ROWS)
    if len(ids) < 2:
        return False
    head_cfg = HeadConfig.from_dict(version.config.get("head") or {})
    model = version_one(torch.from_numpy(array), cfg, head_cfg, seed=features.SEED)
    name = versions.new_checkpoint_name(version.collection_id, version.number)
    directory = settings.MODELS_DIR / name
    metrics = {"fitted_on_images": len(ids), "fit": model.head.fit_report}
    save_head_checkpoint(directory, model, metrics=metrics)
    won = ModelVersion.objects.filter(pk=version.pk, checkpoint="").update(checkpoint=name)
    if not won:
        shutil.rmtree(directory, ignore_errors=True)
    version.refresh_from_db(fields=["checkpoint"])
    return True


@dataclass
class BatchResult:
    """What one call of `embed_new_images` did; `finished` when the version is complete."""

    version_id: int
    embedded: int = 0
    failed: list[tuple[int, str]] = field(default_factory=list)
    next_after: int | None = None
    finished: bool = False
    activated: bool = False
    # "features" while a pretrained-features version 1 is still waiting for every image's
    # features (its head is fitted on them), then "embedding".
    phase: str = "embedding"


def _target_version(collection: Collection) -> ModelVersion:
    if collection.active_version_id is not None:
        return ModelVersion.objects.get(pk=collection.active_version_id)
    return versions.ensure_initial_version(collection)


def embed_new_images(
    collection: Collection,
    after_id: int = 0,
    limit: int | None = None,
    batch_size: int = BATCH_SIZE,
    progress: Progress | None = None,
    progress_bar: bool = False,
    version: ModelVersion | None = None,
    stop: ShouldStop | None = None,
) -> BatchResult:
    """Embeds the collection's images that have no vector in its target version yet.

    The target is `version` (a newly trained one, filled while search still answers from the
    active one), else the active version (images added since it was embedded), else the initial
    untrained version. Walks images by id from `after_id`, at most `limit` of them (None: all);
    `next_after` is where the next call goes on. An image whose file cannot be read is logged
    and skipped (listed in `failed`), so one bad file never blocks the rest. When the walk
    reaches the end the index is built and, when the collection has no active version yet, the
    version is activated (a trained version is activated by its job, after its evaluation).
    `stop()` is asked before each batch; when it says True the walk ends unfinished.
    `progress(n)` is called with the number of images handled by each batch (an increment, as
    tqdm's `update` takes it); `progress_bar` shows a tqdm bar on stderr (commands).
    """
    if version is None:
        version = _target_version(collection)
    result = BatchResult(version_id=version.pk)
    cfg = features.feature_config(version)
    if cfg is not None and not version.checkpoint:
        # Version 1 on pretrained features: every image's features first, then the head's PCA.
        filled = features.fill(collection, cfg, after_id, limit, stop, progress)
        result.failed, result.phase = filled.failed, "features"
        if not filled.finished:
            result.next_after = filled.next_after
            return result
        if not fit_version_one(version, cfg):
            return result  # fewer than two readable images: the next upload tries again
        # The embedding walk reports unreadable files again, once.
        after_id, result.phase, result.failed = 0, "embedding", []
    model = load_network(version)
    missing = (
        Image.objects.filter(collection=collection, pk__gt=after_id)
        .exclude(Exists(Embedding.objects.filter(version=version, image=OuterRef("pk"))))
        .order_by("pk")
    )
    bar = None
    if progress_bar:
        total = missing.count() if limit is None else min(limit, missing.count())
        bar = tqdm(total=total, unit="img", desc=f"embedding {collection}")
    try:
        _walk(version, model, missing, result, after_id, limit, batch_size, progress, bar, stop)
    finally:
        if bar is not None:
            bar.close()
    # The collection (and so the version) may have been deleted meanwhile: an index built now
    # would be left behind for rows that are gone.
    if result.finished and ModelVersion.objects.filter(pk=version.pk).exists():
        indexes.build_index(version)
        result.activated = versions.activate_if_first(collection, version)
    return result


def _vectors(
    model: Network, batch: Sequence[Image]
) -> tuple[list[int], np.ndarray, list[tuple[int, str]]]:
    """(ids, float32 N x 128, failed) of one batch: from cached features (computed where
    missing) for a pretrained-features version, from pixels for the others."""
    if isinstance(model, PretrainedAutoRet):
        cfg = model.feature_config
        ids, array, failed = features.ensure(batch, cfg)
        vectors = embed_features(model.head, torch.from_numpy(array)).numpy()
        return ids, vectors, failed
    size, channels = _input_shape(model)
    ids, pixels, failed = load_pixels(batch, size, channels)
    return ids, embed_images(model, torch.from_numpy(pixels), BATCH_SIZE), failed


def _walk(
    version: ModelVersion,
    model: Network,
    missing: QuerySet[Image],
    result: BatchResult,
    after_id: int,
    limit: int | None,
    batch_size: int,
    progress: Progress | None,
    bar: tqdm[Any] | None,
    stop: ShouldStop | None = None,
) -> BatchResult:
    """The batch loop of `embed_new_images`: embeds and stores; `finished` at the end."""
    walk = KeysetWalk(missing, after_id, limit, batch_size, stop)
    for batch in walk:
        ids, vectors, failed = _vectors(model, batch)
        result.failed.extend(failed)
        if ids:
            result.embedded += queries.copy_embeddings(version, ids, vectors)
        if progress is not None:
            progress(len(batch))
        if bar is not None:
            bar.update(len(batch))
    result.next_after, result.finished = walk.next_after, walk.finished
    return result
