"""Where the time of next + answer goes, under load: one profiled annotator inside this process
while `labeling_load.py`'s annotators load the same platform over HTTP.

    # a platform of its own (AUTORET_DATA_DIR=DIR, as labeling_load.py --stack starts one), then
    AUTORET_DATA_DIR=DIR .venv/bin/python bench/labeling_profile.py --url http://127.0.0.1:8791 \
        --users 20 --think 1.0 --seconds 30

The profiled annotator calls the same views through Django's test client (no socket, no
gunicorn), so its numbers are the server's own work; the background annotators' client-side
latency beside them shows what gunicorn's queueing adds. Each statement is timed with
connection.execute_wrapper; the collection lock is timed from pg_advisory_xact_lock to the
commit that releases it; the incremental inference refresh, the mining in the request (if any)
and DRF's JSON rendering are timed by wrapping those functions. Prints one table per request
kind (p50 / p95 ms and statements) and cProfile's top functions by cumulative time.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import random
import statistics
import sys
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

# phase -> one duration (s) per request, for the request being profiled.
Samples = dict[str, list[float]]


class Timer:
    """Per-request phase times: each wrapped function adds to the open request's phases."""

    def __init__(self) -> None:
        self.current: dict[str, float] | None = None
        self.samples: dict[str, Samples] = defaultdict(lambda: defaultdict(list))
        self.lock_started: float | None = None

    def add(self, phase: str, seconds: float) -> None:
        if self.current is not None:
            self.current[phase] = self.current.get(phase, 0.0) + seconds

    @contextmanager
    def request(self, kind: str) -> Iterator[None]:
        self.current = {}
        started = time.perf_counter()
        try:
            yield
        finally:
            self.current["total"] = time.perf_counter() - started
            for phase, seconds in self.current.items():
                self.samples[kind][phase].append(seconds)
            self.samples[kind]["requests"].append(1)
            self.current = None

    def wrap(self, owner: Any, name: str, phase: str) -> None:
        original: Callable[..., Any] = getattr(owner, name)

        def timed(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                self.add(phase, time.perf_counter() - started)

        setattr(owner, name, timed)


def instrument(timer: Timer) -> None:
    from django.db import connection, transaction
    from rest_framework.renderers import JSONRenderer

    from labeling import answers, inference, pair_queue

    def statement(execute: Callable[..., Any], sql: str, *args: Any) -> Any:
        started = time.perf_counter()
        try:
            return execute(sql, *args)
        finally:
            elapsed = time.perf_counter() - started
            timer.add("SQL", elapsed)
            timer.add("statements", 1)
            if timer.lock_started is not None:
                timer.add("statements under the lock", 1)
            if "pg_advisory_xact_lock" in sql:
                timer.add("waiting for the lock", elapsed)
                timer.lock_started = time.perf_counter()

                def released() -> None:
                    if timer.lock_started is not None:
                        timer.add("held the lock", time.perf_counter() - timer.lock_started)
                    timer.lock_started = None

                transaction.on_commit(released)

    connection.execute_wrappers.append(statement)
    timer.wrap(inference, "refresh", "inference refresh (with its SQL)")
    timer.wrap(answers, "refresh_flags", "refresh_flags (with its SQL)")
    timer.wrap(pair_queue, "mine", "mining in the request")
    timer.wrap(pair_queue, "_claim", "lease claim (SQL)")
    timer.wrap(JSONRenderer, "render", "JSON rendering")


def profiled_annotator(
    timer: Timer, collection_id: int, username: str, deadline: float, think: float
) -> cProfile.Profile:
    from django.test import Client

    client = Client(HTTP_HOST="127.0.0.1")
    from django.contrib.auth.models import User

    client.force_login(User.objects.get(username=username))
    rng = random.Random(1)
    profile = cProfile.Profile()
    while time.monotonic() < deadline:
        profile.enable()
        with timer.request("next"):
            response = client.get(f"/api/v1/collections/{collection_id}/pairs/next/")
        profile.disable()
        if response.status_code != 200:
            time.sleep(0.2)
            continue
        pair = response.json()
        if think:
            time.sleep(think * rng.uniform(0.5, 1.5))
        body = {"answer": rng.choice(["same", "different"]), "idempotency_key": uuid.uuid4().hex}
        profile.enable()
        with timer.request("answer"):
            client.post(
                f"/api/v1/pairs/{pair['pair_id']}/answer/", body, content_type="application/json"
            )
        profile.disable()
    return profile


def report(timer: Timer) -> None:
    for kind, phases in timer.samples.items():
        n = len(phases.pop("requests"))
        print(f"\n{kind}: {n} requests in this process (ms, p50 / p95 over the requests)\n")
        print("| phase | p50 | p95 |")
        print("|---|---:|---:|")
        for phase, values in phases.items():
            values = values + [0.0] * (n - len(values))  # a phase some requests skipped
            values.sort()
            scale = 1 if phase.startswith("statements") else 1000
            p50 = statistics.median(values) * scale
            p95 = values[int(0.95 * (n - 1))] * scale
            print(f"| {phase} | {p50:.1f} | {p95:.1f} |")


def main() -> None:
    import labeling_load

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--collection", type=int, default=None)
    parser.add_argument("--users", type=int, default=20, help="background annotators over HTTP")
    parser.add_argument("--seconds", type=float, default=30)
    parser.add_argument("--think", type=float, default=1.0)
    parser.add_argument("--top", type=int, default=25, help="cProfile functions to print")
    args = parser.parse_args()
    collection_id, accounts = labeling_load.setup(args.collection, args.users + 1)
    profiled, background = accounts[0], accounts[1:]
    timer = Timer()
    instrument(timer)
    deadline = time.monotonic() + args.seconds
    threads = [
        threading.Thread(
            target=labeling_load.run_annotator,
            args=(args.url, collection_id, a, deadline, i, args.think),
        )
        for i, a in enumerate(background)
    ]
    for thread in threads:
        thread.start()
    profile = profiled_annotator(timer, collection_id, profiled.username, deadline, args.think)
    for thread in threads:
        thread.join()
    latencies = sorted(x for a in background for x in a.latencies)
    if latencies:
        print(
            f"background: {len(background)} annotators over HTTP, {len(latencies)} answers, "
            f"next+answer p50 {statistics.median(latencies) * 1000:.1f} ms, "
            f"p95 {latencies[int(0.95 * (len(latencies) - 1))] * 1000:.1f} ms"
        )
    report(timer)
    out = io.StringIO()
    pstats.Stats(profile, stream=out).sort_stats("cumulative").print_stats(args.top)
    print("\n```\n" + out.getvalue().strip() + "\n```")


if __name__ == "__main__":
    main()
