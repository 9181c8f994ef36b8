"""Transitive inference over resolved answers: must-link groups (union-find) and cannot-links
between groups, with contradictions found in answer order.

Pairs are replayed oldest first (curator rulings before everything): a "same" merges two groups,
a "different" records a cannot-link between two groups. A pair that contradicts what the pairs
before it imply (a "different" inside one group, a "same" across a cannot-link) is reported as a
contradiction and left out, so one bad answer never rewrites the groups everybody else built.
"""

from __future__ import annotations

import uuid
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from django.db import connection, transaction

from labeling.models import Answer, Pair
from retrieval.models import Collection


@dataclass(frozen=True)
class ResolvedPair:
    pair_id: int
    a: int
    b: int
    answer: str  # same or different


@dataclass
class Inference:
    parent: dict[int, int] = field(default_factory=dict)
    size: dict[int, int] = field(default_factory=dict)
    # root -> roots it has a cannot-link with (kept symmetric, re-keyed on every union).
    cannot: dict[int, set[int]] = field(default_factory=lambda: defaultdict(set))
    must_pairs: list[ResolvedPair] = field(default_factory=list)
    cannot_pairs: list[ResolvedPair] = field(default_factory=list)
    contradictions: list[ResolvedPair] = field(default_factory=list)
    # Kept up to date by add(), so implied_count() costs nothing after each answer: pairs inside
    # groups, pairs across cannot-linked groups, and the distinct pairs answered directly.
    _must_total: int = 0
    _cannot_total: int = 0
    _direct_must: set[tuple[int, int]] = field(default_factory=set)
    _direct_cannot: set[tuple[int, int]] = field(default_factory=set)

    def find(self, x: int) -> int:
        parent = self.parent
        if x not in parent:
            return x
        root = x
        while parent[root] != root:
            root = parent[root]
        while parent[x] != root:
            parent[x], x = root, parent[x]
        return root

    def _add(self, x: int) -> None:
        if x not in self.parent:
            self.parent[x] = x
            self.size[x] = 1

    def implied(self, a: int, b: int) -> str | None:
        """`same` or `different` if the answers imply it for (a, b), else None."""
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return Answer.SAME if a != b else None
        if rb in self.cannot.get(ra, ()):
            return Answer.DIFFERENT
        return None

    def add(self, pair: ResolvedPair) -> bool:
        """Adds a resolved pair; False (and recorded) when it contradicts the pairs before it."""
        implied = self.implied(pair.a, pair.b)
        if implied is not None and implied != pair.answer:
            self.contradictions.append(pair)
            return False
        self._add(pair.a)
        self._add(pair.b)
        ra, rb = self.find(pair.a), self.find(pair.b)
        if pair.answer == Answer.SAME:
            self.must_pairs.append(pair)
            self._direct_must.add((pair.a, pair.b))
            if ra != rb:
                # Union by size; the smaller root's cannot-links move to the new root.
                if self.size[ra] < self.size[rb]:
                    ra, rb = rb, ra
                size_a, size_b = self.size[ra], self.size[rb]
                links_a, links_b = self.cannot.get(ra, set()), self.cannot.get(rb, set())
                # Each group the one side cannot link with now also excludes the other side.
                self._cannot_total += size_b * sum(
                    self.size.get(y, 1) for y in links_a - links_b
                ) + size_a * sum(self.size.get(y, 1) for y in links_b - links_a)
                self._must_total += size_a * size_b
                self.parent[rb] = ra
                self.size[ra] += self.size.pop(rb)
                for other in self.cannot.pop(rb, set()):
                    self.cannot[other].discard(rb)
                    self.cannot[other].add(ra)
                    self.cannot[ra].add(other)
        else:
            self.cannot_pairs.append(pair)
            self._direct_cannot.add((pair.a, pair.b))
            if rb not in self.cannot.get(ra, ()):
                self._cannot_total += self.size.get(ra, 1) * self.size.get(rb, 1)
            self.cannot[ra].add(rb)
            self.cannot[rb].add(ra)
        return True

    def groups(self) -> dict[int, list[int]]:
        """root -> member image ids, for groups of two or more."""
        members: dict[int, list[int]] = defaultdict(list)
        for x in self.parent:
            members[self.find(x)].append(x)
        return {root: sorted(ids) for root, ids in members.items() if len(ids) > 1}

    def group_size(self, x: int) -> int:
        return self.size.get(self.find(x), 1)

    def implied_count(self) -> int:
        """Pairs the answers imply that nobody answered directly."""
        return (
            self._must_total
            - len(self._direct_must)
            + self._cannot_total
            - len(self._direct_cannot)
        )


