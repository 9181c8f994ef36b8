"""The pair queue: leasing the next pair to an annotator, asking for mining when the queue runs
low, the open pairs, and the counters the labeling page shows."""

from __future__ import annotations

import functools
import time
from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import Any

from django.contrib.auth.models import User
from django.db import connection
from django.db.models import Q, QuerySet
from django.utils import timezone

from labeling.models import Constraint, LabelingSettings, Pair
from labeling.signals import mining_wanted
from labeling.strategies import mine, settings_for
from retrieval.models import Collection, Image, ModelVersion

# A mining in the request that found nothing is not tried again in this process for this long
# (per collection and active version): once nothing is left to mine, every page asking again (each
# idle Label page looks every 5 s) ran the strategies' nearest-neighbour queries again, and twenty
# annotators' pages kept a 2-core machine busy with only that (docs/benchmarks.md, issue 17).
NOTHING_TO_MINE_S = 10.0
# collection id -> (time.monotonic() of the fruitless mining, the active version it mined from)
_nothing_to_mine: dict[int, tuple[float, int | None]] = {}


def _request_mining(collection: Collection, labeling: LabelingSettings) -> None:
    """Queues one mining task when the queue runs low (at most one per collection per minute:
    the conditional UPDATE is the claim)."""
    now = timezone.now()
    claimed = (
        LabelingSettings.objects.filter(pk=labeling.pk)
        .filter(
            Q(mining_requested_at__isnull=True)
            | Q(mining_requested_at__lt=now - timedelta(minutes=1))
        )
        .update(mining_requested_at=now)
    )
    if claimed:
        # Queued on commit (worker/enqueue.py): the task must see the claim, and a rolled-back
        # request queues nothing.
        mining_wanted.send(
            sender=LabelingSettings,
            collection_id=collection.pk,
            unclaim=functools.partial(_unclaim_mining, labeling.pk),
        )


def _unclaim_mining(settings_id: int) -> None:
    # The mining task could not be queued (a broker outage): the queue still has pairs, and
    # releasing the claim lets a later request try again.
    LabelingSettings.objects.filter(pk=settings_id).update(mining_requested_at=None)


def open_pairs(collection: Collection | int, now: datetime) -> QuerySet[Pair]:
    """The queued pairs nobody holds at `now`: never leased, or their lease expired."""
    return Pair.objects.filter(collection=collection, status=Pair.Status.QUEUED).filter(
        Q(lease_expires_at__isnull=True) | Q(lease_expires_at__lt=now)
    )


def next_pair(collection: Collection, user: User, exclude: Iterable[int] = ()) -> Pair | None:
    """The next pair for `user`, leased to them; None when nothing is left to ask.

    A pair they already hold (a reloaded page) comes back first, except those in `exclude` (the
    pair the page shows while preloading the next). New pairs are claimed with FOR UPDATE SKIP
    LOCKED, so two annotators asking at once never get the same one. Pairs that answers came to
    imply are retired from the head of the queue by every answer (answers.refresh_flags), so
    none is shown.
    """
    excluded = [int(x) for x in exclude]
    labeling = settings_for(collection)
    now = timezone.now()
    lease = timedelta(seconds=labeling.lease_seconds)
    for attempt in range(2):
        claimed = _claim(collection.pk, user.pk, excluded, now, now + lease)
        if claimed is not None:
            pair, open_left = claimed
            stale = labeling.mined_version_id != collection.active_version_id
            if stale or open_left < labeling.low_water:
                _request_mining(collection, labeling)
            return pair
        # An empty queue: mine a small batch now rather than show an idle annotator nothing.
        if attempt or open_pairs(collection, now).exists() or not _mine_now(collection, labeling):
            return None
    return None


