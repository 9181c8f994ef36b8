"""Search pages: similar images, search by a query image, near-duplicates, the embedding map.

Every page names the model version that answers it; the untrained network says so plainly. What
they show comes from retrieval.search; the JSON API is retrieval.search_api.
"""

from __future__ import annotations

from math import ceil
from typing import Any

from django.contrib.auth.decorators import login_required
from django.core.exceptions import BadRequest
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, render
from django.views.decorators.http import require_http_methods

from retrieval import queries
from retrieval.imports import Rejected
from retrieval.models import Collection, Image, Membership
from retrieval.permissions import get_collection_for_user, role_in
from retrieval.search import (
    PAGE_SIZE,
    NoActiveVersion,
    active_version,
    active_version_or_none,
    hits,
    label_colours,
    project_2d,
    similar_to_image,
    similar_to_upload,
    typical_neighbour_distance,
    version_label,
)
from retrieval.throttles import upload_search_wait

# "Load more" pages through the neighbours by offset (a k-NN result has no key to resume
# from); the offset is bounded so no request asks the index for an unbounded top-k.
MAX_OFFSET = 480
MAP_DEFAULT = 400
MAP_MAX = 2000
DUPLICATE_PAIRS = 200


def _int_param(request: HttpRequest, name: str, default: int, low: int, high: int) -> int:
    value = request.GET.get(name, "")
    if value == "":
        return default
    if not value.isdigit() or not low <= int(value) <= high:
        raise BadRequest(f"{name} must be a whole number from {low} to {high}")
    return int(value)


def _may_delete(request: HttpRequest, collection: Collection) -> bool:
    # Curators and admins get checkboxes and "Delete selected" (retrieval.views.images_delete).
    return (role_in(request.user, collection) or 0) >= Membership.Role.CURATOR


def _template(request: HttpRequest, name: str, partial: str) -> str:
    # htmx requests get the named partial of the same template (CONVENTIONS: one URL, one view).
    return f"{name}#{partial}" if request.htmx else name  # type: ignore[attr-defined]


@login_required
def similar(request: HttpRequest, pk: int, image_pk: int) -> HttpResponse:
    collection = get_collection_for_user(request.user, pk)
    image = get_object_or_404(Image, pk=image_pk, collection=collection)
    offset = _int_param(request, "offset", 0, 0, MAX_OFFSET)
    context: dict[str, Any] = {
        "collection": collection,
        "image": image,
        "offset": offset,
        "can_delete": _may_delete(request, collection),
    }
    try:
        # One more than a page tells whether "Load more" has anything to load.
        version, pairs = similar_to_image(collection, image, PAGE_SIZE + 1, offset)
    except NoActiveVersion as error:
        active = active_version_or_none(collection)
        context |= {"version": version_label(active), "unavailable": str(error), "hits": []}
        return render(request, "retrieval/similar.html", context)
    next_offset = offset + PAGE_SIZE
    context |= {
        "version": version_label(version),
        "hits": hits(pairs[:PAGE_SIZE]),
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
        "version": version_label(active_version_or_none(collection)),
        "hits": None,
        "k": PAGE_SIZE * 2,
        "can_delete": _may_delete(request, collection),
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
                context |= {"version": version_label(version), "hits": hits(pairs)}
    template = _template(request, "retrieval/search.html", "results")
    response = render(request, template, context, status=status)
    if status == 429:
        response["Retry-After"] = str(ceil(wait or 1))
    return response


@login_required
def duplicates(request: HttpRequest, pk: int) -> HttpResponse:
    collection = get_collection_for_user(request.user, pk)
    context: dict[str, Any] = {"collection": collection, "groups": [], "next_after": None}
    try:
        version = active_version(collection)
    except NoActiveVersion as error:
        context |= {"version": version_label(None), "unavailable": str(error)}
        return render(request, "retrieval/duplicates.html", context)
    typical = typical_neighbour_distance(version)
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


@login_required
def embedding_map(request: HttpRequest, pk: int) -> HttpResponse:
    collection = get_collection_for_user(request.user, pk)
    n = _int_param(request, "n", MAP_DEFAULT, 1, MAP_MAX)
    context: dict[str, Any] = {"collection": collection, "points": [], "legend": [], "n": n}
    try:
        version = active_version(collection)
    except NoActiveVersion as error:
        context |= {"version": version_label(None), "unavailable": str(error)}
        return render(request, "retrieval/map.html", context)
    ids, vectors = queries.sample_for_map(version, n)
    xy = project_2d(vectors)
    images = Image.objects.in_bulk(ids)
    labels = [images[i].label or "(no label)" for i in ids if i in images]
    colours = label_colours(labels)
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
