"""In the browser: start training from the models page and watch the job page reach done; answer
pairs until retraining starts by itself and the pairs come from the new model."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from retrieval import embedding
from tests.retrieval.test_search_embedding import add_pictures
from tests.waiting import wait_for
from worker.models import Job, TrainingPolicy

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def small_training(settings, tmp_path: Path, monkeypatch) -> None:
    """Runs before the worker starts, which inherits this environment."""
    settings.MEDIA_ROOT = tmp_path / "media"
    settings.MODELS_DIR = tmp_path / "models"
    monkeypatch.setenv("AUTORET_MODELS_DIR", str(settings.MODELS_DIR))
    monkeypatch.setenv("AUTORET_TRAIN_BATCH_SIZE", "8")
    monkeypatch.setenv("AUTORET_CHECKPOINT_SECONDS", "1")


def test_start_training_and_watch_the_progress_reach_done(
    small_training, logged_in_page, celery_worker, collection, live_server
) -> None:
    add_pictures(collection, range(12))
    embedding.embed_new_images(collection)
    page = logged_in_page
    page.goto(f"{live_server.url}/collections/{collection.pk}/")
    page.get_by_role("link", name="Models and training").click()
    page.get_by_role("heading", name=f"Models of {collection.name}").wait_for()
    assert "v1 (active)" in page.locator("table.versions").inner_text()
    page.get_by_label("Minutes of training").fill("0.05")
    page.get_by_role("button", name="Train").click()
    page.wait_for_url("**/jobs/*/")
    progress = page.locator("#job-progress")
    # htmx replaces the section every second while the job runs; a finished job stops polling.
    page.locator('#job-progress[data-status="done"]').wait_for(timeout=240_000)
    assert "100" in progress.locator(".job-percent").inner_text()
    assert "is active" in progress.locator(".log-tail").inner_text()
    page.get_by_role("link", name=f"Models of {collection.name}").click()
    assert "v2 (active)" in page.locator("table.versions").inner_text()


def test_pairs_come_from_the_new_model_after_automatic_retraining(
    small_training, logged_in_page, celery_worker, collection, live_server
) -> None:
    from playwright.sync_api import expect

    add_pictures(collection, range(0, 15), label="a")
    add_pictures(collection, range(15, 30), label="b")
    embedding.embed_new_images(collection)  # version 1: pretrained features, no training
    TrainingPolicy.objects.create(collection=collection, retrain_after_answers=3, minutes=0.02)
    page = logged_in_page
    page.goto(f"{live_server.url}/collections/{collection.pk}/label/")
    status = page.locator("#label-status")
    expect(status).to_have_text(re.compile(r"model v1\)$"))
    for key in "jkj":
        shown = page.locator("#labeler").get_attribute("data-pair-id")
        page.keyboard.press(key)
        expect(page.locator("#labeler")).not_to_have_attribute("data-pair-id", shown or "")
    # Nobody pressed Train: three answers started it, the worker trained version 2 on them,
    # activated it and mined new pairs from it.
    job = wait_for(
        lambda: Job.objects.filter(collection=collection, kind=Job.Kind.TRAIN).first(),
        "an automatic training job",
        240,
        process=celery_worker,
    )
    assert job.requested_by is None
    wait_for(
        lambda: Job.objects.get(pk=job.pk).status == Job.Status.DONE,
        "the automatic training job to finish",
        240,
        process=celery_worker,
    )
    # The pairs already on the page were chosen by version 1; the next ones by the new model.
    # An empty queue is looked at again every few seconds by the page itself.
    for _ in range(120):
        text = status.text_content() or ""
        if re.search(r"model v[2-9]\)$", text):
            break
        if text.startswith("Pair"):
            page.keyboard.press("s")  # unsure: moves on without adding a constraint
            expect(status).not_to_have_text(text)  # the next pair, or "Nothing left"
        page.wait_for_timeout(500)
    expect(status).to_have_text(re.compile(r"model v[2-9]\)$"))
    collection.refresh_from_db()
    assert collection.active_version is not None and collection.active_version.number >= 2