def resolved_pairs(collection: Collection | int) -> list[tuple[ResolvedPair, bool]]:
    """Every pair with a same/different final answer in replay order, with its flag."""
    collection_id = collection.pk if isinstance(collection, Collection) else collection
    return [(row.pair, row.flagged) for row in replay_rows(collection_id)]


def replay(pairs: Iterable[ResolvedPair]) -> Inference:
    inference = Inference()
    for pair in pairs:
        inference.add(pair)
    return inference


def infer(collection: Collection | int) -> Inference:
    """The groups and cannot-links the collection's unflagged resolved answers imply."""
    return replay(pair for pair, flagged in resolved_pairs(collection) if not flagged)


# Incremental refresh -------------------------------------------------------------------------
#
# Replaying every resolved pair after each answer costs time proportional to the answers (about
# 55 ms at 5,000), under the collection lock. Almost every answer only appends one pair at the end
# of the replay order (a pair that had no same/different answer gets one, and its answered_at is
# the newest), and a replay with one pair appended is the old replay plus one add(). So each
# process keeps its last replay per collection and brings it up to date with the pairs appended
# since (by itself or by other processes); anything else (a changed or withdrawn answer, a ruling,
# an import, deleted pairs) replays everything again. The stored `inference_epoch` changes with
# every such change, which tells the other processes that their replays are out of date.

FULL = "full"  # anything that may change or remove a replayed pair
APPEND = "append"  # one pair newly resolved to same/different: it goes last in replay order
UNCHANGED = "unchanged"  # no pair entered or left the replay, none moved


@dataclass(frozen=True)
class Row:
    pair: ResolvedPair
    flagged: bool
    key: tuple[datetime, int] | None  # (answered_at, id); None when answered_at is unset
    adjudicated: bool


@dataclass
class Replayed:
    """One process's replay of a collection's resolved pairs."""

    epoch: str
    inference: Inference
    last_key: tuple[datetime, int]  # the largest (answered_at, id) replayed
    count: int  # pairs replayed, and the sum of their ids: deleted pairs change them
    id_sum: int
    # True while a transaction that changed it is open: a rollback leaves it True, and a
    # replay that may hold uncommitted pairs is never used again.
    pending: bool = True


@dataclass(frozen=True)
class Refreshed:
    inference: Inference
    flags: dict[int, bool]  # pair id -> the flag to store, for pairs whose stored flag differs
    epoch: str  # the epoch to store
    full: bool  # everything was replayed
    # The open pairs at the head of the queue (id, a, b), fetched in the same round trip when the
    # caller asked for them (`head`) and the refresh was incremental; None otherwise.
    head: list[tuple[int, int, int]] | None = None


# collection id -> this process's replay. Used only under the collection's advisory lock.
_replays: dict[int, Replayed] = {}

_IN_REPLAY = """
    collection_id = %s AND (
        adjudicated IN ('same', 'different')
        OR (adjudicated = '' AND resolved IN ('same', 'different'))
    )
"""


def _row(pid: int, a: int, b: int, resolved: str, adjudicated: str, flagged: bool,
         answered_at: datetime | None) -> Row:  # fmt: skip
    return Row(
        ResolvedPair(pid, a, b, adjudicated or resolved),
        bool(flagged),
        None if answered_at is None else (answered_at, pid),
        bool(adjudicated),
    )


def replay_rows(collection_id: int) -> list[Row]:
    """Every pair with a same/different final answer in replay order, the row for each."""
    rows = (
        Pair.objects.filter(collection_id=collection_id)
        .exclude(resolved__in=["", Answer.UNSURE], adjudicated="")
        .exclude(adjudicated=Answer.UNSURE)
        .order_by("-adjudicated", "answered_at", "id")
        .values_list("id", "a_id", "b_id", "resolved", "adjudicated", "flagged", "answered_at")
    )
    # "-adjudicated" puts rulings ("same"/"different") before the empty string: curators first.
    return [_row(*row) for row in rows]


