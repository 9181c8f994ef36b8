"""In the browser: start training from the models page and watch the job page reach done."""

from __future__ import annotations

from pathlib import Path

import pytest

from retrieval import embedding
from tests.retrieval.test_search_embedding import add_pictures

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
