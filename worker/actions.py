"""Starting, cancelling and switching: what pages, the API and commands call.

Nothing here imports PyTorch (web processes never load it): the work itself happens in
worker/pipeline.py, run by the tasks in worker/tasks.py.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from django.conf import settings
from django.contrib.auth.models import User
from django.db import IntegrityError, transaction
from django.db.models import Exists, Max, OuterRef
from django.utils import timezone

from audit.models import Event
from retrieval import versions
from retrieval.models import Collection, Embedding, ModelVersion
from retrieval.versions import VersionNotAllowed
from worker.enqueue import send_on_commit
from worker.models import PRETRAINED, RECIPES, Job, TrainingPolicy
from worker.tasks import advance_job


class TrainingAlreadyRunning(Exception):
    """A collection has at most one training job queued or running; `job` is that one."""

    def __init__(self, job: Job | None) -> None:
        self.job = job
        where = f" (job {job.pk}, {job.status})" if job is not None else ""
        super().__init__(f"A training job is already running for this collection{where}.")


class TrainingQuota(Exception):
    """A training request over AUTORET_MAX_TRAIN_MINUTES (one job) or over the requester's
    AUTORET_TRAIN_MINUTES_PER_USER_DAY; the message says which and how much is left."""


def enqueue(job: Job, after_id: int = 0) -> None:
    """Queues the job's next step once the surrounding transaction commits. If the broker is
    down, the job row stays queued and says so; cancelling it frees the collection."""
    send_on_commit(advance_job, job.pk, after_id, heavy=True)


def active_training(collection: Collection) -> Job | None:
    return Job.objects.filter(
        collection=collection, kind=Job.Kind.TRAIN, status__in=Job.ACTIVE
    ).first()


def default_minutes(collection: Collection) -> float:
    policy = TrainingPolicy.objects.filter(collection=collection).first()
    if policy is not None and policy.minutes:
        return policy.minutes
    return float(settings.AUTORET_TRAIN_MINUTES)


def start_training(
    collection: Collection,
    user: User | None,
    minutes: float | None = None,
    *,
    run_here: bool = False,
    recipe: str = PRETRAINED,
    automatic: bool = False,
) -> Job:
    """Creates the next model version and a training job for it, and queues the job.

    `recipe` (worker.models.RECIPES): the head on cached pretrained features (the default), the
    from-scratch network, or the ImageNet backbone fine-tuned in full. `automatic`: started by
    the answers (worker/retraining.py): a result clearly worse than the active version on the
    imported labels is kept inactive.

    Raises TrainingAlreadyRunning when the collection has a training job queued or running (a
    partial unique constraint decides, so two simultaneous clicks cannot both win). run_here:
    nothing is queued; the caller (`manage.py train`) runs the job in its own process.
    """
    # Quotas bind users; site admins and the platform's operators (commands: no user) are trusted.
    limited = user is not None and not user.is_superuser
    cap = float(settings.AUTORET_MAX_TRAIN_MINUTES)
    if limited and minutes is not None and float(minutes) > cap:
        raise TrainingQuota(f"A training job may run at most {cap:g} minutes.")
    # The collection's setting (also what automatic retraining uses) is held to the cap, not
    # refused: a collection admin could otherwise set it high and have the platform train.
    budget = float(minutes) if minutes is not None else min(default_minutes(collection), cap)
    if budget <= 0:
        raise ValueError("training needs a positive number of minutes")
    if recipe not in RECIPES:
        raise ValueError(f"unknown training recipe {recipe!r}; choose from {', '.join(RECIPES)}")
    running = active_training(collection)
    if running is not None:
        raise TrainingAlreadyRunning(running)
    try:
        with transaction.atomic():
            if limited:
                assert user is not None
                _check_daily_minutes(user, budget)
            locked = Collection.objects.select_for_update().get(pk=collection.pk)
            number = (locked.versions.aggregate(n=Max("number"))["n"] or 0) + 1
            version = ModelVersion.objects.create(
                collection=locked,
                number=number,
                kind=ModelVersion.Kind.TRAINED,
                status=ModelVersion.Status.TRAINING,
                created_by=user,
                checkpoint=versions.new_checkpoint_name(locked.pk, number),
            )
            job = Job.objects.create(
                kind=Job.Kind.TRAIN,
                collection=locked,
                version=version,
                requested_by=user,
                phase="queued",
                options={"minutes": budget, "recipe": recipe, "automatic": automatic},
            )
            Event.record(
                Event.Action.TRAIN_START, user, locked, job, version=number, minutes=budget
            )
            if not run_here:
                enqueue(job)
    except IntegrityError:
        raise TrainingAlreadyRunning(active_training(collection)) from None
    return job


def _check_daily_minutes(user: User, budget: float) -> None:
    """Raises TrainingQuota when `budget` would take the minutes `user` asked for in the last 24
    hours past AUTORET_TRAIN_MINUTES_PER_USER_DAY. Counted under the user's row lock, so two
    requests at once (two collections) cannot both pass; a cancelled job still counts what it
    asked for."""
    User.objects.select_for_update().filter(pk=user.pk).exists()
    since = timezone.now() - timedelta(days=1)
    asked = Job.objects.filter(requested_by=user, kind=Job.Kind.TRAIN, created_at__gte=since)
    used = sum(
        float(options.get("minutes") or 0) for options in asked.values_list("options", flat=True)
    )
    allowed = float(settings.AUTORET_TRAIN_MINUTES_PER_USER_DAY)
    if used + budget > allowed:
        raise TrainingQuota(
            f"You asked for {used:g} training minutes in the last 24 hours; with {budget:g} more "
            f"that would pass your limit of {allowed:g}."
        )


def has_images_to_embed(collection: Collection) -> bool:
    """Whether an image of the collection lacks a vector in its active version (every image
    does while it has none)."""
    if collection.active_version_id is None:
        return collection.images.exists()
    vectors = Embedding.objects.filter(
        version_id=collection.active_version_id, image=OuterRef("pk")
    )
    return collection.images.exclude(Exists(vectors)).exists()


def start_embedding(collection: Collection, user: User | None = None) -> Job:
    """A job that embeds the images that have no vector in the collection's active version."""
    return Job.objects.create(
        kind=Job.Kind.EMBED,
        collection=collection,
        version_id=collection.active_version_id,
        requested_by=user,
        phase="embedding",
    )


