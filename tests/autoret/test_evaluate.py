from __future__ import annotations

import math

import numpy as np
import pytest

from retrieval.autoret.evaluate import evaluate_retrieval, map_at_k, precision_at_k


def _relevant(q_label: np.ndarray, db_label: np.ndarray) -> bool:
    if np.ndim(q_label) == 0:
        return bool(q_label == db_label)
    return bool(np.logical_and(q_label, db_label).any())


def _slow_map_and_precision(q, q_labels, db, db_labels, k):
    """The spec's definition, one query and one rank at a time."""
    aps, precisions = [], []
    for query, label in zip(q, q_labels, strict=True):
        distances = [math.dist(query, item) for item in db]
        order = sorted(range(len(db)), key=lambda i: distances[i])[:k]
        hits, precision_sum = 0, 0.0
        for rank, index in enumerate(order, start=1):
            if _relevant(label, db_labels[index]):
                hits += 1
                precision_sum += hits / rank
        aps.append(precision_sum / hits if hits else 0.0)
        precisions.append(hits / k)
    return sum(aps) / len(aps), sum(precisions) / len(precisions)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("k", [1, 7, 40])
def test_map_and_precision_equal_slow_reference_for_class_labels(seed: int, k: int) -> None:
    rng = np.random.default_rng(seed)
    q, db = rng.normal(size=(9, 5)), rng.normal(size=(40, 5))
    q_labels, db_labels = rng.integers(0, 4, 9), rng.integers(0, 4, 40)
    expected_map, expected_p = _slow_map_and_precision(q, q_labels, db, db_labels, k)
    assert math.isclose(
        map_at_k(q, q_labels, db, db_labels, k=k, chunk=4), expected_map, rel_tol=1e-9
    )
    assert math.isclose(precision_at_k(q, q_labels, db, db_labels, k=k), expected_p, rel_tol=1e-9)


def test_multi_label_relevance_is_sharing_at_least_one_label() -> None:
    rng = np.random.default_rng(3)
    q, db = rng.normal(size=(8, 4)), rng.normal(size=(30, 4))
    q_labels = rng.random((8, 5)) < 0.3
    db_labels = rng.random((30, 5)) < 0.3
    expected_map, expected_p = _slow_map_and_precision(q, q_labels, db, db_labels, 10)
    result = evaluate_retrieval(
        q, q_labels.astype(np.int64), db, db_labels.astype(np.int64), k=10, precision_k=10
    )
    assert math.isclose(result["map"], expected_map, rel_tol=1e-9)
    assert math.isclose(result["precision"], expected_p, rel_tol=1e-9)


def test_a_query_without_relevant_hits_scores_zero_and_perfect_ranking_scores_one() -> None:
    db = np.array([[0.0], [1.0], [2.0], [10.0]])
    db_labels = np.array([0, 0, 1, 1])
    assert map_at_k(np.array([[0.1]]), np.array([0]), db, db_labels, k=2) == 1.0
    assert map_at_k(np.array([[0.1]]), np.array([1]), db, db_labels, k=2) == 0.0
    # hits at ranks 3 and 4: (1/3 + 2/4) / 2
    assert math.isclose(
        map_at_k(np.array([[0.1]]), np.array([1]), db, db_labels, k=4), (1 / 3 + 1 / 2) / 2
    )


def test_combined_evaluation_matches_the_single_metrics_and_chunking_does_not_matter() -> None:
    rng = np.random.default_rng(4)
    q, db = (
        rng.normal(size=(50, 6)).astype(np.float32),
        rng.normal(size=(300, 6)).astype(np.float32),
    )
    q_labels, db_labels = rng.integers(0, 3, 50), rng.integers(0, 3, 300)
    result = evaluate_retrieval(q, q_labels, db, db_labels, k=100, precision_k=20, chunk=7)
    assert result["map"] == pytest.approx(map_at_k(q, q_labels, db, db_labels, k=100, chunk=1000))
    assert result["precision"] == pytest.approx(precision_at_k(q, q_labels, db, db_labels, k=20))
    assert (result["queries"], result["database"]) == (50, 300)
