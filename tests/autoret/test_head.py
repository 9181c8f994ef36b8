from __future__ import annotations

import dataclasses
import math
from typing import Any

import pytest
import torch
import torch.nn.functional as F

from retrieval.autoret.features import FeatureConfig, FeatureStage
from retrieval.autoret.head import FeatureHead, HeadConfig, PretrainedAutoRet
from retrieval.autoret.head_training import (
    HeadTrainConfig,
    embed_features,
    large_groups,
    mutual_neighbors,
    nearest_neighbors,
    pseudo_members,
    train_head,
)
from retrieval.autoret.pairs import KnownPairs
from retrieval.autoret.train import Progress

SMALL = HeadConfig(embed_dim=8, reduce_dim=16, rnn_hidden=8)


def clustered_features(
    n_per: int = 40, clusters: int = 4, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Fake cached features N x 5 x 32: each cluster a direction plus noise, labels N."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(clusters, 32, generator=g) * 2
    labels = torch.arange(clusters).repeat_interleave(n_per)
    noise = torch.randn(len(labels), 5, 32, generator=g)
    return (centres[labels][:, None] + noise).abs(), labels


def small_head(features: torch.Tensor, cfg: HeadConfig = SMALL) -> FeatureHead:
    torch.manual_seed(0)
    head = FeatureHead(cfg, feature_dim=features.shape[2])
    head.fit(features)
    return head


def test_an_unfitted_head_refuses_to_embed() -> None:
    with pytest.raises(RuntimeError, match="fit"):
        FeatureHead(SMALL, feature_dim=32)(torch.rand(2, 5, 32))


def test_config_is_validated_and_round_trips() -> None:
    with pytest.raises(ValueError, match="reduce_dim"):
        HeadConfig(embed_dim=64, reduce_dim=32)
    with pytest.raises(ValueError, match="sphere_radius"):
        HeadConfig(sphere_radius=0)
    with pytest.raises(ValueError, match="whiten"):
        HeadConfig(whiten=1.0)
    assert HeadConfig.from_dict(SMALL.to_dict()) == SMALL
    # Versions recorded before whitening existed keep fitting as they did.
    old = {k: v for k, v in HeadConfig().to_dict().items() if k != "whiten"}
    assert HeadConfig.from_dict(old).whiten is None and HeadConfig().whiten == 0.25


def test_version_one_whitens_where_groups_are_small_and_not_where_they_are_large() -> None:
    def fitted(n_per: int, clusters: int, whiten: float | None) -> tuple[FeatureHead, torch.Tensor]:
        features, _ = clustered_features(n_per=n_per, clusters=clusters)
        head = small_head(features, dataclasses.replace(SMALL, whiten=whiten))
        return head, embed_features(head, features)

    def spread(head: FeatureHead, features: torch.Tensor) -> float:
        """Largest over smallest variance of the skip path's directions."""
        with torch.no_grad():
            variance = head.skip(head.reduced(features).flatten(1)).var(0)
        return float(variance.max() / variance.min())

    # Pairs (instance retrieval): the 10th neighbour is far below the 1st, so version 1 whitens,
    # and its directions' variances come closer together than the plain PCA's.
    plain_head, _ = fitted(2, 80, None)
    white_head, _ = fitted(2, 80, 0.25)
    assert white_head.fit_report["whitened"] and not plain_head.fit_report["whitened"]
    assert white_head.fit_report["density"] < 0.85
    pairs, _ = clustered_features(n_per=2, clusters=80)
    assert spread(white_head, pairs) < 0.8 * spread(plain_head, pairs)
    # Groups of 40 (categories): dense neighbourhoods, the plain PCA, to the bit.
    dense_head, dense = fitted(40, 4, 0.25)
    assert dense_head.fit_report == {"density": dense_head.fit_report["density"], "whitened": False}
    assert dense_head.fit_report["density"] >= 0.85
    assert torch.equal(dense, fitted(40, 4, None)[1])


def test_version_one_needs_no_training_it_keeps_the_geometry_of_the_normalised_patches() -> None:
    # Few enough images that PCA loses nothing: then the untrained, unwhitened head is an isometry
    # of the centred, concatenated patches (each square-rooted and L2-normalised), up to the sphere.
    features, _ = clustered_features(n_per=5)  # 20 images x 5 patches x 32
    cfg = HeadConfig(embed_dim=32, reduce_dim=32, rnn_hidden=8, whiten=None)
    head = small_head(features, cfg)
    patches = F.normalize(features.sqrt(), dim=2).flatten(1)
    centred = F.normalize(patches - patches.mean(0), dim=1)
    got = embed_features(head, features)
    assert torch.allclose(got.norm(dim=1), torch.full((len(got),), 5.0), atol=1e-4)
    assert torch.allclose(got @ got.T / 25.0, centred @ centred.T, atol=1e-4)


def test_version_one_puts_images_of_one_cluster_nearest() -> None:
    features, labels = clustered_features()
    e = embed_features(small_head(features), features)
    d = torch.cdist(e, e).fill_diagonal_(float("inf"))
    assert (labels[d.argmin(dim=1)] == labels).float().mean() > 0.9


def test_fit_works_with_fewer_images_than_the_reduced_width() -> None:
    features, _ = clustered_features(n_per=2)  # 8 images, reduce_dim 16
    head = small_head(features)
    assert torch.isfinite(embed_features(head, features)).all()


def test_mutual_neighbors_are_mutual_and_skip_images_outside_the_pool() -> None:
    points = torch.tensor([[1.0, 0.0], [0.99, 0.14], [0.0, 1.0], [0.14, 0.99], [-1.0, 0.1]])
    partner = mutual_neighbors(points, k=1, pool=10)
    assert partner[:, 0].tolist() == [1, 0, 3, 2, -1]
    pooled = mutual_neighbors(points, k=1, pool=2, seed=0)
    assert (pooled >= 0).sum() <= 2


def test_training_reads_cached_features_only_and_lowers_the_loss() -> None:
    features, _ = clustered_features()
    head = small_head(features)
    result = train_head(head, features, HeadTrainConfig(steps=60, batch_size=32, log_every=10))
    losses = [h["loss"] for h in result.loss_history]
    assert result.stopped == "finished" and result.steps == 60
    assert losses[-1] < losses[0]
    assert all(math.isfinite(x) for x in losses)


def test_every_parameter_of_the_recurrent_head_gets_a_gradient() -> None:
    features, _ = clustered_features()
    head = small_head(features)
    train_head(head, features, HeadTrainConfig(steps=1, batch_size=16))
    head.train()
    out = head(features[:16])
    out.pow(2).sum().backward()
    for name, p in head.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name


def test_known_pairs_pull_components_together_with_a_wide_margin() -> None:
    # The classes differ in a weak direction; a strong nuisance direction dominates the pretrained
    # geometry, so only the known pairs can teach the head which one matters. Non-negative, as
    # post-ReLU6 head features are.
    g = torch.Generator().manual_seed(3)
    labels = torch.arange(4).repeat_interleave(40)
    features = torch.rand(160, 5, 32, generator=g) * 0.3
    features[:, :, :4] += torch.randn(160, 1, 4, generator=g).abs() * 4.0
    features[:, :, 4:8] += torch.eye(4)[labels][:, None] * 1.5
    known = KnownPairs.from_labels(labels, 1.0)
    cfg = HeadTrainConfig(steps=150, batch_size=32, neighbor_pairs=0.0, known_share=1.0)

    def separation(head: FeatureHead) -> float:
        e = embed_features(head, features)
        d = torch.cdist(e, e)
        same = (labels[:, None] == labels[None]) & ~torch.eye(len(labels), dtype=torch.bool)
        return float(d[labels[:, None] != labels[None]].mean() / d[same].mean())

    head = small_head(features)
    before = separation(head)
    train_head(head, features, cfg, known=known)
    assert separation(head) > before + 0.3, (before, separation(head))


def test_training_is_reproducible_and_can_be_cancelled_or_cut_by_time() -> None:
    features, _ = clustered_features()
    cfg = HeadTrainConfig(steps=20, batch_size=16, log_every=5)
    a, b = small_head(features), small_head(features)
    train_head(a, features, cfg)
    train_head(b, features, cfg)
    assert torch.equal(embed_features(a, features), embed_features(b, features))

    cancelled = train_head(small_head(features), features, cfg, callback=lambda p: p.step < 10)
    assert cancelled.stopped == "cancelled" and cancelled.steps == 10
    timed = train_head(small_head(features), features, HeadTrainConfig(steps=10**6, seconds=0.0))
    assert timed.stopped == "time" and timed.steps == 1


def test_known_pairs_must_cover_the_features() -> None:
    features, labels = clustered_features()
    with pytest.raises(ValueError, match="known pairs cover"):
        train_head(small_head(features), features, HeadTrainConfig(steps=1),
                   known=KnownPairs.from_labels(labels[:10], 1.0))  # fmt: skip


def test_the_full_model_embeds_images_as_stage_then_head() -> None:
    model = PretrainedAutoRet(FeatureConfig(input_size=32), HeadConfig(reduce_dim=128))
    x = torch.rand(3, 1, 28, 28)
    cached = model.stage(x)
    model.head.fit(cached.repeat(50, 1, 1) + torch.rand(150, 5, model.feature_config.dim))
    assert torch.allclose(model.embed(x), model.head(cached))
    assert model.output_dim == 128
    assert isinstance(model.stage, FeatureStage)


def test_each_layer_of_a_patch_feature_weighs_the_same_whatever_its_scale() -> None:
    # Stage outputs differ in scale and width; normalised per layer, one layer's scale cannot
    # drown another's: multiplying a layer by 100 moves no embedding, where one-piece
    # normalisation would.
    features, _ = clustered_features()  # N x 5 x 32, split as two layers of 16
    louder = features.clone()
    louder[..., 16:] *= 100.0
    cfg = HeadConfig(embed_dim=8, reduce_dim=16, rnn_hidden=8)
    for segments, moves in (((16, 16), False), (None, True)):
        head = FeatureHead(cfg, feature_dim=32, segments=segments)
        head.fit(features)
        moved = (embed_features(head, louder) - embed_features(head, features)).abs().max()
        assert (float(moved) > 1e-2) == moves, (segments, float(moved))
    with pytest.raises(ValueError, match="add up"):
        FeatureHead(cfg, feature_dim=32, segments=(16, 8))


def trained_from_version_one(
    features: torch.Tensor, cfg: HeadTrainConfig
) -> tuple[torch.Tensor, torch.Tensor]:
    """(version 1's embeddings, the trained head's) of `features`."""
    head = small_head(features)
    start = embed_features(head, features)
    train_head(head, features, cfg)
    return start, embed_features(head, features)


def drift(features: torch.Tensor, cfg: HeadTrainConfig) -> float:
    """How far training moved the embeddings from version 1's, on average."""
    start, end = trained_from_version_one(features, cfg)
    return float((end - start).norm(dim=1).mean())


def test_the_anchor_keeps_the_head_near_version_one() -> None:
    features, _ = clustered_features()
    free = drift(features, HeadTrainConfig(steps=80, batch_size=32, anchor=0.0))
    anchored = drift(features, HeadTrainConfig(steps=80, batch_size=32, anchor=100.0))
    assert anchored < 0.5 * free, (anchored, free)


def test_nearest_neighbors_are_the_closest_rows_and_none_beyond_the_pool() -> None:
    points = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9], [0.7, 0.7]])
    near = nearest_neighbors(points, k=2, pool=4)
    assert near[0].tolist() == [1, 3] and near[2].tolist() == [3, 1]
    assert near[4].tolist() == [-1, -1]


