"""The workspace: competition and coordination of the level heads (steps 5-6 of the
pipeline in ``cocoer.py``).

Everything here is batched over the samples and closed-form: no per-sample loop, no
autograd inside the step, no external QP solver.

Notation, per sample: q competing levels, head m ends in a linear layer θ_m = [W_m | b_m]
(k x (d+1); **the bias is part of θ**, so the update moves it too) applied to the hidden
vector h_m (d) of that head: s_m = W_m h_m + b_m = θ_m h̃_m with h̃_m = [h_m; 1].
y_t is the pseudo label (k).

* Per-level loss f_m = L(F(s_m), y_t):
  - multi-label: F = sigmoid, L = binary cross-entropy **averaged over the k classes**;
  - single-label: F = softmax, L = cross-entropy -Σ_j y_j log p_j (y sums to 1).
* Its gradient with respect to θ_m is ∂f_m/∂θ_m = c (p_m - y_t) h̃_mᵀ with c = 1/k for
  BCE-mean and c = 1 for CE. Row m of G is this k x (d+1) matrix flattened.
* GGᵀ never needs G: (GGᵀ)_ij = c² ((p_i - y)·(p_j - y)) (h̃_i·h̃_j).
* Competition: solve min_λ ½ λᵀGGᵀλ - λᵀf over the simplex (exact, below), take the
  direction -Gᵀλ, drop the level with the largest f, and repeat with the levels left until
  one remains (q - 1 QPs; the gradients are those at the original θ, as in the public
  code). The accumulated direction is δ_l = -Σ_steps Gᵀλ = -c Σ_m α_m (p_m - y) h̃_mᵀ
  with α_m = Σ_steps λ_m (a level's λ is 0 once dropped).
* Coordination: θ̃_m = θ_m + η δ_l for every level, per sample; the **refined features**
  are the refined logits ẑ_m = θ̃_m h̃_m = s_m + η δ_l h̃_m (k values per level). The module
  parameters are never touched, and θ̃ is not even materialised (see ``Workspace``).

Why δ_l helps every level: with hard pseudo labels (0/1), p_m - y has the sign pattern of
-y for every level (sigmoid/softmax lie in (0, 1)), so (p_i - y)·(p_j - y) > 0; the heads'
hidden vectors are non-negative (ReLU, see ``LevelHead``) so h̃_i·h̃_j ≥ 1. Every entry of
GGᵀ is then positive, and the first-order change of f_m, -η (GGᵀα)_m, is negative for
every level: one shared step moves all levels toward the pseudo label.

The exact QP (q ≤ 3): the problem is convex (GGᵀ is PSD) over a compact polytope, so
its minimum is attained on some face. Candidates: every vertex; on every edge the
minimiser of a 1-D quadratic, clamped to the edge; for q = 3 the interior stationary
point of the 2-D quadratic on the plane Σλ = 1 (solved by Cramer's rule) when it is
feasible. Each candidate is feasible and its objective is evaluated exactly; the best one
is the answer. A singular GGᵀ (identical or zero gradients) is safe: a singular face
quadratic has a flat direction, so some boundary point is as good as any interior one,
and boundary candidates need no solve.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


# -- losses and gradients --------------------------------------------------------------
def gradient_scale(num_classes: int, multi_label: bool) -> float:
    """c in ∂f/∂s = c (p - y): 1/k for BCE averaged over classes, 1 for cross-entropy."""
    return 1.0 / num_classes if multi_label else 1.0


def level_probabilities(logits: torch.Tensor, multi_label: bool) -> torch.Tensor:
    return torch.sigmoid(logits) if multi_label else torch.softmax(logits, dim=-1)


def pseudo_label_losses(logits: torch.Tensor, target: torch.Tensor, multi_label: bool) -> torch.Tensor:
    """f_m per sample and level: logits [B, q, k], target [B, k] -> [B, q]."""
    target = target.unsqueeze(1).expand_as(logits).to(logits.dtype)
    if multi_label:
        return F.binary_cross_entropy_with_logits(logits, target, reduction="none").mean(-1)
    return -(target * torch.log_softmax(logits, dim=-1)).sum(-1)


def with_bias(hidden: torch.Tensor) -> torch.Tensor:
    """h -> h̃ = [h; 1] so that θ = [W | b] acts as s = θ h̃."""
    return torch.cat([hidden, hidden.new_ones(*hidden.shape[:-1], 1)], dim=-1)


def loss_residuals(logits: torch.Tensor, target: torch.Tensor, multi_label: bool) -> torch.Tensor:
    """∂f_m/∂s_m = c (p_m - y): [B, q, k]."""
    c = gradient_scale(logits.shape[-1], multi_label)
    return c * (level_probabilities(logits, multi_label) - target.unsqueeze(1).to(logits.dtype))


def level_gradients(hidden: torch.Tensor, logits: torch.Tensor, target: torch.Tensor,
                    multi_label: bool) -> torch.Tensor:
    """∂f_m/∂θ_m for every sample and level: [B, q, k, d+1] (last column: the bias).

    Materialises G; the workspace itself only needs ``gradient_gram``.
    """
    residual = loss_residuals(logits, target, multi_label)
    return residual.unsqueeze(-1) * with_bias(hidden).unsqueeze(-2)


def gradient_gram(hidden: torch.Tensor, logits: torch.Tensor, target: torch.Tensor,
                  multi_label: bool) -> torch.Tensor:
    """GGᵀ [B, q, q] from outer-product structure, without forming G."""
    residual = loss_residuals(logits, target, multi_label)
    h = with_bias(hidden)
    return (residual @ residual.transpose(1, 2)) * (h @ h.transpose(1, 2))


# -- the simplex QP --------------------------------------------------------------------
def qp_objective(lam: torch.Tensor, gram: torch.Tensor, losses: torch.Tensor) -> torch.Tensor:
    """½ λᵀ P λ - fᵀ λ for λ [..., q], P [..., q, q], f [..., q] -> [...]."""
    return 0.5 * torch.einsum("...i,...ij,...j->...", lam, gram, lam) - (losses * lam).sum(-1)


def _edge_minimiser(gram: torch.Tensor, losses: torch.Tensor, i: int, j: int) -> torch.Tensor:
    """Minimiser over the edge λ = t e_i + (1 - t) e_j, t in [0, 1]: λ [B, q]."""
    curvature = gram[:, i, i] - 2 * gram[:, i, j] + gram[:, j, j]
    slope = gram[:, i, j] - gram[:, j, j] - losses[:, i] + losses[:, j]  # dφ/dt at t = 0
    t_quadratic = (-slope / curvature.clamp_min(torch.finfo(gram.dtype).tiny)).clamp(0.0, 1.0)
    t_linear = (slope < 0).to(gram.dtype)  # flat edge: the lower end
    t = torch.where(curvature > 0, t_quadratic, t_linear)
    lam = torch.zeros_like(losses)
    lam[:, i] = t
    lam[:, j] = 1.0 - t
    return lam


def _interior_minimiser(gram: torch.Tensor, losses: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """q = 3: stationary point on the plane Σλ = 1 with λ = (t1, t2, 1 - t1 - t2).

    Returns λ [B, 3] (clipped and renormalised) and a mask of samples where it is a valid
    candidate (non-singular face quadratic and the point inside the simplex).
    """
    p, f = gram, losses
    a11 = p[:, 0, 0] - 2 * p[:, 0, 2] + p[:, 2, 2]
    a22 = p[:, 1, 1] - 2 * p[:, 1, 2] + p[:, 2, 2]
    a12 = p[:, 0, 1] - p[:, 0, 2] - p[:, 1, 2] + p[:, 2, 2]
    b1 = p[:, 0, 2] - p[:, 2, 2] - f[:, 0] + f[:, 2]
    b2 = p[:, 1, 2] - p[:, 2, 2] - f[:, 1] + f[:, 2]
    det = a11 * a22 - a12 * a12
    # A (near-)singular face quadratic has a flat direction: a boundary candidate is then as
    # good, so the interior point is only needed (and only trusted) when det is clearly > 0.
    nonsingular = det > 1e-13 * (a11 * a22).abs() + torch.finfo(gram.dtype).tiny
    safe_det = torch.where(nonsingular, det, torch.ones_like(det))
    t1 = (-b1 * a22 + b2 * a12) / safe_det
    t2 = (-b2 * a11 + b1 * a12) / safe_det
    lam = torch.stack([t1, t2, 1.0 - t1 - t2], dim=-1)
    tol = 1e-12
    valid = nonsingular & (lam >= -tol).all(-1) & torch.isfinite(lam).all(-1)
    lam = lam.clamp_min(0.0)
    lam = lam / lam.sum(-1, keepdim=True).clamp_min(torch.finfo(gram.dtype).tiny)
    return lam, valid


def solve_simplex_qp(gram: torch.Tensor, losses: torch.Tensor) -> torch.Tensor:
    """Exact batched solution of min ½λᵀPλ - fᵀλ s.t. λ ≥ 0, Σλ = 1, for q ≤ 3.

    Args:
        gram: P = GGᵀ [B, q, q] (symmetric PSD; may be singular).
        losses: f [B, q].

    Returns:
        λ [B, q] in the dtype of ``gram``. Ties between equally good points (singular P)
        go to the first candidate in the order interior, edges, vertices.
    """
    if gram.dim() != 3 or gram.shape[1] != gram.shape[2] or losses.shape != gram.shape[:2]:
        raise ValueError(f"expected gram [B, q, q] and losses [B, q], "
                         f"got {tuple(gram.shape)} and {tuple(losses.shape)}")
    b, q = losses.shape
    if q == 1:
        return torch.ones_like(losses)
    if q > 3:
        raise ValueError(f"the exact active-set solver handles q <= 3 levels, got q = {q}")
    candidates, valid = [], []
    if q == 3:
        lam, ok = _interior_minimiser(gram, losses)
        candidates.append(lam)
        valid.append(ok)
    for i in range(q):
        for j in range(i + 1, q):
            candidates.append(_edge_minimiser(gram, losses, i, j))
            valid.append(torch.ones(b, dtype=torch.bool, device=gram.device))
    eye = torch.eye(q, dtype=gram.dtype, device=gram.device)
    for i in range(q):
        candidates.append(eye[i].expand(b, q))
        valid.append(torch.ones(b, dtype=torch.bool, device=gram.device))
    lam_all = torch.stack(candidates, dim=1)  # [B, C, q]
    objective = qp_objective(lam_all, gram.unsqueeze(1), losses.unsqueeze(1))
    objective = torch.where(torch.stack(valid, dim=1), objective, torch.full_like(objective, float("inf")))
    best = objective.argmin(dim=1)
    return lam_all[torch.arange(b, device=gram.device), best]


# -- competition -----------------------------------------------------------------------
def compete(losses: torch.Tensor, gram: torch.Tensor) -> dict[str, torch.Tensor]:
    """Eliminate levels one by one (largest loss first), solving the QP on those left.

    Args:
        losses: f [B, q] (no gradient needed).
        gram: GGᵀ [B, q, q].

    Returns:
        ``alpha`` [B, q]: Σ over steps of λ (δ_l = -Gᵀα);
        ``lambdas`` [B, q-1, q]: λ of each step, zero for levels already dropped;
        ``dropped_levels`` [B, q-1] int64: level indices in elimination order.
    """
    b, q = losses.shape
    rows = torch.arange(b, device=losses.device)
    alive = torch.arange(q, device=losses.device).expand(b, q)
    lambdas, dropped = [], []
    for _ in range(q - 1):
        r = alive.shape[1]
        sub_gram = gram[rows[:, None, None], alive[:, :, None], alive[:, None, :]]
        sub_losses = losses.gather(1, alive)
        lam = solve_simplex_qp(sub_gram, sub_losses)
        lambdas.append(torch.zeros_like(losses).scatter(1, alive, lam))
        worst = sub_losses.argmax(dim=1, keepdim=True)
        dropped.append(alive.gather(1, worst).squeeze(1))
        keep = torch.ones(b, r, dtype=torch.bool, device=losses.device).scatter(1, worst, False)
        alive = alive[keep].view(b, r - 1)
    if not lambdas:  # a single level: nothing competes
        empty = losses.new_zeros(b, 0, q)
        return {"alpha": torch.zeros_like(losses), "lambdas": empty,
                "dropped_levels": torch.zeros(b, 0, dtype=torch.long, device=losses.device)}
    lambdas_t = torch.stack(lambdas, dim=1)
    return {"alpha": lambdas_t.sum(1), "lambdas": lambdas_t, "dropped_levels": torch.stack(dropped, dim=1)}


# -- the module ------------------------------------------------------------------------
class Workspace(nn.Module):
    """Competition + coordination over the levels' last layers, batched.

    forward(hidden [B, q, d], logits [B, q, k], weight [q, k, d], bias [q, k],
    pseudo_label [B, k]) -> dict:

    * ``refined_logits`` [B, q, k]: ẑ_m = θ̃_m h̃_m, θ̃_m = θ_m + η δ_l;
    * ``alpha`` [B, q], ``lambdas`` [B, q-1, q], ``dropped_levels`` [B, q-1] (int64);
    * ``level_losses`` [B, q]: f_m before refinement; ``refined_losses`` [B, q]: after;
    * ``grad_distance`` [B]: ||δ_l||_F, the size of the shared step (see losses.py);
    * ``delta`` [B, k, d+1] (δ_l: weight columns, then the bias column) only when
      ``return_delta`` is set: nothing else needs it.

    θ̃ is never materialised: θ̃_m h̃_m = s_m + η δ_l h̃_m, and because δ_l = -c Σ_j α_j
    (p_j - y) h̃_jᵀ, δ_l h̃_m = -c Σ_j α_j (h̃_j·h̃_m) (p_j - y) and ||δ_l||² = αᵀ GGᵀ α: the
    whole step costs a few [B, q, q] and [B, q, k] products. ``logits`` must be the heads'
    own outputs θ_m h̃_m for these identities to hold.

    Gradients flow through δ_l (a differentiable function of p_m and h_m), so training sees
    the refinement; λ and the elimination order are constants (an argmin and an argmax).
    """

    def __init__(self, eta: float, multi_label: bool):
        super().__init__()
        self.eta = float(eta)
        self.multi_label = bool(multi_label)

    def forward(self, hidden: torch.Tensor, logits: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
                pseudo_label: torch.Tensor, return_delta: bool = False) -> dict[str, torch.Tensor]:
        if hidden.shape[:2] != logits.shape[:2] or weight.shape != (logits.shape[1], logits.shape[2], hidden.shape[2]):
            raise ValueError(f"workspace shapes disagree: hidden {tuple(hidden.shape)}, logits {tuple(logits.shape)}, "
                             f"weight {tuple(weight.shape)}")
        target = pseudo_label.detach().to(logits.dtype)
        h = with_bias(hidden)  # [B, q, d+1]
        residual = loss_residuals(logits, target, self.multi_label)  # c (p - y): [B, q, k]
        losses = pseudo_label_losses(logits, target, self.multi_label)
        hidden_gram = h @ h.transpose(1, 2)  # h̃_i·h̃_j
        gram = (residual @ residual.transpose(1, 2)) * hidden_gram  # GGᵀ
        # The QP is tiny ([B, q, q]); float64 keeps the active-set choice exact.
        competition = compete(losses.detach().double(), gram.detach().double())
        alpha = competition["alpha"].to(logits.dtype)
        step = -torch.einsum("bj,bjm,bjk->bmk", alpha, hidden_gram, residual)  # δ_l h̃_m
        refined = logits + self.eta * step
        sq_norm = torch.einsum("bi,bij,bj->b", alpha, gram, alpha).clamp_min(0.0)
        out = {
            "refined_logits": refined,
            "alpha": alpha,
            "lambdas": competition["lambdas"].to(logits.dtype),
            "dropped_levels": competition["dropped_levels"],
            "level_losses": losses,
            "refined_losses": pseudo_label_losses(refined, target, self.multi_label),
            "grad_distance": torch.sqrt(sq_norm + torch.finfo(sq_norm.dtype).tiny),  # finite gradient at 0
        }
        if return_delta:
            out["delta"] = -torch.einsum("bm,bmk,bmd->bkd", alpha, residual, h)
        return out
