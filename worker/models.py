"""Jobs the workers run (training a version, embedding a collection) and the retraining policy.

A Job row is the single source of truth for a long piece of work: Celery messages carry only its
id, every task run claims it with a conditional UPDATE, and the pages and the API read progress,
phase, ETA, log tail and metrics from it. Celery keeps no results (CELERY_TASK_IGNORE_RESULT).
"""

from __future__ import annotations

from django.conf import settings
from django.core.validators import MaxValueValidator
from django.db import models
from django.db.models import Q

from retrieval.models import Collection, ModelVersion

# Lines of log kept on the row: enough to see what happened, small enough to poll every second.
LOG_TAIL_LINES = 40

# Training recipes (Job.options["recipe"]): the head on cached pretrained features (the
# default), the from-scratch network at 32 px, and full fine-tuning of the ImageNet backbone
# (meant for GPU workers: on two CPU cores it is far slower than the head).
PRETRAINED, SCRATCH, FINETUNE = "pretrained", "scratch", "finetune"
RECIPES = (PRETRAINED, SCRATCH, FINETUNE)
# At most this share of answered pairs (%) is kept out of training for measuring.
MAX_HELD_OUT_PERCENT = 50


class Job(models.Model):
    class Kind(models.TextChoices):
        TRAIN = "train", "train and activate"
        EMBED = "embed", "embed"

    class Status(models.TextChoices):
        QUEUED = "queued"
        RUNNING = "running"
        DONE = "done"
        FAILED = "failed"
        CANCELLED = "cancelled"

    ACTIVE = (Status.QUEUED, Status.RUNNING)

    kind = models.CharField(max_length=8, choices=Kind.choices)
    collection = models.ForeignKey(Collection, on_delete=models.CASCADE, related_name="jobs")
    version = models.ForeignKey(
        ModelVersion, null=True, blank=True, on_delete=models.SET_NULL, related_name="jobs"
    )
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.QUEUED)
    # Training, embedding, indexing, evaluating, activating: what the worker is doing right now.
    phase = models.CharField(max_length=40, blank=True)
    progress = models.FloatField(default=0.0)
    eta_s = models.FloatField(null=True, blank=True)
    log_tail = models.TextField(blank=True)
    # The loss history ({"step", "loss", ...}), known-pair counts, resumes, evaluation results.
    metrics = models.JSONField(default=dict, blank=True)
    # What was asked for: training minutes, the device it ran on.
    options = models.JSONField(default=dict, blank=True)
    error = models.TextField(blank=True)
    requested_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    cancel_requested = models.BooleanField(default=False)
    # The Celery task id holding the job; a redelivered message carries the same id and may go
    # on, a stray second message for the same job finds the lease taken and stops.
    lease = models.CharField(max_length=64, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    heartbeat_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        constraints = [
            # A second "train" while one runs must be refused, not queued twice.
            models.UniqueConstraint(
                fields=["collection"],
                condition=Q(kind="train", status__in=["queued", "running"]),
                name="job_one_active_training_per_collection",
            )
        ]

    def __str__(self) -> str:
        return f"{self.get_kind_display()} {self.collection} ({self.status})"

    def version_or_fail(self) -> ModelVersion:
        """The job's model version, fresh from the database; an error when it has none."""
        if self.version_id is None:
            raise ValueError(f"job {self.pk} has no model version")
        return ModelVersion.objects.get(pk=self.version_id)

    @property
    def is_active(self) -> bool:
        return self.status in self.ACTIVE

    @property
    def loss_history(self) -> list[dict[str, float]]:
        return list(self.metrics.get("loss", []))

    @property
    def last_loss(self) -> float | None:
        history = self.loss_history
        return history[-1]["loss"] if history else None


class TrainingPolicy(models.Model):
    """Per-collection retraining settings; no row means training only when someone asks."""

    collection = models.OneToOneField(
        Collection, on_delete=models.CASCADE, related_name="training_policy"
    )
    # Start training automatically once this many answers arrived since the last training job.
    retrain_after_answers = models.PositiveIntegerField(null=True, blank=True)
    minutes = models.FloatField(null=True, blank=True)
    # The share of answered pairs (in %) kept out of training to measure versions on
    # (labeling.training.is_held_out); 0 trains on every answer.
    held_out_percent = models.PositiveSmallIntegerField(
        default=0, validators=[MaxValueValidator(MAX_HELD_OUT_PERCENT)]
    )

    def __str__(self) -> str:
        return f"training policy of {self.collection}"

    @classmethod
    def held_out_percent_of(cls, collection_id: int) -> int:
        """The collection's held-out share (%); 0 without a policy."""
        found = cls.objects.filter(collection_id=collection_id).values_list(
            "held_out_percent", flat=True
        )
        return int(found.first() or 0)
