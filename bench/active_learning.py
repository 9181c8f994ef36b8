"""Labels-to-quality: how fast each pair strategy turns answers into retrieval quality.

    .venv/bin/python bench/active_learning.py --rounds 8 --batch 250 --out var/bench/active-learning
    .venv/bin/python bench/active_learning.py --train-size 500 --queries 100 --rounds 1 --batch 20 \
        --images-per-round 256          # a smoke run (about a minute)

A simulated annotator answers from Fashion-MNIST's true classes (same class = "same"). For each
strategy row (the collection's default mix, each strategy alone, and `random`) the loop is the
platform's own: `labeling.strategies.mine` queues pairs of the active version, the annotator
answers B of them in queue order through `labeling.answers.record_answer` (skipping those an
earlier answer retired as implied, as the labeling page never shows them),
`labeling.training.known_constraints` gives the must/cannot-links, and a new version trains:
by default (--recipe pretrained) as the worker does, a head fitted afresh on the cached ImageNet
features and trained on them for --head-steps with every answer so far (round 0 is version 1,
untrained); with --recipe faithful or ours, the from-scratch network for a fixed budget of
images (from the round-0 network; --continue-training trains on from the previous round's
weights instead). Then the train
subset is re-embedded into a new active version, and mAP@1000 is measured with test images as
queries against the train subset (`evaluate_retrieval`). Every row starts from the same seeded
network and its round-0 embedding.

Runs in its own database (`autoret_bench_al`, or AUTORET_BENCH_AL_DB, created, migrated and
dropped afterwards). Prints the labels-to-quality table (mAP@1000 after each number of answers)
and the answers each strategy needed to reach the mAP random reaches at the end; --out writes
results.json and a PNG plot when matplotlib is installed. Record the numbers in docs/benchmarks.md.

Rows are independent (each starts from the same network and round 0), so they can run as
separate processes, each with its own database, and be reported together afterwards:

    AUTORET_BENCH_AL_DB=al_a .venv/bin/python bench/active_learning.py --rows default --out A &
    AUTORET_BENCH_AL_DB=al_b .venv/bin/python bench/active_learning.py --rows random --out B &
    wait; .venv/bin/python bench/active_learning.py --results A,B --out C
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

BENCH_DB = os.environ.get("AUTORET_BENCH_AL_DB", "autoret_bench_al")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ["AUTORET_DB_NAME"] = BENCH_DB
# The bench trains each round itself; the platform's own retraining (a Celery task) stays off.
os.environ["AUTORET_RETRAIN_AFTER_ANSWERS"] = "0"
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

from config.embedded import drop_database  # noqa: E402
from retrieval.autoret.data import ImageSet, load_dataset  # noqa: E402
from retrieval.autoret.embed import embed_images  # noqa: E402
from retrieval.autoret.evaluate import evaluate_retrieval  # noqa: E402
from retrieval.autoret.model import AutoRet, create_model  # noqa: E402
from retrieval.autoret.pairs import KnownPairs  # noqa: E402
from retrieval.autoret.train import RECIPE_MODEL, RECIPE_TRAIN, TrainConfig, train  # noqa: E402

# The narrow network of bench/retrieval_quality.py: trains at CPU speed.
MODEL: dict[str, Any] = {
    "widths": (16, 32, 64),
    "context_channels": 64,
    "patch_dim": 128,
    "rnn_hidden": 128,
}
# How each round trains: the from-scratch faithful configuration, our from-scratch recipe
# (retrieval.autoret.train's RECIPE_MODEL and RECIPE_TRAIN), or "pretrained": what the worker
# trains by default (the head on cached ImageNet features, HeadTrainConfig's defaults, from a
# freshly fitted version 1 every round).
RECIPES: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    "faithful": ({}, {}),
    "ours": (RECIPE_MODEL, RECIPE_TRAIN),
}
PRETRAINED = "pretrained"
# "none" answers nothing: the self-supervised training alone, what the answers are measured against.
ROWS = ["default", "uncertain", "disagreement", "diverse", "merge-gain", "random", "none"]


def subset(data: ImageSet, n: int | None, seed: int) -> ImageSet:
    if n is None or n >= len(data):
        return data
    index = torch.randperm(len(data), generator=torch.Generator().manual_seed(seed))[:n]
    assert data.labels is not None
    return ImageSet(data.images[index], data.labels[index])


def make_collection(name: str, data: ImageSet) -> tuple[Any, list[int]]:
    """A collection whose image rows stand for the train subset (no files: only vectors and
    the true class, which the simulated annotator reads)."""
    from retrieval.models import Collection, Image

    assert data.labels is not None
    collection = Collection.objects.create(name=name)
    rows = [
        Image(
            collection=collection,
            file=f"bench/{i}.png",
            sha256=f"{name}-{i}",
            width=28,
            height=28,
            format="PNG",
            original_name=f"{i}.png",
            label=str(int(label)),
        )
        for i, label in enumerate(data.labels.tolist())
    ]
    Image.objects.bulk_create(rows, batch_size=2000)
    ids = list(
        Image.objects.filter(collection=collection).order_by("id").values_list("id", flat=True)
    )
    return collection, ids


def new_version(collection: Any, ids: list[int], vectors: np.ndarray, alpha: float) -> None:
    from retrieval import indexes, queries
    from retrieval.models import ModelVersion

    number = ModelVersion.objects.filter(collection=collection).count() + 1
    version = ModelVersion.objects.create(
        collection=collection,
        number=number,
        kind=ModelVersion.Kind.TRAINED,
        status=ModelVersion.Status.READY,
        config={"train": {"alpha": alpha}},
    )
    queries.copy_embeddings(version, ids, vectors)
    indexes.build_index(version)
    collection.active_version = version
    collection.save(update_fields=["active_version"])


class HeadRounds:
    """The pretrained recipe's rounds: features extracted once for both sets, version 1 fitted
    on the train set's (round 0), and each round a head fitted and trained on them."""

    def __init__(self, train_set: ImageSet, queries: ImageSet, seed: int) -> None:
        from retrieval.autoret.features import FeatureConfig, FeatureStage, extract_features

        self.config = FeatureConfig()
        stage = FeatureStage(self.config)
        self.train_features = extract_features(stage, train_set, progress=True)
        self.query_features = extract_features(stage, queries, progress=True)
        self.seed = seed

    def embed(self, known: KnownPairs | None, steps: int) -> tuple[np.ndarray, np.ndarray, float]:
        """(database, query vectors, alpha) after training on `known` (None: version 1)."""
        from retrieval.autoret.head import HeadConfig
        from retrieval.autoret.head_training import (
            HeadTrainConfig,
            embed_features,
            train_head,
            version_one,
        )

        model = version_one(self.train_features, self.config, HeadConfig(), seed=0)
        if known is not None:
            cfg = HeadTrainConfig(steps=steps, seed=self.seed, log_every=10_000)
            train_head(model.head, self.train_features, cfg, known)
        alpha = model.head.config.sphere_radius * math.sqrt(2.0)
        return (
            embed_features(model.head, self.train_features).numpy(),
            embed_features(model.head, self.query_features).numpy(),
            alpha,
        )


