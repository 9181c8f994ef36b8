"""The feature stage: frozen ImageNet backbone features per patch, computed once and cached.

docs/autoret-method.md section 4 (backbones): on a CPU the ImageNet EfficientNet-Lite0 runs frozen
(BatchNorm in eval mode, no gradients) and its patch features are computed once, so that training
the recurrent fusion and projection on pairs reads cached features and decodes no image.

The sequence that recurrent patching needs is a grid x grid set of patches in raster order plus the
whole image last (section 4's default: 2x2 + whole, 5 steps). Two layouts (ours):
- "regions": the backbone sees the whole image once; each patch is the average of the feature map
  over that patch's region (adaptive average pooling to grid x grid). One backbone pass per image.
- "crops": each patch is cut from the image, resized to the input size and run through the
  backbone on its own, like the from-scratch network does. grid^2 + 1 backbone passes per image.
docs/autoret.md records which was chosen, and why, from quality against images/s on 2 cores.

Which layers a patch feature is pooled from (ours):
- "stages5-7" (the default): the outputs of the backbone's last three stages (112 + 192 + 320
  channels, strides 16, 32 and 32), each pooled over the patch and concatenated; the head
  convolution does not run. On Fashion-MNIST and emoji these mid-level features retrieve better
  than the ImageNet head's 1280 (docs/benchmarks.md): grey clothing and drawn emoji are far from
  the photographs the last layer was trained to tell apart.
- "head": the 1280-channel head convolution (post-ReLU6), as the configurations recorded before.

Building blocks only: loads no data set and writes no files.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from retrieval.autoret.configs import from_json_dict
from retrieval.autoret.data import ImageSet

FeatureLayout = Literal["regions", "crops"]
FeatureLayers = Literal["stages5-7", "head"]
_LAYER_STAGES: dict[str, tuple[int, ...]] = {"stages5-7": (5, 6, 7), "head": ()}


@dataclass(frozen=True)
class FeatureConfig:
    """What a cached feature depends on: backbone, input size, patch layout and layers.

    Two images' features are comparable only under equal configurations, so `key` names the
    cache entry (the platform stores features per image and key).
    """

    backbone: Literal["efficientnet_lite0"] = "efficientnet_lite0"
    # 128 px (ours, measured: docs/benchmarks.md): on Fashion-MNIST version 1 retrieves 0.703
    # mAP@1000 at 128 px against 0.684 at 96 px, and the self-supervised head passes 0.72 only
    # at 128; emoji were measured at 128 from the start. Half the images/s of 96 px on a CPU.
    input_size: int = 128
    grid: int = 2
    layout: FeatureLayout = "regions"
    layers: FeatureLayers = "stages5-7"

    def __post_init__(self) -> None:
        if self.input_size < 32:
            raise ValueError(f"input_size must be at least 32 pixels, got {self.input_size}")
        if self.grid < 1:
            raise ValueError(f"grid must be at least 1, got {self.grid}")
        if self.layout not in ("regions", "crops"):
            raise ValueError(f"layout must be 'regions' or 'crops', got {self.layout!r}")
        if self.layers not in _LAYER_STAGES:
            raise ValueError(f"layers must be 'stages5-7' or 'head', got {self.layers!r}")

    @property
    def steps(self) -> int:
        """Length T of the patch sequence: grid^2 patches, then the whole image."""
        return self.grid * self.grid + 1

    @property
    def stages(self) -> tuple[int, ...]:
        """The backbone stages pooled, () for the head convolution."""
        return _LAYER_STAGES[self.layers]

    @property
    def segments(self) -> tuple[int, ...]:
        """Widths of the parts one patch feature concatenates, one per layer: (112, 192, 320)
        for "stages5-7", (1280,) for "head". The head normalises each part on its own."""
        from retrieval.autoret.efficientnet_lite import EfficientNetLite0, stage_channels

        if not self.stages:
            return (EfficientNetLite0.out_channels,)
        return tuple(stage_channels(k) for k in self.stages)

    @property
    def dim(self) -> int:
        """Length F of one patch feature: 624 for "stages5-7", 1280 for "head"."""
        return sum(self.segments)

    @property
    def key(self) -> str:
        """A short stable name, e.g. "efficientnet_lite0-128px-2x2-regions-stages5-7"; head
        features keep the name they had before layers were a choice."""
        g = self.grid
        key = f"{self.backbone}-{self.input_size}px-{g}x{g}-{self.layout}"
        return key if self.layers == "head" else f"{key}-{self.layers}"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> FeatureConfig:
        """A recorded configuration; one recorded before `layers` existed used the head."""
        return from_json_dict(cls, {"layers": "head", **values}, "feature")


def to_rgb(x: torch.Tensor) -> torch.Tensor:
    """B x {1, 3, 4} x H x W -> B x 3 x H x W: grey is repeated, alpha dropped."""
    channels = x.shape[1]
    if channels == 4:
        return x[:, :3]
    if channels == 1:
        return x.expand(-1, 3, -1, -1)
    if channels == 3:
        return x
    raise ValueError(f"cannot take {channels}-channel images: use 1 (grey), 3 (RGB) or 4 (RGBA)")


class FeatureStage(nn.Module):
    """Frozen backbone -> patch features: B x C x H x W in [0, 1] -> B x T x F (section 4).

    Always in eval mode with no gradients: `train()` is a no-op for it, so a surrounding model
    can be put in training mode without BatchNorm statistics drifting.
    """

    def __init__(self, cfg: FeatureConfig, pretrained: bool = True) -> None:
        super().__init__()
        from retrieval.autoret.efficientnet_lite import EfficientNetLite0, load_pretrained_lite0

        self.config = cfg
        self.net = load_pretrained_lite0() if pretrained else EfficientNetLite0()
        self.net.requires_grad_(False)
        self.net.eval()

    def train(self, mode: bool = True) -> FeatureStage:
        return self  # frozen: BatchNorm keeps the ImageNet statistics

    def _maps(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The feature maps of the configured layers, one per segment."""
        size = self.config.input_size
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
        x = self.net.normalize_unit(x).contiguous(memory_format=torch.channels_last)
        if not self.config.stages:
            return [self.net.features(x)]
        return self.net.stage_outputs(x, self.config.stages)

    @staticmethod
    def _pool(maps: list[torch.Tensor], grid: int) -> torch.Tensor:
        """Layer maps -> B x grid^2 x F: each map averaged over each grid region in raster order
        (the whole image for grid 1), the layers concatenated."""
        return torch.cat(
            [F.adaptive_avg_pool2d(m, grid).flatten(2).transpose(1, 2) for m in maps], dim=2
        )

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = to_rgb(x.float())
        g = self.config.grid
        if self.config.layout == "regions":
            maps = self._maps(x)
            return torch.cat([self._pool(maps, g), self._pool(maps, 1)], dim=1)
        from retrieval.autoret.model import grid_patches

        batch = x.shape[0]
        crops = grid_patches(x, g).flatten(0, 1)
        patches = self._pool(self._maps(crops), 1).view(batch, g * g, -1)
        return torch.cat([patches, self._pool(self._maps(x), 1)], dim=1)


