"""The AutoRet network: a spatial CNN per patch fused by a recurrent network.

Paper: Monowar et al., "AutoRet: A Self-Supervised Spatial Recurrent Network for Content-Based
Image Retrieval", Sensors 2022. Section numbers refer to docs/autoret-method.md, its summary.

Shapes: images enter as float B x C x H x W with pixels in [0, 1]; any H, W and C in {1, 3, 4} work.
The network only; it loads no data and writes no files.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from retrieval.autoret.configs import from_json_dict
from retrieval.autoret.constants import EMBED_DIM

DEFAULT_EMBED_DIM = EMBED_DIM
"""Embedding size D of the default model; the platform's pgvector column has this width."""

BackboneName = Literal["small", "resnet18", "efficientnet_lite0"]


@dataclass(frozen=True)
class ModelConfig:
    """Every architectural choice, so each "(ours)" choice of the spec can be ablated.

    Defaults follow docs/autoret-method.md section 4; fields marked (ours) fill in what the paper
    leaves open.
    """

    backbone: BackboneName = "small"
    in_channels: int = 3
    embed_dim: int = DEFAULT_EMBED_DIM
    # Recurrent patching (section 4, ours: 2x2 grid plus the whole image, raster order, whole last).
    patching: bool = True
    grid: int = 2
    include_whole_image: bool = True
    rnn: Literal["gru", "lstm"] = "gru"
    rnn_hidden: int = 256
    rnn_layers: int = 1
    bidirectional: bool = True
    # Spatial network (section 4, ours): dilated 3x3 branches side by side, then SPP.
    dilation_rates: tuple[int, ...] = (1, 2, 4)
    context_channels: int = 128
    spp_levels: tuple[int, ...] = (1, 2, 4)
    spp_pool: Literal["avg", "max"] = "avg"
    patch_dim: int = 256
    # Small ResNet-style backbone (ours): a 3x3 stem then one basic block per stage.
    widths: tuple[int, ...] = (32, 64, 128)
    # Stride 2 in the stem made CPU training about 3x faster at 32 px (measured on 2 cores).
    stem_stride: int = 2
    # Pixels in [0, 1] are standardized as (x - mean) / std before the small and ResNet-18
    # backbones; EfficientNet-Lite0 applies its own (x - 127) / 128 on 0..255.
    input_mean: float = 0.5
    input_std: float = 0.25
    pretrained: bool = False
    freeze_backbone: bool = False
    # "features" embeds with the vector before the final projection, which retrieved slightly
    # better in the reference prototype (docs/benchmark-anchors.md).
    embed_from: Literal["projection", "features"] = "projection"
    # (ours) None keeps the projection as it is (the method). A radius R puts every embedding on
    # the sphere of radius R (L2-normalized, times R): distances lie in [0, 2R], so the loss's
    # alpha is a fixed angle (alpha = R * sqrt(2) is orthogonal) and no vector can satisfy the
    # cannot-link target by growing its norm.
    sphere_radius: float | None = None
    # Images are resized to image_size x image_size for training and embedding; None keeps them.
    image_size: int | None = None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (tuples become lists) for self-describing checkpoints."""
        return {
            k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()
        }

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> ModelConfig:
        """Inverse of `to_dict`; unknown keys raise TypeError."""
        return from_json_dict(cls, values, "model")


PRESETS: dict[str, dict[str, Any]] = {
    "autoret": {},
    "autoembedder": {"patching": False},
    "autoret-resnet18": {"backbone": "resnet18", "image_size": 64},
    "autoret-efficientnet-lite0": {
        "backbone": "efficientnet_lite0",
        "pretrained": True,
        "image_size": 224,
    },
}


class BasicBlock(nn.Module):
    """ResNet basic block (He et al. 2016): two 3x3 convolutions with a residual connection."""

    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(
                nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """B x c_in x H x W -> B x c_out x H/stride x W/stride."""
        y = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(y)) + self.shortcut(x))


class _Standardize(nn.Module):
    """Maps [0, 1] pixels to roughly zero mean, unit variance."""

    def __init__(self, mean: float, std: float) -> None:
        super().__init__()
        self.mean = mean
        self.std = std

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


class SmallResNet(nn.Module):
    """Small ResNet-style CNN trained from scratch (section 4, default backbone).

    A 3x3 stem, then one basic block per width; the first stage keeps the stem's resolution and
    every later one halves it. B x C x H x W in [0, 1] -> B x widths[-1] x H/(4 s) x W/(4 s) for
    three stages with stem stride s.
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        w = cfg.widths
        self.out_channels = w[-1]
        self.standardize = _Standardize(cfg.input_mean, cfg.input_std)
        self.stem = nn.Sequential(
            nn.Conv2d(cfg.in_channels, w[0], 3, cfg.stem_stride, 1, bias=False),
            nn.BatchNorm2d(w[0]),
            nn.ReLU(inplace=True),
        )
        stages = [BasicBlock(w[0], w[0], 1)]
        stages += [BasicBlock(w[i - 1], w[i], 2) for i in range(1, len(w))]
        self.stages = nn.Sequential(*stages)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.stages(self.stem(self.standardize(x)))


