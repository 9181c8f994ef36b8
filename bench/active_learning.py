"""Labels-to-quality: how fast each pair strategy turns answers into retrieval quality.

    .venv/bin/python bench/active_learning.py --rounds 8 --batch 250 --out var/bench/active-learning
    .venv/bin/python bench/active_learning.py --train-size 500 --queries 100 --rounds 1 --batch 20 \
        --images-per-round 256          # a smoke run (about a minute)
    AUTORET_BENCH_AL_DB=al_emoji_s0 .venv/bin/python bench/active_learning.py --data emoji \
        --rows default,random --seed 0 --rounds 4 --batch 500 --threads 1 \
        --out var/bench/al-emoji-s0     # "same emoji?"; seeds 1 and 2 alike, then --results

--batch is how many answers each version serves before the next one trains: the platform
retrains after every 50 new answers by default (AUTORET_RETRAIN_AFTER_ANSWERS) and mines from
each new version, so `--batch 50` follows it; larger batches are cheaper and coarser.

A simulated annotator answers from the true labels: Fashion-MNIST's class, or with --data emoji
the emoji's identity ("same emoji?"; google's and facebook's drawing of one emoji). For each
strategy row (the collection's default mix, each strategy alone, and `random`) the loop is the
platform's own: `labeling.strategies.mine` queues pairs of the active version, the annotator
answers B of them in queue order through `labeling.answers.record_answer` (skipping those an
earlier answer retired as implied, as the labeling page never shows them),
`labeling.training.known_constraints` gives the must/cannot-links, and a new version trains:
by default (--recipe pretrained) as the worker does, a head fitted afresh on the cached ImageNet
features and trained on them for --head-steps with every answer so far (round 0 is version 1,
untrained); with --recipe faithful or ours, the from-scratch network for a fixed budget of
images (from the round-0 network; --continue-training trains on from the previous round's
weights instead). Then the train subset is re-embedded into a new active version and the data
set's headline metric is measured (`evaluate_retrieval`), and with --held-out P the worker's
measures on the P % of answers kept out of training (agreement, AUC) of that version and of the
one before it: on Fashion-MNIST mAP@1000, --queries
test images against the --train-size train images (the collection); on emoji identity mAP@10, and
recall@1 beside it, all 1,855 twitter emoji against the 3,710 google and facebook ones (the
collection; the size flags do not apply), the split and scoring of bench/feature_quality.py's
emoji protocol with features at 128 px as it measured them. Every row starts from the same seeded
network and its round-0 embedding. Features are extracted once per data set, seed and sizes and
cached under --cache (emoji reads those bench/feature_quality.py cached). The from-scratch
recipes run on Fashion-MNIST only.

Runs in its own database (`autoret_bench_al`, or AUTORET_BENCH_AL_DB, created, migrated and
dropped afterwards). Prints the labels-to-quality table (the headline metric after each number of
answers) and the answers each strategy needed to reach what random reaches at the end, then a
table for each other metric; --out writes results.json (each curve point's "map" is the headline
metric that its "metric" names, beside "data") and a PNG plot when matplotlib is installed.
Record the numbers in docs/benchmarks.md.

Rows are independent (each starts from the same network and round 0), so they can run as
separate processes, each with its own database, and be reported together afterwards:

    AUTORET_BENCH_AL_DB=al_a .venv/bin/python bench/active_learning.py --rows default --out A &
    AUTORET_BENCH_AL_DB=al_b .venv/bin/python bench/active_learning.py --rows random --out B &
    wait; .venv/bin/python bench/active_learning.py --results A,B --out C
"""

from __future__ import annotations

import argparse
import dataclasses
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
sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ["AUTORET_DB_NAME"] = BENCH_DB
# The bench trains each round itself; the platform's own retraining (a Celery task) stays off.
os.environ["AUTORET_RETRAIN_AFTER_ANSWERS"] = "0"
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

import feature_quality  # noqa: E402
from feature_quality import Protocol, cached_features  # noqa: E402

from config.embedded import drop_database  # noqa: E402
from retrieval.autoret.data import ImageSet, load_dataset  # noqa: E402
from retrieval.autoret.embed import embed_images  # noqa: E402
from retrieval.autoret.evaluate import evaluate_retrieval  # noqa: E402
from retrieval.autoret.features import FeatureConfig  # noqa: E402
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
# Each data set's metrics: the first is the headline (the table, "answers to random's final" and
# the plot read it as each curve point's "map"); the others are recorded beside it by name.
METRICS: dict[str, tuple[str, ...]] = {
    "fashion-mnist": ("mAP@1000",),
    "emoji": ("id mAP@10", "recall@1"),
}
# The pretrained recipe's features: the platform's default on both data sets.
FEATURES = {"fashion-mnist": FeatureConfig(), "emoji": FeatureConfig()}


