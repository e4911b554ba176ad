"""Exact sweeps for convex linear problems: one ``nn.Linear`` with L1, elastic net, group
lasso or L2 under mean squared error or cross-entropy, solved along the strength grid.

The problem of one (strength, fold) is, with ``Z`` the fold's standardized inputs (``n``
training rows), ``W`` the weight as a ``(d, k)`` matrix and ``b`` the unpenalized bias,

    minimize  loss(Z W + b, y) + s * P(W),
    P(W) = a * sum|W| + c/2 * sum W**2 + g * sum_groups ||W_group||_2

with ``loss`` the mean over rows (and outputs) of the squared error on the *raw* target,
or the mean cross-entropy; ``L1(s)`` is ``a=1``, ``L2(s)`` is ``c=1``, ``ElasticNet(s, r)``
is ``a=r, c=1-r`` and ``GroupLasso(s, dim)`` is ``g=1`` (:func:`penalty_terms`). This is
the problem the user's own loop solves with ``tp.L1(s)`` on the raw target, so the
strength needs no conversion: ``L1(s)`` = scikit-learn ``Lasso(alpha=s/2)``,
``ElasticNet(s, r)`` = ``ElasticNet(alpha=s/2, l1_ratio=r)``, and for ``K >= 3`` classes
``LogisticRegression(C=1/(s*n))`` with the same penalty (see :mod:`torchpenalty.penalties`'
conversions; a two-output binary model is the logistic model of ``v = w_1 - w_0``, see
:func:`binary_terms`).

How: the mean squared error is a quadratic in ``W`` (its Gram matrix ``G = Zc^T Zc / n``
and ``B = Zc^T yc / n`` per fold, from the all-rows moments minus the validation block's:
:func:`split_moments`); cross-entropy keeps the rows. Problems are batched (folds, output
columns, and for few features every strength too), float64, on the data's device (CPU or
GPU). The L1 / elastic-net quadratics are solved by an active-set method
(:func:`active_set`: the linear system of the active weights with their signs fixed, the
KKT conditions checked on every weight, violators in, weights reaching zero out at the
exact minimizer of the objective along the step); along the path each strength starts
from the previous one's solution (largest first). Cross-entropy (without a group term)
runs proximal Newton: the loss's second-order model plus the L1 term, solved by the same
active-set method, then a backtracking line search on the true objective. Group lasso,
and any strength the active set leaves short of the tolerance, runs accelerated proximal
gradient steps (FISTA with restarts) with Newton steps on the nonzero coordinates. It
stops when the KKT conditions hold to ``tol``: :func:`kkt_violation` over the gradient at
the null model is at most ``tol``.

>>> import numpy as np
>>> rng = np.random.default_rng(0)
>>> from sklearn.linear_model import Lasso
>>> Z = rng.normal(size=(50, 3)); y = Z @ [2.0, 0.0, -1.0] + rng.normal(size=50)
>>> Zc, yc = Z - Z.mean(0), y - y.mean()
>>> G = torch.tensor(Zc.T @ Zc / 50)[None]; B = torch.tensor(Zc.T @ yc / 50)[None, :, None]
>>> W, info = solve(Quadratic(G, B), Terms.of(torch.tensor([0.4]), l1=1.0))  # L1(0.8), 1/2-scaled
>>> ref = Lasso(alpha=0.4, tol=1e-12).fit(Z, y).coef_
>>> bool(info.converged.all()), bool(abs(W[0, :, 0].numpy() - ref).max() < 1e-8)
(True, True)
"""

from __future__ import annotations

import contextlib
import math
import warnings
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "Logistic",
    "Quadratic",
    "Softmax",
    "SolveInfo",
    "Terms",
    "active_set",
    "chooses_path",
    "kkt_violation",
    "not_applicable",
    "penalty_terms",
    "prox",
    "solve",
    "split_moments",
    "sweep_path",
]

#: KKT tolerance, relative to the largest gradient coordinate at the null model (the
#: strength above which every weight is zero, for L1).
TOL = 1e-8
#: Proximal-gradient steps between two Newton attempts and KKT checks.
CHECK_EVERY = 10
#: Most proximal-gradient steps per strength.
MAX_ITER = 20_000
#: Most proximal-gradient steps of one proximal-Newton subproblem (it may stop inexact).
INNER_ITER = 100
#: Squared-error problems with at most this many features solve every strength at once.
ONE_BATCH_FEATURES = 32
#: Elements per operation below which the solver runs in one CPU thread.
SMALL_OPS = 5_000_000
#: Ridge of proximal Newton's second-order model, relative to its largest diagonal entry
#: (the model only: the outer KKT conditions are those of the true objective).
RIDGE = 1e-10


# ---------------------------------------------------------------------------- penalty terms
@dataclass
class Terms:
    """Per-problem coefficients of ``a*sum|W| + c/2*sum W**2 + g*sum_groups ||W_g||``:
    ``l1``, ``l2``, ``group`` of shape ``(P,)``. ``group_dim`` is the axis of ``W``
    (``(d, k)``: 0 runs over inputs, 1 over outputs) along which one group's entries lie:
    ``group_dim=0`` groups are output columns, ``1`` are input rows."""

    l1: Tensor
    l2: Tensor
    group: Tensor
    group_dim: int = 0

    @staticmethod
    def of(s: Tensor, *, l1: float = 0.0, l2: float = 0.0, group: float = 0.0, group_dim=0):
        s = torch.as_tensor(s, dtype=torch.float64)
        return Terms(s * l1, s * l2, s * group, group_dim)

    def scaled(self, factor: float) -> Terms:
        return Terms(self.l1 * factor, self.l2 * factor, self.group * factor, self.group_dim)

    def value(self, W: Tensor) -> Tensor:
        """The penalty of each problem's ``W`` (``(P, d, k)``), shape ``(P,)``."""
        gn = W.norm(dim=1 + self.group_dim).sum(-1)
        return self.l1 * W.abs().sum((1, 2)) + self.l2 / 2 * W.pow(2).sum((1, 2)) + self.group * gn


def _col(t: Tensor) -> Tensor:
    return t[:, None, None]


def prox(V: Tensor, step: Tensor, terms: Terms) -> Tensor:
    """The proximal operator of ``step * (a*|W| + g*sum ||W_g||)`` at ``V`` (``(P, d, k)``,
    ``step`` of shape ``(P,)``): soft-thresholding by ``step*a``, then each group shrunk
    toward zero by ``step*g`` (the sparse-group-lasso prox; the L2 part is smooth).

    >>> V = torch.tensor([[[3.0], [-0.5]]], dtype=torch.float64)
    >>> prox(V, torch.tensor([1.0]), Terms.of(torch.tensor([1.0]), l1=1.0))[0, :, 0].tolist()
    [2.0, -0.0]
    """
    t = _col(step)
    W = V.sign() * (V.abs() - t * _col(terms.l1)).clamp_min(0)
    if bool((terms.group > 0).any()):
        dim = 1 + terms.group_dim
        norm = W.norm(dim=dim, keepdim=True)
        shrink = (1 - t * _col(terms.group) / norm.clamp_min(1e-300)).clamp_min(0)
        W = W * shrink
    return W


