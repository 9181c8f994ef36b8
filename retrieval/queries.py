"""Every nearest-neighbour query of the platform, against pgvector 0.8 with L2 distance (`<->`).

Index design: one partial HNSW index per model version (`... USING hnsw (vector vector_l2_ops)
WHERE version_id = N`). A search is always restricted to one version, so the index it walks holds
exactly that version's rows and a top-k needs no post-filter. An HNSW scan yields at most
`hnsw.ef_search` candidates and a filter (excluded ids) applied after it can leave fewer than k
rows. `nearest` therefore falls back to an exact scan whenever the index returns a short page
(pgvector 0.8's iterative scans fill the page too, but with other rows), and versions too small
to be worth an index are always scanned exactly through the (version_id, image_id) btree of the
unique constraint. See docs/search.md.
"""

from __future__ import annotations

import math
import os
import weakref
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from django.conf import settings
from django.db import connection, transaction
from pgvector.psycopg import register_vector

from retrieval.autoret.constants import EMBED_DIM
from retrieval.models import Embedding, ModelVersion

TABLE = Embedding._meta.db_table

# Below this many rows an exact scan of one version costs about as much as an HNSW walk (a few
# milliseconds for 2,000 x 128 floats) and is always exact, so no index is built.
INDEX_MIN_ROWS = 2000
# ef_search, m and ef_construction depend on the version's size: see index_params_for and
# ef_search_for (settings AUTORET_HNSW_* and AUTORET_EF_SEARCH*, measured in bench/search.py).
DEFAULT_EF_SEARCH = 40


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


# Raw psycopg connections that already know the `vector` type (registering costs a round trip).
_registered: weakref.WeakSet[Any] = weakref.WeakSet()

VersionRef = ModelVersion | int


def _version_id(version: VersionRef) -> int:
    # Always an int: it is written into SQL as a literal (see _version_filter).
    return int(version.pk if isinstance(version, ModelVersion) else version)


def _version_filter(version_id: int) -> str:
    # A literal, not a bound parameter: the planner can only match a partial index whose
    # predicate it can prove, and a generic plan over a parameter proves nothing.
    return f"version_id = {int(version_id)}"


def index_name(version: VersionRef) -> str:
    return f"embedding_hnsw_v{_version_id(version)}"


def _cursor() -> Any:
    """A Django cursor whose raw psycopg connection adapts numpy arrays to and from `vector`."""
    connection.ensure_connection()
    raw = connection.connection
    if raw not in _registered:
        register_vector(raw)
        _registered.add(raw)
    return connection.cursor()


def _to_numpy(value: Any) -> np.ndarray:
    # pgvector 0.5's loader returns its own Vector type; the rest of the code wants arrays.
    array = value.to_numpy() if hasattr(value, "to_numpy") else value
    return np.asarray(array, dtype=np.float32)


def _as_vector(vector: Sequence[float] | np.ndarray) -> np.ndarray:
    array = np.asarray(vector, dtype=np.float32)
    if array.shape != (EMBED_DIM,):
        raise ValueError(f"a query vector has {EMBED_DIM} numbers, not shape {array.shape}")
    return array


def index_info(version: VersionRef) -> IndexInfo | None:
    """The version's valid (fully built) HNSW index, or None: one catalogue lookup."""
    with _cursor() as cursor:
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
    with _cursor() as cursor:
        cursor.execute(
            f"SELECT count(*) FROM (SELECT 1 FROM {TABLE} "
            f"WHERE {_version_filter(_version_id(version))} LIMIT %s) AS head",
            [n],
        )
        return int(cursor.fetchone()[0]) >= n


