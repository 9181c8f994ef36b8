"""The labeling pages through the test client: label (and its counters partial), groups with
naming and adjudication, one-to-many marks from the similar-images grid."""

from __future__ import annotations

import pytest
from django.db import connection
from django.test import Client
from rest_framework.test import APIClient

from labeling import answers
from labeling.models import Answer, Group, Pair

pytestmark = pytest.mark.django_db


def logged_in(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


def test_label_page_shows_counters_and_the_htmx_partial(collection, images, annotator):
    pair = answers.pair_for(collection, images[0].pk, images[1].pk)
    answers.record_answer(pair, annotator, Answer.SAME)
    client = logged_in(annotator)
    page = client.get(f"/collections/{collection.pk}/label/")
    assert page.status_code == 200
    assert b'data-counter="mine">1<' in page.content
    assert b"labeling/label.js" in page.content
    partial = client.get(f"/collections/{collection.pk}/label/", headers={"HX-Request": "true"})
    assert partial.content.strip().startswith(b'<p id="counters"')


def test_outsider_gets_404_on_labeling_pages(collection, outsider):
    client = logged_in(outsider)
    assert client.get(f"/collections/{collection.pk}/label/").status_code == 404
    assert client.get(f"/collections/{collection.pk}/groups/").status_code == 404


def test_curator_names_a_group_and_rules_on_a_conflict(collection, images, annotator, curator):
    x = images
    for a, b, value in ((0, 1, Answer.SAME), (1, 2, Answer.SAME), (0, 2, Answer.DIFFERENT)):
        answers.record_answer(answers.pair_for(collection, x[a].pk, x[b].pk), annotator, value)
    conflict = Pair.objects.get(flagged=True)
    client = logged_in(curator)
    page = client.get(f"/collections/{collection.pk}/groups/")
    assert b"Conflicts to adjudicate (1)" in page.content
    assert b"3 images" in page.content
    client.post(f"/collections/{collection.pk}/groups/", {"image": x[0].pk, "name": "boots"})
    assert Group.objects.get().name == "boots"
    client.post(f"/collections/{collection.pk}/groups/", {"pair": conflict.pk, "answer": "same"})
    conflict.refresh_from_db()
    assert (conflict.adjudicated, conflict.flagged) == (Answer.SAME, False)
    assert b"<strong>boots</strong>" in client.get(f"/collections/{collection.pk}/groups/").content


def test_annotator_sees_groups_but_cannot_name_or_adjudicate(collection, images, annotator):
    client = logged_in(annotator)
    assert client.get(f"/collections/{collection.pk}/groups/").status_code == 200
    response = client.post(
        f"/collections/{collection.pk}/groups/", {"image": images[0].pk, "name": "x"}
    )
    assert response.status_code == 403
    assert not Group.objects.exists()


@pytest.mark.parametrize("data", [{"pair": "abc", "answer": "same"}, {"image": "abc", "name": "x"}])
def test_a_groups_post_with_a_malformed_id_is_a_400(collection, images, curator, data):
    response = logged_in(curator).post(f"/collections/{collection.pk}/groups/", data)
    assert response.status_code == 400


def test_similar_grid_marks_selected_neighbours_in_one_action(collection, images, annotator):
    client = logged_in(annotator)
    similar = client.get(f"/collections/{collection.pk}/images/{images[0].pk}/similar/")
    assert b'form="mark-form"' in similar.content
    response = client.post(
        f"/collections/{collection.pk}/mark/",
        {"query": images[0].pk, "answer": "different", "images": [images[1].pk, images[2].pk]},
    )
    assert response.status_code == 302
    pairs = Pair.objects.order_by("b_id")
    assert [(p.a_id, p.b_id, p.resolved) for p in pairs] == [
        (images[0].pk, images[1].pk, Answer.DIFFERENT),
        (images[0].pk, images[2].pk, Answer.DIFFERENT),
    ]


def mark(client: Client, collection, query, images, answer: str = "same"):
    return client.post(
        f"/collections/{collection.pk}/mark/",
        {"query": query.pk, "answer": answer, "images": [i.pk for i in images]},
    )


def test_the_mark_page_refuses_more_images_than_the_api(collection, images, annotator, monkeypatch):
    monkeypatch.setattr(answers, "MAX_MARKS", 5)
    response = mark(logged_in(annotator), collection, images[0], images[1:7])
    assert response.status_code == 400
    assert not Pair.objects.exists()


def test_each_marked_image_counts_against_the_answer_rate(
    collection, images, annotator, monkeypatch
):
    from labeling.api import AnswerRateThrottle

    monkeypatch.setattr(AnswerRateThrottle, "THROTTLE_RATES", {"answers": "10/min"})
    client = logged_in(annotator)
    assert mark(client, collection, images[0], images[1:9]).status_code == 302
    refused = mark(client, collection, images[0], images[9:12])
    assert refused.status_code == 429
    assert int(refused["Retry-After"]) > 0
    assert "Too many answers" in refused.content.decode()
    api = APIClient()
    api.force_authenticate(annotator)
    response = api.post(
        f"/api/v1/collections/{collection.pk}/pairs/mark/",
        {"query": images[0].pk, "images": [images[20].pk, images[21].pk], "answer": "same"},
        format="json",
    )
    assert response.status_code == 200  # 8 + 2 = the 10 allowed
    assert Pair.objects.count() == 10


def test_a_large_mark_commits_in_short_chunks_each_with_its_audit_row(
    collection, images, annotator, monkeypatch
):
    from audit.models import Event

    monkeypatch.setattr(answers, "MARK_CHUNK", 4)
    locks: list[str | None] = []
    lock = answers.lock_collection
    depth = len(connection.savepoint_ids)

    def counting_lock(collection_id: int) -> None:
        # The transaction (here: the test's savepoint) each answer takes the lock in: it is
        # released when that one ends, so one per chunk, not one around the whole mark.
        locks.append(connection.savepoint_ids[depth])
        lock(collection_id)

    monkeypatch.setattr(answers, "lock_collection", counting_lock)
    assert mark(logged_in(annotator), collection, images[0], images[1:11]).status_code == 302
    rows = Event.objects.filter(action=Event.Action.MARK).order_by("id")
    assert [row.detail["count"] for row in rows] == [4, 4, 2]
    assert len(locks) == 10 and len(set(locks)) == 3
    assert Pair.objects.count() == 10
