"""Load benchmark of the pair queue: N simulated annotators against the running platform.

    make run                                   # in another terminal: the platform on :8000
    .venv/bin/python bench/labeling_load.py --users 20 --seconds 60

    # or a platform of its own: `manage.py runstack` on --port with AUTORET_DATA_DIR=DIR (its own
    # PostgreSQL, Redis, worker and gunicorn; the demo collection is loaded and embedded), stopped
    # again at the end
    .venv/bin/python bench/labeling_load.py --stack /tmp/labeling-bench --port 8765

    # zero think time (the stress mode) and then a person's pause of 1 s before each answer
    .venv/bin/python bench/labeling_load.py --stack /tmp/labeling-bench --think 0 1.0

    # the same with no automatic retraining (an idle machine), and with each answer bringing the
    # next pair in its own response (one round trip, as the Label page does)
    .venv/bin/python bench/labeling_load.py --stack /tmp/labeling-bench --retrain-after 0
    .venv/bin/python bench/labeling_load.py --stack /tmp/labeling-bench --one-round-trip

Each annotator is its own HTTP client (one keep-alive connection, its own API token) that
loops GET /api/v1/collections/{id}/pairs/next/ then POST /api/v1/pairs/{id}/answer/ with a fresh
idempotency key; one answer in ten is sent twice with the same key, as a page retrying after a
lost response would. `--think SECONDS` makes each annotator pause that long between getting a
pair and answering it, as a person looking at the images would (0, the default, is the stress
mode: every annotator asks again the moment an answer returns); several values run one after the
other, one table row each. The latency is next + answer, the pause not counted; with
`--one-round-trip` each answer is POSTed with ?next=1 and its response carries the next pair, so
the latency is that one request. Afterwards the
database is checked: every acknowledged key must have exactly one stored answer (lost = none,
duplicated = more than one) and no pair may have been answered by two bench annotators (two
annotators held it at once). Answers refused by the rate limit
(429, AUTORET_ANSWERS_PER_MINUTE per user) are counted on their own, not as errors. Prints one
Markdown table, a row per think time.

Retraining starts by itself every AUTORET_RETRAIN_AFTER_ANSWERS answers (50 by default), so with
the default the worker trains during the run on the same cores: the "retrain running" mode.
`--retrain-after N` sets it in the stack's environment (0: never, the idle machine). Beside the
latency each row says what the training did in the window: train jobs started and finished, and
the share of the window during which one was running (worker.models.Job).

Accounts `bench-annotator-N` are created as annotators of the collection (the first collection
with an active version unless --collection is given); their answers stay in the database.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlsplit

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")


@dataclass
class Annotator:
    username: str
    token: str
    latencies: list[float] = field(default_factory=list)
    acknowledged: set[str] = field(default_factory=set)
    errors: int = 0
    empty: int = 0
    throttled: int = 0


def setup(collection_id: int | None, users: int) -> tuple[int, list[Annotator]]:
    import django

    django.setup()
    from django.contrib.auth.models import User
    from rest_framework.authtoken.models import Token

    from retrieval.models import Collection, Membership

    collections = Collection.objects.filter(active_version__isnull=False).order_by("pk")
    collection = collections.get(pk=collection_id) if collection_id else collections.first()
    if collection is None:
        sys.exit("no collection with an active model version: run `make run` and wait for the demo")
    annotators = []
    for i in range(users):
        user, _ = User.objects.get_or_create(username=f"bench-annotator-{i}")
        Membership.objects.get_or_create(
            collection=collection, user=user, defaults={"role": Membership.Role.ANNOTATOR}
        )
        token, _ = Token.objects.get_or_create(user=user)
        annotators.append(Annotator(user.username, token.key))
    return collection.pk, annotators


def run_annotator(
    base: str,
    collection_id: int,
    annotator: Annotator,
    deadline: float,
    seed: int,
    think: float = 0.0,
    one_round_trip: bool = False,
) -> None:
    parts = urlsplit(base)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    connection = http.client.HTTPConnection(host, port, timeout=30)
    headers = {"Authorization": f"Token {annotator.token}", "Content-Type": "application/json"}
    rng = random.Random(seed)

    def call(method: str, path: str, body: dict | None = None) -> tuple[int, bytes]:
        payload = json.dumps(body) if body is not None else None
        connection.request(method, path, body=payload, headers=headers)
        response = connection.getresponse()
        return response.status, response.read()

    pair: dict | None = None  # with one_round_trip: the next pair the last answer brought
    while time.monotonic() < deadline:
        started = time.perf_counter()
        try:
            if pair is None:
                status, body = call("GET", f"/api/v1/collections/{collection_id}/pairs/next/")
                if status == 204:
                    annotator.empty += 1
                    time.sleep(0.2)
                    continue
                if status != 200:
                    annotator.errors += 1
                    continue
                pair = json.loads(body)
            fetched = time.perf_counter() - started
            if think > 0:
                # A person looking at the pair: not part of the measured latency.
                time.sleep(think * rng.uniform(0.5, 1.5))
            started = time.perf_counter() - fetched
            key = str(uuid.uuid4())
            answer = rng.choice(["same", "different", "different", "unsure"])
            sends = 2 if rng.random() < 0.1 else 1
            url = f"/api/v1/pairs/{pair['pair_id']}/answer/"
            if one_round_trip:
                url += f"?next=1&exclude={pair['pair_id']}"
            following = None
            for _ in range(sends):
                status, body = call("POST", url, {"answer": answer, "idempotency_key": key})
                if status in (200, 201):
                    annotator.acknowledged.add(key)
                    # A retry gets the pair the first response leased, not another one.
                    following = json.loads(body).get("next")
                elif status == 429:
                    annotator.throttled += 1
                else:
                    annotator.errors += 1
            if key in annotator.acknowledged:  # a refused answer is no answer: not timed
                annotator.latencies.append(time.perf_counter() - started)
            pair = following
        except (OSError, http.client.HTTPException):
            annotator.errors += 1
            pair = None
            connection.close()
            connection = http.client.HTTPConnection(host, port, timeout=30)
    connection.close()


def audit(annotators: list[Annotator], collection_id: int) -> tuple[int, int, int]:
    """(lost, duplicated, pairs answered by two bench annotators) from the database."""
    from django.db.models import Count

    from labeling.models import Constraint, ConstraintRevision

    names = [a.username for a in annotators]
    acknowledged = {key for a in annotators for key in a.acknowledged}
    stored = (
        ConstraintRevision.objects.filter(
            annotator__username__in=names, idempotency_key__in=acknowledged
        )
        .values("idempotency_key")
        .annotate(n=Count("id"))
    )
    counts = {row["idempotency_key"]: row["n"] for row in stored}
    lost = sum(1 for key in acknowledged if key not in counts)
    duplicated = sum(n - 1 for n in counts.values() if n > 1)
    double_served = (
        Constraint.objects.filter(pair__collection_id=collection_id, annotator__username__in=names)
        .values("pair_id")
        .annotate(n=Count("annotator", distinct=True))
        .filter(n__gt=1)
        .count()
    )
    return lost, duplicated, double_served


def training(collection_id: int, began: datetime, ended: datetime) -> str:
    """Train jobs started / finished in [began, ended] and the share of it one was running."""
    from worker.models import Job

    jobs = Job.objects.filter(collection_id=collection_id, kind=Job.Kind.TRAIN).exclude(
        started_at=None
    )
    started = finished = 0
    busy = 0.0
    for job in jobs.filter(started_at__lt=ended).exclude(finished_at__lt=began):
        assert job.started_at is not None
        started += began <= job.started_at
        finished += job.finished_at is not None and job.finished_at <= ended
        stop = min(job.finished_at or ended, ended)
        busy += max((stop - max(job.started_at, began)).total_seconds(), 0.0)
    share = busy / max((ended - began).total_seconds(), 1e-9)
    return f"{started} / {finished}, {share:.0%}"


def start_stack(data_dir: Path, port: int) -> subprocess.Popen[bytes]:
    """`manage.py runstack` in a data dir of its own (never the shared var/: stopping the stack
    stops its PostgreSQL); returns once the demo collection has an active version."""
    from urllib.request import urlopen

    os.environ["AUTORET_DATA_DIR"] = str(data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    root = Path(__file__).resolve().parent.parent
    log = (data_dir / "runstack.log").open("ab")
    stack = subprocess.Popen(
        [sys.executable, "manage.py", "runstack", "--port", str(port)],
        cwd=root, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        if stack.poll() is not None:
            sys.exit(f"runstack exited with {stack.returncode}: see {data_dir}/runstack.log")
        try:
            with urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2):
                break
        except OSError:
            time.sleep(1)
    import django

    django.setup()
    from retrieval.models import Collection

    while time.monotonic() < deadline:
        if Collection.objects.filter(active_version__isnull=False).exists():
            return stack
        time.sleep(2)
    stop_stack(stack)
    sys.exit("the demo collection got no active version within 10 minutes")


def stop_stack(stack: subprocess.Popen[bytes]) -> None:
    from django.db import connections

    connections.close_all()
    stack.send_signal(signal.SIGTERM)
    try:
        stack.wait(timeout=120)
    except subprocess.TimeoutExpired:
        os.killpg(stack.pid, signal.SIGKILL)
        stack.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--collection", type=int, default=None)
    parser.add_argument("--users", type=int, default=20)
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument(
        "--stack", type=Path, default=None, help="start and stop a platform of its own in this dir"
    )
    parser.add_argument("--port", type=int, default=8765, help="its port (with --stack)")
    parser.add_argument(
        "--retrain-after",
        type=int,
        default=None,
        metavar="N",
        help="AUTORET_RETRAIN_AFTER_ANSWERS for the stack (with --stack; 0: no automatic "
        "retraining; default: the platform's, 50)",
    )
    parser.add_argument(
        "--one-round-trip",
        action="store_true",
        help="answer with ?next=1: each answer's response brings the next pair",
    )
    parser.add_argument(
        "--think",
        type=float,
        nargs="+",
        default=[0.0],
        metavar="SECONDS",
        help="pause between getting a pair and answering it (mean; uniform 0.5x-1.5x); several "
        "values run one after the other (default 0: the stress mode)",
    )
    args = parser.parse_args()
    if args.retrain_after is not None:
        if args.stack is None:
            parser.error("--retrain-after sets the environment of a stack of its own: add --stack")
        os.environ["AUTORET_RETRAIN_AFTER_ANSWERS"] = str(args.retrain_after)
    stack = start_stack(args.stack, args.port) if args.stack else None
    if stack is not None:
        args.url = f"http://127.0.0.1:{args.port}"
    try:
        measure(args)
    finally:
        if stack is not None:
            stop_stack(stack)


def measure(args: argparse.Namespace) -> None:
    collection_id, accounts = setup(args.collection, args.users)
    from django.conf import settings

    print(
        f"{args.users} annotators, {args.seconds:.0f} s per mode, collection {collection_id}, "
        f"{args.url}, {os.cpu_count()} CPUs, retraining after "
        f"{settings.AUTORET_RETRAIN_AFTER_ANSWERS} answers"
        f"{', one round trip per answer (?next=1)' if args.one_round_trip else ''}\n"
    )
    print(
        "| think s | load avg before / after | answers | answers/s | p50 next+answer (ms) | "
        "p95 (ms) | answers per annotator, min-max | errors | 429 | empty queue | lost | "
        "duplicated | pairs held twice | train jobs started / finished, running |"
    )
    print("|---:|---|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---|")
    for think in args.think:
        annotators = [Annotator(a.username, a.token) for a in accounts]
        print(run_mode(args, collection_id, annotators, think), flush=True)


def run_mode(
    args: argparse.Namespace, collection_id: int, annotators: list[Annotator], think: float
) -> str:
    deadline = time.monotonic() + args.seconds
    threads = [
        threading.Thread(
            target=run_annotator,
            args=(args.url, collection_id, a, deadline, i, think, args.one_round_trip),
        )
        for i, a in enumerate(annotators)
    ]
    load_before = os.getloadavg()[0]
    began_at = datetime.now(UTC)
    began = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.monotonic() - began
    trained = training(collection_id, began_at, datetime.now(UTC))
    load_after = os.getloadavg()[0]
    latencies = sorted(x for a in annotators for x in a.latencies)
    answers = len(latencies)
    lost, duplicated, double_served = audit(annotators, collection_id)
    p50 = statistics.median(latencies) * 1000 if latencies else float("nan")
    p95 = latencies[int(0.95 * (answers - 1))] * 1000 if latencies else float("nan")
    per_annotator = [len(a.latencies) for a in annotators]  # how evenly the server serves them
    return (
        f"| {think:g} | {load_before:.2f} / {load_after:.2f} | {answers} | "
        f"{answers / elapsed:.1f} | {p50:.1f} | {p95:.1f} | "
        f"{min(per_annotator)}-{max(per_annotator)} | "
        f"{sum(a.errors for a in annotators)} | {sum(a.throttled for a in annotators)} | "
        f"{sum(a.empty for a in annotators)} | {lost} | {duplicated} | {double_served} | "
        f"{trained} |"
    )


if __name__ == "__main__":
    main()
