"""Which pairs to ask about next: the active-learning strategies and the mining that fills the
queue from the collection's active embeddings.

Every strategy proposes pairs through `MiningContext.accept`, which refuses a pair that is
already in the queue, answered, or implied by the groups and cannot-links: an annotator's time
goes only to answers that add information.
"""

from __future__ import annotations

import random
import statistics
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from django.db import IntegrityError, transaction
from django.db.models import Q
from django.utils import timezone

from labeling.inference import Inference, infer
from labeling.models import DEFAULT_MIX, LabelingSettings, Pair, Strategy
from retrieval import queries
from retrieval.models import Collection, Embedding, Image, ModelVersion
from retrieval.versions import alpha_of

# Neighbours looked at per sampled image: close enough to hold the boundary cases, few enough
# that one LATERAL query over a few hundred images stays well under a second.
NEIGHBOURS = 10
MAX_SAMPLE = 400
CLUSTERS = 16
# merge-gain: the largest groups it asks about, the members that stand for a group's centre, and
# how many of its nearest groups an image or group is asked against.
GROUPS = 50
GROUP_SAMPLE = 64
NEAREST_GROUPS = 3


@dataclass(frozen=True)
class Candidate:
    a: int
    b: int
    score: float


@dataclass
class MiningContext:
    collection: Collection
    version: ModelVersion
    inference: Inference
    taken: set[tuple[int, int]]
    rng: random.Random = field(default_factory=random.Random)
    seeded: bool = False  # samples drawn from `rng` (reproducible) rather than by the database

    @classmethod
    def build(cls, collection: Collection, version: ModelVersion, seed: int | None = None):
        taken = set(Pair.objects.filter(collection=collection).values_list("a_id", "b_id"))
        rng = random.Random(seed)
        return cls(collection, version, infer(collection), taken, rng, seed is not None)

    def accept(self, a: int, b: int) -> bool:
        """Claims (a, b) for this mining round unless it is known, queued or implied."""
        if a == b:
            return False
        key = (min(a, b), max(a, b))
        if key in self.taken or self.inference.implied(*key) is not None:
            return False
        self.taken.add(key)
        return True

    def sample(self, n: int) -> list[int]:
        """Up to n images of the version, at random: by the database (one query, no ids
        shipped), or with a seed from `rng` over every id, so that a seeded mining (the
        benchmarks, tests) asks the same questions each run."""
        embedded = Embedding.objects.filter(version=self.version)
        if not self.seeded:
            return list(embedded.order_by("?").values_list("image_id", flat=True)[: max(1, n)])
        ids = list(embedded.order_by("image_id").values_list("image_id", flat=True))
        return self.rng.sample(ids, min(max(1, n), len(ids)))

    def boundary(self, distances: list[float]) -> float:
        """The decision boundary alpha/2 for a trained version. An untrained network's distances
        have no trained scale, so the median neighbour distance stands in for it."""
        if self.version.kind == ModelVersion.Kind.TRAINED or not distances:
            return alpha_of(self.version) / 2
        return statistics.median(distances)

    def take(self, candidates: list[Candidate], n: int) -> list[Candidate]:
        chosen: list[Candidate] = []
        for candidate in candidates:
            if len(chosen) >= n:
                break
            if self.accept(candidate.a, candidate.b):
                chosen.append(candidate)
        return chosen


def _sample_size(n: int) -> int:
    return min(MAX_SAMPLE, max(20, n * 2))


def uncertain(ctx: MiningContext, n: int) -> list[Candidate]:
    """Neighbour pairs whose distance is nearest the decision boundary alpha/2."""
    rows = queries.neighbour_lists(ctx.version, ctx.sample(_sample_size(n)), NEIGHBOURS)
    boundary = ctx.boundary([d for _, _, d in rows])
    ranked = sorted(rows, key=lambda row: abs(row[2] - boundary))
    return ctx.take([Candidate(a, b, -abs(d - boundary)) for a, b, d in ranked], n)


