"""Search pages and the search API: similar images, search by a query image, near-duplicates, map.

Every page names the model version that answers it; the untrained network says so plainly.
Nearest-neighbour SQL lives in retrieval.queries, vectors in retrieval.embedding.
"""

from __future__ import annotations

import colorsys
import statistics
from dataclasses import dataclass
from math import ceil
from typing import Any

import numpy as np
from django.conf import settings
from django.contrib.auth.decorators import login_required
from django.core.exceptions import BadRequest
from django.core.files.uploadedfile import UploadedFile
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, render
from django.views.decorators.http import require_http_methods
from drf_spectacular.utils import OpenApiExample, extend_schema, inline_serializer
from rest_framework import serializers
from rest_framework.decorators import api_view, parser_classes
from rest_framework.exceptions import Throttled, ValidationError
from rest_framework.parsers import JSONParser, MultiPartParser
from rest_framework.request import Request
from rest_framework.response import Response

from retrieval import queries
from retrieval.imports import Limits, Rejected, decode_query
from retrieval.models import Collection, Image, ModelVersion
from retrieval.permissions import get_collection_for_user
from retrieval.throttles import upload_search_wait

PAGE_SIZE = 24
# "Load more" pages through the neighbours by offset (a k-NN result has no key to resume
# from); the offset is bounded so no request asks the index for an unbounded top-k.
MAX_OFFSET = 480
MAX_K = 200
MAP_DEFAULT = 400
MAP_MAX = 2000
DUPLICATE_PAIRS = 200


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


def _active_version_or_none(collection: Collection) -> ModelVersion | None:
    if collection.active_version_id is None:
        return None
    return ModelVersion.objects.filter(pk=collection.active_version_id).first()


def _active_version(collection: Collection) -> ModelVersion:
    version = _active_version_or_none(collection)
    if version is None:
        raise NoActiveVersion
    return version


def _hits(pairs: list[tuple[int, float]]) -> list[Hit]:
    images = Image.objects.in_bulk([image_id for image_id, _ in pairs])
    return [Hit(images[i], d) for i, d in pairs if i in images]


def similar_to_image(
    collection: Collection, image: Image, k: int, offset: int = 0
) -> tuple[ModelVersion, list[tuple[int, float]]]:
    """The k nearest images of the collection to one of its images (itself left out)."""
    version = _active_version(collection)
    vector = queries.vector_of(version, image.pk)
    if vector is None:
        raise NotEmbeddedYet
    return version, queries.nearest(version, vector, k, exclude_image_ids=[image.pk], offset=offset)


def similar_to_upload(
    collection: Collection, upload: UploadedFile, k: int
) -> tuple[ModelVersion, list[tuple[int, float]]]:
    """The k nearest images to an uploaded image, validated like an import (raises Rejected)."""
    version = _active_version(collection)
    limits = Limits.from_settings()
    if upload.size is not None and upload.size > limits.max_file_bytes:
        # Refused before reading it into memory, as imports do.
        raise Rejected(f"file is {upload.size} bytes, over the limit of {limits.max_file_bytes}")
    picture = decode_query(upload.read(), limits, settings.AUTORET_SEARCH_MAX_PIXELS)
    # PyTorch loads on the first query by upload, not in every web process at start-up.
    from retrieval.embedding import embed_pictures

    vector = embed_pictures(version, [picture])[0]
    return version, queries.nearest(version, vector, k)


def _int_param(request: HttpRequest, name: str, default: int, low: int, high: int) -> int:
    value = request.GET.get(name, "")
    if value == "":
        return default
    if not value.isdigit() or not low <= int(value) <= high:
        raise BadRequest(f"{name} must be a whole number from {low} to {high}")
    return int(value)


def _template(request: HttpRequest, name: str, partial: str) -> str:
    # htmx requests get the named partial of the same template (CONVENTIONS: one URL, one view).
    return f"{name}#{partial}" if request.htmx else name  # type: ignore[attr-defined]


@login_required
def similar(request: HttpRequest, pk: int, image_pk: int) -> HttpResponse:
    collection = get_collection_for_user(request.user, pk)
    image = get_object_or_404(Image, pk=image_pk, collection=collection)
    offset = _int_param(request, "offset", 0, 0, MAX_OFFSET)
    context: dict[str, Any] = {"collection": collection, "image": image, "offset": offset}
    try:
        # One more than a page tells whether "Load more" has anything to load.
        version, pairs = similar_to_image(collection, image, PAGE_SIZE + 1, offset)
    except NoActiveVersion as error:
        active = _active_version_or_none(collection)
        context |= {"version": version_label(active), "unavailable": str(error), "hits": []}
        return render(request, "retrieval/similar.html", context)
    next_offset = offset + PAGE_SIZE
    context |= {
        "version": version_label(version),
        "hits": _hits(pairs[:PAGE_SIZE]),
        "next_offset": next_offset
        if len(pairs) > PAGE_SIZE and next_offset <= MAX_OFFSET
        else None,
    }
    return render(request, _template(request, "retrieval/similar.html", "results"), context)


