"""Answers to pairs: recording them (with idempotency keys) and undoing them, one-to-many marks,
a curator's rulings and group names, and the contradiction flags and implied/flagged counts that
every change refreshes.

Every change to a pair's answers runs under its collection's lock (labeling.locks).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.contrib.auth.models import User
from django.db import connection, transaction
from django.utils import timezone

from audit.models import Event
from labeling import inference
from labeling.inference import infer
from labeling.locks import lock_collection, lock_pair
from labeling.models import (
    Answer,
    Constraint,
    ConstraintRevision,
    Group,
    LabelingSettings,
    Pair,
    Source,
)
from labeling.pair_queue import open_pairs
from labeling.signals import answer_recorded
from labeling.strategies import settings_for
from retrieval.models import Collection, Image

# One-to-many marks (the Mark page and the API): at most MAX_MARKS images in one request, stored
# MARK_CHUNK per transaction (mark_many).
MAX_MARKS = 200
MARK_CHUNK = 10


class SameImage(ValueError):
    """A pair needs two different images."""


class KeyReused(ValueError):
    """An idempotency key the caller already used for another pair: storing nothing silently
    would lose this answer, and storing it would make the key mean two requests."""


def normalize(a: int, b: int) -> tuple[int, int]:
    """The stored order of an unordered pair: smaller id first."""
    if a == b:
        raise SameImage("a pair needs two different images")
    return (a, b) if a < b else (b, a)


def pair_for(collection: Collection, a: int, b: int) -> Pair:
    """The pair of two images of the collection, created (as an unqueued answer) if new."""
    a, b = normalize(a, b)
    if Image.objects.filter(collection=collection, pk__in=[a, b]).count() != 2:
        raise Image.DoesNotExist("both images must belong to the collection")
    pair, _ = Pair.objects.get_or_create(
        collection=collection, a_id=a, b_id=b, defaults={"status": Pair.Status.ANSWERED}
    )
    return pair


def majority(answers: Iterable[str]) -> tuple[str, float | None, int]:
    """(majority answer, agreement, count). A tie has no majority and resolves to unsure;
    agreement is the share of answers that agree with the majority."""
    counts = Counter(answers)
    total = sum(counts.values())
    if not total:
        return "", None, 0
    ranked = counts.most_common()
    top, top_count = ranked[0]
    if len(ranked) > 1 and ranked[1][1] == top_count:
        return Answer.UNSURE, top_count / total, total
    return top, top_count / total, total


def resolve_pair(pair: Pair) -> None:
    """Sets `pair`'s majority answer, agreement and count from its stored answers (unsaved: the
    caller saves it and refreshes the flags, under the collection's lock)."""
    answers = list(pair.constraints.values_list("answer", flat=True))
    resolved, agreement, count = majority(answers)
    if resolved != pair.resolved:
        pair.answered_at = timezone.now()
    pair.resolved, pair.agreement, pair.answer_count = resolved, agreement, count
    if count:
        pair.status = Pair.Status.ANSWERED


# Queued pairs re-checked against the new inference after each change: the head of the queue is
# what annotators get next, and mining never queues a pair that is implied already.
RECHECK_HEAD = 200


def change_of(pair: Pair, before: tuple[str, datetime | None]) -> str:
    """What a change to `pair` did to the replay order, from its (final answer, answered_at)
    before the change: nothing, one pair appended at the end, or anything else."""
    inside = (Answer.SAME, Answer.DIFFERENT)
    was, now = before[0] in inside, pair.final_answer in inside
    if not was and not now:
        return inference.UNCHANGED
    if was and now and before == (pair.final_answer, pair.answered_at):
        return inference.UNCHANGED
    if not was and now and not pair.adjudicated:
        return inference.APPEND
    return inference.FULL


