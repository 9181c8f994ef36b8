"""Training jobs through real Celery workers on the real PostgreSQL and Redis: progress, the
switch of search to the new version, cancel, and kill -9 in the middle of training and embedding."""

from __future__ import annotations

from pathlib import Path

import pytest
from django.conf import settings
from django.db.models import Count
from django.urls import reverse
from rest_framework.test import APIClient

from retrieval import embedding
from retrieval.autoret.checkpoint import CheckpointError, read_info
from retrieval.models import Collection, Embedding, ModelVersion
from tests.retrieval.test_search_embedding import add_pictures
from tests.waiting import wait_for
from tests.worker.conftest import Workers
from worker.models import PRETRAINED, SCRATCH, Job

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.django_db(transaction=True)]


def searchable(collection: Collection, n: int) -> Collection:
    """n labelled pictures embedded by version 1, which search answers from."""
    add_pictures(collection, range(0, n // 2), label="a")
    add_pictures(collection, range(n // 2, n), label="b")
    embedding.embed_new_images(collection)
    collection.refresh_from_db()
    return collection


def start(api: APIClient, collection: Collection, minutes: float, recipe: str = PRETRAINED) -> Job:
    response = api.post(
        reverse("worker_api:train", args=[collection.pk]),
        {"minutes": minutes, "recipe": recipe},
        format="json",
    )
    assert response.status_code == 202, response.content
    return Job.objects.get(pk=response.json()["job_id"])


def state(job: Job) -> Job:
    job.refresh_from_db()
    return job


def checkpoint_step(version: ModelVersion) -> int:
    try:
        return int(read_info(Path(settings.MODELS_DIR) / version.checkpoint)["step"])
    except CheckpointError:
        return 0


@pytest.fixture
def api(admin) -> APIClient:
    client = APIClient()
    client.force_authenticate(admin)
    return client


def test_training_shows_progress_then_search_answers_from_the_new_version(
    workers: Workers, collection, api
) -> None:
    searchable(collection, 24)
    old = collection.active_version_id
    workers.start()
    job = start(api, collection, minutes=0.05)
    seen: set[float] = set()

    def finished() -> bool:
        seen.add(state(job).progress)
        return job.status not in Job.ACTIVE

    wait_for(finished, "the training job to end")
    assert job.status == Job.Status.DONE, job.error or workers.log(0)
    assert any(0 < p < 1 for p in seen), f"progress never moved between 0 and 1: {seen}"
    assert api.get(reverse("worker_api:job", args=[job.pk])).json()["progress"] == 1.0
    collection.refresh_from_db()
    assert collection.active_version_id == job.version_id != old
    image = collection.images.first()
    search = api.post(
        reverse("api:search", args=[collection.pk]), {"image_id": image.pk, "k": 3}, format="json"
    )
    assert search.json()["model_version"]["id"] == job.version_id
    assert job.version_or_fail().metrics["evaluation"]["map_at_100"] >= 0


def test_cancel_stops_a_running_training_job(workers: Workers, collection, api) -> None:
    searchable(collection, 16)
    old = collection.active_version_id
    workers.start()
    job = start(api, collection, minutes=10)
    wait_for(lambda: bool(state(job).metrics.get("loss")), "the first reported loss")
    response = api.post(reverse("worker_api:job_cancel", args=[job.pk]))
    assert response.status_code == 202
    wait_for(lambda: state(job).status not in Job.ACTIVE, "the job to stop")
    assert job.status == Job.Status.CANCELLED
    assert job.version_or_fail().status == ModelVersion.Status.FAILED
    collection.refresh_from_db()
    assert collection.active_version_id == old


def test_kill_9_mid_training_resumes_from_the_checkpoint(workers: Workers, collection, api) -> None:
    searchable(collection, 16)
    first = workers.start()
    # The from-scratch recipe trains in checkpointed slices; the head trains in one short step.
    job = start(api, collection, minutes=0.3, recipe=SCRATCH)
    version = job.version_or_fail()
    wait_for(lambda: checkpoint_step(version) > 0, "a checkpoint with steps in it")
    workers.kill(first)
    killed_at = checkpoint_step(version)
    assert state(job).status == Job.Status.RUNNING
    workers.start()
    wait_for(lambda: state(job).status not in Job.ACTIVE, "the resumed job to end")
    assert job.status == Job.Status.DONE, job.error
    resumed = [s for s in job.metrics["slices"] if s["from_step"] == killed_at]
    assert resumed, f"no slice resumed from step {killed_at}: {job.log_tail}"
    # The first step after the restart continues the checkpoint's count, not 0. The last slice
    # from that step is the restarted one: under load the kill can land after the next slice
    # started from the same checkpoint but before its first step (first_step None).
    assert resumed[-1]["first_step"] is not None, job.log_tail
    assert killed_at < resumed[-1]["first_step"] <= killed_at + 10
    assert "from step" in job.log_tail


def test_kill_9_mid_embedding_ends_with_one_vector_per_image(
    workers: Workers, collection, api
) -> None:
    searchable(collection, 120)
    first = workers.start()
    job = start(api, collection, minutes=0.02)

    def embedding_started() -> bool:
        return Embedding.objects.filter(version_id=state(job).version_id).exists()

    wait_for(embedding_started, "the new version's first vectors")
    workers.kill(first)
    partial = Embedding.objects.filter(version_id=job.version_id).count()
    assert 0 < partial < 120, "the kill came after embedding ended; the test needs it during"
    collection.refresh_from_db()
    assert collection.active_version_id != job.version_id
    workers.start()
    wait_for(lambda: state(job).status not in Job.ACTIVE, "the job to finish embedding")
    assert job.status == Job.Status.DONE, job.error
    per_image = (
        Embedding.objects.filter(version_id=job.version_id)
        .values("image_id")
        .annotate(n=Count("id"))
    )
    assert len(per_image) == 120
    assert {row["n"] for row in per_image} == {1}
    collection.refresh_from_db()
    assert collection.active_version_id == job.version_id