def extract_features(
    stage: FeatureStage,
    images: torch.Tensor | ImageSet,
    batch_size: int = 256,
    device: str | torch.device | None = None,
    progress: bool | Callable[[int, int], None] = False,
) -> torch.Tensor:
    """uint8 N x C x H x W images (or an ImageSet) -> float16 N x T x F patch features.

    float16 halves the cache and keeps about three significant digits: head features are
    post-ReLU6 activations in [0, 6], stage outputs (batch-normalised, unbounded) stay within a
    few tens. `progress` is a tqdm bar (True) or a callback
    (done, total) after every batch.
    """
    pixels = images.images if isinstance(images, ImageSet) else images
    if pixels.dtype != torch.uint8 or pixels.dim() != 4:
        raise ValueError("extract_features needs uint8 images N x C x H x W")
    target = torch.device(device) if device is not None else next(stage.parameters()).device
    stage.to(target)
    cfg = stage.config
    out = torch.empty((len(pixels), cfg.steps, cfg.dim), dtype=torch.float16)
    starts = range(0, len(pixels), batch_size)
    with torch.inference_mode():
        for begin in tqdm(starts, disable=progress is not True, unit="batch"):
            chunk = pixels[begin : begin + batch_size].to(target).float().div_(255.0)
            with torch.autocast(target.type, dtype=torch.bfloat16, enabled=target.type == "cuda"):
                features = stage(chunk)
            out[begin : begin + len(chunk)] = features.to(torch.float16).cpu()
            if callable(progress):
                progress(min(begin + batch_size, len(pixels)), len(pixels))
    return out
