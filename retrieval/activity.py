"""A collection's Activity page: its audit log, newest first, for the collection's admins.

A collection page, so it lives here: audit/ is the lowest app (every app writes its log) and
imports none of the apps above it."""

from __future__ import annotations

from django.contrib.auth.decorators import login_required
from django.core.exceptions import BadRequest
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.views.decorators.http import require_GET

from audit.models import Event
from retrieval.models import Membership
from retrieval.permissions import get_collection_for_user

PAGE_SIZE = 50


@login_required
@require_GET
def activity(request: HttpRequest, pk: int) -> HttpResponse:
    collection = get_collection_for_user(request.user, pk, Membership.Role.ADMIN)
    before = request.GET.get("before", "")
    if before and not before.isdigit():
        raise BadRequest("before must be an event id")
    events = Event.objects.filter(collection=collection).order_by("-id")
    if before:
        events = events.filter(id__lt=int(before))
    page = list(events[: PAGE_SIZE + 1])
    next_before = page[PAGE_SIZE - 1].pk if len(page) > PAGE_SIZE else None
    context = {"collection": collection, "events": page[:PAGE_SIZE], "next_before": next_before}
    return render(request, "audit/activity.html", context)
