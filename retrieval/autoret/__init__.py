"""AutoRet: self-supervised spatial recurrent network for content-based image retrieval.

Plain PyTorch; never imports Django. See docs/autoret-method.md for the method.
"""

from __future__ import annotations

from retrieval.autoret.checkpoint import CheckpointError, load_model, save_checkpoint
from retrieval.autoret.data import DataError, ImageSet, load_dataset
from retrieval.autoret.embed import embed_images
from retrieval.autoret.evaluate import evaluate_retrieval, map_at_k, precision_at_k
from retrieval.autoret.losses import autoembedder_loss, nt_xent_loss
from retrieval.autoret.model import DEFAULT_EMBED_DIM, AutoRet, ModelConfig, create_model
from retrieval.autoret.pairs import AugmentConfig, KnownPairs, PairSampler, augment
from retrieval.autoret.train import Progress, TrainConfig, TrainResult, train

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
