"""Search pages: similar images, search by a query image, near-duplicates, the embedding map."""

from __future__ import annotations

from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse

from retrieval.permissions import get_collection_for_user


@login_required
def similar(request: HttpRequest, pk: int, image_pk: int) -> HttpResponse:
    get_collection_for_user(request.user, pk)
    return HttpResponse("Similar images: not yet available.")


@login_required
def search(request: HttpRequest, pk: int) -> HttpResponse:
    get_collection_for_user(request.user, pk)
    return HttpResponse("Search: not yet available.")


@login_required
def duplicates(request: HttpRequest, pk: int) -> HttpResponse:
    get_collection_for_user(request.user, pk)
    return HttpResponse("Near-duplicates: not yet available.")


@login_required
def embedding_map(request: HttpRequest, pk: int) -> HttpResponse:
    get_collection_for_user(request.user, pk)
    return HttpResponse("Map: not yet available.")