def cancel_job(job: Job, by: User | None = None) -> None:
    """Asks the job to stop. A queued job nobody holds stops here; a running one stops at its next
    progress report (about a second while training, one batch while embedding)."""
    with transaction.atomic():
        asked = Job.objects.filter(pk=job.pk, status__in=Job.ACTIVE, cancel_requested=False).update(
            cancel_requested=True
        )
        stopped = Job.objects.filter(pk=job.pk, status=Job.Status.QUEUED, lease="").update(
            status=Job.Status.CANCELLED, phase="cancelled", finished_at=timezone.now()
        )
        if stopped and job.version_id is not None:
            versions.fail(job.version_id)
        if asked:
            Event.record(Event.Action.JOB_CANCEL, by, job.collection_id, job, kind=job.kind)
    job.refresh_from_db()


def set_policy(
    collection: Collection,
    retrain_after_answers: int | None,
    minutes: float | None,
    held_out_percent: int = 0,
) -> TrainingPolicy:
    policy, _ = TrainingPolicy.objects.update_or_create(
        collection=collection,
        defaults={
            "retrain_after_answers": retrain_after_answers,
            "minutes": minutes,
            "held_out_percent": held_out_percent,
        },
    )
    return policy


def activate_version(version: ModelVersion, by: User | None = None) -> None:
    """Switches search to a READY `version` (versions.activate); the embedding of images
    uploaded after it was embedded is queued by worker.hooks."""
    versions.activate(version, by)


def delete_embeddings(version: ModelVersion, by: User | None = None) -> int:
    """Frees an old version's vectors (versions.delete_embeddings), never while a job fills it."""

    def no_job_fills_it() -> None:
        if Job.objects.filter(version=version, status__in=Job.ACTIVE).exists():
            raise VersionNotAllowed("A running job is using this version; cancel it first.")

    return versions.delete_embeddings(version, by, check=no_job_fills_it)


@dataclass
class VersionRow:
    """One line of the models page."""

    version: ModelVersion
    active: bool
    job: Job | None


def version_rows(collection: Collection) -> list[VersionRow]:
    jobs = {
        job.version_id: job
        for job in Job.objects.filter(collection=collection, kind=Job.Kind.TRAIN).order_by(
            "created_at"
        )
    }
    return [
        VersionRow(version, version.pk == collection.active_version_id, jobs.get(version.pk))
        for version in collection.versions.order_by("-number")
    ]