@login_required
@require_http_methods(["GET", "POST"])
def search(request: HttpRequest, pk: int) -> HttpResponse:
    collection = get_collection_for_user(request.user, pk)
    context: dict[str, Any] = {
        "collection": collection,
        "version": version_label(_active_version_or_none(collection)),
        "hits": None,
        "k": PAGE_SIZE * 2,
    }
    status = 200
    if request.method == "POST":
        upload = request.FILES.get("image")
        if upload is None:
            context["error"], status = "Choose an image to search with.", 400
        elif (wait := upload_search_wait(request)) is not None:
            context["error"], status = f"Too many searches by image: wait {ceil(wait)} s.", 429
        else:
            try:
                version, pairs = similar_to_upload(collection, upload, PAGE_SIZE * 2)
            except Rejected as error:
                context["error"], status = f"{upload.name}: {error}", 400
            except NoActiveVersion as error:
                context["error"], status = str(error), 409
            else:
                context |= {"version": version_label(version), "hits": _hits(pairs)}
    template = _template(request, "retrieval/search.html", "results")
    response = render(request, template, context, status=status)
    if status == 429:
        response["Retry-After"] = str(ceil(wait or 1))
    return response


def _typical_neighbour_distance(version: ModelVersion, samples: int = 20) -> float | None:
    """Median distance from a few images to their nearest neighbour: a scale for the threshold."""
    ids, vectors = queries.sample_for_map(version, samples, spread=False)
    distances = [
        found[0][1]
        for image_id, vector in zip(ids, vectors, strict=True)
        if (found := queries.nearest(version, vector, 1, exclude_image_ids=[image_id]))
    ]
    return statistics.median(distances) if distances else None


@login_required
def duplicates(request: HttpRequest, pk: int) -> HttpResponse:
    collection = get_collection_for_user(request.user, pk)
    context: dict[str, Any] = {"collection": collection, "groups": [], "next_after": None}
    try:
        version = _active_version(collection)
    except NoActiveVersion as error:
        context |= {"version": version_label(None), "unavailable": str(error)}
        return render(request, "retrieval/duplicates.html", context)
    typical = _typical_neighbour_distance(version)
    raw = request.GET.get("threshold", "")
    try:
        threshold = float(raw) if raw else round((typical or 1.0) / 4, 4)
    except ValueError:
        raise BadRequest("threshold must be a number") from None
    if not 0 <= threshold < float("inf"):
        raise BadRequest("threshold must be a number of 0 or more")
    after = _int_param(request, "after", 0, 0, 2**62)
    groups, next_after = queries.near_duplicate_pairs(
        version, threshold, limit=DUPLICATE_PAIRS, after_image_id=after
    )
    images = Image.objects.in_bulk({i for g in groups for i in g.image_ids})
    context |= {
        "version": version_label(version),
        "threshold": threshold,
        "typical": typical,
        "after": after,
        "groups": [
            {
                "images": [images[i] for i in g.image_ids if i in images],
                "pairs": g.pairs,
                "max_distance": max(d for _, _, d in g.pairs),
            }
            for g in groups
        ],
        "next_after": next_after,
    }
    return render(request, _template(request, "retrieval/duplicates.html", "groups"), context)


def _label_colours(labels: list[str]) -> dict[str, str]:
    """One evenly spaced hue per label, in sorted order (stable across reloads)."""
    distinct = sorted(set(labels))
    colours = {}
    for index, label in enumerate(distinct):
        r, g, b = colorsys.hls_to_rgb(index / max(len(distinct), 1), 0.45, 0.75)
        colours[label] = f"#{int(r * 255):02x}{int(g * 255):02x}{int(b * 255):02x}"
    return colours