def disagreement(ctx: MiningContext, n: int) -> list[Candidate]:
    """Neighbour pairs whose distance moved most between the previous ready version and this one,
    each measured in its version's own scale (its median neighbour distance)."""
    previous = (
        ModelVersion.objects.filter(
            collection=ctx.collection,
            status=ModelVersion.Status.READY,
            number__lt=ctx.version.number,
        )
        .order_by("-number")
        .first()
    )
    if previous is None:
        return []
    rows = queries.neighbour_lists(ctx.version, ctx.sample(_sample_size(n)), NEIGHBOURS)
    now = {(min(a, b), max(a, b)): d for a, b, d in rows}
    before = queries.pair_distances(previous, list(now))
    if not before:
        return []
    scale_now = statistics.median(now.values()) or 1.0
    scale_before = statistics.median(before.values()) or 1.0
    moved = [
        Candidate(a, b, abs(now[(a, b)] / scale_now - d / scale_before))
        for (a, b), d in before.items()
    ]
    return ctx.take(sorted(moved, key=lambda c: -c.score), n)


def _squared_distances(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """|x_i - y_j|^2 for every row pair, without the x * y * D intermediate."""
    out = (x * x).sum(1)[:, None] + (y * y).sum(1)[None, :] - 2.0 * (x @ y.T)
    return np.maximum(out, 0.0)


def _kmeans(vectors: np.ndarray, k: int, rng: random.Random, steps: int = 10) -> np.ndarray:
    """Cluster index per row (Lloyd's algorithm from random rows); good enough to spread pairs."""
    centres = vectors[rng.sample(range(len(vectors)), k)]
    labels = np.zeros(len(vectors), dtype=np.int64)
    for _ in range(steps):
        labels = _squared_distances(vectors, centres).argmin(1)
        for c in range(k):
            members = vectors[labels == c]
            if len(members):
                centres[c] = members.mean(0)
    return labels


def diverse(ctx: MiningContext, n: int) -> list[Candidate]:
    """Boundary pairs spread over clusters of the embedding space, one cluster at a time, so a
    batch never spends itself on a single dense region."""
    ids, vectors = queries.sample_for_map(ctx.version, 2000)
    if len(ids) < 2:
        return []
    k = min(CLUSTERS, len(ids))
    labels = _kmeans(vectors, k, ctx.rng)
    per_cluster = max(1, -(-n // k))
    by_cluster: dict[int, list[int]] = {}
    for image_id, label in zip(ids, labels.tolist(), strict=True):
        by_cluster.setdefault(label, []).append(image_id)
    seeds = {
        image_id: cluster
        for cluster, members in by_cluster.items()
        for image_id in ctx.rng.sample(members, min(len(members), per_cluster * 2))
    }
    rows = queries.neighbour_lists(ctx.version, list(seeds), NEIGHBOURS)
    boundary = ctx.boundary([d for _, _, d in rows])
    queues: dict[int, list[Candidate]] = {}
    for a, b, _ in sorted(rows, key=lambda row: abs(row[2] - boundary)):
        queues.setdefault(seeds[a], []).append(Candidate(a, b, float(seeds[a])))
    chosen: list[Candidate] = []
    while len(chosen) < n and any(queues.values()):
        for cluster in list(queues):
            while queues[cluster]:
                candidate = queues[cluster].pop(0)
                if ctx.accept(candidate.a, candidate.b):
                    chosen.append(candidate)
                    break
            if len(chosen) >= n:
                break
    return chosen


def merge_gain(ctx: MiningContext, n: int) -> list[Candidate]:
    """Pairs whose answer settles the most pairs, whichever it is.

    Between groups A and B a "same" implies |A| x |B| must-links and a "different" as many
    cannot-links. Each group is asked against its nearest other groups (largest product of
    sizes first), and each sampled image that is in no group yet against its nearest groups; a
    group is shown by its member nearest the group's centre. An annotator who says "same" to an
    image and a group labels the image, one who says "different" rules the whole group out for
    it. Among the images, those torn between their two nearest groups (the smallest relative
    margin between the two distances) come first: their answer settles what the model is least
    sure of. Everything's nearest candidate comes before anything's second nearest. An image
    that every group is ruled out for is asked against its nearest neighbours, which starts a
    group of a new kind; before any group exists, every question is of that kind.
    """
    inference = ctx.inference
    loose = [i for i in ctx.sample(_sample_size(n)) if inference.group_size(i) == 1]
    groups = sorted(inference.groups().values(), key=len, reverse=True)[:GROUPS]
    if not groups:
        rows = queries.neighbour_lists(ctx.version, loose, 1)
        return ctx.take([Candidate(a, b, 1.0) for a, b, _ in sorted(rows, key=lambda r: r[2])], n)
    shown = [ctx.rng.sample(g, GROUP_SAMPLE) if len(g) > GROUP_SAMPLE else g for g in groups]
    vectors = queries.vectors_of(ctx.version, [i for ids in shown for i in ids] + loose)
    units: list[tuple[int, int]] = []  # (the image shown, size)
    centres: list[np.ndarray] = []
    for members, ids in zip(groups, shown, strict=True):
        present = [i for i in ids if i in vectors]
        if not present:
            continue
        stack = np.stack([vectors[i] for i in present])
        centre = stack.mean(0)
        units.append((present[int(((stack - centre) ** 2).sum(1).argmin())], len(members)))
        centres.append(centre)
    n_groups = len(units)
    for image_id in loose:
        if image_id in vectors:
            units.append((image_id, 1))
            centres.append(vectors[image_id])
    if n_groups == 0 or len(units) < 2:
        return []
    distances = _squared_distances(np.stack(centres), np.stack(centres[:n_groups]))
    ranked: list[tuple[int, int, float, float, int, int, int]] = []
    ruled_out: list[int] = []  # loose images that every group is known to differ from
    for u, (shown_id, size) in enumerate(units):
        loose_image = u >= n_groups
        nearest: list[tuple[int, int, float]] = []
        for t in np.argsort(distances[u]).tolist():
            other, other_size = units[t]
            if t != u and inference.implied(shown_id, other) is None:
                nearest.append((other, other_size, float(distances[u, t])))
                if len(nearest) == NEAREST_GROUPS:
                    break
        if not nearest and loose_image:
            ruled_out.append(shown_id)
        # Groups against groups first, largest gain first; then loose images, those torn
        # between their two nearest groups first (the relative margin of the distances).
        far = [d for _, _, d in nearest[:2]]
        margin = (far[1] - far[0]) / (far[1] + far[0] + 1e-12) if len(far) == 2 else 1.0
        for rank, (other, other_size, d) in enumerate(nearest):
            gain = size * other_size
            order = margin if loose_image else float(-gain)
            ranked.append((rank, int(loose_image), order, d, gain, shown_id, other))
    ranked.sort()
    # An image no group fits may start a group of its own: asked first against its nearest
    # neighbours (those not ruled out), so a kind of image no group has reached yet gets one.
    starts = queries.neighbour_lists(ctx.version, ruled_out, NEAREST_GROUPS)
    return ctx.take(
        [Candidate(a, b, 1.0) for a, b, _ in starts]
        + [Candidate(a, b, float(gain)) for *_, gain, a, b in ranked],
        n,
    )


def random_pairs(ctx: MiningContext, n: int) -> list[Candidate]:
    """The baseline: uniformly drawn image pairs."""
    ids = ctx.sample(max(4, n * 4))
    candidates = [Candidate(ids[i], ids[i + 1], 0.0) for i in range(0, len(ids) - 1, 2)]
    chosen = ctx.take(candidates, n)
    attempts = 0
    while len(chosen) < n and len(ids) > 1 and attempts < n * 10:
        attempts += 1
        a, b = ctx.rng.sample(ids, 2)
        if ctx.accept(a, b):
            chosen.append(Candidate(a, b, 0.0))
    return chosen


STRATEGIES: dict[str, Callable[[MiningContext, int], list[Candidate]]] = {
    Strategy.UNCERTAIN: uncertain,
    Strategy.DISAGREEMENT: disagreement,
    Strategy.DIVERSE: diverse,
    Strategy.MERGE_GAIN: merge_gain,
    Strategy.RANDOM: random_pairs,
}


def quotas(mix: dict[str, float], n: int) -> dict[str, int]:
    """n split over the mix's strategies by weight (largest remainder); unknown names ignored."""
    weights = {k: max(0.0, float(v)) for k, v in mix.items() if k in STRATEGIES}
    total = sum(weights.values()) or 1.0
    if not any(weights.values()):
        weights, total = {str(k): v for k, v in DEFAULT_MIX.items()}, 1.0
    exact = {k: n * w / total for k, w in weights.items()}
    counts = {k: int(v) for k, v in exact.items()}
    for k in sorted(exact, key=lambda k: counts[k] - exact[k])[: n - sum(counts.values())]:
        counts[k] += 1
    return counts


def settings_for(collection: Collection | int) -> LabelingSettings:
    if isinstance(collection, Collection):
        # Loaded with the collection (select_related("labeling_settings")): no query.
        cached = collection._state.fields_cache.get("labeling_settings")
        if isinstance(cached, LabelingSettings):
            return cached
    collection_id = collection.pk if isinstance(collection, Collection) else int(collection)
    obj, _ = LabelingSettings.objects.get_or_create(collection_id=collection_id)
    return obj


def mine(collection: Collection, n: int | None = None, seed: int | None = None) -> int:
    """Adds up to n new pairs to the collection's queue by its strategy mix; returns how many.

    A strategy that finds fewer pairs than its share (no previous version for `disagreement`, no
    groups yet for `merge-gain`) leaves its share to `uncertain`, then `random`. Pairs are
    queued interleaved by weight, so the head of the queue already follows the mix.
    """
    version = collection.active_version
    if version is None:
        return 0
    labeling = settings_for(collection)
    n = labeling.batch_size if n is None else n
    ctx = MiningContext.build(collection, version, seed)
    picked: dict[str, list[Candidate]] = {}
    for name, quota in quotas(labeling.strategy_mix, n).items():
        if quota:
            picked[name] = STRATEGIES[name](ctx, quota)
    for fallback in (Strategy.UNCERTAIN, Strategy.RANDOM):
        missing = n - sum(len(v) for v in picked.values())
        if missing > 0:
            picked.setdefault(fallback, []).extend(STRATEGIES[fallback](ctx, missing))
    ordered = sorted(
        ((rank / max(1, len(cands)), name, c) for name, cands in picked.items()
         for rank, c in enumerate(cands)),
        key=lambda item: (item[0], item[1]),
    )  # fmt: skip
    pairs = [
        Pair(
            collection=collection,
            a_id=min(c.a, c.b),
            b_id=max(c.a, c.b),
            strategy=name,
            score=c.score,
            version=version,
        )
        for _, name, c in ordered
    ]
    try:
        return _queue(collection, version, labeling, pairs)
    except IntegrityError:
        # An image deleted since the candidates were read (retrieval/deletion.py): queue the
        # pairs of the images that are left.
        left = set(Image.objects.filter(collection=collection).values_list("pk", flat=True))
        kept = [p for p in pairs if p.a_id in left and p.b_id in left]
        return _queue(collection, version, labeling, kept)


def _queue(
    collection: Collection, version: ModelVersion, labeling: LabelingSettings, pairs: list[Pair]
) -> int:
    """Queues newly mined pairs; the old version's unanswered, unleased pairs retire."""
    now = timezone.now()
    with transaction.atomic():
        # Pairs scored by an older version's embeddings go; nobody holds or answered them.
        Pair.objects.filter(
            collection=collection, status=Pair.Status.QUEUED, answer_count=0
        ).filter(Q(lease_expires_at__isnull=True) | Q(lease_expires_at__lt=now)).exclude(
            version=version
        ).exclude(version__isnull=True).update(status=Pair.Status.RETIRED)
        created = Pair.objects.bulk_create(pairs, ignore_conflicts=True)
        LabelingSettings.objects.filter(pk=labeling.pk).update(mined_version=version)
    return len(created)
