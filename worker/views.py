from __future__ import annotations

from django.http import HttpRequest, JsonResponse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET

from worker.health import system_health


@never_cache
@require_GET
def healthz(request: HttpRequest) -> JsonResponse:
    """200 only when the database, Redis and at least one worker are up; 503 otherwise."""
    report = system_health()
    return JsonResponse(report, status=200 if report["ok"] else 503)
