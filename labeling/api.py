"""JSON API of the labeling loop (/api/v1/): the pair queue, answers, undo, one-to-many marks,
adjudication, constraint export/import, the groups as a data set, and the labeling
instructions. Roles are checked as in the pages: outsiders 404, annotators answer, curators
adjudicate and exchange files, admins say what "same" means."""

from __future__ import annotations

from typing import Any

from django.contrib.auth.models import User
from django.core.exceptions import ValidationError as DjangoValidationError
from django.http import StreamingHttpResponse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema, inline_serializer
from rest_framework import serializers, status
from rest_framework.decorators import api_view, parser_classes, throttle_classes
from rest_framework.exceptions import Throttled, ValidationError
from rest_framework.parsers import JSONParser, MultiPartParser
from rest_framework.request import Request
from rest_framework.response import Response

from labeling import answers, exchange, instructions, pair_queue, strategies
from labeling.models import (
    EXAMPLES_MAX,
    INSTRUCTIONS_MAX,
    QUESTION_MAX,
    Answer,
    ExamplePair,
    LabelingSettings,
    Pair,
)
from retrieval.api import ImageSerializer
from retrieval.exports import zip_response
from retrieval.models import Collection, Image, Membership
from retrieval.permissions import get_collection_for_user, get_in_collection_for_user
from retrieval.throttles import SharedRateThrottle

PAIRS = Pair.objects.select_related("a", "b")


def _user(request: Request) -> User:
    return request.user  # type: ignore[return-value]  # IsAuthenticated: never anonymous here


def _exclude(request: Request) -> list[int]:
    """The pair ids in `?exclude=`: those the page shows or still has to send answers for."""
    raw = request.query_params.get("exclude", "")
    try:
        return [int(x) for x in raw.split(",") if x.strip()]
    except ValueError:
        raise ValidationError({"exclude": "comma-separated pair ids"}) from None


def pair_payload(request: Request | Any, pair: Pair) -> dict[str, Any]:
    def image(img: Image) -> dict[str, Any]:
        return {"id": img.pk, "url": request.build_absolute_uri(img.file.url)}

    return {
        "pair_id": pair.pk,
        "a": image(pair.a),
        "b": image(pair.b),
        "strategy": pair.strategy,
        "version": pair.version_number,
        "lease_expires_at": pair.lease_expires_at.isoformat() if pair.lease_expires_at else None,
    }


ImageRef = inline_serializer(
    "PairImage", {"id": serializers.IntegerField(), "url": serializers.URLField()}
)
PairSerializer = inline_serializer(
    "LeasedPair",
    {
        "pair_id": serializers.IntegerField(),
        "a": ImageRef,
        "b": ImageRef,
        "strategy": serializers.CharField(),
        "version": serializers.IntegerField(
            allow_null=True, help_text="Number of the model version that proposed the pair"
        ),
        "lease_expires_at": serializers.DateTimeField(),
    },
)


class AnswerRateThrottle(SharedRateThrottle):
    """AUTORET_ANSWERS_PER_MINUTE answers per user: a clear 429 with Retry-After, which the
    labeling page waits out and retries, so nothing is lost."""

    scope = "answers"


class AnswerSerializer(serializers.Serializer):
    answer = serializers.ChoiceField(choices=Answer.values)
    idempotency_key = serializers.CharField(max_length=64, required=False, allow_blank=True)


@extend_schema(
    parameters=[
        OpenApiParameter(
            "exclude", str, description="Comma-separated pair ids the page already shows."
        )
    ],
    responses={200: PairSerializer, 204: None},
    summary="Lease the next pair to answer (204 when nothing is left)",
)
@api_view(["GET"])
def next_pair(request: Request, pk: int) -> Response:
    # One query for the collection, the caller's role and the labeling settings.
    collection = get_collection_for_user(
        request.user, pk, queryset=Collection.objects.select_related("labeling_settings")
    )
    pair = pair_queue.next_pair(collection, _user(request), _exclude(request))
    if pair is None:
        return Response(status=status.HTTP_204_NO_CONTENT)
    return Response(pair_payload(request, pair))


