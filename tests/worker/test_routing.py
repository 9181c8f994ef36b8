"""Training and embedding go to the gpu queue only while a live worker consumes it."""

from __future__ import annotations

import pytest

from worker.enqueue import heavy_queue


def test_heavy_work_goes_to_the_default_queue_without_a_gpu_worker(live_redis) -> None:
    assert heavy_queue() == "default"


@pytest.mark.integration
@pytest.mark.django_db(transaction=True)
def test_heavy_work_goes_to_the_gpu_queue_while_a_gpu_worker_lives(celery_worker) -> None:
    # The fixture's worker consumes "default,gpu" and says so in its heartbeat.
    assert heavy_queue() == "gpu"
