"""Training the head on cached features with the AutoEmbedder loss (sections 1-3), no images.

Each step draws B images' cached patch features and a partner for each, makes two views in feature
space (Gaussian noise, patch dropout: the whole-image step is always kept) and applies the
batch-all AutoEmbedder loss on the sphere to every pair of the 2B views: an image and its partner
are can-link, as are images of one known component; every other pair is cannot-link.

Partners (ours), in order of trust:
- known pairs (answers, imports, labels and their transitive closure): `known_share` of every
  batch is drawn from images in a known component, partnered with another member of it, so
  answers dominate wherever they group a good part of the collection (`sparse_known_share`
  where they do not);
- mutual nearest neighbours in the pretrained space, for `neighbor_pairs` of the rest, when the
  evidence says they are likely matches (`neighbor_evidence`);
- otherwise the image itself (the two feature-space views differ).
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from retrieval.autoret.features import FeatureConfig
from retrieval.autoret.head import (
    FeatureHead,
    HeadConfig,
    PretrainedAutoRet,
    neighborhood_density,
)
from retrieval.autoret.losses import batch_all_autoembedder_loss
from retrieval.autoret.pairs import KnownPairs
from retrieval.autoret.train import Progress


@dataclass(frozen=True)
class HeadTrainConfig:
    """Settings of `train_head`. The budget is `steps`, cut short by `seconds` when given.

    alpha: the cannot-link target; None puts it at R * sqrt(2), orthogonal on the sphere.
    neighbor_pairs (ours): share of the self-supervised images partnered with one of their mutual
    `neighbor_k` nearest neighbours (cosine, in the untrained head's space, among up to
    `neighbor_pool` images), drawn anew each step; an image without one is partnered with itself.
    noise, patch_dropout (ours): feature-space augmentation: Gaussian noise in units of each
    reduced coordinate's standard deviation over the collection, and the chance of zeroing each
    grid patch of a view.
    group_noise, group_min_size (ours): the noise, in the same units, for views of images in large
    groups (None: `noise` for all): members of a known component of at least `group_min_size`
    images, and every image when the neighbour check finds groups larger than `neighbor_k`
    (`neighbor_evidence` by density or known pairs). A large group of matching images is a
    category spanning a wide region of feature space, and views spread as widely teach the head
    to map that region together. On Fashion-MNIST (seed 0) 0.5 lifted 10 % labels from 0.817 to
    0.841 mAP@1000 and 1 % from 0.752 to 0.765, self-supervised unchanged (0.756). Pairs and
    triples (an emoji in two styles) are identities told apart by detail: the same noise for
    every view cost emoji 0.530 -> 0.358 (0.5), and for the views of its labelled pairs
    0.530 -> 0.453, so there (neighbours not used, components of two) views keep `noise`. The
    threshold lies between two measured data sets only (docs/benchmarks.md).
    small_group_anchor, small_group_patch_dropout (ours): `anchor` and `patch_dropout` where the
    neighbour check finds groups small (neighbours not used; None keeps the general value).
    There the head learns from views and known pairs only, and dropped patches teach invariance
    to the detail that tells an image's one or two matches from the rest: on emoji (seed 0,
    version 1 whitened, 0.600) the self-supervised head fell to 0.549 with dropout 0.2 and
    anchor 1, 0.591 with 0.05 and 10 (10 % labels 0.547 -> 0.590).
    known_share, sparse_known_share, sparse_known_below (ours): share of each batch drawn from
    images with known pairs: `known_share` where known components of `group_min_size` or more
    hold at least `pseudo_min_known` of the images between them (the second stage's condition)
    or the known pairs touch at least `sparse_known_below` of the images, else
    `sparse_known_share` (None: `known_share` always). A few hundred answers touch a few hundred
    images, and half of every batch drawn from them trains the head on the same images over and
    over (each singleton partnered with itself) in place of the neighbour pairs of the rest: on
    Fashion-MNIST (seed 0, 5,000 images, merge-gain's answers at the platform's cadence) 0.5
    took the head from 0.680 self-supervised to 0.643 after 50 answers and 0.633 after 150, and
    reached 0.695 after 500; 0.05 gave 0.680 / 0.697 / 0.726 (0.02: 0.727 at 500), and 1 %
    labels 0.775 instead of 0.752. Where labels cover many images, half the batch is what
    lifts the head: 10 % labels 0.852 at 0.5, 0.842 at 0.1, 0.845 at 0.05. So do answers that
    touch many images, mostly "different" (a cannot-link teaches only when both its images share
    a batch): random pairs' 1,000 answers touch 36 % of the images, and 0.05 gave 0.687 against
    0.698 at 0.5 (seed 0); with 0.05 for them random's curve fell 0.006-0.028. Merge-gain's 500
    answers touch 9 %, random's first 500 20 %: the 15 % lies between measured cases only.
    anchor (ours): weight of a penalty on how far each view's embedding moves from where the
    untrained head (version 1) puts it, as mean squared distance over R^2. Without it, the
    cannot-link half of the loss spreads a small collection over the sphere and forgets the
    pretrained neighbourhoods: on emoji, identity mAP@10 fell from 0.46 to 0.13.
    spare_k (ours): pairs of images among each other's `spare_k` nearest neighbours in the
    pretrained space are not pushed apart as cannot-link (they may well match); 0 pushes all.
    Measured at 10: no change on Fashion-MNIST (0.708 either way) nor on emoji, so off.
    neighbor_min_precision, neighbor_min_judged, neighbor_min_density (ours): whether neighbour
    partners are used at all (`neighbor_evidence`). Where the known pairs judge at least
    `neighbor_min_judged` neighbour pairs (both images known, their relation known), neighbours are
    used when at least `neighbor_min_precision` of those are can-link. Otherwise a label-free
    guess: neighbours are used when the neighbourhoods are dense, the 10th neighbour's cosine in
    version 1's space at least `neighbor_min_density` of the 1st on average (groups larger than
    `neighbor_k`). Fashion-MNIST gives 0.92 (mutual neighbours 84 % the same class), emoji 0.78
    (12 % the same emoji, where training on them fell from 0.46 to 0.27): the threshold lies
    between two measured data sets only. 0 switches a check off.
    pseudo_share, pseudo_min_known, pseudo_steps, pseudo_lr, pseudo_batch_size (ours):
    self-training where known pairs form large groups (at least two components of
    `group_min_size` or more, holding at least `pseudo_min_known` of the images between them).
    After `steps`, each image in no known component is placed by the trained head: the top
    `pseudo_share` of them by margin between their two nearest large groups (cosine to each
    group's mean embedding) join the nearer group, and the head trains `pseudo_steps` more steps
    of `pseudo_batch_size` images at `pseudo_lr` on those pairs, continuing from (and anchored
    to) where the first stage left it. None skips the stage. On
    Fashion-MNIST with 10 % labels (seeds 0-2) the joined images were 97.7 % right (seed 0) and
    the head rose from 0.836-0.841 to 0.851-0.856 mAP@1000; 600 more steps without them gave
    0.840 (seed 0), a share of 0.6 0.846, 300 steps 0.849-0.852 (docs/benchmarks.md). Where
    the groups hold few images they stand for only part of the collection, and images of the
    rest join the wrong group: with merge-gain's first 150 answers (about 2 % of the images in
    groups) the stage took Fashion-MNIST from 0.647 to 0.605, with a cap on each group's growth
    0.627, with images farther from a group's mean than most of its members left out 0.639.
    Half the first stage's batch makes the stage less than half as dear (a 10,000-image
    retraining's head training on the worker's one thread: 65 s -> 48 s) at nearly the same
    quality: 0.852 / 0.852 / 0.850 with 10 % labels (seeds 0-2; 0.852 / 0.856 / 0.851 at 256),
    5 % 0.826 / 0.818 / 0.832 (0.820 / 0.821 / 0.828); 500 steps or a rate of 0.0015 at 128
    changed seed 2 by 0.0005.
    """

    steps: int = 600
    seconds: float | None = None
    batch_size: int = 256
    lr: float = 1e-3
    alpha: float | None = None
    can_weight: float = 0.5
    neighbor_pairs: float = 1.0
    neighbor_k: int = 5
    neighbor_pool: int = 20_000
    noise: float = 0.1
    group_noise: float | None = 0.5
    group_min_size: int = 10
    small_group_anchor: float | None = 10.0
    small_group_patch_dropout: float | None = 0.05
    patch_dropout: float = 0.2
    known_share: float = 0.5
    sparse_known_share: float | None = 0.05
    sparse_known_below: float = 0.15
    anchor: float = 1.0
    spare_k: int = 0
    neighbor_min_precision: float = 0.5
    neighbor_min_judged: int = 20
    neighbor_min_density: float = 0.85
    pseudo_share: float | None = 0.4
    pseudo_min_known: float = 0.05
    pseudo_steps: int = 400
    pseudo_lr: float = 2e-3
    pseudo_batch_size: int = 128
    seed: int = 0
    device: str = "cpu"
    log_every: int = 50

    def __post_init__(self) -> None:
        for name in (
            "neighbor_pairs",
            "patch_dropout",
            "small_group_patch_dropout",
            "known_share",
            "sparse_known_share",
            "sparse_known_below",
            "can_weight",
            "neighbor_min_precision",
            "neighbor_min_density",
            "pseudo_share",
            "pseudo_min_known",
        ):
            value = getattr(self, name)
            if value is not None and not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {value}")
        if self.noise < 0 or (self.group_noise is not None and self.group_noise < 0):
            raise ValueError("noise and group_noise must not be negative")
        if self.group_min_size < 1:
            raise ValueError(f"group_min_size must be at least 1, got {self.group_min_size}")
        if self.steps < 1 or self.pseudo_steps < 1:
            raise ValueError("steps and pseudo_steps must be at least 1")
        if self.batch_size < 2 or self.pseudo_batch_size < 2:
            raise ValueError("batch_size and pseudo_batch_size must be at least 2")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class HeadTrainResult:
    steps: int
    elapsed_s: float
    final_loss: float
    loss_history: list[dict[str, float]]
    stopped: str  # "finished", "time" (seconds ran out) or "cancelled"
    neighbor_images: int  # images with at least one neighbour partner
    group_images: int  # images whose views got `group_noise` (members of large groups)
    known_pairs: dict[str, int] | None
    neighbor_evidence: NeighborEvidence | None = None
    pseudo_images: int = 0  # images that joined a large group for the second stage
    known_share: float = 0.0  # the share of each batch drawn from known pairs (0: none known)

    @property
    def neighbors(self) -> str | None:
        """The neighbour decision in words, None when neighbours were not asked for."""
        return self.neighbor_evidence.describe() if self.neighbor_evidence else None


@dataclass(frozen=True)
class NeighborEvidence:
    """Why neighbour partners were used or not (`neighbor_evidence`)."""

    used: bool
    basis: str  # "known pairs" or "density"
    judged: int  # neighbour pairs whose relation the known pairs state
    precision: float | None  # can-link share of those
    density: float | None  # mean cosine of the 10th neighbour over the 1st

    def describe(self) -> str:
        verdict = "used" if self.used else "not used"
        if self.basis == "known pairs":
            return (
                f"neighbour partners {verdict}: {self.precision:.0%} of {self.judged} "
                "neighbour pairs the known pairs judge are matches"
            )
        return f"neighbour partners {verdict}: neighbourhood density {self.density:.2f}"


def neighbor_evidence(
    start: torch.Tensor, neighbors: torch.Tensor, known: KnownPairs | None, cfg: HeadTrainConfig
) -> NeighborEvidence:
    """Whether mutual neighbours are likely matches in this collection (see HeadTrainConfig)."""
    if known is not None and len(known.members) > 1:
        rows, cols = (neighbors >= 0).nonzero(as_tuple=True)
        relation = known.relation(rows, neighbors[rows, cols])
        judged = int((relation >= 0).sum())
        if judged >= max(cfg.neighbor_min_judged, 1):
            precision = float((relation == 1).sum()) / judged
            used = precision >= cfg.neighbor_min_precision
            return NeighborEvidence(used, "known pairs", judged, precision, None)
    density = neighborhood_density(start)
    return NeighborEvidence(density >= cfg.neighbor_min_density, "density", 0, None, density)


@torch.no_grad()
def mutual_neighbors(
    vectors: torch.Tensor, k: int, pool: int, seed: int = 0, chunk: int = 2048
) -> torch.Tensor:
    """Each row's mutual k-nearest neighbours by cosine: LongTensor N x k, -1 where none.

    j is a mutual neighbour of i when each is among the other's k nearest. Only rows of a seeded
    sample of `pool` images take part (exact search costs N^2); the others get no neighbour.
    """
    n = vectors.shape[0]
    out = torch.full((n, k), -1, dtype=torch.long)
    generator = torch.Generator().manual_seed(seed)
    rows = torch.randperm(n, generator=generator)[:pool].sort().values if n > pool else None
    z = F.normalize(vectors.float() if rows is None else vectors[rows].float(), dim=1)
    m = z.shape[0]
    if m <= k:
        return out
    nearest = torch.empty((m, k), dtype=torch.long)
    for begin in range(0, m, chunk):
        sims = z[begin : begin + chunk] @ z.T
        sims[torch.arange(sims.shape[0]), torch.arange(begin, begin + sims.shape[0])] = -2.0
        nearest[begin : begin + chunk] = sims.topk(k, dim=1).indices
    local = torch.arange(m)
    mutual = (nearest[nearest] == local[:, None, None]).any(dim=2)  # m x k
    ids = local if rows is None else rows
    out[ids] = torch.where(mutual, ids[nearest], torch.full_like(nearest, -1))
    return out


@torch.no_grad()
def nearest_neighbors(vectors: torch.Tensor, k: int, pool: int, chunk: int = 2048) -> torch.Tensor:
    """Each row's k nearest rows by cosine (LongTensor N x k; -1 beyond the first `pool` rows,
    whose exact search would cost too much)."""
    n = vectors.shape[0]
    out = torch.full((n, k), -1, dtype=torch.long)
    m = min(n, pool)
    z = F.normalize(vectors[:m].float(), dim=1)
    k_found = min(k, m - 1)
    if k_found < 1:
        return out
    for begin in range(0, m, chunk):
        sims = z[begin : begin + chunk] @ z.T
        sims[torch.arange(sims.shape[0]), torch.arange(begin, begin + sims.shape[0])] = -2.0
        out[begin : begin + sims.shape[0], :k_found] = sims.topk(k_found, dim=1).indices
    return out


def _views(
    p: torch.Tensor, noise: torch.Tensor, dropout: float, generator: torch.Generator
) -> torch.Tensor:
    """A feature-space view of reduced features B x T x R: Gaussian noise with standard deviation
    `noise` (R per coordinate, or B x 1 x R per view), then grid patches dropped."""
    out = p + noise * torch.randn(p.shape, generator=generator).to(p.device)
    if dropout > 0 and p.shape[1] > 1:
        keep = torch.rand((p.shape[0], p.shape[1] - 1, 1), generator=generator) >= dropout
        out = torch.cat([out[:, :-1] * keep.to(out.dtype), out[:, -1:]], dim=1)
    return out


def large_groups(known: KnownPairs | None, min_size: int) -> list[int]:
    """The known components of at least `min_size` images (their ids)."""
    if known is None:
        return []
    return (known.sizes >= min_size).nonzero().flatten().tolist()


@torch.no_grad()
def pseudo_members(
    head: FeatureHead, features: torch.Tensor, known: KnownPairs, groups: list[int], share: float
) -> dict[int, list[int]]:
    """Images in no known component placed by the head (`HeadTrainConfig.pseudo_share`): the top
    `share` of them by margin between the cosines to their two nearest `groups` (each group's
    mean embedding), as group id -> images joining it. Needs at least two groups."""
    if len(groups) < 2:
        raise ValueError("placing images needs at least two groups")
    u = F.normalize(embed_features(head, features), dim=1)
    centres = torch.stack([F.normalize(u[known.members_of(c)].mean(0), dim=0) for c in groups])
    nearest = (u @ centres.T).topk(2, dim=1)
    margin = nearest.values[:, 0] - nearest.values[:, 1]
    loose = (known.component_of(torch.arange(features.shape[0])) < 0).nonzero().flatten()
    chosen = loose[margin[loose].topk(round(share * len(loose))).indices].sort().values
    joined: dict[int, list[int]] = {}
    group_of = torch.tensor(groups)[nearest.indices[chosen, 0]]
    for image, group in zip(chosen.tolist(), group_of.tolist(), strict=True):
        joined.setdefault(group, []).append(image)
    return joined


@dataclass(frozen=True)
class _Plan:
    """Where a stage sits in the whole training: steps and views seen before it, steps planned
    in all, when the whole began and its time budget (for progress and history)."""

    before: int
    total: int
    began: float
    seconds: float | None
    views_before: int = 0


def train_head(
    head: FeatureHead,
    features: torch.Tensor,
    cfg: HeadTrainConfig,
    known: KnownPairs | None = None,
    callback: Callable[[Progress], bool | None] | None = None,
) -> HeadTrainResult:
    """Trains `head` (already `fit`) in place on cached features N x T x F (float16 is fine):
    `steps` on the known pairs and the self-supervised ones, then, where known pairs form large
    groups, `pseudo_steps` with the images the head places confidently joined to them.

    `callback` gets a `Progress` every `log_every` steps (over both stages) and may return False
    to cancel.
    """
    began = time.perf_counter()
    groups = large_groups(known, cfg.group_min_size)
    in_groups = int(known.sizes[groups].sum()) if known is not None and groups else 0
    n = features.shape[0]
    grouped = in_groups >= cfg.pseudo_min_known * n
    touched = known is not None and len(known.members) >= cfg.sparse_known_below * n
    if not (grouped or touched) and cfg.sparse_known_share is not None:
        cfg = dataclasses.replace(cfg, known_share=cfg.sparse_known_share)
    second = bool(cfg.pseudo_share) and len(groups) >= 2 and grouped
    plan = _Plan(0, cfg.steps + (cfg.pseudo_steps if second else 0), began, cfg.seconds)
    result = _train_stage(head, features, cfg, known, callback, plan)
    if not second or result.stopped != "finished":
        return result
    assert known is not None and cfg.pseudo_share is not None
    joined = pseudo_members(head, features, known, groups, cfg.pseudo_share)
    n_joined = sum(len(images) for images in joined.values())
    remaining = None if cfg.seconds is None else cfg.seconds - (time.perf_counter() - began)
    if not n_joined or (remaining is not None and remaining <= 0):
        return result
    stage = dataclasses.replace(
        cfg,
        steps=cfg.pseudo_steps,
        lr=cfg.pseudo_lr,
        batch_size=cfg.pseudo_batch_size,
        seed=cfg.seed + 1,
        seconds=remaining,
    )
    more = _train_stage(
        head,
        features,
        stage,
        known.with_members(joined),
        callback,
        dataclasses.replace(
            plan, before=result.steps, views_before=2 * cfg.batch_size * result.steps
        ),
    )
    return dataclasses.replace(
        result,
        steps=result.steps + more.steps,
        elapsed_s=time.perf_counter() - began,
        final_loss=more.final_loss,
        loss_history=result.loss_history + more.loss_history,
        stopped=more.stopped,
        pseudo_images=n_joined,
    )


def _train_stage(
    head: FeatureHead,
    features: torch.Tensor,
    cfg: HeadTrainConfig,
    known: KnownPairs | None,
    callback: Callable[[Progress], bool | None] | None,
    plan: _Plan,
) -> HeadTrainResult:
    """One stage of `train_head`: cfg.steps on these known pairs, from where the head is."""
    n = features.shape[0]
    if n < 2:
        raise ValueError("training needs at least two images")
    if known is not None and known.n_images != n:
        raise ValueError(f"known pairs cover {known.n_images} images, the features {n}")
    device = torch.device(cfg.device)
    head.to(device).train()
    generator = torch.Generator().manual_seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    alpha = cfg.alpha if cfg.alpha is not None else head.config.sphere_radius * math.sqrt(2.0)
    # Reduce once: the PCA projection is fixed, and B x T x 1280 per step would cost 5x more.
    with torch.no_grad():
        reduced = torch.cat(
            [head.reduced(features[i : i + 4096].to(device)) for i in range(0, n, 4096)]
        )
        start = F.normalize(head.skip(reduced.flatten(1)), dim=1).cpu()
        # Noise in units of each coordinate's spread over the collection.
        spread = reduced.flatten(0, 1).std(dim=0)
        noise = cfg.noise * spread
        group_noise = cfg.group_noise * spread if cfg.group_noise is not None else noise
    neighbors = torch.full((n, 1), -1, dtype=torch.long)
    evidence = None
    if cfg.neighbor_pairs > 0:
        neighbors = mutual_neighbors(start, cfg.neighbor_k, cfg.neighbor_pool, cfg.seed)
        evidence = neighbor_evidence(start, neighbors, known, cfg)
        dropped = torch.rand(n, generator=generator) >= cfg.neighbor_pairs
        neighbors[dropped] = -1
        if not evidence.used:
            neighbors.fill_(-1)
    n_neighbors = int((neighbors >= 0).any(dim=1).sum())
    spared = nearest_neighbors(start, cfg.spare_k, cfg.neighbor_pool) if cfg.spare_k else None
    has_known = known is not None and len(known.members) > 1 and cfg.known_share > 0
    component = known.component_of(torch.arange(n)) if known is not None else None
    # Images whose views get `group_noise`: members of large known components, and all of
    # them where the neighbour check found large groups.
    in_group = torch.zeros(n, dtype=torch.bool)
    if cfg.group_noise is not None:
        if evidence is not None and evidence.used:
            in_group.fill_(True)
        if known is not None and component is not None:
            size = known.sizes[component.clamp(min=0)]
            in_group |= (component >= 0) & (size >= cfg.group_min_size)
    # Where the neighbour check finds groups small (neighbours off), views teach invariance to
    # the detail that tells matches apart: gentler views, a firmer anchor.
    small_groups = evidence is not None and not evidence.used
    dropout, anchor = cfg.patch_dropout, cfg.anchor
    if small_groups and cfg.small_group_patch_dropout is not None:
        dropout = cfg.small_group_patch_dropout
    if small_groups and cfg.small_group_anchor is not None:
        anchor = cfg.small_group_anchor
    start_weight, start_bias = head.skip.weight.detach().clone(), head.skip.bias.detach().clone()
    radius = head.config.sphere_radius
    optimizer = torch.optim.Adam(head.parameters(), lr=cfg.lr)
    b = cfg.batch_size
    n_known = round(cfg.known_share * b) if has_known else 0
    history: list[dict[str, float]] = []
    window: list[float] = []
    began = time.perf_counter()
    stopped = "finished"
    step = 0
    for step in range(1, cfg.steps + 1):
        first = torch.randint(n, (b,), generator=generator)
        pick = neighbors[first, torch.randint(neighbors.shape[1], (b,), generator=generator)]
        second = torch.where(pick >= 0, pick, first)
        if n_known:
            assert known is not None
            first[:n_known] = known.members[
                torch.randint(len(known.members), (n_known,), generator=generator)
            ]
            # Another member of each image's component (itself in a component of one).
            second[:n_known] = known.random_members(known.component_of(first[:n_known]), generator)
        ids = torch.cat([first, second])
        pair = torch.arange(b).repeat(2)
        same = (pair[:, None] == pair[None]) | (ids[:, None] == ids[None])
        if component is not None:
            c = component[ids]
            same |= (c[:, None] == c[None]) & (c[:, None] >= 0)
        view_noise = torch.where(in_group[ids].to(device)[:, None, None], group_noise, noise)
        x = _views(reduced[ids.to(device)], view_noise, dropout, generator)
        e = head.embed_reduced(x)
        ignore = None
        if spared is not None:
            near = spared[ids]  # 2B x k
            ignore = (near[:, :, None] == ids[None, None, :]).any(dim=1)
            ignore = (ignore | ignore.T).to(device)
        loss = batch_all_autoembedder_loss(e, same.to(device), alpha, cfg.can_weight, ignore)
        if anchor > 0:
            with torch.no_grad():
                e0 = F.normalize(F.linear(x.flatten(1), start_weight, start_bias), dim=1) * radius
            loss = loss + anchor * (e - e0).pow(2).sum(1).mean() / radius**2
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        window.append(float(loss.detach()))
        elapsed = time.perf_counter() - began
        out_of_time = cfg.seconds is not None and elapsed >= cfg.seconds
        if step % cfg.log_every == 0 or step == cfg.steps or out_of_time:
            mean_loss = sum(window) / len(window)
            window.clear()
            overall, so_far = plan.before + step, time.perf_counter() - plan.began
            history.append({"step": overall, "loss": mean_loss, "elapsed_s": so_far})
            done = overall / plan.total
            if plan.seconds is not None:
                done = max(done, so_far / max(plan.seconds, 1e-9))
            views = plan.views_before + 2 * b * step
            progress = Progress(
                step=overall,
                epoch=views / (2 * n),
                images_seen=views,
                loss=mean_loss,
                images_per_s=views / max(so_far, 1e-9),
                elapsed_s=so_far,
                eta_s=so_far * (1 - done) / done if done > 0 else None,
                fraction_done=min(done, 1.0),
            )
            if callback is not None and callback(progress) is False:
                stopped = "cancelled"
                break
        if out_of_time:
            stopped = "time"
            break
    head.eval()
    return HeadTrainResult(
        steps=step,
        elapsed_s=time.perf_counter() - began,
        final_loss=history[-1]["loss"] if history else float("nan"),
        loss_history=history,
        stopped=stopped,
        neighbor_images=n_neighbors,
        group_images=int(in_group.sum()),  # all False without group_noise
        known_pairs=known.counts() if known is not None else None,
        neighbor_evidence=evidence,
        known_share=cfg.known_share if n_known else 0.0,
    )


def version_one(
    features: torch.Tensor, feature_cfg: FeatureConfig, head_cfg: HeadConfig, seed: int = 0
) -> PretrainedAutoRet:
    """The untrained model (the platform's version 1): the head fitted, unsupervised, on these
    cached features N x T x F and trained no further."""
    model = PretrainedAutoRet(feature_cfg, head_cfg)
    model.head.fit(features, seed=seed)
    return model


@torch.no_grad()
def embed_features(
    head: FeatureHead, features: torch.Tensor, batch_size: int = 4096
) -> torch.Tensor:
    """Cached features N x T x F -> float32 embeddings N x D, in eval mode, on the CPU."""
    was_training = head.training
    head.eval()
    device = head.skip.weight.device
    try:
        out = [
            head(features[i : i + batch_size].to(device)).float().cpu()
            for i in range(0, features.shape[0], batch_size)
        ]
    finally:
        head.train(was_training)
    return torch.cat(out) if out else torch.empty(0, head.config.embed_dim)