@extend_schema(
    request=AnswerSerializer,
    parameters=[
        OpenApiParameter(
            "X-Autoret-User",
            str,
            OpenApiParameter.HEADER,
            description="The id of the user who gave the answer; another signed-in user is a 403.",
        ),
        OpenApiParameter(
            "next",
            bool,
            description=(
                "1: also lease the next pair and return it as `next` (null when none is left), "
                "so one round trip answers and asks"
            ),
        ),
        OpenApiParameter(
            "exclude",
            str,
            description="With next=1: comma-separated pair ids the page already shows or holds.",
        ),
    ],
    responses={
        201: OpenApiTypes.OBJECT,
        200: OpenApiTypes.OBJECT,
        403: OpenApiTypes.OBJECT,
        409: OpenApiTypes.OBJECT,
    },
    summary=(
        "Answer a pair (the same idempotency key twice stores one answer; "
        "on another pair it is a 409)"
    ),
)
@api_view(["POST"])
@parser_classes([JSONParser])
@throttle_classes([AnswerRateThrottle])
def answer(request: Request, pair_id: int) -> Response:
    # The Label page says whose answer it sends: after a logout and another user's login on the
    # same browser, it must not be stored as the new user's.
    sender = request.headers.get("X-Autoret-User", "")
    if sender and sender != str(request.user.pk):
        return Response(
            {"detail": "This answer was given by another user than the one signed in."},
            status=status.HTTP_403_FORBIDDEN,
        )
    wants_next = request.query_params.get("next") == "1"
    exclude = _exclude(request) if wants_next else []
    # The pair and the caller's role in one query; the answer needs neither image. Asked for the
    # next pair too, the same query brings the collection and its labeling settings.
    pairs = Pair.objects.all()
    if wants_next:
        pairs = pairs.select_related("collection__labeling_settings")
    pair = get_in_collection_for_user(request.user, pairs, pair_id)
    serializer = AnswerSerializer(data=request.data)
    serializer.is_valid(raise_exception=True)
    try:
        stored = answers.record_answer(
            pair,
            _user(request),
            serializer.validated_data["answer"],
            serializer.validated_data.get("idempotency_key", ""),
        )
    except answers.KeyReused as reused:
        return Response({"detail": str(reused)}, status=status.HTTP_409_CONFLICT)
    body: dict[str, Any] = {
        "pair_id": pair.pk,
        "answer": stored.constraint.answer,
        "stored": stored.created,
    }
    if wants_next:
        # After the answer's commit: its lease is released and its inference refresh retired
        # what it implies, so the next pair is chosen as a separate /next/ would choose it.
        following = pair_queue.next_pair(pair.collection, _user(request), exclude)
        body["next"] = pair_payload(request, following) if following is not None else None
    return Response(body, status=status.HTTP_201_CREATED if stored.created else status.HTTP_200_OK)


@extend_schema(
    request=None,
    responses={200: PairSerializer, 409: OpenApiTypes.OBJECT},
    summary="Undo my answer to a pair",
)
@api_view(["POST"])
def undo(request: Request, pair_id: int) -> Response:
    pair = get_in_collection_for_user(request.user, PAIRS, pair_id)
    if not answers.undo_answer(pair, _user(request)):
        # 409, not 404: the pair exists and the caller may see it; only the answer is missing.
        return Response(
            {"detail": "You have no answer on this pair to undo."}, status=status.HTTP_409_CONFLICT
        )
    pair.refresh_from_db()
    return Response(pair_payload(request, pair))


@extend_schema(
    responses={200: OpenApiTypes.OBJECT}, summary="Counters: my answers, answered, implied, flagged"
)
@api_view(["GET"])
def counters(request: Request, pk: int) -> Response:
    collection = get_collection_for_user(request.user, pk)
    return Response(pair_queue.counters(collection, _user(request)))


class MarkSerializer(serializers.Serializer):
    query = serializers.IntegerField()
    # The answers' one choice set (one enum in the schema); "unsure" is refused below.
    answer = serializers.ChoiceField(choices=Answer.values, help_text="same or different")
    images = serializers.ListField(
        child=serializers.IntegerField(), min_length=1, max_length=answers.MAX_MARKS
    )

    def validate_answer(self, value: str) -> str:
        if value == Answer.UNSURE:
            raise ValidationError("mark them same or different")
        return value


