from __future__ import annotations

from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render

from worker.health import system_health


@login_required
def home(request: HttpRequest) -> HttpResponse:
    return render(request, "retrieval/home.html", {"health": system_health()})