def refresh_flags(
    collection_id: int,
    pair: Pair | None = None,
    before: tuple[str, datetime | None] = ("", None),
    labeling: LabelingSettings | None = None,
) -> int:
    """Re-judges the resolved pairs in answer order and stores the flags, retires queued pairs
    at the head of the queue that the answers now imply, and stores the counters; returns how
    many pairs are flagged. Caller holds the collection lock.

    With `pair` and its `before` state, a change that only appends that pair to the replay
    order costs one add() to this process's kept replay instead of a replay of every answer
    (labeling.inference.refresh); without them everything is replayed. `labeling` (read by the
    caller under the lock, at least its pk and inference_epoch) saves reading it again. An
    incremental refresh is two round trips: the new pairs with the queue's head, and the writes.
    """
    labeling = labeling if labeling is not None else settings_for(collection_id)
    change = change_of(pair, before) if pair is not None else inference.FULL
    now = timezone.now()
    result = inference.refresh(
        collection_id,
        labeling.inference_epoch,
        change,
        pair.pk if pair is not None else None,
        head=(now, RECHECK_HEAD),
    )
    contradicting = {p.pair_id for p in result.inference.contradictions}
    if result.full:
        # Pairs whose answer went to unsure or away keep no stale flag.
        Pair.objects.filter(collection_id=collection_id, flagged=True).exclude(
            pk__in=contradicting
        ).update(flagged=False)
    head = result.head
    if head is None:
        head = list(
            open_pairs(collection_id, now)
            .order_by("id")[:RECHECK_HEAD]
            .values_list("id", "a_id", "b_id")
        )
    implied = [pk for pk, a, b in head if result.inference.implied(a, b) is not None]
    flagged_on = [pk for pk, flag in result.flags.items() if flag]
    flagged_off = [pk for pk, flag in result.flags.items() if not flag]
    sql = _WRITE_REFRESH.format(pair=Pair._meta.db_table, settings=LabelingSettings._meta.db_table)
    with connection.cursor() as cursor:
        cursor.execute(
            sql,
            {
                "on": flagged_on,
                "off": flagged_off,
                "retire": implied,
                "all": flagged_on + flagged_off + implied,
                "implied": result.inference.implied_count(),
                "flagged": len(contradicting),
                "epoch": result.epoch,
                "settings": labeling.pk,
            },
        )
    return len(contradicting)


# The writes of refresh_flags in one statement: changed flags, implied pairs retired, counters.
_WRITE_REFRESH = """
    WITH changed AS (
        UPDATE {pair} SET
            flagged = CASE WHEN id = ANY(%(on)s) THEN true
                           WHEN id = ANY(%(off)s) THEN false ELSE flagged END,
            status = CASE WHEN id = ANY(%(retire)s) THEN 'retired' ELSE status END
        WHERE id = ANY(%(all)s)
        RETURNING 1
    )
    UPDATE {settings}
    SET implied_pairs = %(implied)s, flagged_pairs = %(flagged)s, inference_epoch = %(epoch)s
    WHERE id = %(settings)s
"""


@dataclass(frozen=True)
class Stored:
    constraint: Constraint
    created: bool  # False when the idempotency key had been seen: nothing changed


def record_answer(
    pair: Pair,
    user: User,
    answer: str,
    idempotency_key: str = "",
    source: str = Source.HUMAN,
    when: datetime | None = None,
) -> Stored:
    """Stores `user`'s answer about `pair`, replacing their earlier one (kept as history), and
    its row in the audit log.

    The same idempotency key from the same user stores nothing the second time; on another
    pair it raises KeyReused.
    """
    return _store_answer(pair, user, answer, idempotency_key, source, when, audited=True)


def _store_answer(
    pair: Pair,
    user: User,
    answer: str,
    idempotency_key: str,
    source: str,
    when: datetime | None,
    *,
    audited: bool,
) -> Stored:
    # audited=False: the caller (mark_many) writes one row for each chunk of its answers.
    if answer not in Answer.values:
        raise ValueError(f"answer must be one of {', '.join(Answer.values)}")
    try:
        with transaction.atomic():
            if audited:
                # Before the collection lock, in the answer's transaction: a rolled-back answer
                # (a replayed key found below) leaves no row, and the lock is held shorter.
                Event.record(
                    Event.Action.ANSWER,
                    user,
                    pair.collection_id,
                    pair,
                    answer=answer,
                    source=source,
                )
            lock_collection(pair.collection_id)
            stored = _write_answer(pair, user, answer, idempotency_key, source, when)
    except _KeySeen as seen:
        existing = Constraint.objects.filter(pair_id=seen.pair_id, annotator=user).first()
        if existing is None:
            # The answer was undone since; replaying the key must not bring it back.
            existing = Constraint(pair_id=seen.pair_id, annotator=user, answer=seen.answer)
        return Stored(existing, created=False)
    answer_recorded.send(sender=Constraint, collection_id=pair.collection_id)
    return stored


class _KeySeen(Exception):  # noqa: N818 - control flow, not an error
    """The idempotency key was used before: the answer's transaction rolls back."""

    def __init__(self, pair_id: int, answer: str) -> None:
        super().__init__(pair_id)
        self.pair_id, self.answer = pair_id, answer