@extend_schema(
    request=MarkSerializer,
    responses={200: OpenApiTypes.OBJECT},
    summary="One-to-many: mark many images same or different as the query image",
)
@api_view(["POST"])
@parser_classes([JSONParser])
def mark(request: Request, pk: int) -> Response:
    collection = get_collection_for_user(request.user, pk)
    serializer = MarkSerializer(data=request.data)
    serializer.is_valid(raise_exception=True)
    # Each marked image is an answer against the answer rate, not the request as one.
    throttle = AnswerRateThrottle()
    if not throttle.allow_many(request, len(serializer.validated_data["images"])):
        raise Throttled(throttle.wait())
    try:
        stored = answers.mark_many(
            collection,
            _user(request),
            serializer.validated_data["query"],
            serializer.validated_data["images"],
            serializer.validated_data["answer"],
        )
    except Image.DoesNotExist:
        raise ValidationError({"images": "every image must belong to this collection"}) from None
    return Response({"stored": stored})


class RulingSerializer(serializers.Serializer):
    answer = serializers.ChoiceField(choices=Answer.values)


@extend_schema(request=RulingSerializer, responses={200: OpenApiTypes.OBJECT}, summary="Adjudicate")
@api_view(["POST"])
@parser_classes([JSONParser])
def adjudicate(request: Request, pair_id: int) -> Response:
    pair = get_in_collection_for_user(request.user, PAIRS, pair_id, Membership.Role.CURATOR)
    serializer = RulingSerializer(data=request.data)
    serializer.is_valid(raise_exception=True)
    answers.adjudicate(pair, _user(request), serializer.validated_data["answer"])
    return Response({"pair_id": pair.pk, "adjudicated": serializer.validated_data["answer"]})


@extend_schema(
    parameters=[OpenApiParameter("fmt", str, enum=["csv", "jsonl"])],
    responses={200: OpenApiTypes.STR},
    summary="Export the constraints (CSV or JSONL)",
)
@api_view(["GET"])
def export_constraints(request: Request, pk: int) -> StreamingHttpResponse:
    collection = get_collection_for_user(request.user, pk, Membership.Role.CURATOR)
    # Not `format`: DRF reads that one for renderer negotiation.
    fmt = request.query_params.get("fmt", "csv")
    if fmt not in ("csv", "jsonl"):
        raise ValidationError({"fmt": "csv or jsonl"})
    body = exchange.export_csv(collection) if fmt == "csv" else exchange.export_jsonl(collection)
    content_type = "text/csv" if fmt == "csv" else "application/x-ndjson"
    response = StreamingHttpResponse(body, content_type=f"{content_type}; charset=utf-8")
    response["Content-Disposition"] = f'attachment; filename="constraints-{pk}.{fmt}"'
    return response


@extend_schema(responses={200: OpenApiTypes.STR}, summary="Export the must-link groups (CSV)")
@api_view(["GET"])
def export_groups(request: Request, pk: int) -> StreamingHttpResponse:
    collection = get_collection_for_user(request.user, pk, Membership.Role.CURATOR)
    response = StreamingHttpResponse(
        [exchange.export_groups_csv(collection)], content_type="text/csv"
    )
    response["Content-Disposition"] = f'attachment; filename="groups-{pk}.csv"'
    return response


@extend_schema(
    responses={(200, "application/zip"): OpenApiTypes.BINARY},
    summary="Export the must-link groups as an image-folder data set (zip)",
    description=(
        "One folder <collection>-groups/ with a class folder per group (0001, or 0001-<name> "
        "when named) holding its images as <image id>-<original name>: the layout torchvision's "
        "ImageFolder reads. groups.csv says which file is which image; ungrouped.csv lists the "
        "images in no group."
    ),
)
@api_view(["GET"])
def export_groups_dataset(request: Request, pk: int) -> StreamingHttpResponse:
    collection = get_collection_for_user(request.user, pk, Membership.Role.CURATOR)
    return zip_response(
        exchange.export_groups_dataset(collection), f"{exchange.dataset_name(collection)}.zip"
    )


@extend_schema(
    request={
        "multipart/form-data": inline_serializer(
            "ConstraintFile", {"file": serializers.FileField()}
        )
    },
    responses={201: OpenApiTypes.OBJECT, 400: OpenApiTypes.OBJECT},
    summary="Import constraints from CSV or JSONL (all or nothing, errors by line)",
)
@api_view(["POST"])
@parser_classes([MultiPartParser])
def import_constraints(request: Request, pk: int) -> Response:
    collection = get_collection_for_user(request.user, pk, Membership.Role.CURATOR)
    upload = request.FILES.get("file")
    if upload is None:
        raise ValidationError({"file": "a CSV or JSONL file"})
    fmt = "jsonl" if (upload.name or "").lower().endswith((".jsonl", ".ndjson")) else "csv"
    try:
        text = upload.read().decode("utf-8-sig")
    except UnicodeDecodeError:
        raise ValidationError({"file": "not UTF-8 text"}) from None
    try:
        stored = exchange.import_constraints(
            collection,
            text,
            fmt,
            by=request.user,  # type: ignore[arg-type]  # a curator: never anonymous
            via="api",
        )
    except exchange.ImportFailed as failed:
        return Response({"errors": failed.errors}, status=status.HTTP_400_BAD_REQUEST)
    return Response({"stored": stored}, status=status.HTTP_201_CREATED)


