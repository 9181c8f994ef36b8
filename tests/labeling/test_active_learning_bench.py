"""bench/active_learning.py's report, without a run: which metric each data set's table, its
"answers to random's final" and results.json read, and seeds averaged metric by metric."""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
from pathlib import Path
from types import ModuleType
from unittest import mock

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench" / "active_learning.py"


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("active_learning", BENCH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    # Importing it points AUTORET_DB_NAME at the bench's own database: keep that out of the
    # environment that later tests' servers and workers inherit.
    with mock.patch.dict(os.environ):
        spec.loader.exec_module(module)
    return module


def _curve(*points: tuple[int, float, float]) -> list[dict[str, float]]:
    return [{"answers": a, "map": m, "recall@1": r} for a, m, r in points]


def test_emoji_report_reads_identity_map_and_averages_recall_over_seeds(
    bench: ModuleType, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # By recall@1 the default would reach random's final at 20 answers; by the headline at 40.
    curves = bench.merge_seeds(
        {
            "default": [
                (0, _curve((0, 0.40, 0.30), (20, 0.44, 0.50), (40, 0.50, 0.52))),
                (1, _curve((0, 0.40, 0.30), (20, 0.46, 0.50), (40, 0.52, 0.54))),
            ],
            "random": [
                (0, _curve((0, 0.40, 0.30), (20, 0.46, 0.36), (40, 0.48, 0.38))),
                (1, _curve((0, 0.40, 0.30), (20, 0.46, 0.40), (40, 0.48, 0.42))),
            ],
        }
    )
    args = argparse.Namespace(
        data="emoji", train_size=3710, queries=1855, batch=20, images_per_round=0, out=tmp_path
    )
    bench.report(curves, args)
    out = capsys.readouterr().out
    assert "active learning on emoji" in out
    assert out.index("id mAP@10") < out.index("answers to random's final") < out.index("recall@1")
    assert "| default (mean of 2 seeds) | 0.4000 | 0.4500 | 0.5100 | 40 |" in out
    assert "| default (mean of 2 seeds) | 0.3000 | 0.5000 | 0.5300 |" in out
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["data"] == "emoji" and saved["metric"] == "id mAP@10"
    assert saved["curves"]["random (mean of 2 seeds)"][-1]["recall@1"] == pytest.approx(0.40)


def test_results_from_before_data_sets_report_as_fashion_mnist(
    bench: ModuleType,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    folders = []
    for seed in (0, 1):
        folder = tmp_path / f"s{seed}"
        folder.mkdir()
        earlier_args = {"rounds": 1, "batch": 500, "images_per_round": 16384, "seed": seed}
        earlier_args |= {"train_size": 5000, "queries": 1000}
        curve = [{"answers": 0, "map": 0.59}, {"answers": 500, "map": 0.62 + seed / 100}]
        results = {"args": earlier_args, "curves": {"random": curve}}
        (folder / "results.json").write_text(json.dumps(results))
        folders.append(str(folder))
    argv = ["active_learning.py", "--results", ",".join(folders)]
    monkeypatch.setattr(sys, "argv", argv)
    bench.main()
    out = capsys.readouterr().out
    assert "active learning on fashion-mnist" in out and "mAP@1000" in out
    assert "| random (mean of 2 seeds) | 0.5900 | 0.6250 | 500 |" in out


def test_runs_of_two_cadences_are_reported_side_by_side(
    bench: ModuleType,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # Merge-gain retrained every 50 answers against random every 100: each row keeps its own
    # points, the others' show "-", and "answers to random's final" reads the finer curve.
    runs = {
        50: ("default", [(0, 0.60), (50, 0.62), (100, 0.70)]),
        100: ("random", [(0, 0.60), (100, 0.64), (200, 0.66)]),
    }
    folders = []
    for batch, (row, points) in runs.items():
        folder = tmp_path / f"b{batch}"
        folder.mkdir()
        earlier_args: dict[str, object] = {"rounds": 2, "batch": batch, "seed": 0}
        earlier_args |= {"images_per_round": 0, "train_size": 5000, "queries": 1000}
        earlier_args |= {"data": "fashion-mnist"}
        curve = [{"answers": a, "map": m} for a, m in points]
        (folder / "results.json").write_text(
            json.dumps({"args": earlier_args, "curves": {row: curve}})
        )
        folders.append(str(folder))
    monkeypatch.setattr(sys, "argv", ["active_learning.py", "--results", ",".join(folders)])
    bench.main()
    out = capsys.readouterr().out
    assert "B=50/100" in out
    assert "| strategy | 0 | 50 | 100 | 200 |" in out
    assert "| default, B=50 | 0.6000 | 0.6200 | 0.7000 | - | 100 |" in out
    assert "| random, B=100 | 0.6000 | - | 0.6400 | 0.6600 | 200 |" in out


def test_held_out_measures_are_reported_and_averaged_where_every_seed_has_them(
    bench: ModuleType, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Seed 1 held out no pair of each kind at 50 answers: no AUC there, so no mean either.
    seed0 = [{"answers": 0, "map": 0.6}, {"answers": 50, "map": 0.7, "held_out_auc": 0.8}]
    seed1 = [{"answers": 0, "map": 0.6}, {"answers": 50, "map": 0.8}]
    curves = bench.merge_seeds({"default": [(0, seed0), (1, seed1)]})
    assert "held_out_auc" not in curves["default (mean of 2 seeds)"][1]
    args = argparse.Namespace(
        data="fashion-mnist", train_size=5000, queries=1000, batch=50, images_per_round=0, out=None
    )
    bench.report(curves, args)
    out = capsys.readouterr().out
    assert "held_out_auc" in out and "before_held_out_auc" not in out
    assert "| default (seed 0) | - | 0.8000 |" in out
    assert "| default (mean of 2 seeds) | - | - |" in out