def subset(data: ImageSet, n: int | None, seed: int) -> ImageSet:
    if n is None or n >= len(data):
        return data
    index = torch.randperm(len(data), generator=torch.Generator().manual_seed(seed))[:n]
    assert data.labels is not None
    return ImageSet(data.images[index], data.labels[index])


def fashion_mnist(seed: int, train_size: int, queries_size: int) -> Protocol:
    """Test images as queries against a seeded subset of the train images, mAP@1000."""
    train_set = subset(load_dataset("fashion-mnist:train"), train_size, seed)
    queries = subset(load_dataset("fashion-mnist:test"), queries_size, seed + 1)
    assert train_set.labels is not None and queries.labels is not None
    q_labels, db_labels = queries.labels, train_set.labels

    def score(q: torch.Tensor, db: torch.Tensor) -> dict[str, float]:
        return {"mAP@1000": evaluate_retrieval(q, q_labels, db, db_labels)["map"]}

    # Not feature_quality's name for the same sizes: its subsets hold these images sorted, and
    # the feature cache checks only the count.
    name = f"al-fashion-mnist-s{seed}-{len(train_set)}-{len(queries)}"
    return Protocol(name, queries, train_set, score, METRICS["fashion-mnist"])


def load_protocol(args: argparse.Namespace) -> Protocol:
    if args.data == "emoji":
        return dataclasses.replace(feature_quality.emoji(args.cache), headline=METRICS["emoji"])
    return fashion_mnist(args.seed, args.train_size, args.queries)


def scores(protocol: Protocol, q: np.ndarray, db: np.ndarray) -> dict[str, float]:
    """The protocol's metrics of these vectors as one curve point's values (no "answers")."""
    got = protocol.score(torch.as_tensor(q), torch.as_tensor(db))
    headline, *others = protocol.headline
    return {"map": got[headline], **{name: got[name] for name in others}}