def kkt_violation(W: Tensor, grad: Tensor, terms: Terms) -> Tensor:
    """Largest distance of ``-grad`` (the smooth part's gradient, L2 term included) to the
    penalty's subdifferential at ``W`` over the coordinates, shape ``(P,)``: 0 exactly at a
    minimizer. A nonzero weight needs ``grad + a*sign(w) + g*w/||w_g|| = 0``; a zero weight
    outside a zero group ``|grad| <= a``; a zero group ``||soft(grad, a)|| <= g``.

    >>> W = torch.tensor([[[1.0], [0.0]]], dtype=torch.float64)
    >>> g = torch.tensor([[[-1.0], [0.4]]], dtype=torch.float64)
    >>> kkt_violation(W, g, Terms.of(torch.tensor([1.0]), l1=1.0)).tolist()
    [0.0]
    """
    a, gr = _col(terms.l1), _col(terms.group)
    nz = W != 0
    soft = (grad.abs() - a).clamp_min(0)
    if bool((terms.group > 0).any()):
        dim = 1 + terms.group_dim
        norm = W.norm(dim=dim, keepdim=True)
        live = norm > 0
        on = torch.where(nz, grad + a * W.sign() + gr * W / norm.clamp_min(1e-300), 0.0)
        off = torch.where(nz, 0.0, soft)
        dead = (soft.norm(dim=dim, keepdim=True) - gr).clamp_min(0)
        per = torch.where(live, on.abs() + off, dead.expand_as(W))
        return per.amax((1, 2))
    on = (grad + a * W.sign()).abs()
    return torch.where(nz, on, soft).amax((1, 2))


# ---------------------------------------------------------------------------- smooth losses
class Quadratic:
    """Half the mean squared error up to a constant, ``1/2 tr(W^T G W) - tr(W^T B)`` per
    problem (``G`` ``(P, d, d)``, ``B`` ``(P, d, k)`` from centered data: the bias is
    eliminated). Its minimizer with the penalty ``s*k/2 * P`` is that of the mean squared
    error (mean over rows and the ``k`` outputs) with ``s * P``."""

    def __init__(self, G: Tensor, B: Tensor, penalized: int | None = None) -> None:
        self.G, self.B = G, B
        self.penalized = G.shape[-1] if penalized is None else penalized  # rows of W

    def null(self) -> Tensor:
        return torch.zeros_like(self.B)

    def value(self, W: Tensor) -> Tensor:
        return ((self.G @ W) * W).sum((1, 2)) / 2 - (self.B * W).sum((1, 2))

    def grad(self, W: Tensor) -> Tensor:
        return self.G @ W - self.B

    def hessian(self, W: Tensor) -> Tensor:
        P, d, k = W.shape
        eye = torch.eye(k, dtype=W.dtype, device=W.device)
        return (self.G[:, :, None, :, None] * eye[None, None, :, None, :]).reshape(P, d * k, d * k)

    def lipschitz(self) -> Tensor:
        return torch.linalg.eigvalsh(self.G)[:, -1]


class Softmax:
    """Mean cross-entropy ``sum_i w_i CE(z_i Theta, y_i)`` over ``K`` classes with row
    weights ``w`` (``(P, n)``, 1/n_train on each problem's training rows, else 0); ``Z1``
    ``(P, n, d+1)`` ends with a column of ones, so the last row of ``Theta`` is the
    (unpenalized) bias; ``Y`` one-hot ``(n, K)``."""

    def __init__(self, Z1: Tensor, Y: Tensor, w: Tensor) -> None:
        self.Z1, self.Y, self.w = Z1, Y, w
        self.penalized = Z1.shape[-1] - 1

    def null(self) -> Tensor:
        prior = (self.w[:, :, None] * self.Y).sum(1).clamp_min(1e-300)  # (P, K)
        theta = torch.zeros(self.Z1.shape[0], self.Z1.shape[-1], self.Y.shape[-1],
                            dtype=self.Z1.dtype, device=self.Z1.device)  # fmt: skip
        theta[:, -1] = prior.log() - prior.log().mean(-1, keepdim=True)
        return theta

    def probs(self, theta: Tensor) -> Tensor:
        return torch.softmax(self.Z1 @ theta, -1)

    def value(self, theta: Tensor) -> Tensor:
        u = self.Z1 @ theta
        per = torch.logsumexp(u, -1) - (u * self.Y).sum(-1)
        return (self.w * per).sum(1)

    def grad(self, theta: Tensor) -> Tensor:
        R = (self.probs(theta) - self.Y) * self.w[:, :, None]
        return self.Z1.transpose(1, 2) @ R

    def hessian(self, theta: Tensor) -> Tensor:
        """``sum_i w_i (diag(p_i) - p_i p_i^T) kron z_i z_i^T`` in (row, class) order, plus
        ``1/K`` on the bias block's all-ones direction (the softmax's one flat direction:
        the Newton step along it is zero, the gradient has no component there)."""
        P, _, D = self.Z1.shape
        K = self.Y.shape[-1]
        p = self.probs(theta)
        zw = self.Z1 * self.w[:, :, None]
        diag = torch.einsum("pia,pib,pik->pakb", zw, self.Z1, p)
        A = self.Z1[:, :, :, None] * p[:, :, None, :]  # (P, n, D, K)
        H = torch.diag_embed(diag.permute(0, 1, 3, 2)).permute(0, 1, 3, 2, 4)  # (P,D,K,D,K)
        H = H - torch.einsum("piak,pi,pibl->pakbl", A, self.w, A)
        H[:, -1, :, -1, :] += 1.0 / K
        return H.reshape(P, D * K, D * K)

    def lipschitz(self) -> Tensor:
        M = self.Z1.transpose(1, 2) @ (self.Z1 * self.w[:, :, None])
        return 0.5 * torch.linalg.eigvalsh(M)[:, -1]


class Logistic(Softmax):
    """Binary logistic loss ``sum_i w_i (softplus(u_i) - y_i u_i)``, ``u = z_i theta``,
    ``Y`` ``(n, 1)`` of 0/1, ``theta`` ``(P, d+1, 1)``."""

    def null(self) -> Tensor:
        m = (self.w * self.Y[:, 0]).sum(1).clamp(1e-300, 1 - 1e-16)
        theta = torch.zeros(self.Z1.shape[0], self.Z1.shape[-1], 1, dtype=self.Z1.dtype,
                            device=self.Z1.device)  # fmt: skip
        theta[:, -1, 0] = (m / (1 - m)).log()
        return theta

    def probs(self, theta: Tensor) -> Tensor:
        return torch.sigmoid(self.Z1 @ theta)

    def value(self, theta: Tensor) -> Tensor:
        u = (self.Z1 @ theta)[..., 0]
        return (self.w * (torch.nn.functional.softplus(u) - self.Y[:, 0] * u)).sum(1)

    def hessian(self, theta: Tensor) -> Tensor:
        p = self.probs(theta)[..., 0]
        return self.Z1.transpose(1, 2) @ (self.Z1 * (self.w * p * (1 - p))[:, :, None])

    def lipschitz(self) -> Tensor:
        return super().lipschitz() / 2


# ---------------------------------------------------------------------------- the solver
@dataclass
class SolveInfo:
    """Per problem: whether the KKT conditions held to ``tol`` (``converged``), the
    relative violation reached (``kkt``) and the proximal-gradient steps taken."""

    converged: Tensor
    kkt: Tensor
    steps: Tensor


def _smooth_grad(loss, terms: Terms, theta: Tensor) -> Tensor:
    """Gradient of the loss plus the L2 part ``c/2 * sum W**2`` (penalized rows)."""
    g = loss.grad(theta)
    d = loss.penalized
    g[:, :d] = g[:, :d] + _col(terms.l2) * theta[:, :d]
    return g


def _violation(loss, terms: Terms, theta: Tensor) -> Tensor:
    """:func:`kkt_violation` of the penalized rows, and the bias rows' gradient."""
    g = _smooth_grad(loss, terms, theta)
    d = loss.penalized
    v = kkt_violation(theta[:, :d], g[:, :d], terms)
    if d < theta.shape[1]:
        v = torch.maximum(v, g[:, d:].abs().amax((1, 2)))
    return v


