"""The leased pair queue through the API: leases, SKIP LOCKED, idempotent answers, undo, roles,
and the strategies' promise never to propose an answered or implied pair."""

from __future__ import annotations

import threading
import uuid
from datetime import timedelta

import pytest
from django.db import connection, transaction
from django.utils import timezone
from rest_framework.test import APIClient

from labeling import answers, pair_queue, strategies
from labeling.inference import infer
from labeling.models import Answer, Constraint, ConstraintRevision, Pair, Strategy
from labeling.tasks import mine_pairs
from retrieval.models import Collection
from tests.labeling.conftest import add_version

pytestmark = pytest.mark.django_db


def client_for(user) -> APIClient:
    client = APIClient()
    client.force_authenticate(user)
    return client


def next_url(collection, exclude: str = "") -> str:
    url = f"/api/v1/collections/{collection.pk}/pairs/next/"
    return f"{url}?exclude={exclude}" if exclude else url


def test_next_pair_leases_a_mined_pair(collection, images, annotator):
    response = client_for(annotator).get(next_url(collection))
    assert response.status_code == 200
    body = response.json()
    assert set(body) == {"pair_id", "a", "b", "strategy", "version", "lease_expires_at"}
    assert body["a"]["id"] < body["b"]["id"]
    assert body["a"]["url"].startswith("http://testserver/media/")
    pair = Pair.objects.get(pk=body["pair_id"])
    assert pair.leased_by == annotator
    assert pair.lease_expires_at is not None and pair.lease_expires_at > timezone.now()


def test_two_annotators_never_get_the_same_pair(collection, images, annotator, curator):
    mine_pairs(collection.pk)
    first = client_for(annotator).get(next_url(collection)).json()["pair_id"]
    second = client_for(curator).get(next_url(collection)).json()["pair_id"]
    assert first != second


def test_a_reloaded_page_gets_its_held_pair_back_unless_excluded(collection, images, annotator):
    client = client_for(annotator)
    first = client.get(next_url(collection)).json()["pair_id"]
    assert client.get(next_url(collection)).json()["pair_id"] == first
    preloaded = client.get(next_url(collection, str(first))).json()["pair_id"]
    assert preloaded != first


def test_an_expired_lease_returns_the_pair_to_the_queue(collection, images, annotator, curator):
    mine_pairs(collection.pk)
    held = client_for(annotator).get(next_url(collection)).json()["pair_id"]
    Pair.objects.filter(pk=held).update(lease_expires_at=timezone.now() - timedelta(seconds=1))
    assert client_for(curator).get(next_url(collection)).json()["pair_id"] == held


def test_same_idempotency_key_twice_stores_one_answer(collection, images, annotator):
    client = client_for(annotator)
    pair_id = client.get(next_url(collection)).json()["pair_id"]
    body = {"answer": "same", "idempotency_key": str(uuid.uuid4())}
    first = client.post(f"/api/v1/pairs/{pair_id}/answer/", body, format="json")
    again = client.post(f"/api/v1/pairs/{pair_id}/answer/", body, format="json")
    assert (first.status_code, again.status_code) == (201, 200)
    assert Constraint.objects.filter(pair_id=pair_id).count() == 1
    assert ConstraintRevision.objects.filter(pair_id=pair_id).count() == 1
    assert Pair.objects.get(pk=pair_id).status == Pair.Status.ANSWERED


def test_an_idempotency_key_reused_on_another_pair_is_a_409_not_a_lost_answer(
    collection, images, annotator
):
    client = client_for(annotator)
    first = answers.pair_for(collection, images[0].pk, images[1].pk)
    second = answers.pair_for(collection, images[2].pk, images[3].pk)
    body = {"answer": "same", "idempotency_key": "k-1"}
    assert client.post(f"/api/v1/pairs/{first.pk}/answer/", body, format="json").status_code == 201
    reused = client.post(f"/api/v1/pairs/{second.pk}/answer/", body, format="json")
    assert reused.status_code == 409
    assert f"pair {first.pk}" in reused.json()["detail"]
    assert not Constraint.objects.filter(pair=second).exists()
    assert not ConstraintRevision.objects.filter(pair=second).exists()


def test_an_answer_sent_for_another_user_is_a_403_and_stores_nothing(
    collection, images, annotator, curator
):
    pair = answers.pair_for(collection, images[0].pk, images[1].pk)

    def send_as_annotator(signed_in) -> int:
        return (
            client_for(signed_in)
            .post(
                f"/api/v1/pairs/{pair.pk}/answer/",
                {"answer": "same"},
                format="json",
                headers={"X-Autoret-User": str(annotator.pk)},
            )
            .status_code
        )

    assert send_as_annotator(curator) == 403
    assert not Constraint.objects.exists()
    assert send_as_annotator(annotator) == 201


