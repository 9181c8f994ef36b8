"""The learning loop's time on the platform itself: version 1 from cached features, then one
automatic-retraining job (head training, re-embedding, index, evaluation, activation).

    .venv/bin/python bench/platform_loop.py --images 10000
    .venv/bin/python bench/platform_loop.py --images 10000,100000 --answers 500
    .venv/bin/python bench/platform_loop.py --images 10000 --answers 200 --answers-kind groups

Issue 13 asks that training the head and re-embedding a 10,000-image collection take at most
60 s together on two CPU cores. This measures it through the platform's own code, in its own
database (`autoret_bench_loop`, or AUTORET_BENCH_LOOP_DB; created, migrated and dropped): a
collection of N image rows whose features are already stored (Fashion-MNIST's, from
bench/feature_quality.py's cache when it has them at the default configuration, else extracted
now; repeated with a little noise past 20,000), `--answers` simulated answers from the true
classes, then `embedding.embed_new_images` (version 1: PCA fit, vectors from the features, index,
activation) and a training job run by `worker.pipeline.run_here` exactly as a worker runs it,
with the worker's PyTorch threads (AUTORET_TORCH_THREADS).
Image files are never read: the features are the cache the worker would have filled. Prints a
Markdown table with the load average before and after each size: the job's head training and
its re-embedding (vectors from the cached features, stored, the index built; their sum is what
the issue bounds) apart from its evaluations of the new and the active version and the rest
(reading the features, fitting, saving, activating).
The mining that activation queues needs the broker, which the bench does not start: its
"could not be queued" traceback in the output is expected.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch

BENCH_DB = os.environ.get("AUTORET_BENCH_LOOP_DB", "autoret_bench_loop")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ["AUTORET_DB_NAME"] = BENCH_DB
# The bench starts the one training job it measures.
os.environ["AUTORET_RETRAIN_AFTER_ANSWERS"] = "0"
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

from config.embedded import drop_database  # noqa: E402
from retrieval.autoret.data import load_dataset  # noqa: E402
from retrieval.autoret.features import FeatureConfig, FeatureStage, extract_features  # noqa: E402

CACHE = Path("var/bench/feature-cache")


def source_features(cfg: FeatureConfig, n: int) -> tuple[np.ndarray, np.ndarray]:
    """(float16 n x T x F features, labels) of Fashion-MNIST train images."""
    data = load_dataset("fashion-mnist:train")
    assert data.labels is not None
    cached = CACHE / f"fashion-mnist-s0-20000-10000-db-{cfg.key}.pt"
    if cached.exists():
        # The subset bench/feature_quality.py cached (retrieval_quality.seeded_subset, seed 0).
        generator = torch.Generator().manual_seed(0)
        index = torch.randperm(len(data), generator=generator)[:20_000].sort().values
        features = torch.load(cached, weights_only=True)["features"].numpy()
        labels = data.labels[index].numpy()
    else:
        take = min(n, 20_000)
        features = extract_features(FeatureStage(cfg), data.subset(range(take)), progress=True)
        features, labels = features.numpy(), data.labels[:take].numpy()
    reps = -(-n // len(features))
    rng = np.random.default_rng(0)
    tiled = np.concatenate([features] * reps)[:n].astype(np.float32)
    if reps > 1:  # copies past the source differ a little, as different photos would
        tiled[len(features) :] *= 1 + 0.05 * rng.standard_normal(tiled[len(features) :].shape)
    return tiled.clip(0, 6).astype(np.float16), np.concatenate([labels] * reps)[:n]


def load_average() -> str:
    return f"{os.getloadavg()[0]:.1f}"


def answer_pairs(labels: np.ndarray, answers: int, kind: str) -> list[tuple[int, int]]:
    """Which images the simulated annotator is asked about: `random` pairs, or with `groups`
    chains of "same" answers in each class in turn (the images an annotator grouped), so that
    the known pairs form large groups and the training's second stage runs."""
    pairs: list[tuple[int, int]] = []
    if kind == "random":
        rng = random.Random(0)
        for _ in range(answers):
            a, b = rng.sample(range(len(labels)), 2)
            pairs.append((a, b))
        return pairs
    classes = sorted(set(labels.tolist()))
    members = {c: np.flatnonzero(labels == c).tolist() for c in classes}
    for k in range(answers):
        c, j = classes[k % len(classes)], k // len(classes)
        pairs.append((members[c][j], members[c][j + 1]))
    return pairs


class Timed:
    """Wraps a module's function to add up the seconds spent in it (bench instrumentation: the
    function itself runs unchanged)."""

    def __init__(self, module: object, name: str) -> None:
        self.module, self.name, self.seconds = module, name, 0.0
        self.original = getattr(module, name)

    def __enter__(self) -> Timed:
        def timed(*args: object, **kwargs: object) -> object:
            began = time.perf_counter()
            try:
                return self.original(*args, **kwargs)
            finally:
                self.seconds += time.perf_counter() - began

        setattr(self.module, self.name, timed)
        return self

    def __exit__(self, *_: object) -> None:
        setattr(self.module, self.name, self.original)


