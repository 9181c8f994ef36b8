"""Collections, images and import pages; every view checks the viewer's role in the collection."""

from __future__ import annotations

import re
from typing import Any

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import BadRequest, PermissionDenied
from django.http import FileResponse, Http404, HttpRequest, HttpResponse, QueryDict
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import Resolver404, resolve, reverse
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.http import require_http_methods, require_POST

from retrieval import deletion
from retrieval.actions import create_collection, create_token, images_after, revoke_token
from retrieval.forms import CollectionForm, UploadForm
from retrieval.imports import (
    CONTENT_TYPES,
    ImportReport,
    Limits,
    embed_later,
    from_uploads,
    import_items,
)
from retrieval.models import Collection, Image, Membership, ModelVersion
from retrieval.permissions import (
    get_collection_for_user,
    may_create_collections,
    role_in,
    visible_collections,
)

PAGE_SIZE = 60
# The only paths media files have (see retrieval.models.image_upload_to): anything else is a 404
# before any lookup, so no request path ever reaches the file system.
MEDIA_PATH = re.compile(r"collections/(\d+)/[0-9a-f]{2}/([0-9a-f]{64})\.(thumb\.webp|[a-z]{3,4})")


def _collections_page(
    request: HttpRequest, form: CollectionForm | None = None, status: int = 200
) -> HttpResponse:
    context = {
        "collections": visible_collections(request.user).order_by("name"),
        "can_create": may_create_collections(request.user),
        "form": form or CollectionForm(),
    }
    return render(request, "retrieval/collection_list.html", context, status=status)


@login_required
def home(request: HttpRequest) -> HttpResponse:
    return _collections_page(request)


@login_required
@require_http_methods(["GET", "POST"])
def collection_list(request: HttpRequest) -> HttpResponse:
    if request.method == "POST":
        if not may_create_collections(request.user):
            raise PermissionDenied("Only staff may create collections on this site.")
        form = CollectionForm(request.POST)
        if not form.is_valid():
            return _collections_page(request, form, status=400)
        collection = create_collection(
            request.user,  # type: ignore[arg-type]  # login_required: never anonymous here
            form.cleaned_data["name"],
            form.cleaned_data["description"],
        )
        return redirect("retrieval:collection_detail", pk=collection.pk)
    return _collections_page(request)


def _after(request: HttpRequest) -> int | None:
    value = request.GET.get("after")
    if value is None or value == "":
        return None
    if not value.isdigit():
        raise BadRequest("after must be an image id")
    return int(value)


def _collection_context(request: HttpRequest, collection: Collection) -> dict[str, Any]:
    images, next_after = images_after(collection, _after(request), PAGE_SIZE)
    role = role_in(request.user, collection) or 0
    curator = role >= Membership.Role.CURATOR
    # Lazy: read only when the whole page renders, never for a "load more" partial.
    ready = collection.versions.filter(status=ModelVersion.Status.READY).order_by("-number")
    return {
        "collection": collection,
        "images": images,
        "next_after": next_after,
        "can_upload": curator,
        "can_delete": curator,
        "is_admin": role >= Membership.Role.ADMIN,
        "upload_form": UploadForm(),
        "embedding_versions": ready if curator else [],
        "model_versions": ready.exclude(checkpoint="") if curator else [],
    }


@login_required
def collection_detail(request: HttpRequest, pk: int) -> HttpResponse:
    collection = get_collection_for_user(request.user, pk)
    context = _collection_context(request, collection)
    template = "retrieval/collection_detail.html"
    if request.htmx:  # type: ignore[attr-defined]  # django-htmx's middleware sets it
        template += "#grid-page"
    return render(request, template, context)


@login_required
@require_POST
def upload(request: HttpRequest, pk: int) -> HttpResponse:
    collection = get_collection_for_user(request.user, pk, Membership.Role.CURATOR)
    form = UploadForm(request.POST)
    files = request.FILES.getlist("files")
    report: ImportReport | None = None
    error = ""
    if not form.is_valid() or not files:
        error = "Choose at least one image or zip file."
    else:
        report = import_items(
            collection,
            from_uploads(files, Limits.from_settings(), labels=form.cleaned_data["labels"]),
            by=request.user,  # type: ignore[arg-type]  # login_required: never anonymous
            via="browser",
        )
        if report.created:
            embed_later(collection)
    status = 400 if error or (report and report.stored_nothing) else 200
    context = {"collection": collection, "report": report, "upload_error": error}
    if request.htmx:  # type: ignore[attr-defined]
        return render(request, "retrieval/collection_detail.html#report", context, status=status)
    context |= _collection_context(request, collection)
    return render(request, "retrieval/collection_detail.html", context, status=status)


@login_required
def image_detail(request: HttpRequest, pk: int, image_pk: int) -> HttpResponse:
    collection = get_collection_for_user(request.user, pk)
    image = get_object_or_404(Image, pk=image_pk, collection=collection)
    can_delete = (role_in(request.user, collection) or 0) >= Membership.Role.CURATOR
    context = {"collection": collection, "image": image, "can_delete": can_delete}
    return render(request, "retrieval/image_detail.html", context)


