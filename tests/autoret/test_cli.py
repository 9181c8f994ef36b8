from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from retrieval.autoret.checkpoint import read_info
from retrieval.autoret.cli import main
from retrieval.autoret.features import FeatureConfig
from retrieval.autoret.head import HeadConfig

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def tiny_npz(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    path = tmp_path / "tiny.npz"
    np.savez(
        path, images=rng.integers(0, 256, (24, 16, 16), dtype=np.uint8), labels=np.arange(24) % 3
    )
    return path


def scratch_argv(data: Path, out: Path) -> list[str]:
    """`train` of the from-scratch network for one epoch, no progress bar."""
    return [
        "train",
        "--model",
        "autoret",
        "--data",
        str(data),
        "--out",
        str(out),
        "--epochs",
        "1",
        "--no-progress",
    ]


def test_train_embed_evaluate_round_trip(
    tiny_npz: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "ckpt"
    assert (
        main(
            [
                "train",
                "--model",
                "autoret",
                "--data",
                str(tiny_npz),
                "--out",
                str(out),
                "--epochs",
                "1",
                "--batch-size",
                "8",
                "--no-progress",
            ]
        )
        == 0
    )
    summary = json.loads(capsys.readouterr().out)
    assert summary["steps"] == 3 and summary["stopped"] == "finished"
    assert (out / "model.safetensors").is_file() and (out / "checkpoint.json").is_file()

    vectors = tmp_path / "vectors.npy"
    assert (
        main(["embed", "--checkpoint", str(out), "--data", str(tiny_npz), "--out", str(vectors)])
        == 0
    )
    capsys.readouterr()
    embedded = np.load(vectors)
    assert embedded.shape == (24, 128) and embedded.dtype == np.float32

    assert (
        main(
            [
                "evaluate",
                "--checkpoint",
                str(out),
                "--queries",
                str(tiny_npz),
                "--database",
                str(tiny_npz),
                "--k",
                "5",
                "--precision-k",
                "5",
            ]
        )
        == 0
    )
    result = json.loads(capsys.readouterr().out)
    assert set(result) >= {"map", "precision"} and 0.0 <= result["map"] <= 1.0
    # Each query finds itself first, so its AP includes a relevant hit at rank 1.
    assert result["map"] >= 1 / 3


def test_train_with_no_model_trains_the_platform_default_head_on_pretrained_features(
    tiny_npz: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out, vectors = tmp_path / "ckpt", tmp_path / "v.npy"
    argv = ["train", "--data", str(tiny_npz), "--out", str(out), "--steps", "3", "--no-progress"]
    assert main(argv) == 0
    assert json.loads(capsys.readouterr().out)["steps"] == 3
    info = read_info(out)
    assert info["features"] == FeatureConfig().to_dict() and info["head"] == HeadConfig().to_dict()
    assert "model" not in info
    # Only the head is saved: the backbone is the shipped ImageNet one.
    assert (out / "model.safetensors").stat().st_size < 4_000_000
    assert (
        main(["embed", "--checkpoint", str(out), "--data", str(tiny_npz), "--out", str(vectors)])
        == 0
    )
    embedded = np.load(vectors)
    assert embedded.shape == (24, 128)
    assert np.allclose(np.linalg.norm(embedded, axis=1), HeadConfig().sphere_radius, atol=1e-3)


def test_scratch_only_options_with_the_pretrained_default_are_one_error_line(
    tiny_npz: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["train", "--data", str(tiny_npz), "--out", str(tmp_path / "c"), "--epochs", "1"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --resume and --epochs apply to the from-scratch presets")


def test_evaluate_without_labels_is_one_error_line(
    tmp_path: Path, tiny_npz: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "ckpt"
    main(
        [
            "train",
            "--data",
            str(tiny_npz),
            "--out",
            str(out),
            "--steps",
            "2",
            "--no-progress",
        ]
    )
    unlabeled = tmp_path / "unlabeled.npz"
    np.savez(unlabeled, images=np.zeros((4, 16, 16), np.uint8))
    capsys.readouterr()
    code = main(
        [
            "evaluate",
            "--checkpoint",
            str(out),
            "--queries",
            str(unlabeled),
            "--database",
            str(tiny_npz),
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "needs labels" in err


def test_missing_checkpoint_is_one_error_line(
    tmp_path: Path, tiny_npz: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(
        [
            "embed",
            "--checkpoint",
            str(tmp_path / "nope"),
            "--data",
            str(tiny_npz),
            "--out",
            str(tmp_path / "v.npy"),
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and err == f"error: {tmp_path / 'nope'}: no such checkpoint directory\n"


def test_a_zip_without_a_checkpoint_is_one_error_line(
    tmp_path: Path, tiny_npz: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    archive = tmp_path / "model.zip"
    with zipfile.ZipFile(archive, "w") as out:
        out.writestr("v3-model/notes.txt", "no checkpoint.json here")
    argv = ["embed", "--checkpoint", str(archive), "--data", str(tiny_npz)]
    code = main([*argv, "--out", str(tmp_path / "v.npy")])
    err = capsys.readouterr().err
    assert code == 2 and err == f"error: {archive}: holds 0 checkpoints, not one\n"


def test_bad_data_path_from_the_command_line_is_one_error_line(tmp_path: Path) -> None:
    completed = subprocess.run(
        [
            sys.executable,
            "-m",
            "retrieval.autoret",
            "train",
            "--data",
            str(tmp_path / "missing"),
            "--out",
            str(tmp_path / "out"),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert completed.returncode == 2
    assert completed.stdout == ""
    assert completed.stderr.startswith("error: ") and completed.stderr.count("\n") == 1
    assert "missing" in completed.stderr


def test_train_with_batch_all_pairing_records_it_in_the_checkpoint(
    tiny_npz: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "ckpt"
    argv = [
        "train",
        "--model",
        "autoret",
        "--data",
        str(tiny_npz),
        "--out",
        str(out),
        "--epochs",
        "1",
    ]
    assert main([*argv, "--batch-size", "8", "--pairing", "batch-all", "--no-progress"]) == 0
    assert json.loads(capsys.readouterr().out)["steps"] == 3
    assert read_info(out)["train"]["pairing"] == "batch-all"


def test_train_with_neighbor_pairs_and_light_augmentation_records_them(
    tiny_npz: Path, tmp_path: Path
) -> None:
    out = tmp_path / "ckpt"
    argv = scratch_argv(tiny_npz, out)
    assert main([*argv, "--batch-size", "8", "--neighbor-pairs", "0.75", "--augment", "light"]) == 0
    recorded = read_info(out)["train"]
    assert recorded["neighbor_pairs"] == 0.75
    assert recorded["augment"]["crop_area"] == [0.8, 1.0] and recorded["augment"]["shear"] == 0.1


def test_sphere_radius_and_cosine_schedule_are_recorded_and_embeddings_lie_on_the_sphere(
    tiny_npz: Path, tmp_path: Path
) -> None:
    out, vectors = tmp_path / "ckpt", tmp_path / "v.npy"
    argv = scratch_argv(tiny_npz, out)
    options = ["--sphere-radius", "5", "--lr-schedule", "cosine", "--warmup", "0.1"]
    assert main([*argv, "--batch-size", "8", *options]) == 0
    info = read_info(out)
    assert info["model"]["sphere_radius"] == 5.0
    assert info["train"]["lr_schedule"] == "cosine" and info["train"]["warmup"] == 0.1
    assert (
        main(["embed", "--checkpoint", str(out), "--data", str(tiny_npz), "--out", str(vectors)])
        == 0
    )
    norms = np.linalg.norm(np.load(vectors), axis=1)
    assert np.allclose(norms, 5.0, atol=1e-4)
