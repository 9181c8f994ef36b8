"""Constraints: normalization, majority and agreement, history, inference and contradictions."""

from __future__ import annotations

import pytest
from django.db import IntegrityError, transaction

from labeling import answers, pair_queue
from labeling.inference import infer
from labeling.models import Answer, Constraint, ConstraintRevision, Pair
from labeling.training import (
    answers_since,
    held_out_constraints,
    is_held_out,
    known_constraints,
)

pytestmark = pytest.mark.django_db


def answer(collection, user, a, b, value: str) -> Pair:
    pair = answers.pair_for(collection, a.pk, b.pk)
    answers.record_answer(pair, user, value)
    pair.refresh_from_db()
    return pair


def test_pair_is_stored_smaller_id_first(collection, images):
    a, b = images[0], images[1]
    assert answers.pair_for(collection, b.pk, a.pk) == answers.pair_for(collection, a.pk, b.pk)
    pair = Pair.objects.get()
    assert (pair.a_id, pair.b_id) == (a.pk, b.pk)
    with pytest.raises(answers.SameImage):
        answers.pair_for(collection, a.pk, a.pk)
    with pytest.raises(IntegrityError), transaction.atomic():
        Pair.objects.create(collection=collection, a=images[3], b=images[2])


def test_majority_and_agreement_over_annotators(collection, images, annotator, curator, admin):
    a, b = images[0], images[1]
    answer(collection, annotator, a, b, Answer.SAME)
    answer(collection, curator, a, b, Answer.SAME)
    pair = answer(collection, admin, a, b, Answer.DIFFERENT)
    assert pair.resolved == Answer.SAME
    assert pair.agreement == pytest.approx(2 / 3)
    assert pair.answer_count == 3


def test_a_tie_resolves_to_unsure():
    assert answers.majority([Answer.SAME, Answer.DIFFERENT]) == (Answer.UNSURE, 0.5, 2)
    assert answers.majority([Answer.SAME]) == (Answer.SAME, 1.0, 1)
    assert answers.majority([]) == ("", None, 0)


def test_new_answer_replaces_the_old_one_and_keeps_history(collection, images, annotator):
    a, b = images[0], images[1]
    answer(collection, annotator, a, b, Answer.SAME)
    pair = answer(collection, annotator, a, b, Answer.DIFFERENT)
    assert Constraint.objects.get(pair=pair).answer == Answer.DIFFERENT
    assert list(ConstraintRevision.objects.order_by("id").values_list("answer", flat=True)) == [
        Answer.SAME,
        Answer.DIFFERENT,
    ]
    assert pair.resolved == Answer.DIFFERENT


def test_groups_cannot_links_and_implied_counts(collection, images, annotator):
    x = images
    # Group {0,1,2} by two answers (implies 0-2), group {3,4}; one cannot-link 2-3.
    answer(collection, annotator, x[0], x[1], Answer.SAME)
    answer(collection, annotator, x[1], x[2], Answer.SAME)
    answer(collection, annotator, x[3], x[4], Answer.SAME)
    answer(collection, annotator, x[2], x[3], Answer.DIFFERENT)
    inference = infer(collection)
    assert sorted(inference.groups().values()) == [
        [x[0].pk, x[1].pk, x[2].pk],
        [x[3].pk, x[4].pk],
    ]
    assert inference.implied(x[0].pk, x[2].pk) == Answer.SAME
    assert inference.implied(x[0].pk, x[4].pk) == Answer.DIFFERENT
    assert inference.implied(x[0].pk, x[5].pk) is None
    # must: 3 + 1 pairs minus 3 answered; cannot: 3 x 2 minus 1 answered.
    assert inference.implied_count() == 1 + 5
    assert pair_queue.counters(collection, annotator)["implied"] == 6


def test_unsure_answers_imply_nothing(collection, images, annotator):
    answer(collection, annotator, images[0], images[1], Answer.UNSURE)
    assert infer(collection).groups() == {}
    assert known_constraints(collection) == ([], [])


