"""merge-gain asks the questions whose answers settle the most pairs: an image against its
nearest group, groups against each other, and nearest neighbours before any group exists.

Also the strategy mix merge-gain leads by default: the migration to it, its validation, and the
admin page where a site admin sets another.

The fixture's 24 images lie in 4 tight clusters of the embedding space (image i in cluster
i % 4), far apart from each other."""

from __future__ import annotations

import importlib

import pytest

from labeling import answers, strategies
from labeling.inference import infer
from labeling.models import Answer, Pair, default_mix
from labeling.tasks import mine_pairs

pytestmark = pytest.mark.django_db


def cluster(image_id: int, images) -> int:
    return [x.pk for x in images].index(image_id) % 4


def propose(collection, n: int):
    collection.refresh_from_db()
    ctx = strategies.MiningContext.build(collection, collection.active_version, seed=0)
    return strategies.merge_gain(ctx, n)


def link(collection, annotator, a, b, answer=Answer.SAME) -> None:
    answers.record_answer(answers.pair_for(collection, a.pk, b.pk), annotator, answer)


def test_without_groups_it_asks_nearest_neighbours(collection, images):
    proposed = propose(collection, 10)
    assert len(proposed) == 10
    for c in proposed:
        assert cluster(c.a, images) == cluster(c.b, images)


def test_a_loose_image_is_asked_first_against_its_nearest_group(collection, images, annotator):
    x = images
    link(collection, annotator, x[0], x[4])
    link(collection, annotator, x[4], x[8])  # a group of 3 in cluster 0
    link(collection, annotator, x[1], x[5])  # a group of 2 in cluster 1
    groups = {frozenset(m) for m in infer(collection).groups().values()}
    assert groups == {frozenset({x[0].pk, x[4].pk, x[8].pk}), frozenset({x[1].pk, x[5].pk})}
    grouped = {x[i].pk for i in (0, 4, 8, 1, 5)}

    proposed = propose(collection, 60)
    first_for: dict[int, int] = {}
    for c in proposed:
        for loose, other in ((c.a, c.b), (c.b, c.a)):
            if loose not in grouped and other in grouped:
                first_for.setdefault(loose, other)
    # Every loose image is asked about, against a group member; one in cluster 0 or 1 first
    # against its own cluster's group.
    assert set(first_for) == {i.pk for i in x} - grouped
    for loose, member in first_for.items():
        if cluster(loose, images) in (0, 1):
            assert cluster(member, images) == cluster(loose, images)
    # The two groups are asked against each other, scored by the pairs one answer settles.
    across = [c for c in proposed if c.a in grouped and c.b in grouped]
    assert len(across) == 1 and across[0].score == 3 * 2
    assert proposed[0] == across[0]  # groups against groups first
    # Then the loose images torn between two groups: those of clusters 2 and 3, as far from
    # one group as from the other, before those that sit in a group's cluster.
    torn = [c for c in proposed[1:] if c.score in (2, 3)][:4]
    assert all(cluster(c.a if c.a not in grouped else c.b, images) in (2, 3) for c in torn)


def test_a_group_ruled_out_for_an_image_is_not_asked_again(collection, images, annotator):
    x = images
    link(collection, annotator, x[0], x[4])
    link(collection, annotator, x[12], x[0], Answer.DIFFERENT)
    proposed = propose(collection, 60)
    pairs = {(min(c.a, c.b), max(c.a, c.b)) for c in proposed}
    assert (min(x[12].pk, x[4].pk), max(x[12].pk, x[4].pk)) not in pairs
    assert all(infer(collection).implied(c.a, c.b) is None for c in proposed)


