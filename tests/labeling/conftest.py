"""A labeling-ready collection: images with files and an active trained version whose vectors
form a few clusters (so neighbour pairs straddle the alpha/2 boundary)."""

from __future__ import annotations

import hashlib
import io

import numpy as np
import pytest
from django.core.files.base import ContentFile
from PIL import Image as PILImage

from retrieval import queries
from retrieval.autoret.constants import EMBED_DIM
from retrieval.models import Collection, Image, ModelVersion


@pytest.fixture(autouse=True)
def _test_redis(live_redis: str) -> str:
    # The queue asks for mining through Celery: its messages go to the test Redis, never to the
    # development stack's.
    return live_redis


def add_images(collection: Collection, n: int) -> list[Image]:
    images = []
    for i in range(n):
        out = io.BytesIO()
        PILImage.new("RGB", (32, 32), (i * 37 % 256, i * 91 % 256, i * 13 % 256)).save(out, "PNG")
        data = out.getvalue() + i.to_bytes(4, "big")  # distinct content even for equal colours
        image = Image(
            collection=collection,
            sha256=hashlib.sha256(data).hexdigest(),
            width=32,
            height=32,
            format="PNG",
            original_name=f"img{i:03d}.png",
            label=f"class{i % 4}",
        )
        image.file.save(f"img{i}.png", ContentFile(out.getvalue()), save=False)
        image.thumbnail.save("t.webp", ContentFile(out.getvalue()), save=False)
        image.save()
        images.append(image)
    return images


def add_version(
    collection: Collection, images: list[Image], number: int, seed: int, activate: bool = True
) -> ModelVersion:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(4, EMBED_DIM)).astype(np.float32) * 3
    vectors = np.stack(
        [
            centres[i % 4] + rng.normal(size=EMBED_DIM).astype(np.float32) * 0.4
            for i in range(len(images))
        ]
    )
    version = ModelVersion.objects.create(
        collection=collection,
        number=number,
        kind=ModelVersion.Kind.TRAINED,
        status=ModelVersion.Status.READY,
        config={"train": {"alpha": 10.0}},
    )
    queries.copy_embeddings(version, [i.pk for i in images], vectors)
    if activate:
        collection.active_version = version
        collection.save(update_fields=["active_version"])
    return version


@pytest.fixture
def images(collection) -> list[Image]:
    images = add_images(collection, 24)
    add_version(collection, images, number=1, seed=1)
    return images
