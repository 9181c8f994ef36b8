"""The per-version HNSW indexes: their names, sizing (graph parameters, ef_search, build memory)
and DDL (build, drop). The queries that walk them are in queries.py; see docs/search.md.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

from django.conf import settings
from django.db import connection, transaction

from retrieval.autoret.constants import EMBED_DIM
from retrieval.vector_sql import TABLE, VersionRef, vector_cursor, version_filter, version_id_of

# Below this many rows an exact scan of one version costs about as much as an HNSW walk (a few
# milliseconds for 2,000 x 128 floats) and is always exact, so no index is built.
INDEX_MIN_ROWS = 2000


# ef_search, m and ef_construction depend on the version's size: see index_params_for and
# ef_search_for (settings AUTORET_HNSW_* and AUTORET_EF_SEARCH*, measured in bench/search.py).
@dataclass(frozen=True)
class IndexParams:
    """The HNSW graph parameters of one version's index."""

    m: int
    ef_construction: int


@dataclass(frozen=True)
class IndexInfo:
    """A version's valid index as PostgreSQL records it: its parameters (the index's reloptions)
    and its row count (pg_class.reltuples, set by the build and refreshed by ANALYZE/VACUUM)."""

    params: IndexParams
    rows: int


def index_params_for(rows: int) -> IndexParams:
    """Graph parameters for a version of `rows` embeddings: pgvector's defaults (m 16,
    ef_construction 64) below AUTORET_HNSW_LARGE_ROWS, a denser graph built with a wider search
    above it, where the defaults leave recall@10 near 0.9 whatever ef_search (docs/search.md)."""
    if rows >= settings.AUTORET_HNSW_LARGE_ROWS:
        return IndexParams(
            settings.AUTORET_HNSW_LARGE_M, settings.AUTORET_HNSW_LARGE_EF_CONSTRUCTION
        )
    return IndexParams(settings.AUTORET_HNSW_M, settings.AUTORET_HNSW_EF_CONSTRUCTION)


def ef_search_for(rows: int) -> int:
    """hnsw.ef_search for a version of `rows` embeddings: AUTORET_EF_SEARCH up to
    AUTORET_EF_SEARCH_SMALL_ROWS, AUTORET_EF_SEARCH_LARGE from AUTORET_HNSW_LARGE_ROWS on, and in
    between interpolated on log(rows)."""
    low, high = settings.AUTORET_EF_SEARCH, settings.AUTORET_EF_SEARCH_LARGE
    small_rows, large_rows = settings.AUTORET_EF_SEARCH_SMALL_ROWS, settings.AUTORET_HNSW_LARGE_ROWS
    if rows >= large_rows:
        return high
    if rows <= small_rows:
        return low
    share = math.log(rows / small_rows) / math.log(large_rows / small_rows)
    return round(low + share * (high - low))


def index_name(version: VersionRef) -> str:
    return f"embedding_hnsw_v{version_id_of(version)}"


def index_info(version: VersionRef) -> IndexInfo | None:
    """The version's valid (fully built) HNSW index, or None: one catalogue lookup."""
    with vector_cursor() as cursor:
        cursor.execute(
            "SELECT i.indisvalid, c.reloptions, c.reltuples FROM pg_index i "
            "JOIN pg_class c ON c.oid = i.indexrelid WHERE i.indexrelid = to_regclass(%s)",
            [index_name(version)],
        )
        row = cursor.fetchone()
    if not row or not row[0]:
        return None
    options = dict(option.split("=", 1) for option in row[1] or [])
    # An option left out of WITH (...) has pgvector's default.
    params = IndexParams(int(options.get("m", 16)), int(options.get("ef_construction", 64)))
    return IndexInfo(params=params, rows=max(int(row[2]), 0))


def has_index(version: VersionRef) -> bool:
    """Whether a valid (fully built) HNSW index exists for this version."""
    return index_info(version) is not None


def count_at_least(version: VersionRef, n: int) -> bool:
    """Whether the version has at least n embeddings, reading at most n index entries."""
    with vector_cursor() as cursor:
        cursor.execute(
            f"SELECT count(*) FROM (SELECT 1 FROM {TABLE} "
            f"WHERE {version_filter(version_id_of(version))} LIMIT %s) AS head",
            [n],
        )
        return int(cursor.fetchone()[0]) >= n


