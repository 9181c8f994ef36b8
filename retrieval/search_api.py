"""The search API: POST /api/v1/collections/{id}/search/, by an image of the collection or an
uploaded one, answered by the collection's active model version (retrieval.search)."""

from __future__ import annotations

from typing import Any

from drf_spectacular.utils import OpenApiExample, extend_schema, inline_serializer
from rest_framework import serializers
from rest_framework.decorators import api_view, parser_classes
from rest_framework.exceptions import Throttled, ValidationError
from rest_framework.parsers import JSONParser, MultiPartParser
from rest_framework.request import Request
from rest_framework.response import Response

from retrieval.imports import Rejected
from retrieval.models import Image, ModelVersion
from retrieval.permissions import get_collection_for_user
from retrieval.search import PAGE_SIZE, NoActiveVersion, similar_to_image, similar_to_upload
from retrieval.throttles import upload_search_wait

MAX_K = 200

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
