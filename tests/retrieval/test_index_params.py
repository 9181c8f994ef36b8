"""HNSW parameters and ef_search chosen by a version's size, on the real PostgreSQL + pgvector."""

from __future__ import annotations

import numpy as np
import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from retrieval import indexes, queries
from retrieval.models import ModelVersion
from tests.retrieval.test_queries import clustered, make_version

pytestmark = pytest.mark.django_db

ROWS = indexes.INDEX_MIN_ROWS + 2000


@pytest.fixture
def tiers(settings):
    """Small thresholds so a test-sized version crosses them."""
    settings.AUTORET_HNSW_M, settings.AUTORET_HNSW_EF_CONSTRUCTION = 16, 64
    settings.AUTORET_HNSW_LARGE_M, settings.AUTORET_HNSW_LARGE_EF_CONSTRUCTION = 24, 80
    settings.AUTORET_HNSW_LARGE_ROWS = ROWS
    settings.AUTORET_EF_SEARCH, settings.AUTORET_EF_SEARCH_LARGE = 40, 160
    settings.AUTORET_EF_SEARCH_SMALL_ROWS = ROWS // 4
    return settings


def loaded(name: str, n: int) -> tuple[ModelVersion, list[int], np.ndarray]:
    version, ids = make_version(name, n)
    vectors = clustered(n, seed=7)
    queries.copy_embeddings(version, ids, vectors)
    return version, ids, vectors


def test_graph_parameters_switch_at_the_large_threshold(tiers) -> None:
    assert indexes.index_params_for(ROWS - 1) == indexes.IndexParams(16, 64)
    assert indexes.index_params_for(ROWS) == indexes.IndexParams(24, 80)
    assert indexes.index_params_for(10 * ROWS) == indexes.IndexParams(24, 80)


def test_ef_search_grows_with_the_size_between_the_thresholds(tiers) -> None:
    small_rows = tiers.AUTORET_EF_SEARCH_SMALL_ROWS
    assert indexes.ef_search_for(0) == 40
    assert indexes.ef_search_for(small_rows) == 40
    between = [indexes.ef_search_for(n) for n in range(small_rows, ROWS + 1, 97)]
    assert between == sorted(between)
    assert 40 < indexes.ef_search_for((small_rows + ROWS) // 2) < 160
    assert indexes.ef_search_for(ROWS) == 160
    assert indexes.ef_search_for(100 * ROWS) == 160


def test_default_settings_keep_pgvector_defaults_at_100k_not_at_1m() -> None:
    # The measured tiers of docs/search.md: 100k at m 16 / ef_search 40 met its target.
    assert indexes.index_params_for(100_000) == indexes.IndexParams(16, 64)
    assert indexes.ef_search_for(100_000) == 40
    assert indexes.index_params_for(1_000_000).m > 16
    assert indexes.ef_search_for(1_000_000) > 40


def test_large_version_is_indexed_with_the_large_graph_and_the_index_records_it(tiers) -> None:
    large, _, _ = loaded("large", ROWS)
    small, _, _ = loaded("below", ROWS - 100)
    assert indexes.build_index(large)
    assert indexes.build_index(small)
    large_info, small_info = indexes.index_info(large), indexes.index_info(small)
    assert large_info is not None and small_info is not None
    assert large_info.params == indexes.IndexParams(24, 80)
    assert small_info.params == indexes.IndexParams(16, 64)
    # The row count is PostgreSQL's estimate (pg_class.reltuples after ANALYZE), not a count.
    assert large_info.rows == pytest.approx(ROWS, rel=0.02)
    assert small_info.rows == pytest.approx(ROWS - 100, rel=0.02)
    # What index_info reads is what PostgreSQL built: the index definition says the same.
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_get_indexdef(to_regclass(%s))", [indexes.index_name(large)])
        definition = cursor.fetchone()[0]
    assert "m='24'" in definition and "ef_construction='80'" in definition


def test_explicit_parameters_win_over_the_size(tiers) -> None:
    version, _, _ = loaded("explicit", indexes.INDEX_MIN_ROWS)
    assert indexes.build_index(version, params=indexes.IndexParams(8, 32))
    info = indexes.index_info(version)
    assert info is not None and info.params == indexes.IndexParams(8, 32)


def test_no_index_no_info() -> None:
    version, _, _ = loaded("tiny", 10)
    assert not indexes.build_index(version)
    assert indexes.index_info(version) is None
    assert not indexes.has_index(version)


def ef_set_by(version, vector: np.ndarray, **kwargs) -> list[int]:
    with CaptureQueriesContext(connection) as captured:
        results = queries.nearest(version, vector, 10, **kwargs)
    assert len(results) == 10
    prefix = "SET LOCAL hnsw.ef_search = "
    return [int(q["sql"][len(prefix) :]) for q in captured if q["sql"].startswith(prefix)]


def test_nearest_takes_ef_search_from_the_index_row_count(tiers) -> None:
    # A margin over the threshold: the row count nearest reads is an estimate.
    large, _, vectors = loaded("large", ROWS + 200)
    mid, _, mid_vectors = loaded("mid", ROWS // 2)
    assert indexes.build_index(large) and indexes.build_index(mid)
    assert ef_set_by(large, vectors[0]) == [160]
    expected_mid = indexes.ef_search_for(ROWS // 2)
    assert 40 < expected_mid < 160
    assert ef_set_by(mid, mid_vectors[0]) == [expected_mid]
    # An explicit ef_search is kept (raised only to cover k + offset + exclusions).
    assert ef_set_by(large, vectors[0], ef_search=50) == [50]


def test_build_memory_is_raised_to_hold_the_graph(settings) -> None:
    settings.AUTORET_INDEX_BUILD_MEMORY = "64MB"
    assert indexes._maintenance_work_mem() == "64MB"
    graph = indexes.graph_bytes(100_000, indexes.IndexParams(32, 128))
    assert graph > 64 << 20
    memory = indexes._maintenance_work_mem(100_000, indexes.IndexParams(32, 128))
    assert memory.endswith("MB") and int(memory[:-2]) << 20 >= graph