def _group_hessian(W: Tensor, terms: Terms) -> Tensor:
    """Hessian of ``g * sum ||W_g||`` at ``W`` ``(P, d, k)`` in (row, column) order, for
    groups with a nonzero norm: ``g (I - u u^T) / ||W_g||`` with ``u = W_g / ||W_g||``."""
    P, d, k = W.shape
    gd = terms.group_dim
    norm = W.norm(dim=1 + gd, keepdim=True).clamp_min(1e-300)
    u = W / norm
    inv = (terms.group[:, None, None] / norm).expand(P, d, k)
    eye_d = torch.eye(d, dtype=W.dtype, device=W.device)
    eye_k = torch.eye(k, dtype=W.dtype, device=W.device)
    if gd == 0:  # groups are columns: couple rows a, b within one column
        H = torch.einsum("ab,kl,pak->pakbl", eye_d, eye_k, inv)
        H = H - torch.einsum("pak,pbk,kl,pak->pakbl", u, u, eye_k, inv)
    else:  # groups are rows: couple columns k, l within one row
        H = torch.einsum("ab,kl,pak->pakbl", eye_d, eye_k, inv)
        H = H - torch.einsum("pak,pal,ab,pak->pakbl", u, u, eye_d, inv)
    return H.reshape(P, d * k, d * k)


def _newton(loss, terms: Terms, theta: Tensor, iters: int) -> Tensor:
    """Newton steps on the active weights (signs fixed) and the bias: an active-set
    method. Active are the nonzero weights and the zero weights whose gradient exceeds
    the L1 threshold (entering with the sign that lowers the objective). A step that
    would flip a nonzero weight's sign stops where the first one reaches zero (it leaves
    the set); an entering weight that would move the wrong way stays zero. For the
    squared error each full step is the exact minimizer on its active set."""
    P, D, K = theta.shape
    d = loss.penalized
    for _ in range(iters):
        sign = _active_signs(loss, terms, theta)
        step = _newton_step(loss, terms, theta, sign).reshape(P, D, K)
        W, S = theta[:, :d], step[:, :d]
        crossing = (W != 0) & ((W - S).sign() != W.sign())
        ratio = torch.where(crossing, W / torch.where(crossing, S, 1.0), math.inf)
        t = ratio.amin((1, 2)).clamp(max=1.0)
        t = torch.where(torch.isfinite(step).all(2).all(1), t, 0.0)
        new = theta - _col(t) * step
        hit = crossing & (ratio <= _col(t) * (1 + 1e-12))
        wrong = (W == 0) & (new[:, :d].sign() != sign)
        new[:, :d] = torch.where(hit | wrong, 0.0, new[:, :d])
        if not isinstance(loss, Quadratic):
            new = _backtrack(loss, terms, theta, new)
        theta = new
        exact = isinstance(loss, Quadratic)
        if (
            bool((t == 1).all())
            and not bool(wrong.any())
            and (exact or float(step.abs().max()) <= 1e-13 * float(theta.abs().max().clamp_min(1)))
        ):
            break
    return theta


def objective(loss, terms: Terms, theta: Tensor) -> Tensor:
    """Loss plus penalty of each problem, shape ``(P,)``."""
    return loss.value(theta) + terms.value(theta[:, : loss.penalized])


def _backtrack(loss, terms: Terms, theta: Tensor, new: Tensor, halvings: int = 30) -> Tensor:
    """``theta + t (new - theta)`` with ``t`` halved from 1 until the objective does not
    increase (per problem); ``theta`` itself when no such ``t`` is found."""
    f0 = objective(loss, terms, theta)
    t = torch.ones_like(f0)
    for _ in range(halvings):
        cand = theta + _col(t) * (new - theta)
        bad = ~(objective(loss, terms, cand) <= f0 + 1e-15 * f0.abs())
        if not bool(bad.any()):
            return cand
        t = torch.where(bad, t / 2, t)
    return torch.where(bad[:, None, None], theta, cand)


def _active_signs(loss, terms: Terms, theta: Tensor) -> Tensor:
    """Signs of the active weights: ``sign(w)`` where nonzero, ``-sign(grad)`` where zero
    and ``|grad| > a`` (not for group penalties: their groups enter through the
    proximal-gradient steps), 0 elsewhere."""
    d = loss.penalized
    W = theta[:, :d]
    sign = W.sign()
    if bool((terms.group > 0).any()):
        return sign
    g = _smooth_grad(loss, terms, theta)[:, :d]
    enter = (W == 0) & (g.abs() > _col(terms.l1) * (1 + 1e-9))
    return torch.where(enter, -g.sign(), sign)


def _newton_step(loss, terms: Terms, theta: Tensor, sign: Tensor) -> Tensor:
    """The Newton step ``H^-1 g`` of loss + penalty restricted to the active weights
    (``sign != 0``) and the bias (flattened, ``(P, D*K)``; zero elsewhere)."""
    P, D, K = theta.shape
    d = loss.penalized
    W = theta[:, :d]
    g = _smooth_grad(loss, terms, theta)
    g[:, :d] += _col(terms.l1) * sign
    H = loss.hessian(theta)
    pen = torch.zeros(P, D, K, dtype=theta.dtype, device=theta.device)
    pen[:, :d] = 1.0
    H = H + torch.diag_embed((_col(terms.l2) * pen).reshape(P, -1))
    if bool((terms.group > 0).any()):
        norm = W.norm(dim=1 + terms.group_dim, keepdim=True).clamp_min(1e-300)
        g[:, :d] += _col(terms.group) * W / norm
        H = H.reshape(P, D, K, D, K)
        H[:, :d, :, :d, :] += _group_hessian(W, terms).reshape(P, d, K, d, K)
        H = H.reshape(P, D * K, D * K)
    m = torch.ones_like(theta)
    m[:, :d] = (sign != 0).to(theta.dtype)
    m = m.reshape(P, -1)
    Hm = H * m[:, :, None] * m[:, None, :] + torch.diag_embed(1 - m)
    return _batched_solve(Hm, (g.reshape(P, -1) * m)[..., None])[..., 0]


def _batched_solve(A: Tensor, b: Tensor) -> Tensor:
    """``A^-1 b`` for a batch of symmetric systems; a singular one (duplicate features, more
    active features than rows) gets a ridge of ``1e-10`` of its largest diagonal entry
    (near the least-norm solution where ``b`` is in the range of ``A``). On the CPU in
    one thread: torch 2.13's CPU build aborts the process in a multi-threaded batched LU
    solve of 200 x 200 float64 systems (oneMKL "Parameter 6 was incorrect on entry to
    DLASWP").

    >>> A = torch.tensor([[[1.0, 1.0], [1.0, 1.0]]], dtype=torch.float64)  # singular
    >>> x = _batched_solve(A, torch.tensor([[[2.0], [2.0]]], dtype=torch.float64))[0, :, 0]
    >>> [round(v, 6) for v in x.tolist()]
    [1.0, 1.0]
    """
    with _one_thread(A.device.type == "cpu", A.device):
        x, info = torch.linalg.solve_ex(A, b)
        bad = (info != 0) | ~torch.isfinite(x).all(-1).all(-1)
        if bool(bad.any()):  # a ridge of 1e-10 of the largest diagonal entry
            eps = 1e-10 * A.diagonal(0, 1, 2).abs().amax(-1).clamp_min(1e-300)
            eye = torch.eye(A.shape[-1], dtype=A.dtype, device=A.device)
            x = torch.where(
                bad[:, None, None], torch.linalg.solve_ex(A + eps[:, None, None] * eye, b)[0], x
            )
    return x