def test_the_full_model_follows_the_feature_grid() -> None:
    model = PretrainedAutoRet(FeatureConfig(input_size=32, grid=3), HeadConfig(), pretrained=False)
    assert model.head.skip.in_features == 10 * HeadConfig().reduce_dim


def test_known_pairs_state_the_relation_of_any_pair() -> None:
    known = KnownPairs.from_constraints(6, must=[(0, 1), (1, 2)], cannot=[(2, 3)])
    a, b = torch.tensor([0, 0, 1, 3, 4, 5]), torch.tensor([2, 3, 1, 0, 5, 0])
    # 0-2 one component; 0-3 across a cannot edge; 1-1 itself; 4 and 5 never answered
    assert known.relation(a, b).tolist() == [1, 0, 1, 0, -1, -1]


def test_neighbours_are_dropped_when_the_known_pairs_say_they_are_not_matches() -> None:
    features, clusters = clustered_features()
    # The annotators' notion of "same" cuts across the clusters the features show.
    answers = torch.arange(len(clusters)) % 4
    cfg = HeadTrainConfig(steps=2, batch_size=16, neighbor_min_density=0.0)
    against = train_head(small_head(features), features, cfg, KnownPairs.from_labels(answers, 1.0))
    agree = train_head(small_head(features), features, cfg, KnownPairs.from_labels(clusters, 1.0))
    assert against.neighbor_evidence is not None and agree.neighbor_evidence is not None
    assert not against.neighbor_evidence.used and against.neighbor_images == 0
    assert against.neighbor_evidence.basis == "known pairs"
    assert against.neighbor_evidence.precision is not None
    assert against.neighbor_evidence.precision < 0.5
    assert agree.neighbor_evidence.used and agree.neighbor_images > 0
    assert "neighbour partners not used" in against.neighbor_evidence.describe()