# Under the collection lock, one statement: the pair (locked), whether the caller used this
# idempotency key before, the other annotators' answers and the settings the refresh needs.
_ANSWER_STATE = """
    SELECT p.resolved, p.adjudicated, p.answered_at,
           (SELECT r.pair_id FROM {revision} r
            WHERE %(key)s <> '' AND r.annotator_id = %(user)s AND r.idempotency_key = %(key)s
            LIMIT 1),
           (SELECT r.answer FROM {revision} r
            WHERE %(key)s <> '' AND r.annotator_id = %(user)s AND r.idempotency_key = %(key)s
            LIMIT 1),
           ARRAY(SELECT c.answer FROM {constraint} c
                 WHERE c.pair_id = p.id AND (c.annotator_id IS NULL OR c.annotator_id <> %(user)s)),
           s.id, s.inference_epoch
    FROM {pair} p LEFT JOIN {settings} s ON s.collection_id = p.collection_id
    WHERE p.id = %(pair)s
    FOR UPDATE OF p
"""

# The answer's writes in one statement: the history row, the caller's answer (replacing their
# earlier one), and the pair's resolved view with its lease released.
_WRITE_ANSWER = """
    WITH rev AS (
        INSERT INTO {revision} (pair_id, annotator_id, answer, source, idempotency_key, created_at)
        VALUES (%(pair)s, %(user)s, %(answer)s, %(source)s, %(key)s, %(now)s)
    ), con AS (
        INSERT INTO {constraint} (pair_id, answer, source, annotator_id, annotator_name,
                                  idempotency_key, created_at, updated_at)
        VALUES (%(pair)s, %(answer)s, %(source)s, %(user)s, '', %(key)s, %(created)s, %(now)s)
        ON CONFLICT (pair_id, annotator_id) WHERE annotator_id IS NOT NULL DO UPDATE SET
            answer = EXCLUDED.answer, source = EXCLUDED.source,
            idempotency_key = EXCLUDED.idempotency_key, created_at = EXCLUDED.created_at,
            updated_at = EXCLUDED.updated_at
        RETURNING id, annotator_name
    )
    UPDATE {pair} SET resolved = %(resolved)s, agreement = %(agreement)s,
        answer_count = %(count)s, status = 'answered', answered_at = %(answered_at)s,
        leased_by_id = NULL, lease_expires_at = NULL
    WHERE id = %(pair)s
    RETURNING (SELECT id FROM con), (SELECT annotator_name FROM con)
"""


def _write_answer(
    pair: Pair, user: User, answer: str, key: str, source: str, when: datetime | None
) -> Stored:
    """The part of an answer under the collection lock: five round trips with the commit (the
    state, the writes, the refresh's read and writes)."""
    tables = {
        "pair": Pair._meta.db_table,
        "revision": ConstraintRevision._meta.db_table,
        "constraint": Constraint._meta.db_table,
        "settings": LabelingSettings._meta.db_table,
    }
    with connection.cursor() as cursor:
        cursor.execute(
            _ANSWER_STATE.format(**tables), {"pair": pair.pk, "user": user.pk, "key": key}
        )
        state = cursor.fetchone()
    if state is None:
        raise Pair.DoesNotExist(f"pair {pair.pk} is gone")
    resolved_was, adjudicated, answered_was, seen_pair, seen_answer, others = state[:6]
    settings_id, epoch = state[6:]
    if seen_pair is not None and seen_pair != pair.pk:
        raise KeyReused(f"idempotency key already used for pair {seen_pair}")
    if seen_pair is not None:
        raise _KeySeen(seen_pair, seen_answer)
    now = timezone.now()
    resolved, agreement, count = majority([*others, answer])
    answered_at = now if resolved != resolved_was else answered_was
    created = when or now
    with connection.cursor() as cursor:
        cursor.execute(
            _WRITE_ANSWER.format(**tables),
            {
                "pair": pair.pk, "user": user.pk, "answer": answer, "source": source,
                "key": key, "now": now, "created": created, "resolved": resolved,
                "agreement": agreement, "count": count, "answered_at": answered_at,
            },
        )  # fmt: skip
        constraint_id, annotator_name = cursor.fetchone()
    before = (adjudicated or resolved_was, answered_was)
    pair.resolved, pair.agreement, pair.answer_count = resolved, agreement, count
    pair.adjudicated, pair.answered_at, pair.status = adjudicated, answered_at, Pair.Status.ANSWERED
    pair.leased_by, pair.lease_expires_at = None, None
    if settings_id is None:
        labeling = settings_for(pair.collection_id)
    else:
        labeling = LabelingSettings(
            pk=settings_id, collection_id=pair.collection_id, inference_epoch=epoch
        )
    refresh_flags(pair.collection_id, pair, before, labeling)
    row = {
        "id": constraint_id, "pair_id": pair.pk, "answer": answer, "source": source,
        "annotator_id": user.pk, "annotator_name": annotator_name, "idempotency_key": key,
        "created_at": created, "updated_at": now,
    }  # fmt: skip
    fields = [f.attname for f in Constraint._meta.concrete_fields]
    constraint = Constraint.from_db(connection.alias, fields, [row[name] for name in fields])
    constraint.pair, constraint.annotator = pair, user
    return Stored(constraint, created=True)


