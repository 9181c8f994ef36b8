"""Deleting images through the page while a real Celery worker embeds or trains the collection:
the job ends DONE, and nothing of the deleted images (file, vector, pair, answer) comes back."""

from __future__ import annotations

from pathlib import Path

import pytest
from django.conf import settings
from django.test import Client
from django.urls import reverse

from audit.models import Event
from labeling.answers import pair_for, record_answer
from labeling.models import Constraint, Pair
from retrieval import embedding
from retrieval.models import Collection, Embedding, Image
from tests.retrieval.test_search_embedding import add_pictures
from tests.waiting import wait_for
from tests.worker.conftest import Workers
from worker import actions
from worker.models import Job

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.django_db(transaction=True)]


def delete_through_page(client: Client, collection: Collection, ids: list[int]) -> None:
    url = reverse("retrieval:images_delete", args=[collection.pk])
    response = client.post(url, {"images": ids, "confirm": "yes"})
    assert response.status_code == 302, response.content


def stored_names(ids: list[int]) -> list[str]:
    images = Image.objects.filter(pk__in=ids)
    return [str(name) for image in images for name in (image.file.name, image.thumbnail.name)]


def assert_gone(collection: Collection, job: Job, gone: list[int], files: list[str]) -> None:
    assert not Image.objects.filter(pk__in=gone).exists()
    assert not Embedding.objects.filter(image_id__in=gone).exists()
    assert not (Pair.objects.filter(a_id__in=gone) | Pair.objects.filter(b_id__in=gone)).exists()
    assert not any((Path(settings.MEDIA_ROOT) / name).exists() for name in files)
    remaining = collection.images.count()
    assert Embedding.objects.filter(version_id=job.version_id).count() == remaining
    logged = Event.objects.get(action=Event.Action.IMAGES_DELETE).detail
    assert sorted(image["id"] for image in logged["images"]) == sorted(gone)


def test_images_deleted_while_a_worker_embeds_them_stay_deleted(
    workers: Workers, collection, admin, curator, annotator, password: str
) -> None:
    # One image per task: the job is still walking when the deletion lands.
    workers.env["AUTORET_EMBED_BATCH"] = "1"
    ids = add_pictures(collection, range(60))
    record_answer(pair_for(collection, ids[0], ids[1]), annotator, "same")
    record_answer(pair_for(collection, ids[1], ids[50]), annotator, "same")
    workers.start()
    job = actions.start_embedding(collection, admin)
    actions.enqueue(job)

    def some_embedded() -> bool:
        return Embedding.objects.filter(image__collection=collection).count() >= 5

    wait_for(some_embedded, "the first vectors")
    # Embedded ones and ones the walk has not reached yet.
    gone = [ids[1], ids[2], ids[50], ids[55], ids[59]]
    files = stored_names(gone)
    client = Client()
    client.login(username=curator.username, password=password)
    delete_through_page(client, collection, gone)
    job.refresh_from_db()
    assert job.status in Job.ACTIVE, "the job ended before the deletion: nothing was tested"

    def ended() -> bool:
        job.refresh_from_db()
        return job.status not in Job.ACTIVE

    wait_for(ended, "the embedding job to end")
    assert job.status == Job.Status.DONE, job.error or workers.log(0)
    assert_gone(collection, job, gone, files)
    assert not Constraint.objects.filter(pair__collection=collection).exists()


def test_images_deleted_while_a_worker_trains_stay_deleted(
    workers: Workers, collection, admin, curator, password: str
) -> None:
    ids = add_pictures(collection, range(0, 12), label="a") + add_pictures(
        collection, range(12, 24), label="b"
    )
    embedding.embed_new_images(collection)
    workers.start()
    job = actions.start_training(collection, admin, minutes=0.1)

    def training() -> bool:
        job.refresh_from_db()
        return job.phase == "training" and bool(job.metrics.get("loss"))

    wait_for(training, "training to start")
    gone = ids[:3]
    files = stored_names(gone)
    client = Client()
    client.login(username=curator.username, password=password)
    delete_through_page(client, collection, gone)

    def ended() -> bool:
        job.refresh_from_db()
        return job.status not in Job.ACTIVE

    wait_for(ended, "the training job to end")
    assert job.status == Job.Status.DONE, job.error or workers.log(0)
    collection.refresh_from_db()
    assert collection.active_version_id == job.version_id
    assert_gone(collection, job, gone, files)
