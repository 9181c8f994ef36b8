from __future__ import annotations

from typing import Any

import pytest
import torch

from retrieval.autoret.data import ImageSet
from retrieval.autoret.model import AutoRet, create_model

TINY: dict[str, Any] = {
    "widths": (8, 16, 32),
    "context_channels": 16,
    "patch_dim": 32,
    "rnn_hidden": 16,
    "embed_dim": 8,
}


def tiny_model(name: str = "autoret", seed: int = 0, **overrides: Any) -> AutoRet:
    """A narrow but architecturally complete model, fast enough for unit tests."""
    torch.manual_seed(seed)
    return create_model(name, **{**TINY, "in_channels": 1, **overrides})


@pytest.fixture
def random_images() -> ImageSet:
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (48, 1, 16, 16), dtype=torch.uint8, generator=generator)
    return ImageSet(images, torch.arange(48) % 4)