# ---------------------------------------------------------------------------- active set
def _line_min(A: Tensor, g: Tensor, a: Tensor, x: Tensor, delta: Tensor) -> Tensor:
    """The exact minimizer ``t >= 0`` of ``f(x + t*delta)`` per problem, with
    ``f(x) = 1/2 x^T A x - b^T x + sum_j a_j |x_j|`` and ``g = A x - b``: ``f`` along the line
    is convex and piecewise quadratic, its slope ``q t + c`` (``q = delta^T A delta``) jumps
    up by ``2 a_j |delta_j|`` where a nonzero ``x_j`` crosses zero. Shapes ``(P, n)``.

    >>> A = torch.eye(2, dtype=torch.float64)[None]; a = torch.ones(1, 2, dtype=torch.float64)
    >>> x = torch.tensor([[1.0, 0.0]], dtype=torch.float64)
    >>> g = A[0] @ x[0] - torch.tensor([0.5, 0.0], dtype=torch.float64)  # b = (0.5, 0)
    >>> _line_min(A, g[None], a, x, -x).tolist()  # f(1 - t) = (1-t)^2/2 - (1-t)/2 + |1-t|
    [1.0]
    """
    q = ((A @ delta[..., None])[..., 0] * delta).sum(1).clamp_min(1e-300)
    moving = a * torch.where(x != 0, delta * x.sign(), delta.abs())
    c = (delta * g).sum(1) + moving.sum(1)
    cross = (a > 0) & (x != 0) & (delta * x.sign() < 0)
    bp = torch.where(cross, -x / torch.where(cross, delta, 1.0), math.inf)
    bp, order = bp.sort(1)
    jump = torch.where(bp < math.inf, 2 * (a * delta.abs()).gather(1, order), 0.0)
    zero = torch.zeros_like(q)[:, None]
    lo = torch.cat([zero, bp], 1)
    hi = torch.cat([bp, zero + math.inf], 1)
    cum = torch.cat([zero, jump.cumsum(1)], 1) + c[:, None]
    k = (q[:, None] * hi + cum >= 0).to(torch.int8).argmax(1, keepdim=True)
    root = -cum.gather(1, k) / q[:, None]
    return torch.maximum(root, lo.gather(1, k)).minimum(hi.gather(1, k))[:, 0]


def _l1_kkt(x: Tensor, g: Tensor, a: Tensor) -> Tensor:
    """Per-coordinate KKT violation of ``min 1/2 x^T A x - b^T x + sum a_j |x_j|`` at ``x``
    with ``g = A x - b`` (``a_j = 0``: an unpenalized coordinate)."""
    return torch.where(x != 0, (g + a * x.sign()).abs(), (g.abs() - a).clamp_min(0))


def _restricted_solve(A: Tensor, rhs: Tensor, m: Tensor) -> Tensor:
    """Solve ``A_mm x_m = rhs_m`` with ``x`` zero off the mask ``m`` (``(P, n)``); when at
    most half the coordinates are in any problem's mask, on the gathered ``r x r`` systems
    (``r`` the largest mask), else on ``n x n`` ones with the identity off the mask."""
    n = m.shape[1]
    r = int(m.sum(1).max()) if n > 16 else n
    if r <= n // 2:
        idx = torch.sort(m.to(torch.int8), stable=True, dim=1, descending=True).indices[:, :r]
        sub = A.gather(1, idx[:, :, None].expand(-1, -1, n)).gather(
            2, idx[:, None, :].expand(-1, r, -1)
        )
        x = _restricted_solve(sub, rhs.gather(1, idx), m.gather(1, idx)) if r else rhs[:, :0]
        return torch.zeros_like(rhs).scatter(1, idx, x)
    eye = torch.eye(n, dtype=torch.bool, device=A.device)
    Am = torch.where(m[:, :, None] & m[:, None, :], A, eye.to(A.dtype))
    return torch.where(m, _batched_solve(Am, torch.where(m, rhs, 0.0)[..., None])[..., 0], 0.0)


def active_set(A: Tensor, b: Tensor, a: Tensor, x: Tensor, stop: Tensor, max_iter: int = 100):
    """Minimize ``1/2 x^T A x - b^T x + sum_j a_j |x_j|`` (``A`` positive definite ``(P, n,
    n)``, ``b``, ``a >= 0``, ``x`` ``(P, n)``) from ``x``, for every problem at once, until
    the largest KKT violation is at most ``stop`` ``(P,)``. Each iteration solves the linear
    system of the active coordinates with their signs fixed (the nonzero ones, the zero
    ones whose gradient exceeds ``a_j`` entering with the sign that lowers ``f``, and the
    unpenalized ones) and moves to the exact minimizer of ``f`` on the segment toward that
    solution (:func:`_line_min`; a coordinate that reaches zero at the minimizer leaves).
    With the active set right, one solve is exact. A problem whose step makes no progress
    then admits only its worst violator at a time (as the feature-sign search of Lee et al.
    2007); one that still makes none stops there, its violation above ``stop``.
    Returns ``x`` and the violation per problem.

    >>> A = torch.tensor([[[2.0, 0.5], [0.5, 1.0]]], dtype=torch.float64)
    >>> b = torch.tensor([[3.0, 0.2]], dtype=torch.float64); a = torch.ones(1, 2, dtype=A.dtype)
    >>> x, kkt = active_set(A, b, a, torch.zeros_like(b), torch.tensor([1e-12]))
    >>> x.tolist(), bool(kkt[0] < 1e-12)  # x_1 = (3 - 1)/2; x_2 stays 0: |0.5 - 0.2| <= 1
    ([[1.0, 0.0]], True)
    """
    careful = torch.zeros_like(stop, dtype=torch.bool)
    stalled = careful.clone()
    free = a == 0
    for it in range(max_iter):
        if it == 8:  # slow to settle: one entering coordinate at a time from here
            careful = torch.ones_like(careful)
        g = torch.baddbmm(-b[..., None], A, x[..., None])[..., 0]
        nz, sx = x != 0, x.sign()
        viol = torch.where(nz, (g + a * sx).abs(), (g.abs() - a).clamp_min(0))
        kkt = viol.amax(1)
        done = (kkt <= stop) | stalled
        if bool(done.all()):
            break
        enter = ~nz & ~free & (viol > 0)
        if bool(careful.any()):  # only the worst violator enters
            off = torch.where(enter, viol, -1.0)
            worst = torch.zeros_like(enter).scatter_(1, off.argmax(1, keepdim=True), True)
            enter = torch.where(careful[:, None], enter & worst, enter)
        sign = torch.where(nz, sx, -g.sign())
        rhs, m = b - a * sign, nz | enter | free
        target = _restricted_solve(A, rhs, m)
        agree = (target * sign > 0) | free | ~m
        wrong = enter & ~agree  # entered the wrong way: leave them out
        if bool(wrong.any()):
            m = m & ~wrong
            target = _restricted_solve(A, rhs, m)
            agree = (target * sign > 0) | free | ~m
        if bool(agree.all()):  # every sign as assumed: the solve is the minimizer
            still = ~done & (target == x).all(1)
            stalled |= careful & still
            careful |= still
            x = torch.where(done[:, None], x, target)
            continue
        delta = target - x
        t = torch.where(done, 0.0, _line_min(A, g, a, x, delta))
        step = x + t[:, None] * delta
        new = torch.where(((t - 1).abs() <= 1e-12)[:, None], target, step)
        x = torch.where(nz & (step.abs() <= 1e-12 * x.abs()), 0.0, new)  # reached zero: leaves
        stalled |= careful & ~done & (t <= 0)
        careful |= ~done & (t <= 0)
    else:
        kkt = _l1_kkt(x, (A @ x[..., None])[..., 0] - b, a).amax(1)
    return x, kkt


