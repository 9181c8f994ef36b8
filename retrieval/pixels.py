"""Stored images as the networks take them: uint8 N x C x size x size, letterboxed."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence

import numpy as np
import torch
from PIL import Image as PILImage
from PIL import ImageOps

from retrieval.models import Image

log = logging.getLogger(__name__)


def fit_picture(picture: PILImage.Image, size: int, channels: int) -> np.ndarray:
    """One picture as uint8 C x size x size: fitted inside the square keeping its aspect ratio
    and centred on black (padding, not cropping: nothing of the content is cut off)."""
    picture = ImageOps.exif_transpose(picture)
    picture = picture.convert("L" if channels == 1 else "RGB")
    fitted = ImageOps.pad(picture, (size, size), method=PILImage.Resampling.BILINEAR, color=0)
    array = np.asarray(fitted, dtype=np.uint8)
    return array[None] if channels == 1 else array.transpose(2, 0, 1)


def _stack(arrays: Sequence[np.ndarray], size: int, channels: int) -> torch.Tensor:
    if not arrays:
        return torch.empty((0, channels, size, size), dtype=torch.uint8)
    return torch.from_numpy(np.stack(arrays))


def pictures_to_tensor(
    pictures: Iterable[PILImage.Image], size: int, channels: int
) -> torch.Tensor:
    """uint8 N x C x size x size from Pillow images."""
    return _stack([fit_picture(p, size, channels) for p in pictures], size, channels)


def load_pixels(
    images: Iterable[Image], size: int, channels: int
) -> tuple[list[int], np.ndarray, list[tuple[int, str]]]:
    """(ids, uint8 N x C x size x size, failed) of stored images; unreadable files are listed in
    `failed` with their error instead of stopping the rest (training data, a batch)."""
    ids: list[int] = []
    arrays: list[np.ndarray] = []
    failed: list[tuple[int, str]] = []
    for image in images:
        try:
            with image.file.open("rb") as handle, PILImage.open(handle) as picture:
                arrays.append(fit_picture(picture, size, channels))
                ids.append(image.pk)
        except (OSError, ValueError, PILImage.DecompressionBombError) as error:
            log.warning("image %s cannot be read: %s", image.pk, error)
            failed.append((image.pk, str(error)))
    pixels = np.stack(arrays) if arrays else np.empty((0, channels, size, size), dtype=np.uint8)
    return ids, pixels, failed