def test_an_answer_with_next_brings_the_next_pair_in_the_same_response(
    collection, images, annotator
):
    client = client_for(annotator)
    shown = client.get(next_url(collection)).json()["pair_id"]
    preloaded = client.get(next_url(collection, str(shown))).json()["pair_id"]
    body = {"answer": "different", "idempotency_key": str(uuid.uuid4())}
    url = f"/api/v1/pairs/{shown}/answer/?next=1&exclude={preloaded}"
    response = client.post(url, body, format="json")
    assert response.status_code == 201
    after = response.json()["next"]
    # Neither the answered pair nor the one the page shows next: the pair after it, leased.
    assert after["pair_id"] not in (shown, preloaded)
    assert set(after) == {"pair_id", "a", "b", "strategy", "version", "lease_expires_at"}
    assert Pair.objects.get(pk=after["pair_id"]).leased_by == annotator
    assert Constraint.objects.get(pair_id=shown, annotator=annotator).answer == "different"
    # A retry after a lost response stores nothing and hands back the same pair, not another.
    again = client.post(url, body, format="json")
    assert (again.status_code, again.json()["next"]["pair_id"]) == (200, after["pair_id"])
    assert Pair.objects.filter(leased_by=annotator, status=Pair.Status.QUEUED).count() == 2


def test_an_answer_with_a_malformed_exclude_is_400_and_stores_nothing(
    collection, images, annotator
):
    client = client_for(annotator)
    shown = client.get(next_url(collection)).json()["pair_id"]
    url = f"/api/v1/pairs/{shown}/answer/?next=1&exclude=abc"
    assert client.post(url, {"answer": "same"}, format="json").status_code == 400
    assert not Constraint.objects.filter(pair_id=shown).exists()


def test_undo_puts_the_pair_back_to_the_annotator(collection, images, annotator):
    client = client_for(annotator)
    pair_id = client.get(next_url(collection)).json()["pair_id"]
    client.post(f"/api/v1/pairs/{pair_id}/answer/", {"answer": "different"}, format="json")
    response = client.post(f"/api/v1/pairs/{pair_id}/undo/")
    assert response.status_code == 200
    assert response.json()["pair_id"] == pair_id
    assert not Constraint.objects.filter(pair_id=pair_id).exists()
    assert client.get(next_url(collection)).json()["pair_id"] == pair_id


def test_nothing_left_is_204(collection, annotator):
    # No active version: nothing can be mined.
    assert client_for(annotator).get(next_url(collection)).status_code == 204


def test_an_exhausted_queue_is_mined_once_not_at_every_request(
    collection, images, annotator, monkeypatch
):
    calls = []

    def nothing_found(collection, n=None):
        calls.append(n)
        return 0

    monkeypatch.setattr(pair_queue, "mine", nothing_found)
    client = client_for(annotator)
    assert [client.get(next_url(collection)).status_code for _ in range(3)] == [204] * 3
    assert len(calls) == 1
    # A new version may find pairs the old one could not: it is mined at once.
    add_version(collection, images, number=2, seed=9)
    assert client.get(next_url(collection)).status_code == 204
    assert len(calls) == 2
    # So is the same version once the pause is over.
    monkeypatch.setattr(pair_queue, "NOTHING_TO_MINE_S", 0.0)
    assert client.get(next_url(collection)).status_code == 204
    assert len(calls) == 3


def test_outsider_cannot_see_or_answer_pairs(collection, images, annotator, outsider):
    pair_id = client_for(annotator).get(next_url(collection)).json()["pair_id"]
    client = client_for(outsider)
    assert client.get(next_url(collection)).status_code == 404
    url = f"/api/v1/pairs/{pair_id}/answer/"
    assert client.post(url, {"answer": "same"}, format="json").status_code == 404
    assert not Constraint.objects.exists()


