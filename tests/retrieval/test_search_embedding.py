"""Embedding a collection: version 1 on cached pretrained features (and older collections'
seeded networks), resuming, activation."""

from __future__ import annotations

import io
from functools import partial

import numpy as np
import pytest
from django.conf import settings
from PIL import Image as PILImage

from retrieval import embedding, features, queries, search, versions
from retrieval.autoret.checkpoint import read_info
from retrieval.autoret.features import FeatureConfig
from retrieval.imports import Candidate, import_items
from retrieval.models import Collection, Embedding, ImageFeature, ModelVersion

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
    settings.MODELS_DIR = tmp_path / "models"


def test_initial_version_is_the_pretrained_feature_head_created_once(collection) -> None:
    add_pictures(collection, range(3))
    version = versions.ensure_initial_version(collection)
    assert version.kind == ModelVersion.Kind.PRETRAINED
    assert version.number == 1
    assert version.config == features.default_version_config()
    assert version.checkpoint == ""  # fitted once the images have features
    assert versions.ensure_initial_version(collection) == version
    assert collection.versions.count() == 1


def test_embedding_fills_features_fits_version_one_without_training_and_activates_it(
    collection,
) -> None:
    ids = add_pictures(collection, range(12))
    result = embedding.embed_new_images(collection)
    assert result.finished and result.activated and result.embedded == 12
    collection.refresh_from_db()
    version = collection.active_version
    assert version is not None
    assert version.status == ModelVersion.Status.READY
    assert version.activated_at is not None
    assert sorted(Embedding.objects.filter(version=version).values_list("image", flat=True)) == ids
    assert search.version_label(version)["text"] == "version 1: ImageNet features, untrained"
    # Version 1 needs no training: a fitted PCA saved as its checkpoint, no training config.
    info = read_info(settings.MODELS_DIR / version.checkpoint)
    assert info["step"] == 0 and info["train"] is None and info["loss_history"] == []
    assert info["metrics"]["fitted_on_images"] == 12
    assert set(info["metrics"]["fit"]) == {"density", "whitened"}  # what the fit chose, and why
    assert "train" not in version.config and "training" not in version.metrics
    cfg = features.feature_config(version)
    assert cfg is not None
    assert ImageFeature.objects.filter(image__collection=collection, key=cfg.key).count() == 12


