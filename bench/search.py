"""Search benchmark: load, index and query N synthetic 128-d embeddings through retrieval.queries.

    .venv/bin/python bench/search.py --sizes 100000 --queries 200
    .venv/bin/python bench/search.py --sizes 1000000 --data embedding --ef auto,100,200

Runs the platform's own code path (binary COPY, per-version partial HNSW with the parameters
`indexes.index_params_for` picks for the size, `nearest` with its exact fallback) on the embedded
PostgreSQL, in a separate database (`autoret_bench`, created, migrated and dropped afterwards), with
a small collection beside the large one so every query is restricted to one version. recall@10 is
measured against an exact NumPy search. Prints one Markdown table.

Data (--data):
- clustered (the worst case for HNSW): 100 isotropic Gaussian clusters in 128-d, so the
  intrinsic dimension inside a cluster is the full 128; queries are data points plus noise.
- embedding: shaped like the platform's real vectors. 6,000 Fashion-MNIST train images are
  embedded with the network of a collection's version 1 (untrained AutoRet, default config at
  32 px, grey, seed 0); k-means splits them into 12 clusters; each cluster becomes a Gaussian with
  its own mean and full covariance (so the PCA spectrum and the cluster structure follow the real
  embeddings); N vectors are drawn from that mixture (cluster by its share). Queries are fresh draws
  from the same mixture (new images, not stored ones).
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import re
import sys
import time
from pathlib import Path

import numpy as np

BENCH_DB = "autoret_bench"
DIM = 128
SMALL = 500
K = 10

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

from config.embedded import drop_database  # noqa: E402


def clustered(n: int, rng: np.random.Generator, clusters: int = 100) -> np.ndarray:
    """n points around `clusters` Gaussian centres (spread 4 around, 1 within)."""
    centres = rng.normal(size=(clusters, DIM)).astype(np.float32) * 4
    out = np.empty((n, DIM), dtype=np.float32)
    for begin in range(0, n, 100_000):
        end = min(n, begin + 100_000)
        labels = rng.integers(0, clusters, size=end - begin)
        out[begin:end] = centres[labels] + rng.normal(size=(end - begin, DIM))
    return out


def kmeans(points: np.ndarray, k: int, rng: np.random.Generator, rounds: int = 25) -> np.ndarray:
    """Cluster labels of Lloyd's k-means (k-means++-free: k distinct points as the start)."""
    centres = points[rng.choice(len(points), size=k, replace=False)]
    for _ in range(rounds):
        d = (points**2).sum(1)[:, None] - 2 * points @ centres.T + (centres**2).sum(1)[None, :]
        labels = d.argmin(axis=1)
        for c in range(k):
            if (labels == c).any():
                centres[c] = points[labels == c].mean(axis=0)
    return labels


def spectrum(points: np.ndarray) -> str:
    """Participation ratio (sum l)^2 / sum l^2 of the covariance and the components holding 90%
    of the variance: an intrinsic-dimension summary (128 for isotropic 128-d noise)."""
    eig = np.clip(
        np.linalg.eigvalsh(np.cov(points.astype(np.float64), rowvar=False))[::-1], 0, None
    )
    ratio = eig.sum() ** 2 / (eig**2).sum()
    k90 = int(np.searchsorted(np.cumsum(eig) / eig.sum(), 0.9)) + 1
    return f"participation ratio {ratio:.1f}, {k90} components for 90% of the variance"


