"""The labeling loop's SQL round trips, pinned: next and answer are what every annotator does
every few seconds, and under load each round trip (above all those inside the collection lock,
which serializes a collection's answers) costs milliseconds. Upper bounds, through the real
token-authenticated HTTP path, so a new lookup cannot slip in unnoticed."""

from __future__ import annotations

import uuid

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from labeling.models import Constraint, Pair
from labeling.tasks import mine_pairs

pytestmark = pytest.mark.django_db(transaction=True)

# Token + user, collection with role and settings, the lease claim (one UPDATE ... RETURNING).
NEXT_MAX = 3
# Token + user, pair with role, BEGIN, audit row, then the lock and four statements, COMMIT.
ANSWER_MAX = 10
# From the advisory lock to COMMIT, both counted.
LOCKED_MAX = 6
# An answer that brings the next pair (?next=1): the answer's, then the lease claim. The pair's
# query brings the collection and its settings along, so the pair after costs one statement.
ANSWER_AND_NEXT_MAX = ANSWER_MAX + 1


def locked(queries: list[dict[str, str]]) -> int:
    sql = [q["sql"] for q in queries]
    start = next(i for i, s in enumerate(sql) if "pg_advisory_xact_lock" in s)
    end = next(i for i, s in enumerate(sql) if s.strip() == "COMMIT")
    return end - start + 1


def test_next_and_answer_stay_within_their_query_budgets(collection, images, annotator):
    mine_pairs(collection.pk)
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {Token.objects.create(user=annotator).key}")
    url = f"/api/v1/collections/{collection.pk}/pairs/next/"
    # The first answer creates the labeling settings and replays the collection once in this
    # process (labeling.inference keeps the replay); the answers after it are the steady state.
    first = client.get(url).json()["pair_id"]
    client.post(f"/api/v1/pairs/{first}/answer/", {"answer": "different"}, format="json")
    for answer in ("same", "different", "unsure", "same"):
        with CaptureQueriesContext(connection) as fetched:
            response = client.get(url)
        assert response.status_code == 200
        pair_id = response.json()["pair_id"]
        with CaptureQueriesContext(connection) as answered:
            stored = client.post(
                f"/api/v1/pairs/{pair_id}/answer/",
                {"answer": answer, "idempotency_key": uuid.uuid4().hex},
                format="json",
            )
        assert stored.status_code == 201
        assert len(fetched) <= NEXT_MAX, [q["sql"][:120] for q in fetched.captured_queries]
        assert len(answered) <= ANSWER_MAX, [q["sql"][:120] for q in answered.captured_queries]
        assert locked(answered.captured_queries) <= LOCKED_MAX
        # Fewer queries, same result: the answer, the resolved view and the released lease.
        pair = Pair.objects.get(pk=pair_id)
        assert Constraint.objects.get(pair=pair, annotator=annotator).answer == answer
        assert (pair.resolved, pair.answer_count, pair.status) == (answer, 1, "answered")
        assert pair.leased_by_id is None and pair.lease_expires_at is None


def test_an_answer_with_the_next_pair_costs_one_statement_more(collection, images, annotator):
    mine_pairs(collection.pk)
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {Token.objects.create(user=annotator).key}")
    pair_id = client.get(f"/api/v1/collections/{collection.pk}/pairs/next/").json()["pair_id"]
    client.post(f"/api/v1/pairs/{pair_id}/answer/?next=1", {"answer": "same"}, format="json")
    pair_id = client.get(f"/api/v1/collections/{collection.pk}/pairs/next/").json()["pair_id"]
    for answer in ("different", "unsure", "same"):
        with CaptureQueriesContext(connection) as answered:
            response = client.post(
                f"/api/v1/pairs/{pair_id}/answer/?next=1&exclude={pair_id}",
                {"answer": answer, "idempotency_key": uuid.uuid4().hex},
                format="json",
            )
        assert response.status_code == 201
        sql = [q["sql"][:120] for q in answered.captured_queries]
        assert len(answered) <= ANSWER_AND_NEXT_MAX, sql
        assert locked(answered.captured_queries) <= LOCKED_MAX
        pair_id = response.json()["next"]["pair_id"]
        assert Pair.objects.get(pk=pair_id).leased_by == annotator