def count_extractions(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The ids of every image whose features are computed from now on, in order."""
    computed: list[int] = []
    real = features.extract

    def counting(images, cfg):
        computed.extend(image.pk for image in images)
        return real(images, cfg)

    monkeypatch.setattr(features, "extract", counting)
    return computed


def test_features_are_computed_once_per_image_and_configuration(collection, monkeypatch) -> None:
    ids = add_pictures(collection, range(6))
    computed = count_extractions(monkeypatch)
    embedding.embed_new_images(collection)
    assert sorted(computed) == ids
    cfg = FeatureConfig()
    # Another fill, a resumed one, and the embedding walk of a second version find them stored.
    assert features.fill(collection, cfg).stored == 0
    _, array, _ = features.ensure(list(collection.images.all()), cfg)
    assert array.shape == (6, cfg.steps, cfg.dim) and array.dtype == np.float16
    assert sorted(computed) == ids
    # Another configuration is another cache entry.
    small = FeatureConfig(input_size=64)
    assert features.fill(collection, small).stored == 6
    assert ImageFeature.objects.filter(image__collection=collection).count() == 12


def test_stored_features_of_a_deleted_image_are_skipped_not_an_error(collection) -> None:
    ids = add_pictures(collection, range(2))
    cfg = FeatureConfig(input_size=64)
    images = list(collection.images.order_by("pk"))
    got, array, _ = features.extract(images, cfg)
    collection.images.filter(pk=ids[0]).delete()
    assert features.store(got, array, cfg) == 1
    assert list(ImageFeature.objects.values_list("image_id", flat=True)) == [ids[1]]


def test_the_fitted_head_is_reloaded_identically_in_another_process(collection) -> None:
    ids = add_pictures(collection, range(4))
    embedding.embed_new_images(collection)
    collection.refresh_from_db()
    version = collection.active_version
    assert version is not None
    stored = queries.vector_of(version, ids[2])
    assert stored is not None
    # A fresh process has no cached network: it loads the version's checkpoint. The stored
    # vector came from float16 cached features, the query from float32 ones: close, not equal.
    embedding._network.cache_clear()
    again = embedding.embed_upload(version, io.BytesIO(png(2)))
    np.testing.assert_allclose(again, stored, atol=0.05)
    assert np.linalg.norm(again) == pytest.approx(5.0, abs=1e-3)


def test_a_collections_older_seeded_network_still_embeds_from_pixels(collection) -> None:
    ids = add_pictures(collection, range(4))
    version = ModelVersion.objects.create(
        collection=collection,
        number=1,
        kind=ModelVersion.Kind.UNTRAINED,
        config={"model": versions.initial_model_config(collection), "seed": 0},
    )
    result = embedding.embed_new_images(collection, version=version)
    assert result.finished and result.embedded == 4
    assert not ImageFeature.objects.filter(image__collection=collection).exists()
    stored = queries.vector_of(version, ids[2])
    assert stored is not None
    embedding._network.cache_clear()
    again = embedding.embed_upload(version, io.BytesIO(png(2)))
    np.testing.assert_allclose(again, stored, rtol=1e-4, atol=1e-5)


def test_a_version_recorded_before_feature_layers_keeps_embedding_with_head_features(
    collection,
) -> None:
    # Version 1 as session 7 recorded it: no "layers" key, fitted on the head's 1280 features.
    add_pictures(collection, range(4))
    version = versions.ensure_initial_version(collection)
    old = FeatureConfig(input_size=64, layers="head").to_dict()
    del old["layers"]
    version.config = {**version.config, "features": old}
    version.save(update_fields=["config"])
    assert embedding.embed_new_images(collection).finished
    head_key = "efficientnet_lite0-64px-2x2-regions"
    keys = set(ImageFeature.objects.values_list("key", flat=True))
    assert keys == {head_key}
    (row,) = ImageFeature.objects.filter(image__collection=collection)[:1]
    assert len(bytes(row.data)) == 5 * 1280 * 2  # float16 T x 1280
    # A new upload joins the old version with the old features, not the new default's.
    new = add_pictures(collection, [4])
    assert embedding.embed_new_images(collection).embedded == 1
    assert ImageFeature.objects.get(image_id=new[0]).key == head_key
    assert not ImageFeature.objects.filter(key=FeatureConfig().key).exists()


def test_embedding_resumes_in_batches_without_doubles(collection) -> None:
    ids = add_pictures(collection, range(10))
    steps: list[int] = []
    first = embedding.embed_new_images(collection, limit=4, batch_size=3, progress=steps.append)
    assert first.phase == "features" and not first.finished and first.next_after == ids[3]
    assert steps == [4] and ImageFeature.objects.count() == 4
    collection.refresh_from_db()
    assert collection.active_version is None  # never a half-embedded active version
    rest = embedding.embed_new_images(collection, after_id=first.next_after, limit=4)
    assert rest.phase == "features" and rest.next_after == ids[7]
    last = embedding.embed_new_images(collection, after_id=rest.next_after)
    assert last.finished and last.activated and last.embedded == 10
    # A redelivered batch finds nothing to do.
    again = embedding.embed_new_images(collection, limit=4)
    assert again.embedded == 0
    assert Embedding.objects.filter(version__collection=collection).count() == 10
    assert ImageFeature.objects.count() == 10


def test_one_image_waits_for_a_second_before_version_one_is_fitted(collection) -> None:
    add_pictures(collection, [0])
    first = embedding.embed_new_images(collection)
    assert not first.finished and first.next_after is None
    collection.refresh_from_db()
    assert collection.active_version is None
    assert collection.versions.get().checkpoint == ""
    add_pictures(collection, [1])
    second = embedding.embed_new_images(collection)
    assert second.finished and second.activated and second.embedded == 2


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
    assert ImageFeature.objects.filter(image_id__in=new).count() == 3


def test_an_unreadable_file_is_skipped_not_blocking(collection) -> None:
    ids = add_pictures(collection, range(4))
    broken = collection.images.get(pk=ids[1])
    with broken.file.open("wb") as handle:
        handle.write(b"not an image any more")
    result = embedding.embed_new_images(collection)
    assert result.finished and result.embedded == 3
    assert [image_id for image_id, _ in result.failed] == [ids[1]]


def test_grey_and_colour_pictures_get_features_of_one_shape(collection) -> None:
    import_items(collection, [Candidate("c.png", lambda: png(1, colour=True))])
    add_pictures(collection, [2])
    cfg = FeatureConfig(input_size=64)
    ids, array, failed = features.extract(list(collection.images.order_by("pk")), cfg)
    assert len(ids) == 2 and not failed
    assert array.shape == (2, cfg.steps, cfg.dim) and np.isfinite(array).all()


def test_map_projection_is_in_the_unit_square() -> None:
    points = search.project_2d(np.random.default_rng(0).normal(size=(30, 128)))
    assert points.shape == (30, 2)
    assert points.min() >= 0.0 and points.max() <= 1.0


def test_the_cli_default_trains_what_the_platform_trains(tmp_path) -> None:
    from retrieval.autoret.cli import main

    data = tmp_path / "tiny.npz"
    rng = np.random.default_rng(0)
    np.savez(data, images=rng.integers(0, 256, (12, 16, 16), dtype=np.uint8))
    out = tmp_path / "ckpt"
    argv = ["train", "--data", str(data), "--out", str(out), "--steps", "2", "--no-progress"]
    assert main(argv) == 0
    info = read_info(out)
    platform = features.default_version_config()
    assert info["features"] == platform["features"] and info["head"] == platform["head"]
    # The training settings too, but for what each run sets: its budget, seed and device.
    from retrieval.autoret.head_training import HeadTrainConfig

    per_run = {"steps", "seconds", "seed", "device", "log_every"}
    defaults = {k: v for k, v in HeadTrainConfig().to_dict().items() if k not in per_run}
    assert {k: info["train"][k] for k in defaults} == defaults
