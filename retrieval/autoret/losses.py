"""Training losses: the AutoEmbedder pairwise loss and an NT-Xent loss for the SimCLR-style peer."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def autoembedder_loss(
    e1: torch.Tensor, e2: torch.Tensor, target_is_cannot: torch.Tensor, alpha: float
) -> torch.Tensor:
    """AutoEmbedder pairwise loss (Ohi et al. 2020; autoret-method.md section 1).

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