def _selected_ids(data: QueryDict) -> list[int]:
    values = data.getlist("images")
    if not all(value.isdigit() for value in values):
        raise BadRequest("images must be image ids")
    if len(values) > deletion.MAX_DELETE:
        raise BadRequest(f"select at most {deletion.MAX_DELETE} images at once")
    return sorted({int(value) for value in values})


def _back_to(wanted: str, request: HttpRequest, collection: Collection, gone: set[int]) -> str:
    """The page a deletion started from (`next`), unless it is off this site or the page of an
    image in `gone`; else the collection."""
    fallback = reverse("retrieval:collection_detail", args=[collection.pk])
    if not url_has_allowed_host_and_scheme(wanted, {request.get_host()}, request.is_secure()):
        return fallback
    try:
        match = resolve(wanted.split("?", 1)[0])
    except Resolver404:
        return fallback
    return fallback if match.kwargs.get("image_pk") in gone else wanted


@login_required
@require_http_methods(["GET", "POST"])
def images_delete(request: HttpRequest, pk: int) -> HttpResponse:
    """Deletes a selection of images after a confirmation: a GET (the image page's link) or a
    POST without `confirm` (the grid's and the search pages' "Delete selected") shows what goes;
    the confirmation page's POST deletes."""
    collection = get_collection_for_user(request.user, pk, Membership.Role.CURATOR)
    data = request.POST if request.method == "POST" else request.GET
    ids = _selected_ids(data)
    if request.method == "POST" and request.POST.get("confirm") == "yes":
        deleted = deletion.delete_images(
            collection,
            ids,
            by=request.user,  # type: ignore[arg-type]  # login_required: never anonymous
        )
        plural = "" if len(deleted) == 1 else "s"
        messages.success(request, f"Deleted {len(deleted)} image{plural}.")
        gone = {image.id for image in deleted}
        return redirect(_back_to(data.get("next", ""), request, collection, gone))
    images = list(Image.objects.filter(collection=collection, pk__in=ids).order_by("pk"))
    context = {
        "collection": collection,
        "images": images,
        "back": _back_to(data.get("next", ""), request, collection, set()),
    }
    return render(request, "retrieval/images_delete.html", context, status=200 if images else 400)


@login_required
@require_http_methods(["GET", "POST"])
def collection_delete(request: HttpRequest, pk: int) -> HttpResponse:
    """Deletes a collection once its admin has seen what goes and typed its name."""
    collection = get_collection_for_user(request.user, pk, Membership.Role.ADMIN)
    error, status = "", 200
    if request.method == "POST":
        if request.POST.get("name", "").strip() != collection.name:
            error, status = "The name does not match: nothing was deleted.", 400
        else:
            try:
                deletion.delete_collection(
                    collection,
                    by=request.user,  # type: ignore[arg-type]  # login_required
                )
            except deletion.DeletionRefused as refused:
                error, status = str(refused), 409
            else:
                messages.success(request, f"Deleted the collection {collection.name}.")
                return redirect("home")
    context = {"collection": collection, "contents": deletion.contents(collection), "error": error}
    return render(request, "retrieval/collection_delete.html", context, status=status)


@login_required
def media(request: HttpRequest, path: str) -> FileResponse:
    """An image or thumbnail, for people who can see its collection; outsiders get a 404.

    The content type comes from the format Pillow found at import (never from the name), and
    nosniff keeps browsers from guessing HTML in an image that also parses as HTML.
    """
    match = MEDIA_PATH.fullmatch(path)
    if match is None:
        raise Http404("No such file")
    image = Image.objects.filter(collection_id=int(match[1]), sha256=match[2]).first()
    if image is None or path not in (image.file.name, image.thumbnail.name):
        raise Http404("No such file")
    get_collection_for_user(request.user, image.collection_id)
    thumbnail = path == image.thumbnail.name
    field = image.thumbnail if thumbnail else image.file
    try:
        handle = field.open("rb")
    except FileNotFoundError:
        raise Http404("No such file") from None
    content_type = "image/webp" if thumbnail else CONTENT_TYPES[image.format]
    response = FileResponse(handle, content_type=content_type)
    response["X-Content-Type-Options"] = "nosniff"
    response["Content-Disposition"] = "inline"
    # Opened directly, a file gets no script and no plugins even if a browser misreads it.
    response["Content-Security-Policy"] = "default-src 'none'; sandbox"
    # Content-addressed names never change meaning; private because access depends on the viewer.
    response["Cache-Control"] = "private, max-age=86400"
    return response


@login_required
@require_http_methods(["GET", "POST"])
def api_token(request: HttpRequest) -> HttpResponse:
    """The signed-in user's API token: create or replace it (the key shows once), or revoke it."""
    from django.contrib.auth.models import User
    from rest_framework.authtoken.models import Token

    user: User = request.user  # type: ignore[assignment]  # login_required: never anonymous
    new_key = None
    if request.method == "POST":
        if request.POST.get("action") == "create":
            new_key = create_token(user)
        else:
            revoke_token(user, by=user)
    has_token = Token.objects.filter(user=user).exists()
    return render(
        request, "registration/api_token.html", {"has_token": has_token, "new_key": new_key}
    )