def _active_quadratic(loss: Quadratic, terms: Terms, theta: Tensor, scale: Tensor, tol: float):
    """:func:`active_set` on a :class:`Quadratic` with L1 and L2 terms: each of the ``k``
    columns of ``W`` is its own problem (the Gram matrix is shared), the L2 term joins the
    Gram matrix on the penalized rows, the rows past ``loss.penalized`` are free."""
    P, n, k = theta.shape
    pen = torch.zeros(n, dtype=theta.dtype, device=theta.device)
    pen[: loss.penalized] = 1.0
    A = loss.G + torch.diag_embed(terms.l2[:, None] * pen)
    a = terms.l1[:, None] * pen
    if k > 1:
        A, a = A.repeat_interleave(k, 0), a.repeat_interleave(k, 0)
    b = loss.B.transpose(1, 2).reshape(P * k, n)
    x0 = theta.transpose(1, 2).reshape(P * k, n)
    stop = (scale * min(tol, 1e-11)).repeat_interleave(k)
    x, kkt = active_set(A, b, a, x0, stop)
    kkt = kkt.reshape(P, k).amax(1) / scale
    theta = x.reshape(P, k, n).transpose(1, 2).contiguous()
    steps = torch.zeros(P, dtype=torch.long, device=theta.device)
    return theta, SolveInfo(converged=kkt <= tol, kkt=kkt, steps=steps)


def _prox_newton(loss, terms: Terms, theta: Tensor, scale: Tensor, tol: float, max_iter: int):
    """Proximal Newton (as newGLMNET): minimize the loss's second-order model plus the
    L1 term (:func:`active_set` in the flattened coordinates, the bias unpenalized, each
    problem to 1/100 of its own outer violation), then backtrack on the true objective;
    until the KKT violation relative to ``scale`` is at most ``tol``. ``steps`` counts
    the outer iterations."""
    P, D, K = theta.shape
    pen = torch.zeros(P, D, K, dtype=theta.dtype, device=theta.device)
    pen[:, : loss.penalized] = 1.0
    pen = pen.reshape(P, -1)
    a = terms.l1[:, None] * pen
    rel = _violation(loss, terms, theta) / scale
    steps = torch.zeros(P, dtype=torch.long, device=theta.device)
    for _ in range(50):
        live = rel > tol
        if not bool(live.any()) or int(steps.max()) >= max_iter:
            break
        g = _smooth_grad(loss, terms, theta).reshape(P, -1)
        H = loss.hessian(theta) + torch.diag_embed(terms.l2[:, None] * pen)
        H = H + torch.diag_embed(RIDGE * H.diagonal(0, 1, 2).amax(-1, keepdim=True).expand_as(g))
        x0 = theta.reshape(P, -1)
        stop = torch.where(live, (0.01 * rel).clamp_min(1e-13) * scale, math.inf)
        x, _ = active_set(H, (H @ x0[..., None])[..., 0] - g, a, x0, stop)
        new = _backtrack(loss, terms, theta, x.reshape(P, D, K))
        theta = torch.where(live[:, None, None], new, theta)
        rel = torch.where(live, _violation(loss, terms, theta) / scale, rel)
        steps += live.long()
    return theta, SolveInfo(converged=rel <= tol, kkt=rel, steps=steps)


def _fista(loss, terms: Terms, state: dict, step: Tensor, n: int) -> None:
    """``n`` accelerated proximal-gradient steps with gradient-based restarts (O'Donoghue
    and Candes 2015) on ``state`` (``x``, ``y``, ``t``), in place."""
    d = loss.penalized
    x, y, t = state["x"], state["y"], state["t"]
    for _ in range(n):
        v = y - _col(step) * _smooth_grad(loss, terms, y)
        xn = v.clone()
        xn[:, :d] = prox(v[:, :d], step, terms)
        restart = ((y - xn) * (xn - x)).sum((1, 2)) > 0
        tn = torch.where(restart, 1.0, (1 + torch.sqrt(1 + 4 * t * t)) / 2)
        beta = torch.where(restart, 0.0, (t - 1) / tn)
        y = xn + _col(beta) * (xn - x)
        x, t = xn, tn
    state.update(x=x, y=y, t=t)


def solve(
    loss,
    terms: Terms,
    theta0: Tensor | None = None,
    *,
    tol: float = TOL,
    max_iter: int = MAX_ITER,
    check_every: int = CHECK_EVERY,
    newton_iters: int = 10,
) -> tuple[Tensor, SolveInfo]:
    """Minimize ``loss + penalty`` for a batch of problems from ``theta0`` (default the
    null model): proximal-gradient steps, a Newton step on the nonzero coordinates every
    ``check_every`` steps, until :func:`kkt_violation` (with the bias gradient) is at most
    ``tol`` times the largest gradient coordinate at the null model, or ``max_iter``."""
    null = loss.null()
    theta = null.clone() if theta0 is None else theta0.clone()
    d = loss.penalized
    scale = _smooth_grad(loss, Terms.of(torch.zeros_like(terms.l1)), null)[:, :d]
    scale = scale.abs().amax((1, 2)).clamp_min(1e-300)
    grouped = bool((terms.group > 0).any())
    if not isinstance(loss, Quadratic) and not grouped:
        return _prox_newton(loss, terms, theta, scale, tol, max_iter)
    if not grouped:  # the active-set method; FISTA only for what it leaves unconverged
        theta, info = _active_quadratic(loss, terms, theta, scale, tol)
        if bool(info.converged.all()):
            return theta, info
    step = 1.0 / (loss.lipschitz() + terms.l2)
    P = theta.shape[0]
    done = torch.zeros(P, dtype=torch.bool, device=theta.device)
    best, low = theta.clone(), objective(loss, terms, theta)
    rel = _violation(loss, terms, theta) / scale
    done |= rel <= tol
    steps = torch.zeros(P, dtype=torch.long, device=theta.device)
    state = {"x": theta, "y": theta.clone(), "t": torch.ones(P, dtype=theta.dtype)}
    state["t"] = state["t"].to(theta.device)
    it = 0
    while not bool(done.all()):
        if it > 0:
            _fista(loss, terms, state, step, check_every)
            steps = torch.where(done, steps, steps + check_every)
        it += check_every
        for cand in (state["x"], _newton(loss, terms, state["x"], newton_iters)):
            f = objective(loss, terms, cand)
            better = ~done & (f <= low)
            best = torch.where(better[:, None, None], cand, best)
            low = torch.where(better, f, low)
            rel = torch.where(better, _violation(loss, terms, cand) / scale, rel)
            done |= rel <= tol
        if it >= max_iter:
            break
        # go on from the lowest point so far (often the Newton point)
        state = {"x": best.clone(), "y": best.clone(), "t": torch.ones_like(state["t"])}
    return best, SolveInfo(converged=done, kkt=rel, steps=steps)


# ---------------------------------------------------------------------------- sweep problems
def penalty_terms(penalty) -> dict:
    """The coefficients of :class:`Terms` of one of the sweep's penalty objects at strength
    1: ``L1`` -> ``l1=1``, ``L2`` -> ``l2=1``, ``ElasticNet(r)`` -> ``l1=r, l2=1-r``,
    ``GroupLasso(dim)`` -> ``group=1`` (``dim=0``, groups are a Linear's output units:
    columns of ``W``; ``dim=1``: its inputs, rows of ``W``). None for anything else."""
    from ..penalties import L1, L2, ElasticNet, GroupLasso

    kind = type(penalty)
    if kind is L1:
        return {"l1": 1.0}
    if kind is L2:
        return {"l2": 1.0}
    if kind is ElasticNet:
        r = float(penalty.l1_ratio)
        return {"l1": r, "l2": 1.0 - r}
    if kind is GroupLasso and penalty.dim in (0, 1, -1, -2):
        return {"group": 1.0, "group_dim": 0 if penalty.dim in (0, -2) else 1}
    return None


