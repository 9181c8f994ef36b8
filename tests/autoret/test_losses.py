from __future__ import annotations

import math

import torch

from retrieval.autoret.losses import autoembedder_loss, batch_all_autoembedder_loss, nt_xent_loss


def _slow_autoembedder_loss(
    e1: torch.Tensor, e2: torch.Tensor, cannot: torch.Tensor, alpha: float
) -> float:
    total = 0.0
    for a, b, is_cannot in zip(e1.tolist(), e2.tolist(), cannot.tolist(), strict=True):
        d = math.sqrt(sum((x - y) ** 2 for x, y in zip(a, b, strict=True)))
        p = min(max(d, 0.0), alpha)
        t = alpha if is_cannot else 0.0
        total += (p - t) ** 2
    return total / len(e1)


def test_autoembedder_loss_equals_slow_reference() -> None:
    g = torch.Generator().manual_seed(1)
    for alpha in (1.0, 10.0, 100.0):
        e1 = torch.randn(32, 6, generator=g) * alpha / 3
        e2 = torch.randn(32, 6, generator=g) * alpha / 3
        cannot = torch.rand(32, generator=g) < 0.5
        expected = _slow_autoembedder_loss(e1, e2, cannot, alpha)
        assert math.isclose(autoembedder_loss(e1, e2, cannot, alpha).item(), expected, rel_tol=1e-5)


def test_cannot_link_pairs_pushed_past_alpha_cost_nothing_and_get_no_gradient() -> None:
    e1 = torch.zeros(4, 3, requires_grad=True)
    e2 = torch.tensor([[20.0, 0, 0], [0, 15.0, 0], [0, 0, 11.0], [12.0, 0, 0]], requires_grad=True)
    loss = autoembedder_loss(e1, e2, torch.ones(4, dtype=torch.bool), alpha=10.0)
    loss.backward()
    assert loss.item() == 0.0
    assert e1.grad is not None and torch.count_nonzero(e1.grad) == 0


def test_cannot_link_pairs_inside_alpha_are_pushed_apart_and_can_link_pairs_pulled_together() -> (
    None
):
    e1 = torch.zeros(2, 2)
    e2 = torch.tensor([[1.0, 0.0], [1.0, 0.0]], requires_grad=True)
    autoembedder_loss(e1, e2, torch.tensor([True, False]), alpha=10.0).backward()
    assert e2.grad is not None
    assert e2.grad[0, 0] < 0  # gradient descent increases the cannot-link distance
    assert e2.grad[1, 0] > 0  # and decreases the can-link distance


def test_identical_embeddings_give_finite_loss_and_gradient() -> None:
    e = torch.randn(8, 4, requires_grad=True)
    loss = autoembedder_loss(e, e.clone(), torch.zeros(8, dtype=torch.bool), alpha=10.0)
    loss.backward()
    assert loss.item() == 0.0
    assert e.grad is not None and torch.isfinite(e.grad).all()


def test_nt_xent_equals_slow_reference() -> None:
    g = torch.Generator().manual_seed(2)
    z1, z2 = torch.randn(5, 7, generator=g), torch.randn(5, 7, generator=g)
    tau = 0.2
    views = [v / v.norm() for v in torch.cat([z1, z2])]
    n = len(views)
    total = 0.0
    for i in range(n):
        partner = (i + 5) % n
        sims = [math.exp(float(views[i] @ views[j]) / tau) for j in range(n) if j != i]
        total += -math.log(math.exp(float(views[i] @ views[partner]) / tau) / sum(sims))
    assert math.isclose(nt_xent_loss(z1, z2, tau).item(), total / n, rel_tol=1e-5)


def _slow_batch_all_loss(
    e: torch.Tensor, same: torch.Tensor, alpha: float, ignore: torch.Tensor | None = None
) -> float:
    can, cannot = [], []
    rows = e.tolist()
    for i in range(len(rows)):
        for j in range(i + 1, len(rows)):
            d = math.sqrt(sum((x - y) ** 2 for x, y in zip(rows[i], rows[j], strict=True)))
            p = min(d, alpha)
            if same[i, j]:
                can.append(p**2)
            elif ignore is None or not ignore[i, j]:
                cannot.append((p - alpha) ** 2)
    return 0.5 * sum(can) / len(can) + 0.5 * sum(cannot) / len(cannot)


def test_batch_all_loss_equals_slow_reference_with_halves_weighted_equally() -> None:
    g = torch.Generator().manual_seed(3)
    for alpha in (1.0, 10.0, 100.0):
        e = torch.randn(12, 5, generator=g) * alpha / 3
        index = torch.tensor([0, 1, 2, 3, 4, 4])  # a repeated image is can-link with itself
        index = torch.cat([index, index])
        component = torch.tensor([0, 0, -1, 1, -1, -1] * 2)  # images 0 and 1 are known to match
        same = (index[:, None] == index[None]) | (
            (component[:, None] == component[None]) & (component[:, None] >= 0)
        )
        expected = _slow_batch_all_loss(e, same, alpha)
        actual = batch_all_autoembedder_loss(e, same, alpha).item()
        assert math.isclose(actual, expected, rel_tol=1e-4), (alpha, actual, expected)


def test_batch_all_loss_leaves_ignored_pairs_out_of_the_cannot_link_half() -> None:
    g = torch.Generator().manual_seed(4)
    e = torch.randn(10, 3, generator=g) * 3
    index = torch.arange(5).repeat(2)
    same = index[:, None] == index[None]
    ignore = torch.zeros(10, 10, dtype=torch.bool)
    ignore[0, 1] = ignore[1, 0] = ignore[2, 8] = ignore[8, 2] = True
    ignore[0, 5] = ignore[5, 0] = True  # a can-link pair stays can-link
    expected = _slow_batch_all_loss(e, same, 10.0, ignore)
    actual = batch_all_autoembedder_loss(e, same, 10.0, ignore=ignore).item()
    assert math.isclose(actual, expected, rel_tol=1e-4)
    assert not math.isclose(actual, batch_all_autoembedder_loss(e, same, 10.0).item())


def test_batch_all_loss_gives_finite_gradients_to_every_view_even_when_views_coincide() -> None:
    e = torch.randn(8, 4)
    e[4:] = e[:4]  # two identical views of each image: zero can-link distances
    e.requires_grad_(True)
    same = torch.eye(4, dtype=torch.bool).repeat(2, 2)
    loss = batch_all_autoembedder_loss(e, same, alpha=10.0)
    loss.backward()
    assert torch.isfinite(loss) and e.grad is not None
    assert torch.isfinite(e.grad).all() and (e.grad.abs().sum(1) > 0).all()


def test_batch_all_loss_pulls_views_together_and_pushes_other_images_apart() -> None:
    e = torch.tensor([[0.0, 0.0], [3.0, 0.0], [1.0, 0.0], [3.0, 1.0]], requires_grad=True)
    same = torch.eye(2, dtype=torch.bool).repeat(2, 2)  # views 0/2 and 1/3
    batch_all_autoembedder_loss(e, same, alpha=10.0).backward()
    assert e.grad is not None
    # Descent moves view 2 left (towards its partner view 0, away from image 1's views), view 1
    # right (away from image 0's views) and up (towards its partner view 3).
    assert e.grad[2, 0] > 0 and e.grad[1, 0] < 0 and e.grad[1, 1] < 0
    # all cannot-link pairs far beyond alpha: only the can-link half remains
    far = torch.tensor([[0.0, 0.0], [50.0, 0.0], [0.0, 1.0], [50.0, 1.0]])
    assert batch_all_autoembedder_loss(far, same, alpha=10.0).item() == 0.5 * 1.0
