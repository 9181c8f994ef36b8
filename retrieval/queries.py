"""Every nearest-neighbour query of the platform, against pgvector 0.8 with L2 distance (`<->`).

Index design: one partial HNSW index per model version (`... USING hnsw (vector vector_l2_ops)
WHERE version_id = N`). A search is always restricted to one version, so the index it walks holds
exactly that version's rows and a top-k needs no post-filter. An HNSW scan yields at most
`hnsw.ef_search` candidates and a filter (excluded ids) applied after it can leave fewer than k
rows. `nearest` therefore falls back to an exact scan whenever the index returns a short page
(pgvector 0.8's iterative scans fill the page too, but with other rows), and versions too small
to be worth an index are always scanned exactly through the (version_id, image_id) btree of the
unique constraint. The indexes themselves (names, sizing, build and drop) are in indexes.py. See
docs/search.md.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from django.conf import settings
from django.db import transaction

from retrieval.autoret.constants import EMBED_DIM
from retrieval.indexes import ef_search_for, index_info
from retrieval.models import Image
from retrieval.vector_sql import TABLE, VersionRef, vector_cursor, version_filter, version_id_of


def _to_numpy(value: Any) -> np.ndarray:
    # pgvector 0.5's loader returns its own Vector type; the rest of the code wants arrays.
    array = value.to_numpy() if hasattr(value, "to_numpy") else value
    return np.asarray(array, dtype=np.float32)


def _as_vector(vector: Sequence[float] | np.ndarray) -> np.ndarray:
    array = np.asarray(vector, dtype=np.float32)
    if array.shape != (EMBED_DIM,):
        raise ValueError(f"a query vector has {EMBED_DIM} numbers, not shape {array.shape}")
    return array


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
    version_id = version_id_of(version)
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
    with transaction.atomic(), vector_cursor() as cursor:
        # SET LOCAL cannot take a bound parameter; `ef` is an int by construction.
        cursor.execute(f"SET LOCAL hnsw.ef_search = {min(ef, 1000)}")
        cursor.execute(
            f"SELECT image_id, vector <-> %s AS distance FROM {TABLE} "
            f"WHERE {version_filter(version_id)} AND NOT (image_id = ANY(%s)) "
            "ORDER BY vector <-> %s LIMIT %s",
            [query, excluded, query, limit],
        )
        return [(int(i), float(d)) for i, d in cursor.fetchall()]


def _exact_scan(
    version_id: int, query: np.ndarray, limit: int, excluded: list[int]
) -> list[tuple[int, float]]:
    with vector_cursor() as cursor:
        # The materialized CTE keeps the planner off the HNSW index (whose ordering would bring
        # back the ef_search cut-off): it reads the version's rows through the btree on
        # (version_id, image_id) and sorts by the true distance.
        cursor.execute(
            "WITH scored AS MATERIALIZED ("
            f"  SELECT image_id, vector <-> %s AS distance FROM {TABLE}"
            f"  WHERE {version_filter(version_id)} AND NOT (image_id = ANY(%s))"
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
    with vector_cursor() as cursor:
        cursor.execute(
            f"SELECT image_id, vector FROM {TABLE} WHERE {version_filter(version_id_of(version))} "
            "AND image_id = ANY(%s)",
            [[int(i) for i in image_ids]],
        )
        return {int(i): _to_numpy(v) for i, v in cursor.fetchall()}


IMAGE_TABLE = Image._meta.db_table


def copy_embeddings(version: VersionRef, image_ids: Sequence[int], vectors: np.ndarray) -> int:
    """Stores vectors (N x EMBED_DIM float32) for image_ids in `version` by binary COPY.

    Rows that already exist (a redelivered batch, a second worker) are skipped, not doubled: the
    COPY goes to a temporary table, then INSERT ... ON CONFLICT DO NOTHING against the unique
    (version, image) constraint. So are images deleted since the batch was read: the INSERT takes
    their rows FOR KEY SHARE, which waits for a deletion in progress and then finds no row, so a
    vector never brings a deleted image back nor fails the batch on its foreign key. Returns the
    number of rows inserted.
    """
    array = np.ascontiguousarray(vectors, dtype=np.float32)
    if array.ndim != 2 or array.shape[1] != EMBED_DIM or len(array) != len(image_ids):
        raise ValueError(
            f"need {len(image_ids)} x {EMBED_DIM} vectors, got shape {tuple(array.shape)}"
        )
    if not len(image_ids):
        return 0
    version_id = version_id_of(version)
    with transaction.atomic(), vector_cursor() as cursor:
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
            f"SELECT {version_id}, batch.image_id, batch.vector FROM embedding_load batch "
            f"JOIN {IMAGE_TABLE} img ON img.id = batch.image_id FOR KEY SHARE OF img "
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
    ef_search: int | None = None,
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
    version_id = version_id_of(version)
    scope = version_filter(version_id)
    with transaction.atomic(), vector_cursor() as cursor:
        cursor.execute(
            f"SELECT count(*), max(image_id) FROM (SELECT image_id FROM {TABLE} "
            f"WHERE {scope} AND image_id > %s ORDER BY image_id LIMIT %s) AS w",
            [after_image_id, window],
        )
        scanned, last = cursor.fetchone()
        if not scanned:
            return [], None
        ef = settings.AUTORET_EF_SEARCH if ef_search is None else ef_search
        cursor.execute(f"SET LOCAL hnsw.ef_search = {max(int(ef), neighbours + 1)}")
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


def _ids_and_vectors(rows: Sequence[tuple[Any, Any]]) -> tuple[list[int], np.ndarray]:
    ids = [int(i) for i, _ in rows]
    vectors = np.array([_to_numpy(v) for _, v in rows], dtype=np.float32).reshape(
        len(rows), EMBED_DIM
    )
    return ids, vectors


def sample_for_map(
    version: VersionRef, n: int, spread: bool = True
) -> tuple[list[int], np.ndarray]:
    """Up to n (image_id, vector) of the version, the same sample on every call.

    `spread`: a hash order that draws from the whole collection (reads every row of the
    version); without it the first n by id, read from the btree alone (cheap at any size).
    """
    order = "hashint8(image_id), image_id" if spread else "image_id"
    with vector_cursor() as cursor:
        cursor.execute(
            f"SELECT image_id, vector FROM {TABLE} WHERE {version_filter(version_id_of(version))} "
            f"ORDER BY {order} LIMIT %s",
            [n],
        )
        return _ids_and_vectors(cursor.fetchall())


def vectors_after(version: VersionRef, after_image_id: int, n: int) -> tuple[list[int], np.ndarray]:
    """The next n (image_id, vector) of the version by image id after `after_image_id`: a keyset
    walk through the (version_id, image_id) btree, so reading a whole version for an export
    costs the same per batch at any depth and holds one batch at a time."""
    with vector_cursor() as cursor:
        cursor.execute(
            f"SELECT image_id, vector FROM {TABLE} WHERE {version_filter(version_id_of(version))} "
            "AND image_id > %s ORDER BY image_id LIMIT %s",
            [int(after_image_id), n],
        )
        return _ids_and_vectors(cursor.fetchall())


def neighbour_lists(
    version: VersionRef, image_ids: Sequence[int], k: int, ef_search: int | None = None
) -> list[tuple[int, int, float]]:
    """Each image's k nearest other images in `version`, as (image_id, neighbour_id, distance).

    One statement for the whole batch (a LATERAL top-k per image), so mining a few hundred
    images' neighbour lists costs one round trip instead of one per image.
    """
    if not image_ids or k <= 0:
        return []
    scope = version_filter(version_id_of(version))
    with transaction.atomic(), vector_cursor() as cursor:
        ef = settings.AUTORET_EF_SEARCH if ef_search is None else ef_search
        cursor.execute(f"SET LOCAL hnsw.ef_search = {min(max(int(ef), k + 1), 1000)}")
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
    scope = version_filter(version_id_of(version))
    with vector_cursor() as cursor:
        cursor.execute(
            f"SELECT p.a, p.b, x.vector <-> y.vector "
            f"FROM unnest(%s::bigint[], %s::bigint[]) AS p(a, b) "
            f"JOIN {TABLE} x ON x.{scope} AND x.image_id = p.a "
            f"JOIN {TABLE} y ON y.{scope} AND y.image_id = p.b",
            [[int(a) for a, _ in pairs], [int(b) for _, b in pairs]],
        )
        return {(int(a), int(b)): float(d) for a, b, d in cursor.fetchall()}