def binary_terms(coef: dict) -> dict:
    """:func:`penalty_terms` of a two-output softmax model ``W = [-v/2, v/2]`` (the
    minimizer splits evenly) written as terms of the logistic model of ``v``:
    ``|v/2| + |v/2| = |v|`` (L1 unchanged), ``(v/2)**2 * 2 = v**2 / 2`` (L2 halved), a
    group of the two outputs' columns ``||v/2|| * 2 = ||v||`` (unchanged) and a group per
    input ``||(v_j/2, v_j/2)|| = |v_j| / sqrt(2)`` (L1 of ``1/sqrt(2)``). So binary
    ``L1(s)`` is ``LogisticRegression(C=1/(s*n))`` and ``L2(s)`` ``C=2/(s*n)``.

    >>> binary_terms({"l1": 0.5, "l2": 0.5})
    {'l1': 0.5, 'l2': 0.25}
    """
    out = {"l1": coef.get("l1", 0.0), "l2": coef.get("l2", 0.0) / 2}
    if coef.get("group"):
        if coef.get("group_dim", 0) == 0:  # one group: the whole of v
            out.update(group=coef["group"], group_dim=0)
        else:
            out["l1"] += coef["group"] / math.sqrt(2)
    return out


@dataclass
class PathFit:
    """Solutions along the path in the model's layout: ``weight`` ``(S, F, k, d)`` and
    ``bias`` ``(S, F, k)`` per (strength, fold) (float64, inputs standardized per fold),
    and per (strength, fold) ``converged``, ``kkt`` and ``steps`` (see :class:`SolveInfo`)."""

    weight: Tensor
    bias: Tensor
    converged: Tensor
    kkt: Tensor
    steps: Tensor
    x_mean: Tensor | None = None
    x_std: Tensor | None = None


def _standardized(X: Tensor, rows: Tensor, standardize: bool) -> tuple[Tensor, Tensor]:
    """Mean and population std (0 -> 1) of ``X[rows]`` (0 and 1 without ``standardize``),
    as :class:`~torchpenalty.sweep.folds.Standardizer` fits them."""
    if not standardize:
        return torch.zeros_like(X[0]), torch.ones_like(X[0])
    Xr = X[rows]
    mean = Xr.mean(0)
    std = (Xr - mean).pow(2).mean(0).sqrt()
    return mean, torch.where(std > 0, std, torch.ones_like(std))


def fold_scalings(X: Tensor, splits, standardize: bool) -> tuple[Tensor, Tensor]:
    """Per-fold input means and stds ``(F, d)`` fitted on each fold's training rows."""
    stats = [_standardized(X, tr, standardize) for tr, _ in splits]
    return torch.stack([m for m, _ in stats]), torch.stack([s for _, s in stats])


def _path(loss, base: Terms, strengths, theta0, tol, max_iter):
    """Solve ``loss`` at every strength, largest first, each warm-started from the
    previous solution; ``base`` holds the per-problem coefficients at strength 1."""
    order = sorted(range(len(strengths)), key=lambda i: -strengths[i])
    if isinstance(loss, Quadratic) and not bool((base.group > 0).any()):
        return _active_path(loss, base, strengths, order, tol, max_iter)
    out, infos = [None] * len(strengths), [None] * len(strengths)
    theta = theta0
    for i in order:
        s = float(strengths[i])
        terms = Terms(base.l1 * s, base.l2 * s, base.group * s, base.group_dim)
        theta, info = solve(loss, terms, theta, tol=tol, max_iter=max_iter)
        out[i], infos[i] = theta, info
    return torch.stack(out), infos


def _active_path(loss: Quadratic, base: Terms, strengths, order, tol, max_iter):
    """:func:`_path` of a :class:`Quadratic` with L1 and L2 terms by :func:`active_set`
    (each output column its own problem, the Gram matrix shared): with at most
    ``ONE_BATCH_FEATURES`` features every (strength, fold) at once from zero (fewer, larger
    operations: their cost is per operation), else strength by strength, warm-started.
    :func:`solve` (FISTA) takes over a strength only where the active-set method stopped
    short of ``tol``."""
    G, B = loss.G, loss.B
    P, d, k = B.shape
    S = len(strengths)
    scale = B.abs().amax((1, 2)).clamp_min(1e-300)
    stop = (scale * min(tol, 1e-11)).repeat_interleave(k)
    b = B.transpose(1, 2).reshape(P * k, d)
    Gk = G.repeat_interleave(k, 0) if k > 1 else G
    eye = torch.eye(d, dtype=G.dtype, device=G.device)
    l1 = base.l1.repeat_interleave(k)[:, None].expand(P * k, d)
    l2 = base.l2.repeat_interleave(k)[:, None, None]
    ridge = bool((base.l2 > 0).any())
    rank = getattr(loss, "rank", None)
    if not ridge and rank is not None and bool((rank < d).any()):
        # singular Gram matrices (more features than rows): once the active set fills the
        # rank, a feature enters only as another leaves, along a flat direction that a
        # faint ridge (1e-10 of the largest diagonal entry) turns into a finite step
        Gk = Gk + 1e-10 * Gk.diagonal(0, 1, 2).amax(-1)[:, None, None] * eye
    if d <= ONE_BATCH_FEATURES:
        s = torch.as_tensor(strengths, dtype=G.dtype, device=G.device)[:, None, None, None]
        A = (Gk + s * l2 * eye if ridge else Gk.expand(S, -1, -1, -1)).reshape(-1, d, d)
        a = (s[..., 0] * l1).reshape(-1, d)
        xs, kkts = active_set(A, b.repeat(S, 1), a, torch.zeros_like(a), stop.repeat(S))
        xs, kkts = xs.reshape(S, P * k, d), kkts.reshape(S, P * k)
    out, infos = [None] * S, [None] * S
    x = torch.zeros_like(b)
    for i in order:
        s = float(strengths[i])
        if d <= ONE_BATCH_FEATURES:
            x, kkt = xs[i], kkts[i]
        else:
            x, kkt = active_set(Gk + (s * l2) * eye if ridge else Gk, b, s * l1, x, stop)
        kkt = kkt.reshape(P, k).amax(1) / scale
        theta = x.reshape(P, k, d).transpose(1, 2)
        info = SolveInfo(kkt <= tol, kkt, torch.zeros(P, dtype=torch.long, device=G.device))
        if not bool(info.converged.all()):
            terms = Terms(base.l1 * s, base.l2 * s, base.group * s, base.group_dim)
            theta, info = solve(loss, terms, theta, tol=tol, max_iter=max_iter)
            x = theta.transpose(1, 2).reshape(P * k, d)
        out[i], infos[i] = theta, info
    return torch.stack(out), infos


def _info(infos) -> tuple[Tensor, Tensor, Tensor]:
    return tuple(torch.stack([getattr(i, k) for i in infos]) for k in ("converged", "kkt", "steps"))


