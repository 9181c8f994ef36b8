"""JSON API for training jobs and model versions (/api/v1/); roles are checked as in the pages."""

from __future__ import annotations

from typing import Any

from drf_spectacular.utils import extend_schema, inline_serializer
from rest_framework import serializers, status
from rest_framework.decorators import api_view
from rest_framework.exceptions import ValidationError
from rest_framework.request import Request
from rest_framework.response import Response

from retrieval.models import Membership, ModelVersion
from retrieval.permissions import get_collection_for_user, get_in_collection_for_user
from worker import actions
from worker.models import PRETRAINED, RECIPES, Job


class JobSerializer(serializers.ModelSerializer):
    class Meta:
        model = Job
        fields = [
            "id",
            "kind",
            "collection",
            "version",
            "status",
            "phase",
            "progress",
            "eta_s",
            "metrics",
            "error",
            "cancel_requested",
            "log_tail",
            "created_at",
            "started_at",
            "finished_at",
        ]


class VersionSerializer(serializers.ModelSerializer):
    active = serializers.SerializerMethodField()

    class Meta:
        model = ModelVersion
        fields = [
            "id",
            "number",
            "kind",
            "status",
            "active",
            "metrics",
            "created_at",
            "activated_at",
        ]

    def get_active(self, version: ModelVersion) -> bool:
        return bool(version.collection.active_version_id == version.pk)


class NumberField(serializers.FloatField):
    """A JSON number: DRF's FloatField takes `true` as 1.0, since float(True) is 1."""

    def to_internal_value(self, data: Any) -> float:
        if isinstance(data, bool):
            self.fail("invalid")
        return super().to_internal_value(data)


class TrainRequest(serializers.Serializer):
    minutes = NumberField(
        required=False,
        min_value=0.01,
        max_value=24 * 60,
        help_text="Training budget; the collection's setting or AUTORET_TRAIN_MINUTES if left out.",
    )
    recipe = serializers.ChoiceField(
        choices=RECIPES,
        default=PRETRAINED,
        help_text="pretrained: the head on cached ImageNet features (the default); scratch: the "
        "from-scratch network; finetune: the ImageNet backbone trained in full (GPU workers).",
    )


QuotaRefusal = inline_serializer("QuotaRefusal", {"detail": serializers.CharField()})
JobCreated = inline_serializer("JobCreated", {"job_id": serializers.IntegerField()})
Refusal = inline_serializer(
    "Refusal", {"detail": serializers.CharField(), "job_id": serializers.IntegerField()}
)


@extend_schema(
    request=TrainRequest,
    responses={202: JobCreated, 403: QuotaRefusal, 409: Refusal},
    summary="Start training a new version (admin role); 409 while one runs, 403 over a quota",
)
@api_view(["POST"])
def train(request: Request, pk: int) -> Response:
    collection = get_collection_for_user(request.user, pk, Membership.Role.ADMIN)
    body = TrainRequest(data=request.data)
    body.is_valid(raise_exception=True)
    try:
        job = actions.start_training(
            collection,
            request.user,  # type: ignore[arg-type]  # authenticated: never anonymous
            body.validated_data.get("minutes"),
            recipe=body.validated_data["recipe"],
        )
    except actions.TrainingAlreadyRunning as refused:
        return Response(
            {"detail": str(refused), "job_id": refused.job.pk if refused.job else None},
            status=status.HTTP_409_CONFLICT,
        )
    except actions.TrainingQuota as refused:
        return Response({"detail": str(refused)}, status=status.HTTP_403_FORBIDDEN)
    return Response({"job_id": job.pk}, status=status.HTTP_202_ACCEPTED)


@extend_schema(responses=JobSerializer, summary="A job's status, progress, metrics and error")
@api_view(["GET"])
def job(request: Request, pk: int) -> Response:
    found = get_in_collection_for_user(request.user, Job.objects.all(), pk)
    return Response(JobSerializer(found).data)


@extend_schema(request=None, responses=JobSerializer, summary="Ask a job to stop (admin role)")
@api_view(["POST"])
def job_cancel(request: Request, pk: int) -> Response:
    found = get_in_collection_for_user(request.user, Job.objects.all(), pk, Membership.Role.ADMIN)
    actions.cancel_job(found, by=request.user)  # type: ignore[arg-type]  # authenticated
    return Response(JobSerializer(found).data, status=status.HTTP_202_ACCEPTED)


@extend_schema(
    responses=VersionSerializer(many=True), summary="The collection's model versions, newest first"
)
@api_view(["GET"])
def models(request: Request, pk: int) -> Response:
    collection = get_collection_for_user(request.user, pk)
    versions = collection.versions.select_related("collection").order_by("-number")
    return Response(VersionSerializer(versions, many=True).data)


@extend_schema(
    request=None,
    responses=VersionSerializer,
    summary="Switch search to a ready version (admin role); also a rollback",
)
@api_view(["POST"])
def activate(request: Request, pk: int) -> Response:
    versions = ModelVersion.objects.select_related("collection")
    version = get_in_collection_for_user(request.user, versions, pk, Membership.Role.ADMIN)
    try:
        actions.activate_version(version, by=request.user)  # type: ignore[arg-type]
    except actions.VersionNotAllowed as refused:
        raise ValidationError({"detail": str(refused)}) from None
    version.refresh_from_db()
    version.collection.refresh_from_db()
    return Response(VersionSerializer(version).data)
