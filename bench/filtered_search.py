"""Filtered search: can pgvector 0.8's iterative index scans replace the exact-scan fallback?

    .venv/bin/python bench/filtered_search.py --size 100000 --queries 100

`queries.nearest` asks the HNSW index for enough candidates (ef_search raised to the page plus
the exclusions, at most 1000) and falls back to an exact scan when the page still comes back
short. With `hnsw.iterative_scan` the index scan itself goes on past ef_search until the page is
full (or `hnsw.max_scan_tuples`, 20,000 by default, are visited). This loads N clustered 128-d
vectors (bench/search.py's data) into a scratch database through the platform's own code, builds
the version's HNSW index, and for each filter shape the platform uses (the query image excluded,
the nearest M excluded as when they were seen already, a deep "load more" offset) compares:

- nearest: the platform's path, and how often it fell back to the exact scan;
- relaxed / strict: one index scan with hnsw.iterative_scan = relaxed_order / strict_order at the
  version's ef_search, no raise and no fallback (relaxed re-sorted in a materialized CTE, as
  pgvector's README does); and relaxed with ef_search raised as nearest raises it, which is
  nearest with the iterative scan in place of its exact fallback;
- exact: the exact scan alone.

recall@10 is against an exact NumPy search under the same filter; "full" is the share of queries
that got a full page. Prints one Markdown table with the machine's load.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

BENCH_DB = "autoret_bench_filtered"
K = 10

Search = Callable[[int, np.ndarray, int, list[int], int], list[tuple[int, float]]]


def iterative_scan(mode: str, raise_ef: bool = False) -> Search:
    """One HNSW scan that continues past ef_search until `limit` rows pass the filter; with
    `raise_ef`, ef_search is first raised as nearest raises it (page plus exclusions, at most
    1000), so that only the exact fallback changes."""
    from django.db import transaction

    from retrieval import vector_sql

    def search(
        version_id: int, query: np.ndarray, limit: int, excluded: list[int], ef: int
    ) -> list[tuple[int, float]]:
        if raise_ef:
            ef = min(max(ef, limit + len(excluded)), 1000)
        with transaction.atomic(), vector_sql.vector_cursor() as cursor:
            cursor.execute(f"SET LOCAL hnsw.ef_search = {int(ef)}")
            cursor.execute(f"SET LOCAL hnsw.iterative_scan = {mode}")
            cursor.execute(
                "WITH found AS MATERIALIZED ("
                f"  SELECT image_id, vector <-> %s AS distance FROM {vector_sql.TABLE}"
                f"  WHERE {vector_sql.version_filter(version_id)} AND NOT (image_id = ANY(%s))"
                "   ORDER BY vector <-> %s LIMIT %s"
                ") SELECT image_id, distance FROM found ORDER BY distance + 0, image_id",
                [query, excluded, query, limit],
            )
            return [(int(i), float(d)) for i, d in cursor.fetchall()]

    return search


def nearest(
    version_id: int, query: np.ndarray, limit: int, excluded: list[int], ef: int
) -> list[tuple[int, float]]:
    from retrieval import queries

    return queries.nearest(version_id, query, limit, exclude_image_ids=excluded, ef_search=ef)


def falls_back(
    version_id: int, query: np.ndarray, limit: int, excluded: list[int], ef: int
) -> bool:
    """Whether nearest's index scan comes back short, so that it runs the exact scan too."""
    from retrieval import queries

    return len(queries._index_scan(version_id, query, limit, excluded, ef)) < limit


