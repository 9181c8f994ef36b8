from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from retrieval.autoret.data import FASHION_MNIST_DIR, DataError, ImageSet, load_dataset


def test_npz_grey_images_and_labels_load_as_one_uint8_tensor(tmp_path: Path) -> None:
    path = tmp_path / "set.npz"
    images = np.random.default_rng(0).integers(0, 256, (5, 12, 10), dtype=np.uint8)
    np.savez(path, images=images, labels=np.array([0, 1, 0, 2, 1]))
    data = load_dataset(str(path))
    assert data.images.shape == (5, 1, 12, 10) and data.images.dtype == torch.uint8
    assert torch.equal(data.images[:, 0], torch.from_numpy(images))
    assert data.labels is not None and data.labels.tolist() == [0, 1, 0, 2, 1]


def test_npz_colour_images_are_channels_first_and_resized_on_request(tmp_path: Path) -> None:
    path = tmp_path / "colour.npz"
    images = np.zeros((3, 8, 8, 3), dtype=np.uint8)
    images[..., 2] = 200
    np.savez(path, images=images)
    data = load_dataset(str(path), image_size=16)
    assert data.images.shape == (3, 3, 16, 16) and data.labels is None
    assert data.images[:, 2].min() == 200 and data.images[:, :2].max() == 0


@pytest.mark.parametrize(
    ("arrays", "message"),
    [
        ({"pixels": np.zeros((2, 4, 4), np.uint8)}, "no 'images' array"),
        ({"images": np.zeros((0, 4, 4), np.uint8)}, "non-empty"),
        ({"images": np.zeros((2, 4, 4), np.uint8), "labels": np.zeros(3)}, "3 labels for 2 images"),
        ({"images": np.zeros((2, 4, 4), np.float32)}, "must be uint8"),
    ],
)
def test_bad_npz_gives_one_clear_error(tmp_path: Path, arrays: dict, message: str) -> None:
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    with pytest.raises(DataError, match=message) as error:
        load_dataset(str(path))
    assert "\n" not in str(error.value)


def test_npz_with_mismatched_image_sizes_gives_one_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "ragged.npz"
    ragged = np.empty(2, dtype=object)
    ragged[0], ragged[1] = np.zeros((4, 4), np.uint8), np.zeros((5, 5), np.uint8)
    np.savez(path, images=ragged)
    with pytest.raises(DataError, match="equal-sized images"):
        load_dataset(str(path))


@pytest.mark.parametrize(
    "spec", ["/no/such/folder", "missing.npz", "cifar10:/nowhere:train", "fashion-mnist:val"]
)
def test_bad_paths_give_one_clear_error(spec: str) -> None:
    with pytest.raises(DataError) as error:
        load_dataset(spec)
    assert "\n" not in str(error.value)


def _write_cifar_batch(path: Path, images: np.ndarray, labels: list[int]) -> None:
    """The CIFAR-10 python format: a pickled dict of bytes keys, data as N x 3072 RGB planes."""
    batch = {
        b"batch_label": b"fixture",
        b"labels": labels,
        b"data": images.reshape(len(images), -1),
    }
    with path.open("wb") as f:
        pickle.dump(batch, f, protocol=2)


def test_cifar10_pickle_batches_load_in_their_documented_format(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    train = rng.integers(0, 256, (5, 2, 3, 32, 32), dtype=np.uint8)
    for i in range(5):
        _write_cifar_batch(tmp_path / f"data_batch_{i + 1}", train[i], [i, 9 - i])
    _write_cifar_batch(tmp_path / "test_batch", train[0], [3, 4])
    with (tmp_path / "batches.meta").open("wb") as f:
        pickle.dump({b"label_names": [f"c{i}".encode() for i in range(10)]}, f)
    data = load_dataset(f"cifar10:{tmp_path}:train")
    assert data.images.shape == (10, 3, 32, 32)
    assert torch.equal(data.images, torch.from_numpy(train.reshape(10, 3, 32, 32)))
    assert data.labels is not None and data.labels.tolist() == [0, 9, 1, 8, 2, 7, 3, 6, 4, 5]
    assert data.class_names is not None and data.class_names[9] == "c9"
    assert load_dataset(f"cifar10:{tmp_path}:test").labels.tolist() == [3, 4]  # type: ignore[union-attr]


def test_image_folder_class_subfolders_become_labels(tmp_path: Path) -> None:
    from PIL import Image

    for name, colour in (("cats", (255, 0, 0)), ("dogs", (0, 0, 255))):
        (tmp_path / name).mkdir()
        for i, size in enumerate([(20, 10), (8, 8)]):
            Image.new("RGB", size, colour).save(tmp_path / name / f"{i}.png")
    (tmp_path / "cats" / "notes.txt").write_text("not an image")
    with pytest.raises(DataError, match="different sizes"):
        load_dataset(str(tmp_path))
    data = load_dataset(str(tmp_path), image_size=12)
    assert data.images.shape == (4, 3, 12, 12)
    assert data.labels is not None and data.labels.tolist() == [0, 0, 1, 1]
    assert data.class_names == ["cats", "dogs"] and data.names == [
        "cats/0.png",
        "cats/1.png",
        "dogs/0.png",
        "dogs/1.png",
    ]
    assert data.images[0, 0].min() == 255 and data.images[2, 2].min() == 255


def test_flat_image_folder_has_no_labels_and_broken_files_are_named(tmp_path: Path) -> None:
    from PIL import Image

    Image.new("L", (6, 6), 7).save(tmp_path / "a.png")
    data = load_dataset(str(tmp_path))
    assert data.images.shape == (1, 1, 6, 6) and data.labels is None
    (tmp_path / "b.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(DataError, match="b.jpg: not a readable image"):
        load_dataset(str(tmp_path))


def test_empty_folder_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no images"):
        load_dataset(str(tmp_path))


def test_from_arrays_mixes_grey_and_colour_and_sizes_when_resizing() -> None:
    arrays = [
        np.full((10, 6), 50, np.uint8),
        np.full((4, 4, 3), 90, np.uint8),
        np.zeros((5, 5, 4), np.uint8),
    ]
    data = ImageSet.from_arrays(arrays, labels=[1, 2, 3], names=["a", "b", "c"], image_size=8)
    assert data.images.shape == (3, 3, 8, 8)
    assert data.images[0].min() == 50 and data.images[1].max() == 90
    assert data.subset([2, 0]).names == ["c", "a"]


@pytest.mark.skipif(not FASHION_MNIST_DIR.is_dir(), reason="Fashion-MNIST IDX files not installed")
def test_fashion_mnist_loads_padded_to_32() -> None:
    data = load_dataset("fashion-mnist:test")
    assert data.images.shape == (10_000, 1, 32, 32)
    assert data.images[:, :, :2].max() == 0 and data.images[:, :, 2:30, 2:30].max() > 0
    assert data.labels is not None and data.labels.bincount().tolist() == [1000] * 10
