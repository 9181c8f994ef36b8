"""Pair sampling and batched augmentation (docs/autoret-method.md sections 1-3).

Self-supervised pairs: a can-link pair is an image and an augmented copy of it, a cannot-link pair
an image and another randomly chosen one. Neighbour pairs (ours) replace some of those can-link
copies by the image and one of its nearest neighbours in pixel space. Known pairs come from class
labels of some images or from human must-link / cannot-link answers, expanded through
transitivity, and replace part of the self-supervised pairs. Everything here works on index
tensors and image batches already in memory; nothing loads data.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class AugmentConfig:
    """Augmentations named by the paper (section 2) with our parameters (ours)."""

    crop_area: tuple[float, float] = (0.6, 1.0)
    crop_aspect: tuple[float, float] = (3 / 4, 4 / 3)
    rotation_deg: float = 15.0
    shear: float = 0.2
    hflip_p: float = 0.5
    brightness: float = 0.3
    contrast: float = 0.3
    noise_sigma: float = 0.03


AUGMENT_PRESETS: dict[str, AugmentConfig] = {
    "default": AugmentConfig(),
    # Milder geometry (ours): centred, upright collections such as Fashion-MNIST lose class
    # evidence to large crops and rotations; 0.015 mAP@1000 better there on the CPU benchmark.
    "light": AugmentConfig(crop_area=(0.8, 1.0), rotation_deg=5.0, shear=0.1),
}


def augment(
    x: torch.Tensor, generator: torch.Generator, cfg: AugmentConfig | None = None
) -> torch.Tensor:
    """Random crop, rotation, shear, flip, contrast, brightness and noise, all as batched ops.

    x: float B x C x H x W in [0, 1] on any device; generator lives on the same device.
    Returns a new B x C x H x W tensor in [0, 1]. The geometric part is one affine warp per image
    (one affine_grid + grid_sample for the batch), zeros outside the image.
    """
    cfg = cfg or AugmentConfig()
    batch, _, height, width = x.shape

    def uniform(low: float, high: float) -> torch.Tensor:
        return low + (high - low) * torch.rand(batch, generator=generator, device=x.device)

    # Crop: a box of the sampled area and aspect ratio (in units of the image side) that fits.
    area = uniform(*cfg.crop_area)
    aspect = torch.exp(uniform(math.log(cfg.crop_aspect[0]), math.log(cfg.crop_aspect[1])))
    box_w = torch.sqrt(area * aspect).clamp(max=1.0)
    box_h = torch.sqrt(area / aspect).clamp(max=1.0)
    shift_x = uniform(-1.0, 1.0) * (1.0 - box_w)
    shift_y = uniform(-1.0, 1.0) * (1.0 - box_h)
    angle = uniform(-cfg.rotation_deg, cfg.rotation_deg) * (math.pi / 180.0)
    shear = uniform(-cfg.shear, cfg.shear)
    flip = torch.where(uniform(0.0, 1.0) < cfg.hflip_p, -1.0, 1.0)

    # Output coords -> input coords (normalized [-1, 1]): flip, shear, rotate in pixel space (so
    # non-square images are not skewed), then scale and shift into the crop box.
    cos, sin = torch.cos(angle), torch.sin(angle)
    r00, r01, r10, r11 = cos, -sin * (height / width), sin * (width / height), cos
    # (R @ Sh @ Flip) with Sh = [[1, shear], [0, 1]] and Flip = diag(flip, 1).
    m00, m01 = r00 * flip, r00 * shear + r01
    m10, m11 = r10 * flip, r10 * shear + r11
    theta = torch.stack(
        [
            torch.stack([box_w * m00, box_w * m01, shift_x], dim=1),
            torch.stack([box_h * m10, box_h * m11, shift_y], dim=1),
        ],
        dim=1,
    ).to(x.dtype)  # B x 2 x 3
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    out = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)

    contrast = uniform(1.0 - cfg.contrast, 1.0 + cfg.contrast).view(batch, 1, 1, 1)
    brightness = uniform(-cfg.brightness, cfg.brightness).view(batch, 1, 1, 1)
    mean = out.mean(dim=(1, 2, 3), keepdim=True)
    out = (out - mean) * contrast + mean + brightness
    if cfg.noise_sigma > 0:
        noise = torch.randn(out.shape, generator=generator, device=x.device, dtype=out.dtype)
        out = out + cfg.noise_sigma * noise
    return out.clamp_(0.0, 1.0)


def pixel_neighbors(
    images: torch.Tensor, k: int, *, side: int = 16, chunk: int = 2048
) -> torch.Tensor:
    """The k nearest neighbours of every image in pixel space (ours): LongTensor N x k.

    images: uint8 or float N x C x H x W on any device. Each image is averaged to grey, pooled to
    at most side x side and L2-normalized after removing its mean, so neighbours are ranked by the
    cosine of centred thumbnails, the "raw pixels" baseline of the benchmark at a fraction of its
    cost. The image itself is never its own neighbour (duplicates still are). Computed in chunks
    of rows: N x chunk similarities at a time.
    """
    n = images.shape[0]
    if not 1 <= k < n:
        raise ValueError(f"k must be between 1 and {n - 1} for {n} images, got {k}")
    x = images.float().mean(dim=1, keepdim=True)
    height, width = x.shape[-2:]
    if height > side or width > side:
        x = F.adaptive_avg_pool2d(x, (min(height, side), min(width, side)))
    x = x.flatten(1)
    x = F.normalize(x - x.mean(dim=1, keepdim=True), dim=1)
    out = torch.empty(n, k, dtype=torch.long, device=images.device)
    for start in range(0, n, chunk):
        rows = torch.arange(start, min(start + chunk, n), device=images.device)
        similarity = x[rows] @ x.T
        similarity[torch.arange(len(rows), device=images.device), rows] = -math.inf
        out[rows] = similarity.topk(k, dim=1).indices
    return out


class _UnionFind:
    """Disjoint sets with path halving and union by size."""

    def __init__(self, n: int) -> None:
        self.parent = list(range(n))
        self.size = [1] * n

    def find(self, a: int) -> int:
        parent = self.parent
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return
        if self.size[ra] < self.size[rb]:
            ra, rb = rb, ra
        self.parent[rb] = ra
        self.size[ra] += self.size[rb]


def _unordered(pairs: Iterable[tuple[int, int]], n_images: int, kind: str) -> set[tuple[int, int]]:
    out = set()
    for a, b in pairs:
        a, b = int(a), int(b)
        if not (0 <= a < n_images and 0 <= b < n_images):
            raise ValueError(f"{kind} pair ({a}, {b}) is outside 0..{n_images - 1}")
        if a != b:
            out.add((min(a, b), max(a, b)))
    return out


class KnownPairs:
    """Known can-link / cannot-link pairs, closed under transitivity (section 3, ours).

    Must-links join images into components (union-find); every pair inside a component is a
    can-link pair, and a cannot-link between two images makes every pair across their two
    components cannot-link. Pairs are never materialized: sampling picks a component (or a pair of
    components) with probability proportional to its number of pairs, then members uniformly, so
    every known pair is equally likely.
    """

    def __init__(
        self,
        n_images: int,
        components: list[list[int]],
        cannot_edges: set[tuple[int, int]],
        explicit_must: int,
        explicit_cannot: int,
        conflicts: int = 0,
    ) -> None:
        self.n_images = n_images
        sizes = [len(c) for c in components]
        self.sizes = torch.tensor(sizes, dtype=torch.long)
        self.offsets = torch.tensor([0, *sizes[:-1]], dtype=torch.long).cumsum(0)
        self.members = torch.tensor([i for c in components for i in c], dtype=torch.long)
        self.edges = torch.tensor(sorted(cannot_edges), dtype=torch.long).view(-1, 2)
        self.explicit_must = explicit_must
        self.explicit_cannot = explicit_cannot
        self.conflicts = conflicts
        self._must_weights = (self.sizes * (self.sizes - 1) // 2).double()
        self._cannot_weights = (
            self.sizes[self.edges[:, 0]] * self.sizes[self.edges[:, 1]]
        ).double()
        self.n_must = int(self._must_weights.sum().item())
        self.n_cannot = int(self._cannot_weights.sum().item())

    @classmethod
    def from_labels(cls, labels: torch.Tensor, fraction: float, seed: int = 0) -> KnownPairs:
        """Pairs known from the class labels of a random `fraction` of the images.

        labels: LongTensor N of class ids. Same class -> can-link, different -> cannot-link; every
        such pair is stated by the labels, so all count as explicit.
        """
        if labels.dim() != 1:
            raise ValueError("known pairs from labels need one class id per image (not multi-hot)")
        if not 0.0 <= fraction <= 1.0:
            raise ValueError(f"labels fraction must be in [0, 1], got {fraction}")
        n = labels.shape[0]
        generator = torch.Generator().manual_seed(seed)
        chosen = torch.randperm(n, generator=generator)[: round(fraction * n)]
        chosen_labels = labels[chosen]
        classes = chosen_labels.unique().tolist()
        components = [chosen[chosen_labels == c].sort().values.tolist() for c in classes]
        edges = {(a, b) for a in range(len(classes)) for b in range(a + 1, len(classes))}
        pairs = cls(n, components, edges, 0, 0)
        pairs.explicit_must, pairs.explicit_cannot = pairs.n_must, pairs.n_cannot
        return pairs

    @classmethod
    def from_constraints(
        cls,
        n_images: int,
        must: Iterable[tuple[int, int]],
        cannot: Iterable[tuple[int, int]],
    ) -> KnownPairs:
        """Pairs from explicit must-link / cannot-link answers, expanded through transitivity.

        A cannot-link inside a must-link component contradicts the must-links; it is dropped and
        counted in `conflicts` rather than failing the whole training run.
        """
        must_set = _unordered(must, n_images, "must-link")
        cannot_set = _unordered(cannot, n_images, "cannot-link")
        uf = _UnionFind(n_images)
        for a, b in must_set:
            uf.union(a, b)
        involved = sorted({i for pair in must_set | cannot_set for i in pair})
        index_of_root: dict[int, int] = {}
        components: list[list[int]] = []
        for i in involved:
            root = uf.find(i)
            if root not in index_of_root:
                index_of_root[root] = len(components)
                components.append([])
            components[index_of_root[root]].append(i)
        edges = set()
        kept_cannot = 0
        for a, b in cannot_set:
            ca, cb = index_of_root[uf.find(a)], index_of_root[uf.find(b)]
            if ca == cb:
                continue
            kept_cannot += 1
            edges.add((min(ca, cb), max(ca, cb)))
        return cls(
            n_images,
            components,
            edges,
            explicit_must=len(must_set),
            explicit_cannot=kept_cannot,
            conflicts=len(cannot_set) - kept_cannot,
        )

    def members_of(self, component: int) -> torch.Tensor:
        """The images of one known component (LongTensor of its size)."""
        start = int(self.offsets[component])
        return self.members[start : start + int(self.sizes[component])]

    def with_members(self, additions: dict[int, list[int]]) -> KnownPairs:
        """These pairs with images joined to components (component id -> images in none yet):
        every pair the joined images make is implied, none explicit (the counts keep
        `explicit_*` and `conflicts`)."""
        component = self.component_of(torch.arange(self.n_images))
        components = [self.members_of(c).tolist() for c in range(len(self.sizes))]
        joined = [i for images in additions.values() for i in images]
        if len(set(joined)) != len(joined) or (
            joined and bool((component[torch.tensor(joined, dtype=torch.long)] >= 0).any())
        ):
            raise ValueError("images joined to components must be in none yet, and join one")
        for c, images in additions.items():
            if not 0 <= c < len(components):
                raise ValueError(f"no component {c}")
            components[c].extend(images)
        edges = {(int(a), int(b)) for a, b in self.edges.tolist()}
        return KnownPairs(
            self.n_images,
            components,
            edges,
            self.explicit_must,
            self.explicit_cannot,
            self.conflicts,
        )

    def counts(self) -> dict[str, int]:
        """Explicit and transitivity-implied pair counts, for logs and the platform's UI."""
        return {
            "must_explicit": self.explicit_must,
            "must_implied": self.n_must - self.explicit_must,
            "cannot_explicit": self.explicit_cannot,
            "cannot_implied": self.n_cannot - self.explicit_cannot,
            "conflicts": self.conflicts,
        }

    def component_of(self, index: torch.Tensor) -> torch.Tensor:
        """Known component of each image in `index` (LongTensor B): its id, or -1 when unknown.

        Two images with the same id >= 0 are a known can-link pair (batch-all pairing uses this).
        """
        if not hasattr(self, "_component"):
            component = torch.full((self.n_images,), -1, dtype=torch.long)
            ids = torch.arange(len(self.sizes)).repeat_interleave(self.sizes)
            component[self.members] = ids
            self._component = component
        return self._component[index.cpu()]

    def relation(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """What is known of each pair (a[i], b[i]) (LongTensors B): 1 can-link (one component),
        0 cannot-link (an edge between their components), -1 unknown."""
        ca, cb = self.component_of(a), self.component_of(b)
        out = torch.full(ca.shape, -1, dtype=torch.long)
        known = (ca >= 0) & (cb >= 0)
        out[known & (ca == cb)] = 1
        if len(self.edges):
            width = len(self.sizes)
            low, high = torch.minimum(ca, cb), torch.maximum(ca, cb)
            keys = self.edges[:, 0] * width + self.edges[:, 1]
            across = known & (ca != cb) & torch.isin(low * width + high, keys)
            out[across] = 0
        return out

    def random_members(self, component: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """One member of each of these components (LongTensor B of component ids), uniformly."""
        return self._member(component, self._uniform_rank(self.sizes[component], generator))

    def _member(self, component: torch.Tensor, rank: torch.Tensor) -> torch.Tensor:
        return self.members[self.offsets[component] + rank]

    def _uniform_rank(self, size: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        u = torch.rand(size.shape, generator=generator, dtype=torch.float64)
        return (u * size).long().clamp_(max=size - 1)

    def sample_must(self, n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """n can-link pairs (two LongTensors n), uniform over all known can-link pairs."""
        if self.n_must == 0:
            raise ValueError("no known can-link pairs to sample")
        comp = torch.multinomial(self._must_weights, n, replacement=True, generator=generator)
        size = self.sizes[comp]
        first = self._uniform_rank(size, generator)
        second = self._uniform_rank(size - 1, generator)
        second += (second >= first).long()  # distinct members
        return self._member(comp, first), self._member(comp, second)

    def sample_cannot(
        self, n: int, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """n cannot-link pairs (two LongTensors n), uniform over all known cannot-link pairs."""
        if self.n_cannot == 0:
            raise ValueError("no known cannot-link pairs to sample")
        edge = torch.multinomial(self._cannot_weights, n, replacement=True, generator=generator)
        ca, cb = self.edges[edge, 0], self.edges[edge, 1]
        first = self._member(ca, self._uniform_rank(self.sizes[ca], generator))
        second = self._member(cb, self._uniform_rank(self.sizes[cb], generator))
        return first, second


@dataclass
class PairBatch:
    """Index pairs for one step: first, second are LongTensor B; is_cannot is BoolTensor B.

    For self-supervised can-link pairs first == second (the augmentation makes the two views
    differ), or second is a pixel-space neighbour of first (neighbour pairs, ours).
    """

    first: torch.Tensor
    second: torch.Tensor
    is_cannot: torch.Tensor
    n_known: int


class PairSampler:
    """Mixes known and self-supervised pairs, 50/50 can/cannot overall (sections 2-3).

    Each half of a batch draws up to `known_fraction` of its pairs from the known pairs of its
    kind, but no more than lets each known pair appear about `max_known_repeats` times per epoch
    (an epoch being N pairs, N = number of images), so a handful of answers is not repeated in
    every batch (ours). Fractional expected counts are rounded stochastically.

    neighbors (ours): LongTensor N x k from `pixel_neighbors`; a `neighbor_fraction` of the
    self-supervised can-link pairs then pair an image with one of its k neighbours (picked
    uniformly) instead of with itself.
    """

    def __init__(
        self,
        n_images: int,
        batch_pairs: int,
        known: KnownPairs | None = None,
        known_fraction: float = 0.5,
        max_known_repeats: float = 10.0,
        seed: int = 0,
        neighbors: torch.Tensor | None = None,
        neighbor_fraction: float = 0.0,
    ) -> None:
        if n_images < 2:
            raise ValueError("training needs at least two images")
        if not 0.0 <= neighbor_fraction <= 1.0:
            raise ValueError(f"neighbor fraction must be in [0, 1], got {neighbor_fraction}")
        if neighbor_fraction > 0 and (neighbors is None or neighbors.shape[0] != n_images):
            raise ValueError("a neighbor fraction needs an N x k neighbors tensor")
        self.neighbors = None if neighbors is None else neighbors.cpu()
        self.neighbor_fraction = neighbor_fraction
        self.n_images = n_images
        self.batch_pairs = batch_pairs
        self.known = known
        self.generator = torch.Generator().manual_seed(seed)
        self.n_can = batch_pairs // 2
        self.n_cannot = batch_pairs - self.n_can
        steps_per_epoch = math.ceil(n_images / batch_pairs)
        self.known_can = 0.0
        self.known_cannot = 0.0
        if known is not None:
            cap = max_known_repeats / steps_per_epoch
            self.known_can = min(known_fraction * self.n_can, cap * known.n_must)
            self.known_cannot = min(known_fraction * self.n_cannot, cap * known.n_cannot)

    def _round(self, expected: float) -> int:
        whole = math.floor(expected)
        return whole + int(torch.rand((), generator=self.generator).item() < expected - whole)

    def sample_images(self) -> ImageBatch:
        """B = `batch_pairs` images for batch-all pairing (ours).

        The known pairs a sampled batch would use are drawn at half the rate and contribute both
        of their images, so known images take up to `known_fraction` of the batch, as known pairs
        do in `sample`; the rest are random images.
        """
        g, n = self.generator, self.n_images
        k_can, k_cannot = self._round(self.known_can / 2), self._round(self.known_cannot / 2)
        parts: list[torch.Tensor] = []
        if k_can:
            assert self.known is not None
            parts.extend(self.known.sample_must(k_can, g))
        if k_cannot:
            assert self.known is not None
            parts.extend(self.known.sample_cannot(k_cannot, g))
        n_known = min(2 * (k_can + k_cannot), self.batch_pairs)
        parts.append(torch.randint(n, (self.batch_pairs - n_known,), generator=g))
        # Rounding both kinds up may overshoot an odd batch by an image or two.
        index = torch.cat(parts)[: self.batch_pairs]
        component = (
            self.known.component_of(index) if self.known is not None else torch.full_like(index, -1)
        )
        return ImageBatch(index, component, n_known)

    def sample(self) -> PairBatch:
        """One batch of `batch_pairs` index pairs on the CPU."""
        g, n = self.generator, self.n_images
        k_can, k_cannot = self._round(self.known_can), self._round(self.known_cannot)
        firsts, seconds = [], []
        if k_can:
            assert self.known is not None
            a, b = self.known.sample_must(k_can, g)
            firsts.append(a)
            seconds.append(b)
        same = torch.randint(n, (self.n_can - k_can,), generator=g)
        partner = same
        if self.neighbors is not None and self.neighbor_fraction > 0:
            use = torch.rand(same.shape, generator=g) < self.neighbor_fraction
            pick = torch.randint(self.neighbors.shape[1], same.shape, generator=g)
            partner = torch.where(use, self.neighbors[same, pick], same)
        firsts.append(same)
        seconds.append(partner)
        if k_cannot:
            assert self.known is not None
            a, b = self.known.sample_cannot(k_cannot, g)
            firsts.append(a)
            seconds.append(b)
        anchor = torch.randint(n, (self.n_cannot - k_cannot,), generator=g)
        other = (anchor + torch.randint(1, n, anchor.shape, generator=g)) % n
        firsts.append(anchor)
        seconds.append(other)
        is_cannot = torch.arange(self.batch_pairs) >= self.n_can
        return PairBatch(torch.cat(firsts), torch.cat(seconds), is_cannot, k_can + k_cannot)


@dataclass
class ImageBatch:
    """B images for batch-all pairing: index is LongTensor B, component LongTensor B (the known
    component of each image, -1 when unknown); n_known counts images drawn from known pairs."""

    index: torch.Tensor
    component: torch.Tensor
    n_known: int

    def same(self) -> torch.Tensor:
        """Bool 2B x 2B can-link matrix over two views of the batch (views 0..B-1, then B..2B-1):
        the same image, or images of one known component. Everything else is cannot-link."""
        index = torch.cat([self.index, self.index])
        component = torch.cat([self.component, self.component])
        same_image = index[:, None] == index[None, :]
        same_component = (component[:, None] == component[None, :]) & (component[:, None] >= 0)
        return same_image | same_component
