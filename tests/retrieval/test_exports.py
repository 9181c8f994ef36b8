"""The embeddings and model downloads, each read back by what it is for: numpy and the CSV see the
vectors search uses; the unzipped checkpoint embeds through the CLI exactly as the platform did."""

from __future__ import annotations

import csv
import io
import json
import threading
import zipfile
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from django.db import connection
from django.test import Client
from rest_framework.test import APIClient

from retrieval import embedding, exports, features, queries, versions
from retrieval.autoret import cli
from retrieval.autoret.checkpoint import load_model, save_checkpoint
from retrieval.autoret.head import PretrainedAutoRet
from retrieval.autoret.head_training import embed_features
from retrieval.autoret.model import create_model
from retrieval.imports import Candidate, import_items
from retrieval.models import Collection, Image, ModelVersion
from tests.retrieval.test_search_embedding import png

pytestmark = pytest.mark.django_db

# The untrained network's input size: pictures of exactly this size reach both embedders
# unresized (the platform pads to a square, the CLI stretches, so other sizes differ a little).
SIZE = versions.INITIAL_IMAGE_SIZE


@pytest.fixture(autouse=True)
def models_dir(settings, tmp_path: Path) -> Path:
    settings.MODELS_DIR = tmp_path / "models"
    return settings.MODELS_DIR


@pytest.fixture
def trained(collection: Collection, models_dir: Path) -> ModelVersion:
    """Version 1: the fitted head on pretrained features, active. Version 2: a model with a
    checkpoint on disk (and the frozen training rows a job leaves beside it), embedded by the
    platform, ready."""
    pictures = [Candidate(f"{i}.png", partial(png, i, SIZE), f"class{i % 3}") for i in range(10)]
    assert not import_items(collection, pictures).rejected
    embedding.embed_new_images(collection)
    torch.manual_seed(7)
    model = create_model("autoret", image_size=SIZE, in_channels=1)
    relative = f"collection-{collection.pk}/v2-test"
    save_checkpoint(models_dir / relative, model, step=3, metrics={"loss": 0.5})
    (models_dir / relative / "data.npz").write_bytes(b"the training job's frozen rows")
    version = ModelVersion.objects.create(
        collection=collection, number=2, kind=ModelVersion.Kind.TRAINED,
        config={"model": model.config.to_dict()}, checkpoint=relative,
    )  # fmt: skip
    assert embedding.embed_new_images(collection, version=version).finished
    versions.complete(version)
    collection.refresh_from_db()
    return version


@pytest.fixture
def api(curator) -> APIClient:
    client = APIClient()
    client.force_authenticate(curator)
    return client


def content(response: Any) -> bytes:
    """A streamed body (the test client's response type does not say that it may stream)."""
    return b"".join(response.streaming_content)


def download(client: APIClient, url: str) -> zipfile.ZipFile:
    response = client.get(url)
    assert response.status_code == 200, response.content
    assert response["Content-Type"] == "application/zip"
    return zipfile.ZipFile(io.BytesIO(content(response)))


def test_embeddings_zip_holds_the_vectors_search_uses(
    api: APIClient, collection: Collection, trained: ModelVersion, monkeypatch
) -> None:
    # Batches smaller than the version, so the .npy is written across several keyset reads.
    monkeypatch.setattr(exports, "VECTOR_BATCH", 3)
    Image.objects.filter(original_name="4.png").update(original_name="=cmd|' /c calc'!A0")
    url = f"/api/v1/collections/{collection.pk}/embeddings/export/?version=2"
    response = api.get(url)
    assert 'filename="shoes-and-shirts-v2-embeddings.zip"' in response["Content-Disposition"]
    archive = zipfile.ZipFile(io.BytesIO(content(response)))
    name = "shoes-and-shirts-v2-embeddings"
    assert archive.namelist() == [f"{name}.npy", f"{name}.csv"]
    vectors = np.load(io.BytesIO(archive.read(f"{name}.npy")), allow_pickle=False)
    rows = list(csv.DictReader(io.StringIO(archive.read(f"{name}.csv").decode())))
    assert vectors.dtype == np.float32 and vectors.shape == (10, 128)
    ids = [int(row["image_id"]) for row in rows]
    assert ids == sorted(collection.images.values_list("pk", flat=True))
    assert [int(row["row"]) for row in rows] == list(range(10))
    stored = queries.vectors_of(trained, ids)
    np.testing.assert_array_equal(vectors, np.stack([stored[i] for i in ids]))
    names = dict(collection.images.values_list("pk", "label"))
    assert [row["label"] for row in rows] == [names[i] for i in ids]
    assert "'=cmd|' /c calc'!A0" in [row["original_name"] for row in rows]


