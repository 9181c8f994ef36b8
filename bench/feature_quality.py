"""Retrieval quality of pretrained patch features and the head trained on them (issue 13, a).

    .venv/bin/python bench/feature_quality.py --seeds 0,1,2 --out var/bench/features-fm

Fashion-MNIST, the CPU protocol of bench/retrieval_quality.py: all 10,000 test images as queries
against a seeded 20,000-image subset of the train images as database (and training set, without
labels except in the partially labelled rows). Relevant = same class, Euclidean ranking; mAP@1000
and P@100 of the vectors as they are and L2-normalised.

Features are extracted once per feature configuration and seed and cached under --cache
(extraction is the slow part on a CPU); every head row reads only that cache. Rows from
bench/retrieval_quality.py (the from-scratch networks) run through its own code with its `cpu`
budget. Prints one Markdown table per seed and a summary over seeds; --out writes results.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from retrieval_quality import seeded_subset  # noqa: E402

from retrieval.autoret.data import ImageSet, load_dataset  # noqa: E402
from retrieval.autoret.evaluate import evaluate_retrieval  # noqa: E402
from retrieval.autoret.features import FeatureConfig, FeatureStage, extract_features  # noqa: E402
from retrieval.autoret.head import FeatureHead, HeadConfig  # noqa: E402
from retrieval.autoret.head_training import (  # noqa: E402
    HeadTrainConfig,
    embed_features,
    train_head,
)
from retrieval.autoret.pairs import KnownPairs  # noqa: E402

SCRATCH_ROWS = {
    "scratch-faithful": "autoret",
    "scratch-recipe": "autoret-sphere-5-batch-all-light",
    "simclr-light": "simclr-light",
}
HEAD_ROWS = {
    "head": 0.0,
    "head-labels-1": 0.01,
    "head-labels-5": 0.05,
    "head-labels-10": 0.10,
    # Ceilings, on request only: what the head reaches when half or all of the collection is
    # labelled, the most any number of answers could tell it.
    "head-labels-50": 0.50,
    "head-labels-100": 1.0,
}
CEILING_ROWS = ("head-labels-50", "head-labels-100")
# "frozen": the configured features' whole-image step, as they are; "frozen-head": the issue's
# frozen row, the ImageNet head's 1280 features average-pooled over the whole image, whatever
# layers the configuration reads.
ROWS = ("raw", "frozen-head", "frozen", "version-1", *HEAD_ROWS, *SCRATCH_ROWS)
DEFAULT_ROWS = (
    "raw",
    "frozen-head",
    "frozen",
    "version-1",
    *(r for r in HEAD_ROWS if r not in CEILING_ROWS),
)


def cached_features(
    name: str, data: ImageSet, cfg: FeatureConfig, cache: Path
) -> tuple[torch.Tensor, float]:
    """(features N x T x F float16, extraction images/s when it ran now, else as recorded)."""
    path = cache / f"{name}-{cfg.key}.pt"
    if path.exists():
        stored = torch.load(path, weights_only=True)
        if stored["features"].shape[0] == len(data):
            return stored["features"], float(stored["images_per_s"])
    stage = FeatureStage(cfg)
    start = time.perf_counter()
    features = extract_features(stage, data, batch_size=256, progress=True)
    rate = len(data) / (time.perf_counter() - start)
    cache.mkdir(parents=True, exist_ok=True)
    torch.save({"features": features, "images_per_s": rate}, path)
    return features, rate


@dataclass
class Protocol:
    """One data set's queries, database and scoring (vectors in, named numbers out)."""

    name: str
    queries: ImageSet
    database: ImageSet
    score: Callable[[torch.Tensor, torch.Tensor], dict[str, float]]
    headline: tuple[str, ...]  # the metrics the tables show, first one summarised over seeds


def _unit(x: torch.Tensor) -> torch.Tensor:
    return F.normalize(x.float(), dim=1)


def fashion_mnist(seed: int, train_size: int, queries_size: int | None) -> Protocol:
    database = seeded_subset(load_dataset("fashion-mnist:train"), train_size, seed)
    queries = seeded_subset(load_dataset("fashion-mnist:test"), queries_size, seed + 1)
    assert database.labels is not None and queries.labels is not None
    q_labels, db_labels = queries.labels, database.labels

    def score(q: torch.Tensor, db: torch.Tensor) -> dict[str, float]:
        raw = evaluate_retrieval(q, q_labels, db, db_labels, 1000, 100)
        unit = evaluate_retrieval(_unit(q), q_labels, _unit(db), db_labels, 1000, 100)
        return {
            "mAP@1000": raw["map"],
            "P@100": raw["precision"],
            "mAP@1000 L2": unit["map"],
            "P@100 L2": unit["precision"],
        }

    return Protocol(
        f"fashion-mnist-s{seed}-{len(database)}-{len(queries)}",
        queries,
        database,
        score,
        ("mAP@1000", "P@100", "mAP@1000 L2", "P@100 L2"),
    )