def split_moments(X: Tensor, Y: Tensor, splits) -> tuple[Tensor, Tensor, Tensor]:
    """Per split, ``M = sum over its training rows of a a^T`` with ``a = [x - g, y - h, 1]``
    (``g``, ``h`` the all-rows means: centering first keeps the fold moments exact to
    rounding), shape ``(F, d+k+1, d+k+1)``, and ``g``, ``h``. A split whose training rows
    are the complement of its validation rows costs one product of its validation rows:
    ``M = M_all - M_val``; the all-rows total is the sum of the validation blocks when
    they partition the rows (K-fold). Other splits take their own product.

    >>> X = torch.arange(12.0, dtype=torch.float64).reshape(6, 2) ** 2
    >>> Y = torch.ones(6, 1, dtype=torch.float64)
    >>> idx = torch.arange(6); splits = [(idx[2:], idx[:2]), (idx[:4], idx[4:])]
    >>> M, g, h = split_moments(X, Y, splits)
    >>> a = torch.cat([X - g, Y - h, torch.ones(6, 1, dtype=X.dtype)], 1)
    >>> bool(torch.allclose(M[0], a[2:].T @ a[2:])), int(M[1, -1, -1])
    (True, 4)
    """
    n = len(X)
    g, h = X.mean(0), Y.mean(0)
    A = torch.cat([X - g, Y - h, torch.ones(n, 1, dtype=X.dtype, device=X.device)], 1)
    complement = [len(tr) + len(va) == n for tr, va in splits]
    vals = [
        A[va].T @ A[va] for (tr, va), c in zip(splits, complement, strict=True) if c and len(va)
    ]
    cover = torch.zeros(n, dtype=torch.long, device=X.device)
    for (_, va), c in zip(splits, complement, strict=True):
        if c:
            cover[va] += 1
    total = sum(vals) if vals and bool((cover == 1).all()) else A.T @ A
    out, it = [], iter(vals)
    for (tr, va), c in zip(splits, complement, strict=True):
        out.append((total - next(it) if len(va) else total) if c else A[tr].T @ A[tr])
    return torch.stack(out), g, h


def _fold_quadratics(X: Tensor, Y: Tensor, splits, standardize: bool):
    """``G = Zc^T Zc / n``, ``B = Zc^T Yc / n`` per split from :func:`split_moments` (``Z``
    the inputs standardized on the split's training rows, ``c``: centered there), with the
    standardization (``x_mean``, ``x_std``), the inputs' and target's training means in
    the units the model sees (``zm``, ``ym``, for the bias)."""
    d = X.shape[1]
    M, g, h = split_moments(X, Y, splits)
    n = M[:, -1, -1]
    m, yb = M[:, :d, -1] / n[:, None], M[:, d:-1, -1] / n[:, None]
    Cxx = M[:, :d, :d] - n[:, None, None] * m[:, :, None] * m[:, None, :]
    Cxy = M[:, :d, d:-1] - n[:, None, None] * m[:, :, None] * yb[:, None, :]
    var = Cxx.diagonal(0, 1, 2)
    live = var > 1e-12 * M[:, :d, :d].diagonal(0, 1, 2)  # a constant column: exactly zero
    Cxx = Cxx * (live[:, :, None] & live[:, None, :])
    Cxy = Cxy * live[:, :, None]
    if standardize:
        sx = torch.where(live, (var / n[:, None]).sqrt(), 1.0)
        mx, zm = m + g, torch.zeros_like(m)
    else:
        sx, mx, zm = torch.ones_like(m), torch.zeros_like(m), m + g
    G = Cxx / (n[:, None, None] * sx[:, :, None] * sx[:, None, :])
    B = Cxy / (n[:, None, None] * sx[:, :, None])
    return G, B, mx, sx, zm, yb + h


def mse_path(X, Y, splits, strengths, coef: dict, *, standardize=True, fit_intercept=True,
             tol=TOL, max_iter=MAX_ITER) -> PathFit:  # fmt: skip
    """The path of ``mean((Z W^T + b - Y)**2) + s * P(W)`` (mean over rows and the ``k``
    outputs, ``Y`` raw) on every split: per fold ``G = Zc^T Zc / n`` and ``B = Zc^T Yc / n``
    of its training rows (:func:`_fold_quadratics`), then :func:`solve` with the penalty
    scaled by ``k/2``."""
    X = torch.as_tensor(X, dtype=torch.float64)
    Y = torch.as_tensor(Y, dtype=torch.float64, device=X.device).reshape(len(X), -1)
    k = Y.shape[1]
    if fit_intercept:
        G, B, mx, sx, zm, ym = _fold_quadratics(X, Y, splits, standardize)
    else:
        mx, sx = fold_scalings(X, splits, standardize)
        Zs = [(X[tr] - mx[f]) / sx[f] for f, (tr, _) in enumerate(splits)]
        G = torch.stack([Z.T @ Z / len(Z) for Z in Zs])
        B = torch.stack([Z.T @ Y[tr] / len(Z) for Z, (tr, _) in zip(Zs, splits, strict=True)])
        zm, ym = torch.zeros_like(mx), torch.zeros(len(splits), k, dtype=X.dtype, device=X.device)
    loss = Quadratic(G, B)
    rows = torch.as_tensor([len(tr) for tr, _ in splits], device=X.device)
    loss.rank = (rows - int(fit_intercept)).clamp_max(X.shape[1])  # of G: at most rows - 1
    base = Terms.of(torch.ones(len(splits), dtype=torch.float64, device=X.device), **coef)
    with _one_thread(G.numel() * k < SMALL_OPS, X.device):  # the solves: d x d per problem
        W, infos = _path(loss, base.scaled(k / 2), strengths, None, tol, max_iter)
    b = ym - torch.einsum("fd,sfdk->sfk", zm, W)
    return PathFit(W.transpose(2, 3), b, *_info(infos), mx, sx)


def ce_path(X, codes, n_classes, splits, strengths, coef: dict, *, standardize=True,
            tol=TOL, max_iter=MAX_ITER) -> PathFit:  # fmt: skip
    """The path of ``mean cross-entropy + s * P(W)`` on every split, for a model with one
    output per class; two classes are solved as the logistic model of ``v = w_1 - w_0``
    (:func:`binary_terms`) and returned as ``W = [-v/2, v/2]``."""
    X = torch.as_tensor(X, dtype=torch.float64)
    codes = torch.as_tensor(codes, dtype=torch.long, device=X.device)
    n, F = len(X), len(splits)
    mx, sx = fold_scalings(X, splits, standardize)
    ones = torch.ones(F, n, 1, dtype=X.dtype, device=X.device)
    Z1 = torch.cat([(X[None] - mx[:, None]) / sx[:, None], ones], -1)
    w = torch.zeros(F, n, dtype=X.dtype, device=X.device)
    for f, (tr, _) in enumerate(splits):
        w[f, tr] = 1.0 / len(tr)
    binary = n_classes == 2
    if binary:
        loss, coef = Logistic(Z1, (codes == 1).to(X.dtype)[:, None], w), binary_terms(coef)
    else:
        loss = Softmax(Z1, torch.nn.functional.one_hot(codes, n_classes).to(X.dtype), w)
    base = Terms.of(torch.ones(F, dtype=X.dtype, device=X.device), **coef)
    theta, infos = _path(loss, base, strengths, None, tol, max_iter)  # (S, F, d+1, K')
    if binary:
        theta = torch.cat([-theta / 2, theta / 2], -1)
    return PathFit(theta[:, :, :-1].transpose(2, 3), theta[:, :, -1], *_info(infos), mx, sx)


# ---------------------------------------------------------------------------- tp.sweep
def not_applicable(make_model, v) -> str | None:
    """Why ``solver="path"`` cannot serve this sweep, or None when it can: 2-D float
    features in memory, a model that is one trainable ``nn.Linear`` (or an
    ``nn.Sequential`` of one; with a bias for cross-entropy, one output per class), the
    penalty L1, L2, elastic net or group lasso and the loss ``"mse"`` or
    ``"cross_entropy"``."""
    from .closed_form import is_linear_model, linear_of
    from .stream import StreamedData

    if isinstance(v.X, StreamedData) or not v.tabular:
        return "2-D float features X (rows, features) held in memory"
    if v.loss not in ("mse", "cross_entropy"):
        return f"loss='mse' or 'cross_entropy' (got {v.loss!r})"
    if penalty_terms(v.penalty) is None:
        return f"penalty 'l1', 'l2', 'elastic_net' or 'group_lasso' (got {v.penalty.name!r})"
    model = v.probe(make_model)
    if not is_linear_model(model):
        return "a model that is one trainable nn.Linear (or nn.Sequential of one)"
    lin = linear_of(model)
    if v.loss == "cross_entropy":
        k = len(set(v.y.tolist()))
        if lin.bias is None or lin.out_features != k:
            return f"an nn.Linear with a bias and one output per class ({k})"
    return None