def _mine_now(collection: Collection, labeling: LabelingSettings) -> bool:
    """Mines a small batch in the request; False when it found nothing, and then without trying
    again in this process for NOTHING_TO_MINE_S, unless another version became active."""
    tried = _nothing_to_mine.get(collection.pk)
    if (
        tried is not None
        and tried[1] == collection.active_version_id
        and time.monotonic() - tried[0] < NOTHING_TO_MINE_S
    ):
        return False
    if mine(collection, n=min(labeling.batch_size, 50)):
        _nothing_to_mine.pop(collection.pk, None)
        return True
    _nothing_to_mine[collection.pk] = (time.monotonic(), collection.active_version_id)
    return False


# One statement leases the next pair: a pair the caller still holds first (a reloaded page), else
# the first open one (never leased or lease expired) that no other transaction has locked (SKIP
# LOCKED: two annotators asking at once never get the same pair). It returns the pair's row, both
# images' files and how many open pairs were left besides it, counted in the same snapshot.
_CLAIM = """
    WITH chosen AS (
        SELECT id, (lease_expires_at IS NOT NULL AND lease_expires_at > %(now)s) AS held
        FROM {pair}
        WHERE collection_id = %(collection)s AND status = 'queued' AND NOT (id = ANY(%(exclude)s))
          AND (lease_expires_at IS NULL OR lease_expires_at < %(now)s
               OR (leased_by_id = %(user)s AND lease_expires_at > %(now)s))
        ORDER BY (leased_by_id = %(user)s AND lease_expires_at > %(now)s) IS TRUE DESC, id
        LIMIT 1
        FOR UPDATE SKIP LOCKED
    ), open AS (
        SELECT count(*) AS n FROM {pair}
        WHERE collection_id = %(collection)s AND status = 'queued'
          AND (lease_expires_at IS NULL OR lease_expires_at < %(now)s)
    )
    UPDATE {pair} p SET leased_by_id = %(user)s, lease_expires_at = %(until)s
    FROM chosen, open, {image} ia, {image} ib
    WHERE p.id = chosen.id AND ia.id = p.a_id AND ib.id = p.b_id
    RETURNING {columns}, ia.file, ib.file, open.n - (CASE WHEN chosen.held THEN 0 ELSE 1 END),
        (SELECT v.number FROM {version} v WHERE v.id = p.version_id)
"""


def _claim(
    collection_id: int, user_id: int, exclude: list[int], now: datetime, until: datetime
) -> tuple[Pair, int] | None:
    """(the leased pair with its images, open pairs left), or None when none is free."""
    fields = [f.attname for f in Pair._meta.concrete_fields]
    columns = ", ".join(f"p.{f.column}" for f in Pair._meta.concrete_fields)
    sql = _CLAIM.format(
        pair=Pair._meta.db_table,
        image=Image._meta.db_table,
        version=ModelVersion._meta.db_table,
        columns=columns,
    )
    params: dict[str, Any] = {
        "collection": collection_id, "user": user_id, "exclude": exclude,
        "now": now, "until": until,
    }  # fmt: skip
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        row = cursor.fetchone()
    if row is None:
        return None
    *values, a_file, b_file, open_left, version_number = row
    pair = Pair.from_db(connection.alias, fields, values)
    # The number of the model version that proposed the pair, for the page to say so.
    pair.version_number = version_number
    # Of the images only the files were read: their other fields load if anything asks for them.
    image = ["id", "collection_id", "file"]
    pair.a = Image.from_db(connection.alias, image, [pair.a_id, collection_id, a_file])
    pair.b = Image.from_db(connection.alias, image, [pair.b_id, collection_id, b_file])
    return pair, int(open_left)


def counters(collection: Collection, user: User) -> dict[str, int]:
    """What the labeling page shows: my answers, everybody's, implied pairs, open conflicts."""
    stored = settings_for(collection)
    return {
        "mine": Constraint.objects.filter(pair__collection=collection, annotator=user).count(),
        "answered": Pair.objects.filter(collection=collection, answer_count__gt=0).count(),
        "implied": stored.implied_pairs,
        "flagged": stored.flagged_pairs,
    }
