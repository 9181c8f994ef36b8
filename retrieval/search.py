"""Search as the pages and the API use it: the active version, the nearest images to an image or
an upload, and what a page shows of them (version labels, hits, the 2-D map, label colours).

Nearest-neighbour SQL lives in retrieval.queries, vectors in retrieval.embedding.
"""

from __future__ import annotations

import colorsys
import statistics
from dataclasses import dataclass
from typing import Any

import numpy as np
from django.conf import settings
from django.core.files.uploadedfile import UploadedFile

from retrieval import queries
from retrieval.imports import Limits, Rejected, decode_query
from retrieval.models import Collection, Image, ModelVersion

# Results per page, and the API's k when none is asked for.
PAGE_SIZE = 24


class NoActiveVersion(Exception):
    """The collection has no active model version yet: nothing is embedded and indexed."""

    def __str__(self) -> str:
        return (
            "This collection has no active model version yet: its images are still being "
            "embedded. Try again once embedding has finished."
        )


class NotEmbeddedYet(NoActiveVersion):
    """The image came after its collection's active version was embedded; the worker is on it."""

    def __str__(self) -> str:
        return "This image has no vector in the active model version yet: try again shortly."


@dataclass
class Hit:
    image: Image
    distance: float


def active_version_or_none(collection: Collection) -> ModelVersion | None:
    if collection.active_version_id is None:
        return None
    return ModelVersion.objects.filter(pk=collection.active_version_id).first()


def active_version(collection: Collection) -> ModelVersion:
    version = active_version_or_none(collection)
    if version is None:
        raise NoActiveVersion
    return version


def hits(pairs: list[tuple[int, float]]) -> list[Hit]:
    images = Image.objects.in_bulk([image_id for image_id, _ in pairs])
    return [Hit(images[i], d) for i, d in pairs if i in images]


def similar_to_image(
    collection: Collection, image: Image, k: int, offset: int = 0
) -> tuple[ModelVersion, list[tuple[int, float]]]:
    """The k nearest images of the collection to one of its images (itself left out)."""
    version = active_version(collection)
    vector = queries.vector_of(version, image.pk)
    if vector is None:
        raise NotEmbeddedYet
    return version, queries.nearest(version, vector, k, exclude_image_ids=[image.pk], offset=offset)


def similar_to_upload(
    collection: Collection, upload: UploadedFile, k: int
) -> tuple[ModelVersion, list[tuple[int, float]]]:
    """The k nearest images to an uploaded image, validated like an import (raises Rejected)."""
    version = active_version(collection)
    limits = Limits.from_settings()
    if upload.size is not None and upload.size > limits.max_file_bytes:
        # Refused before reading it into memory, as imports do.
        raise Rejected(f"file is {upload.size} bytes, over the limit of {limits.max_file_bytes}")
    picture = decode_query(upload.read(), limits, settings.AUTORET_SEARCH_MAX_PIXELS)
    # PyTorch loads on the first query by upload, not in every web process at start-up.
    from retrieval.embedding import embed_pictures

    vector = embed_pictures(version, [picture])[0]
    return version, queries.nearest(version, vector, k)


def typical_neighbour_distance(version: ModelVersion, samples: int = 20) -> float | None:
    """Median distance from a few images to their nearest neighbour: a scale for the threshold."""
    ids, vectors = queries.sample_for_map(version, samples, spread=False)
    distances = [
        found[0][1]
        for image_id, vector in zip(ids, vectors, strict=True)
        if (found := queries.nearest(version, vector, 1, exclude_image_ids=[image_id]))
    ]
    return statistics.median(distances) if distances else None


def version_label(version: ModelVersion | None) -> dict[str, Any]:
    """How a page names the version answering it ("untrained network" said plainly)."""
    if version is None:
        return {"id": None, "number": None, "kind": None, "text": "no model version yet"}
    kind = ModelVersion.Kind(version.kind)
    return {
        "id": version.pk,
        "number": version.number,
        "kind": version.kind,
        "text": f"version {version.number}: {kind.label}",
    }


def project_2d(vectors: np.ndarray) -> np.ndarray:
    """PCA of N x D vectors onto their two main axes, scaled into [0, 1] x [0, 1] (N x 2)."""
    if len(vectors) == 0:
        return np.zeros((0, 2), dtype=np.float32)
    centred = vectors - vectors.mean(axis=0, keepdims=True)
    _, _, axes = np.linalg.svd(centred, full_matrices=False)
    points = centred @ axes[:2].T
    if points.shape[1] < 2:
        points = np.pad(points, ((0, 0), (0, 2 - points.shape[1])))
    low, high = points.min(axis=0), points.max(axis=0)
    span = np.where(high > low, high - low, 1.0)
    return ((points - low) / span).astype(np.float32)


def label_colours(labels: list[str]) -> dict[str, str]:
    """One evenly spaced hue per label, in sorted order (stable across reloads)."""
    distinct = sorted(set(labels))
    colours = {}
    for index, label in enumerate(distinct):
        r, g, b = colorsys.hls_to_rgb(index / max(len(distinct), 1), 0.45, 0.75)
        colours[label] = f"#{int(r * 255):02x}{int(g * 255):02x}{int(b * 255):02x}"
    return colours