def run_row(
    row: str,
    args: argparse.Namespace,
    train_set: ImageSet,
    queries: ImageSet,
    base: AutoRet,
    heads: HeadRounds | None = None,
) -> list[dict[str, float]]:
    from django.contrib.auth.models import User

    from labeling import strategies
    from labeling.answers import record_answer
    from labeling.models import Pair
    from labeling.training import known_constraints

    assert train_set.labels is not None and queries.labels is not None
    collection, ids = make_collection(f"al-{row}-{time.time_ns()}", train_set)
    index_of = {image_id: i for i, image_id in enumerate(ids)}
    label_of = dict(zip(ids, train_set.labels.tolist(), strict=True))
    oracle, _ = User.objects.get_or_create(username="bench-oracle")
    settings = strategies.settings_for(collection)
    if row != "default":
        settings.strategy_mix = {row: 1.0}
        settings.save()
    model_overrides, train_overrides = RECIPES.get(args.recipe, ({}, {}))
    model = create_model("autoret", in_channels=1, image_size=28, **MODEL, **model_overrides)
    model.load_state_dict(base.state_dict())
    cfg = TrainConfig(
        batch_size=args.batch_size,
        alpha=args.alpha,
        seed=args.seed,
        epochs=math.ceil(args.images_per_round / (2 * args.batch_size))
        / math.ceil(len(train_set) / args.batch_size),
        known_fraction=args.known_fraction,
        checkpoint_every_s=1e9,
        progress_bar=False,
        amp=False,
        **train_overrides,
    )
    alpha = args.alpha
    if heads is not None:
        db, q, alpha = heads.embed(None, args.head_steps)
    else:
        db = embed_images(model, train_set, 512)
        q = embed_images(model, queries, 512)
    new_version(collection, ids, db, alpha)
    curve = [
        {"answers": 0, "map": evaluate_retrieval(q, queries.labels, db, train_set.labels)["map"]}
    ]
    answers = 0
    for round_number in range(1, args.rounds + 1):
        answered, attempt = 0, 0
        while row != "none" and answered < args.batch:
            # Twice what is still needed: answers retire the queued pairs they come to imply.
            collection.refresh_from_db()
            attempt += 1
            seed = args.seed + 1000 * round_number + attempt
            if not strategies.mine(collection, n=2 * (args.batch - answered), seed=seed):
                break
            queued = Pair.objects.filter(collection=collection, status=Pair.Status.QUEUED)
            for pair in queued.order_by("id"):
                if answered == args.batch:
                    break
                pair.refresh_from_db(fields=["status"])
                if pair.status != Pair.Status.QUEUED:
                    continue  # retired as implied by an earlier answer: nobody is shown it
                same = label_of[pair.a_id] == label_of[pair.b_id]
                record_answer(pair, oracle, "same" if same else "different")
                answered += 1
            queued.delete()
        # "none" is plotted where the others are after this round, with no answers behind it.
        answers += args.batch if row == "none" else answered
        must, cannot = known_constraints(collection)
        known = KnownPairs.from_constraints(
            len(ids),
            [(index_of[a], index_of[b]) for a, b in must],
            [(index_of[a], index_of[b]) for a, b in cannot],
        )
        if heads is not None:
            # As the worker trains every new version: a head fitted afresh, trained on the
            # cached features with every answer so far.
            db, q, alpha = heads.embed(known, args.head_steps)
        else:
            if not args.continue_training:
                # As the worker trains every from-scratch version: from the one seeded network
                # every round and row starts from, so the curve measures answers, not training
                # time.
                model.load_state_dict(base.state_dict())
            train(model, train_set, cfg, known=known if must or cannot else None)
            db = embed_images(model, train_set, 512)
            q = embed_images(model, queries, 512)
        new_version(collection, ids, db, alpha)
        score = evaluate_retrieval(q, queries.labels, db, train_set.labels)["map"]
        curve.append({"answers": answers, "map": score})
        grouped = int(known.sizes[known.sizes > 1].sum())
        print(
            f"  {row}: {answers} answers, mAP@1000 {score:.4f}, {grouped} images in groups, "
            f"known pairs {known.counts()}",
            file=sys.stderr,
            flush=True,
        )
    return curve