def test_annotator_answers_but_cannot_adjudicate_or_exchange(collection, images, annotator):
    client = client_for(annotator)
    pair_id = client.get(next_url(collection)).json()["pair_id"]
    url = f"/api/v1/pairs/{pair_id}/answer/"
    assert client.post(url, {"answer": "same"}, format="json").status_code == 201
    ruling = client.post(f"/api/v1/pairs/{pair_id}/adjudicate/", {"answer": "same"}, format="json")
    assert ruling.status_code == 403
    base = f"/api/v1/collections/{collection.pk}"
    assert client.get(f"{base}/constraints/export/").status_code == 403
    assert client.get(f"{base}/groups/export/").status_code == 403
    assert client.post(f"{base}/constraints/import/").status_code == 403


def test_bad_answer_is_400_and_stores_nothing(collection, images, annotator):
    client = client_for(annotator)
    pair_id = client.get(next_url(collection)).json()["pair_id"]
    response = client.post(f"/api/v1/pairs/{pair_id}/answer/", {"answer": "maybe"}, format="json")
    assert response.status_code == 400
    assert not Constraint.objects.exists()


def test_one_to_many_marks_every_selected_image(collection, images, annotator):
    query, *others = images[:4]
    response = client_for(annotator).post(
        f"/api/v1/collections/{collection.pk}/pairs/mark/",
        {"query": query.pk, "answer": "same", "images": [o.pk for o in others]},
        format="json",
    )
    assert response.json() == {"stored": 3}
    group = infer(collection).groups()
    assert list(group.values()) == [sorted(i.pk for i in images[:4])]


def test_an_implied_queued_pair_is_retired_not_shown(collection, images, annotator):
    x = images
    stale = Pair.objects.create(collection=collection, a=x[0], b=x[2], strategy=Strategy.RANDOM)
    for a, b in ((x[0], x[1]), (x[1], x[2])):
        answers.record_answer(answers.pair_for(collection, a.pk, b.pk), annotator, Answer.SAME)
    shown = client_for(annotator).get(next_url(collection)).json()["pair_id"]
    assert shown != stale.pk
    stale.refresh_from_db()
    assert stale.status == Pair.Status.RETIRED


@pytest.mark.parametrize("name", list(strategies.STRATEGIES))
def test_strategy_never_proposes_an_answered_or_implied_pair(name, collection, images, annotator):
    x = images
    # Answer every neighbour pair of a few images plus links that imply many more.
    add_version(collection, images, number=2, seed=2)  # a previous version for `disagreement`
    collection.refresh_from_db()
    answered = set()
    for i in range(0, 12, 2):
        pair = answers.pair_for(collection, x[i].pk, x[i + 4].pk)
        answers.record_answer(pair, annotator, Answer.SAME if i % 4 == 0 else Answer.DIFFERENT)
        answered.add((pair.a_id, pair.b_id))
    for i in range(0, 8):
        pair = answers.pair_for(collection, x[i].pk, x[i + 8].pk)
        answers.record_answer(pair, annotator, Answer.SAME)
        answered.add((pair.a_id, pair.b_id))
    ctx = strategies.MiningContext.build(collection, collection.active_version, seed=0)
    inference = infer(collection)
    assert inference.implied_count() > 0
    proposed = strategies.STRATEGIES[name](ctx, 40)
    assert proposed, f"{name} proposed nothing"
    for c in proposed:
        key = (min(c.a, c.b), max(c.a, c.b))
        assert key not in answered
        assert inference.implied(*key) is None
    assert len({(min(c.a, c.b), max(c.a, c.b)) for c in proposed}) == len(proposed)


def test_mining_follows_the_mix_and_never_queues_a_pair_twice(collection, images):
    settings = strategies.settings_for(collection)
    settings.strategy_mix = {"uncertain": 1, "random": 1}
    settings.save()
    first = mine_pairs(collection.pk)
    second = mine_pairs(collection.pk)
    assert first > 0 and second > 0
    strategies_used = set(Pair.objects.values_list("strategy", flat=True))
    assert strategies_used <= {"uncertain", "random"}
    assert Pair.objects.count() == first + second


@pytest.mark.django_db(transaction=True)
def test_skip_locked_lets_a_second_session_pass_a_locked_pair(
    collection, images, annotator, curator
):
    mine_pairs(collection.pk)
    head = Pair.objects.filter(status=Pair.Status.QUEUED).order_by("id").first()
    assert head is not None
    locked, release = threading.Event(), threading.Event()

    def hold_lock() -> None:
        # A second database connection holds the head of the queue in an open transaction.
        try:
            with transaction.atomic():
                Pair.objects.select_for_update().get(pk=head.pk)
                locked.set()
                release.wait(30)
        finally:
            connection.close()

    holder = threading.Thread(target=hold_lock)
    holder.start()
    try:
        assert locked.wait(30)
        collection = Collection.objects.select_related("active_version").get(pk=collection.pk)
        pair = pair_queue.next_pair(collection, curator)
        assert pair is not None and pair.pk != head.pk
    finally:
        release.set()
        holder.join()


