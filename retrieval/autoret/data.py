"""Datasets as one uint8 tensor in memory: image folders, .npz, Fashion-MNIST IDX, CIFAR-10 pickle.

A whole dataset is kept as a single N x C x H x W uint8 tensor so training can gather batches by
index (and move everything to the GPU once) instead of decoding images per step.
"""

from __future__ import annotations

import gzip
import os
import pickle
import struct
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

FASHION_MNIST_DIR = Path(
    os.environ.get("AUTORET_FASHION_MNIST_DIR", "/usr/share/datasets/fashion-mnist")
)
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}


class DataError(ValueError):
    """Unusable input data; the message is one line meant for the user."""


@dataclass
class ImageSet:
    """Images as uint8 N x C x H x W (all the same size), with optional labels and names.

    labels: LongTensor N of class ids, or a multi-hot N x L tensor (multi-label sets).
    names: one string per image (file names, database ids); class_names: the label vocabulary.
    """

    images: torch.Tensor
    labels: torch.Tensor | None = None
    names: list[str] | None = None
    class_names: list[str] | None = field(default=None)

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.dim() != 4:
            raise DataError("images must be a uint8 tensor N x C x H x W")
        if len(self) == 0:
            raise DataError("the data set holds no images")
        if self.labels is not None and self.labels.shape[0] != len(self):
            raise DataError(f"{self.labels.shape[0]} labels for {len(self)} images")
        if self.names is not None and len(self.names) != len(self):
            raise DataError(f"{len(self.names)} names for {len(self)} images")

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def channels(self) -> int:
        return int(self.images.shape[1])

    @property
    def image_size(self) -> tuple[int, int]:
        """(H, W)."""
        return int(self.images.shape[2]), int(self.images.shape[3])

    def subset(self, index: torch.Tensor | Sequence[int]) -> ImageSet:
        """The images at `index`, in that order."""
        idx = torch.as_tensor(index, dtype=torch.long)
        return ImageSet(
            self.images[idx],
            None if self.labels is None else self.labels[idx],
            None if self.names is None else [self.names[i] for i in idx.tolist()],
            self.class_names,
        )

    @classmethod
    def from_arrays(
        cls,
        images: np.ndarray | torch.Tensor | Sequence[np.ndarray],
        labels: np.ndarray | torch.Tensor | Sequence[int] | None = None,
        names: list[str] | None = None,
        image_size: int | None = None,
        class_names: list[str] | None = None,
    ) -> ImageSet:
        """Builds an ImageSet from uint8 arrays in the usual image layout.

        images: one array N x H x W or N x H x W x C, or a list of H x W or H x W x C arrays whose
        sizes may differ when `image_size` is given (each is then resized to image_size x
        image_size). Grey and colour may be mixed (grey is repeated to RGB); alpha is dropped.
        labels: N class ids, or N x L multi-hot.
        """
        if isinstance(images, (np.ndarray, torch.Tensor)):
            items = [torch.tensor(np.asarray(images))]
            if items[0].dim() not in (3, 4):
                raise DataError("images must be N x H x W or N x H x W x C")
            batched = True
        else:
            items = [torch.tensor(np.asarray(image)) for image in images]
            if not items:
                raise DataError("the data set holds no images")
            batched = False
        tensors = [_to_nchw(item, batched) for item in items]
        channels = max(t.shape[1] for t in tensors)
        tensors = [t.expand(-1, channels, -1, -1) for t in tensors]
        if image_size is not None:
            tensors = [resize(t, image_size) for t in tensors]
        sizes = {tuple(t.shape[2:]) for t in tensors}
        if len(sizes) > 1:
            raise DataError(
                f"images have {len(sizes)} different sizes; pass an image size to resize them"
            )
        label_tensor = None
        if labels is not None:
            label_tensor = torch.as_tensor(np.asarray(labels)).long()
        return cls(torch.cat(tensors), label_tensor, names, class_names)


