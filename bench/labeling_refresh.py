"""Cost of one stored answer at a given number of resolved pairs: kept replay against full replay.

    .venv/bin/python bench/labeling_refresh.py --pairs 5000 --answers 100

In its own database (`autoret_bench_refresh`, dropped afterwards) a collection of --images image
rows gets --pairs resolved pairs (one in five "same"), then --answers answers through
`labeling.answers.record_answer` on new pairs, each its own transaction, timed twice: with this
process's kept replay (labeling.inference.refresh appends the pair) and with the kept replay
dropped before each answer (a full replay of every resolved pair, as every answer did before).
Prints p50/p95 ms per answer, in-process (no HTTP), one connection.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import time
from datetime import timedelta
from pathlib import Path

BENCH_DB = "autoret_bench_refresh"
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ["AUTORET_DB_NAME"] = BENCH_DB
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

from config.embedded import drop_database  # noqa: E402


def run(args: argparse.Namespace) -> None:
    from django.contrib.auth.models import User
    from django.db import transaction
    from django.utils import timezone

    from labeling import answers, inference
    from labeling.models import Answer, Pair
    from retrieval.models import Collection, Image

    rng = random.Random(0)
    collection = Collection.objects.create(name="refresh bench")
    Image.objects.bulk_create(
        Image(
            collection=collection, file=f"b/{i}.png", sha256=f"r-{i}", width=1, height=1,
            format="PNG", original_name=f"{i}.png",
        )
        for i in range(args.images)
    )  # fmt: skip
    ids = list(Image.objects.filter(collection=collection).values_list("id", flat=True))
    user = User.objects.create(username="refresh-bench")
    seen: set[tuple[int, int]] = set()

    def new_pair() -> tuple[int, int]:
        while True:
            a, b = sorted(rng.sample(ids, 2))
            if (a, b) not in seen:
                seen.add((a, b))
                return a, b

    start = timezone.now() - timedelta(days=1)
    rows = []
    for i in range(args.pairs):
        a, b = new_pair()
        answer = Answer.SAME if rng.random() < 0.2 else Answer.DIFFERENT
        rows.append(
            Pair(
                collection=collection, a_id=a, b_id=b, status=Pair.Status.ANSWERED,
                resolved=answer, agreement=1.0, answer_count=1,
                answered_at=start + timedelta(milliseconds=i),
            )
        )  # fmt: skip
    Pair.objects.bulk_create(rows, batch_size=2000)
    with transaction.atomic():
        answers.refresh_flags(collection.pk)
    results = {}
    for mode in ("kept replay", "full replay"):
        times = []
        for _ in range(args.answers):
            a, b = new_pair()
            pair = answers.pair_for(collection, a, b)
            if mode == "full replay":
                inference._replays.clear()
            answer = Answer.SAME if rng.random() < 0.2 else Answer.DIFFERENT
            began = time.perf_counter()
            answers.record_answer(pair, user, answer)
            times.append((time.perf_counter() - began) * 1000)
        times.sort()
        results[mode] = (statistics.median(times), times[int(0.95 * (len(times) - 1))])
    print(f"{args.pairs} resolved pairs, {args.images} images, {args.answers} answers per mode; "
          f"load average {'/'.join(f'{x:.2f}' for x in os.getloadavg())}\n")  # fmt: skip
    print("| record_answer | p50 ms | p95 ms |\n|---|---:|---:|")
    for mode, (p50, p95) in results.items():
        print(f"| {mode} | {p50:.1f} | {p95:.1f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=3000)
    parser.add_argument("--pairs", type=int, default=5000)
    parser.add_argument("--answers", type=int, default=100)
    args = parser.parse_args()
    import django

    django.setup()
    from django.core.management import call_command

    drop_database(BENCH_DB)
    try:
        call_command("migrate", verbosity=0)
        run(args)
    finally:
        drop_database(BENCH_DB)


if __name__ == "__main__":
    main()
