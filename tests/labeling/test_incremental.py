"""The incremental refresh (labeling.inference.refresh) equals a full replay of the answers.

Random answer sequences (new answers, changed answers, undos, rulings, rolled-back answers),
with two simulated processes that each keep their own replay, are checked after every step
against a replay of everything from the database: the stored flags and counters must agree.
"""

from __future__ import annotations

import random

import pytest
from django.db import transaction

from labeling import answers, inference
from labeling.inference import Inference, ResolvedPair, replay, replay_rows
from labeling.models import Answer, Constraint, LabelingSettings, Pair

from .conftest import add_images


def reference_implied_count(state: Inference) -> int:
    """The counting implied_count did before it was kept incrementally: from the final state."""
    must = sum(n * (n - 1) // 2 for n in state.size.values() if n > 1)
    seen: set[tuple[int, int]] = set()
    cannot = 0
    for root, others in state.cannot.items():
        for other in others:
            key = (min(root, other), max(root, other))
            if key not in seen:
                seen.add(key)
                cannot += state.size.get(root, 1) * state.size.get(other, 1)
    direct_must = len({(p.a, p.b) for p in state.must_pairs})
    direct_cannot = len({(p.a, p.b) for p in state.cannot_pairs})
    return must - direct_must + cannot - direct_cannot


@pytest.mark.parametrize("seed", range(20))
def test_kept_implied_count_equals_counting_from_scratch(seed):
    rng = random.Random(seed)
    state = Inference()
    images = rng.randint(4, 30)
    for pid in range(rng.randint(1, 120)):
        a, b = sorted(rng.sample(range(images), 2))
        state.add(ResolvedPair(pid, a, b, rng.choice([Answer.SAME, Answer.DIFFERENT])))
        assert state.implied_count() == reference_implied_count(state)


def check_against_full_replay(collection_id: int) -> None:
    full = replay(row.pair for row in replay_rows(collection_id))
    contradicting = {p.pair_id for p in full.contradictions}
    stored = set(
        Pair.objects.filter(collection_id=collection_id, flagged=True).values_list("id", flat=True)
    )
    assert stored == contradicting
    counters = LabelingSettings.objects.get(collection_id=collection_id)
    assert counters.implied_pairs == full.implied_count() == reference_implied_count(full)
    assert counters.flagged_pairs == len(contradicting)


class Rollback(Exception):
    pass


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_incremental_refresh_equals_full_replay(
    seed, collection, annotator, curator, admin, monkeypatch
):
    rng = random.Random(seed)
    images = add_images(collection, 9)
    users = [annotator, curator, admin]
    # Two processes, each with its own kept replays: every step runs in one of them.
    processes: list[dict[int, inference.Replayed]] = [{}, {}]
    full = {"n": 0}
    replay_everything = inference._full

    def counted(*args, **kwargs):
        full["n"] += 1
        return replay_everything(*args, **kwargs)

    monkeypatch.setattr(inference, "_full", counted)
    steps = 90
    flagged_seen = False
    for _ in range(steps):
        monkeypatch.setattr(inference, "_replays", rng.choice(processes))
        roll = rng.random()
        if roll < 0.7:
            a, b = rng.sample(images, 2)
            pair = answers.pair_for(collection, a.pk, b.pk)
            value = rng.choice([Answer.SAME, Answer.DIFFERENT, Answer.DIFFERENT, Answer.UNSURE])
            answers.record_answer(pair, rng.choice(users), value)
        elif roll < 0.8:
            # Chosen by the seeded rng, not the database's random(): the run must not depend on
            # PostgreSQL's own sequence (a seed once ended without a conflict on one machine).
            existing = list(Constraint.objects.order_by("pk"))
            constraint = rng.choice(existing) if existing else None
            if constraint is not None:
                assert constraint.annotator is not None
                answers.undo_answer(constraint.pair, constraint.annotator)
        elif roll < 0.85:
            pairs = list(Pair.objects.filter(collection=collection).order_by("pk"))
            ruled = rng.choice(pairs) if pairs else None
            if ruled is not None:
                ruling = rng.choice([Answer.SAME, Answer.DIFFERENT, Answer.UNSURE])
                answers.adjudicate(ruled, curator, ruling)
        else:
            # An answer whose transaction rolls back after its refresh: no replay may keep it.
            a, b = rng.sample(images, 2)
            pair = answers.pair_for(collection, a.pk, b.pk)
            with pytest.raises(Rollback), transaction.atomic():
                answers.record_answer(pair, rng.choice(users), Answer.SAME)
                raise Rollback
        check_against_full_replay(collection.pk)
        flagged_seen = flagged_seen or Pair.objects.filter(flagged=True).exists()
    # The point of it: most answers did not replay everything, and conflicts were among them.
    assert full["n"] < steps * 0.6
    assert flagged_seen


@pytest.mark.django_db(transaction=True)
def test_deleted_pairs_are_noticed(collection, annotator):
    images = add_images(collection, 5)
    for a, b in [(0, 1), (1, 2), (3, 4)]:
        answers.record_answer(
            answers.pair_for(collection, images[a].pk, images[b].pk), annotator, Answer.SAME
        )
    # Deleting an image takes its pairs along without any answer being changed.
    images[1].delete()
    answers.record_answer(
        answers.pair_for(collection, images[0].pk, images[2].pk), annotator, Answer.DIFFERENT
    )
    check_against_full_replay(collection.pk)
    assert not Pair.objects.filter(flagged=True).exists()