def answers_to_reach(curve: list[dict[str, float]], target: float) -> float | None:
    return next((p["answers"] for p in curve if p["map"] >= target), None)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", default=",".join(ROWS))
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--batch", type=int, default=250, help="answers per round (B)")
    parser.add_argument("--images-per-round", type=int, default=16_384)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--alpha", type=float, default=10.0)
    parser.add_argument("--train-size", type=int, default=5_000)
    parser.add_argument("--queries", type=int, default=1_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--continue-training",
        action="store_true",
        help="train each round on from the previous round's weights instead of from scratch",
    )
    parser.add_argument(
        "--known-fraction",
        type=float,
        default=TrainConfig.known_fraction,
        help="share of each batch's can-link and cannot-link pairs drawn from the answers",
    )
    parser.add_argument(
        "--recipe",
        choices=[PRETRAINED, *sorted(RECIPES)],
        default=PRETRAINED,
        help="how each round trains: pretrained (the worker's default: the head on cached "
        "ImageNet features), faithful or ours (from-scratch networks)",
    )
    parser.add_argument(
        "--head-steps", type=int, default=600, help="training steps per round (pretrained)"
    )
    parser.add_argument("--out", type=Path)
    parser.add_argument("--threads", type=int, default=None, help="torch threads per process")
    parser.add_argument(
        "--results", default="", help="only report: comma-separated --out dirs of earlier runs"
    )
    args = parser.parse_args()
    if args.results:
        runs: dict[str, list[tuple[int, list[dict[str, float]]]]] = {}
        for folder in args.results.split(","):
            earlier = json.loads((Path(folder) / "results.json").read_text())
            for row, curve in earlier["curves"].items():
                runs.setdefault(row.split(" (seed")[0], []).append((earlier["args"]["seed"], curve))
            for name in ("rounds", "batch", "images_per_round", "train_size", "queries", "seed"):
                setattr(args, name, earlier["args"][name])
        report(merge_seeds(runs), args)
        return
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = [r for r in args.rows.split(",") if r]
    unknown = set(rows) - set(ROWS)
    if unknown:
        sys.exit(f"error: unknown rows {', '.join(sorted(unknown))}; choose from {', '.join(ROWS)}")

    import django

    django.setup()
    from django.conf import settings
    from django.core.management import call_command

    if settings.EMBEDDED_POSTGRES_DIR is None:
        sys.exit(
            "error: bench/active_learning.py runs on the embedded PostgreSQL; unset DATABASE_URL"
        )
    torch.manual_seed(args.seed)
    train_set = subset(load_dataset("fashion-mnist:train"), args.train_size, args.seed)
    queries = subset(load_dataset("fashion-mnist:test"), args.queries, args.seed + 1)
    scratch = RECIPES.get(args.recipe, ({}, {}))
    base = create_model("autoret", in_channels=1, image_size=28, **MODEL, **scratch[0])
    heads = HeadRounds(train_set, queries, args.seed) if args.recipe == PRETRAINED else None
    drop_database(BENCH_DB)  # a killed earlier run leaves it behind
    curves: dict[str, list[dict[str, float]]] = {}
    try:
        call_command("migrate", verbosity=0)
        for row in rows:
            curves[row] = run_row(row, args, train_set, queries, base, heads)
    finally:
        drop_database(BENCH_DB)
    report(curves, args)