def test_without_known_pairs_neighbours_are_used_only_where_groups_are_large() -> None:
    cfg = HeadTrainConfig(steps=2, batch_size=16)
    large, _ = clustered_features(n_per=40)
    # Pairs of near-copies in random directions: every image's group is two images.
    g = torch.Generator().manual_seed(1)
    centres = torch.randn(80, 1, 32, generator=g).repeat_interleave(2, dim=0) * 2
    pairs = (centres + 0.05 * torch.randn(160, 5, 32, generator=g)).abs()
    in_large = train_head(small_head(large), large, cfg)
    in_pairs = train_head(small_head(pairs), pairs, cfg)
    assert in_large.neighbor_evidence is not None and in_pairs.neighbor_evidence is not None
    assert in_large.neighbor_evidence.basis == "density" and in_large.neighbor_evidence.used
    assert not in_pairs.neighbor_evidence.used and in_pairs.neighbor_images == 0
    density = in_pairs.neighbor_evidence.density
    assert density is not None and density < cfg.neighbor_min_density


def test_group_noise_widens_the_views_of_large_groups_only() -> None:
    features, labels = clustered_features()  # 4 clusters of 40
    known = KnownPairs.from_labels(labels, 1.0)  # components of 40

    def trained(known: KnownPairs | None = known, **overrides: Any) -> tuple[torch.Tensor, int]:
        cfg = HeadTrainConfig(steps=15, batch_size=16, noise=0.1, **overrides)
        head = small_head(features)
        result = train_head(head, features, cfg, known=known)
        return embed_features(head, features), result.group_images

    # Known components: neighbours off, so only the components' size decides.
    plain, none = trained(group_noise=None, neighbor_pairs=0.0)
    assert none == 0
    assert torch.equal(trained(group_noise=0.1, neighbor_pairs=0.0)[0], plain)  # same noise
    wide, grouped = trained(group_noise=3.0, neighbor_pairs=0.0)
    assert grouped == 160 and not torch.equal(wide, plain)  # groups of 40 >= 10 get it
    small, none = trained(group_noise=3.0, group_min_size=41, neighbor_pairs=0.0)
    assert none == 0 and torch.equal(small, plain)  # groups below the threshold keep `noise`

    # No known pairs: every view gets it where the neighbour check finds large groups, none where
    # it does not.
    assert trained(None, group_noise=3.0)[1] == 160
    assert trained(None, group_noise=3.0, neighbor_min_density=1.0)[1] == 0
    with pytest.raises(ValueError, match="negative"):
        HeadTrainConfig(group_noise=-0.1)
    with pytest.raises(ValueError, match="group_min_size"):
        HeadTrainConfig(group_min_size=0)


