"""Embedding jobs: as plain function calls, and end to end through a real Celery worker."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from django.core.files.storage import default_storage
from django.core.files.uploadedfile import SimpleUploadedFile
from django.urls import reverse
from rest_framework.test import APIClient

from retrieval.models import Collection, Embedding, Image, ModelVersion
from tests.retrieval.test_search_embedding import add_pictures, png
from tests.waiting import wait_for
from worker import actions, pipeline
from worker.models import Job
from worker.tasks import advance_job


@pytest.fixture
def stored_files() -> Iterator[None]:
    """The worker process reads the default MEDIA_ROOT, so these tests write there: remove
    exactly the files they created afterwards."""
    yield
    for image in Image.objects.all():
        for name in (image.file.name, image.thumbnail.name):
            if name:
                default_storage.delete(name)


@pytest.mark.django_db
def test_an_embedding_job_fills_features_then_vectors_activates_and_measures_version_one(
    collection: Collection, settings, tmp_path
) -> None:
    settings.MEDIA_ROOT = tmp_path
    settings.AUTORET_EMBED_BATCH = 4
    add_pictures(collection, range(6), label="a")
    add_pictures(collection, range(6, 12), label="b")
    job = pipeline.run_here(actions.start_embedding(collection), progress_bar=False)
    assert job.status == Job.Status.DONE and job.progress == 1.0
    # Progress went through the feature phase, batch by batch, before the vectors.
    assert "features 4/12 images" in job.log_tail and "features 12/12 images" in job.log_tail
    assert "embedded 12/12 images" in job.log_tail
    collection.refresh_from_db()
    version = collection.active_version
    assert version is not None and version.kind == ModelVersion.Kind.PRETRAINED
    assert Embedding.objects.filter(version=version).count() == 12
    assert "map_at_100" in version.metrics["evaluation"]


@pytest.mark.django_db
def test_a_job_of_a_deleted_collection_does_nothing(django_capture_on_commit_callbacks) -> None:
    with django_capture_on_commit_callbacks() as queued:
        advance_job.run(10**9)
    assert not ModelVersion.objects.exists()  # no version made for a collection that is gone
    assert not Embedding.objects.exists()
    assert queued == []  # and no next batch queued


@pytest.mark.integration
@pytest.mark.django_db(transaction=True)
def test_upload_is_embedded_by_the_worker_and_becomes_searchable(
    celery_worker, stored_files, collection: Collection, curator
) -> None:
    api = APIClient()
    api.force_authenticate(curator)
    files = [
        SimpleUploadedFile(f"{seed}.png", png(seed), content_type="image/png") for seed in range(8)
    ]
    response = api.post(
        reverse("api:collection_images", args=[collection.pk]), {"files": files}, format="multipart"
    )
    assert response.status_code == 201, response.content
    created = response.json()["created"]

    def activated() -> bool:
        collection.refresh_from_db()
        return collection.active_version_id is not None

    wait_for(activated, "the collection's first active version", process=celery_worker)
    assert Embedding.objects.filter(version=collection.active_version).count() == len(created)
    search = api.post(
        reverse("api:search", args=[collection.pk]), {"image_id": created[0], "k": 3}, format="json"
    )
    assert search.status_code == 200
    body = search.json()
    assert body["model_version"]["kind"] == "pretrained"
    job = Job.objects.get(collection=collection)
    assert job.kind == Job.Kind.EMBED and job.status == Job.Status.DONE
    assert len(body["results"]) == 3


@pytest.mark.integration
@pytest.mark.django_db(transaction=True)
def test_worker_drains_a_collection_in_self_enqueued_steps(
    celery_worker, stored_files, collection: Collection
) -> None:
    ids = add_pictures(collection, range(10))
    actions.enqueue(actions.start_embedding(collection))

    def activated() -> bool:
        collection.refresh_from_db()
        return collection.active_version_id is not None

    wait_for(activated, "the collection's first active version", process=celery_worker)
    embedded = Embedding.objects.filter(version=collection.active_version)
    assert sorted(embedded.values_list("image_id", flat=True)) == ids
