from __future__ import annotations

import itertools

import pytest
import torch

from retrieval.autoret.pairs import (
    AugmentConfig,
    KnownPairs,
    PairSampler,
    augment,
    pixel_neighbors,
)


def test_augment_keeps_shape_and_range_and_changes_the_images() -> None:
    x = torch.rand(16, 3, 20, 28)
    out = augment(x, torch.Generator().manual_seed(0))
    assert out.shape == x.shape and out.dtype == x.dtype
    assert out.min() >= 0 and out.max() <= 1
    assert (out - x).abs().mean(dim=(1, 2, 3)).min() > 0.01


def test_augment_is_reproducible_from_the_generator() -> None:
    x = torch.rand(4, 1, 16, 16)
    a = augment(x, torch.Generator().manual_seed(3))
    b = augment(x, torch.Generator().manual_seed(3))
    c = augment(x, torch.Generator().manual_seed(4))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_augment_with_everything_off_is_the_identity() -> None:
    off = AugmentConfig(
        crop_area=(1.0, 1.0),
        crop_aspect=(1.0, 1.0),
        rotation_deg=0,
        shear=0,
        hflip_p=0,
        brightness=0,
        contrast=0,
        noise_sigma=0,
    )
    x = torch.rand(3, 1, 12, 12)
    assert torch.allclose(augment(x, torch.Generator(), off), x, atol=1e-5)


def test_flip_only_mirrors_the_image() -> None:
    flip = AugmentConfig(
        crop_area=(1.0, 1.0),
        crop_aspect=(1.0, 1.0),
        rotation_deg=0,
        shear=0,
        hflip_p=1.0,
        brightness=0,
        contrast=0,
        noise_sigma=0,
    )
    x = torch.rand(2, 1, 8, 8)
    assert torch.allclose(augment(x, torch.Generator(), flip), x.flip(-1), atol=1e-5)


def _closure_reference(n: int, must: list[tuple[int, int]], cannot: list[tuple[int, int]]):
    """Explicit transitive closure by repeated rule application."""
    same = {(a, b) for a, b in must} | {(b, a) for a, b in must}
    changed = True
    while changed:
        new = {(a, d) for (a, b), (c, d) in itertools.product(same, same) if b == c and a != d}
        changed = not new <= same
        same |= new
    diff = {(a, b) for a, b in cannot} | {(b, a) for a, b in cannot}
    group = {i: {i} | {b for a, b in same if a == i} for i in range(n)}
    diff = {(x, y) for a, b in diff for x in group[a] for y in group[b]}
    return {tuple(sorted(p)) for p in same}, {tuple(sorted(p)) for p in diff}


def test_transitive_closure_counts_explicit_and_implied_pairs() -> None:
    must = [(0, 1), (1, 2), (3, 4), (2, 1)]
    cannot = [(0, 3), (5, 4)]
    known = KnownPairs.from_constraints(8, must, cannot)
    same, diff = _closure_reference(8, must, cannot)
    assert known.n_must == len(same) == 4  # {0,1,2}: 3 pairs, {3,4}: 1 pair
    assert known.n_cannot == len(diff) == 8  # {0,1,2}x{3,4}: 6, {5}x{3,4}: 2
    assert known.counts() == {
        "must_explicit": 3,
        "must_implied": 1,
        "cannot_explicit": 2,
        "cannot_implied": 6,
        "conflicts": 0,
    }


def test_random_constraints_match_the_explicit_closure() -> None:
    g = torch.Generator().manual_seed(5)
    for _ in range(5):
        pairs = torch.randint(0, 12, (14, 2), generator=g).tolist()
        must = [tuple(p) for p in pairs[:8] if p[0] != p[1]]
        same, _ = _closure_reference(12, must, [])
        cannot = [tuple(p) for p in pairs[8:] if p[0] != p[1] and tuple(sorted(p)) not in same]
        same, diff = _closure_reference(12, must, cannot)
        known = KnownPairs.from_constraints(12, must, cannot)
        assert (known.n_must, known.n_cannot) == (len(same), len(diff))


def test_contradicting_cannot_link_is_dropped_and_counted() -> None:
    known = KnownPairs.from_constraints(4, [(0, 1), (1, 2)], [(0, 2), (0, 3)])
    assert known.conflicts == 1
    assert known.n_cannot == 3


