"""The labeling loop's work across models: answers, undo, the leased queue, adjudication,
group names.

Every change to a pair's answers runs under a per-collection advisory lock: the contradiction
flags depend on the order answers arrived in, and two concurrent answers must not each judge
themselves against a state that misses the other.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.contrib.auth.models import User
from django.db import connection, transaction
from django.db.models import Q, QuerySet
from django.utils import timezone

from audit.models import Event
from labeling import inference
from labeling.inference import infer
from labeling.models import (
    Answer,
    Constraint,
    ConstraintRevision,
    Group,
    LabelingSettings,
    Pair,
    Source,
)
from labeling.strategies import mine, settings_for
from retrieval.models import Collection, Image

log = logging.getLogger(__name__)


class SameImage(ValueError):
    """A pair needs two different images."""


def normalize(a: int, b: int) -> tuple[int, int]:
    """The stored order of an unordered pair: smaller id first."""
    if a == b:
        raise SameImage("a pair needs two different images")
    return (a, b) if a < b else (b, a)


def _lock_collection(collection_id: int) -> None:
    # Transaction-scoped: released at commit or rollback, never leaked by an error.
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_advisory_xact_lock(%s, %s)", [0x4C41, collection_id])


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


def _resolve(pair: Pair) -> None:
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
    collection_id: int, pair: Pair | None = None, before: tuple[str, datetime | None] = ("", None)
) -> int:
    """Re-judges the resolved pairs in answer order and stores the flags, retires queued pairs
    at the head of the queue that the answers now imply, and stores the counters; returns how
    many pairs are flagged. Caller holds the collection lock.

    With `pair` and its `before` state, a change that only appends that pair to the replay
    order costs one add() to this process's kept replay instead of a replay of every answer
    (labeling.inference.refresh); without them everything is replayed."""
    labeling = settings_for(collection_id)
    change = change_of(pair, before) if pair is not None else inference.FULL
    result = inference.refresh(
        collection_id, labeling.inference_epoch, change, pair.pk if pair is not None else None
    )
    for value in (True, False):
        ids = [pk for pk, flag in result.flags.items() if flag == value]
        if ids:
            Pair.objects.filter(pk__in=ids).update(flagged=value)
    contradicting = {p.pair_id for p in result.inference.contradictions}
    if result.full:
        # Pairs whose answer went to unsure or away keep no stale flag.
        Pair.objects.filter(collection_id=collection_id, flagged=True).exclude(
            pk__in=contradicting
        ).update(flagged=False)
    head = _open_pairs(collection_id, timezone.now()).order_by("id")[:RECHECK_HEAD]
    implied = [
        pk
        for pk, a, b in head.values_list("id", "a_id", "b_id")
        if result.inference.implied(a, b) is not None
    ]
    if implied:
        Pair.objects.filter(pk__in=implied).update(status=Pair.Status.RETIRED)
    LabelingSettings.objects.filter(pk=labeling.pk).update(
        implied_pairs=result.inference.implied_count(),
        flagged_pairs=len(contradicting),
        inference_epoch=result.epoch,
    )
    return len(contradicting)


def _after_answer(collection_id: int) -> None:
    """Tells the training side that an answer arrived (it may start a retraining job)."""
    from worker.actions import after_answer

    try:
        after_answer(Collection.objects.get(pk=collection_id))
    except Exception:
        # Runs after commit: the answer is stored, and a failing training trigger must not turn
        # it into an error the page would retry.
        log.exception("after_answer failed for collection %s", collection_id)


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

    The same idempotency key from the same user stores nothing the second time.
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
    # audited=False: the caller (mark_many) writes one row for all its answers.
    if answer not in Answer.values:
        raise ValueError(f"answer must be one of {', '.join(Answer.values)}")
    with transaction.atomic():
        _lock_collection(pair.collection_id)
        if idempotency_key:
            seen = ConstraintRevision.objects.filter(
                annotator=user, idempotency_key=idempotency_key
            ).first()
            if seen is not None:
                existing = Constraint.objects.filter(pair_id=seen.pair_id, annotator=user).first()
                if existing is None:
                    # The answer was undone since; replaying the key must not bring it back.
                    existing = Constraint(pair_id=seen.pair_id, annotator=user, answer=seen.answer)
                return Stored(existing, created=False)
        pair = Pair.objects.select_for_update().get(pk=pair.pk)
        before = (pair.final_answer, pair.answered_at)
        ConstraintRevision.objects.create(
            pair=pair, annotator=user, answer=answer, source=source, idempotency_key=idempotency_key
        )
        constraint, _ = Constraint.objects.update_or_create(
            pair=pair,
            annotator=user,
            defaults={
                "answer": answer,
                "source": source,
                "idempotency_key": idempotency_key,
                "created_at": when or timezone.now(),
            },
        )
        _resolve(pair)
        pair.leased_by, pair.lease_expires_at = None, None
        pair.save()
        refresh_flags(pair.collection_id, pair, before)
        if audited:
            Event.record(
                Event.Action.ANSWER, user, pair.collection_id, pair, answer=answer, source=source
            )
        transaction.on_commit(lambda: _after_answer(pair.collection_id))
    return Stored(constraint, created=True)


def undo_answer(pair: Pair, user: User) -> bool:
    """Withdraws `user`'s answer about `pair` (history keeps it) and gives the pair back to them
    leased, so the page can show it again. False if they had no answer there."""
    with transaction.atomic():
        _lock_collection(pair.collection_id)
        pair = Pair.objects.select_for_update().get(pk=pair.pk)
        before = (pair.final_answer, pair.answered_at)
        deleted, _ = Constraint.objects.filter(pair=pair, annotator=user).delete()
        if not deleted:
            return False
        ConstraintRevision.objects.create(pair=pair, annotator=user, answer="")
        Event.record(Event.Action.UNDO, user, pair.collection_id, pair)
        _resolve(pair)
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
        # After commit: the task must see the claim, and a rolled-back request queues nothing.
        transaction.on_commit(lambda: _queue_mining(labeling.pk, collection.pk))


def _queue_mining(settings_id: int, collection_id: int) -> None:
    from labeling.tasks import mine_pairs

    try:
        mine_pairs.delay(collection_id)
    except Exception:
        # A broker outage must not fail the annotator's request: the queue still has pairs,
        # and releasing the claim lets a later request try again.
        log.exception("could not queue mining for collection %s", collection_id)
        LabelingSettings.objects.filter(pk=settings_id).update(mining_requested_at=None)


def _open_pairs(collection: Collection | int, now: datetime) -> QuerySet[Pair]:
    return Pair.objects.filter(collection=collection, status=Pair.Status.QUEUED).filter(
        Q(lease_expires_at__isnull=True) | Q(lease_expires_at__lt=now)
    )


def next_pair(collection: Collection, user: User, exclude: Iterable[int] = ()) -> Pair | None:
    """The next pair for `user`, leased to them; None when nothing is left to ask.

    A pair they already hold (a reloaded page) comes back first, except those in `exclude` (the
    pair the page shows while preloading the next). New pairs are claimed with FOR UPDATE SKIP
    LOCKED, so two annotators asking at once never get the same one. Pairs that answers came to
    imply are retired from the head of the queue by every answer (refresh_flags), so none is
    shown.
    """
    excluded = [int(x) for x in exclude]
    labeling = settings_for(collection)
    now = timezone.now()
    lease = timedelta(seconds=labeling.lease_seconds)
    held = (
        Pair.objects.filter(
            collection=collection,
            status=Pair.Status.QUEUED,
            leased_by=user,
            lease_expires_at__gt=now,
        )
        .exclude(pk__in=excluded)
        .order_by("id")
        .first()
    )
    if held is not None:
        Pair.objects.filter(pk=held.pk).update(lease_expires_at=now + lease)
        held.lease_expires_at = now + lease
        return held
    for attempt in range(2):
        with transaction.atomic():
            chosen = (
                _open_pairs(collection, now)
                .exclude(pk__in=excluded)
                .select_for_update(skip_locked=True)
                .order_by("id")
                .first()
            )
            if chosen is not None:
                chosen.leased_by = user
                chosen.lease_expires_at = now + lease
                chosen.save(update_fields=["leased_by", "lease_expires_at"])
        if chosen is not None:
            stale = labeling.mined_version_id != collection.active_version_id
            if stale or _open_pairs(collection, now).count() < labeling.low_water:
                _request_mining(collection, labeling)
            return chosen
        # An empty queue: mine a small batch now rather than show an idle annotator nothing.
        if (
            attempt == 0
            and not _open_pairs(collection, now).exists()
            and not mine(collection, n=min(labeling.batch_size, 50))
        ):
            return None
    return None


def adjudicate(pair: Pair, curator: User, answer: str) -> None:
    """A curator's ruling on a pair: it overrides the majority and clears the flag."""
    if answer not in (Answer.SAME, Answer.DIFFERENT, Answer.UNSURE):
        raise ValueError("a ruling is same, different or unsure")
    with transaction.atomic():
        _lock_collection(pair.collection_id)
        pair = Pair.objects.select_for_update().get(pk=pair.pk)
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


