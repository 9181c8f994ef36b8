from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path
from types import ModuleType

import pytest

from retrieval.autoret.data import FASHION_MNIST_DIR

BENCH = Path(__file__).resolve().parents[2] / "bench" / "retrieval_quality.py"


def _bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("retrieval_quality", BENCH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while being created
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
@pytest.mark.skipif(not FASHION_MNIST_DIR.is_dir(), reason="Fashion-MNIST IDX files not installed")
def test_tiny_bench_prints_every_row_with_finite_numbers(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bench = _bench()
    argv = ["--config", "tiny", "--train-size", "400", "--queries", "50", "--images", "256"]
    results = bench.main([*argv, "--out", str(tmp_path)])
    assert [r["row"] for r in results] == list(bench.ROWS)
    for r in results:
        assert math.isfinite(r["map"]) and 0.0 <= r["map"] <= 1.0
        assert math.isfinite(r["precision"]) and r["embed_img_s"] > 0
        if r["row"] != "raw":
            assert 0.0 <= r["map_features"] <= 1.0
        if r["row"] not in ("raw", "untrained"):
            assert r["images_seen"] == 256 and r["train_img_s"] > 0
            assert math.isfinite(r["final_loss"])
    table = capsys.readouterr().out
    assert all(r["label"] in table for r in results)
    report = json.loads((tmp_path / "results.json").read_text())
    assert report["database"] == 400 and report["queries"] == 50


@pytest.mark.slow
@pytest.mark.skipif(not FASHION_MNIST_DIR.is_dir(), reason="Fashion-MNIST IDX files not installed")
def test_feature_bench_prints_every_default_row_and_reuses_its_feature_cache(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = BENCH.parent / "feature_quality.py"
    spec = importlib.util.spec_from_file_location("feature_quality", path)
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = bench
    spec.loader.exec_module(bench)
    argv = ["--train-size", "300", "--queries", "40", "--cache", str(tmp_path / "cache")]
    argv += ["--set", "input_size=32", "--set", "steps=5", "--out", str(tmp_path)]
    results = bench.main(argv)
    assert [r["row"] for r in results] == list(bench.DEFAULT_ROWS)
    assert not set(bench.CEILING_ROWS) & set(bench.DEFAULT_ROWS)  # the ceilings run on request
    for r in results:
        assert 0.0 <= r["mAP@1000"] <= 1.0 and 0.0 <= r["P@100 L2"] <= 1.0
        if r["row"].startswith("head"):
            assert r["steps"] == 5 and math.isfinite(r["final_loss"])
    cached = sorted(p.name for p in (tmp_path / "cache").iterdir())
    # db and queries, under the configured stage layers and under the head (the frozen row)
    assert len(cached) == 4 and all("32px-2x2-regions" in name for name in cached)
    assert sum(name.endswith("regions-stages5-7.pt") for name in cached) == 2
    assert "| head-labels-10 |" in capsys.readouterr().out
    assert json.loads((tmp_path / "results.json").read_text())["features"]["input_size"] == 32
