"""Search benchmark: load, index and query N synthetic 128-d embeddings through retrieval.queries.

    .venv/bin/python bench/search.py --sizes 100000 --queries 200

Runs the platform's own code path (binary COPY, per-version partial HNSW, `nearest` with its exact
fallback) on the embedded PostgreSQL, in a separate database (`autoret_bench`, created, migrated
and dropped afterwards), with a small collection beside the large one so every query is restricted
to one version. Data: seeded clustered vectors; queries are perturbed data points; recall@10 is
measured against an exact NumPy search. Prints one Markdown table.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

BENCH_DB = "autoret_bench"
DIM = 128
SMALL = 500
K = 10

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ["AUTORET_DB_NAME"] = BENCH_DB
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")


def clustered(n: int, rng: np.random.Generator, clusters: int = 100) -> np.ndarray:
    """n points around `clusters` Gaussian centres (spread 4 around, 1 within)."""
    centres = rng.normal(size=(clusters, DIM)).astype(np.float32) * 4
    out = np.empty((n, DIM), dtype=np.float32)
    for begin in range(0, n, 100_000):
        end = min(n, begin + 100_000)
        labels = rng.integers(0, clusters, size=end - begin)
        out[begin:end] = centres[labels] + rng.normal(size=(end - begin, DIM))
    return out


def exact_top_k(vectors: np.ndarray, queries_: np.ndarray, k: int) -> list[set[int]]:
    """Row indices of the k nearest vectors to each query (brute force, float64 norms)."""
    # float64 throughout: float32 dot products err by more than the gap between the 10th and
    # 11th neighbour on clustered data, which would count index hits as misses.
    exact = vectors.astype(np.float64)
    norms = (exact**2).sum(axis=1)
    truth = []
    for q in queries_:
        d = norms - 2 * (exact @ q.astype(np.float64))
        truth.append(set(np.argpartition(d, k)[:k].tolist()))
    return truth


def make_collection(name: str, n: int) -> tuple[int, list[int]]:
    """A collection with n image rows (no files: search reads only vectors), loaded by COPY."""
    from django.db import connection

    from retrieval.models import Collection, Image, ModelVersion

    collection = Collection.objects.create(name=name)
    with connection.cursor() as cursor:
        raw = cursor.cursor
        table = Image._meta.db_table
        columns = (
            "collection_id, file, thumbnail, sha256, width, height, format, original_name, "
            "label, created_at"
        )
        now = datetime.datetime.now(datetime.UTC)
        with raw.copy(f"COPY {table} ({columns}) FROM STDIN") as copy:
            for i in range(n):
                copy.write_row(
                    (
                        collection.pk,
                        f"bench/{i}.png",
                        f"bench/{i}.thumb.webp",
                        f"{name}-{i}",
                        28,
                        28,
                        "PNG",
                        f"{i}.png",
                        "",
                        now,
                    )
                )
        cursor.execute(
            f"SELECT id FROM {table} WHERE collection_id = %s ORDER BY id", [collection.pk]
        )
        ids = [row[0] for row in cursor.fetchall()]
    version = ModelVersion.objects.create(collection=collection, number=1, kind="untrained")
    return version.pk, ids


def percentile_ms(samples: list[float], q: float) -> float:
    return float(np.percentile(np.array(samples) * 1000, q))


def run_size(n: int, n_queries: int, seed: int, ef_values: list[int]) -> list[str]:
    from retrieval import queries

    rng = np.random.default_rng(seed)
    vectors = clustered(n, rng)
    small_vectors = clustered(SMALL, rng)
    version, ids = make_collection(f"large-{n}", n)
    small, small_ids = make_collection(f"small-{n}", SMALL)

    started = time.perf_counter()
    for begin in range(0, n, 100_000):
        queries.copy_embeddings(
            version, ids[begin : begin + 100_000], vectors[begin : begin + 100_000]
        )
    load_s = time.perf_counter() - started
    queries.copy_embeddings(small, small_ids, small_vectors)

    started = time.perf_counter()
    assert queries.build_index(version)
    build_s = time.perf_counter() - started

    picks = rng.choice(n, size=n_queries, replace=False)
    probes = (vectors[picks] + rng.normal(scale=0.5, size=(n_queries, DIM))).astype(np.float32)
    truth = exact_top_k(vectors, probes, K)
    index_of = {image_id: row for row, image_id in enumerate(ids)}
    rows = []
    for ef in ef_values:
        latencies, hits = [], 0
        for probe, expected in zip(probes, truth, strict=True):
            started = time.perf_counter()
            found = queries.nearest(version, probe, K, ef_search=ef)
            latencies.append(time.perf_counter() - started)
            hits += len({index_of[i] for i, _ in found} & expected)
        rows.append(
            f"| {n:,} | {load_s:.1f} | {build_s:.1f} | {ef} | {hits / (K * n_queries):.3f} "
            f"| {percentile_ms(latencies, 50):.1f} | {percentile_ms(latencies, 95):.1f} |"
        )
    small_latencies = []
    for probe in probes[:50]:
        started = time.perf_counter()
        found = queries.nearest(small, probe, K)
        small_latencies.append(time.perf_counter() - started)
        assert len(found) == K and {i for i, _ in found} <= set(small_ids)
    rows.append(
        f"| {SMALL} (beside {n:,}) | - | no index | exact | 1.000 "
        f"| {percentile_ms(small_latencies, 50):.1f} | {percentile_ms(small_latencies, 95):.1f} |"
    )
    rows.extend(page_rows(version, ids, n))
    return rows


def page_rows(version_id: int, ids: list[int], n: int, repeats: int = 30) -> list[str]:
    """Server time of the pages a curator opens in this collection (test client, no network)."""
    from django.contrib.auth.models import User
    from django.test import Client
    from django.urls import reverse

    from retrieval.models import Collection, ModelVersion

    version = ModelVersion.objects.get(pk=version_id)
    Collection.objects.filter(pk=version.collection_id).update(active_version=version)
    user = User.objects.filter(username="bench").first() or User.objects.create_superuser(
        "bench", "bench@example.org", None
    )
    client = Client(HTTP_HOST="localhost")
    client.force_login(user)
    pk, middle = version.collection_id, ids[len(ids) // 2]
    collection_url = reverse("retrieval:collection_detail", args=[pk])
    pages = {
        "collection page": collection_url,
        "collection page, keyset deep": f"{collection_url}?after={middle}",
        "image page": reverse("retrieval:image_detail", args=[pk, middle]),
        "similar page (24 nearest)": reverse("retrieval:similar", args=[pk, middle]),
    }
    rows = []
    for name, url in pages.items():
        timings = []
        for _ in range(repeats):
            started = time.perf_counter()
            response = client.get(url)
            timings.append(time.perf_counter() - started)
            assert response.status_code == 200, (url, response.status_code)
        rows.append(
            f"| {n:,} | {name} | {percentile_ms(timings, 50):.1f} | "
            f"{percentile_ms(timings, 95):.1f} |"
        )
    return rows


def drop_database() -> None:
    from django.conf import settings
    from django.db import connections

    from config.embedded import ensure_postgres, maintenance_connection

    connections.close_all()
    assert settings.EMBEDDED_POSTGRES_DIR is not None
    address = ensure_postgres(settings.EMBEDDED_POSTGRES_DIR, "postgres")
    with maintenance_connection(address) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {BENCH_DB} WITH (FORCE)")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", default="100000", help="comma-separated numbers of embeddings")
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--ef", default="40,100", help="comma-separated hnsw.ef_search values")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]

    import django

    django.setup()
    from django.conf import settings
    from django.core.management import call_command

    if settings.EMBEDDED_POSTGRES_DIR is None:
        sys.exit("error: bench/search.py runs on the embedded PostgreSQL; unset DATABASE_URL")
    drop_database()  # a previous run that was killed leaves it behind
    try:
        call_command("migrate", verbosity=0)
        print(
            f"# search benchmark: {platform.node()}, {os.cpu_count()} CPUs, {datetime.date.today()}"
        )
        print(f"# {args.queries} queries, k={K}, dim={DIM}, clustered data, seed {args.seed}\n")
        print(
            "| embeddings | COPY load s | HNSW build s | ef_search | recall@10 | p50 ms | p95 ms |"
        )
        print("|---|---|---|---|---|---|---|")
        page_table = []
        for n in sizes:
            for row in run_size(n, args.queries, args.seed, [int(e) for e in args.ef.split(",")]):
                if row.count("|") == 5:  # a page timing row: printed in its own table
                    page_table.append(row)
                else:
                    print(row, flush=True)
        print("\n| embeddings | page (server time) | p50 ms | p95 ms |")
        print("|---|---|---|---|")
        print("\n".join(page_table))
    finally:
        drop_database()


if __name__ == "__main__":
    main()
