"""Mining on demand: a low queue or a newly activated version asks for one mining task, which the
real worker runs; a new version's mining retires the pairs the old one proposed."""

from __future__ import annotations

import pytest

from labeling import pair_queue, strategies
from labeling.models import LabelingSettings, Pair
from labeling.tasks import mine_pairs
from retrieval.models import Collection
from tests.labeling.conftest import add_version
from tests.waiting import wait_for
from worker.broker import redis_client


def fresh(collection: Collection) -> Collection:
    return Collection.objects.select_related("active_version").get(pk=collection.pk)


@pytest.mark.django_db
def test_a_low_queue_queues_one_mining_task(
    collection, images, annotator, curator, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=True):
        pair_queue.next_pair(fresh(collection), annotator)  # an empty queue: mined in the request
    assert redis_client().llen("default") == 1
    with django_capture_on_commit_callbacks(execute=True):
        pair_queue.next_pair(fresh(collection), curator)
    assert redis_client().llen("default") == 1  # one request per collection at a time


@pytest.mark.django_db
def test_mining_a_new_version_retires_the_old_versions_unheld_pairs(
    collection, images, annotator, curator
):
    mine_pairs(collection.pk)
    held = pair_queue.next_pair(fresh(collection), annotator)
    assert held is not None
    old_open = Pair.objects.filter(status=Pair.Status.QUEUED).exclude(pk=held.pk).count()
    assert old_open > 0
    v2 = add_version(collection, images, number=2, seed=9)
    LabelingSettings.objects.update(mining_requested_at=None)
    # The next request notices the queue was mined from another version and asks for mining.
    pair_queue.next_pair(fresh(collection), curator)
    assert LabelingSettings.objects.get().mining_requested_at is not None
    mine_pairs(collection.pk)
    held.refresh_from_db()
    assert held.status == Pair.Status.QUEUED  # still on the annotator's screen
    queued = Pair.objects.filter(status=Pair.Status.QUEUED, leased_by__isnull=True)
    assert queued.exists()
    assert set(queued.values_list("version", flat=True)) == {v2.pk}
    assert strategies.settings_for(collection).mined_version_id == v2.pk


@pytest.mark.integration
@pytest.mark.django_db(transaction=True)
def test_the_worker_mines_when_asked(collection, images, annotator, celery_worker):
    mine_pairs.delay(collection.pk)
    wait_for(
        Pair.objects.filter(collection=collection).exists, "the worker's mining",
        process=celery_worker,
    )  # fmt: skip
    assert LabelingSettings.objects.get(collection=collection).mined_version_id is not None


@pytest.mark.django_db(transaction=True)
def test_an_image_deleted_while_pairs_are_mined_leaves_the_rest_queued(
    collection, images, monkeypatch
):
    from retrieval.models import Image

    gone = images[0].pk
    real = strategies.STRATEGIES["merge-gain"]

    def deleting_midway(ctx, quota):
        found = real(ctx, quota)
        # Another request deletes an image after the candidates were read.
        Image.objects.filter(pk=gone).delete()
        return [*found, strategies.Candidate(gone, images[1].pk, 1.0)]

    monkeypatch.setitem(strategies.STRATEGIES, "merge-gain", deleting_midway)
    assert strategies.mine(fresh(collection), n=10) > 0
    queued = Pair.objects.filter(status=Pair.Status.QUEUED)
    assert queued.exists()
    assert not queued.filter(a_id=gone).exists() and not queued.filter(b_id=gone).exists()