def _to_nchw(array: torch.Tensor, batched: bool) -> torch.Tensor:
    """uint8 (N x) H x W (x C) -> N x C x H x W with C in {1, 3}."""
    if array.dtype != torch.uint8:
        raise DataError(f"images must be uint8, got {str(array.dtype).removeprefix('torch.')}")
    if not batched:
        array = array.unsqueeze(0)
    if array.dim() == 3:
        array = array.unsqueeze(-1)
    if array.dim() != 4 or array.shape[-1] not in (1, 3, 4):
        raise DataError(f"cannot read an image array of shape {tuple(array.shape)}")
    return array[..., :3].permute(0, 3, 1, 2).contiguous()


def resize(images: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 N x C x H x W -> uint8 N x C x size x size (bilinear, antialiased when shrinking)."""
    if images.shape[2] == size and images.shape[3] == size:
        return images
    out = F.interpolate(images.float(), size=(size, size), mode="bilinear", antialias=True)
    return out.round_().clamp_(0, 255).to(torch.uint8)


def load_dataset(spec: str, image_size: int | None = None) -> ImageSet:
    """Loads `spec`: a folder of images (class subfolders become labels), an .npz file,
    `fashion-mnist:train|test` (optionally `fashion-mnist:DIR:train|test`), or
    `cifar10:DIR:train|test`. Images are resized to image_size x image_size when given.
    Raises DataError with a one-line message when the data cannot be used.
    """
    if spec.startswith("fashion-mnist:"):
        parts = spec.split(":")
        folder = Path(parts[1]) if len(parts) == 3 else FASHION_MNIST_DIR
        data = load_fashion_mnist(folder, _split(spec, parts[-1]))
    elif spec.startswith("cifar10:"):
        parts = spec.split(":")
        if len(parts) != 3:
            raise DataError(f"{spec!r}: write cifar10:DIR:train or cifar10:DIR:test")
        data = load_cifar10(Path(parts[1]), _split(spec, parts[2]))
    else:
        path = Path(spec)
        if path.suffix == ".npz":
            data = load_npz(path)
        elif path.is_dir():
            return load_image_folder(path, image_size)
        else:
            raise DataError(
                f"{spec!r} is not an existing folder, .npz file, "
                "fashion-mnist:SPLIT or cifar10:DIR:SPLIT"
            )
    if image_size is not None:
        data.images = resize(data.images, image_size)
    return data


def _split(spec: str, split: str) -> str:
    if split not in ("train", "test"):
        raise DataError(f"{spec!r}: the split must be train or test")
    return split


def load_npz(path: Path) -> ImageSet:
    """An .npz with `images` (uint8 N x H x W or N x H x W x C), optional `labels` (N or N x L)."""
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    try:
        archive = np.load(path, allow_pickle=False)  # an .npz must never run code on load
    except (OSError, ValueError, zipfile.BadZipFile) as error:
        raise DataError(f"{path}: not a readable .npz file ({error})") from None
    with archive:
        if "images" not in archive:
            found = ", ".join(archive.files) or "nothing"
            raise DataError(f"{path}: no 'images' array (found {found})")
        try:
            images = archive["images"]
        except ValueError:
            # np.save stores a list of differently sized images as an object array.
            raise DataError(
                f"{path}: 'images' must be one uint8 array of equal-sized images"
            ) from None
        labels = archive.get("labels")
    if images.ndim not in (3, 4) or len(images) == 0:
        raise DataError(f"{path}: 'images' must be a non-empty N x H x W or N x H x W x C array")
    if labels is not None and len(labels) != len(images):
        raise DataError(f"{path}: {len(labels)} labels for {len(images)} images")
    try:
        return ImageSet.from_arrays(images, labels)
    except DataError as error:
        raise DataError(f"{path}: {error}") from None


def _read_idx(path: Path) -> np.ndarray:
    """An IDX file (the MNIST format), gzipped: big-endian header, then uint8 data."""
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    with gzip.open(path, "rb") as f:
        raw = f.read()
    (magic,) = struct.unpack(">I", raw[:4])
    dims = magic & 0xFF
    shape = struct.unpack(f">{dims}I", raw[4 : 4 + 4 * dims])
    if magic >> 8 != 0x08:
        raise DataError(f"{path}: not an unsigned-byte IDX file")
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * dims).reshape(shape)


def load_fashion_mnist(folder: Path, split: str) -> ImageSet:
    """Fashion-MNIST from its gzipped IDX files, zero-padded from 28 x 28 to 32 x 32.

    The padding gives the patch grid and the stride-2 stages even sizes, as in the reference
    prototype (docs/benchmark-anchors.md); L2 distances between raw pixels are unchanged.
    """
    prefix = "train" if split == "train" else "t10k"
    images = _read_idx(folder / f"{prefix}-images-idx3-ubyte.gz")
    labels = _read_idx(folder / f"{prefix}-labels-idx1-ubyte.gz")
    tensor = F.pad(torch.from_numpy(images.copy()).unsqueeze(1), (2, 2, 2, 2))
    names = [
        "T-shirt/top",
        "Trouser",
        "Pullover",
        "Dress",
        "Coat",
        "Sandal",
        "Shirt",
        "Sneaker",
        "Bag",
        "Ankle boot",
    ]
    return ImageSet(tensor, torch.from_numpy(labels.astype(np.int64)), class_names=names)


def load_cifar10(folder: Path, split: str) -> ImageSet:
    """CIFAR-10 from its python-pickle batches (data_batch_1..5 or test_batch).

    Each batch is a pickled dict with b"data" (uint8 N x 3072, RGB planes of 32 x 32) and
    b"labels". Unpickling is confined to this documented format, from a folder the user names.
    """
    files = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
    images, labels = [], []
    for name in files:
        path = folder / name
        if not path.is_file():
            raise DataError(f"{path}: no such file (expected the CIFAR-10 python batches)")
        with path.open("rb") as f:
            batch = pickle.load(f, encoding="bytes")
        images.append(np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
        labels.extend(batch[b"labels"])
    names_path = folder / "batches.meta"
    class_names = None
    if names_path.is_file():
        with names_path.open("rb") as f:
            class_names = [n.decode() for n in pickle.load(f, encoding="bytes")[b"label_names"]]
    return ImageSet(
        torch.from_numpy(np.concatenate(images)),
        torch.tensor(labels, dtype=torch.long),
        class_names=class_names,
    )


def load_image_folder(folder: Path, image_size: int | None = None) -> ImageSet:
    """Every image file in `folder`; when it has subfolders, each is a class and its images are
    labelled with it. Mixed sizes need `image_size`."""
    # Lazily imported: Pillow is only needed here, and the GPU machine has no Pillow.
    from PIL import Image, UnidentifiedImageError

    classes = sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    sources = [(folder / c, i) for i, c in enumerate(classes)] if classes else [(folder, -1)]
    arrays: list[np.ndarray] = []
    labels: list[int] = []
    names: list[str] = []
    for directory, label in sources:
        for path in sorted(directory.iterdir()):
            if path.suffix.lower() not in IMAGE_SUFFIXES or not path.is_file():
                continue
            try:
                with Image.open(path) as image:
                    grey = image.mode in ("1", "L", "I;16", "I", "F")
                    arrays.append(np.asarray(image.convert("L" if grey else "RGB")))
            except (OSError, UnidentifiedImageError):
                raise DataError(f"{path}: not a readable image") from None
            labels.append(label)
            names.append(str(path.relative_to(folder)))
    if not arrays:
        raise DataError(f"{folder}: no images found")
    return ImageSet.from_arrays(
        arrays,
        labels if classes else None,
        names,
        image_size,
        class_names=classes or None,
    )
