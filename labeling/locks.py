"""The per-collection lock that every change to a pair's answers holds.

The contradiction flags depend on the order answers arrived in: two concurrent changes must not
each judge themselves against a state that misses the other. So every change (labeling.answers,
and the constraints import in labeling.exchange) takes this lock in its transaction before it
reads the answers it judges.
"""

from __future__ import annotations

from django.db import connection

from labeling.models import Pair

# The advisory lock's first key ("LA": labeling answers); the second is the collection's id.
ANSWERS_LOCK = 0x4C41


def lock_collection(collection_id: int) -> None:
    """Waits for, then holds, the lock on the answers of collection `collection_id` until the
    current transaction ends. Call it inside transaction.atomic(): transaction-scoped, the lock
    is released at commit or rollback and never leaked by an error."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_advisory_xact_lock(%s, %s)", [ANSWERS_LOCK, collection_id])


def lock_pair(pair: Pair) -> Pair:
    """Takes the lock on the answers of `pair`'s collection, then returns the pair read again
    and locked (SELECT ... FOR UPDATE) for the rest of the transaction: what another change
    committed while this one waited is in it."""
    lock_collection(pair.collection_id)
    return Pair.objects.select_for_update().get(pk=pair.pk)