def test_embeddings_default_to_the_active_version(
    api: APIClient, collection: Collection, trained: ModelVersion
) -> None:
    archive = download(api, f"/api/v1/collections/{collection.pk}/embeddings/export/")
    vectors = np.load(io.BytesIO(archive.read("shoes-and-shirts-v1-embeddings.npy")))
    active = collection.active_version
    assert active is not None and active.number == 1
    ids = sorted(collection.images.values_list("pk", flat=True))
    expected = queries.vectors_of(active, ids)
    np.testing.assert_array_equal(vectors, np.stack([expected[i] for i in ids]))


def test_a_version_that_is_not_ready_or_not_there_is_refused(
    api: APIClient, collection: Collection, trained: ModelVersion
) -> None:
    ModelVersion.objects.filter(pk=trained.pk).update(status=ModelVersion.Status.EMBEDDING)
    base = f"/api/v1/collections/{collection.pk}/embeddings/export/"
    refused = api.get(f"{base}?version=2")
    assert refused.status_code == 409
    assert "only a ready version" in refused.json()["detail"]
    assert api.get(f"{base}?version=9").status_code == 404
    assert api.get(f"{base}?version=two").status_code == 400


@pytest.mark.django_db(transaction=True)
def test_an_image_deleted_during_the_download_leaves_the_rows_and_vectors_in_step(
    collection: Collection, trained: ModelVersion, monkeypatch
) -> None:
    monkeypatch.setattr(exports, "CHUNK", 1)  # every write leaves at once
    chunks = exports.export_embeddings(trained)
    first = next(chunks)  # the .npy has begun: its header announces the N counted

    def delete_elsewhere() -> None:
        try:
            Image.objects.filter(collection=collection).latest("pk").delete()
        finally:
            connection.close()

    # Another request, on its own connection, deletes an image before the CSV is written.
    other = threading.Thread(target=delete_elsewhere)
    other.start()
    other.join()
    archive = zipfile.ZipFile(io.BytesIO(first + b"".join(chunks)))
    assert collection.images.count() == 9
    name = exports.embeddings_name(trained)
    vectors = np.load(io.BytesIO(archive.read(f"{name}.npy")))
    rows = list(csv.DictReader(io.StringIO(archive.read(f"{name}.csv").decode())))
    assert len(vectors) == len(rows) == 10


def test_downloaded_model_embeds_through_the_cli_as_the_platform_does(
    api: APIClient, collection: Collection, trained: ModelVersion, tmp_path: Path
) -> None:
    url = f"/api/v1/collections/{collection.pk}/model/export/?version=2"
    response = api.get(url)
    assert 'filename="shoes-and-shirts-v2-model.zip"' in response["Content-Disposition"]
    data = content(response)
    archive = zipfile.ZipFile(io.BytesIO(data))
    folder = "shoes-and-shirts-v2-model"
    # The model's files, not the job's frozen training rows.
    assert sorted(archive.namelist()) == [
        f"{folder}/checkpoint.json",
        f"{folder}/model.safetensors",
    ]
    archive.extractall(tmp_path / "download")
    assert json.loads(archive.read(f"{folder}/checkpoint.json"))["step"] == 3
    images = tmp_path / "images"
    images.mkdir()
    ids = sorted(collection.images.values_list("pk", flat=True))
    for image in collection.images.all():
        (images / f"{image.pk:09d}.png").write_bytes(image.file.read())
    out = tmp_path / "cli.npy"
    argv = ["embed", "--checkpoint", str(tmp_path / "download" / folder), "--data", str(images)]
    assert cli.main([*argv, "--out", str(out)]) == 0
    stored = queries.vectors_of(trained, ids)
    platform = np.stack([stored[i] for i in ids])
    np.testing.assert_allclose(np.load(out), platform, rtol=1e-5, atol=1e-6)
    # The zip itself is accepted too, without unzipping it first.
    (tmp_path / "model.zip").write_bytes(data)
    argv = ["embed", "--checkpoint", str(tmp_path / "model.zip"), "--data", str(images)]
    assert cli.main([*argv, "--out", str(tmp_path / "zip.npy")]) == 0
    np.testing.assert_array_equal(np.load(tmp_path / "zip.npy"), np.load(out))