def test_images_joined_to_components_share_their_pairs_and_count_as_implied() -> None:
    known = KnownPairs.from_constraints(8, [(0, 1), (2, 3)], [(1, 2)])  # components 0 and 1
    joined = known.with_members({0: [4, 5], 1: [6]})
    c = joined.component_of(torch.tensor([0, 4, 5, 2, 6, 7]))
    assert c[0] == c[1] == c[2] and c[3] == c[4] and c[0] != c[3] and c[5] == -1
    assert joined.relation(torch.tensor([4]), torch.tensor([6])).item() == 0  # the cannot-link
    assert (joined.n_must, joined.n_cannot) == (6 + 3, 4 * 3)
    counts = joined.counts()
    assert (counts["must_explicit"], counts["cannot_explicit"]) == (2, 1)
    assert (counts["must_implied"], counts["cannot_implied"]) == (7, 11)
    assert known.component_of(torch.tensor([4])).item() == -1  # the original is unchanged
    with pytest.raises(ValueError, match="in none yet"):
        known.with_members({0: [2]})
    with pytest.raises(ValueError, match="in none yet"):
        known.with_members({0: [4], 1: [4]})
    with pytest.raises(ValueError, match="no component"):
        known.with_members({5: [4]})


def test_constraint_outside_the_images_is_refused() -> None:
    with pytest.raises(ValueError, match="outside"):
        KnownPairs.from_constraints(3, [(0, 3)], [])


def test_sampled_known_pairs_are_true_must_and_cannot_links() -> None:
    must, cannot = [(0, 1), (1, 2), (3, 4)], [(0, 3), (5, 4)]
    same, diff = _closure_reference(8, must, cannot)
    known = KnownPairs.from_constraints(8, must, cannot)
    g = torch.Generator().manual_seed(0)
    a, b = known.sample_must(500, g)
    drawn_same = {tuple(sorted(p)) for p in zip(a.tolist(), b.tolist(), strict=True)}
    assert drawn_same == same  # every can-link pair is drawn, none outside the closure
    a, b = known.sample_cannot(800, g)
    drawn_diff = {tuple(sorted(p)) for p in zip(a.tolist(), b.tolist(), strict=True)}
    assert drawn_diff == diff


def test_random_members_come_from_each_asked_component_and_cover_it() -> None:
    known = KnownPairs.from_constraints(8, [(0, 1), (1, 2), (3, 4)], [(0, 5)])
    component = known.component_of(torch.tensor([2, 4, 5] * 200))
    drawn = known.random_members(component, torch.Generator().manual_seed(0))
    assert (known.component_of(drawn) == component).all()
    assert set(drawn[0::3].tolist()) == {0, 1, 2} and set(drawn[1::3].tolist()) == {3, 4}
    assert set(drawn[2::3].tolist()) == {5}  # a component of one: the image itself


def test_labels_of_a_fraction_become_known_pairs() -> None:
    labels = torch.arange(100) % 5
    known = KnownPairs.from_labels(labels, fraction=0.2, seed=1)
    assert int(known.sizes.sum()) == 20
    a, b = known.sample_must(200, torch.Generator())
    assert torch.equal(labels[a], labels[b]) and not torch.equal(a, b)
    a, b = known.sample_cannot(200, torch.Generator())
    assert (labels[a] != labels[b]).all()


def test_sampler_is_half_can_half_cannot_with_the_known_share() -> None:
    labels = torch.arange(1000) % 10
    known = KnownPairs.from_labels(labels, fraction=0.1)
    sampler = PairSampler(1000, batch_pairs=64, known=known, known_fraction=0.5)
    batch = sampler.sample()
    assert batch.is_cannot.sum() == 32
    can_first, can_second = batch.first[:32], batch.second[:32]
    assert batch.n_known == 32
    assert torch.equal(labels[can_first[:16]], labels[can_second[:16]])
    assert torch.equal(can_first[16:], can_second[16:])  # self-supervised: image and its copy
    assert (batch.first[32:] != batch.second[32:]).all()


def test_sampler_caps_a_handful_of_known_pairs_to_avoid_heavy_repetition() -> None:
    known = KnownPairs.from_constraints(10_000, [(0, 1)], [(2, 3)])
    sampler = PairSampler(10_000, batch_pairs=128, known=known, known_fraction=0.5)
    drawn = sum(sampler.sample().n_known for _ in range(79))  # one epoch
    assert drawn <= 60  # about 10 repeats of each of the 2 known pairs, not 64 per batch


