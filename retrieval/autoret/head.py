"""AutoRet on cached features: a recurrent fusion head over frozen patch features.

docs/autoret-method.md section 4: the spatial network is the frozen ImageNet backbone of
`features.FeatureStage`; what trains is the recurrent fusion (a bidirectional GRU over the patch
sequence) and the projection, with the AutoEmbedder pairwise loss (section 1).

Built on the pretrained geometry rather than replacing it (ours): features are standardised and
reduced by PCA (fitted once, unsupervised, on the collection's own features); a linear skip from
the whole-image step starts as the identity on the first `embed_dim` principal components, and the
GRU branch adds to it from zero. So the untrained head already embeds every image by its pooled
pretrained features, which is the platform's version 1, and training moves from there. Measured
on emoji: a head trained from scratch on 500 answers fell below the frozen features it started
from, while a map started at the identity rose above them (docs/benchmarks.md).

Shapes: features B x T x F (T = grid^2 + 1 steps, whole image last; F = 1280), embeddings B x D.
The network only: it loads no data and writes no files.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from retrieval.autoret.constants import EMBED_DIM
from retrieval.autoret.features import FeatureConfig, FeatureStage


@dataclass(frozen=True)
class HeadConfig:
    """The trainable part. Fields marked (ours) fill in what the paper leaves open."""

    embed_dim: int = EMBED_DIM
    # (ours) PCA width the 1280-d features are reduced to before the head: five times less work
    # per step, and the fitted basis is the unsupervised start of the skip path.
    reduce_dim: int = 256
    recurrent: bool = True
    rnn_hidden: int = 128
    # (ours) as ModelConfig.sphere_radius: embeddings lie on a sphere of this radius.
    sphere_radius: float = 5.0

    def __post_init__(self) -> None:
        if self.embed_dim > self.reduce_dim:
            raise ValueError(
                f"embed_dim ({self.embed_dim}) must not exceed reduce_dim ({self.reduce_dim})"
            )
        if not self.sphere_radius > 0:
            raise ValueError(f"sphere_radius must be positive, got {self.sphere_radius}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> HeadConfig:
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - fields)
        if unknown:
            raise TypeError(f"unknown head config fields: {', '.join(unknown)}")
        return cls(**values)


class FeatureHead(nn.Module):
    """Cached patch features B x T x F -> embeddings B x D on the sphere.

    `fit` must run once before use: it sets the standardisation and the PCA basis (buffers, saved
    with the weights) from a sample of features and starts the skip path at the identity.
    """

    mean: torch.Tensor
    scale: torch.Tensor
    basis: torch.Tensor
    fitted: torch.Tensor

    def __init__(self, cfg: HeadConfig, feature_dim: int = 1280) -> None:
        super().__init__()
        self.config = cfg
        r, d, h = cfg.reduce_dim, cfg.embed_dim, cfg.rnn_hidden
        self.register_buffer("mean", torch.zeros(feature_dim))
        self.register_buffer("scale", torch.ones(feature_dim))
        self.register_buffer("basis", torch.eye(feature_dim, r))
        self.register_buffer("fitted", torch.zeros((), dtype=torch.bool))
        self.skip = nn.Linear(r, d)
        self.rnn: nn.GRU | None = None
        if cfg.recurrent:
            self.reduce = nn.Sequential(nn.Linear(r, h), nn.ReLU(inplace=True))
            self.rnn = nn.GRU(h, h, batch_first=True, bidirectional=True)
            self.projection = nn.Linear(2 * h, d)
        self._start_at_identity()

    def _start_at_identity(self) -> None:
        with torch.no_grad():
            self.skip.weight.copy_(torch.eye(self.config.embed_dim, self.config.reduce_dim))
            self.skip.bias.zero_()
            if self.rnn is not None:
                self.projection.weight.zero_()
                self.projection.bias.zero_()

    @torch.no_grad()
    def fit(self, features: torch.Tensor, max_rows: int = 20_000, seed: int = 0) -> None:
        """Standardisation and PCA from up to `max_rows` images' whole-image features (N x T x F).

        Unsupervised and deterministic for a given sample; resets the head to the identity start.
        """
        if features.dim() != 3 or features.shape[0] < 2:
            raise ValueError("fit needs features N x T x F of at least two images")
        generator = torch.Generator().manual_seed(seed)
        n = features.shape[0]
        rows = torch.randperm(n, generator=generator)[:max_rows] if n > max_rows else slice(None)
        whole = features[rows, -1].float()
        mean = whole.mean(0)
        # The floor keeps near-dead channels from being blown up into noise.
        scale = whole.std(0).clamp(min=1e-2)
        standard = (whole - mean) / scale
        _, _, v = torch.linalg.svd(standard, full_matrices=False)  # standard is centred
        r = self.config.reduce_dim
        basis = v[:r].T
        if basis.shape[1] < r:  # fewer images than reduce_dim: pad with zero directions
            basis = F.pad(basis, (0, r - basis.shape[1]))
        self.mean.copy_(mean)
        self.scale.copy_(scale)
        self.basis.copy_(basis)
        self.fitted.fill_(True)
        self._start_at_identity()

    def reduced(self, features: torch.Tensor) -> torch.Tensor:
        """B x T x F -> B x T x reduce_dim: standardised, centred, projected on the PCA basis."""
        return ((features.float() - self.mean) / self.scale) @ self.basis

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        if not bool(self.fitted):
            raise RuntimeError("FeatureHead.fit must run before the head embeds anything")
        return self.embed_reduced(self.reduced(features))

    def embed_reduced(self, p: torch.Tensor) -> torch.Tensor:
        """B x T x reduce_dim (from `reduced`) -> B x D on the sphere; training reduces once."""
        z = self.skip(p[:, -1])
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
        self.head = FeatureHead(head, features.dim)

    @property
    def output_dim(self) -> int:
        return self.head.config.embed_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.stage(x))

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward(x)