def nearest(
    version: VersionRef,
    vector: Sequence[float] | np.ndarray,
    k: int,
    exclude_image_ids: Iterable[int] = (),
    ef_search: int | None = None,
    offset: int = 0,
) -> list[tuple[int, float]]:
    """The k images of `version` nearest to `vector` by L2 distance, as (image_id, distance).

    Always a full page: min(k, rows in the version not excluded, after `offset`). `offset` skips
    the first results ("load more"); it is bounded by the page size the views allow. `ef_search`
    None: chosen by the index's row count (ef_search_for).
    """
    query = _as_vector(vector)
    excluded = sorted({int(i) for i in exclude_image_ids})
    version_id = _version_id(version)
    wanted = k + offset
    if wanted <= 0:
        return []
    rows: list[tuple[int, float]] = []
    info = index_info(version_id)
    if info is not None:
        ef = ef_search_for(info.rows) if ef_search is None else ef_search
        rows = _index_scan(version_id, query, wanted, excluded, ef)
    if len(rows) < wanted:
        # Short page from the index (the exclusions or ef_search cut it) or no index: exact.
        rows = _exact_scan(version_id, query, wanted, excluded)
    return rows[offset:]


def _index_scan(
    version_id: int, query: np.ndarray, limit: int, excluded: list[int], ef_search: int
) -> list[tuple[int, float]]:
    # HNSW yields at most ef_search candidates before any filter, so ask for enough of them.
    ef = max(int(ef_search), limit + len(excluded))
    with transaction.atomic(), _cursor() as cursor:
        # SET LOCAL cannot take a bound parameter; `ef` is an int by construction.
        cursor.execute(f"SET LOCAL hnsw.ef_search = {min(ef, 1000)}")
        cursor.execute(
            f"SELECT image_id, vector <-> %s AS distance FROM {TABLE} "
            f"WHERE {_version_filter(version_id)} AND NOT (image_id = ANY(%s)) "
            "ORDER BY vector <-> %s LIMIT %s",
            [query, excluded, query, limit],
        )
        return [(int(i), float(d)) for i, d in cursor.fetchall()]


def _exact_scan(
    version_id: int, query: np.ndarray, limit: int, excluded: list[int]
) -> list[tuple[int, float]]:
    with _cursor() as cursor:
        # The materialized CTE keeps the planner off the HNSW index (whose ordering would bring
        # back the ef_search cut-off): it reads the version's rows through the btree on
        # (version_id, image_id) and sorts by the true distance.
        cursor.execute(
            "WITH scored AS MATERIALIZED ("
            f"  SELECT image_id, vector <-> %s AS distance FROM {TABLE}"
            f"  WHERE {_version_filter(version_id)} AND NOT (image_id = ANY(%s))"
            ") SELECT image_id, distance FROM scored ORDER BY distance, image_id LIMIT %s",
            [query, excluded, limit],
        )
        return [(int(i), float(d)) for i, d in cursor.fetchall()]


def vector_of(version: VersionRef, image_id: int) -> np.ndarray | None:
    """The stored vector of one image in one version, or None if it has none yet."""
    return vectors_of(version, [image_id]).get(int(image_id))


def vectors_of(version: VersionRef, image_ids: Sequence[int]) -> dict[int, np.ndarray]:
    """image_id -> stored vector in one version, in one query; images without one are left out."""
    if not image_ids:
        return {}
    with _cursor() as cursor:
        cursor.execute(
            f"SELECT image_id, vector FROM {TABLE} WHERE {_version_filter(_version_id(version))} "
            "AND image_id = ANY(%s)",
            [[int(i) for i in image_ids]],
        )
        return {int(i): _to_numpy(v) for i, v in cursor.fetchall()}


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
    with _cursor() as cursor:
        cursor.execute(
            f"SELECT count(*) FROM {TABLE} WHERE {_version_filter(_version_id(version))}"
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
    version_id = _version_id(version)
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
        f"ef_construction = {int(params.ef_construction)}) WHERE {_version_filter(version_id)}"
    )
    memory = _maintenance_work_mem(rows, params)
    with _cursor() as cursor:
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
    with _cursor() as cursor:
        cursor.execute(f"DROP INDEX IF EXISTS {index_name(version)}")