def test_an_image_no_group_fits_is_asked_against_its_neighbours(collection, images, annotator):
    x = images
    link(collection, annotator, x[0], x[4])
    link(collection, annotator, x[1], x[0], Answer.DIFFERENT)  # cluster 1: the only group is not it
    proposed = propose(collection, 60)
    first = next(c for c in proposed if x[1].pk in (c.a, c.b))
    other = first.b if first.a == x[1].pk else first.a
    assert cluster(other, images) == 1  # a neighbour of its own kind, not the ruled-out group
    assert proposed.index(first) < 3  # before the questions about the group


def test_collections_on_the_old_default_mix_move_to_the_new_one(collection):
    from django.apps import apps

    from labeling.models import LabelingSettings
    from retrieval.models import Collection

    migration = importlib.import_module("labeling.migrations.0005_merge_gain_default_mix")
    assert default_mix() == migration.NEW
    untouched = strategies.settings_for(collection)
    untouched.strategy_mix = migration.OLD
    untouched.save()
    chosen = strategies.settings_for(Collection.objects.create(name="chosen mix"))
    chosen.strategy_mix = {"random": 1.0}
    chosen.save()

    migration.forwards(apps, None)
    assert LabelingSettings.objects.get(pk=untouched.pk).strategy_mix == migration.NEW
    assert LabelingSettings.objects.get(pk=chosen.pk).strategy_mix == {"random": 1.0}
    migration.backwards(apps, None)
    assert LabelingSettings.objects.get(pk=untouched.pk).strategy_mix == migration.OLD


@pytest.mark.parametrize(
    ("mix", "message"),
    [
        ({"merge-gain": 1, "guess": 1}, "unknown strategies guess"),
        ({"random": -1, "uncertain": 1}, "must be a number >= 0"),
        ({"random": "a lot"}, "must be a number >= 0"),
        ({"random": 0, "uncertain": 0}, "at least one strategy"),
        ([], "maps strategy names"),
    ],
)
def test_a_bad_mix_is_refused_with_its_reason(mix, message):
    from django.core.exceptions import ValidationError

    from labeling.models import validate_mix

    with pytest.raises(ValidationError, match=message):
        validate_mix(mix)


def test_a_site_admin_sets_the_mix_in_the_admin_and_a_bad_one_changes_nothing(
    collection, images, admin
):
    from django.test import Client

    from labeling.models import LabelingSettings

    settings = strategies.settings_for(collection)
    client = Client()
    client.force_login(admin)
    url = f"/admin/labeling/labelingsettings/{settings.pk}/change/"
    form = {"lease_seconds": 300, "batch_size": 200, "low_water": 50}
    bad = client.post(url, {**form, "strategy_mix": '{"merge-gain": 1, "guess": 2}'})
    assert bad.status_code == 200 and b"unknown strategies guess" in bad.content
    assert LabelingSettings.objects.get(pk=settings.pk).strategy_mix == default_mix()
    good = client.post(url, {**form, "strategy_mix": '{"uncertain": 1, "random": 1}'})
    assert good.status_code == 302, good.content
    assert LabelingSettings.objects.get(pk=settings.pk).strategy_mix == {
        "uncertain": 1,
        "random": 1,
    }
    mine_pairs(collection.pk)
    assert set(Pair.objects.values_list("strategy", flat=True)) <= {"uncertain", "random"}


def test_a_seeded_mining_asks_the_same_questions_every_time(collection, images):
    # The benchmarks compare strategies seed by seed: their samples must not come from the
    # database's unseeded random().
    def build(seed: int | None) -> strategies.MiningContext:
        return strategies.MiningContext.build(collection, collection.active_version, seed=seed)

    first = build(3).sample(8)
    assert first == build(3).sample(8) and len(set(first)) == 8
    assert set(first) <= {x.pk for x in images}
    assert len(build(3).sample(100)) == 24  # never more than the version holds
    pairs = [(c.a, c.b) for c in strategies.random_pairs(build(5), 6)]
    assert pairs == [(c.a, c.b) for c in strategies.random_pairs(build(5), 6)]
    assert len(build(None).sample(8)) == 8  # unseeded: the database draws