def _rows_after(
    collection_id: int, key: tuple[datetime, int], head: tuple[datetime, int] | None = None
) -> tuple[list[Row], int, int, bool, list[tuple[int, int, int]] | None]:
    """(pairs after `key` in (answered_at, id) order, count and id sum of all replayed pairs,
    whether any has no answered_at, and with `head` = (now, n) the first n open queued pairs):
    one round trip."""
    table = Pair._meta.db_table
    sql = f"""
        WITH r AS (
            SELECT id, a_id, b_id, resolved, adjudicated, flagged, answered_at
            FROM {table} WHERE {_IN_REPLAY}
        )
        (SELECT 'r' AS part, t.n, t.s, t.has_null,
               r.id, r.a_id, r.b_id, r.resolved, r.adjudicated, r.flagged, r.answered_at
        FROM (
            SELECT count(*) AS n, coalesce(sum(id), 0) AS s,
                   coalesce(bool_or(answered_at IS NULL), false) AS has_null
            FROM r
        ) t
        LEFT JOIN r ON (r.answered_at, r.id) > (%s, %s))
        UNION ALL
        (SELECT 'h', NULL::bigint, NULL::numeric, NULL::boolean, q.id, q.a_id, q.b_id,
                NULL::varchar, NULL::varchar, NULL::boolean, NULL::timestamptz
        FROM {table} q
        WHERE %s AND q.collection_id = %s AND q.status = 'queued'
          AND (q.lease_expires_at IS NULL OR q.lease_expires_at < %s)
        ORDER BY q.id LIMIT %s)
    """  # noqa: S608 - the table name is the model's, the values are parameters
    now, n = head if head is not None else (key[0], 0)
    with connection.cursor() as cursor:
        cursor.execute(
            sql, [collection_id, key[0], key[1], head is not None, collection_id, now, n]
        )
        fetched = cursor.fetchall()
    counted = [row for row in fetched if row[0] == "r"]
    total, id_sum, has_null = int(counted[0][1]), int(counted[0][2]), bool(counted[0][3])
    rows = [_row(*row[4:]) for row in counted if row[4] is not None]
    rows.sort(key=lambda row: row.key or (key[0], 0))
    queued = sorted((row[4], row[5], row[6]) for row in fetched if row[0] == "h")
    return rows, total, id_sum, has_null, queued if head is not None else None


def _hold(collection_id: int, entry: Replayed) -> None:
    """Marks `entry` as changed by the open transaction; it is usable again once that commits."""
    entry.pending = True
    _replays[collection_id] = entry

    def committed() -> None:
        entry.pending = False

    transaction.on_commit(committed)


def _full(collection_id: int, epoch: str, rotate: bool, appended: int | None) -> Refreshed:
    rows = replay_rows(collection_id)
    inference = replay(row.pair for row in rows)
    contradicting = {p.pair_id for p in inference.contradictions}
    flags = {
        row.pair.pair_id: not row.flagged
        for row in rows
        if row.flagged != (row.pair.pair_id in contradicting)
    }
    keys = [row.key for row in rows]
    origin = (datetime.min.replace(tzinfo=UTC), 0)
    if appended is not None and (not rows or rows[-1].pair.pair_id != appended):
        rotate = True  # the new pair does not sort last: other replays cannot append it
    if rotate or not epoch:
        epoch = uuid.uuid4().hex
    _replays.pop(collection_id, None)
    if all(key is not None for key in keys):
        _hold(
            collection_id,
            Replayed(
                epoch,
                inference,
                max((k for k in keys if k is not None), default=origin),
                len(rows),
                sum(row.pair.pair_id for row in rows),
            ),
        )
    return Refreshed(inference, flags, epoch, full=True)


def refresh(
    collection_id: int,
    epoch: str,
    change: str,
    pair_id: int | None = None,
    head: tuple[datetime, int] | None = None,
) -> Refreshed:
    """The collection's inference after a change, and the flags to store.

    `epoch` is the stored one; `change` says what the caller did (FULL, APPEND of `pair_id`, or
    UNCHANGED). The caller holds the collection's advisory lock inside a transaction, stores the
    returned flags and epoch, and must route every change of a pair's answers through here.
    With `head` = (now, n), an incremental refresh also returns the first n open queued pairs
    from the same round trip.
    """
    entry = _replays.get(collection_id)
    if change == FULL:
        return _full(collection_id, epoch, rotate=True, appended=None)
    appended = pair_id if change == APPEND else None
    if entry is None or entry.pending or entry.epoch != epoch or not epoch:
        return _full(collection_id, epoch, rotate=False, appended=appended)
    rows, total, id_sum, has_null, queued = _rows_after(collection_id, entry.last_key, head)
    if (
        has_null
        or entry.count + len(rows) != total
        or entry.id_sum + sum(row.pair.pair_id for row in rows) != id_sum
        or any(row.adjudicated for row in rows)
        or (appended is not None and (not rows or rows[-1].pair.pair_id != appended))
    ):
        # Something other than appends happened (pairs deleted, a ruling, a clock that went
        # back): the replay order is not the old one plus these.
        return _full(collection_id, epoch, rotate=True, appended=None)
    _hold(collection_id, entry)
    flags: dict[int, bool] = {}
    for row in rows:
        contradicts = not entry.inference.add(row.pair)
        if contradicts != row.flagged:
            flags[row.pair.pair_id] = contradicts
    if rows:
        last = rows[-1].key
        assert last is not None
        entry.last_key = max(entry.last_key, last)
        entry.count += len(rows)
        entry.id_sum += sum(row.pair.pair_id for row in rows)
    return Refreshed(entry.inference, flags, epoch, full=False, head=queued)