def emoji(cache: Path) -> Protocol:
    from emoji_data import benchmark_split

    queries, database = benchmark_split(cache / "emoji")
    assert queries.images.labels is not None and database.images.labels is not None
    q_id, db_id = queries.images.labels, database.images.labels

    def score(q: torch.Tensor, db: torch.Tensor) -> dict[str, float]:
        out = {}
        for tag, (qq, dd) in {"": (q, db), " L2": (_unit(q), _unit(db))}.items():
            identity = evaluate_retrieval(qq, q_id, dd, db_id, 10, 1)
            sub = evaluate_retrieval(qq, queries.subcategory, dd, database.subcategory, 100, 1)
            out[f"id mAP@10{tag}"] = identity["map"]
            out[f"recall@1{tag}"] = identity["precision"]
            out[f"sub mAP@100{tag}"] = sub["map"]
        return out

    return Protocol(
        "emoji",
        queries.images,
        database.images,
        score,
        ("id mAP@10", "recall@1", "sub mAP@100", "id mAP@10 L2", "sub mAP@100 L2"),
    )


def protocol_features(
    protocol: Protocol, cfg: FeatureConfig, cache: Path
) -> tuple[torch.Tensor, torch.Tensor, float]:
    """(database features, query features, images/s over both) from the cache or extracted."""
    database, queries = protocol.database, protocol.queries
    db_f, db_rate = cached_features(f"{protocol.name}-db", database, cfg, cache)
    q_f, q_rate = cached_features(f"{protocol.name}-q", queries, cfg, cache)
    rate = (len(database) + len(queries)) / (len(database) / db_rate + len(queries) / q_rate)
    return db_f, q_f, rate


def run_seed(
    protocol: Protocol,
    seed: int,
    rows: Sequence[str],
    feature_cfg: FeatureConfig,
    head_cfg: HeadConfig,
    train_cfg: HeadTrainConfig,
    cache: Path,
) -> list[dict[str, Any]]:
    queries, database = protocol.queries, protocol.database
    assert database.labels is not None
    results: list[dict[str, Any]] = []
    need_features = any(r not in ("raw", "frozen-head") and r not in SCRATCH_ROWS for r in rows)
    if need_features:
        db_f, q_f, extract_rate = protocol_features(protocol, feature_cfg, cache)
    for name in rows:
        print(f"== seed {seed}: {name}", file=sys.stderr, flush=True)
        row: dict[str, Any] = {"row": name, "seed": seed}
        start = time.perf_counter()
        if name == "raw":
            q, db = queries.images.flatten(1).float(), database.images.flatten(1).float()
        elif name == "frozen":
            q, db = q_f[:, -1].float(), db_f[:, -1].float()
            row["extract_img_s"] = extract_rate
        elif name == "frozen-head":
            head_layers = dataclasses.replace(feature_cfg, layers="head")
            db_h, q_h, row["extract_img_s"] = protocol_features(protocol, head_layers, cache)
            q, db = q_h[:, -1].float(), db_h[:, -1].float()
        elif name in SCRATCH_ROWS:
            from retrieval_quality import CONFIGS, run_row

            scratch = run_row(SCRATCH_ROWS[name], CONFIGS["cpu"], database, queries, seed)
            row.update(train_s=scratch.get("train_s"), embed_img_s=scratch["embed_img_s"])
            row.update({"mAP@1000": scratch["map"], "P@100": scratch["precision"]})
            row["load_average_1min"] = os.getloadavg()[0]
            results.append(row)
            continue
        else:
            torch.manual_seed(seed)
            head = FeatureHead.for_features(head_cfg, feature_cfg)
            head.fit(db_f, seed=seed)
            row["fit"] = head.fit_report
            row["extract_img_s"] = extract_rate
            if name in HEAD_ROWS:
                fraction = HEAD_ROWS[name]
                known = (
                    KnownPairs.from_labels(database.labels, fraction, seed) if fraction else None
                )
                cfg = dataclasses.replace(train_cfg, seed=seed)
                trained = train_head(head, db_f, cfg, known=known)
                row.update(
                    train_s=trained.elapsed_s,
                    steps=trained.steps,
                    neighbor_images=trained.neighbor_images,
                    group_images=trained.group_images,
                    pseudo_images=trained.pseudo_images,
                    known_share=trained.known_share,
                    neighbors=trained.neighbors,
                    final_loss=trained.final_loss,
                )
            embed_start = time.perf_counter()
            db, q = embed_features(head, db_f), embed_features(head, q_f)
            row["head_embed_s"] = time.perf_counter() - embed_start
        row["vectors_s"] = time.perf_counter() - start
        row.update(protocol.score(q, db))
        row["load_average_1min"] = os.getloadavg()[0]
        print(json.dumps(row), file=sys.stderr, flush=True)
        results.append(row)
    return results