def chooses_path(make_model, v) -> bool:
    """``solver="auto"``: the path solver when it applies and training would aim at the
    same minimizer (the penalty as a gradient or proximal term, no early stopping, no
    resume); ``"path"`` insists (``ValueError`` saying what is missing); ``"train"`` and
    ``"closed_form"`` never."""
    from .closed_form import solver_chosen

    return solver_chosen("path", lambda: not_applicable(make_model, v), v, ("grad", "proximal"))


def fit_path(v, splits, *, tol: float = TOL, max_iter: int = MAX_ITER, fit_intercept=True):
    """:func:`mse_path` or :func:`ce_path` of the sweep's data, penalty and grid on
    ``splits`` (the last one may be the all-rows refit split), on ``v.options["device"]``."""
    coef = penalty_terms(v.penalty)
    dev = v.options.get("device", "cpu")
    X = torch.as_tensor(v.X, dtype=torch.float64, device=dev)
    tsplits = [(torch.as_tensor(tr, device=dev), torch.as_tensor(va, device=dev))
               for tr, va in splits]  # fmt: skip
    std = v.options["standardize"]
    if v.loss == "mse":
        return mse_path(X, v.y, tsplits, v.grid, coef, standardize=std, tol=tol,
                        max_iter=max_iter, fit_intercept=fit_intercept)  # fmt: skip
    classes, codes = np.unique(v.y, return_inverse=True)
    return ce_path(X, codes, len(classes), tsplits, v.grid, coef, standardize=std, tol=tol,
                   max_iter=max_iter)  # fmt: skip


def path_records(v, splits, fit: PathFit) -> list:
    """One :class:`~torchpenalty.sweep.engine.Record` per (strength, fold) of the first
    ``len(splits)`` folds: validation and training loss in the data's units (mean squared
    error over rows and outputs, or mean cross-entropy, with accuracy), the weight's norm
    and fraction of exact zeros. Every fold and strength in a few batched operations."""
    from .engine import Record

    F = len(splits)
    X = torch.as_tensor(v.X, dtype=torch.float64, device=fit.weight.device)
    if fit.x_mean is None:
        mx, sx = fold_scalings(X, splits, v.options["standardize"])
    else:
        mx, sx = fit.x_mean[:F], fit.x_std[:F]
    W, bias = fit.weight[:, :F], fit.bias[:, :F]
    g = X.mean(0)  # (X - mx)/sx W^T + b = (X - g) Wr^T + b - ((mx - g)/sx) W^T, Wr = W/sx
    Wr = W / sx[None, :, None]
    shift = bias - torch.einsum("fd,sfkd->sfk", (mx - g) / sx, W)
    out = torch.einsum("nd,sfkd->sfnk", X - g, Wr) + shift[:, :, None]  # (S, F, n, k)
    ce = v.loss == "cross_entropy"
    if ce:
        t = torch.as_tensor(np.unique(v.y, return_inverse=True)[1], device=X.device)
        per = (
            torch.logsumexp(out, -1) - out.gather(-1, t.expand(*out.shape[:-1])[..., None])[..., 0]
        )
        hit = (out.argmax(-1) == t).double()
    else:
        t = torch.as_tensor(v.y, dtype=torch.float64, device=X.device).reshape(len(X), -1)
        per = (out - t).pow(2).mean(-1)
    va = torch.zeros(F, len(X), dtype=torch.float64, device=X.device)
    for f, (_, rows) in enumerate(splits):
        va[f, torch.as_tensor(rows, device=X.device)] = 1.0
    n_va, n_tr = va.sum(1), (1 - va).sum(1)
    has_va = (n_va > 0).tolist()
    val = (per * va).sum(-1) / n_va  # NaN where a fold has no rows
    train = (per * (1 - va)).sum(-1) / n_tr
    acc = ((hit * va).sum(-1) / n_va).tolist() if ce else None
    norm = W.flatten(2).norm(dim=-1).tolist()
    zeros = (W == 0).flatten(2).double().mean(-1).tolist()
    val, train = val.tolist(), train.tolist()
    records = []
    for i, s in enumerate(v.grid):
        for f in range(F):
            a = acc[i][f] if ce and has_va[f] else None
            records.append(Record(i=i, fold=f, strength=float(s), val_loss=val[i][f],
                                  train_loss=train[i][f], param_norm=norm[i][f],
                                  zero_fraction=zeros[i][f], best_epoch=0, val_accuracy=a,
                                  history={"train": [train[i][f]], "val": [val[i][f]]}))  # fmt: skip
    return records


@contextlib.contextmanager
def _one_thread(on: bool, device=None):
    """Run the block in one CPU thread when ``on`` (and the work is on the CPU): for
    operations too small to share, where a second thread only adds its wake-up and
    barrier (on a loaded machine, many times the operation itself)."""
    if not on or torch.device(device or "cpu").type != "cpu" or torch.get_num_threads() == 1:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _few_threads(v, small: int = 50_000):
    """:func:`_one_thread` for small problems (``rows * features < small``)."""
    return _one_thread(v.X.shape[0] * v.X.shape[1] < small, v.options.get("device", "cpu"))


def sweep_path(make_model, v, splits):
    """The sweep's result solved along the path on the training path's ``splits`` plus
    the all-rows refit split: the same table and selection rules, ``best_epoch`` 0,
    one-point learning curves; the refit is the all-rows solution at the chosen strength
    (no second solve). ``settings`` records ``solver="path"``, ``tol`` and, per strength,
    whether every fold converged (``converged``); a strength that did not warns."""
    from .closed_form import linear_of, path_model, solved_settings
    from .result import SweepResult, describe_model

    o = v.options
    n = len(v.X)
    model = v.probe(make_model)
    has_bias = linear_of(model).bias is not None
    full = [*splits, (np.arange(n), np.array([], dtype=np.int64))]
    with _few_threads(v):
        fit = fit_path(v, full, tol=TOL, max_iter=MAX_ITER, fit_intercept=has_bias)
        records = path_records(v, splits, fit)
    converged = fit.converged[:, : len(splits)].all(1).tolist()
    kkt = [float(k) for k in fit.kkt[:, : len(splits)].amax(1)]
    settings = solved_settings(v, "path", tol=TOL, converged=converged, kkt=kkt)
    if getattr(v, "groups", None) is not None:
        settings["groups"] = len(np.unique(v.groups))
    bad = [s for s, c in zip(v.grid, converged, strict=True) if not c]
    if bad:
        warnings.warn(f"the path solver did not reach its KKT tolerance {TOL:g} at strengths "
                      f"{', '.join(f'{s:.3g}' for s in bad)}", RuntimeWarning, stacklevel=3)  # fmt: skip
    classes = np.unique(v.y).tolist() if v.loss == "cross_entropy" else None
    result = SweepResult(v.grid, o["folds"], records, settings, classes=classes,
                         model_name=describe_model(model))  # fmt: skip
    result.path_fit = {"weight": fit.weight[:, -1].cpu(), "bias": fit.bias[:, -1].cpu(),
                       "x_mean": fit.x_mean[-1].cpu(), "x_std": fit.x_std[-1].cpu(),
                       "make_model": make_model, "model_at": path_model}  # fmt: skip
    if o["refit"] and result.chosen_strength is not None:
        result.refit_at = o["refit"]
        result.model = path_model(result, result.chosen_strength)
    return result