class ExampleSerializer(serializers.Serializer):
    a = serializers.IntegerField(help_text="An image id of this collection")
    b = serializers.IntegerField(help_text="Another image id of this collection")
    answer = serializers.ChoiceField(choices=ExamplePair.Kind.choices)


class InstructionsSerializer(serializers.Serializer):
    """What a PATCH may change; each field is optional, and `examples` replaces the pinned list."""

    question = serializers.CharField(max_length=QUESTION_MAX, required=False)
    instructions = serializers.CharField(
        max_length=INSTRUCTIONS_MAX,
        allow_blank=True,
        required=False,
        trim_whitespace=False,
        help_text="Markdown; raw HTML is shown as text",
    )
    examples = serializers.ListField(
        child=ExampleSerializer(), max_length=EXAMPLES_MAX, required=False
    )


PinnedSerializer = inline_serializer(
    "PinnedExample",
    {
        "id": serializers.IntegerField(),
        "a": ImageSerializer(),
        "b": ImageSerializer(),
        "answer": serializers.ChoiceField(choices=ExamplePair.Kind.choices),
        "pinned_by": serializers.CharField(allow_null=True),
    },
)
InstructionsOut = inline_serializer(
    "LabelingInstructions",
    {
        "question": serializers.CharField(),
        "instructions": serializers.CharField(help_text="Markdown, as the admin wrote it"),
        "instructions_html": serializers.CharField(help_text="As the Label page shows it"),
        "examples": serializers.ListField(child=PinnedSerializer),
        "changed_at": serializers.DateTimeField(allow_null=True),
    },
)


def instructions_payload(request: Request, labeling: LabelingSettings) -> dict[str, Any]:
    def image(img: Image) -> dict[str, Any]:
        return dict(ImageSerializer(img, context={"request": request}).data)

    pinned = ExamplePair.objects.filter(collection_id=labeling.collection_id).select_related(
        "a", "b", "pinned_by"
    )
    changed = labeling.instructions_changed_at
    return {
        "question": labeling.question,
        "instructions": labeling.instructions,
        "instructions_html": str(instructions.render(labeling.instructions)),
        "examples": [
            {
                "id": e.pk,
                "a": image(e.a),
                "b": image(e.b),
                "answer": e.answer,
                "pinned_by": e.pinned_by.get_username() if e.pinned_by else None,
            }
            for e in pinned
        ],
        "changed_at": changed.isoformat() if changed else None,
    }


@extend_schema(
    methods=["GET"],
    responses={200: InstructionsOut},
    summary="What “same” means here: the question, the instructions and the example pairs",
)
@extend_schema(
    methods=["PATCH"],
    request=InstructionsSerializer,
    responses={200: InstructionsOut, 400: OpenApiTypes.OBJECT, 403: OpenApiTypes.OBJECT},
    summary="Change the question, the instructions or the example pairs (admins)",
    description=(
        "Fields left out stay as they are; `examples` replaces the pinned pairs (at most "
        f"{EXAMPLES_MAX}, each two different images of this collection, no pair twice)."
    ),
)
@api_view(["GET", "PATCH"])
@parser_classes([JSONParser])
def labeling_instructions(request: Request, pk: int) -> Response:
    needs = Membership.Role.ADMIN if request.method == "PATCH" else Membership.Role.ANNOTATOR
    collection = get_collection_for_user(
        request.user, pk, needs, queryset=Collection.objects.select_related("labeling_settings")
    )
    if request.method == "PATCH":
        serializer = InstructionsSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = dict(serializer.validated_data)
        if "examples" in data:
            data["examples"] = [instructions.Example(**e) for e in data["examples"]]
        try:
            labeling = instructions.update(collection, _user(request), **data)
        except DjangoValidationError as refused:
            # Examples refused by check_examples; the text fields were checked by the serializer.
            raise ValidationError({"examples": refused.messages}) from None
    else:
        labeling = strategies.settings_for(collection)
    return Response(instructions_payload(request, labeling))
