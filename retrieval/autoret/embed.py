"""Batched embedding of images for retrieval."""

from __future__ import annotations

import numpy as np
import torch
from tqdm import tqdm

from retrieval.autoret.data import ImageSet, resize
from retrieval.autoret.head import PretrainedAutoRet
from retrieval.autoret.model import AutoRet


def embed_images(
    model: AutoRet | PretrainedAutoRet,
    images: torch.Tensor | ImageSet,
    batch_size: int = 256,
    device: str | torch.device | None = None,
    progress: bool = False,
) -> np.ndarray:
    """Embeds uint8 N x C x H x W images (or an ImageSet): returns float32 N x model.output_dim.

    Runs in eval mode (BatchNorm uses its running statistics) under inference_mode, one batch at
    a time on `device` (default: where the model is); images are resized to the model's
    image_size when it has one. The model's train/eval mode is restored afterwards.
    """
    pixels = images.images if isinstance(images, ImageSet) else images
    if pixels.dtype != torch.uint8 or pixels.dim() != 4:
        raise ValueError("embed_images needs uint8 images N x C x H x W")
    target = torch.device(device) if device is not None else next(model.parameters()).device
    model.to(target)
    on_cuda = target.type == "cuda"
    was_training = model.training
    model.eval()
    out = np.empty((pixels.shape[0], model.output_dim), dtype=np.float32)
    size = model.image_size
    try:
        with torch.inference_mode():
            for begin in tqdm(
                range(0, len(pixels), batch_size), disable=not progress, unit="batch"
            ):
                chunk = pixels[begin : begin + batch_size]
                if size is not None:
                    chunk = resize(chunk, size)
                x = chunk.to(target, non_blocking=True).float().div_(255.0)
                with torch.autocast(target.type, dtype=torch.bfloat16, enabled=on_cuda):
                    e = model.embed(x)
                out[begin : begin + len(chunk)] = e.float().cpu().numpy()
    finally:
        model.train(was_training)
    return out
