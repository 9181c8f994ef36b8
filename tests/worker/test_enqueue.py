"""Every task send goes through worker/enqueue.py: heavy work reaches the gpu queue while a GPU
worker is live, whoever asks for it (an upload, a job), and nothing is queued before the commit."""

from __future__ import annotations

import json

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.urls import reverse
from rest_framework.test import APIClient

from tests.retrieval.test_search_embedding import png
from worker.broker import redis_client
from worker.heartbeat import KEY_PREFIX

pytestmark = pytest.mark.django_db


def pretend_worker_lives(queues: list[str]) -> None:
    """The heartbeat a worker consuming `queues` writes (worker/heartbeat.py)."""
    payload = {"hostname": "gpu-box@test", "queues": queues, "pid": 1}
    redis_client().set(f"{KEY_PREFIX}gpu-box@test", json.dumps(payload), ex=60)


def upload(collection, curator, django_capture_on_commit_callbacks) -> None:
    api = APIClient()
    api.force_authenticate(curator)
    files = [SimpleUploadedFile("a.png", png(1), content_type="image/png")]
    with django_capture_on_commit_callbacks(execute=True) as sent:
        response = api.post(
            reverse("api:collection_images", args=[collection.pk]),
            {"files": files},
            format="multipart",
        )
    assert response.status_code == 201, response.content
    assert len(sent) == 1  # the embedding waited for the commit


def test_an_imports_embedding_reaches_the_gpu_queue_while_a_gpu_worker_lives(
    live_redis, collection, curator, django_capture_on_commit_callbacks, settings, tmp_path
) -> None:
    settings.MEDIA_ROOT = tmp_path
    pretend_worker_lives(["default", "gpu"])
    upload(collection, curator, django_capture_on_commit_callbacks)
    assert (redis_client().llen("gpu"), redis_client().llen("default")) == (1, 0)


def test_an_imports_embedding_goes_to_the_default_queue_without_a_gpu_worker(
    live_redis, collection, curator, django_capture_on_commit_callbacks, settings, tmp_path
) -> None:
    settings.MEDIA_ROOT = tmp_path
    pretend_worker_lives(["default"])
    upload(collection, curator, django_capture_on_commit_callbacks)
    assert (redis_client().llen("gpu"), redis_client().llen("default")) == (0, 1)
