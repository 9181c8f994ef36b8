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


@dataclass(frozen=True)
class FeatureConfig:
    """What a cached feature depends on: backbone, input size and patch layout.

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

    def __post_init__(self) -> None:
        if self.input_size < 32:
            raise ValueError(f"input_size must be at least 32 pixels, got {self.input_size}")
        if self.grid < 1:
            raise ValueError(f"grid must be at least 1, got {self.grid}")
        if self.layout not in ("regions", "crops"):
            raise ValueError(f"layout must be 'regions' or 'crops', got {self.layout!r}")

    @property
    def steps(self) -> int:
        """Length T of the patch sequence: grid^2 patches, then the whole image."""
        return self.grid * self.grid + 1

    @property
    def dim(self) -> int:
        """Length of one patch feature (EfficientNet-Lite0's head width)."""
        return 1280

    @property
    def key(self) -> str:
        """A short stable name, e.g. "efficientnet_lite0-128px-2x2-regions"."""
        g = self.grid
        return f"{self.backbone}-{self.input_size}px-{g}x{g}-{self.layout}"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> FeatureConfig:
        return from_json_dict(cls, values, "feature")


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
    """Frozen backbone -> patch features: B x C x H x W in [0, 1] -> B x T x 1280 (section 4).

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

    def _map(self, x: torch.Tensor) -> torch.Tensor:
        size = self.config.input_size
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
        x = self.net.normalize_unit(x).contiguous(memory_format=torch.channels_last)
        return self.net.features(x)

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = to_rgb(x.float())
        g = self.config.grid
        if self.config.layout == "regions":
            feature_map = self._map(x)
            patches = F.adaptive_avg_pool2d(feature_map, g).flatten(2).transpose(1, 2)
            whole = feature_map.mean(dim=(2, 3)).unsqueeze(1)
            return torch.cat([patches, whole], dim=1)
        from retrieval.autoret.model import grid_patches

        batch = x.shape[0]
        crops = grid_patches(x, g).flatten(0, 1)
        patches = self._map(crops).mean(dim=(2, 3)).view(batch, g * g, -1)
        whole = self._map(x).mean(dim=(2, 3)).unsqueeze(1)
        return torch.cat([patches, whole], dim=1)


def extract_features(
    stage: FeatureStage,
    images: torch.Tensor | ImageSet,
    batch_size: int = 256,
    device: str | torch.device | None = None,
    progress: bool | Callable[[int, int], None] = False,
) -> torch.Tensor:
    """uint8 N x C x H x W images (or an ImageSet) -> float16 N x T x 1280 patch features.

    float16 halves the cache; the features are post-ReLU6 activations in [0, 6], where float16
    keeps about three significant digits. `progress` is a tqdm bar (True) or a callback
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
