"""Request bodies over the limits get a clear answer (JSON under /api/, a page elsewhere), never
a crash: 413 for too many bytes, 400 for too many files or fields.

A body over AUTORET_MAX_REQUEST_BYTES is refused by its declared Content-Length before anything
reads it: Django caps form and JSON bodies (DATA_UPLOAD_MAX_MEMORY_SIZE) and the number of files,
but not the bytes of uploaded files, which it streams to disk. A body without a Content-Length
(chunked) is read as empty by Django's WSGI handler.
"""

from __future__ import annotations

from collections.abc import Callable

from django.conf import settings
from django.core.exceptions import RequestDataTooBig, TooManyFieldsSent, TooManyFilesSent
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.utils.html import escape


def refusal(request: HttpRequest, message: str, status: int) -> HttpResponse:
    if request.path.startswith("/api/") or "json" in request.headers.get("Accept", ""):
        return JsonResponse({"detail": message}, status=status)
    title = "Request too large" if status == 413 else "Bad request"
    return HttpResponse(
        f"<!doctype html><title>{title}</title><h1>{title}</h1><p>{escape(message)}</p>",
        status=status,
    )


class RequestSizeLimit:
    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        try:
            length = int(request.META.get("CONTENT_LENGTH") or 0)
        except ValueError:
            length = 0
        limit = settings.AUTORET_MAX_REQUEST_BYTES
        if length > limit:
            message = (
                f"The request is {length} bytes, over the limit of {limit} bytes. "
                "Send fewer or smaller files at a time."
            )
            return refusal(request, message, 413)
        return self.get_response(request)

    def process_exception(self, request: HttpRequest, exception: Exception) -> HttpResponse | None:
        """Django's own body limits, raised while a view reads the body."""
        if isinstance(exception, RequestDataTooBig):
            limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
            message = f"The request body (without files) is too large: the limit is {limit} bytes."
            return refusal(request, message, 413)
        if isinstance(exception, TooManyFilesSent):
            limit = settings.DATA_UPLOAD_MAX_NUMBER_FILES
            return refusal(request, f"Too many files: the limit is {limit} per request.", 400)
        if isinstance(exception, TooManyFieldsSent):
            limit = settings.DATA_UPLOAD_MAX_NUMBER_FIELDS
            return refusal(request, f"Too many form fields: the limit is {limit}.", 400)
        return None