class EmbeddingMixture:
    """A Gaussian mixture fitted to real embeddings of Fashion-MNIST (module docstring)."""

    FIT_IMAGES = 6_000
    COMPONENTS = 12

    def __init__(self, rng: np.random.Generator) -> None:
        import torch

        from retrieval.autoret.data import load_dataset
        from retrieval.autoret.embed import embed_images
        from retrieval.autoret.model import AutoRet, ModelConfig
        from retrieval.versions import INITIAL_IMAGE_SIZE, INITIAL_SEED

        data = load_dataset("fashion-mnist:train")
        pick = np.sort(rng.choice(len(data.images), size=self.FIT_IMAGES, replace=False))
        # The same network embedding.load_network builds for a grey collection's version 1.
        torch.manual_seed(INITIAL_SEED)
        model = AutoRet(ModelConfig(image_size=INITIAL_IMAGE_SIZE, in_channels=1))
        real = embed_images(model, data.images[torch.from_numpy(pick)]).astype(np.float64)
        labels = kmeans(real, self.COMPONENTS, rng)
        self.weights, self.means, self.factors = [], [], []
        for c in range(self.COMPONENTS):
            members = real[labels == c]
            if len(members) < 2:
                continue
            cov = np.cov(members, rowvar=False) + 1e-9 * np.eye(DIM)
            self.weights.append(len(members))
            self.means.append(members.mean(axis=0))
            self.factors.append(np.linalg.cholesky(cov))
        self.weights = list(np.array(self.weights) / sum(self.weights))
        within = np.concatenate(
            [real[labels == c] - real[labels == c].mean(0) for c in range(self.COMPONENTS)]
        )
        self.description = (
            f"real embeddings ({self.FIT_IMAGES:,} Fashion-MNIST images): {spectrum(real)}; "
            f"within clusters: {spectrum(within)}"
        )

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        out = np.empty((n, DIM), dtype=np.float32)
        labels = rng.choice(len(self.weights), size=n, p=self.weights)
        for c, (mean, factor) in enumerate(zip(self.means, self.factors, strict=True)):
            rows = np.flatnonzero(labels == c)
            out[rows] = mean + rng.normal(size=(len(rows), DIM)) @ factor.T
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


