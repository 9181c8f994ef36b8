"""manage.py train and embed run the job steps in the terminal."""

from __future__ import annotations

import pytest
from django.core.management import CommandError, call_command

from retrieval.models import Embedding
from tests.retrieval.test_search_embedding import add_pictures
from worker import actions
from worker.models import Job

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def small_jobs(settings, tmp_path) -> None:
    settings.MEDIA_ROOT = tmp_path / "media"
    settings.MODELS_DIR = tmp_path / "models"
    settings.AUTORET_TRAIN_BATCH_SIZE = 8


def test_embed_then_train_from_the_terminal(collection, capsys) -> None:
    add_pictures(collection, range(10))
    call_command("embed", collection.name)
    collection.refresh_from_db()
    assert Embedding.objects.filter(version=collection.active_version).count() == 10
    call_command("train", str(collection.pk), "--minutes", "0.01")
    collection.refresh_from_db()
    assert collection.active_version is not None and collection.active_version.number == 2
    assert Embedding.objects.filter(version=collection.active_version).count() == 10
    assert "version 2 of" in capsys.readouterr().out
    assert Job.objects.filter(collection=collection, status=Job.Status.DONE).count() == 2


def test_train_refuses_while_a_job_runs(collection, admin) -> None:
    actions.start_training(collection, admin, run_here=True)
    with pytest.raises(CommandError, match="already running"):
        call_command("train", collection.name)