def counters(collection: Collection, user: User) -> dict[str, int]:
    """What the labeling page shows: my answers, everybody's, implied pairs, open conflicts."""
    stored = settings_for(collection)
    return {
        "mine": Constraint.objects.filter(pair__collection=collection, annotator=user).count(),
        "answered": Pair.objects.filter(collection=collection, answer_count__gt=0).count(),
        "implied": stored.implied_pairs,
        "flagged": stored.flagged_pairs,
    }


def mark_many(
    collection: Collection,
    user: User,
    query_id: int,
    image_ids: Iterable[int],
    answer: str,
) -> int:
    """One-to-many: `user` answers (query, image) for every image at once; returns how many."""
    ids = {int(i) for i in image_ids} - {int(query_id)}
    if (
        Image.objects.filter(collection=collection, pk__in=ids | {int(query_id)}).count()
        != len(ids) + 1
    ):
        raise Image.DoesNotExist("every image must belong to the collection")
    with transaction.atomic():
        for image_id in sorted(ids):
            pair = pair_for(collection, query_id, image_id)
            _store_answer(pair, user, answer, "", Source.HUMAN, None, audited=False)
        query = Image(pk=int(query_id), collection=collection)
        Event.record(
            Event.Action.MARK, user, collection, query,
            answer=answer, count=len(ids), images=sorted(ids)[:100],
        )  # fmt: skip
    return len(ids)
