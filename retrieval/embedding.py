"""From stored images to vectors in a model version: load, embed with AutoRet, COPY.

A collection is searchable before anyone trains: `versions.ensure_initial_version` gives it an
UNTRAINED AutoRet network (seeded, so every process rebuilds the same weights from
ModelVersion.config) and `embed_new_images` fills that version and activates it once every image
has a vector and the index is built. Embedding is resumable: it only ever picks images without a
vector in the version, and the unique (version, image) constraint turns a doubled batch into a
no-op (queries.copy_embeddings).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import IO, Any

import numpy as np
import torch
from django.conf import settings
from django.db.models import Exists, OuterRef, QuerySet
from PIL import Image as PILImage
from PIL import ImageOps
from tqdm import tqdm

from retrieval import indexes, queries, versions
from retrieval.autoret.checkpoint import load_model
from retrieval.autoret.embed import embed_images
from retrieval.autoret.model import AutoRet, ModelConfig
from retrieval.models import Collection, Embedding, Image, ModelVersion

log = logging.getLogger(__name__)

BATCH_SIZE = 256

Progress = Callable[[int], None]
# Asked between batches; True stops the walk (a cancelled job), leaving `next_after` to go on.
ShouldStop = Callable[[], bool]


@lru_cache(maxsize=4)
def _network(version_id: int, config_key: str, checkpoint: str) -> AutoRet:
    # Keyed on the version's contents too, so a test database reusing an id never gets a stale net.
    version = ModelVersion.objects.get(pk=version_id)
    if checkpoint:
        return load_model(settings.MODELS_DIR / checkpoint, device="cpu")
    torch.manual_seed(int(version.config.get("seed", versions.INITIAL_SEED)))
    model = AutoRet(ModelConfig.from_dict(version.config["model"]))
    model.eval()
    return model


def load_network(version: ModelVersion) -> AutoRet:
    """The version's network, built once per process: from its checkpoint, else from its seed."""
    return _network(version.pk, repr(sorted(version.config.items())), version.checkpoint)


def _pixels(picture: PILImage.Image, size: int, channels: int) -> np.ndarray:
    """One picture as uint8 C x size x size: fitted inside the square keeping its aspect ratio
    and centred on black (padding, not cropping: nothing of the content is cut off)."""
    picture = ImageOps.exif_transpose(picture)
    picture = picture.convert("L" if channels == 1 else "RGB")
    fitted = ImageOps.pad(picture, (size, size), method=PILImage.Resampling.BILINEAR, color=0)
    array = np.asarray(fitted, dtype=np.uint8)
    return array[None] if channels == 1 else array.transpose(2, 0, 1)


def _stack(arrays: Sequence[np.ndarray], size: int, channels: int) -> torch.Tensor:
    if not arrays:
        return torch.empty((0, channels, size, size), dtype=torch.uint8)
    return torch.from_numpy(np.stack(arrays))


def pictures_to_tensor(
    pictures: Iterable[PILImage.Image], size: int, channels: int
) -> torch.Tensor:
    """uint8 N x C x size x size from Pillow images."""
    return _stack([_pixels(p, size, channels) for p in pictures], size, channels)


def load_pixels(
    images: Iterable[Image], size: int, channels: int
) -> tuple[list[int], np.ndarray, list[tuple[int, str]]]:
    """(ids, uint8 N x C x size x size, failed) of stored images; unreadable files are listed in
    `failed` with their error instead of stopping the rest (training data, a batch)."""
    ids: list[int] = []
    arrays: list[np.ndarray] = []
    failed: list[tuple[int, str]] = []
    for image in images:
        try:
            with image.file.open("rb") as handle, PILImage.open(handle) as picture:
                arrays.append(_pixels(picture, size, channels))
                ids.append(image.pk)
        except (OSError, ValueError, PILImage.DecompressionBombError) as error:
            log.warning("image %s cannot be read: %s", image.pk, error)
            failed.append((image.pk, str(error)))
    pixels = np.stack(arrays) if arrays else np.empty((0, channels, size, size), dtype=np.uint8)
    return ids, pixels, failed


def _input_shape(model: AutoRet) -> tuple[int, int]:
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


@dataclass
class BatchResult:
    """What one call of `embed_new_images` did; `finished` when the version is complete."""

    version_id: int
    embedded: int = 0
    failed: list[tuple[int, str]] = field(default_factory=list)
    next_after: int | None = None
    finished: bool = False
    activated: bool = False


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
    model = load_network(version)
    result = BatchResult(version_id=version.pk)
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


def _walk(
    version: ModelVersion,
    model: AutoRet,
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
    size, channels = _input_shape(model)
    cursor = after_id
    budget = limit
    while budget is None or budget > 0:
        if stop is not None and stop():
            result.next_after = cursor
            return result
        take = batch_size if budget is None else min(batch_size, budget)
        batch = list(missing.filter(pk__gt=cursor)[:take])
        if not batch:
            break
        ids, pixels, failed = load_pixels(batch, size, channels)
        result.failed.extend(failed)
        if ids:
            vectors = embed_images(model, torch.from_numpy(pixels), batch_size)
            result.embedded += queries.copy_embeddings(version, ids, vectors)
        cursor = batch[-1].pk
        if budget is not None:
            budget -= len(batch)
        if progress is not None:
            progress(len(batch))
        if bar is not None:
            bar.update(len(batch))
        if len(batch) < take:
            break
    else:
        result.next_after = cursor
        return result
    result.finished = True
    return result