def run_size(
    n: int,
    n_queries: int,
    seed: int,
    ef_values: list[str],
    data: str,
    clusters: int,
    params: tuple[int, int] | None,
) -> list[str]:
    from retrieval import indexes, queries

    rng = np.random.default_rng(seed)
    if data == "embedding":
        mixture = EmbeddingMixture(rng)
        print(f"# {mixture.description}", flush=True)
        vectors = mixture.sample(n, rng)
        small_vectors = mixture.sample(SMALL, rng)
        probes = mixture.sample(n_queries, rng)
    else:
        vectors = clustered(n, rng, clusters)
        small_vectors = clustered(SMALL, rng, clusters)
        picks = rng.choice(n, size=n_queries, replace=False)
        probes = (vectors[picks] + rng.normal(scale=0.5, size=(n_queries, DIM))).astype(np.float32)
    print(f"# {n:,} vectors: {spectrum(vectors[:100_000])}", flush=True)
    version, ids = make_collection(f"large-{n}", n)
    small, small_ids = make_collection(f"small-{n}", SMALL)

    started = time.perf_counter()
    for begin in range(0, n, 100_000):
        queries.copy_embeddings(
            version, ids[begin : begin + 100_000], vectors[begin : begin + 100_000]
        )
    load_s = time.perf_counter() - started
    queries.copy_embeddings(small, small_ids, small_vectors)

    load_before = os.getloadavg()[0]
    started = time.perf_counter()
    assert indexes.build_index(
        version, params=indexes.IndexParams(*params) if params is not None else None
    )
    build_s = time.perf_counter() - started
    info = indexes.index_info(version)
    assert info is not None
    print(
        f"# index: m {info.params.m}, ef_construction {info.params.ef_construction}, "
        f"{info.rows:,} rows recorded; load average {load_before:.1f} before the build, "
        f"{os.getloadavg()[0]:.1f} after",
        flush=True,
    )

    truth = exact_top_k(vectors, probes, K)
    index_of = {image_id: row for row, image_id in enumerate(ids)}
    rows = []
    for ef_value in ef_values:
        # "auto": nearest's own choice for the version's size (indexes.ef_search_for).
        ef = None if ef_value == "auto" else int(ef_value)
        shown = f"{indexes.ef_search_for(info.rows)} (auto)" if ef is None else str(ef)
        latencies, hits = [], 0
        for probe, expected in zip(probes, truth, strict=True):
            started = time.perf_counter()
            found = queries.nearest(version, probe, K, ef_search=ef)
            latencies.append(time.perf_counter() - started)
            hits += len({index_of[i] for i, _ in found} & expected)
        rows.append(
            f"| {n:,} | {data} | {load_s:.1f} | {build_s:.1f} | {info.params.m} / "
            f"{info.params.ef_construction} | {shown} | {hits / (K * n_queries):.3f} "
            f"| {percentile_ms(latencies, 50):.1f} | {percentile_ms(latencies, 95):.1f} |"
        )
    small_latencies = []
    for probe in probes[:50]:
        started = time.perf_counter()
        found = queries.nearest(small, probe, K)
        small_latencies.append(time.perf_counter() - started)
        assert len(found) == K and {i for i, _ in found} <= set(small_ids)
    rows.append(
        f"| {SMALL} (beside {n:,}) | {data} | - | no index | - | exact | 1.000 "
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


def main() -> None:
    global BENCH_DB
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", default="100000", help="comma-separated numbers of embeddings")
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--ef",
        default="auto,40,100",
        help="comma-separated hnsw.ef_search values; auto: the platform's choice for the size",
    )
    parser.add_argument(
        "--database", default=BENCH_DB, help="scratch database (created and dropped)"
    )
    parser.add_argument("--data", choices=("clustered", "embedding"), default="clustered")
    parser.add_argument("--clusters", type=int, default=100, help="clusters of --data clustered")
    parser.add_argument("--m", type=int, help="HNSW m (default: the platform's choice)")
    parser.add_argument("--ef-construction", type=int, help="HNSW ef_construction (with --m)")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    if (args.m is None) != (args.ef_construction is None):
        parser.error("give --m and --ef-construction together")
    params = None if args.m is None else (args.m, args.ef_construction)
    # It is dropped before and after the run: only scratch names, never the platform's database.
    if not re.fullmatch(r"autoret_bench[a-z0-9_]*", args.database):
        parser.error("--database must be autoret_bench followed by [a-z0-9_]")
    BENCH_DB = args.database
    os.environ["AUTORET_DB_NAME"] = BENCH_DB

    import django

    django.setup()
    from django.conf import settings
    from django.core.management import call_command

    if settings.EMBEDDED_POSTGRES_DIR is None:
        sys.exit("error: bench/search.py runs on the embedded PostgreSQL; unset DATABASE_URL")
    drop_database(BENCH_DB)  # a previous run that was killed leaves it behind
    try:
        call_command("migrate", verbosity=0)
        print(
            f"# search benchmark: {platform.node()}, {os.cpu_count()} CPUs, "
            f"{datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC, "
            f"load average {os.getloadavg()[0]:.1f}"
        )
        print(f"# {args.queries} queries, k={K}, dim={DIM}, {args.data} data, seed {args.seed}\n")
        table = []
        page_table = []
        for n in sizes:
            for row in run_size(
                n,
                args.queries,
                args.seed,
                args.ef.split(","),
                args.data,
                args.clusters,
                params,
            ):
                if row.count("|") == 5:  # a page timing row: printed in its own table
                    page_table.append(row)
                else:
                    table.append(row)
        print(
            "\n| embeddings | data | COPY load s | HNSW build s | m / ef_construction | ef_search "
            "| recall@10 | p50 ms | p95 ms |"
        )
        print("|---|---|---|---|---|---|---|---|---|")
        print("\n".join(table))
        print(f"\nload average at the end {os.getloadavg()[0]:.1f}")
        print("\n| embeddings | page (server time) | p50 ms | p95 ms |")
        print("|---|---|---|---|")
        print("\n".join(page_table))
    finally:
        drop_database(BENCH_DB)


if __name__ == "__main__":
    main()
