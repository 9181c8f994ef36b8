"""Retrieval quality: mAP@K and precision@K (docs/autoret-method.md section 5).

The database is ranked by Euclidean distance to each query. AP@K of a query is the mean, over the
relevant items inside the top K, of (relevant items so far / rank); a query with no relevant item
in its top K scores 0. mAP@K is the mean over queries (as in SPQ and MeCoQ). P@K is the share of
relevant items in the top K. Relevant means "shares at least one label": class ids (N) or multi-hot
label sets (N x L), so multi-label benchmarks (NUS-WIDE, FLICKR25K) work too.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch


def _tensor(values: np.ndarray | torch.Tensor, device: torch.device) -> torch.Tensor:
    return torch.as_tensor(values).to(device)


def ranked_relevance(
    q_emb: np.ndarray | torch.Tensor,
    q_labels: np.ndarray | torch.Tensor,
    db_emb: np.ndarray | torch.Tensor,
    db_labels: np.ndarray | torch.Tensor,
    k: int,
    chunk: int = 256,
    device: str | torch.device = "cpu",
) -> torch.Tensor:
    """Bool Q x min(k, N): whether each query's i-th nearest database item is relevant.

    q_emb: Q x D, db_emb: N x D; labels: LongTensor Q / N or multi-hot Q x L / N x L. Queries are
    processed `chunk` at a time, so only chunk x N distances exist at once (10k x 60k fits).
    """
    dev = torch.device(device)
    db = _tensor(db_emb, dev).float()
    db_lab = _tensor(db_labels, dev)
    q_lab_all = _tensor(q_labels, dev)
    queries = _tensor(q_emb, dev).float()
    if queries.shape[1] != db.shape[1]:
        raise ValueError(f"queries are {queries.shape[1]}-d but the database is {db.shape[1]}-d")
    multi_label = db_lab.dim() == 2
    db_sq = db.pow(2).sum(1)
    k = min(k, db.shape[0])
    rows = []
    for begin in range(0, queries.shape[0], chunk):
        q = queries[begin : begin + chunk]
        # Squared distances via |q|^2 - 2 q.d + |d|^2: a matrix product instead of Q x N x D.
        dist = q.pow(2).sum(1, keepdim=True) - 2.0 * q @ db.T + db_sq
        _, top = dist.topk(k, dim=1, largest=False, sorted=True)
        q_lab = q_lab_all[begin : begin + chunk]
        if multi_label:
            hits = (q_lab.float() @ db_lab.float().T > 0).gather(1, top)
        else:
            hits = db_lab[top] == q_lab.unsqueeze(1)
        rows.append(hits.cpu())
    return torch.cat(rows)


def _ap_and_precision(hits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per query AP over the ranked hits (Q x K bool) and precision at K."""
    hits_f = hits.double()
    ranks = torch.arange(1, hits.shape[1] + 1, dtype=torch.float64)
    precision_at_rank = hits_f.cumsum(1) / ranks
    n_relevant = hits_f.sum(1)
    ap = (precision_at_rank * hits_f).sum(1) / n_relevant.clamp(min=1.0)
    return ap, n_relevant / hits.shape[1]


def map_at_k(
    q_emb: np.ndarray | torch.Tensor,
    q_labels: np.ndarray | torch.Tensor,
    db_emb: np.ndarray | torch.Tensor,
    db_labels: np.ndarray | torch.Tensor,
    k: int = 1000,
    chunk: int = 256,
    device: str | torch.device = "cpu",
) -> float:
    """Mean average precision over the top k (see the module docstring)."""
    hits = ranked_relevance(q_emb, q_labels, db_emb, db_labels, k, chunk, device)
    return float(_ap_and_precision(hits)[0].mean())


def precision_at_k(
    q_emb: np.ndarray | torch.Tensor,
    q_labels: np.ndarray | torch.Tensor,
    db_emb: np.ndarray | torch.Tensor,
    db_labels: np.ndarray | torch.Tensor,
    k: int = 100,
    chunk: int = 256,
    device: str | torch.device = "cpu",
) -> float:
    """Mean share of relevant items among each query's k nearest."""
    hits = ranked_relevance(q_emb, q_labels, db_emb, db_labels, k, chunk, device)
    return float(_ap_and_precision(hits)[1].mean())


def evaluate_retrieval(
    q_emb: np.ndarray | torch.Tensor,
    q_labels: np.ndarray | torch.Tensor,
    db_emb: np.ndarray | torch.Tensor,
    db_labels: np.ndarray | torch.Tensor,
    k: int = 1000,
    precision_k: int = 100,
    chunk: int = 256,
    device: str | torch.device = "cpu",
) -> dict[str, Any]:
    """mAP@k and P@precision_k from one ranking pass: {"map", "precision", "k", ...}."""
    hits = ranked_relevance(q_emb, q_labels, db_emb, db_labels, max(k, precision_k), chunk, device)
    ap, _ = _ap_and_precision(hits[:, :k])
    _, precision = _ap_and_precision(hits[:, :precision_k])
    return {
        "map": float(ap.mean()),
        "precision": float(precision.mean()),
        "k": k,
        "precision_k": precision_k,
        "queries": int(hits.shape[0]),
        "database": int(torch.as_tensor(db_labels).shape[0]),
    }
