"""Starting, cancelling and switching: what pages, the API, commands and labeling call.

Nothing here imports PyTorch (web processes never load it): the work itself happens in
worker/pipeline.py, run by the tasks in worker/tasks.py.
"""

from __future__ import annotations

import contextlib
import logging
import uuid
from dataclasses import dataclass
from datetime import timedelta

from django.conf import settings
from django.contrib.auth.models import User
from django.db import IntegrityError, transaction
from django.db.models import Max
from django.utils import timezone

from audit.models import Event
from retrieval import queries
from retrieval.models import Collection, ModelVersion
from worker.heartbeat import live_workers
from worker.models import Job, TrainingPolicy

log = logging.getLogger(__name__)

GPU_QUEUE = "gpu"


class TrainingAlreadyRunning(Exception):
    """A collection has at most one training job queued or running; `job` is that one."""

    def __init__(self, job: Job | None) -> None:
        self.job = job
        where = f" (job {job.pk}, {job.status})" if job is not None else ""
        super().__init__(f"A training job is already running for this collection{where}.")


class TrainingQuota(Exception):
    """A training request over AUTORET_MAX_TRAIN_MINUTES (one job) or over the requester's
    AUTORET_TRAIN_MINUTES_PER_USER_DAY; the message says which and how much is left."""


class VersionNotAllowed(Exception):
    """An activation or deletion that would leave search without a complete version."""


def heavy_queue() -> str:
    """`gpu` when a live worker consumes it (its heartbeat says so), else the default queue."""
    try:
        workers = live_workers()
    except Exception:  # Redis down: the enqueue that follows reports it
        workers = []
    if any(GPU_QUEUE in worker.get("queues", []) for worker in workers):
        return GPU_QUEUE
    return settings.CELERY_TASK_DEFAULT_QUEUE


def enqueue(job: Job, after_id: int = 0) -> None:
    """Queues the job's next step once the surrounding transaction commits."""
    transaction.on_commit(lambda: _send(job.pk, after_id))


def _send(job_id: int, after_id: int) -> None:
    from worker.tasks import advance_job

    try:
        advance_job.apply_async((job_id, after_id), queue=heavy_queue())
    except Exception:
        # The job row stays queued and says so; cancelling it frees the collection.
        log.exception("job %s: could not be queued (broker down?)", job_id)


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
) -> Job:
    """Creates the next model version and a training job for it, and queues the job.

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
                # Unique even when a database is recreated with the same ids (tests, a restore):
                # a stale checkpoint under the same name would be resumed as if it were this one.
                checkpoint=f"collection-{locked.pk}/v{number}-{uuid.uuid4().hex[:8]}",
            )
            job = Job.objects.create(
                kind=Job.Kind.TRAIN,
                collection=locked,
                version=version,
                requested_by=user,
                phase="queued",
                options={"minutes": budget},
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
            ModelVersion.objects.filter(pk=job.version_id).exclude(
                status=ModelVersion.Status.READY
            ).update(status=ModelVersion.Status.FAILED)
        if asked:
            Event.record(Event.Action.JOB_CANCEL, by, job.collection_id, job, kind=job.kind)
    job.refresh_from_db()


def after_answer(collection: Collection) -> None:
    """Called by labeling after each stored answer: starts retraining once the collection's
    policy says enough new answers arrived since the last training job started."""
    from labeling.training import answers_since

    policy = TrainingPolicy.objects.filter(collection=collection).first()
    if policy is None or not policy.retrain_after_answers:
        return
    if active_training(collection) is not None:
        return
    last = (
        Job.objects.filter(collection=collection, kind=Job.Kind.TRAIN)
        .order_by("-created_at")
        .first()
    )
    if answers_since(collection, last.created_at if last else None) < policy.retrain_after_answers:
        return
    # Another answer's request may have started it a moment ago: that one is the retraining.
    with contextlib.suppress(TrainingAlreadyRunning):
        start_training(collection, None)


def set_policy(
    collection: Collection, retrain_after_answers: int | None, minutes: float | None
) -> TrainingPolicy:
    policy, _ = TrainingPolicy.objects.update_or_create(
        collection=collection,
        defaults={"retrain_after_answers": retrain_after_answers, "minutes": minutes},
    )
    return policy


def activate_version(version: ModelVersion, by: User | None = None) -> None:
    """Switches search to `version` (a rollback when it is older than the active one).

    Only a READY version is complete (every image embedded, index built); anything else would let
    search see a half-done state.
    """
    from retrieval.embedding import activate

    with transaction.atomic():
        # The status is read under the collection lock delete_embeddings takes to claim a
        # version: a version read as ready a moment ago may be losing its vectors now.
        Collection.objects.select_for_update().filter(pk=version.collection_id).exists()
        current = ModelVersion.objects.values_list("status", flat=True).get(pk=version.pk)
        if current != ModelVersion.Status.READY:
            raise VersionNotAllowed(
                f"Version {version.number} is {current}; only a ready version can be activated."
            )
        activate(version, by)
        # Images uploaded after this version was embedded get their vectors now.
        transaction.on_commit(lambda: _enqueue_collection_embedding(version.collection_id))


def _enqueue_collection_embedding(collection_id: int) -> None:
    from worker.tasks import embed_collection

    try:
        embed_collection.apply_async((collection_id,), queue=heavy_queue())
    except Exception:
        log.exception("collection %s: could not queue embedding (broker down?)", collection_id)


def delete_embeddings(version: ModelVersion, by: User | None = None) -> int:
    """Frees an old version's space: its index, then its vectors. Never the active version, nor
    one a running job is filling. Returns how many vectors were deleted."""
    with transaction.atomic():
        # Checked and claimed under the collection lock activation takes: once this commits,
        # activate_version refuses the version, so search never switches to one losing its
        # vectors.
        collection = Collection.objects.select_for_update().get(pk=version.collection_id)
        if collection.active_version_id == version.pk:
            raise VersionNotAllowed("The active version's embeddings cannot be deleted.")
        if Job.objects.filter(version=version, status__in=Job.ACTIVE).exists():
            raise VersionNotAllowed("A running job is using this version; cancel it first.")
        ModelVersion.objects.filter(pk=version.pk).update(status=ModelVersion.Status.DELETED)
    # The index goes first: a half-deleted version must never be searchable through it.
    queries.drop_index(version)
    with transaction.atomic():
        deleted, _ = version.embeddings.all().delete()
        Event.record(
            Event.Action.EMBEDDINGS_DELETE, by, collection, version,
            version=version.number, vectors=deleted,
        )  # fmt: skip
    version.refresh_from_db()
    return deleted


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
