"""JSON API for collections, image import and the embeddings and model downloads (/api/v1/);
roles are checked as in the pages."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import asdict

from django.http import HttpResponseBase
from django.shortcuts import get_object_or_404
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import (
    OpenApiParameter,
    PolymorphicProxySerializer,
    extend_schema,
    extend_schema_field,
    inline_serializer,
)
from rest_framework import serializers, status
from rest_framework.decorators import api_view, parser_classes
from rest_framework.exceptions import NotFound, PermissionDenied, ValidationError
from rest_framework.parsers import MultiPartParser
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.validators import UniqueValidator

from retrieval import deletion, exports
from retrieval.actions import create_collection, images_after
from retrieval.forms import NAME_TAKEN
from retrieval.imports import Limits, embed_later, from_uploads, import_items
from retrieval.models import Collection, Image, Membership, ModelVersion
from retrieval.permissions import (
    get_collection_for_user,
    may_create_collections,
    visible_collections,
)

PAGE_SIZE = 100


class CollectionSerializer(serializers.ModelSerializer):
    class Meta:
        model = Collection
        fields = ["id", "name", "description", "created_at"]
        read_only_fields = ["id", "created_at"]
        extra_kwargs = {
            "name": {"validators": [UniqueValidator(Collection.objects.all(), message=NAME_TAKEN)]}
        }


class ImageSerializer(serializers.ModelSerializer):
    url = serializers.SerializerMethodField()
    thumbnail_url = serializers.SerializerMethodField()

    class Meta:
        model = Image
        fields = ["id", "url", "thumbnail_url", "width", "height", "original_name", "label"]

    def get_url(self, image: Image) -> str:
        return self.context["request"].build_absolute_uri(image.file.url)

    def get_thumbnail_url(self, image: Image) -> str:
        return self.context["request"].build_absolute_uri(image.thumbnail.url)


@extend_schema_field(OpenApiTypes.BINARY)
class UploadedFileField(serializers.FileField):
    """A file part of a multipart request (the schema says binary, not a URL)."""


ImagePageSerializer = inline_serializer(
    "ImagePage",
    {
        "results": ImageSerializer(many=True),
        "next": serializers.CharField(
            allow_null=True, help_text="Pass as ?cursor= for the next page; null on the last."
        ),
    },
)
UploadSerializer = inline_serializer(
    "ImageUpload",
    {
        "files": serializers.ListField(
            child=UploadedFileField(),
            help_text="Images (JPEG, PNG, WEBP, GIF, BMP) and zip files of them; many allowed.",
        ),
        "labels": serializers.BooleanField(
            required=False, help_text="Use folder names inside zips as image labels."
        ),
    },
)
ImportReportSerializer = inline_serializer(
    "ImportReport",
    {
        "created": serializers.ListField(child=serializers.IntegerField()),
        "duplicates": serializers.ListField(
            child=inline_serializer(
                "Duplicate",
                {"name": serializers.CharField(), "image_id": serializers.IntegerField()},
            )
        ),
        "rejected": serializers.ListField(
            child=inline_serializer(
                "Rejection", {"name": serializers.CharField(), "error": serializers.CharField()}
            )
        ),
    },
)
# 400: every file was refused (the report says why), no files were sent, or labels was no boolean.
UploadRefusedSerializer = PolymorphicProxySerializer(
    component_name="UploadRefused",
    serializers=[
        ImportReportSerializer,
        inline_serializer("NoFiles", {"files": serializers.CharField()}),
        inline_serializer("BadLabels", {"labels": serializers.CharField()}),
    ],
    resource_type_field_name=None,
)


@extend_schema(
    methods=["GET"],
    responses=CollectionSerializer(many=True),
    summary="The collections you are a member of",
)
@extend_schema(
    methods=["POST"],
    request=CollectionSerializer,
    responses={201: CollectionSerializer},
    summary="Create a collection (you become its admin)",
)
@api_view(["GET", "POST"])
def collections(request: Request) -> Response:
    if request.method == "POST":
        if not may_create_collections(request.user):
            raise PermissionDenied("Only staff may create collections on this site.")
        serializer = CollectionSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        collection = create_collection(
            request.user,  # type: ignore[arg-type]  # IsAuthenticated: never anonymous here
            serializer.validated_data["name"],
            serializer.validated_data.get("description", ""),
        )
        return Response(CollectionSerializer(collection).data, status=status.HTTP_201_CREATED)
    queryset = visible_collections(request.user).order_by("name")
    return Response(CollectionSerializer(queryset, many=True).data)


CollectionDeleted = inline_serializer(
    "CollectionDeleted",
    {
        "deleted": serializers.DictField(
            child=serializers.IntegerField(),
            help_text="What went, by kind (images, vectors, model versions, answers, jobs, ...).",
        )
    },
)
DeletionRefusal = inline_serializer("DeletionRefusal", {"detail": serializers.CharField()})


@extend_schema(
    methods=["GET"],
    responses=CollectionSerializer,
    summary="One collection you are a member of",
)
@extend_schema(
    methods=["DELETE"],
    responses={200: CollectionDeleted, 409: DeletionRefusal},
    summary="Delete a collection with everything in it (its admins)",
    description=(
        "Deletes its images and their files, vectors, model versions and checkpoints, pairs, "
        "answers, groups, memberships and jobs, as the collection's Delete page does; the audit "
        "log keeps the record. 409 while a job is queued or running in it: cancel the job first."
    ),
)
@api_view(["GET", "DELETE"])
def collection(request: Request, pk: int) -> Response:
    needs = Membership.Role.ADMIN if request.method == "DELETE" else Membership.Role.ANNOTATOR
    found = get_collection_for_user(request.user, pk, needs)
    if request.method == "GET":
        return Response(CollectionSerializer(found).data)
    try:
        deleted = deletion.delete_collection(
            found,
            by=request.user,  # type: ignore[arg-type]  # authenticated: never anonymous
        )
    except deletion.DeletionRefused as refused:
        return Response({"detail": str(refused)}, status=status.HTTP_409_CONFLICT)
    return Response({"deleted": deleted})


@extend_schema(
    methods=["GET"],
    parameters=[
        OpenApiParameter("cursor", OpenApiTypes.STR, description="`next` of the previous page")
    ],
    responses=ImagePageSerializer,
    summary="A page of the collection's images, oldest first (keyset pagination)",
)
@extend_schema(
    methods=["POST"],
    request={"multipart/form-data": UploadSerializer},
    responses={201: ImportReportSerializer, 400: UploadRefusedSerializer},
    summary="Import images and zips (curators and admins)",
    description=(
        "Each file is checked by its content. Rejected files are listed with the reason; the "
        "others are stored. 400 when nothing could be stored, or no file was sent."
    ),
)
@api_view(["GET", "POST"])
@parser_classes([MultiPartParser])
def collection_images(request: Request, pk: int) -> Response:
    if request.method == "POST":
        return _upload(request, pk)
    collection = get_collection_for_user(request.user, pk)
    cursor = request.query_params.get("cursor") or None
    if cursor is not None and not cursor.isdigit():
        raise ValidationError({"cursor": "not a cursor from a previous page"})
    images, next_after = images_after(collection, int(cursor) if cursor else None, PAGE_SIZE)
    return Response(
        {
            "results": ImageSerializer(images, many=True, context={"request": request}).data,
            "next": str(next_after) if next_after is not None else None,
        }
    )


def _upload(request: Request, pk: int) -> Response:
    collection = get_collection_for_user(request.user, pk, Membership.Role.CURATOR)
    files = request.FILES.getlist("files")
    if not files:
        raise ValidationError({"files": "send one or more files in the multipart field 'files'"})
    try:
        labels = serializers.BooleanField().to_internal_value(request.POST.get("labels", False))
    except ValidationError:
        raise ValidationError({"labels": "true or false"}) from None
    report = import_items(
        collection,
        from_uploads(files, Limits.from_settings(), labels=labels),
        by=request.user,  # type: ignore[arg-type]  # authenticated: never anonymous
        via="api",
    )
    if report.created:
        embed_later(collection)
    body = {
        "created": report.created,
        "duplicates": [{"name": n, "image_id": i} for n, i in report.duplicates],
        "rejected": [{"name": n, "error": e} for n, e in report.rejected],
    }
    return Response(body, status=400 if report.stored_nothing else status.HTTP_201_CREATED)


class VersionChoiceSerializer(serializers.Serializer):
    version = serializers.IntegerField(
        required=False,
        min_value=1,
        max_value=2**31 - 1,
        help_text="The model version's number; the active version when left out.",
    )


ZIP_DOWNLOAD = {
    (200, "application/zip"): OpenApiTypes.BINARY,
    400: OpenApiTypes.OBJECT,
    404: OpenApiTypes.OBJECT,
    409: OpenApiTypes.OBJECT,
}


def _zip_download(
    request: Request,
    pk: int,
    export: Callable[[ModelVersion], Iterator[bytes]],
    name: Callable[[ModelVersion], str],
) -> HttpResponseBase:
    """One version's download for curators (who may export constraints): 404 for no such
    version, 409 saying why when the version has nothing to give in this form."""
    collection = get_collection_for_user(request.user, pk, Membership.Role.CURATOR)
    choice = VersionChoiceSerializer(data=request.query_params)
    choice.is_valid(raise_exception=True)
    try:
        version = exports.version_for_export(collection, choice.validated_data.get("version"))
        body = export(version)
    except ModelVersion.DoesNotExist:
        raise NotFound("No such version in this collection.") from None
    except exports.NotExportable as refused:
        return Response({"detail": str(refused)}, status=status.HTTP_409_CONFLICT)
    return exports.zip_response(body, f"{name(version)}.zip")


@extend_schema(
    parameters=[VersionChoiceSerializer],
    responses=ZIP_DOWNLOAD,
    summary="Download a ready version's embeddings (zip of .npy and .csv)",
    description=(
        "NAME.npy: float32 N x 128, the vectors search uses, one row per image by image id; "
        "NAME.csv: row, image_id, original_name, label for each row. NAME is "
        "<collection>-v<number>-embeddings. 409 for a version that is not ready."
    ),
)
@api_view(["GET"])
def export_embeddings(request: Request, pk: int) -> HttpResponseBase:
    return _zip_download(request, pk, exports.export_embeddings, exports.embeddings_name)


@extend_schema(
    parameters=[VersionChoiceSerializer],
    responses=ZIP_DOWNLOAD,
    summary="Download a trained version's model (zip of its checkpoint directory)",
    description=(
        "One folder <collection>-v<number>-model/ with the checkpoint files (safetensors weights "
        "and checkpoint.json); unzipped, `python -m retrieval.autoret embed --checkpoint FOLDER` "
        "embeds images as the platform does. 409 for a version with no checkpoint (a seeded "
        "untrained network is rebuilt from its config) or one still training."
    ),
)
@api_view(["GET"])
def export_model(request: Request, pk: int) -> HttpResponseBase:
    return _zip_download(request, pk, exports.export_model, exports.model_name)


class ImageDeletionSerializer(serializers.Serializer):
    images = serializers.ListField(
        child=serializers.IntegerField(min_value=1, max_value=2**63 - 1),
        allow_empty=False,
        max_length=deletion.MAX_DELETE,
        help_text=f"Ids of the collection's images, at most {deletion.MAX_DELETE}.",
    )


DeletedImagesSerializer = inline_serializer(
    "DeletedImages",
    {
        "deleted": serializers.ListField(
            child=inline_serializer(
                "DeletedImage",
                {
                    "id": serializers.IntegerField(),
                    "name": serializers.CharField(),
                    "sha256": serializers.CharField(),
                },
            ),
            help_text="What was deleted; ids not (or no longer) in the collection are skipped.",
        )
    },
)


@extend_schema(
    request=ImageDeletionSerializer,
    responses={200: DeletedImagesSerializer},
    summary="Delete images (curators and admins)",
    description=(
        "Deletes the images with their files, vectors, pairs and answers; the groups those "
        "answers formed are worked out again. Repeating the request deletes nothing more."
    ),
)
@api_view(["POST"])
def delete_images(request: Request, pk: int) -> Response:
    collection = get_collection_for_user(request.user, pk, Membership.Role.CURATOR)
    serializer = ImageDeletionSerializer(data=request.data)
    serializer.is_valid(raise_exception=True)
    deleted = deletion.delete_images(
        collection,
        serializer.validated_data["images"],
        by=request.user,  # type: ignore[arg-type]  # authenticated: never anonymous
    )
    return Response({"deleted": [asdict(image) for image in deleted]})


@extend_schema(
    methods=["GET"],
    operation_id="v1_collections_image_retrieve",
    responses=ImageSerializer,
    summary="One image of the collection",
)
@extend_schema(
    methods=["DELETE"],
    operation_id="v1_collections_image_destroy",
    responses={204: None},
    summary="Delete one image (curators and admins)",
    description="As the deletion of a selection; 404 when the image is not in the collection.",
)
@api_view(["GET", "DELETE"])
def image(request: Request, pk: int, image_pk: int) -> Response:
    needs = Membership.Role.CURATOR if request.method == "DELETE" else Membership.Role.ANNOTATOR
    collection = get_collection_for_user(request.user, pk, needs)
    found = get_object_or_404(Image, pk=image_pk, collection=collection)
    if request.method == "GET":
        return Response(ImageSerializer(found, context={"request": request}).data)
    deletion.delete_images(
        collection,
        [found.pk],
        by=request.user,  # type: ignore[arg-type]  # authenticated: never anonymous
    )
    return Response(status=status.HTTP_204_NO_CONTENT)
