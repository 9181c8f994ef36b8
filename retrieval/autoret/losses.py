"""Training losses: the AutoEmbedder pairwise loss and an NT-Xent loss for the SimCLR-style peer."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def autoembedder_loss(
    e1: torch.Tensor, e2: torch.Tensor, target_is_cannot: torch.Tensor, alpha: float
) -> torch.Tensor:
    """AutoEmbedder pairwise loss (Ohi et al. 2020; docs/autoret-method.md section 1).

    e1, e2: B x D embeddings of the two sides of each pair (same network, shared weights).
    target_is_cannot: bool B, True for cannot-link pairs.
    d = ||e1 - e2||_2, p = clamp(d, 0, alpha), target 0 (can-link) or alpha (cannot-link);
    returns the scalar mean of (p - t)^2. A cannot-link pair already further apart than alpha costs
    nothing and gets no gradient, which is what bounds the embedding's scale.
    """
    # float32: bf16 autocast would round small distances of can-link pairs to zero.
    d = torch.linalg.vector_norm(e1.float() - e2.float(), dim=1)
    p = d.clamp(0.0, alpha)
    t = target_is_cannot.to(p.dtype) * alpha
    return F.mse_loss(p, t)


def nt_xent_loss(z1: torch.Tensor, z2: torch.Tensor, temperature: float = 0.2) -> torch.Tensor:
    """NT-Xent (SimCLR, Chen et al. 2020, eq. 1) over B positive pairs: z1, z2 are B x D.

    Each of the 2B views must pick its partner among the other 2B - 1 views by cosine similarity
    divided by the temperature; returns the mean cross-entropy.
    """
    z = F.normalize(torch.cat([z1, z2]).float(), dim=1)
    n = z1.shape[0]
    logits = z @ z.T / temperature
    logits.fill_diagonal_(float("-inf"))
    partner = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(z.device)
    return F.cross_entropy(logits, partner)


def batch_all_autoembedder_loss(
    e: torch.Tensor,
    same: torch.Tensor,
    alpha: float,
    can_weight: float = 0.5,
    ignore: torch.Tensor | None = None,
) -> torch.Tensor:
    """The AutoEmbedder loss over every pair of a batch (ours; docs/autoret-method.md sections 1-2).

    e: N x D embeddings (N = 2B: two augmented views of B images). same: bool N x N, symmetric,
    True where a pair is can-link (views of one image, or of images known to match); every other
    off-diagonal pair is cannot-link. Each unordered pair i < j gets the clamped-distance MSE of
    `autoembedder_loss`; the can-link and cannot-link means are weighted can_weight and
    1 - can_weight, so the spec's 50/50 balance holds although cannot-link pairs outnumber
    can-link ones about B to 1. A half with no pairs drops out and the other gets full weight.
    ignore (ours): bool N x N, pairs that are neither (unknown, e.g. likely matches that no
    evidence links), left out of the cannot-link half. Returns a scalar.
    """
    e = e.float()  # bf16 would round small can-link distances to zero (as in autoembedder_loss)
    n = e.shape[0]
    upper = torch.triu(torch.ones(n, n, dtype=torch.bool, device=e.device), diagonal=1)
    can = same & upper
    cannot = ~same & upper
    if ignore is not None:
        cannot &= ~ignore
    norms = e.pow(2).sum(1)
    # Squared distances from one matrix product: N x N instead of an N x N x D difference tensor.
    sq = (norms[:, None] + norms[None, :] - 2.0 * e @ e.T).clamp(min=0.0)
    # Can-link target 0: (min(d, alpha) - 0)^2 = min(d^2, alpha^2), no square root whose gradient
    # blows up as two views meet.
    can_terms = sq[can].clamp(max=alpha * alpha)
    # The clamp keeps the square root's gradient finite; pairs that close get no push from it.
    d = sq[cannot].clamp(min=1e-12).sqrt()
    cannot_terms = (d.clamp(max=alpha) - alpha).pow(2)
    halves = [(can_terms, can_weight), (cannot_terms, 1.0 - can_weight)]
    present = [(terms, w) for terms, w in halves if terms.numel() > 0]
    total_weight = sum(w for _, w in present)
    loss = e.new_zeros(())
    for terms, w in present:
        loss = loss + (w / total_weight) * terms.mean()
    return loss