class ResNet18Backbone(nn.Module):
    """torchvision ResNet-18 minus pooling and classifier: B x C x H x W -> B x 512 x H/32 x W/32"""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        from torchvision.models import resnet18

        net = resnet18(weights="IMAGENET1K_V1" if cfg.pretrained else None)
        if cfg.in_channels != 3:
            net.conv1 = nn.Conv2d(cfg.in_channels, 64, 7, 2, 3, bias=False)
        self.out_channels = 512
        self.standardize = _Standardize(cfg.input_mean, cfg.input_std)
        self.body = nn.Sequential(*list(net.children())[:-2])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(self.standardize(x))


class EfficientNetLite0Backbone(nn.Module):
    """EfficientNet-Lite0 features: B x {1, 3} x H x W in [0, 1] -> B x 1280 x H/32 x W/32.

    The pretrained weights expect RGB scaled as (x - 127) / 128 on 0..255; grey images are
    repeated to three channels. Its ImageNet classifier head is kept (so the weights load strictly)
    but unused.
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        # Imported lazily: only this backbone needs it, and it lives in its own module.
        from retrieval.autoret.efficientnet_lite import EfficientNetLite0, load_pretrained_lite0

        self.net = load_pretrained_lite0() if cfg.pretrained else EfficientNetLite0()
        self.out_channels = self.net.out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        features: torch.Tensor = self.net.features(self.net.normalize_unit(x))
        return features


def build_backbone(cfg: ModelConfig) -> nn.Module:
    """Backbone contract: a module with `out_channels: int` and `forward(x) -> B x C_out x h x w`"""
    if cfg.backbone == "small":
        return SmallResNet(cfg)
    if cfg.backbone == "resnet18":
        return ResNet18Backbone(cfg)
    if cfg.backbone == "efficientnet_lite0":
        return EfficientNetLite0Backbone(cfg)
    raise ValueError(
        f"unknown backbone {cfg.backbone!r}; use small, resnet18 or efficientnet_lite0"
    )


class DilatedContext(nn.Module):
    """Atrous convolutions for a wide field of view (section 4, ours: rates 1, 2, 4 side by side).

    A 1x1 reduction to `channels`, parallel 3x3 convolutions with the given dilation rates, their
    concatenation fused back by a 1x1 convolution, plus a residual from the reduction:
    B x c_in x h x w -> B x channels x h x w.
    """

    def __init__(self, c_in: int, channels: int, rates: tuple[int, ...]) -> None:
        super().__init__()
        self.reduce = nn.Sequential(
            nn.Conv2d(c_in, channels, 1, bias=False),
            nn.BatchNorm2d(channels),
            nn.ReLU(inplace=True),
        )
        self.branches = nn.ModuleList(
            nn.Sequential(
                nn.Conv2d(channels, channels, 3, padding=r, dilation=r, bias=False),
                nn.BatchNorm2d(channels),
                nn.ReLU(inplace=True),
            )
            for r in rates
        )
        self.fuse: nn.Module | None = None
        if rates:
            self.fuse = nn.Sequential(
                nn.Conv2d(channels * len(rates), channels, 1, bias=False), nn.BatchNorm2d(channels)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.reduce(x)
        if self.fuse is None:
            return x
        y = self.fuse(torch.cat([branch(x) for branch in self.branches], dim=1))
        return F.relu(x + y)


class SpatialPyramidPool(nn.Module):
    """Spatial pyramid pooling (He et al. 2014), the reason any input size works (section 4).

    B x C x h x w -> B x C * sum(level^2), the same length whatever h and w are.
    """

    def __init__(self, levels: tuple[int, ...], pool: Literal["avg", "max"]) -> None:
        super().__init__()
        self.levels = levels
        self.pool = F.adaptive_avg_pool2d if pool == "avg" else F.adaptive_max_pool2d

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.pool(x, level).flatten(1) for level in self.levels], dim=1)


class SpatialNetwork(nn.Module):
    """The shared per-patch CNN of section 4: backbone, dilated context, SPP, linear to patch_dim.

    B x C x H x W in [0, 1] -> B x patch_dim.
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.backbone = build_backbone(cfg)
        if cfg.freeze_backbone:
            self.backbone.requires_grad_(False)
        c_backbone = self.backbone.out_channels
        assert isinstance(c_backbone, int)
        self.context = DilatedContext(c_backbone, cfg.context_channels, cfg.dilation_rates)
        self.spp = SpatialPyramidPool(cfg.spp_levels, cfg.spp_pool)
        spp_dim = cfg.context_channels * sum(level * level for level in cfg.spp_levels)
        self.head = nn.Sequential(nn.Linear(spp_dim, cfg.patch_dim), nn.ReLU(inplace=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.spp(self.context(self.backbone(x))))


def grid_patches(x: torch.Tensor, grid: int) -> torch.Tensor:
    """Cuts B x C x H x W into grid x grid equal patches in raster order: B x grid^2 x C x h x w.

    Patches are floor(H / grid) x floor(W / grid); when H or W is not divisible the offsets are
    spread so the patches still cover the whole image, overlapping by at most grid - 1 pixels.
    """
    _, _, height, width = x.shape
    ph, pw = height // grid, width // grid
    if ph == 0 or pw == 0:
        raise ValueError(f"a {height}x{width} image is too small for a {grid}x{grid} patch grid")
    rows = [round(i * (height - ph) / (grid - 1)) if grid > 1 else 0 for i in range(grid)]
    cols = [round(j * (width - pw) / (grid - 1)) if grid > 1 else 0 for j in range(grid)]
    return torch.stack([x[:, :, r : r + ph, c : c + pw] for r in rows for c in cols], dim=1)


class AutoRet(nn.Module):
    """Spatial recurrent network (section 4) trained with the AutoEmbedder loss (section 1).

    With patching, the image is cut into a grid of patches, plus the whole image as the last step;
    one shared `SpatialNetwork` embeds every step, a (bi)GRU/LSTM reads the sequence, and its final
    hidden states are projected to D. Without patching (AutoEmbedder), the spatial feature of the
    whole image is projected directly.
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        if cfg.sphere_radius is not None and not cfg.sphere_radius > 0:
            raise ValueError(f"sphere_radius must be positive, got {cfg.sphere_radius}")
        if cfg.patching and cfg.grid < 1:
            raise ValueError("grid must be at least 1")
        if cfg.patching and cfg.grid == 1 and not cfg.include_whole_image:
            raise ValueError(
                "a 1x1 grid without the whole image is the whole image: disable patching"
            )
        self.config = cfg
        self.spatial = SpatialNetwork(cfg)
        self.rnn: nn.GRU | nn.LSTM | None = None
        feature_dim = cfg.patch_dim
        if cfg.patching:
            rnn_type = nn.GRU if cfg.rnn == "gru" else nn.LSTM
            self.rnn = rnn_type(
                cfg.patch_dim,
                cfg.rnn_hidden,
                num_layers=cfg.rnn_layers,
                batch_first=True,
                bidirectional=cfg.bidirectional,
            )
            feature_dim = cfg.rnn_hidden * (2 if cfg.bidirectional else 1)
        self.feature_dim = feature_dim
        self.projection = nn.Linear(feature_dim, cfg.embed_dim)

    @property
    def output_dim(self) -> int:
        """Length of the vectors `embed` returns (depends on `embed_from`)."""
        return self.config.embed_dim if self.config.embed_from == "projection" else self.feature_dim

    @property
    def image_size(self) -> int | None:
        """The square size images are resized to before embedding; None keeps them."""
        return self.config.image_size

    def _match_channels(self, x: torch.Tensor) -> torch.Tensor:
        """Grey and colour both work: grey is repeated, colour averaged to grey, alpha dropped."""
        want, have = self.config.in_channels, x.shape[1]
        if have == 4:
            x, have = x[:, :3], 3
        if have == want:
            return x
        if have == 1 and want == 3:
            return x.expand(-1, 3, -1, -1)
        if have == 3 and want == 1:
            return x.mean(dim=1, keepdim=True)
        raise ValueError(f"cannot feed {have}-channel images to a {want}-channel model")

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Pre-projection features: B x C x H x W in [0, 1] -> B x feature_dim."""
        x = self._match_channels(x)
        if self.rnn is None:
            return self.spatial(x)
        batch = x.shape[0]
        cfg = self.config
        steps = []
        if cfg.grid > 1 or not cfg.include_whole_image:
            patches = grid_patches(x, cfg.grid)  # B x G x C x h x w
            # All patches of the batch go through the shared CNN in one call.
            steps.append(self.spatial(patches.flatten(0, 1)).view(batch, cfg.grid**2, -1))
        if cfg.include_whole_image:
            steps.append(self.spatial(x).unsqueeze(1))
        sequence = torch.cat(steps, dim=1)  # B x T x patch_dim
        _, state = self.rnn(sequence)
        hidden = state[0] if isinstance(state, tuple) else state  # LSTM returns (h, c)
        directions = 2 if cfg.bidirectional else 1
        last_layer = hidden[-directions:]  # directions x B x hidden
        return last_layer.transpose(0, 1).reshape(batch, -1)

    def project(self, features: torch.Tensor) -> torch.Tensor:
        """Features -> the embedding: the final projection, then the sphere when configured."""
        e = self.projection(features)
        if self.config.sphere_radius is not None:
            e = nn.functional.normalize(e.float(), dim=1) * self.config.sphere_radius
        return e

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """B x C x H x W in [0, 1] -> B x embed_dim, the vectors the pairwise loss shapes."""
        return self.project(self.features(x))

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Retrieval vectors: B x output_dim, from the projection or the features (`embed_from`)."""
        if self.config.embed_from == "features":
            return self.features(x)
        return self.forward(x)


def create_model(name: str = "autoret", **overrides: Any) -> AutoRet:
    """Builds a named preset ("autoret", "autoembedder", "autoret-resnet18",
    "autoret-efficientnet-lite0") with any `ModelConfig` field overridden."""
    if name not in PRESETS:
        raise ValueError(f"unknown model {name!r}; choose from {', '.join(PRESETS)}")
    return AutoRet(ModelConfig(**{**PRESETS[name], **overrides}))
