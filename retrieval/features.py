"""Cached backbone features (issue 13): each image's frozen ImageNet patch features, computed once
per image and feature configuration and kept in PostgreSQL (`ImageFeature`), where workers on
every host find them.

Version 1 of a collection is the head fitted on these features without training
(`versions.ensure_initial_version`, `embedding.embed_new_images`), and every head a training job
trains reads them instead of decoding images (worker/pipeline.py). Filling is batched, resumable
and idempotent: a walk only picks images without a row under the configuration's key, and a row
stored twice (a redelivered batch, two workers) is skipped by the unique (image, key) constraint.
Runs where PyTorch is loaded (workers, search by upload); web pages never import this module.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import numpy as np
import torch
from django.db import connection
from django.db.models import Exists, OuterRef, QuerySet

from retrieval.autoret.features import FeatureConfig, FeatureStage, extract_features
from retrieval.autoret.head import HeadConfig
from retrieval.batches import KeysetWalk
from retrieval.models import Collection, Image, ImageFeature, ModelVersion
from retrieval.pixels import load_pixels

# Images decoded and run through the backbone at once: 256 x 3 x 128 x 128 bytes of pixels.
EXTRACT_BATCH = 256
# Rows read per query when a whole collection's features are loaded (12.8 kB each by default).
READ_BATCH = 2048
# The PCA of version 1 is fitted on at most this many images (FeatureHead.fit samples as many).
FIT_ROWS = 20_000
SEED = 0

Progress = Callable[[int], None]
ShouldStop = Callable[[], bool]


def default_version_config() -> dict[str, Any]:
    """What a new version of any collection is, unless its training asks for a from-scratch
    network: the default feature stage and head (the CLI's `train` default too)."""
    return {
        "features": FeatureConfig().to_dict(),
        "head": HeadConfig().to_dict(),
        "seed": SEED,
    }


def feature_config(version: ModelVersion) -> FeatureConfig | None:
    """The feature configuration a version embeds from; None for a from-scratch network."""
    raw = (version.config or {}).get("features")
    return FeatureConfig.from_dict(raw) if raw else None


def device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@lru_cache(maxsize=2)
def _stage(config_json: str) -> FeatureStage:
    return FeatureStage(FeatureConfig.from_dict(json.loads(config_json))).to(device())


def stage_for(cfg: FeatureConfig) -> FeatureStage:
    """The frozen backbone of `cfg`, built once per process."""
    return _stage(json.dumps(cfg.to_dict(), sort_keys=True))


def _decode(data: bytes | memoryview, cfg: FeatureConfig) -> np.ndarray:
    return np.frombuffer(bytes(data), dtype=np.float16).reshape(cfg.steps, cfg.dim)


def extract(
    images: Sequence[Image], cfg: FeatureConfig
) -> tuple[list[int], np.ndarray, list[tuple[int, str]]]:
    """(ids, float16 N x T x F features, failed) of stored images; an unreadable file is listed
    in `failed` with its error and the others go on."""
    ids: list[int] = []
    parts: list[np.ndarray] = []
    failed: list[tuple[int, str]] = []
    stage = stage_for(cfg)
    for begin in range(0, len(images), EXTRACT_BATCH):
        batch_ids, pixels, batch_failed = load_pixels(
            images[begin : begin + EXTRACT_BATCH], cfg.input_size, 3
        )
        failed.extend(batch_failed)
        if batch_ids:
            ids.extend(batch_ids)
            parts.append(extract_features(stage, torch.from_numpy(pixels)).numpy())
    empty = np.empty((0, cfg.steps, cfg.dim), dtype=np.float16)
    return ids, np.concatenate(parts) if parts else empty, failed


def store(image_ids: Sequence[int], array: np.ndarray, cfg: FeatureConfig) -> int:
    """Saves features (N x T x F) under cfg.key; returns how many rows were new.

    A row that exists already is skipped (ON CONFLICT), and so is an image deleted since it was
    read (the join), so neither a second worker nor a deletion makes the batch fail.
    """
    if not len(image_ids):
        return 0
    blobs = [np.ascontiguousarray(row, dtype=np.float16).tobytes() for row in array]
    with connection.cursor() as cursor:
        cursor.execute(
            f"INSERT INTO {ImageFeature._meta.db_table} (image_id, key, data) "
            "SELECT v.image_id, %s, v.data "
            "FROM unnest(%s::bigint[], %s::bytea[]) AS v(image_id, data) "
            f"JOIN {Image._meta.db_table} i ON i.id = v.image_id "
            "ON CONFLICT (image_id, key) DO NOTHING",
            [cfg.key, [int(i) for i in image_ids], blobs],
        )
        return int(cursor.rowcount)


def read(image_ids: Sequence[int], cfg: FeatureConfig) -> dict[int, np.ndarray]:
    """The stored features (T x F float16) of those of `image_ids` that have them."""
    rows = ImageFeature.objects.filter(image_id__in=list(image_ids), key=cfg.key).values_list(
        "image_id", "data"
    )
    return {image_id: _decode(data, cfg) for image_id, data in rows}


def ensure(
    images: Sequence[Image], cfg: FeatureConfig
) -> tuple[list[int], np.ndarray, list[tuple[int, str]]]:
    """(ids, N x T x F, failed): the features of `images`, read where stored, else computed
    and stored. Unreadable images are left out and listed in `failed`."""
    known = read([image.pk for image in images], cfg)
    new_ids, new, failed = extract([image for image in images if image.pk not in known], cfg)
    store(new_ids, new, cfg)
    known.update(zip(new_ids, new, strict=True))
    ids = [image.pk for image in images if image.pk in known]
    if not ids:
        return [], np.empty((0, cfg.steps, cfg.dim), dtype=np.float16), failed
    return ids, np.stack([known[i] for i in ids]), failed


def missing(collection: Collection, cfg: FeatureConfig) -> QuerySet[Image]:
    """The collection's images without features under `cfg`, by id."""
    stored = ImageFeature.objects.filter(image=OuterRef("pk"), key=cfg.key)
    return Image.objects.filter(collection=collection).exclude(Exists(stored)).order_by("pk")


def counts(collection: Collection, cfg: FeatureConfig) -> tuple[int, int]:
    """(images with features under `cfg`, images) of the collection."""
    done = ImageFeature.objects.filter(image__collection=collection, key=cfg.key).count()
    return done, Image.objects.filter(collection=collection).count()


@dataclass
class FillResult:
    """What one call of `fill` did; `finished` when the walk reached the last image."""

    stored: int = 0
    failed: list[tuple[int, str]] = field(default_factory=list)
    next_after: int | None = None
    finished: bool = False


def fill(
    collection: Collection,
    cfg: FeatureConfig,
    after_id: int = 0,
    limit: int | None = None,
    stop: ShouldStop | None = None,
    progress: Progress | None = None,
) -> FillResult:
    """Computes and stores the features of the collection's images that lack them, walking by id
    from `after_id`, at most `limit` images (None: all). `next_after` is where the next call goes
    on; `stop()` is asked before each batch; `progress(n)` gets each batch's size."""
    result = FillResult()
    walk = KeysetWalk(missing(collection, cfg), after_id, limit, EXTRACT_BATCH, stop)
    for batch in walk:
        ids, array, failed = extract(batch, cfg)
        result.stored += store(ids, array, cfg)
        result.failed.extend(failed)
        if progress is not None:
            progress(len(batch))
    result.next_after, result.finished = walk.next_after, walk.finished
    return result


def read_all(
    collection: Collection, cfg: FeatureConfig, max_rows: int | None = None
) -> tuple[list[int], np.ndarray]:
    """(ids, float16 N x T x F) of every image of the collection with stored features, by id;
    with `max_rows`, an evenly spaced sample of at most that many."""
    ids = list(
        ImageFeature.objects.filter(image__collection=collection, key=cfg.key)
        .order_by("image_id")
        .values_list("image_id", flat=True)
    )
    if max_rows is not None and len(ids) > max_rows:
        ids = [ids[i] for i in np.linspace(0, len(ids) - 1, max_rows).round().astype(int)]
    kept: list[int] = []
    out = np.empty((len(ids), cfg.steps, cfg.dim), dtype=np.float16)
    for begin in range(0, len(ids), READ_BATCH):
        found = read(ids[begin : begin + READ_BATCH], cfg)
        # An image deleted between the two queries is left out.
        for image_id in ids[begin : begin + READ_BATCH]:
            if image_id in found:
                out[len(kept)] = found[image_id]
                kept.append(image_id)
    return kept, out[: len(kept)]