def undo_answer(pair: Pair, user: User) -> bool:
    """Withdraws `user`'s answer about `pair` (history keeps it) and gives the pair back to them
    leased, so the page can show it again. False if they had no answer there."""
    with transaction.atomic():
        pair = lock_pair(pair)
        before = (pair.final_answer, pair.answered_at)
        deleted, _ = Constraint.objects.filter(pair=pair, annotator=user).delete()
        if not deleted:
            return False
        ConstraintRevision.objects.create(pair=pair, annotator=user, answer="")
        Event.record(Event.Action.UNDO, user, pair.collection_id, pair)
        resolve_pair(pair)
        if not pair.answer_count:
            pair.status = Pair.Status.QUEUED
            pair.answered_at = timezone.now()
            pair.leased_by = user
            pair.lease_expires_at = timezone.now() + timedelta(
                seconds=settings_for(pair.collection_id).lease_seconds
            )
        pair.save()
        refresh_flags(pair.collection_id, pair, before)
    return True


def adjudicate(pair: Pair, curator: User, answer: str) -> None:
    """A curator's ruling on a pair: it overrides the majority and clears the flag."""
    if answer not in (Answer.SAME, Answer.DIFFERENT, Answer.UNSURE):
        raise ValueError("a ruling is same, different or unsure")
    with transaction.atomic():
        pair = lock_pair(pair)
        pair.adjudicated = answer
        pair.adjudicated_by = curator
        pair.answered_at = timezone.now()
        pair.status = Pair.Status.ANSWERED
        pair.flagged = False
        pair.save()
        refresh_flags(pair.collection_id)
        Event.record(Event.Action.ADJUDICATE, curator, pair.collection_id, pair, answer=answer)


def name_group(collection: Collection, image: Image, name: str, user: User) -> Group:
    """Names the group `image` belongs to; the name moves to this image as the group's anchor."""
    inference = infer(collection)
    root = inference.find(image.pk)
    members = [x for x in inference.parent if inference.find(x) == root] or [image.pk]
    with transaction.atomic():
        Group.objects.filter(collection=collection, anchor_id__in=members).delete()
        return Group.objects.create(
            collection=collection, anchor=image, name=name.strip(), named_by=user
        )


def mark_many(
    collection: Collection,
    user: User,
    query_id: int,
    image_ids: Iterable[int],
    answer: str,
) -> int:
    """One-to-many: `user` answers (query, image) for every image at once; returns how many.

    At most MAX_MARKS images. They are stored MARK_CHUNK at a time, each chunk in its own
    transaction with its own audit row, so the collection's lock is held for a few answers at a
    time and another annotator's answer waits a fraction of a second, not the whole mark."""
    ids = sorted({int(i) for i in image_ids} - {int(query_id)})
    if len(ids) > MAX_MARKS:
        raise ValueError(f"mark at most {MAX_MARKS} images at once")
    if (
        Image.objects.filter(collection=collection, pk__in=[*ids, int(query_id)]).count()
        != len(ids) + 1
    ):
        raise Image.DoesNotExist("every image must belong to the collection")
    query = Image(pk=int(query_id), collection=collection)
    for start in range(0, len(ids), MARK_CHUNK):
        chunk = ids[start : start + MARK_CHUNK]
        with transaction.atomic():
            for image_id in chunk:
                pair = pair_for(collection, query_id, image_id)
                _store_answer(pair, user, answer, "", Source.HUMAN, None, audited=False)
            Event.record(
                Event.Action.MARK, user, collection, query,
                answer=answer, count=len(chunk), images=chunk,
            )  # fmt: skip
    return len(ids)