def make_collection(name: str, data: ImageSet) -> tuple[Any, list[int]]:
    """A collection whose image rows stand for the train subset (no files: only vectors and
    the true class, which the simulated annotator reads)."""
    from retrieval.models import Collection, Image

    assert data.labels is not None
    collection = Collection.objects.create(name=name)
    height, width = data.image_size
    rows = [
        Image(
            collection=collection,
            file=f"bench/{i}.png",
            sha256=f"{name}-{i}",
            width=width,
            height=height,
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


def new_version(collection: Any, ids: list[int], vectors: np.ndarray, alpha: float) -> Any:
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
    return version


def held_out_scores(collection: Any, percent: int, versions: list[Any]) -> list[dict[str, Any]]:
    """The worker's measures (`pair_metrics`) of each of `versions` on the answers `percent`
    keeps out of training (--held-out), all on today's held-out pairs."""
    from labeling.training import held_out_constraints
    from worker.pipeline import pair_metrics

    kept = held_out_constraints(collection, percent)
    return [pair_metrics(version, *kept) for version in versions]


class HeadRounds:
    """The pretrained recipe's rounds: features extracted once for both sets (or read from
    `cache`), version 1 fitted on the train set's (round 0), and each round a head fitted and
    trained on them."""

    def __init__(self, protocol: Protocol, config: FeatureConfig, cache: Path, seed: int) -> None:
        self.config = config
        name = protocol.name
        self.train_features, _ = cached_features(f"{name}-db", protocol.database, config, cache)
        self.query_features, _ = cached_features(f"{name}-q", protocol.queries, config, cache)
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
            result = train_head(model.head, self.train_features, cfg, known)
            if result.neighbors is not None:
                print(f"  {result.neighbors}", file=sys.stderr, flush=True)
            if result.pseudo_images:
                print(f"  {result.pseudo_images} images placed in groups", file=sys.stderr)
            print(f"  known pairs' share of each batch {result.known_share}", file=sys.stderr)
        alpha = model.head.config.sphere_radius * math.sqrt(2.0)
        return (
            embed_features(model.head, self.train_features).numpy(),
            embed_features(model.head, self.query_features).numpy(),
            alpha,
        )


def run_row(
    row: str,
    args: argparse.Namespace,
    protocol: Protocol,
    base: AutoRet,
    heads: HeadRounds | None = None,
) -> list[dict[str, float]]:
    from django.contrib.auth.models import User

    from labeling import strategies
    from labeling.answers import record_answer
    from labeling.models import Pair
    from labeling.training import known_constraints

    train_set, queries = protocol.database, protocol.queries
    assert train_set.labels is not None
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
    version = new_version(collection, ids, db, alpha)
    every_version = [version]
    curve: list[dict[str, float]] = [{"answers": 0, **scores(protocol, q, db)}]
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
        must, cannot = known_constraints(collection, args.held_out)
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
        before, version = version, new_version(collection, ids, db, alpha)
        every_version.append(version)
        curve.append({"answers": answers, **scores(protocol, q, db)})
        if args.held_out:
            now, then = held_out_scores(collection, args.held_out, [version, before])
            curve[-1] |= {f"held_out_{k}": v for k, v in now.items()}
            curve[-1] |= {f"before_held_out_{k}": v for k, v in then.items()}
            print(
                f"  held out: {curve[-1].get('held_out_pairs', 0)} pairs, AUC "
                f"{curve[-1].get('held_out_auc')} (the version before: "
                f"{curve[-1].get('before_held_out_auc')})",
                file=sys.stderr,
                flush=True,
            )
        grouped = int(known.sizes[known.sizes > 1].sum())
        print(
            f"  {row}: {answers} answers, {protocol.headline[0]} {curve[-1]['map']:.4f}, "
            f"{grouped} images in groups, known pairs {known.counts()}",
            file=sys.stderr,
            flush=True,
        )
    if args.held_out:
        # Every version again on the last round's held-out pairs: one set, so the versions'
        # AUCs compare as their mAPs do.
        last = held_out_scores(collection, args.held_out, every_version)
        for point, measured in zip(curve, last, strict=True):
            if "auc" in measured:
                point["final_held_out_auc"] = measured["auc"]
    return curve


def answers_to_reach(curve: list[dict[str, float]], target: float) -> float | None:
    return next((p["answers"] for p in curve if p["map"] >= target), None)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", choices=sorted(METRICS), default="fashion-mnist")
    parser.add_argument("--rows", default=",".join(ROWS))
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--batch", type=int, default=250, help="answers per round (B)")
    parser.add_argument("--images-per-round", type=int, default=16_384)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--alpha", type=float, default=10.0)
    parser.add_argument(
        "--train-size",
        type=int,
        default=5_000,
        help="Fashion-MNIST only: emoji's collection is its whole database (3,710 images)",
    )
    parser.add_argument(
        "--queries",
        type=int,
        default=1_000,
        help="Fashion-MNIST only: emoji's queries are all 1,855 twitter emoji",
    )
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
    parser.add_argument(
        "--cache",
        type=Path,
        default=Path("var/bench/feature-cache"),
        help="extracted features, and the emoji packages under emoji/ (bench/feature_quality.py's)",
    )
    parser.add_argument("--out", type=Path)
    parser.add_argument("--threads", type=int, default=None, help="torch threads per process")
    parser.add_argument(
        "--held-out",
        type=int,
        default=0,
        help="keep this %% of the answers out of training (the models page's held-out share) "
        "and record each version's agreement and AUC on them, and its predecessor's",
    )
    parser.add_argument(
        "--results", default="", help="only report: comma-separated --out dirs of earlier runs"
    )
    args = parser.parse_args()
    if args.results:
        runs: dict[str, list[tuple[int, list[dict[str, float]]]]] = {}
        data_sets = set()
        earlier_runs = [
            json.loads((Path(folder) / "results.json").read_text())
            for folder in args.results.split(",")
        ]
        # Runs of several cadences (answers per version) are reported side by side, each row
        # named with its cadence.
        batches = sorted({int(run["args"]["batch"]) for run in earlier_runs})
        for earlier in earlier_runs:
            for row, curve in earlier["curves"].items():
                name = row.split(" (seed")[0]
                if len(batches) > 1:
                    name = f"{name}, B={earlier['args']['batch']}"
                runs.setdefault(name, []).append((earlier["args"]["seed"], curve))
            for name in ("rounds", "batch", "images_per_round", "train_size", "queries", "seed"):
                setattr(args, name, earlier["args"][name])
            # Runs from before --data existed are Fashion-MNIST's.
            data_sets.add(earlier["args"].get("data", "fashion-mnist"))
        if len(data_sets) > 1:
            sys.exit(f"error: --results mixes data sets: {', '.join(sorted(data_sets))}")
        args.data = data_sets.pop()
        args.batch = "/".join(str(b) for b in batches)
        report(merge_seeds(runs), args)
        return
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = [r for r in args.rows.split(",") if r]
    unknown = set(rows) - set(ROWS)
    if unknown:
        sys.exit(f"error: unknown rows {', '.join(sorted(unknown))}; choose from {', '.join(ROWS)}")
    if args.data == "emoji" and args.recipe != PRETRAINED:
        sys.exit(
            f"error: --recipe {args.recipe} trains the from-scratch network set up for "
            "Fashion-MNIST's 28 x 28 grey images; emoji are 64 x 64 colour (RGBA composited on "
            "white to RGB), which would need its model and training budget set up anew: use "
            "--recipe pretrained on emoji"
        )

    import django

    django.setup()
    from django.conf import settings
    from django.core.management import call_command

    if settings.EMBEDDED_POSTGRES_DIR is None:
        sys.exit(
            "error: bench/active_learning.py runs on the embedded PostgreSQL; unset DATABASE_URL"
        )
    torch.manual_seed(args.seed)
    protocol = load_protocol(args)
    # The sizes as run, for the report and results.json (emoji ignores both flags).
    args.train_size, args.queries = len(protocol.database), len(protocol.queries)
    scratch = RECIPES.get(args.recipe, ({}, {}))
    base = create_model("autoret", in_channels=1, image_size=28, **MODEL, **scratch[0])
    heads = (
        HeadRounds(protocol, FEATURES[args.data], args.cache, args.seed)
        if args.recipe == PRETRAINED
        else None
    )
    drop_database(BENCH_DB)  # a killed earlier run leaves it behind
    curves: dict[str, list[dict[str, float]]] = {}
    try:
        call_command("migrate", verbosity=0)
        for row in rows:
            curves[row] = run_row(row, args, protocol, base, heads)
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
            {
                "answers": group[0]["answers"],
                **{
                    key: statistics.fmean(p[key] for p in group)
                    for key in group[0]
                    if key != "answers" and all(key in p for p in group)
                },
            }
            for group in points
        ]
        for seed, curve in sorted(seeded):
            curves[f"{row} (seed {seed})"] = curve
    return curves


def report(curves: dict[str, list[dict[str, float]]], args: argparse.Namespace) -> None:
    headline, *others = METRICS[args.data]
    print(
        f"# active learning on {args.data}: {datetime.date.today()}, {os.cpu_count()} CPUs, "
        f"train {args.train_size}, queries {args.queries}, B={args.batch}, "
        f"{args.images_per_round} images/round\n"
    )
    # Every row's points; a row measured at fewer of them (another cadence) shows "-".
    steps = sorted({p["answers"] for curve in curves.values() for p in curve})
    header = "| strategy | " + " | ".join(f"{a:.0f}" for a in steps) + " |"

    def cells(curve: list[dict[str, float]], metric: str) -> str:
        at = {p["answers"]: p[metric] for p in curve if metric in p}
        return " | ".join(f"{at[a]:.4f}" if a in at else "-" for a in steps)

    print(f"{headline}\n\n{header} answers to random's final |")
    print("|---|" + "---:|" * (len(steps) + 1))
    target_row = next((row for row in curves if row.split(" (")[0].startswith("random")), None)
    target = curves[target_row][-1]["map"] if target_row is not None else None
    for row, curve in curves.items():
        reach = answers_to_reach(curve, target) if target is not None else None
        print(f"| {row} | {cells(curve, 'map')} | {'-' if reach is None else f'{reach:.0f}'} |")
    held_out = [
        "held_out_auc",
        "before_held_out_auc",
        "final_held_out_auc",
        "held_out_same",
        "held_out_different",
    ]
    for metric in others + [m for m in held_out if any(m in p for c in curves.values() for p in c)]:
        print(f"\n{metric}\n\n{header}\n|---|" + "---:|" * len(steps))
        for row, curve in curves.items():
            print(f"| {row} | {cells(curve, metric)} |")
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        results = {"data": args.data, "metric": headline, "args": vars(args), "curves": curves}
        (args.out / "results.json").write_text(json.dumps(results, indent=2, default=str))
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
        axes.set_title(f"labels to quality: {args.data}")
        axes.set_xlabel("answers")
        axes.set_ylabel(headline)
        axes.legend()
        figure.tight_layout()
        figure.savefig(args.out / "labels-to-quality.png", dpi=120)


if __name__ == "__main__":
    main()
