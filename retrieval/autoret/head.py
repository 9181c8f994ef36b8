"""AutoRet on cached features: a recurrent fusion head over frozen patch features.

docs/autoret-method.md section 4: the spatial network is the frozen ImageNet backbone of
`features.FeatureStage`; what trains is the recurrent fusion (a bidirectional GRU over the patch
sequence) and the projection, with the AutoEmbedder pairwise loss (section 1).

Built on the pretrained geometry rather than replacing it (ours): features are normalised and
reduced by PCA (fitted once, unsupervised, on the collection's own features); a linear skip from
all patches starts as the PCA of their concatenation, and the GRU branch adds to it from zero. So
the untrained head already embeds every image by its pretrained features, which is the platform's
version 1, and training moves from there. In a throwaway prototype on emoji, a head trained from
scratch on 500 answers fell below the frozen features it started from, while a map started at the
identity rose above them (issue 13).

Shapes: features B x T x F (T = grid^2 + 1 steps, whole image last; F = 624 for the default
layers, 1280 for the head convolution's), embeddings B x D.
The network only: it loads no data and writes no files.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from retrieval.autoret.configs import from_json_dict
from retrieval.autoret.constants import EMBED_DIM
from retrieval.autoret.features import FeatureConfig, FeatureStage


@dataclass(frozen=True)
class HeadConfig:
    """The trainable part. Fields marked (ours) fill in what the paper leaves open."""

    embed_dim: int = EMBED_DIM
    # (ours) PCA width each patch feature (624 or 1280) is reduced to before the head: less work
    # per step.
    reduce_dim: int = 256
    recurrent: bool = True
    rnn_hidden: int = 128
    # (ours) as ModelConfig.sphere_radius: embeddings lie on a sphere of this radius.
    sphere_radius: float = 5.0
    # (ours) partial whitening of the skip path's start where the collection looks like instance
    # retrieval (small groups): each principal direction scaled by its variance to the power
    # -whiten when the neighbourhood density of the plain PCA (`neighborhood_density`, as the
    # neighbour check measures it) is below `whiten_below_density`. None never whitens.
    # Measured (seed 0): emoji version 1 0.545 -> 0.608 identity mAP@10 at 0.25 (0.591 at 0.15,
    # 0.595 at 0.5); Fashion-MNIST's classes 0.737 -> 0.698 at 0.25, which the density (0.92
    # against emoji's 0.78) keeps it from. The threshold lies between two measured data sets.
    whiten: float | None = 0.25
    whiten_below_density: float = 0.85

    def __post_init__(self) -> None:
        if self.embed_dim > self.reduce_dim:
            raise ValueError(
                f"embed_dim ({self.embed_dim}) must not exceed reduce_dim ({self.reduce_dim})"
            )
        if not self.sphere_radius > 0:
            raise ValueError(f"sphere_radius must be positive, got {self.sphere_radius}")
        if self.whiten is not None and not 0.0 <= self.whiten <= 0.5:
            raise ValueError(f"whiten must be in [0, 0.5] or None, got {self.whiten}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> HeadConfig:
        """A recorded configuration; one recorded before `whiten` existed never whitened."""
        return from_json_dict(cls, {"whiten": None, **values}, "head")


def _top_directions(x: torch.Tensor, k: int) -> torch.Tensor:
    """The k leading principal directions of centred rows x (n x m) as columns m x k, from the
    m x m covariance (cheap for many rows); padded with zero columns where rank runs out."""
    x = x.double()
    values, vectors = torch.linalg.eigh(x.T @ x)
    order = values.argsort(descending=True)[: min(k, x.shape[0])]
    top = vectors[:, order].float()
    # eigh's signs are arbitrary: fix each direction so that its largest entry is positive.
    top = top * torch.sign(top.gather(0, top.abs().argmax(0, keepdim=True)))
    return F.pad(top, (0, k - top.shape[1]))


@torch.no_grad()
def neighborhood_density(vectors: torch.Tensor, k: int = 10, sample: int = 2000) -> float:
    """Mean over (a fixed sample of) rows of cos(10th nearest) / cos(1st nearest) by cosine: near 1
    where each image has many about equally close neighbours (large groups), lower where
    similarity falls off after the first few (groups of two or three)."""
    n = vectors.shape[0]
    if n <= k:
        return 0.0
    z = F.normalize(vectors.float(), dim=1)
    rows = torch.linspace(0, n - 1, min(sample, n)).long()
    sims = z[rows] @ z.T
    sims[torch.arange(len(rows)), rows] = -2.0
    top = sims.topk(k, dim=1).values
    first = top[:, 0].clamp(min=1e-6)
    return float((top[:, -1].clamp(min=0) / first).mean())


class FeatureHead(nn.Module):
    """Cached patch features B x T x F -> embeddings B x D on the sphere.

    Each part of a patch feature (one per backbone layer, `segments`) is power-normalised (signed
    square root; for the post-ReLU6 head features the plain square root) and L2-normalised, the
    parts weighted equally, then projected on the top `reduce_dim` principal directions of all
    patches.
    The skip path maps the T concatenated patch coordinates to D, starting as their PCA: on
    emoji, the concatenated patches retrieved 0.05 better than the whole-image feature alone, and
    the square root 0.02 better again (docs/benchmarks.md). `fit` sets both projections (buffers
    and the skip's start, saved with the weights) from a sample of features; it must run once.
    """

    mean: torch.Tensor
    basis: torch.Tensor
    fitted: torch.Tensor

    def __init__(
        self,
        cfg: HeadConfig,
        feature_dim: int = 1280,
        steps: int = 5,
        segments: tuple[int, ...] | None = None,
    ) -> None:
        super().__init__()
        self.config = cfg
        self.segments = segments or (feature_dim,)
        if sum(self.segments) != feature_dim:
            raise ValueError(f"segments {self.segments} do not add up to {feature_dim}")
        r, d, h = cfg.reduce_dim, cfg.embed_dim, cfg.rnn_hidden
        self.register_buffer("mean", torch.zeros(feature_dim))
        self.register_buffer("basis", torch.eye(feature_dim, r))
        self.register_buffer("fitted", torch.zeros((), dtype=torch.bool))
        # What the last `fit` measured and chose (not saved with the weights, which hold it).
        self.fit_report: dict[str, Any] = {}
        self.skip = nn.Linear(steps * r, d)
        self.rnn: nn.GRU | None = None
        if cfg.recurrent:
            self.reduce = nn.Sequential(nn.Linear(r, h), nn.ReLU(inplace=True))
            self.rnn = nn.GRU(h, h, batch_first=True, bidirectional=True)
            self.projection = nn.Linear(2 * h, d)
            with torch.no_grad():  # the GRU branch adds to the pretrained start from zero
                self.projection.weight.zero_()
                self.projection.bias.zero_()

    @classmethod
    def for_features(cls, cfg: HeadConfig, features: FeatureConfig) -> FeatureHead:
        """A head for the patch features `features` describes (width, steps, layer parts)."""
        return cls(cfg, features.dim, features.steps, features.segments)

    def _normalise(self, features: torch.Tensor) -> torch.Tensor:
        x = features.float()
        x = x.sign() * x.abs().sqrt()
        if len(self.segments) == 1:
            return F.normalize(x, dim=-1)
        parts = [F.normalize(part, dim=-1) for part in x.split(self.segments, dim=-1)]
        return torch.cat(parts, dim=-1) / len(parts) ** 0.5

    @torch.no_grad()
    def fit(self, features: torch.Tensor, max_rows: int = 20_000, seed: int = 0) -> None:
        """Both PCA projections from up to `max_rows` images' features N x T x F; the skip path
        starts as the PCA of the concatenated patch coordinates. Unsupervised, deterministic for
        a given sample; the GRU branch is left as it is (zero at construction)."""
        if features.dim() != 3 or features.shape[0] < 2:
            raise ValueError("fit needs features N x T x F of at least two images")
        if features.shape[1] * self.config.reduce_dim != self.skip.in_features:
            raise ValueError(
                f"the head was built for {self.skip.in_features // self.config.reduce_dim} "
                f"steps, the features have {features.shape[1]}"
            )
        generator = torch.Generator().manual_seed(seed)
        n = features.shape[0]
        rows = torch.randperm(n, generator=generator)[:max_rows] if n > max_rows else slice(None)
        patches = self._normalise(features[rows])
        mean = patches.flatten(0, 1).mean(0)
        self.mean.copy_(mean)
        self.basis.copy_(_top_directions(patches.flatten(0, 1) - mean, self.config.reduce_dim))
        coords = self.reduced(features[rows]).flatten(1)
        centre = coords.mean(0)
        start = _top_directions(coords - centre, self.config.embed_dim)
        projected = (coords - centre) @ start
        density = neighborhood_density(projected)
        whiten = self.config.whiten
        whitened = False
        if whiten is not None and density < self.config.whiten_below_density:
            whitened = True
            # Each direction scaled by its variance ** -whiten, the embedding's mean squared
            # length kept (the GRU branch adds to it at the scale it was built for).
            variance = projected.pow(2).mean(0)
            tiny = 1e-9 * float(variance.max())
            scale = torch.where(variance > tiny, variance.clamp(min=tiny).pow(-whiten), 0.0)
            scale = (
                scale * (variance.sum() / (variance * scale.pow(2)).sum().clamp(min=1e-12)).sqrt()
            )
            start = start * scale
        self.skip.weight.copy_(start.T)
        self.skip.bias.copy_(-(centre @ start))
        self.fitted.fill_(True)
        self.fit_report = {"density": round(density, 3), "whitened": whitened}

    def reduced(self, features: torch.Tensor) -> torch.Tensor:
        """B x T x F -> B x T x reduce_dim: normalised patches on the PCA basis (training
        reduces the cache once with this)."""
        return (self._normalise(features) - self.mean) @ self.basis

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        if not bool(self.fitted):
            raise RuntimeError("FeatureHead.fit must run before the head embeds anything")
        return self.embed_reduced(self.reduced(features))

    def embed_reduced(self, p: torch.Tensor) -> torch.Tensor:
        """B x T x reduce_dim (from `reduced`) -> B x D on the sphere; training reduces once."""
        z = self.skip(p.flatten(1))
        if self.rnn is not None:
            _, hidden = self.rnn(self.reduce(p))  # 2 x B x h: last state of each direction
            z = z + self.projection(hidden.transpose(0, 1).reshape(p.shape[0], -1))
        return F.normalize(z, dim=1) * self.config.sphere_radius


class PretrainedAutoRet(nn.Module):
    """Frozen feature stage + trainable head: images B x C x H x W in [0, 1] -> B x D.

    The platform and the CLI cache `stage(x)` and train `head` on the cache; `embed` runs both,
    so a checkpoint embeds new images with no cache at all.
    """

    def __init__(self, features: FeatureConfig, head: HeadConfig, pretrained: bool = True) -> None:
        super().__init__()
        self.feature_config = features
        self.stage = FeatureStage(features, pretrained=pretrained)
        self.head = FeatureHead.for_features(head, features)

    @property
    def output_dim(self) -> int:
        return self.head.config.embed_dim

    @property
    def image_size(self) -> int:
        """Images are resized to the feature stage's input size before they reach it."""
        return self.feature_config.input_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.stage(x))

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward(x)