def exact(
    version_id: int, query: np.ndarray, limit: int, excluded: list[int], ef: int
) -> list[tuple[int, float]]:
    from retrieval import queries

    return queries._exact_scan(version_id, query, limit, excluded)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    os.environ["AUTORET_DB_NAME"] = BENCH_DB

    import django

    django.setup()
    from django.conf import settings
    from django.core.management import call_command
    from search import clustered, make_collection, percentile_ms

    from config.embedded import drop_database
    from retrieval import indexes, queries, vector_sql

    if settings.EMBEDDED_POSTGRES_DIR is None:
        sys.exit("error: this benchmark runs on the embedded PostgreSQL; unset DATABASE_URL")
    drop_database(BENCH_DB)
    try:
        call_command("migrate", verbosity=0)
        rng = np.random.default_rng(args.seed)
        n = args.size
        vectors = clustered(n, rng)
        version, ids = make_collection(f"large-{n}", n)
        queries.copy_embeddings(version, ids, vectors)
        started = time.perf_counter()
        assert indexes.build_index(version)
        build_s = time.perf_counter() - started
        info = indexes.index_info(version)
        assert info is not None
        ef = indexes.ef_search_for(info.rows)
        with vector_sql.vector_cursor() as cursor:
            cursor.execute("SELECT extversion FROM pg_extension WHERE extname = 'vector'")
            pgvector = cursor.fetchone()[0]
        uptime = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
        print(
            f"# filtered search: {platform.node()}, {os.cpu_count()} CPUs, "
            f"{datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC, pgvector {pgvector}"
        )
        print(f"# uptime: {uptime}")
        print(
            f"# {n:,} clustered 128-d vectors, HNSW m {info.params.m} / ef_construction "
            f"{info.params.ef_construction} built in {build_s:.1f} s, ef_search {ef} (auto), "
            f"{args.queries} queries per row, k={K}, seed {args.seed}\n"
        )

        exact64 = vectors.astype(np.float64)
        norms = (exact64**2).sum(axis=1)
        picks = rng.choice(n, size=args.queries, replace=False)
        order_of = {}  # query row -> all rows by true distance (float64)
        for row in picks:
            d = norms - 2 * (exact64 @ exact64[row])
            order_of[int(row)] = np.argsort(d, kind="stable")
        # (name, rows excluded for a query, offset): the shapes of the platform's searches.
        shapes: list[tuple[str, Callable[[int], list[int]], int]] = [
            ("similar page: the image itself excluded", lambda r: [r], 0),
            ("its 100 nearest excluded", lambda r: order_of[r][:100].tolist(), 0),
            ("its 1,000 nearest excluded", lambda r: order_of[r][:1000].tolist(), 0),
            ("its 3,000 nearest excluded", lambda r: order_of[r][:3000].tolist(), 0),
            ("load more: offset 200, itself excluded", lambda r: [r], 200),
        ]
        methods: dict[str, Search] = {
            "nearest (index + exact fallback)": nearest,
            "iterative relaxed_order": iterative_scan("relaxed_order"),
            "iterative strict_order": iterative_scan("strict_order"),
            "iterative relaxed_order, ef_search raised as nearest does": iterative_scan(
                "relaxed_order", raise_ef=True
            ),
            "exact scan": exact,
        }
        table = []
        for shape, excluded_of, offset in shapes:
            for method, search in methods.items():
                latencies, hits, full, fallbacks = [], 0, 0, 0
                for pick in picks:
                    row = int(pick)
                    excluded_rows = set(excluded_of(row))
                    excluded = [ids[i] for i in excluded_rows]
                    nearest_first = order_of[row][: len(excluded_rows) + offset + K]
                    kept = [i for i in nearest_first if i not in excluded_rows]
                    expected = {ids[i] for i in kept[offset:]}
                    started = time.perf_counter()
                    found = search(version, vectors[row], K + offset, excluded, ef)[offset:]
                    latencies.append(time.perf_counter() - started)
                    full += len(found) == K
                    hits += len({i for i, _ in found} & expected)
                    if search is nearest:
                        fallbacks += falls_back(version, vectors[row], K + offset, excluded, ef)
                shown = f"{fallbacks}/{args.queries}" if search is nearest else "-"
                table.append(
                    f"| {shape} | {method} | {hits / (K * args.queries):.3f} "
                    f"| {full / args.queries:.2f} | {shown} | {percentile_ms(latencies, 50):.1f} "
                    f"| {percentile_ms(latencies, 95):.1f} |"
                )
        print("| filter | method | recall@10 | full pages | exact fallbacks | p50 ms | p95 ms |")
        print("|---|---|---|---|---|---|---|")
        print("\n".join(table))
        uptime = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
        print(f"\n# uptime at the end: {uptime}")
    finally:
        drop_database(BENCH_DB)


if __name__ == "__main__":
    main()