@login_required
def embedding_map(request: HttpRequest, pk: int) -> HttpResponse:
    collection = get_collection_for_user(request.user, pk)
    n = _int_param(request, "n", MAP_DEFAULT, 1, MAP_MAX)
    context: dict[str, Any] = {"collection": collection, "points": [], "legend": [], "n": n}
    try:
        version = _active_version(collection)
    except NoActiveVersion as error:
        context |= {"version": version_label(None), "unavailable": str(error)}
        return render(request, "retrieval/map.html", context)
    ids, vectors = queries.sample_for_map(version, n)
    xy = project_2d(vectors)
    images = Image.objects.in_bulk(ids)
    labels = [images[i].label or "(no label)" for i in ids if i in images]
    colours = _label_colours(labels)
    context |= {
        "version": version_label(version),
        "points": [
            {
                "image": images[i],
                "label": images[i].label or "(no label)",
                "colour": colours[images[i].label or "(no label)"],
                # Percentages inside a square box, kept off the edges by the thumbnail size.
                "left": round(2 + 92 * float(x), 2),
                "top": round(2 + 92 * float(y), 2),
            }
            for i, (x, y) in zip(ids, xy, strict=True)
            if i in images
        ],
        "legend": sorted(colours.items()),
    }
    return render(request, "retrieval/map.html", context)


# The JSON API: POST /api/v1/collections/{id}/search/.

SearchRequestSerializer = inline_serializer(
    "SearchRequest",
    {
        "image_id": serializers.IntegerField(
            required=False,
            help_text="Search by this image of the collection (left out of the results).",
        ),
        "image": serializers.ImageField(
            required=False, help_text="Or upload a query image (multipart)."
        ),
        "k": serializers.IntegerField(
            required=False, min_value=1, max_value=MAX_K, default=PAGE_SIZE
        ),
    },
)
SearchResponseSerializer = inline_serializer(
    "SearchResults",
    {
        "model_version": inline_serializer(
            "SearchModelVersion",
            {
                "id": serializers.IntegerField(),
                "number": serializers.IntegerField(),
                "kind": serializers.ChoiceField(choices=ModelVersion.Kind.choices),
            },
        ),
        "results": serializers.ListField(
            child=inline_serializer(
                "SearchResult",
                {"image_id": serializers.IntegerField(), "distance": serializers.FloatField()},
            )
        ),
    },
)
ErrorSerializer = inline_serializer("SearchError", {"detail": serializers.CharField()})


def _data(request: Request) -> dict[str, Any]:
    if not isinstance(request.data, dict) and not hasattr(request.data, "getlist"):
        raise ValidationError({"detail": "send a JSON object or a multipart form"})
    return request.data  # type: ignore[return-value]  # a dict or a QueryDict


def _k(request: Request) -> int:
    raw = _data(request).get("k", PAGE_SIZE)
    # Every 400 of the search API has the one documented shape, {"detail": ...}.
    refusal = ValidationError({"detail": f"k must be a whole number from 1 to {MAX_K}"})
    try:
        k = int(raw)
    except (TypeError, ValueError):
        raise refusal from None
    if not 1 <= k <= MAX_K:
        raise refusal
    return k


@extend_schema(
    request={
        "multipart/form-data": SearchRequestSerializer,
        "application/json": SearchRequestSerializer,
    },
    responses={
        200: SearchResponseSerializer,
        400: ErrorSerializer,
        404: ErrorSerializer,
        409: ErrorSerializer,
        429: ErrorSerializer,
    },
    summary="The k images of the collection nearest to a query image",
    description=(
        "Send `image_id` (an image of this collection) or a multipart `image`. Answered by the "
        "collection's active model version, named in `model_version` (kind `untrained` until a "
        "model is trained). 409 while the collection has no active version yet."
    ),
    examples=[OpenApiExample("By image", value={"image_id": 42, "k": 10}, request_only=True)],
)
@api_view(["POST"])
@parser_classes([JSONParser, MultiPartParser])
def api_search(request: Request, pk: int) -> Response:
    collection = get_collection_for_user(request.user, pk)
    k = _k(request)
    upload = request.FILES.get("image")
    try:
        if upload is not None:
            if (wait := upload_search_wait(request)) is not None:
                raise Throttled(wait)
            version, pairs = similar_to_upload(collection, upload, k)
        else:
            raw_id = _data(request).get("image_id")
            if raw_id is None or not str(raw_id).isdigit():
                raise ValidationError({"detail": "send an image_id or a multipart image"})
            image = Image.objects.filter(pk=int(raw_id), collection=collection).first()
            if image is None:
                return Response({"detail": "no such image in this collection"}, status=404)
            version, pairs = similar_to_image(collection, image, k)
    except Rejected as error:
        return Response({"detail": f"image: {error}"}, status=400)
    except NoActiveVersion as error:
        return Response({"detail": str(error)}, status=409)
    return Response(
        {
            "model_version": {"id": version.pk, "number": version.number, "kind": version.kind},
            "results": [{"image_id": i, "distance": d} for i, d in pairs],
        }
    )
