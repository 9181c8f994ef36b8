"""halfvec (float16 vectors, pgvector 0.7+) with an HNSW index: what the feature store will use."""

from __future__ import annotations

import numpy as np
import pytest
from django.db import connection

pytestmark = pytest.mark.django_db

DIM = 1280  # EfficientNet-Lite0's pooled feature


def test_halfvec_column_with_hnsw_index_answers_nearest_neighbour_through_the_index() -> None:
    rng = np.random.default_rng(0)
    rows = rng.normal(size=(300, DIM)).astype(np.float16)
    literals = ["[" + ",".join(f"{x:.4f}" for x in row) + "]" for row in rows]
    with connection.cursor() as cursor:
        cursor.execute(f"CREATE TEMPORARY TABLE features (id int PRIMARY KEY, v halfvec({DIM}))")
        cursor.executemany(
            "INSERT INTO features VALUES (%s, %s::halfvec)", list(enumerate(literals))
        )
        cursor.execute("CREATE INDEX ON features USING hnsw (v halfvec_l2_ops)")
        cursor.execute("SET LOCAL enable_seqscan = off")
        query = "SELECT id FROM features ORDER BY v <-> %s::halfvec LIMIT 5"
        cursor.execute("EXPLAIN " + query, [literals[42]])
        plan = "\n".join(line for (line,) in cursor.fetchall())
        cursor.execute(query, [literals[42]])
        found = [row_id for (row_id,) in cursor.fetchall()]
    assert "features_v_idx" in plan, plan
    assert found[0] == 42 and len(found) == 5