def run(n: int, answers: int, minutes: float, kind: str = "random") -> dict[str, object]:
    from django.contrib.auth.models import User

    from labeling.answers import pair_for, record_answer
    from retrieval import embedding, features
    from retrieval.models import Collection, Image
    from worker import actions, pipeline

    cfg = FeatureConfig()
    array, labels = source_features(cfg, n)
    collection = Collection.objects.create(name=f"loop-{n}-{time.time_ns()}")
    Image.objects.bulk_create(
        [
            Image(
                collection=collection,
                file=f"bench/{i}.png",
                sha256=f"{n}-{i}",
                width=28,
                height=28,
                format="PNG",
                original_name=f"{i}.png",
                label=str(int(label)),
            )  # fmt: skip
            for i, label in enumerate(labels)
        ],
        batch_size=5000,
    )
    ids = list(collection.images.order_by("id").values_list("id", flat=True))
    for begin in range(0, n, 5000):
        features.store(ids[begin : begin + 5000], array[begin : begin + 5000], cfg)
    load_before = load_average()
    began = time.perf_counter()
    result = embedding.embed_new_images(collection)
    version_one_s = time.perf_counter() - began
    assert result.activated, "version 1 was not activated"
    oracle, _ = User.objects.get_or_create(username="bench-oracle")
    for a, b in answer_pairs(labels, answers, kind):
        same = labels[a] == labels[b]
        record_answer(pair_for(collection, ids[a], ids[b]), oracle, "same" if same else "different")
    job = actions.start_training(collection, None, minutes=minutes, run_here=True)
    began = time.perf_counter()
    # The job's re-embedding (vectors from the cached features, stored, the index built) and its
    # evaluations of the new and the active version, timed apart.
    with Timed(embedding, "embed_new_images") as embed, Timed(pipeline, "evaluate_version") as ev:
        job = pipeline.run_here(job, progress_bar=False)
    loop_s = time.perf_counter() - began
    assert job.status == job.Status.DONE, job.error
    version = job.version_or_fail()
    training_s = float(version.metrics["training"]["elapsed_s"])
    return {
        "images": n,
        "answers": f"{answers} {kind}",
        "pseudo_images": version.metrics["training"].get("pseudo_images"),
        "version_one_s": version_one_s,
        "loop_s": loop_s,
        "training_s": training_s,
        "embed_s": embed.seconds,
        "train_embed_s": training_s + embed.seconds,
        "evaluate_s": ev.seconds,
        "rest_s": loop_s - training_s - embed.seconds - ev.seconds,
        "map_v1": collection.versions.get(number=1).metrics.get("evaluation", {}).get("map_at_100"),
        "map_v2": version.metrics["evaluation"].get("map_at_100"),
        "load": f"{load_before} / {load_average()}",
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--images", default="10000", help="comma-separated collection sizes")
    parser.add_argument("--answers", type=int, default=200)
    parser.add_argument(
        "--answers-kind",
        choices=("random", "groups"),
        default="random",
        help="random pairs, or chains of 'same' in each class (large groups: two stages)",
    )
    parser.add_argument("--minutes", type=float, default=10.0, help="the job's training budget")
    args = parser.parse_args()

    import django

    django.setup()
    from django.conf import settings
    from django.core.management import call_command

    if settings.EMBEDDED_POSTGRES_DIR is None:
        sys.exit(
            "error: bench/platform_loop.py runs on the embedded PostgreSQL; unset DATABASE_URL"
        )
    from worker.priority import limit_torch_threads

    limit_torch_threads()  # as a worker process does (AUTORET_TORCH_THREADS)
    drop_database(BENCH_DB)
    rows = []
    try:
        call_command("migrate", verbosity=0)
        for n in (int(x) for x in args.images.split(",")):
            rows.append(run(n, args.answers, args.minutes, args.answers_kind))
            print(f"  {rows[-1]}", file=sys.stderr, flush=True)
    finally:
        drop_database(BENCH_DB)
    print(f"# platform loop: {os.cpu_count()} CPUs, torch threads {torch.get_num_threads()}\n")
    print(
        "| images | answers | version 1: fit + embed + index (s) | head training (s) | placed | "
        "re-embed + index (s) | **training + re-embedding (s)** | evaluate both versions (s) | "
        "the rest: features read, fit, activation (s) | training job (s) | mAP@100 v1 / v2 | "
        "load before / after |"
    )
    print("|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---|")
    for r in rows:
        print(
            f"| {r['images']:,} | {r['answers']} | {r['version_one_s']:.1f} | "
            f"{r['training_s']:.1f} | {r['pseudo_images']} | {r['embed_s']:.1f} | "
            f"**{r['train_embed_s']:.1f}** | {r['evaluate_s']:.1f} | "
            f"{r['rest_s']:.1f} | {r['loop_s']:.1f} | "
            f"{r['map_v1']} / {r['map_v2']} | {r['load']} |"
        )


if __name__ == "__main__":
    main()