def merge_seeds(
    runs: dict[str, list[tuple[int, list[dict[str, float]]]]],
) -> dict[str, list[dict[str, float]]]:
    """One curve per row; a row run with several seeds becomes its mean ("row (mean of N
    seeds)", listed first, so random's mean is the target) followed by each seed's curve."""
    curves: dict[str, list[dict[str, float]]] = {}
    for row, seeded in runs.items():
        if len(seeded) == 1:
            curves[row] = seeded[0][1]
            continue
        points = zip(*(curve for _, curve in seeded), strict=True)
        curves[f"{row} (mean of {len(seeded)} seeds)"] = [
            {"answers": group[0]["answers"], "map": statistics.fmean(p["map"] for p in group)}
            for group in points
        ]
        for seed, curve in sorted(seeded):
            curves[f"{row} (seed {seed})"] = curve
    return curves


def report(curves: dict[str, list[dict[str, float]]], args: argparse.Namespace) -> None:
    print(
        f"# active learning: {datetime.date.today()}, {os.cpu_count()} CPUs, train "
        f"{args.train_size}, queries {args.queries}, B={args.batch}, "
        f"{args.images_per_round} images/round\n"
    )
    steps = [p["answers"] for p in next(iter(curves.values()))]
    print(
        "| strategy | " + " | ".join(f"{a:.0f}" for a in steps) + " | answers to random's final |"
    )
    print("|---|" + "---:|" * (len(steps) + 1))
    target_row = next((row for row in curves if row.split(" (")[0] == "random"), None)
    target = curves[target_row][-1]["map"] if target_row is not None else None
    for row, curve in curves.items():
        reach = answers_to_reach(curve, target) if target is not None else None
        cells = " | ".join(f"{p['map']:.4f}" for p in curve)
        print(f"| {row} | {cells} | {'-' if reach is None else f'{reach:.0f}'} |")
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "results.json").write_text(
            json.dumps({"args": vars(args) | {"out": str(args.out)}, "curves": curves}, indent=2)
        )
        try:
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError:
            return
        figure, axes = plt.subplots(figsize=(7, 4.5))
        colours: dict[str, Any] = {}
        for row, curve in curves.items():
            base = row.split(" (")[0]
            one_seed = "(seed " in row  # drawn faint beside its row's mean
            line = axes.plot(
                [p["answers"] for p in curve],
                [p["map"] for p in curve],
                marker="" if one_seed else "o",
                linestyle=":" if one_seed else "-",
                alpha=0.5 if one_seed else 1.0,
                color=colours.get(base),
                label=None if one_seed else row,
            )
            colours.setdefault(base, line[0].get_color())
        axes.set_xlabel("answers")
        axes.set_ylabel("mAP@1000")
        axes.legend()
        figure.tight_layout()
        figure.savefig(args.out / "labels-to-quality.png", dpi=120)


if __name__ == "__main__":
    main()
