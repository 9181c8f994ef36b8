"""Collections of images, model versions per collection, and their embeddings in pgvector."""

from __future__ import annotations

from django.conf import settings
from django.db import models
from pgvector.django import VectorField

from retrieval.autoret.constants import EMBED_DIM


class Collection(models.Model):
    name = models.CharField(max_length=200, unique=True)
    description = models.TextField(blank=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    # The version search answers from; switched atomically once a new version is fully embedded.
    active_version = models.ForeignKey(
        "ModelVersion", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


def image_upload_to(instance: Image, filename: str) -> str:
    # Content-addressed: the same bytes in two collections are two files, never a shared one, so
    # deleting a collection deletes exactly its files.
    suffix = filename.rsplit(".", 1)[-1].lower() if "." in filename else "bin"
    return f"collections/{instance.collection_id}/{instance.sha256[:2]}/{instance.sha256}.{suffix}"


def thumbnail_upload_to(instance: Image, filename: str) -> str:
    return (
        f"collections/{instance.collection_id}/{instance.sha256[:2]}/{instance.sha256}.thumb.webp"
    )


class Image(models.Model):
    collection = models.ForeignKey(Collection, on_delete=models.CASCADE, related_name="images")
    file = models.FileField(upload_to=image_upload_to, max_length=300)
    thumbnail = models.FileField(upload_to=thumbnail_upload_to, max_length=300, blank=True)
    sha256 = models.CharField(max_length=64)
    width = models.PositiveIntegerField()
    height = models.PositiveIntegerField()
    format = models.CharField(max_length=8)
    original_name = models.CharField(max_length=255)
    # Ground truth from an import (a class folder, Fashion-MNIST's class): used for evaluation and
    # shown to curators, never given to the model unless a training run asks for it.
    label = models.CharField(max_length=100, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["collection", "sha256"], name="image_unique_content")
        ]
        indexes = [models.Index(fields=["collection", "id"], name="image_collection_keyset")]

    def __str__(self) -> str:
        return self.original_name


class ModelVersion(models.Model):
    class Kind(models.TextChoices):
        UNTRAINED = "untrained", "untrained network"
        PRETRAINED = "pretrained", "ImageNet features, untrained"
        TRAINED = "trained", "trained on this collection"

    class Status(models.TextChoices):
        TRAINING = "training"
        EMBEDDING = "embedding"
        INDEXING = "indexing"
        READY = "ready"
        FAILED = "failed"
        DELETED = "deleted"

    collection = models.ForeignKey(Collection, on_delete=models.CASCADE, related_name="versions")
    number = models.PositiveIntegerField()
    kind = models.CharField(max_length=16, choices=Kind.choices)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.EMBEDDING)
    # The network's ModelConfig (and TrainConfig for trained versions) as JSON.
    config = models.JSONField(default=dict)
    metrics = models.JSONField(default=dict, blank=True)
    # A checkpoint directory relative to settings.MODELS_DIR; empty for untrained/pretrained.
    checkpoint = models.CharField(max_length=300, blank=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    activated_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["collection", "-number"]
        constraints = [
            models.UniqueConstraint(fields=["collection", "number"], name="version_unique_number")
        ]

    def __str__(self) -> str:
        return f"{self.collection} v{self.number} ({self.kind})"


class Embedding(models.Model):
    """One image's vector under one model version; L2 distance, as the AutoEmbedder loss shapes it.

    Each ready version has its own partial HNSW index (WHERE version_id = N, see queries.py), so a
    search inside one collection's active version never scans or filters other versions' rows.
    """

    version = models.ForeignKey(ModelVersion, on_delete=models.CASCADE, related_name="embeddings")
    image = models.ForeignKey(Image, on_delete=models.CASCADE, related_name="embeddings")
    vector = VectorField(dimensions=EMBED_DIM)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["version", "image"], name="embedding_unique_per_version"
            )
        ]


class ImageFeature(models.Model):
    """One image's frozen backbone features under one feature configuration (issue 13).

    `key` is FeatureConfig.key (backbone, input size, patch layout, layers); `data` holds the
    T x F patch features as float16 bytes in C order (T = grid^2 + 1; F = 624 for the default
    stage layers, 6.2 kB an image; 1280 for head features, 12.8 kB).
    Computed once per image and key, shared by every version and every worker host: training a
    head reads these rows and never decodes an image. Plain bytes rather than halfvec: nothing
    searches them, and a 6,400-number halfvec would only be parsed and rebuilt on every read.
    """

    image = models.ForeignKey(Image, on_delete=models.CASCADE, related_name="features")
    key = models.CharField(max_length=100)
    data = models.BinaryField()

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["image", "key"], name="feature_unique_per_key")
        ]


class Membership(models.Model):
    """A person's role in one collection; site admins (is_superuser) act as admin everywhere."""

    class Role(models.IntegerChoices):
        # Ordered: each role can do everything the ones below it can.
        ANNOTATOR = 10, "annotator"
        CURATOR = 20, "curator"
        ADMIN = 30, "admin"

    collection = models.ForeignKey(Collection, on_delete=models.CASCADE, related_name="members")
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="memberships"
    )
    role = models.PositiveSmallIntegerField(choices=Role.choices)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["collection", "user"], name="membership_unique")
        ]