def test_different_inside_a_group_is_flagged_and_left_out_of_training(
    collection, images, annotator, curator
):
    x = images
    answer(collection, annotator, x[0], x[1], Answer.SAME)
    answer(collection, annotator, x[1], x[2], Answer.SAME)
    contradiction = answer(collection, curator, x[0], x[2], Answer.DIFFERENT)
    assert contradiction.flagged
    must, cannot = known_constraints(collection)
    assert must == [(x[0].pk, x[1].pk), (x[1].pk, x[2].pk)]
    assert cannot == []
    assert pair_queue.counters(collection, annotator)["flagged"] == 1

    # A curator's ruling settles it: the pair leaves the queue and trains from then on.
    answers.adjudicate(contradiction, curator, Answer.DIFFERENT)
    contradiction.refresh_from_db()
    assert not contradiction.flagged
    must, cannot = known_constraints(collection)
    assert (x[0].pk, x[2].pk) in cannot
    # The ruling came first in replay, so one of the two "same" answers now contradicts it.
    assert Pair.objects.filter(flagged=True).count() == 1


def test_same_across_a_cannot_link_is_flagged(collection, images, annotator):
    x = images
    answer(collection, annotator, x[0], x[1], Answer.SAME)
    answer(collection, annotator, x[2], x[3], Answer.SAME)
    answer(collection, annotator, x[1], x[2], Answer.DIFFERENT)
    contradiction = answer(collection, annotator, x[0], x[3], Answer.SAME)
    assert contradiction.flagged
    assert infer(collection).implied(x[0].pk, x[3].pk) == Answer.DIFFERENT


def test_changing_the_earlier_answer_clears_the_flag(collection, images, annotator):
    x = images
    answer(collection, annotator, x[0], x[1], Answer.SAME)
    answer(collection, annotator, x[1], x[2], Answer.SAME)
    flagged = answer(collection, annotator, x[0], x[2], Answer.DIFFERENT)
    assert flagged.flagged
    answer(collection, annotator, x[1], x[2], Answer.UNSURE)
    flagged.refresh_from_db()
    assert not flagged.flagged


def test_answers_since_counts_answers_not_undos(collection, images, annotator):
    pair = answer(collection, annotator, images[0], images[1], Answer.SAME)
    answer(collection, annotator, images[0], images[2], Answer.DIFFERENT)
    middle = ConstraintRevision.objects.order_by("id").first()
    assert middle is not None
    assert answers_since(collection, None) == 2
    assert answers_since(collection, middle.created_at) == 1
    answers.undo_answer(pair, annotator)
    assert answers_since(collection, None) == 2


def test_held_out_pairs_are_a_fixed_share_that_grows_with_the_percent() -> None:
    pairs = [(a, b) for a in range(100) for b in range(a + 1, 100)]  # 4,950
    tenth = {p for p in pairs if is_held_out(*p, 10)}
    fifth = {p for p in pairs if is_held_out(*p, 20)}
    assert 0.08 < len(tenth) / len(pairs) < 0.12 and 0.17 < len(fifth) / len(pairs) < 0.23
    assert tenth < fifth  # raising the percent only adds pairs
    assert not any(is_held_out(*p, 0) for p in pairs)
    assert {p for p in pairs if is_held_out(*p, 10)} == tenth  # the same every time


def test_held_out_answers_leave_training_and_nothing_else_does(
    collection, images, annotator
) -> None:
    x = images
    for i in range(len(x) - 1):
        answer(collection, annotator, x[i], x[i + 1], Answer.SAME if i % 2 else Answer.DIFFERENT)
    everything = known_constraints(collection)
    trained, kept = known_constraints(collection, 50), held_out_constraints(collection, 50)
    for kind in (0, 1):
        assert sorted(trained[kind] + kept[kind]) == everything[kind]
        assert not set(trained[kind]) & set(kept[kind])
        assert all(is_held_out(*p, 50) for p in kept[kind])
    assert held_out_constraints(collection, 0) == ([], [])
