"""Embedding a collection with the untrained AutoRet network: versions, resuming, activation."""

from __future__ import annotations

import io
from functools import partial

import numpy as np
import pytest
from PIL import Image as PILImage

from retrieval import embedding, queries, search, versions
from retrieval.imports import Candidate, import_items
from retrieval.models import Collection, Embedding, ModelVersion

pytestmark = pytest.mark.django_db


def png(seed: int, size: int = 28, colour: bool = False) -> bytes:
    """A seeded random picture: a blob of brightness on noise, so pictures differ."""
    rng = np.random.default_rng(seed)
    shape = (size, size, 3) if colour else (size, size)
    pixels = (rng.random(shape) * 80).astype(np.uint8)
    x, y = rng.integers(4, size - 10, size=2)
    pixels[y : y + 8, x : x + 8] = 200 + seed % 50
    buffer = io.BytesIO()
    PILImage.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def add_pictures(collection: Collection, seeds: range | list[int], label: str = "") -> list[int]:
    """Imports seeded pictures through the import code path; returns their image ids."""
    report = import_items(
        collection,
        [Candidate(f"{seed}.png", partial(png, seed), label) for seed in seeds],
    )
    assert not report.rejected
    return report.created


@pytest.fixture(autouse=True)
def media(settings, tmp_path):
    settings.MEDIA_ROOT = tmp_path / "media"


def test_initial_version_is_an_untrained_seeded_network_created_once(collection) -> None:
    add_pictures(collection, range(3))
    version = versions.ensure_initial_version(collection)
    assert version.kind == ModelVersion.Kind.UNTRAINED
    assert version.number == 1
    assert version.config["model"]["in_channels"] == 1  # greyscale pictures
    assert version.config["model"]["image_size"] == versions.INITIAL_IMAGE_SIZE
    assert versions.ensure_initial_version(collection) == version
    assert collection.versions.count() == 1


def test_embedding_fills_the_version_then_activates_it(collection) -> None:
    ids = add_pictures(collection, range(12))
    result = embedding.embed_new_images(collection)
    assert result.finished and result.activated and result.embedded == 12
    collection.refresh_from_db()
    version = collection.active_version
    assert version is not None
    assert version.status == ModelVersion.Status.READY
    assert version.activated_at is not None
    assert sorted(Embedding.objects.filter(version=version).values_list("image", flat=True)) == ids
    assert search.version_label(version)["text"] == "version 1: untrained network"


def test_the_seeded_network_is_rebuilt_identically_in_another_process(collection) -> None:
    ids = add_pictures(collection, range(4))
    embedding.embed_new_images(collection)
    collection.refresh_from_db()
    version = collection.active_version
    assert version is not None
    stored = queries.vector_of(version, ids[2])
    assert stored is not None
    # A fresh process has no cached network: it rebuilds from the stored config and seed.
    embedding._network.cache_clear()
    again = embedding.embed_upload(version, io.BytesIO(png(2)))
    np.testing.assert_allclose(again, stored, rtol=1e-4, atol=1e-5)


def test_embedding_resumes_in_batches_without_doubles(collection) -> None:
    ids = add_pictures(collection, range(10))
    steps: list[int] = []
    first = embedding.embed_new_images(collection, limit=4, batch_size=3, progress=steps.append)
    assert not first.finished and first.embedded == 4 and first.next_after == ids[3]
    assert steps == [3, 1]
    collection.refresh_from_db()
    assert collection.active_version is None  # never a half-embedded active version
    rest = embedding.embed_new_images(collection, after_id=first.next_after)
    assert rest.finished and rest.activated and rest.embedded == 6
    # A redelivered first batch finds nothing to do.
    again = embedding.embed_new_images(collection, limit=4)
    assert again.embedded == 0
    assert Embedding.objects.filter(version__collection=collection).count() == 10


def test_images_added_later_go_into_the_active_version(collection) -> None:
    add_pictures(collection, range(5))
    embedding.embed_new_images(collection)
    collection.refresh_from_db()
    new = add_pictures(collection, range(5, 8))
    result = embedding.embed_new_images(collection)
    assert result.embedded == 3 and not result.activated
    assert collection.versions.count() == 1
    version = collection.active_version
    assert version is not None
    assert all(queries.vector_of(version, image_id) is not None for image_id in new)


def test_an_unreadable_file_is_skipped_not_blocking(collection) -> None:
    ids = add_pictures(collection, range(4))
    broken = collection.images.get(pk=ids[1])
    with broken.file.open("wb") as handle:
        handle.write(b"not an image any more")
    result = embedding.embed_new_images(collection)
    assert result.finished and result.embedded == 3
    assert [image_id for image_id, _ in result.failed] == [ids[1]]


def test_colour_collections_get_a_colour_network(collection) -> None:
    import_items(collection, [Candidate("c.png", lambda: png(1, colour=True))])
    version = versions.ensure_initial_version(collection)
    assert version.config["model"]["in_channels"] == 3


def test_map_projection_is_in_the_unit_square() -> None:
    points = search.project_2d(np.random.default_rng(0).normal(size=(30, 128)))
    assert points.shape == (30, 2)
    assert points.min() >= 0.0 and points.max() <= 1.0