def copy_embeddings(version: VersionRef, image_ids: Sequence[int], vectors: np.ndarray) -> int:
    """Stores vectors (N x EMBED_DIM float32) for image_ids in `version` by binary COPY.

    Rows that already exist (a redelivered batch, a second worker) are skipped, not doubled: the
    COPY goes to a temporary table, then INSERT ... ON CONFLICT DO NOTHING against the unique
    (version, image) constraint. Returns the number of rows inserted.
    """
    array = np.ascontiguousarray(vectors, dtype=np.float32)
    if array.ndim != 2 or array.shape[1] != EMBED_DIM or len(array) != len(image_ids):
        raise ValueError(
            f"need {len(image_ids)} x {EMBED_DIM} vectors, got shape {tuple(array.shape)}"
        )
    if not len(image_ids):
        return 0
    version_id = _version_id(version)
    with transaction.atomic(), _cursor() as cursor:
        cursor.execute(
            "CREATE TEMP TABLE embedding_load (image_id bigint, vector vector) ON COMMIT DROP"
        )
        raw_cursor = cursor.cursor
        with raw_cursor.copy(
            "COPY embedding_load (image_id, vector) FROM STDIN WITH (FORMAT BINARY)"
        ) as copy:
            copy.set_types(["int8", "vector"])
            for image_id, row in zip(image_ids, array, strict=True):
                copy.write_row((int(image_id), row))
        cursor.execute(
            f"INSERT INTO {TABLE} (version_id, image_id, vector) "
            f"SELECT {version_id}, image_id, vector FROM embedding_load "
            "ON CONFLICT (version_id, image_id) DO NOTHING"
        )
        inserted = int(cursor.rowcount)
        # ON COMMIT DROP alone would leave it behind when the caller's transaction goes on.
        cursor.execute("DROP TABLE embedding_load")
        return inserted


@dataclass
class DuplicateGroup:
    """Images linked by near-duplicate pairs (connected components of the pair graph)."""

    image_ids: list[int]
    pairs: list[tuple[int, int, float]] = field(default_factory=list)