def test_where_groups_are_small_views_are_gentler_and_the_anchor_firmer() -> None:
    def cfg(**overrides: Any) -> HeadTrainConfig:
        return HeadTrainConfig(steps=30, batch_size=32, **overrides)

    pairs, _ = clustered_features(n_per=2, clusters=80)  # neighbours off: groups are small
    general = {"small_group_anchor": None, "small_group_patch_dropout": None}
    assert drift(pairs, cfg()) < 0.8 * drift(pairs, cfg(**general))  # measured 0.17 against 0.25
    same = {"small_group_anchor": 1.0, "small_group_patch_dropout": 0.2}  # the general values
    end = trained_from_version_one(pairs, cfg(**same))[1]
    assert torch.equal(end, trained_from_version_one(pairs, cfg(**general))[1])
    # Groups of 40: neighbours used, the small-group values play no part.
    groups, _ = clustered_features()
    end = trained_from_version_one(groups, cfg())[1]
    assert torch.equal(end, trained_from_version_one(groups, cfg(**general))[1])


def test_answers_that_group_few_images_take_a_small_share_of_each_batch() -> None:
    features, labels = clustered_features()  # 4 clusters of 40
    cfg = HeadTrainConfig(steps=20, batch_size=40, pseudo_share=None)

    def run(known: KnownPairs, **overrides: Any) -> tuple[float, torch.Tensor]:
        head = small_head(features)
        result = train_head(head, features, dataclasses.replace(cfg, **overrides), known)
        return result.known_share, embed_features(head, features)

    # Labels on half the images: components of about 20 hold 50 % of them, far above 5 %.
    labelled = KnownPairs.from_labels(labels, 0.5)
    assert run(labelled)[0] == 0.5
    # Two answered pairs and a "different": no large group, so 5 % of each batch.
    few = KnownPairs.from_constraints(160, [(0, 1), (40, 41)], [(1, 40)])
    share, sparse = run(few)
    assert share == 0.05
    always, dense = run(few, sparse_known_share=None)
    assert always == 0.5 and not torch.equal(sparse, dense)
    assert torch.equal(run(few, known_share=0.05, sparse_known_share=None)[1], sparse)
    # Half a batch where large groups hold `pseudo_min_known` of the images (the second stage's
    # condition) or the known pairs touch `sparse_known_below` of them; these touch 50 %.
    assert run(labelled, pseudo_min_known=0.6)[0] == 0.5
    assert run(labelled, pseudo_min_known=0.6, sparse_known_below=0.6)[0] == 0.05
    assert run(labelled, sparse_known_below=0.6)[0] == 0.5
    with pytest.raises(ValueError, match="sparse_known_share"):
        HeadTrainConfig(sparse_known_share=1.5)
    with pytest.raises(ValueError, match="sparse_known_below"):
        HeadTrainConfig(sparse_known_below=-0.1)


