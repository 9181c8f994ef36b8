"""Labeling pages; the answering itself goes through the JSON API (labeling/api.py)."""

from __future__ import annotations

from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render


@login_required
def label(request: HttpRequest, pk: int) -> HttpResponse:
    raise NotImplementedError


@login_required
def groups(request: HttpRequest, pk: int) -> HttpResponse:
    raise NotImplementedError