def near_duplicate_pairs(
    version: VersionRef,
    threshold: float,
    limit: int = 500,
    neighbours: int = 10,
    after_image_id: int = 0,
    window: int = 1000,
    ef_search: int = DEFAULT_EF_SEARCH,
) -> tuple[list[DuplicateGroup], int | None]:
    """Pairs of images in `version` at L2 distance <= threshold, grouped by union-find.

    One page walks the next `window` images in id order (keyset from `after_image_id`), asking
    each for its `neighbours` nearest, and keeps at most `limit` pairs. The window bounds the
    work of a page (about `window` index walks) however few duplicates a large collection has.
    Returns the groups (largest first) and the cursor of the next page (None at the end); a
    group can continue on the next page.
    """
    # One image yields at most `neighbours` pairs: a smaller limit could never make progress.
    limit = max(limit, neighbours)
    version_id = _version_id(version)
    scope = _version_filter(version_id)
    with transaction.atomic(), _cursor() as cursor:
        cursor.execute(
            f"SELECT count(*), max(image_id) FROM (SELECT image_id FROM {TABLE} "
            f"WHERE {scope} AND image_id > %s ORDER BY image_id LIMIT %s) AS w",
            [after_image_id, window],
        )
        scanned, last = cursor.fetchone()
        if not scanned:
            return [], None
        cursor.execute(f"SET LOCAL hnsw.ef_search = {max(int(ef_search), neighbours + 1)}")
        cursor.execute(
            f"SELECT e.image_id, n.image_id, n.distance FROM {TABLE} e CROSS JOIN LATERAL ("
            f"  SELECT o.image_id, o.vector <-> e.vector AS distance FROM {TABLE} o"
            f"  WHERE o.{scope} ORDER BY o.vector <-> e.vector LIMIT %s"
            f") n WHERE e.{scope} AND e.image_id > %s AND e.image_id <= %s "
            "AND n.image_id <> e.image_id AND n.distance <= %s "
            "ORDER BY e.image_id, n.distance LIMIT %s",
            [neighbours + 1, after_image_id, last, threshold, limit + 1],
        )
        rows = cursor.fetchall()
    next_after: int | None = int(last) if scanned == window else None
    if len(rows) > limit:
        # Cut before the last image whose pairs may be incomplete; the next page starts there.
        cut = rows[limit][0]
        rows = [row for row in rows[:limit] if row[0] != cut]
        next_after = int(cut) - 1 if not rows else int(rows[-1][0])
    # Each pair shows up from both ends; keep it once, smaller id first.
    pairs = {(min(a, b), max(a, b)): float(d) for a, b, d in rows}
    parent: dict[int, int] = {}

    def find(x: int) -> int:
        parent.setdefault(x, x)
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for a, b in pairs:
        ra, rb = find(a), find(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    groups: dict[int, DuplicateGroup] = {}
    for (a, b), d in sorted(pairs.items(), key=lambda item: item[1]):
        group = groups.setdefault(find(a), DuplicateGroup(image_ids=[]))
        group.pairs.append((a, b, d))
    for root, group in groups.items():
        group.image_ids = sorted(x for x in parent if find(x) == root)
    ordered = sorted(groups.values(), key=lambda g: (-len(g.image_ids), g.pairs[0][2]))
    return ordered, next_after


def sample_for_map(
    version: VersionRef, n: int, spread: bool = True
) -> tuple[list[int], np.ndarray]:
    """Up to n (image_id, vector) of the version, the same sample on every call.

    `spread`: a hash order that draws from the whole collection (reads every row of the
    version); without it the first n by id, read from the btree alone (cheap at any size).
    """
    order = "hashint8(image_id), image_id" if spread else "image_id"
    with _cursor() as cursor:
        cursor.execute(
            f"SELECT image_id, vector FROM {TABLE} WHERE {_version_filter(_version_id(version))} "
            f"ORDER BY {order} LIMIT %s",
            [n],
        )
        rows = cursor.fetchall()
    ids = [int(i) for i, _ in rows]
    vectors = np.array([_to_numpy(v) for _, v in rows], dtype=np.float32).reshape(
        len(rows), EMBED_DIM
    )
    return ids, vectors


def neighbour_lists(
    version: VersionRef, image_ids: Sequence[int], k: int, ef_search: int = DEFAULT_EF_SEARCH
) -> list[tuple[int, int, float]]:
    """Each image's k nearest other images in `version`, as (image_id, neighbour_id, distance).

    One statement for the whole batch (a LATERAL top-k per image), so mining a few hundred
    images' neighbour lists costs one round trip instead of one per image.
    """
    if not image_ids or k <= 0:
        return []
    scope = _version_filter(_version_id(version))
    with transaction.atomic(), _cursor() as cursor:
        cursor.execute(f"SET LOCAL hnsw.ef_search = {min(max(int(ef_search), k + 1), 1000)}")
        cursor.execute(
            f"SELECT e.image_id, n.image_id, n.distance FROM {TABLE} e CROSS JOIN LATERAL ("
            f"  SELECT o.image_id, o.vector <-> e.vector AS distance FROM {TABLE} o"
            f"  WHERE o.{scope} ORDER BY o.vector <-> e.vector LIMIT %s"
            f") n WHERE e.{scope} AND e.image_id = ANY(%s) AND n.image_id <> e.image_id "
            "ORDER BY e.image_id, n.distance",
            [k + 1, [int(i) for i in image_ids]],
        )
        return [(int(a), int(b), float(d)) for a, b, d in cursor.fetchall()]


def pair_distances(
    version: VersionRef, pairs: Sequence[tuple[int, int]]
) -> dict[tuple[int, int], float]:
    """L2 distances of image pairs in `version`; pairs with an image not embedded there are left
    out of the result."""
    if not pairs:
        return {}
    scope = _version_filter(_version_id(version))
    with _cursor() as cursor:
        cursor.execute(
            f"SELECT p.a, p.b, x.vector <-> y.vector "
            f"FROM unnest(%s::bigint[], %s::bigint[]) AS p(a, b) "
            f"JOIN {TABLE} x ON x.{scope} AND x.image_id = p.a "
            f"JOIN {TABLE} y ON y.{scope} AND y.image_id = p.b",
            [[int(a) for a, _ in pairs], [int(b) for _, b in pairs]],
        )
        return {(int(a), int(b)): float(d) for a, b, d in cursor.fetchall()}