def test_self_supervised_sampler_pairs_only_distinct_images_as_cannot_link() -> None:
    sampler = PairSampler(3, batch_pairs=200)
    batch = sampler.sample()
    assert batch.n_known == 0
    assert (batch.first[100:] != batch.second[100:]).all()
    assert torch.equal(batch.first[:100], batch.second[:100])


def test_batch_all_images_take_the_known_share_and_mark_known_matches_can_link() -> None:
    labels = torch.arange(400) % 4
    known = KnownPairs.from_labels(labels, 0.5, seed=0)
    sampler = PairSampler(400, 16, known, known_fraction=0.5, max_known_repeats=1e9, seed=0)
    batch = sampler.sample_images()
    assert batch.index.shape == (16,) and batch.n_known == 8
    known_part = batch.index[: batch.n_known]
    assert (batch.component[: batch.n_known] >= 0).all()
    same = batch.same()
    assert same.shape == (32, 32) and torch.equal(same, same.T) and same.diagonal().all()
    for i, j in itertools.product(range(32), repeat=2):
        a, b = int(batch.index[i % 16]), int(batch.index[j % 16])
        both_known = batch.component[i % 16] >= 0 and batch.component[j % 16] >= 0
        expected = a == b or bool(both_known and labels[a] == labels[b])
        assert bool(same[i, j]) == expected, (i, j)
    distinct = known_part[:, None] != known_part[None, :]
    assert (
        same[: batch.n_known, : batch.n_known] & distinct
    ).any()  # known must-links across images


def test_self_supervised_batch_all_images_are_can_link_only_with_their_own_views() -> None:
    batch = PairSampler(1000, 8, seed=1).sample_images()
    assert batch.n_known == 0 and (batch.component == -1).all()
    assert torch.equal(batch.same(), torch.eye(8, dtype=torch.bool).repeat(2, 2))


def _slow_pixel_neighbors(images: torch.Tensor, k: int, side: int) -> torch.Tensor:
    """Reference: centred, normalized grey thumbnails compared one pair at a time."""
    thumbs = []
    for image in images.float():
        grey = image.mean(dim=0, keepdim=True)
        if grey.shape[-1] > side:
            grey = torch.nn.functional.adaptive_avg_pool2d(grey, side)
        v = grey.flatten() - grey.mean()
        thumbs.append(v / v.norm())
    out = []
    for i, a in enumerate(thumbs):
        scores = [(float(a @ b), j) for j, b in enumerate(thumbs) if j != i]
        out.append([j for _, j in sorted(scores, reverse=True)[:k]])
    return torch.tensor(out)


def test_pixel_neighbors_match_a_slow_reference_in_any_chunking() -> None:
    images = torch.randint(0, 256, (40, 3, 24, 24), dtype=torch.uint8)
    expected = _slow_pixel_neighbors(images, k=3, side=8)
    for chunk in (7, 40, 1000):
        assert torch.equal(pixel_neighbors(images, 3, side=8, chunk=chunk), expected)


def test_pixel_neighbors_find_the_brightness_shifted_copy_not_the_image_itself() -> None:
    base = torch.randint(0, 200, (20, 1, 16, 16), dtype=torch.uint8)
    images = torch.cat([base, base + 40])  # each image and a brighter copy
    neighbors = pixel_neighbors(images, 1)
    assert torch.equal(neighbors[:, 0], torch.cat([torch.arange(20, 40), torch.arange(20)]))
    with pytest.raises(ValueError, match="k must be between"):
        pixel_neighbors(images, 40)


def test_neighbor_pairs_replace_the_asked_share_of_self_supervised_copies() -> None:
    n = 1000
    neighbors = torch.stack([(torch.arange(n) + 1) % n, (torch.arange(n) + 2) % n], dim=1)
    sampler = PairSampler(n, 512, neighbors=neighbors, neighbor_fraction=0.5, seed=0)
    batch = sampler.sample()
    first, second = batch.first[:256], batch.second[:256]
    offset = (second - first) % n
    assert set(offset.tolist()) <= {0, 1, 2}
    assert 0.35 < (offset > 0).float().mean() < 0.65  # about half are neighbours
    assert (batch.first[256:] != batch.second[256:]).all()  # cannot-link half untouched
    with pytest.raises(ValueError, match="neighbors tensor"):
        PairSampler(n, 16, neighbor_fraction=0.5)
