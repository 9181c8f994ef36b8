"""import_images and load_demo on tiny inputs (embedding skipped: tested with the search code)."""

from __future__ import annotations

from io import StringIO
from pathlib import Path

import numpy as np
import pytest
from django.core.management import CommandError, call_command

from retrieval.models import Collection, Membership
from tests.retrieval.conftest import image_bytes, polyglot_bytes, zip_bytes

pytestmark = pytest.mark.django_db


def run(*args: str) -> str:
    out = StringIO()
    call_command(*args, "--no-embed", verbosity=0, stdout=out)
    return out.getvalue()


def test_import_a_folder_with_class_subfolders_as_labels(tmp_path: Path, collection) -> None:
    tmp_path = tmp_path / "in"  # beside, not around, the test's media folder
    (tmp_path / "shoes").mkdir(parents=True)
    (tmp_path / "shirts").mkdir()
    (tmp_path / "shoes" / "a.png").write_bytes(image_bytes((1, 1, 1)))
    (tmp_path / "shirts" / "b.jpg").write_bytes(image_bytes((2, 2, 2), fmt="JPEG"))
    (tmp_path / "shirts" / "notes.png").write_text("not an image")
    (tmp_path / ".hidden.png").write_bytes(image_bytes((3, 3, 3)))
    output = run("import_images", collection.name, str(tmp_path), "--labels")
    assert "2 created, 0 duplicates, 1 rejected" in output
    assert "rejected shirts/notes.png: not an image" in output
    labels = dict(collection.images.values_list("original_name", "label"))
    assert labels == {"shoes/a.png": "shoes", "shirts/b.jpg": "shirts"}
    again = run("import_images", collection.name, str(tmp_path), "--labels")
    assert "0 created, 2 duplicates" in again


def test_the_command_rejects_a_polyglot_like_an_upload(tmp_path: Path, collection) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "ok.png").write_bytes(image_bytes())
    (folder / "page.jpg").write_bytes(polyglot_bytes(b"<script>alert(1)</script>"))
    output = run("import_images", collection.name, str(folder))
    assert "1 created, 0 duplicates, 1 rejected" in output
    assert "rejected page.jpg: contains HTML markup ('<script' at byte" in output
    assert list(collection.images.values_list("original_name", flat=True)) == ["ok.png"]


def test_import_a_zip_with_limit(tmp_path: Path, collection) -> None:
    archive = tmp_path / "set.zip"
    archive.write_bytes(zip_bytes({f"{i}.png": image_bytes((i, 0, 0)) for i in range(4)}))
    assert "3 created" in run("import_images", str(collection.pk), str(archive), "--limit", "3")


def test_import_an_npz_keeps_labels_as_ground_truth(tmp_path: Path) -> None:
    path = tmp_path / "tiny.npz"
    images = np.stack([np.full((8, 8), i * 20, dtype=np.uint8) for i in range(5)])
    np.savez(path, images=images, labels=np.array([0, 1, 0, 1, 2]))
    output = run("import_images", "Tiny", str(path), "--create")
    assert "Tiny: 5 created" in output
    collection = Collection.objects.get(name="Tiny")
    assert list(collection.images.order_by("id").values_list("label", flat=True)) == [
        "0", "1", "0", "1", "2"
    ]  # fmt: skip
    assert {image.format for image in collection.images.all()} == {"PNG"}


def test_import_fashion_mnist_with_class_names() -> None:
    run("import_images", "FM", "fashion-mnist:test", "--create", "--limit", "3")
    labels = list(
        Collection.objects.get(name="FM").images.order_by("id").values_list("label", flat=True)
    )
    assert labels == ["Ankle boot", "Pullover", "Trouser"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("Nope", "/tmp"), "no collection named 'Nope'"),
        (("Tiny", "/no/such/place", "--create"), "not an existing folder"),
        (("Tiny", "fashion-mnist:valid", "--create"), "split must be train or test"),
    ],
)
def test_bad_arguments_are_one_clear_error(args: tuple[str, ...], message: str) -> None:
    with pytest.raises(CommandError, match=message):
        run("import_images", *args)


def test_load_demo_is_balanced_deterministic_and_idempotent(admin) -> None:
    first = run("load_demo", "--size", "20", "--owner", admin.username)
    assert first.strip() == "demo      Fashion-MNIST demo: 20 images (20 added now)"
    demo = Collection.objects.get(name="Fashion-MNIST demo")
    labels = list(demo.images.values_list("label", flat=True))
    assert len(set(labels)) == 10
    assert all(labels.count(label) == 2 for label in set(labels))
    names = sorted(demo.images.values_list("original_name", flat=True))
    assert Membership.objects.get(collection=demo, user=admin).role == Membership.Role.ADMIN
    second = run("load_demo", "--size", "20")
    assert "20 images, already loaded" in second
    assert sorted(demo.images.values_list("original_name", flat=True)) == names
    assert Collection.objects.filter(name="Fashion-MNIST demo").count() == 1


def test_load_demo_refuses_a_bad_size() -> None:
    with pytest.raises(CommandError, match="not a number or 'all'"):
        run("load_demo", "--size", "lots")
