"""The workspace: closed-form gradients, the exact simplex QP, competition, coordination."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.optimize import minimize

from emotion.models.joint.workspace import (
    Workspace,
    compete,
    gradient_gram,
    level_gradients,
    pseudo_label_losses,
    qp_objective,
    solve_simplex_qp,
    with_bias,
)

pytestmark = pytest.mark.unit


def _hard_target(b: int, k: int, multi_label: bool, gen: torch.Generator) -> torch.Tensor:
    if multi_label:
        return (torch.rand(b, k, generator=gen, dtype=torch.float64) > 0.6).double()
    return torch.nn.functional.one_hot(torch.randint(0, k, (b,), generator=gen), k).double()


def _problem(multi_label: bool, b: int = 6, q: int = 3, d: int = 5, k: int = 7, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    hidden = torch.rand(b, q, d, generator=gen, dtype=torch.float64) * 2
    theta = torch.randn(q, k, d + 1, generator=gen, dtype=torch.float64)
    logits = torch.einsum("mkd,bmd->bmk", theta, with_bias(hidden))
    return hidden, theta, logits, _hard_target(b, k, multi_label, gen)


@pytest.mark.parametrize("multi_label", [True, False], ids=["bce", "ce"])
def test_closed_form_gradients_equal_autograd(multi_label):
    hidden, theta, _, target = _problem(multi_label)
    b = hidden.shape[0]
    # One leaf copy of θ per sample, so each f[b, m] has its own gradient.
    theta_per_sample = theta.unsqueeze(0).expand(b, -1, -1, -1).clone().requires_grad_(True)
    logits = torch.einsum("bmkd,bmd->bmk", theta_per_sample, with_bias(hidden))
    pseudo_label_losses(logits, target, multi_label).sum().backward()
    closed = level_gradients(hidden, logits.detach(), target, multi_label)
    torch.testing.assert_close(closed, theta_per_sample.grad, atol=1e-8, rtol=0)


@pytest.mark.parametrize("multi_label", [True, False], ids=["bce", "ce"])
def test_gram_equals_explicit_g_gt(multi_label):
    hidden, _, logits, target = _problem(multi_label)
    g = level_gradients(hidden, logits, target, multi_label).flatten(2)
    torch.testing.assert_close(gradient_gram(hidden, logits, target, multi_label), g @ g.transpose(1, 2),
                               atol=1e-12, rtol=1e-12)


# -- the QP ----------------------------------------------------------------------------
def _random_instances(q: int, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
    """n QP instances P = GGᵀ, f: generic, singular and degenerate kinds mixed.

    Returns P [n, q, q], f [n, q] and a mask of instances whose P is well conditioned
    (unique minimiser)."""
    rng = np.random.default_rng(seed)
    dim = 12
    grams, losses, unique = [], [], []
    kinds = ["generic", "identical", "zero", "equal_f", "two_identical", "rank_one", "structured", "tiny_scale"]
    for i in range(n):
        kind = kinds[i % len(kinds)]
        scale = 10 ** rng.uniform(-2, 1)
        g = rng.normal(size=(q, dim)) * scale
        f = rng.uniform(0, 3, size=q)
        if kind == "identical":
            g[:] = g[0]
        elif kind == "zero":
            g[:] = 0.0
            if i % 2:
                f[:] = f[0]  # zero gradients and equal losses: every λ is optimal
        elif kind == "equal_f":
            f[:] = f[0]
        elif kind == "two_identical":
            g[1] = g[0]
        elif kind == "rank_one":
            g = np.outer(rng.normal(size=q), rng.normal(size=dim)) * scale
        elif kind == "structured":  # the workspace's own kind: c (p - y) h̃ᵀ
            k, d = 4, 3
            y = (rng.uniform(size=k) > 0.5).astype(float)
            p = rng.uniform(0.01, 0.99, size=(q, k))
            h = np.concatenate([rng.uniform(0, 2, size=(q, d)), np.ones((q, 1))], 1)
            g = np.stack([np.outer(p[m] - y, h[m]).ravel() for m in range(q)]) / k
        elif kind == "tiny_scale":
            g *= 1e-4
        gram = g @ g.T
        grams.append(gram)
        losses.append(f)
        eig = np.linalg.eigvalsh(gram)
        unique.append(kind == "generic" and eig.min() > 1e-2 * max(eig.max(), 1e-12))
    return torch.tensor(np.array(grams)), torch.tensor(np.array(losses)), np.array(unique)


def _slsqp(gram: np.ndarray, f: np.ndarray) -> tuple[np.ndarray, float]:
    q = len(f)

    def fun(lam):
        return 0.5 * lam @ gram @ lam - f @ lam

    best = None
    starts = [np.full(q, 1.0 / q)] + [np.eye(q)[i] * 0.9 + 0.1 / q for i in range(q)]
    for x0 in starts:
        res = minimize(fun, x0, jac=lambda lam: gram @ lam - f, method="SLSQP", bounds=[(0.0, 1.0)] * q,
                       constraints=[{"type": "eq", "fun": lambda lam: lam.sum() - 1.0, "jac": lambda lam: np.ones(q)}],
                       options={"ftol": 1e-15, "maxiter": 500})
        lam = np.clip(res.x, 0, None)
        lam = lam / lam.sum()
        if best is None or fun(lam) < best[1]:
            best = (lam, fun(lam))
    return best


@pytest.mark.parametrize("q", [2, 3])
def test_simplex_qp_matches_slsqp_on_1000_instances(q):
    grams, losses, unique = _random_instances(q, 1000, seed=q)
    lam = solve_simplex_qp(grams, losses)
    assert lam.shape == (1000, q)
    assert (lam >= 0).all() and torch.allclose(lam.sum(-1), torch.ones(1000, dtype=lam.dtype), atol=1e-12)
    ours = qp_objective(lam, grams, losses).numpy()
    for i in range(1000):
        ref_lam, ref_obj = _slsqp(grams[i].numpy(), losses[i].numpy())
        # Never worse than the reference, and no better than round-off allows.
        assert abs(ours[i] - ref_obj) <= 1e-6 * max(1.0, abs(ref_obj)), (i, ours[i], ref_obj)
        if unique[i]:
            np.testing.assert_allclose(lam[i].numpy(), ref_lam, atol=1e-5, err_msg=f"instance {i}")


@pytest.mark.parametrize("q", [2, 3])
def test_simplex_qp_satisfies_kkt(q):
    """Optimality certificate for a convex QP on the simplex: the gradient Pλ - f is
    equal (to ν) on the support of λ and ≥ ν off it."""
    grams, losses, _ = _random_instances(q, 1000, seed=10 + q)
    lam = solve_simplex_qp(grams, losses)
    grad = torch.einsum("bij,bj->bi", grams, lam) - losses
    scale = 1.0 + grams.abs().amax((1, 2)) + losses.abs().amax(1)
    support = lam > 1e-9
    on_support_max = torch.where(support, grad, torch.full_like(grad, -np.inf)).amax(1)
    overall_min = grad.amin(1)
    assert ((on_support_max - overall_min) <= 1e-9 * scale).all()


def test_simplex_qp_degenerate_cases_exactly():
    # Zero gradients: the QP is min -λᵀf, so all mass on the largest loss.
    f = torch.tensor([[0.2, 0.9, 0.5]], dtype=torch.float64)
    lam = solve_simplex_qp(torch.zeros(1, 3, 3, dtype=torch.float64), f)
    torch.testing.assert_close(lam, torch.tensor([[0.0, 1.0, 0.0]], dtype=torch.float64))
    # Identical gradients g: objective ½||g||² - λᵀf, again the largest loss wins.
    g = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    gram = torch.outer(torch.ones(3, dtype=torch.float64), torch.ones(3, dtype=torch.float64)) * (g @ g)
    lam = solve_simplex_qp(gram[None], torch.tensor([[0.3, 0.1, 0.2]], dtype=torch.float64))
    torch.testing.assert_close(lam, torch.tensor([[1.0, 0.0, 0.0]], dtype=torch.float64))
    # Orthonormal gradients, equal losses: the min-norm point is the barycentre.
    lam = solve_simplex_qp(torch.eye(3, dtype=torch.float64)[None], torch.ones(1, 3, dtype=torch.float64))
    torch.testing.assert_close(lam, torch.full((1, 3), 1 / 3, dtype=torch.float64))
    # q = 1 is trivial; q = 4 is refused with a clear message.
    assert solve_simplex_qp(torch.ones(2, 1, 1), torch.ones(2, 1)).eq(1).all()
    with pytest.raises(ValueError, match="q <= 3"):
        solve_simplex_qp(torch.eye(4)[None], torch.ones(1, 4))


# -- competition -----------------------------------------------------------------------
def test_competition_drops_levels_by_decreasing_loss():
    grams, losses, _ = _random_instances(3, 200, seed=7)
    out = compete(losses, grams)
    expected = torch.argsort(losses, dim=1, descending=True, stable=True)[:, :2]
    assert torch.equal(out["dropped_levels"], expected)
    lambdas = out["lambdas"]
    assert lambdas.shape == (200, 2, 3)
    torch.testing.assert_close(lambdas.sum(-1), torch.ones(200, 2, dtype=lambdas.dtype))
    # Step 2 gives no weight to the level dropped in step 1; α sums the steps.
    first = out["dropped_levels"][:, 0]
    assert lambdas[torch.arange(200), 1, first].eq(0).all()
    torch.testing.assert_close(out["alpha"], lambdas.sum(1))
    # Step 2 solves the 2-level QP on the survivors exactly.
    keep = torch.ones(200, 3, dtype=torch.bool).scatter(1, first[:, None], False)
    idx = torch.arange(3).expand(200, 3)[keep].view(200, 2)
    rows = torch.arange(200)[:, None, None]
    sub = solve_simplex_qp(grams[rows, idx[:, :, None], idx[:, None, :]], losses.gather(1, idx))
    torch.testing.assert_close(lambdas[:, 1].gather(1, idx), sub)


# -- coordination ----------------------------------------------------------------------
@pytest.mark.parametrize("multi_label", [True, False], ids=["bce", "ce"])
def test_workspace_direction_and_refined_logits(multi_label):
    hidden, theta, logits, target = _problem(multi_label, b=16, seed=3)
    ws = Workspace(eta=0.05, multi_label=multi_label)
    out = ws(hidden, logits, theta[..., :-1], theta[..., -1], target, return_delta=True)
    g = level_gradients(hidden, logits, target, multi_label)  # [B, q, k, d+1]
    delta = -torch.einsum("bm,bmkd->bkd", out["alpha"], g)
    torch.testing.assert_close(out["delta"], delta, atol=1e-12, rtol=1e-10)
    refined = torch.einsum("bmkd,bmd->bmk", theta[None] + 0.05 * delta[:, None], with_bias(hidden))
    torch.testing.assert_close(out["refined_logits"], refined, atol=1e-12, rtol=1e-10)
    torch.testing.assert_close(out["grad_distance"], delta.flatten(1).norm(dim=1), atol=1e-10, rtol=1e-8)


@pytest.mark.parametrize("multi_label", [True, False], ids=["bce", "ce"])
def test_refinement_lowers_every_levels_pseudo_label_loss(multi_label):
    hidden, theta, logits, target = _problem(multi_label, b=64, seed=5)
    out = Workspace(eta=1e-3, multi_label=multi_label)(hidden, logits, theta[..., :-1], theta[..., -1], target)
    assert (out["refined_losses"] < out["level_losses"]).all()


def test_workspace_is_batch_independent():
    hidden, theta, logits, target = _problem(True, b=8, seed=9)
    ws = Workspace(eta=0.1, multi_label=True)
    whole = ws(hidden, logits, theta[..., :-1], theta[..., -1], target)
    for i in range(8):
        one = ws(hidden[i : i + 1], logits[i : i + 1], theta[..., :-1], theta[..., -1], target[i : i + 1])
        for key in ("refined_logits", "lambdas", "dropped_levels", "grad_distance"):
            torch.testing.assert_close(one[key][0], whole[key][i], atol=1e-12, rtol=1e-12)