@pytest.mark.django_db(transaction=True)
def test_concurrent_sessions_get_distinct_pairs(collection, images, django_user_model):
    mine_pairs(collection.pk)
    users = [django_user_model.objects.create_user(f"ann{i}") for i in range(6)]
    got: dict[int, int | None] = {}
    start = threading.Barrier(len(users))

    def claim(index: int) -> None:
        try:
            c = Collection.objects.select_related("active_version").get(pk=collection.pk)
            start.wait(30)
            pair = pair_queue.next_pair(c, users[index])
            got[index] = pair.pk if pair else None
        finally:
            connection.close()

    threads = [threading.Thread(target=claim, args=(i,)) for i in range(len(users))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    ids = list(got.values())
    assert None not in ids and len(set(ids)) == len(users)
    assert Pair.objects.filter(leased_by__isnull=False).count() == len(users)


def test_answers_past_the_per_minute_limit_get_a_429_and_store_nothing(
    collection, images, annotator, monkeypatch
):
    from labeling.api import AnswerRateThrottle

    monkeypatch.setattr(AnswerRateThrottle, "THROTTLE_RATES", {"answers": "2/min"})
    client = client_for(annotator)
    codes = []
    for _ in range(3):
        pair_id = client.get(next_url(collection)).json()["pair_id"]
        response = client.post(
            f"/api/v1/pairs/{pair_id}/answer/", {"answer": "same"}, format="json"
        )
        codes.append(response.status_code)
    assert codes == [201, 201, 429]
    assert int(response["Retry-After"]) > 0
    assert Constraint.objects.count() == 2


def test_the_answer_limit_is_counted_in_the_shared_redis(
    collection, images, annotator, monkeypatch, settings, live_redis
):
    from django.core.cache import caches

    from labeling.api import AnswerRateThrottle
    from worker.broker import redis_client

    settings.CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": live_redis,
        }
    }
    monkeypatch.setattr(AnswerRateThrottle, "THROTTLE_RATES", {"answers": "2/min"})
    client = client_for(annotator)
    codes = []
    for _ in range(3):
        pair_id = client.get(next_url(collection)).json()["pair_id"]
        codes.append(
            client.post(f"/api/v1/pairs/{pair_id}/answer/", {"answer": "same"}, format="json")
        )
        # As if each answer reached another web process: nothing is remembered in this one.
        caches.close_all()
    assert [r.status_code for r in codes] == [201, 201, 429]
    assert any(b"throttle_answers" in key for key in redis_client().keys("*"))


def test_an_unreachable_cache_lets_answers_through(
    collection, images, annotator, settings, tmp_path
):
    settings.CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": f"unix://{tmp_path / 'nothing.sock'}",
        }
    }
    client = client_for(annotator)
    pair_id = client.get(next_url(collection)).json()["pair_id"]
    response = client.post(f"/api/v1/pairs/{pair_id}/answer/", {"answer": "same"}, format="json")
    assert response.status_code == 201


def test_the_leased_pair_and_the_stored_answer_are_their_saved_rows(
    collection, images, annotator, django_assert_num_queries
):
    # Both are built from the rows their statements return (Model.from_db), so every field is
    # the stored one, read without another query, and a save() updates rather than inserts.
    mine_pairs(collection.pk)
    fresh = Collection.objects.select_related("active_version").get(pk=collection.pk)
    pair = pair_queue.next_pair(fresh, annotator)
    assert pair is not None
    saved = Pair.objects.select_related("a", "b").get(pk=pair.pk)
    with django_assert_num_queries(0):
        for field in Pair._meta.concrete_fields:
            assert getattr(pair, field.attname) == getattr(saved, field.attname), field.name
        assert (pair.a.file.name, pair.b.file.name) == (saved.a.file.name, saved.b.file.name)
    assert not pair._state.adding
    constraint = answers.record_answer(pair, annotator, Answer.SAME).constraint
    stored = Constraint.objects.get(pk=constraint.pk)
    with django_assert_num_queries(0):
        for field in Constraint._meta.concrete_fields:
            assert getattr(constraint, field.attname) == getattr(stored, field.attname), field.name
        assert constraint.pair is pair and constraint.annotator == annotator
    assert not constraint._state.adding and constraint._state.db == stored._state.db