def graph_bytes(rows: int, params: IndexParams) -> int:
    """About how much memory pgvector 0.6 takes to build this graph in memory: the vector plus
    2m neighbour slots of 16 bytes per element (1.66 kB per row measured at m 32, dim 128)."""
    return rows * (4 * EMBED_DIM + 32 * params.m + 128)


def _maintenance_work_mem(rows: int = 0, params: IndexParams | None = None) -> str:
    """The configured build memory, raised to hold the graph of `rows` rows (a graph that
    outgrows maintenance_work_mem goes on being built on disk, many times slower), capped at half
    the memory free now so a build never swaps."""
    configured = settings.AUTORET_INDEX_BUILD_MEMORY  # validated in settings.py
    units = {"kB": 1 << 10, "MB": 1 << 20, "GB": 1 << 30}
    number, unit = configured[:-2], configured[-2:]
    wanted = int(number) * units[unit]
    if params is not None:
        wanted = max(wanted, graph_bytes(rows, params) * 5 // 4)
    try:
        available = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError):
        return f"{wanted >> 20}MB"
    # 64MB is PostgreSQL's own default: below that the cap would only slow the build down.
    capped = max(min(wanted, available // 2), 64 << 20)
    return f"{capped >> 20}MB"


def count_rows(version: VersionRef) -> int:
    """The version's embeddings, counted through the (version_id, image_id) btree: for index
    builds only (about 0.1 s per million rows), never on a query path."""
    with vector_cursor() as cursor:
        cursor.execute(
            f"SELECT count(*) FROM {TABLE} WHERE {version_filter(version_id_of(version))}"
        )
        return int(cursor.fetchone()[0])


def build_index(
    version: VersionRef, force: bool = False, params: IndexParams | None = None
) -> bool:
    """Builds this version's partial HNSW index if it has INDEX_MIN_ROWS rows (or `force`).

    The graph parameters follow the version's size (index_params_for) unless `params` is given;
    they stay recorded in the index itself (index_info). Idempotent: returns True when a valid
    index exists afterwards (whatever its parameters). Outside a transaction the build is
    CONCURRENTLY, so other collections keep loading embeddings meanwhile; inside one (tests,
    callers holding a transaction) it is a plain build.
    """
    version_id = version_id_of(version)
    if has_index(version_id):
        return True
    if not force and not count_at_least(version_id, INDEX_MIN_ROWS):
        return False
    rows = count_rows(version_id)
    if params is None:
        params = index_params_for(rows)
    name = index_name(version_id)
    # A CONCURRENTLY build that was interrupted leaves an invalid index behind: replace it.
    drop_index(version_id)
    concurrently = not connection.in_atomic_block
    ddl = (
        f"CREATE INDEX {'CONCURRENTLY ' if concurrently else ''}{name} ON {TABLE} "
        f"USING hnsw (vector vector_l2_ops) WITH (m = {int(params.m)}, "
        f"ef_construction = {int(params.ef_construction)}) WHERE {version_filter(version_id)}"
    )
    memory = _maintenance_work_mem(rows, params)
    with vector_cursor() as cursor:
        if concurrently:
            cursor.execute(f"SET maintenance_work_mem = '{memory}'")
            try:
                cursor.execute(ddl)
            finally:
                cursor.execute("RESET maintenance_work_mem")
        else:
            with transaction.atomic():
                # Django's foreign keys are deferred; CREATE INDEX refuses to run while rows
                # written earlier in this transaction still await their check.
                cursor.execute("SET CONSTRAINTS ALL IMMEDIATE")
                cursor.execute(f"SET LOCAL maintenance_work_mem = '{memory}'")
                cursor.execute(ddl)
        # Fresh statistics, or the planner still believes the version holds a handful of rows
        # and sorts it instead of walking the new index (a sample: cheap at 1M rows).
        cursor.execute(f"ANALYZE {TABLE}")
    return True


def drop_index(version: VersionRef) -> None:
    with vector_cursor() as cursor:
        cursor.execute(f"DROP INDEX IF EXISTS {index_name(version)}")
