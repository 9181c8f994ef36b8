"""Nearest-neighbour queries against the real PostgreSQL + pgvector 0.6."""

from __future__ import annotations

import numpy as np
import pytest
from django.db import connection

from retrieval import indexes, queries
from retrieval.autoret.constants import EMBED_DIM
from retrieval.models import Collection, Image, ModelVersion

pytestmark = pytest.mark.django_db


def make_version(name: str, n: int) -> tuple[ModelVersion, list[int]]:
    """A collection with n placeholder images (no files: the queries never read them)."""
    collection = Collection.objects.create(name=name)
    images = Image.objects.bulk_create(
        Image(
            collection=collection, file=f"x/{name}/{i}.png", sha256=f"{name}-{i}", width=1,
            height=1, format="PNG", original_name=f"{i}.png",
        )
        for i in range(n)
    )  # fmt: skip
    version = ModelVersion.objects.create(collection=collection, number=1, kind="untrained")
    return version, [image.pk for image in images]


def clustered(n: int, seed: int, clusters: int = 20) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(clusters, EMBED_DIM)).astype(np.float32) * 4
    labels = rng.integers(0, clusters, size=n)
    return (centres[labels] + rng.normal(size=(n, EMBED_DIM))).astype(np.float32)


@pytest.fixture
def large() -> tuple[ModelVersion, list[int], np.ndarray]:
    version, ids = make_version("large", indexes.INDEX_MIN_ROWS + 500)
    vectors = clustered(len(ids), seed=1)
    queries.copy_embeddings(version, ids, vectors)
    assert indexes.build_index(version)
    return version, ids, vectors


def test_copy_round_trip_keeps_vectors_and_skips_existing_rows() -> None:
    version, ids = make_version("copy", 50)
    vectors = clustered(50, seed=2)
    assert queries.copy_embeddings(version, ids, vectors) == 50
    # A redelivered batch inserts nothing and does not fail on the unique constraint.
    assert queries.copy_embeddings(version, ids[:10], vectors[:10]) == 0
    for image_id, vector in zip(ids, vectors, strict=True):
        stored = queries.vector_of(version, image_id)
        assert stored is not None
        np.testing.assert_array_equal(stored, vector)
    assert version.embeddings.count() == 50


def test_small_collection_beside_large_returns_full_page_of_its_own(large) -> None:
    small, small_ids = make_version("small", 7)
    queries.copy_embeddings(small, small_ids, clustered(7, seed=3))
    # A small version gets no index: the exact scan answers.
    assert not indexes.build_index(small)
    query = queries.vector_of(small, small_ids[0])
    assert query is not None
    for k in (3, 6, 10):
        results = queries.nearest(small, query, k, exclude_image_ids=[small_ids[0]])
        assert len(results) == min(k, len(small_ids) - 1)
        assert {image_id for image_id, _ in results} <= set(small_ids[1:])
        distances = [d for _, d in results]
        assert distances == sorted(distances)


def test_large_version_search_uses_its_partial_index(large) -> None:
    version, ids, vectors = large
    with connection.cursor() as cursor:
        cursor.execute(
            "EXPLAIN SELECT image_id FROM retrieval_embedding "
            f"WHERE version_id = {version.pk} ORDER BY vector <-> %s::vector LIMIT 10",
            [str(vectors[0].tolist())],
        )
        plan = "\n".join(row[0] for row in cursor.fetchall())
    assert indexes.index_name(version) in plan


def test_index_recall_against_exact_scan_on_clustered_data(large) -> None:
    version, ids, vectors = large
    rng = np.random.default_rng(4)
    hits = 0
    picks = rng.choice(len(ids), size=30, replace=False)
    for i in picks:
        approx = queries._index_scan(version.pk, vectors[i], 10, [], ef_search=100)
        exact = queries._exact_scan(version.pk, vectors[i], 10, [])
        hits += len({a for a, _ in approx} & {e for e, _ in exact})
    assert hits / (10 * len(picks)) >= 0.9


def test_excluding_more_than_ef_search_still_returns_a_full_page(large) -> None:
    version, ids, vectors = large
    exact = queries._exact_scan(version.pk, vectors[0], 100, [])
    excluded = [image_id for image_id, _ in exact[:60]]
    results = queries.nearest(version, vectors[0], 10, exclude_image_ids=excluded, ef_search=40)
    assert len(results) == 10
    assert not {image_id for image_id, _ in results} & set(excluded)


def test_query_image_is_excluded_and_offset_pages_on(large) -> None:
    version, ids, vectors = large
    first = queries.nearest(version, vectors[5], 10, exclude_image_ids=[ids[5]])
    assert ids[5] not in {image_id for image_id, _ in first}
    both = queries.nearest(version, vectors[5], 20, exclude_image_ids=[ids[5]])
    second = queries.nearest(version, vectors[5], 10, exclude_image_ids=[ids[5]], offset=10)
    assert len(second) == 10
    assert [i for i, _ in both[10:]] == [i for i, _ in second]


def test_near_duplicates_are_grouped_by_union_find() -> None:
    version, ids = make_version("dupes", 8)
    vectors = clustered(8, seed=5) * 10
    vectors[1] = vectors[0] + 0.01
    vectors[2] = vectors[1] + 0.01  # 0-1-2 chain into one group
    vectors[6] = vectors[5] + 0.02
    queries.copy_embeddings(version, ids, vectors)
    groups, after = queries.near_duplicate_pairs(version, threshold=0.5)
    assert after is None
    assert [g.image_ids for g in groups] == [ids[0:3], [ids[5], ids[6]]]
    assert all(d <= 0.5 for g in groups for _, _, d in g.pairs)


def test_near_duplicate_pages_walk_the_version_in_windows() -> None:
    version, ids = make_version("windows", 9)
    vectors = clustered(9, seed=7) * 10
    for i in (1, 4, 7):
        vectors[i] = vectors[i - 1] + 0.01
    queries.copy_embeddings(version, ids, vectors)
    seen: set[tuple[int, int]] = set()
    after: int | None = 0
    pages = 0
    while after is not None:
        groups, after = queries.near_duplicate_pairs(version, 0.5, window=4, after_image_id=after)
        seen |= {(a, b) for g in groups for a, b, _ in g.pairs}
        pages += 1
    assert pages == 3
    assert seen == {(ids[i - 1], ids[i]) for i in (1, 4, 7)}


def test_map_sample_is_stable_and_bounded() -> None:
    version, ids = make_version("map", 40)
    queries.copy_embeddings(version, ids, clustered(40, seed=6))
    first_ids, first_vectors = queries.sample_for_map(version, 25)
    again_ids, _ = queries.sample_for_map(version, 25)
    assert first_ids == again_ids
    assert first_vectors.shape == (25, EMBED_DIM)
    assert set(first_ids) <= set(ids)