def _number(value: Any, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def format_table(results: Sequence[dict[str, Any]], metrics: Sequence[str]) -> str:
    lines = [
        "| row | " + " | ".join(metrics) + " | train s | extract img/s |",
        "|---|" + "---|" * (len(metrics) + 2),
    ]
    for r in results:
        cells = " | ".join(_number(r.get(m), ".3f") for m in metrics)
        lines.append(
            f"| {r['row']} | {cells} | {_number(r.get('train_s'), '.1f')} "
            f"| {_number(r.get('extract_img_s'), ',.0f')} |"
        )
    return "\n".join(lines)


def format_summary(results: Sequence[dict[str, Any]], seeds: Sequence[int], metric: str) -> str:
    """`metric` per seed and its mean, one line per row."""
    lines = [
        "| row | " + " | ".join(f"seed {s}" for s in seeds) + " | mean |",
        "|---|" + "---|" * (len(seeds) + 1),
    ]
    for name in dict.fromkeys(r["row"] for r in results):
        by_seed = {r["seed"]: r.get(metric) for r in results if r["row"] == name}
        values = [v for v in by_seed.values() if v is not None]
        cells = " | ".join(_number(by_seed.get(s), ".3f") for s in seeds)
        mean = _number(statistics.mean(values) if values else None, ".3f")
        lines.append(f"| {name} | {cells} | {mean} |")
    return "\n".join(lines)


def _overrides(pairs: Sequence[str], cls: type) -> dict[str, Any]:
    fields = {f.name: f for f in dataclasses.fields(cls)}
    out: dict[str, Any] = {}
    for pair in pairs:
        key, _, value = pair.partition("=")
        if key not in fields:
            continue
        current = getattr(cls(), key)
        if isinstance(current, bool):
            out[key] = value.lower() in ("1", "true", "yes")
        elif current is None:
            out[key] = float(value)
        else:
            out[key] = type(current)(value)
    return out


def main(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--data", choices=["fashion-mnist", "emoji"], default="fashion-mnist")
    parser.add_argument("--rows", help=f"comma-separated, from: {', '.join(ROWS)}")
    parser.add_argument("--seeds", default="0", help="comma-separated seeds (default 0)")
    parser.add_argument("--train-size", type=int, default=20_000)
    parser.add_argument("--queries", type=int, help="query subset (default: all 10,000)")
    parser.add_argument(
        "--cache",
        type=Path,
        default=Path("var/bench/feature-cache"),
        help="extracted features, and the emoji packages under emoji/",
    )
    parser.add_argument("--out", type=Path)
    parser.add_argument("--threads", type=int)
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="override a FeatureConfig, HeadConfig or HeadTrainConfig field (repeatable)",
    )
    args = parser.parse_args(argv)
    rows = [r.strip() for r in args.rows.split(",")] if args.rows else list(DEFAULT_ROWS)
    unknown = [r for r in rows if r not in ROWS]
    if unknown:
        raise SystemExit(f"error: unknown rows {', '.join(unknown)}; choose from {', '.join(ROWS)}")
    known_fields = {
        f.name
        for cls in (FeatureConfig, HeadConfig, HeadTrainConfig)
        for f in dataclasses.fields(cls)
    }
    bad = [s for s in args.set if s.partition("=")[0] not in known_fields]
    if bad:
        raise SystemExit(f"error: unknown --set fields: {', '.join(bad)}")
    if args.threads:
        torch.set_num_threads(args.threads)
    feature_cfg = FeatureConfig(**_overrides(args.set, FeatureConfig))
    head_cfg = HeadConfig(**_overrides(args.set, HeadConfig))
    train_cfg = HeadTrainConfig(**_overrides(args.set, HeadTrainConfig))
    seeds = [int(s) for s in args.seeds.split(",")]
    started = datetime.datetime.now(datetime.UTC)
    load_before = os.getloadavg()
    wall = time.perf_counter()
    results: list[dict[str, Any]] = []
    metrics: tuple[str, ...] = ()
    for seed in seeds:
        protocol = (
            emoji(args.cache)
            if args.data == "emoji"
            else fashion_mnist(seed, args.train_size, args.queries)
        )
        metrics = protocol.headline
        results += run_seed(protocol, seed, rows, feature_cfg, head_cfg, train_cfg, args.cache)
    print(
        f"{args.data}: features {feature_cfg.key}, head {head_cfg.to_dict()}, training "
        f"{train_cfg.to_dict()}; {torch.get_num_threads()} threads, load average "
        f"{load_before[0]:.1f} before / {os.getloadavg()[0]:.1f} after, "
        f"{time.perf_counter() - wall:.0f} s in all"
    )
    for seed in seeds:
        print(f"\nseed {seed}\n")
        print(format_table([r for r in results if r["seed"] == seed], metrics))
    print(f"\n{metrics[0]} by seed\n")
    print(format_summary(results, seeds, metrics[0]))
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        report = {
            "started": started.isoformat(timespec="seconds"),
            "wall_s": time.perf_counter() - wall,
            "load_average": {"before": load_before, "after": os.getloadavg()},
            "machine": {
                "processor": platform.processor() or platform.machine(),
                "cpus": os.cpu_count(),
                "torch": torch.__version__,
            },
            "features": feature_cfg.to_dict(),
            "head": head_cfg.to_dict(),
            "training": train_cfg.to_dict(),
            "rows": results,
        }
        report["data"] = args.data
        (args.out / "results.json").write_text(json.dumps(report, indent=2, default=str))
    return results


if __name__ == "__main__":
    main()