def test_images_the_head_places_confidently_join_large_groups_for_a_second_stage() -> None:
    features, labels = clustered_features()  # 4 clusters of 40
    known = KnownPairs.from_labels(labels, 0.5)  # 80 labelled: components of about 20
    cfg = HeadTrainConfig(
        steps=20, batch_size=16, pseudo_steps=10, pseudo_batch_size=8, log_every=5
    )
    seen: list[Progress] = []

    def record(progress: Progress) -> None:
        seen.append(progress)

    result = train_head(small_head(features), features, cfg, known, callback=record)
    assert result.pseudo_images == round(0.4 * 80) and result.steps == 30
    assert result.known_pairs == known.counts()  # what was known, not what was placed
    # One progress over both stages.
    assert [p.step for p in seen] == [5, 10, 15, 20, 25, 30]
    assert [h["step"] for h in result.loss_history] == [5, 10, 15, 20, 25, 30]
    assert seen[3].fraction_done == pytest.approx(20 / 30) and seen[-1].fraction_done == 1.0
    # Two views of each image of a batch: 16 per step, then the second stage's 8.
    assert [p.images_seen for p in seen] == [160, 320, 480, 640, 720, 800]
    assert seen[-1].epoch == pytest.approx(800 / (2 * 160))
    cancelled = train_head(small_head(features), features, cfg, known, lambda p: p.step < 25)
    assert cancelled.stopped == "cancelled" and cancelled.steps == 25

    # The placed images are the loose ones, each joined to its own cluster's group.
    head = small_head(features)
    train_head(head, features, dataclasses.replace(cfg, pseudo_share=None), known)
    groups = large_groups(known, cfg.group_min_size)
    joined = pseudo_members(head, features, known, groups, 0.4)
    placed = torch.tensor([i for images in joined.values() for i in images])
    assert len(placed) == 32 and bool((known.component_of(placed) < 0).all())
    for group, images in joined.items():
        assert bool((labels[images] == labels[known.members[known.offsets[group]]]).all())

    # No second stage without two large groups, when they hold too few of the images, or when
    # it is switched off.
    few = train_head(small_head(features), features,
                     dataclasses.replace(cfg, pseudo_min_known=0.6), known)  # fmt: skip
    assert (few.steps, few.pseudo_images) == (20, 0)  # 80 of 160 images in groups
    small = KnownPairs.from_constraints(160, [(0, 1), (40, 41)], [(1, 40)])
    assert large_groups(small, cfg.group_min_size) == []
    plain = train_head(small_head(features), features, cfg, small)
    assert (plain.steps, plain.pseudo_images) == (20, 0)
    off = train_head(small_head(features), features, dataclasses.replace(cfg, pseudo_share=None),
                     known)  # fmt: skip
    assert (off.steps, off.pseudo_images) == (20, 0)
    with pytest.raises(ValueError, match="pseudo_share"):
        HeadTrainConfig(pseudo_share=1.5)
    with pytest.raises(ValueError, match="pseudo_min_known"):
        HeadTrainConfig(pseudo_min_known=-0.1)
    with pytest.raises(ValueError, match="pseudo_steps"):
        HeadTrainConfig(pseudo_steps=0)
    with pytest.raises(ValueError, match="pseudo_batch_size"):
        HeadTrainConfig(pseudo_batch_size=1)