def test_version_one_downloads_as_its_fitted_head_and_embeds_the_stored_features_alike(
    api: APIClient, collection: Collection, trained: ModelVersion, tmp_path: Path
) -> None:
    archive = download(api, f"/api/v1/collections/{collection.pk}/model/export/?version=1")
    archive.extractall(tmp_path / "download")
    (info,) = (tmp_path / "download").rglob("checkpoint.json")
    model = load_model(info.parent)
    assert isinstance(model, PretrainedAutoRet)
    version = ModelVersion.objects.get(collection=collection, number=1)
    ids, array = features.read_all(collection, model.feature_config)
    vectors = embed_features(model.head, torch.from_numpy(array)).numpy()
    stored = np.stack([np.asarray(queries.vector_of(version, image_id)) for image_id in ids])
    np.testing.assert_allclose(vectors, stored, atol=1e-5)


def test_a_seeded_untrained_network_has_no_model_to_download(
    api: APIClient, collection: Collection, trained: ModelVersion
) -> None:
    ModelVersion.objects.create(
        collection=collection, number=3, kind=ModelVersion.Kind.UNTRAINED,
        config={"model": versions.initial_model_config(collection), "seed": 0},
        status=ModelVersion.Status.READY,
    )  # fmt: skip
    response = api.get(f"/api/v1/collections/{collection.pk}/model/export/?version=3")
    assert response.status_code == 409
    detail = response.json()["detail"]
    assert "Version 3" in detail and "seed 0" in detail and "no checkpoint" in detail


def test_a_checkpoint_still_training_is_not_a_model_yet(
    api: APIClient, collection: Collection, trained: ModelVersion
) -> None:
    ModelVersion.objects.filter(pk=trained.pk).update(status=ModelVersion.Status.TRAINING)
    response = api.get(f"/api/v1/collections/{collection.pk}/model/export/?version=2")
    assert response.status_code == 409
    assert "training" in response.json()["detail"]


def test_annotators_may_not_export(
    annotator, collection: Collection, trained: ModelVersion
) -> None:
    client = APIClient()
    client.force_authenticate(annotator)
    for path in ("embeddings/export/", "model/export/", "groups/dataset/"):
        assert client.get(f"/api/v1/collections/{collection.pk}/{path}").status_code == 403


def test_the_collection_page_offers_curators_the_downloads(
    client: Client, curator, annotator, collection: Collection, trained: ModelVersion
) -> None:
    client.force_login(curator)
    html = client.get(f"/collections/{collection.pk}/").content.decode()
    assert f"/api/v1/collections/{collection.pk}/groups/dataset/" in html
    assert f"/api/v1/collections/{collection.pk}/embeddings/export/" in html
    assert f"/api/v1/collections/{collection.pk}/model/export/" in html
    assert '<option value="1" selected>1: ImageNet features, untrained (active)</option>' in html
    assert '<option value="2">2: trained on this collection</option>' in html
    client.force_login(annotator)
    html = client.get(f"/collections/{collection.pk}/").content.decode()
    assert "/embeddings/export/" not in html


def test_zip_stream_needs_no_seekable_file_and_keeps_entries_whole() -> None:
    big = bytes(range(256)) * 4096  # 1 MiB: written across several chunks
    entries = [
        exports.Entry("a/big.bin", [big[:300_000], big[300_000:]], compress=False),
        exports.Entry("a/b.csv", exports.csv_chunks(["x"], [["=1+1"], ["ok"]])),
    ]
    chunks = list(exports.zip_stream(entries))
    assert len(chunks) > 2
    archive = zipfile.ZipFile(io.BytesIO(b"".join(chunks)))
    assert archive.read("a/big.bin") == big
    assert archive.read("a/b.csv").decode().splitlines() == ["x", "'=1+1", "ok"]
    assert archive.getinfo("a/big.bin").external_attr >> 16 == 0o644


def test_the_training_jobs_frozen_rows_are_never_shipped_as_model_files() -> None:
    from worker.pipeline import DATA_FILE

    assert exports.NOT_MODEL_FILES.fullmatch(DATA_FILE)
    assert exports.NOT_MODEL_FILES.fullmatch("model.safetensors.tmp")
    assert not exports.NOT_MODEL_FILES.fullmatch("model.safetensors")
    assert not exports.NOT_MODEL_FILES.fullmatch("head.safetensors")
