"""AutoRet: self-supervised spatial recurrent network for content-based image retrieval.

Plain PyTorch; never imports Django. See docs/autoret.md for the method as implemented.

The names below load lazily (PEP 562): the platform imports retrieval.autoret.constants from
every Django process, and that must not pull PyTorch into web workers.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "CheckpointError": "retrieval.autoret.checkpoint",
    "load_model": "retrieval.autoret.checkpoint",
    "save_checkpoint": "retrieval.autoret.checkpoint",
    "DataError": "retrieval.autoret.data",
    "ImageSet": "retrieval.autoret.data",
    "load_dataset": "retrieval.autoret.data",
    "embed_images": "retrieval.autoret.embed",
    "evaluate_retrieval": "retrieval.autoret.evaluate",
    "map_at_k": "retrieval.autoret.evaluate",
    "precision_at_k": "retrieval.autoret.evaluate",
    "autoembedder_loss": "retrieval.autoret.losses",
    "nt_xent_loss": "retrieval.autoret.losses",
    "DEFAULT_EMBED_DIM": "retrieval.autoret.model",
    "AutoRet": "retrieval.autoret.model",
    "ModelConfig": "retrieval.autoret.model",
    "create_model": "retrieval.autoret.model",
    "AugmentConfig": "retrieval.autoret.pairs",
    "KnownPairs": "retrieval.autoret.pairs",
    "PairSampler": "retrieval.autoret.pairs",
    "augment": "retrieval.autoret.pairs",
    "Progress": "retrieval.autoret.train",
    "TrainConfig": "retrieval.autoret.train",
    "TrainResult": "retrieval.autoret.train",
    "train": "retrieval.autoret.train",
}


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'retrieval.autoret' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


__all__ = [
    "DEFAULT_EMBED_DIM",
    "AugmentConfig",
    "AutoRet",
    "CheckpointError",
    "DataError",
    "ImageSet",
    "KnownPairs",
    "ModelConfig",
    "PairSampler",
    "Progress",
    "TrainConfig",
    "TrainResult",
    "augment",
    "autoembedder_loss",
    "create_model",
    "embed_images",
    "evaluate_retrieval",
    "load_dataset",
    "load_model",
    "map_at_k",
    "nt_xent_loss",
    "precision_at_k",
    "save_checkpoint",
    "train",
]
