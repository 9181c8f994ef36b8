"""The audit log: who changed what, when, in which collection.

Rows are written by the action functions that make the changes (labeling/answers.py,
labeling/exchange.py, retrieval/actions.py, worker/actions.py, config/stack.py,
retrieval/imports.py, retrieval/versions.py, retrieval/deletion.py), inside the
change's own transaction, so a rolled-back change leaves no row and a committed one always has its
row. Nothing ever updates or deletes a row.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser, AnonymousUser
from django.db import models
from django.utils import timezone


class Event(models.Model):
    class Action(models.TextChoices):
        ANSWER = "answer", "answered a pair"
        UNDO = "undo", "undid an answer"
        MARK = "mark", "marked images one-to-many"
        ADJUDICATE = "adjudicate", "adjudicated a pair"
        IMPORT = "import", "imported images"
        CONSTRAINTS_IMPORT = "constraints.import", "imported constraints"
        COLLECTION_CREATE = "collection.create", "created the collection"
        COLLECTION_DELETE = "collection.delete", "deleted the collection"
        IMAGES_DELETE = "images.delete", "deleted images"
        MEMBER_ADD = "member.add", "added a member"
        MEMBER_ROLE = "member.role", "changed a member's role"
        MEMBER_REMOVE = "member.remove", "removed a member"
        TRAIN_START = "train.start", "started training"
        JOB_CANCEL = "job.cancel", "cancelled a job"
        ACTIVATE = "activate", "activated a model version"
        EMBEDDINGS_DELETE = "embeddings.delete", "deleted a version's embeddings"
        USER_CREATE = "user.create", "created a user"
        USER_CHANGE = "user.change", "changed a user's site-wide rights"
        TOKEN_CREATE = "token.create", "created an API token"
        TOKEN_REVOKE = "token.revoke", "revoked an API token"

    at = models.DateTimeField(default=timezone.now)
    # Null for the system (automatic retraining, a worker activating what it trained, a command).
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    # Kept so the log still names a user after the account is deleted.
    username = models.CharField(max_length=150, blank=True)
    action = models.CharField(max_length=24, choices=Action.choices)
    # No database constraint: deleting a collection must neither delete its log nor be blocked,
    # and its rows keep the id (the deletion's own row stores the name in `detail`, as do the
    # rows of deleted images). A string reference: audit is the lowest app and imports no other
    # app's models.
    collection = models.ForeignKey(
        "retrieval.Collection",
        null=True,
        blank=True,
        on_delete=models.DO_NOTHING,
        db_constraint=False,
        related_name="+",
    )
    # "app_label.model", e.g. labeling.pair
    target_type = models.CharField(max_length=40, blank=True)
    target_id = models.BigIntegerField(null=True, blank=True)
    detail = models.JSONField(default=dict, blank=True)

    class Meta:
        ordering = ["-id"]
        # The Activity page: one collection's rows, newest first, by keyset.
        indexes = [models.Index(fields=["collection", "-id"], name="event_collection_keyset")]

    def __str__(self) -> str:
        return f"{self.at:%Y-%m-%d %H:%M:%S} {self.username or 'system'} {self.action}"

    @classmethod
    def record(
        cls,
        action: Event.Action,
        user: AbstractBaseUser | AnonymousUser | None,
        collection: models.Model | int | None = None,
        target: models.Model | None = None,
        **detail: Any,
    ) -> Event:
        """One INSERT; call it inside the transaction of the change it records."""
        if user is not None and not user.is_authenticated:
            user = None
        collection_id = collection.pk if isinstance(collection, models.Model) else collection
        return cls.objects.create(
            user=user,
            username=user.get_username() if user is not None else "",
            action=action,
            collection_id=collection_id,
            target_type=target._meta.label_lower if target is not None else "",
            target_id=target.pk if target is not None else None,
            detail=detail,
        )
