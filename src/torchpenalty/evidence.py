"""The evidence: per-layer L2 strengths from a Laplace approximation of the marginal
likelihood, inside the user's own training loop (MacKay 1992; Immer et al., ICML 2021,
"Scalable marginal likelihood estimation for model selection in deep learning").

The model. Each group ``g`` of regularized weights (one per penalty of the
:class:`~torchpenalty.Regularizer`; build it with :func:`per_layer` for one per layer)
gets a Gaussian prior ``N(0, 1/lambda_g)``. The likelihood is the loss read as a
negative log-likelihood: ``"cross_entropy"``: ``-log p(D|w) = sum_i CE_i``;
``"mse"``: Gaussian noise of precision ``beta`` on each of the ``N = n * k`` targets,
``-log p(D|w) = beta/2 * SSE - N/2 * log(beta / 2 pi)``; ``beta`` is estimated too.

The Laplace approximation at the current weights ``w`` (assumed near the posterior mode)::

    log Z(lambda, beta) = log p(D|w) + sum_g [P_g/2 * log lambda_g - lambda_g/2 * |w_g|^2]
                          - 1/2 * log det(H(beta) + diag(lambda))

with ``P_g`` the number of weights in group ``g`` and ``H`` the generalized Gauss-Newton
(GGN) matrix of ``-log p(D|w)`` (for cross-entropy the GGN equals the Fisher).
``ev.update(data)`` computes ``H`` once per call, then takes ``steps`` Adam steps on
``log lambda_g`` (and ``log beta``) maximizing ``log Z`` with ``H`` fixed (cheap: the
log-determinant comes from cached eigenvalues), as laplace-torch's ``marglik_training``
does, and writes the strengths into the Regularizer.

Curvature: Kronecker-factored (KFAC) GGN blocks, one per ``nn.Linear`` or ``nn.Conv2d``
weight: ``H_W ~ A (x) G`` with ``A = sum_rows a a^T`` (the layer's inputs; for a
convolution its unfolded patches, one row per output position, Grosse & Martens' KFC) and
``G = mean_rows sum_c g_c g_c^T``, where ``g_c`` is the gradient at the layer's output of
the model's output in the direction of the ``c``-th column of a square root of the loss
Hessian (``sqrt(beta) e_c`` for MSE; ``sqrt(p_c) (e_c - p)`` for softmax cross-entropy,
or a Monte-Carlo sample with ``mc_samples``). The log-determinant is exact for the
Kronecker form: ``sum_ij log(beta a_i g_j + lambda)`` over the eigenvalues of ``A`` and
``G``. Why Kronecker and not diagonal: for a linear model with MSE the output Hessian is
the constant ``beta * I``, so ``A (x) G`` *is* the exact Hessian (a diagonal GGN drops the
correlations between inputs and gives a different evidence and strength), and the
Laplace evidence of a linear-Gaussian model is exact: ``nn.Linear`` + MSE reproduces
scikit-learn's ``BayesianRidge``. KFAC also scales to wide layers (two small
eigendecompositions per layer, no ``P x P`` matrix). Other regularized parameters
(grouped convolutions, embeddings, norm scales taken in with ``include=``) are refused with their
names; leave them out of the Regularizer (``exclude=``) to use the evidence. Rows that
share a weight (positions of a convolution, tokens of a sequence) are counted as rows of
``A`` and averaged in ``G`` (the "expand" form of Eschenhagen et al., 2023). Checked
against laplace-torch's ``KronLaplace`` (same log evidence to 4 decimals on an MLP and a
CNN; ``tools/evidence_vs_laplace_torch.py``).

Parameters the rule leaves out (biases, norm scales) get no prior. They are held at
their current values (conditioned on, a type-II maximum-likelihood estimate), except
the bias of a layer whose weight is regularized: it is integrated out under a
flat prior, which for the Kronecker form is the Schur complement: ``A`` becomes the
centered ``sum_rows (a - mean a)(a - mean a)^T``. Its own ``lambda``-free factor
``det(H_bb)`` is left out, as ``BayesianRidge`` does when it centers the data.

Strengths the evidence cannot tell apart. If multiplying a layer's weight and bias by
``c`` (and dividing the next layer's weight by ``c``) leaves the model's function unchanged
(a ReLU or linear chain without normalization; a layer followed by a normalization, alone),
``log Z`` takes the same value at ``lambda_i / c**2, lambda_j * c**2``: only the product is
determined. Updated at fixed weights, the split drifts along that flat direction at every
update without end (for a ReLU MLP the first layer's strength up, the last one's down), so
:meth:`Evidence.update` finds these rescalings on its first call (``c = 2`` on the first
rows, in eval mode) and keeps the ratio of those strengths as they started
(``Evidence.symmetries``): a ReLU MLP started from one strength keeps one strength.

Strength convention. With our ``L2(s) = s/2 * sum w**2`` added to a MEAN loss ``L``:

* MSE (``L = SSE / N``, the mean over all ``N = n * k`` targets):
  ``-log posterior = beta/2 * SSE + sum_g lambda_g/2 |w_g|^2 = (beta N / 2) (L + sum_g s_g/2 |w_g|^2)``,
  so ``s_g = 2 * lambda_g / (beta * n * k)`` (``BayesianRidge``: ``s = 2 lambda_ / (alpha_ n)``);
* cross-entropy (``L = sum_i CE_i / n``): ``s_g = lambda_g / n``.

See :func:`to_strength`. The conversion needs ``n_data``: the number of training rows
the user's loss averages over.

>>> import torch, torchpenalty as tp
>>> from torch import nn
>>> torch.manual_seed(0) and None
>>> X = torch.randn(200, 5); y = X @ torch.tensor([1.0, -2.0, 0.0, 0.5, 0.0]) + 0.3 * torch.randn(200)
>>> model = nn.Linear(5, 1)
>>> reg = tp.Regularizer(model, tp.L2(1e-3))
>>> ev = tp.Evidence(reg, loss="mse", n_data=200)
>>> opt = torch.optim.LBFGS(model.parameters(), max_iter=100, line_search_fn="strong_wolfe")
>>> def closure():
...     opt.zero_grad()
...     loss = nn.functional.mse_loss(model(X).squeeze(-1), y) + reg()
...     loss.backward()
...     return loss
>>> for _ in range(5):
...     _ = opt.step(closure)
...     _ = ev.update((X, y))
>>> round(1 / ev.noise_precision ** 0.5, 1)   # the noise level, 0.3
0.3
>>> list(ev.strengths) == ["weight"] and 0 < ev.strengths["weight"] < 0.1
True
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from ._validation import (
    check_choice,
    check_config,
    check_int,
    check_positive,
    check_strength,
    type_error,
)
from .penalties import L2, Penalty
from .regularizer import Regularizer
from .select import Matcher, matches, select

__all__ = [
    "Evidence",
    "EvidenceResult",
    "fit_evidence",
    "per_layer",
    "set_strengths",
    "to_prior_precision",
    "to_strength",
]

_LOG_2PI = math.log(2 * math.pi)


# ---------------------------------------------------------------------- conversions
def to_strength(
    prior_precision: float,
    *,
    n_data: int,
    loss: str = "mse",
    noise_precision: float = 1.0,
    n_outputs: int = 1,
) -> float:
    """Our ``L2`` strength on a MEAN loss from a Gaussian prior precision ``lambda``.

    ``"mse"``: ``s = 2 * lambda / (noise_precision * n_data * n_outputs)`` (the loss is the
    mean over all ``n_data * n_outputs`` targets); ``"cross_entropy"``:
    ``s = lambda / n_data`` (``noise_precision`` and ``n_outputs`` are not used).
    scikit-learn ``BayesianRidge`` (``lambda_``, ``alpha_``) maps to
    ``to_strength(lambda_, n_data=n, noise_precision=alpha_)``.

    >>> to_strength(4.0, n_data=100, noise_precision=2.0)   # 2 * 4 / (2 * 100)
    0.04
    >>> to_strength(4.0, n_data=100, loss="cross_entropy")
    0.04
    """
    loss = check_choice("loss", loss, ("mse", "cross_entropy"))
    lam = check_strength("prior_precision", prior_precision)
    n = check_int("n_data", n_data, minimum=1)
    if loss == "cross_entropy":
        return lam / n
    beta = check_positive("noise_precision", noise_precision)
    k = check_int("n_outputs", n_outputs, minimum=1)
    return 2.0 * lam / (beta * n * k)


def to_prior_precision(
    strength: float,
    *,
    n_data: int,
    loss: str = "mse",
    noise_precision: float = 1.0,
    n_outputs: int = 1,
) -> float:
    """The inverse of :func:`to_strength`.

    >>> to_prior_precision(0.04, n_data=100, noise_precision=2.0)
    4.0
    """
    s = check_strength("strength", strength)
    unit = to_strength(1.0, n_data=n_data, loss=loss, noise_precision=noise_precision,
                       n_outputs=n_outputs)  # fmt: skip
    return s / unit


# ---------------------------------------------------------------------- regularizer access
def _escape(name: str) -> str:
    """``name`` as an fnmatch pattern that matches only itself."""
    return re.sub(r"([*?\[])", r"[\1]", name)


def per_layer(
    model: nn.Module,
    strength: float = 1e-4,
    *,
    include: Matcher | None = None,
    exclude: Matcher | None = None,
) -> Regularizer:
    """A :class:`~torchpenalty.Regularizer` with one ``L2(strength)`` per selected
    parameter (so that the evidence can give each layer its own strength).

    >>> from torch import nn
    >>> reg = per_layer(nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 1)))
    >>> reg.names
    ['0.weight', '2.weight']
    """
    s = check_strength("strength", strength)
    names = [n for n, _ in select(model, include=include, exclude=exclude)]
    if not names:
        raise ValueError(f"model must have parameters to regularize, got none in {model!r}")
    rules = {_escape(n): L2(s) for n in names}
    return Regularizer(model, rules, include=include, exclude=exclude)


def _groups(reg: Regularizer) -> list[tuple[Penalty, list[str], list[nn.Parameter]]]:
    """The regularized parameters of ``reg`` grouped by the penalty object that covers them
    (the Regularizer's first-matching-key rule), in model order."""
    if not isinstance(reg, Regularizer):
        raise type_error("reg", "a torchpenalty.Regularizer", reg)
    rules = [("*", reg.penalty)] if isinstance(reg.penalty, Penalty) else list(reg.penalty.items())
    modules = dict(reg.model.named_modules(remove_duplicate=False))
    out: dict[int, tuple[Penalty, list[str], list[nn.Parameter]]] = {}
    for name, p in reg.named_parameters():
        owner = modules.get(name.rpartition(".")[0], reg.model)
        pen = next((q for key, q in rules if matches(key, name, p, owner)), None)
        if pen is None:  # a name whose owner we cannot find (several parametrization originals)
            raise ValueError(f"reg must map each parameter to one penalty, got none for {name!r}")
        g = out.setdefault(id(pen), (pen, [], []))
        g[1].append(name)
        g[2].append(p)
    return list(out.values())


def set_strengths(reg: Regularizer, strengths: Mapping[str, float]) -> None:
    """Set the L2 strengths of ``reg`` by parameter name: checks that the names are
    regularized and their penalties are ``tp.L2``, then calls
    :meth:`Regularizer.set_strengths <torchpenalty.Regularizer.set_strengths>`.

    Names share a strength when one penalty covers them (build ``reg`` with
    :func:`per_layer` for one per parameter); such names must get equal values. The new
    strengths take effect at once in every mode (loss, grad, decoupled).

    >>> import torch, torchpenalty as tp
    >>> net = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 1))
    >>> reg = per_layer(net, 0.0)
    >>> with torch.no_grad():
    ...     _ = net[0].weight.fill_(1.0); _ = net[1].weight.fill_(2.0)
    >>> set_strengths(reg, {"0.weight": 0.5, "1.weight": 0.1})
    >>> round(reg.value(), 6)   # 0.5/2 * 4 + 0.1/2 * 8
    1.4
    """
    if not isinstance(strengths, Mapping):
        raise type_error("strengths", "a dict of parameter names to strengths", strengths)
    groups = _groups(reg)
    where = {n: i for i, (_, names, _) in enumerate(groups) for n in names}
    for name in strengths:
        if name not in where:
            raise ValueError(
                f"strengths keys must be names of regularized parameters {sorted(where)}, "
                f"got {name!r}"
            )
    for name in strengths:
        _check_l2(groups[where[name]])
    try:
        reg.set_strengths(strengths)
    except ValueError as e:
        if "share one penalty" in str(e):  # the evidence's remedy
            raise ValueError(
                f"{e}; build the Regularizer with torchpenalty.evidence.per_layer(model) "
                "for one penalty per parameter"
            ) from None
        raise


def _check_l2(group: tuple[Penalty, list[str], list[nn.Parameter]]) -> None:
    pen, names, _ = group
    if not getattr(pen, "gaussian_prior", False):
        raise ValueError(f"reg must apply tp.L2 penalties for the evidence, got {pen!r} on {names}")


# ---------------------------------------------------------------------- curvature
@dataclass
class _Block:
    """One regularized tensor: the weight (or bias) of an ``nn.Linear`` or ``nn.Conv2d``."""

    group: int
    module: nn.Module
    is_bias: bool


def _supported(m: nn.Module) -> bool:
    if isinstance(m, nn.Linear):
        return True
    return isinstance(m, nn.Conv2d) and m.groups == 1 and m.padding_mode == "zeros"


def _blocks(reg: Regularizer, groups: list) -> list[_Block]:
    layers = [m for m in reg.model.modules() if _supported(m)]
    out, bad = [], []
    for gi, (_, names, params) in enumerate(groups):
        for name, p in zip(names, params, strict=True):
            m = next((m for m in layers if m.weight is p or m.bias is p), None)
            if m is None:
                bad.append(name)
            else:
                out.append(_Block(gi, m, m.bias is p))
    if bad:
        raise ValueError(
            "reg must regularize only weights and biases of nn.Linear and nn.Conv2d (groups=1, "
            f"zero padding) layers for the evidence (Kronecker-factored curvature), got {bad}; "
            "leave them out with exclude="
        )
    return out


def _input_rows(m: nn.Module, a: Tensor) -> Tensor:
    """The layer's inputs as rows ``a`` of ``W @ a`` (a convolution's unfolded patches)."""
    if isinstance(m, nn.Conv2d):
        patches = nn.functional.unfold(
            a, m.kernel_size, dilation=m.dilation, padding=m.padding, stride=m.stride
        )  # (B, in * kh * kw, positions)
        return patches.transpose(1, 2).reshape(-1, patches.shape[1])
    return a.reshape(-1, a.shape[-1])


def _output_rows(m: nn.Module, g: Tensor) -> Tensor:
    if isinstance(m, nn.Conv2d):  # (B, out, H, W) -> (B * H * W, out)
        return g.flatten(2).transpose(1, 2).reshape(-1, g.shape[1])
    return g.reshape(-1, g.shape[-1])


def _directions(out: Tensor, loss: str, mc_samples: int | None, gen: torch.Generator | None):
    """Columns ``v_c`` of a square root of the loss Hessian at ``out`` (per row): their
    outer products sum to ``I`` (MSE, unit noise) or ``diag(p) - p p^T`` (cross-entropy)."""
    if loss == "mse":
        flat = out.reshape(len(out), -1)
        for c in range(flat.shape[1]):
            v = torch.zeros_like(flat)
            v[:, c] = 1.0
            yield v.reshape(out.shape)
        return
    p = torch.softmax(out.detach().double(), dim=-1)
    eye = torch.eye(p.shape[-1], dtype=p.dtype, device=p.device)
    if mc_samples is None:
        for c in range(p.shape[-1]):
            yield (p[:, c : c + 1].sqrt() * (eye[c] - p)).to(out.dtype)
        return
    for _ in range(mc_samples):
        draw = torch.multinomial(p.cpu(), 1, generator=gen).squeeze(-1).to(p.device)
        yield ((eye[draw] - p) / math.sqrt(mc_samples)).to(out.dtype)


@dataclass
class _Curvature:
    data_term: float = 0.0  # SSE (MSE) or sum of cross-entropies
    rows: int = 0  # data rows seen
    targets: int = 0  # scalar targets seen (MSE)
    A: dict[int, Tensor] = field(default_factory=dict)
    a_sum: dict[int, Tensor] = field(default_factory=dict)
    n_a: dict[int, int] = field(default_factory=dict)
    G: dict[int, Tensor] = field(default_factory=dict)


def _accumulate(cur: _Curvature, key: int, name: str, x: Tensor) -> None:
    x = x.detach().double()
    if name == "A":
        cur.A[key] = cur.A.get(key, 0) + x.T @ x
        cur.a_sum[key] = cur.a_sum.get(key, 0) + x.sum(0)
        cur.n_a[key] = cur.n_a.get(key, 0) + len(x)
    else:
        cur.G[key] = cur.G.get(key, 0) + x.T @ x


def _batch(model, layers, x, y, loss, cur, mc_samples, gen) -> None:
    calls: list[tuple[nn.Module, Tensor, Tensor]] = []

    def hook(mod: nn.Module, inp: tuple[Tensor, ...], out: Tensor) -> None:
        calls.append((mod, inp[0], out))

    handles = [m.register_forward_hook(hook) for m in layers]
    try:
        with torch.enable_grad():
            out = model(x)
    finally:
        for h in handles:
            h.remove()
    with torch.no_grad():
        if loss == "mse":
            o, t = out.reshape(len(x), -1), y.reshape(len(x), -1).to(out.dtype)
            if o.shape != t.shape:
                raise ValueError(
                    f"y must have the model's output shape {tuple(o.shape)}, got {tuple(t.shape)}"
                )
            cur.data_term += float(((o - t).double() ** 2).sum())
            cur.targets += t.numel()
        else:
            if out.ndim != 2:
                raise ValueError(
                    f"model output must be (rows, classes) logits, got shape {tuple(out.shape)}"
                )
            cur.data_term += float(nn.functional.cross_entropy(out.double(), y, reduction="sum"))
    cur.rows += len(x)
    live = [(m, a, o) for m, a, o in calls if o.requires_grad]
    for m, a, _ in live:
        _accumulate(cur, id(m), "A", _input_rows(m, a.detach()))
    outs = [o for _, _, o in live]
    for v in _directions(out, loss, mc_samples, gen):
        grads = torch.autograd.grad(out, outs, grad_outputs=v, retain_graph=True, allow_unused=True)
        for (m, _, _), g in zip(live, grads, strict=True):
            if g is not None:
                _accumulate(cur, id(m), "G", _output_rows(m, g))


def _batches(
    data: Any, batch_size: int, device: torch.device, dtype: torch.dtype
) -> Iterable[tuple[Tensor, Tensor]]:
    """Batches of ``data``; a pair ``(X, y)`` (tensors or arrays) is cut into batches and
    its floating ``X`` cast to the model's ``dtype`` (NumPy arrays are float64)."""
    if (
        isinstance(data, (tuple, list))
        and len(data) == 2
        and hasattr(data[0], "__len__")
        and not isinstance(data[0], (tuple, list))
    ):
        X, y = (torch.as_tensor(np.asarray(v)) if not isinstance(v, Tensor) else v for v in data)
        if X.is_floating_point():
            X = X.to(dtype)
        if len(X) != len(y):
            raise ValueError(
                f"data must be (X, y) of equal lengths, got {len(X)} and {len(y)} rows"
            )
        for i in range(0, len(X), batch_size):
            yield _checked(X[i : i + batch_size].to(device), y[i : i + batch_size].to(device))
        return
    if isinstance(data, torch.utils.data.Dataset) and not isinstance(data, Iterable):
        data = torch.utils.data.DataLoader(data, batch_size=batch_size)  # map-style
    if not isinstance(data, Iterable):
        raise type_error("data", "a DataLoader of (x, y) batches, a Dataset or a pair (X, y)", data)
    for item in data:
        if not isinstance(item, (tuple, list)) or len(item) < 2:
            raise type_error("data batches", "(x, y) pairs", type(item).__name__)
        if not all(isinstance(t, Tensor) for t in item[:2]):
            raise type_error("data batches", "(x, y) pairs of tensors", type(item[0]).__name__)
        yield _checked(item[0].to(device), item[1].to(device))


def _checked(x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    """A batch of ``data``: as many targets as rows, finite numbers (a NaN reached the
    curvature's eigensolver and raised there)."""
    if x.ndim == 0 or y.ndim == 0 or len(x) != len(y):
        raise ValueError(f"data batches must hold one target per row, got x of shape "
                         f"{tuple(x.shape)} and y of shape {tuple(y.shape)}")  # fmt: skip
    for name, t in (("x", x), ("y", y)):
        if t.is_complex() or (t.is_floating_point() and not bool(torch.isfinite(t).all())):
            raise ValueError(f"data must hold finite real numbers, got non-finite values in {name}")
    return x, y


@dataclass
class _Problem:
    """What the hyperparameter objective needs from one curvature pass (float64 NumPy):
    each block's GGN eigenvalues at unit noise (``eig``) with their group (``group``),
    ``|w_g|^2`` and ``P_g`` per group, the data term (SSE or summed cross-entropy) and the
    number of scalar targets ``N``, all scaled to ``n_data`` rows."""

    eig: np.ndarray
    group: np.ndarray
    sq_norms: np.ndarray
    sizes: np.ndarray
    data_term: float
    n_targets: float
    mse: bool


def _log_evidence(x: np.ndarray, pb: _Problem) -> tuple[float, np.ndarray]:
    """``log Z`` (module docstring) at ``x = [log lambda_1..G (, log beta)]`` and its
    gradient in ``x`` (closed form: ``d/d log lambda_g = P_g/2 - lambda_g |w_g|^2 / 2 -
    lambda_g/2 * sum_g 1/(beta e + lambda_g)``; ``d/d log beta = N/2 - beta SSE/2 -
    beta/2 * sum e/(beta e + lambda)``)."""
    n_groups = len(pb.sizes)
    log_lam = x[:n_groups]
    lam = np.exp(log_lam)
    beta = math.exp(x[n_groups]) if pb.mse else 1.0
    denom = beta * pb.eig + lam[pb.group]
    if pb.mse:
        fit = -0.5 * beta * pb.data_term + 0.5 * pb.n_targets * (x[n_groups] - _LOG_2PI)
    else:
        fit = -pb.data_term
    value = fit + np.sum(0.5 * pb.sizes * log_lam - 0.5 * lam * pb.sq_norms)
    value -= 0.5 * np.sum(np.log(denom))
    inv = 1.0 / denom
    grad = np.empty_like(x)
    per_group = np.bincount(pb.group, weights=inv, minlength=n_groups)
    grad[:n_groups] = 0.5 * pb.sizes - 0.5 * lam * pb.sq_norms - 0.5 * lam * per_group
    if pb.mse:
        grad[n_groups] = 0.5 * pb.n_targets - 0.5 * beta * pb.data_term
        grad[n_groups] -= 0.5 * beta * np.sum(pb.eig * inv)
    return float(value), grad


class _Adam:
    """Adam ascent on a small float64 vector (torch.optim.Adam's update, defaults), its
    steps kept orthogonal to the rows of ``fixed`` (an orthonormal basis of directions the
    evidence cannot determine, :func:`_symmetries`; padded with zeros for ``log beta``)."""

    def __init__(self, x: np.ndarray, lr: float) -> None:
        self.x, self.lr = x, lr
        self.m, self.v, self.t = np.zeros_like(x), np.zeros_like(x), 0

    def ascend(
        self, grad: np.ndarray, fixed: np.ndarray | None = None, b1: float = 0.9, b2: float = 0.999
    ) -> None:
        def project(u: np.ndarray) -> np.ndarray:
            if fixed is None or not len(fixed):
                return u
            q = np.zeros((len(fixed), len(u)))
            q[:, : fixed.shape[1]] = fixed
            return u - q.T @ (q @ u)

        grad = project(grad)
        self.t += 1
        self.m = b1 * self.m + (1 - b1) * grad
        self.v = b2 * self.v + (1 - b2) * grad**2
        m_hat = self.m / (1 - b1**self.t)
        v_hat = self.v / (1 - b2**self.t)
        self.x = self.x + project(self.lr * m_hat / (np.sqrt(v_hat) + 1e-8))


# ---------------------------------------------------------------------- symmetries
def _rescaled_output(model: nn.Module, x: Tensor, ups: list[Tensor], downs: list[Tensor]) -> Tensor:
    """``model(x)`` with ``ups`` doubled and ``downs`` halved (exact in binary floating
    point), through ``torch.func.functional_call``: the model's parameters are not touched."""
    names = {id(p): n for n, p in model.named_parameters()}
    scaled = {names[id(p)]: p * 2.0 for p in ups}
    scaled.update({names[id(p)]: p / 2.0 for p in downs})
    return torch.func.functional_call(model, scaled, (x,))


@torch.no_grad()
def _symmetries(
    model: nn.Module, blocks: list[_Block], n_groups: int, x: Tensor
) -> tuple[np.ndarray, list[np.ndarray]] | None:
    """Directions in ``log lambda`` that the evidence cannot determine: the rows of an
    orthonormal basis ``(r, n_groups)`` and the directions found (entries +-1 per group);
    ``None`` when ``model(x)`` is the same for every row (nothing can be told; the next
    update tries again).

    A rescaling ``W_i, b_i -> c W_i, c b_i`` (and ``W_j -> W_j / c`` for another layer ``j``)
    that leaves ``model(x)`` unchanged (a ReLU or linear chain; a layer followed by a
    normalization, alone) leaves the log evidence unchanged when each regularized tensor's
    ``lambda`` moves by ``c**-2`` (resp. ``c**2``): the evidence is flat along that
    direction of ``log lambda``, the updates at fixed weights drift along it without end,
    so the steps are kept orthogonal to it (the ratio stays as it started). Checked on
    ``x`` in eval mode (a batch norm's running statistics break the invariance there, so
    it is not found) with ``c = 2``, for each layer alone and with each neighbour in the
    model's order (3 forward passes per layer at most; in a chain, the neighbours'
    rescalings generate the others)."""
    group = {}
    for b in blocks:
        group[id(b.module.bias if b.is_bias else b.module.weight)] = b.group
    layers = list({id(b.module): b.module for b in blocks}.values())
    base = model(x)
    if torch.equal(base, base[:1].expand_as(base)):
        return None  # the same output for every row (a zero head, dead units): undecided
    tol = 1e-6 * float(base.abs().max())
    dirs = []
    for i, m in enumerate(layers):
        ups = [p for p in (m.weight, m.bias) if p is not None]
        for partner in [None, *(layers[j] for j in (i - 1, i + 1) if 0 <= j < len(layers))]:
            downs = [] if partner is None else [partner.weight]
            d = np.zeros(n_groups)
            for p, sign in [(p, 1.0) for p in ups] + [(p, -1.0) for p in downs]:
                if id(p) in group:
                    d[group[id(p)]] += sign
            if not d.any():
                continue
            out = _rescaled_output(model, x, ups, downs)
            if torch.allclose(out, base, rtol=1e-5, atol=tol):
                dirs.append(d)
    if not dirs:
        return np.zeros((0, n_groups)), dirs
    _, sv, vt = np.linalg.svd(np.array(dirs))
    return vt[: int(np.sum(sv > 1e-9 * sv[0]))], dirs


class Evidence:
    """Per-layer L2 strengths from the Laplace evidence, updated inside your training loop.

    Args:
        reg: a :class:`~torchpenalty.Regularizer` of ``tp.L2`` penalties on ``nn.Linear``
            and ``nn.Conv2d`` weights (biases too if you regularize them); one prior precision per penalty
            object (:func:`per_layer` builds one per layer).
        loss: ``"mse"`` (the mean over all targets; the noise precision is estimated) or
            ``"cross_entropy"`` (logits of shape ``(rows, classes)``, integer labels).
        n_data: rows of the training set (the loss's mean runs over them).
        steps, lr: Adam steps on the log precisions per :meth:`update` and their step size
            (laplace-torch's ``marglik_training`` defaults: 10 and 0.1).
        batch_size: rows per forward pass when :meth:`update` gets ``(X, y)``.
        mc_samples: ``None``: the exact GGN (one backward pass per output); an integer:
            a Monte-Carlo estimate of the cross-entropy Fisher with that many samples per
            row (for many classes).

    ``update(data)`` computes the curvature on ``data`` (the training set or a subset of
    it: sums are rescaled to ``n_data`` rows), takes the steps and writes the strengths
    into ``reg``. The model should be near a minimum of the regularized loss: call it
    every few epochs, not before the first. The formula, the choice of curvature and the
    conversion ``s_g = 2 lambda_g / (beta n k)`` (MSE) / ``lambda_g / n`` (cross-entropy)
    are in the module docstring; see there for an example.

    Attributes: ``strengths`` (parameter name -> strength), ``prior_precisions`` (name ->
    ``lambda``), ``noise_precision`` (MSE; ``None`` for cross-entropy), ``log_evidence``
    (one value per update, nats, at the updated hyperparameters), ``history`` (one dict per
    update), ``symmetries`` (rescalings whose strengths keep their starting ratio; module
    docstring).

    >>> import torch, torchpenalty as tp
    >>> from torch import nn
    >>> from torchpenalty.evidence import per_layer
    >>> _ = torch.manual_seed(0)
    >>> model = nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 1))
    >>> X = torch.randn(64, 3); y = X.sum(1, keepdim=True)
    >>> reg = per_layer(model, 1e-3)  # one tp.L2 per weight
    >>> ev = tp.Evidence(reg, loss="mse", n_data=64)
    >>> log_z = ev.update((X, y))  # usually every few epochs of your loop
    >>> sorted(ev.strengths), len(ev.log_evidence), ev.noise_precision > 0
    (['0.weight', '2.weight'], 1, True)
    """

    def __init__(
        self,
        reg: Regularizer,
        loss: str = "mse",
        n_data: int | None = None,
        *,
        steps: int = 10,
        lr: float = 0.1,
        batch_size: int = 1024,
        mc_samples: int | None = None,
        seed: int = 0,
    ) -> None:
        self.loss = check_choice("loss", loss, ("mse", "cross_entropy"))
        if n_data is None:
            raise TypeError("n_data must be the number of training rows, got None")
        self.n_data = check_int("n_data", n_data, minimum=1)
        self.steps = check_int("steps", steps, minimum=0)
        self.lr = check_positive("lr", lr)
        self.batch_size = check_int("batch_size", batch_size, minimum=1)
        if mc_samples is not None:
            mc_samples = check_int("mc_samples", mc_samples, minimum=1)
        self.mc_samples = mc_samples
        self.reg = reg
        self._groups = _groups(reg)
        if not self._groups:
            raise ValueError(f"reg must regularize at least one parameter, got none in {reg!r}")
        for g in self._groups:
            _check_l2(g)
        self._blocks = _blocks(reg, self._groups)
        self._gen = torch.Generator().manual_seed(check_int("seed", seed))
        self._opt: _Adam | None = None
        self._fixed: np.ndarray | None = None  # _symmetries, found on the first update
        self._found: list[np.ndarray] = []
        self.n_outputs: int = 1
        self.noise_precision: float | None = None
        self.log_evidence: list[float] = []
        self.history: list[dict[str, Any]] = []

    # ------------------------------------------------------------------ results
    @property
    def symmetries(self) -> list[dict[str, int]]:
        """Rescalings that leave the model's function unchanged, found on the first update
        (empty before): each a dict ``name -> +1`` (weights, and their biases, multiplied by
        ``c``; +2 where a weight and its bias share a penalty) / ``-1`` (divided by ``c``),
        one name per group. The evidence is flat along
        them (see :func:`_symmetries`), so the updates keep these strengths' ratios as they
        started: for a ReLU MLP without normalization, one strength for all its layers."""
        names = [names[0] for _, names, _ in self._groups]
        return [{names[g]: int(v) for g, v in enumerate(d) if v} for d in self._found]

    @property
    def group_names(self) -> list[list[str]]:
        """Parameter names of each group (one prior precision per group)."""
        return [list(names) for _, names, _ in self._groups]

    @property
    def strengths(self) -> dict[str, float]:
        """Parameter name -> current L2 strength in ``reg``."""
        return {n: float(pen.strength_at(0)) for pen, names, _ in self._groups for n in names}

    @property
    def prior_precisions(self) -> dict[str, float]:
        """Parameter name -> prior precision ``lambda`` (empty before the first update)."""
        if self._opt is None:
            return {}
        lam = np.exp(self._opt.x[: len(self._groups)]).tolist()
        return {n: lam[i] for i, (_, names, _) in enumerate(self._groups) for n in names}

    # ------------------------------------------------------------------ update
    def update(self, data: Any) -> float:
        """Fit the prior precisions (and noise precision) to ``data`` (a DataLoader of
        ``(x, y)`` batches, a map-style Dataset of ``(x, y)`` pairs, or a pair ``(X, y)``),
        write the strengths into ``reg`` and return the log evidence."""
        pb = self._curvature(data)
        opt = self._start(pb)
        for _ in range(self.steps):
            opt.ascend(_log_evidence(opt.x, pb)[1], self._fixed)
        value = _log_evidence(opt.x, pb)[0]
        self._write(opt.x)
        self.log_evidence.append(value)
        self.history.append({
            "log_evidence": value,
            "strengths": self.strengths,
            "prior_precisions": self.prior_precisions,
            "noise_precision": self.noise_precision,
        })  # fmt: skip
        return value

    def _curvature(self, data: Any) -> _Problem:
        """One pass over ``data``: the data term and the Kronecker factors, turned into
        the eigenvalues of each block (scaled to ``n_data`` rows)."""
        model = self.reg.model
        first = next(iter(self.reg.parameters()))
        device, dtype = first.device, first.dtype
        layers = list({id(b.module): b.module for b in self._blocks}.values())
        cur = _Curvature()
        was_training = model.training
        model.eval()  # the GGN of the deterministic network (dropout off, running norms)
        probe: list[Tensor] = []  # up to 64 rows to look for symmetries in
        try:
            for x, y in _batches(data, self.batch_size, device, dtype):
                if self._fixed is None and sum(map(len, probe)) < 64:
                    probe.append(x[:64])
                try:
                    _batch(model, layers, x, y, self.loss, cur, self.mc_samples, self._gen)
                except (RuntimeError, IndexError) as e:  # rows or targets the model cannot take
                    first = (str(e).splitlines() or [type(e).__name__])[0][:100]
                    raise ValueError(f"data: the model and loss cannot take these rows "
                                     f"(x {tuple(x.shape)}, y {tuple(y.shape)}: {first})") from None  # fmt: skip
            if probe:
                self._find_symmetries(probe)
        finally:
            model.train(was_training)
        if cur.rows == 0:
            raise ValueError("data must hold at least one row, got none")
        scale = self.n_data / cur.rows  # a subset stands for the whole training set
        self.n_outputs = max(1, cur.targets // cur.rows)
        reg_ids = {id(p) for p in self.reg.parameters()}
        eigs, groups = [], []
        for b in self._blocks:
            key = id(b.module)
            n_rows = cur.n_a[key]
            ev_g = torch.linalg.eigvalsh(cur.G[key] / n_rows).clamp_min(0)
            if b.is_bias:
                ev = ev_g * (n_rows * scale)
            else:
                A = cur.A[key]
                bias = b.module.bias
                if bias is not None and bias.requires_grad and id(bias) not in reg_ids:
                    mean = cur.a_sum[key] / n_rows
                    A = A - n_rows * torch.outer(mean, mean)  # the free bias integrated out
                ev_a = torch.linalg.eigvalsh(A * scale).clamp_min(0)
                ev = torch.outer(ev_g, ev_a).reshape(-1)
            eigs.append(ev.cpu().numpy())
            groups.append(np.full(len(eigs[-1]), b.group))
        with torch.no_grad():
            sq = [sum(float(p.double().pow(2).sum()) for p in ps) for _, _, ps in self._groups]
        return _Problem(
            eig=np.concatenate(eigs),
            group=np.concatenate(groups),
            sq_norms=np.array(sq),
            sizes=np.array([float(sum(p.numel() for p in ps)) for _, _, ps in self._groups]),
            data_term=cur.data_term * scale,
            n_targets=float(self.n_data * self.n_outputs),
            mse=self.loss == "mse",
        )

    def _find_symmetries(self, probe: list[Tensor]) -> None:
        """:func:`_symmetries` on the probe rows (batches of unequal shapes: the first)."""
        same = all(p.shape[1:] == probe[0].shape[1:] for p in probe)
        x = torch.cat(probe)[:64] if same else probe[0]
        found = _symmetries(self.reg.model, self._blocks, len(self._groups), x)
        if found is not None:
            self._fixed, self._found = found

    def _start(self, pb: _Problem) -> _Adam:
        """The hyperparameters on the first update: ``beta`` by maximum likelihood
        (``N / SSE``), ``lambda`` from the strengths in ``reg`` (1 where they are 0)."""
        if self._opt is None:
            beta = pb.n_targets / max(pb.data_term, 1e-12) if pb.mse else 1.0
            lams = []
            for pen, _, _ in self._groups:
                s = float(pen.strength_at(0))
                lams.append(math.log(s / self._unit(beta) if s > 0 else 1.0))
            init = lams + ([math.log(beta)] if pb.mse else [])
            self._opt = _Adam(np.array(init, dtype=np.float64), self.lr)
        return self._opt

    def _unit(self, beta: float) -> float:
        """The strength of a unit prior precision."""
        return to_strength(1.0, n_data=self.n_data, loss=self.loss, noise_precision=beta,
                           n_outputs=self.n_outputs)  # fmt: skip

    def _write(self, x: np.ndarray) -> None:
        beta = math.exp(x[len(self._groups)]) if self.loss == "mse" else 1.0
        self.noise_precision = beta if self.loss == "mse" else None
        lam = np.exp(x[: len(self._groups)]).tolist()
        unit = self._unit(beta)
        set_strengths(
            self.reg, {names[0]: lam[i] * unit for i, (_, names, _) in enumerate(self._groups)}
        )

    # ------------------------------------------------------------------ checkpoints
    _STATE_KEYS = ("x", "m", "v", "t", "n_outputs", "noise_precision", "history")

    def state_dict(self) -> dict[str, Any]:
        """The hyperparameters, their Adam state and the history, as plain JSON-able
        values (save it with your checkpoint; the strengths themselves live in ``reg``)."""
        opt = self._opt
        return {
            "x": None if opt is None else opt.x.tolist(),
            "m": None if opt is None else opt.m.tolist(),
            "v": None if opt is None else opt.v.tolist(),
            "t": 0 if opt is None else opt.t,
            "n_outputs": self.n_outputs,
            "noise_precision": self.noise_precision,
            "history": [dict(h) for h in self.history],
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict`; the strengths are written into ``reg`` again."""
        state = check_config("state", dict(state) if isinstance(state, Mapping) else state,
                             self._STATE_KEYS, self._STATE_KEYS)  # fmt: skip
        n = len(self._groups) + (self.loss == "mse")
        if state["x"] is not None and len(state["x"]) != n:
            raise ValueError(
                f"state['x'] must hold {n} values for this Evidence, got {state['x']!r}"
            )
        self.n_outputs = check_int("state['n_outputs']", state["n_outputs"], minimum=1)
        self.noise_precision = state["noise_precision"]
        self.history = [dict(h) for h in state["history"]]
        self.log_evidence = [h["log_evidence"] for h in self.history]
        if state["x"] is None:
            self._opt = None
            return
        self._opt = _Adam(np.array(state["x"], dtype=np.float64), self.lr)
        self._opt.m = np.array(state["m"], dtype=np.float64)
        self._opt.v = np.array(state["v"], dtype=np.float64)
        self._opt.t = check_int("state['t']", state["t"], minimum=0)
        self._write(self._opt.x)

    def __repr__(self) -> str:
        return (
            f"Evidence(loss={self.loss!r}, n_data={self.n_data}, groups={len(self._groups)}, "
            f"updates={len(self.log_evidence)})"
        )


# ---------------------------------------------------------------------- one call
@dataclass
class EvidenceResult:
    """What :func:`fit_evidence` found: the final ``strengths`` (name -> strength, for
    the standardized problem, as ``tp.sweep`` reports them), the trained ``model`` (takes
    raw inputs, returns raw units or logits), and the history of the updates."""

    strengths: dict[str, float]
    model: nn.Module
    evidence: Evidence
    epochs: list[int]
    loss: str
    classes: np.ndarray | None = None
    settings: dict[str, Any] = field(default_factory=dict)
    time_s: float = 0.0
    figure_: Any = None

    @property
    def log_evidence(self) -> list[float]:
        return list(self.evidence.log_evidence)

    @property
    def noise_precision(self) -> float | None:
        """Noise precision on the standardized targets (MSE)."""
        return self.evidence.noise_precision

    @torch.no_grad()
    def predict(self, X: Any) -> np.ndarray:
        """Predictions for raw ``X``: values in the target's units (MSE, with ``y``'s
        shape per row) or class labels (cross-entropy)."""
        x = _as_input(X.detach().cpu() if isinstance(X, Tensor) else X)
        out = self.model(x)
        if self.loss == "cross_entropy":
            return self.classes[out.argmax(-1).numpy()]
        k = self.settings.get("y_shape", ())
        return out.reshape(len(x), *k).numpy()

    def plot(self, ax: Any = None) -> EvidenceResult:
        """Log evidence (left) and each group's strength (right, log scale) against the
        epoch of each update. ``ax``: a pair of matplotlib axes (new figure when None)."""
        import matplotlib.pyplot as plt

        if ax is None:
            _, ax = plt.subplots(1, 2, figsize=(10, 4))
        left, right = ax
        left.plot(self.epochs, self.log_evidence, marker="o")
        left.set_xlabel("epoch")
        left.set_ylabel("log evidence (nats)")
        for names in self.evidence.group_names:
            values = [h["strengths"][names[0]] for h in self.evidence.history]
            label = names[0] if len(names) == 1 else f"{names[0]} (+{len(names) - 1})"
            right.plot(self.epochs, values, marker="o", label=label)
        right.set_yscale("log")
        right.set_xlabel("epoch")
        right.set_ylabel("L2 strength")
        right.legend(fontsize="small")
        self.figure_ = left.figure
        return self


def _as_input(X: Any) -> Tensor:
    """Integer inputs (token ids) as int64, anything else as float32."""
    a = np.asarray(X)
    return torch.tensor(a, dtype=torch.long if a.dtype.kind in "iu" else torch.float32)


def _prepare_xy(X: Any, y: Any, loss: str, standardize: bool):
    from .sweep.folds import Standardizer

    X = np.asarray(X.detach().cpu() if isinstance(X, Tensor) else X)
    y = np.asarray(y.detach().cpu() if isinstance(y, Tensor) else y)
    if X.ndim < 2 or len(X) != len(y):
        raise ValueError(
            f"data must be (X, y) with X of shape (n, ...) and n labels, got {X.shape}, {y.shape}"
        )
    tabular = standardize and X.ndim == 2 and X.dtype.kind == "f"
    sx = Standardizer(X) if tabular else None  # images and token ids pass through
    Xs = _as_input(sx.transform(X) if sx is not None else X)
    if loss == "cross_entropy":
        classes, codes = np.unique(y, return_inverse=True)
        return Xs, torch.tensor(codes, dtype=torch.long), sx, None, classes
    y2 = y.reshape(len(y), -1).astype(np.float64)
    sy = Standardizer(y2 if standardize else np.zeros((1, y2.shape[1])))
    Ys = torch.tensor(sy.transform(y2), dtype=torch.float32).reshape(y.shape)
    return Xs, Ys, sx, sy, None


def fit_evidence(
    make_model: Callable[[], nn.Module],
    data: tuple[Any, Any],
    *,
    loss: str | None = None,
    epochs: int = 100,
    batch_size: int | None = 64,
    lr: float = 1e-2,
    every: int = 5,
    strength: float = 1e-4,
    steps: int = 10,
    hyper_lr: float = 0.1,
    standardize: bool = True,
    include: Matcher | None = None,
    exclude: Matcher | None = None,
    shared: bool = False,
    seed: int = 0,
) -> EvidenceResult:
    """Train one model with per-layer L2 strengths chosen by the evidence: Adam on the
    mean loss plus ``L2`` (applied as ``tp.sweep`` applies it, ``mode="grad"``), with
    :meth:`Evidence.update` on the whole training set every ``every`` epochs (not after
    the last, so the final model trained under the reported strengths).

    ``loss=None`` infers the task as ``tp.sweep`` does: text, booleans or at most 10
    distinct integer values are classes (``"cross_entropy"``), anything else ``"mse"``.
    ``X`` of shape ``(n, d)`` with float features is standardized (and MSE targets too),
    as ``tp.sweep`` does, so the strengths compare with its ``best_strength``; other
    inputs (images, token ids) pass through. ``strength`` is the starting strength (the
    same for every layer). ``shared=True``: one strength for all regularized weights
    (one ``tp.L2``) instead of one per layer; a ReLU MLP gets that anyway (module
    docstring: strengths the evidence cannot tell apart).

    >>> import torch, torchpenalty as tp
    >>> from torch import nn
    >>> torch.manual_seed(0) and None
    >>> X = torch.randn(120, 4); y = X[:, 0] - X[:, 1] + 0.1 * torch.randn(120)
    >>> r = tp.fit_evidence(lambda: nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1)),
    ...                     (X, y), epochs=20, every=5)
    >>> sorted(r.strengths), len(r.log_evidence)
    (['0.weight', '2.weight'], 3)
    >>> r.predict(X[:2]).shape
    (2,)
    """
    if not callable(make_model) or isinstance(make_model, nn.Module):
        raise type_error("make_model", "a callable returning a fresh nn.Module", make_model)
    if not isinstance(data, (tuple, list)) or len(data) != 2:
        raise type_error("data", "a pair (X, y)", data)
    loss = _infer_loss(data[1]) if loss is None else loss
    loss = check_choice("loss", loss, ("mse", "cross_entropy"))
    epochs = check_int("epochs", epochs, minimum=1)
    every = check_int("every", every, minimum=1)
    if batch_size is not None:
        batch_size = check_int("batch_size", batch_size, minimum=1)
    lr = check_positive("lr", lr)
    if not isinstance(shared, bool):
        raise type_error("shared", "True or False", shared)
    t0 = time.perf_counter()
    X, Y, sx, sy, classes = _prepare_xy(data[0], data[1], loss, standardize)
    n = len(X)
    torch.manual_seed(check_int("seed", seed))
    model = make_model()
    _check_outputs(model, X, Y, loss, classes)
    rules = L2(check_strength("strength", strength)) if shared else None
    reg = (Regularizer(model, rules, include=include, exclude=exclude) if shared
           else per_layer(model, strength, include=include, exclude=exclude))  # fmt: skip
    ev = Evidence(reg, loss, n, steps=steps, lr=hyper_lr, seed=seed)
    done = _train(model, reg, ev, X, Y, epochs=epochs, batch_size=batch_size, lr=lr,
                  every=every, seed=seed)  # fmt: skip
    return EvidenceResult(
        strengths=ev.strengths,
        model=_wrap(model.eval(), sx, sy),
        evidence=ev,
        epochs=done,
        loss=loss,
        classes=classes,
        settings={
            "epochs": epochs,
            "batch_size": batch_size,
            "lr": lr,
            "every": every,
            "steps": steps,
            "hyper_lr": hyper_lr,
            "shared": shared,
            "n_rows": n,
            "y_shape": tuple(np.shape(data[1])[1:]),
        },
        time_s=time.perf_counter() - t0,
    )


def _check_outputs(model: nn.Module, X: Tensor, Y: Tensor, loss: str, classes: Any) -> None:
    """The model's output on two rows: one column per class, or per target column."""
    with torch.no_grad(), torch.random.fork_rng(devices=[]):
        out = model.eval()(X[:2])
    width = 1 if out.ndim == 1 else out.shape[-1]
    want = len(classes) if loss == "cross_entropy" else (1 if Y.ndim == 1 else Y.shape[1])
    if (width < want) if loss == "cross_entropy" else (width != want or out.ndim > 2):
        what = "class" if loss == "cross_entropy" else "target column"
        raise ValueError(f"make_model must return a model with one output per {what} "
                         f"({want}), got output of shape {tuple(out.shape)}")  # fmt: skip


def _infer_loss(y: Any) -> str:
    """``"cross_entropy"`` for targets that look like classes (:func:`~torchpenalty.data.infer_task`),
    else ``"mse"``."""
    from .data import infer_task

    a = np.asarray(y.detach().cpu() if isinstance(y, Tensor) else y)
    if a.dtype == object and a.size and all(isinstance(v, str) for v in a.ravel().tolist()):
        a = a.astype(str)
    return "cross_entropy" if a.ndim == 1 and infer_task(a) == "classification" else "mse"


def _train(model, reg, ev, X, Y, *, epochs, batch_size, lr, every, seed) -> list[int]:
    """Adam on the mean loss with ``reg`` attached (``mode="grad"``); ``ev.update`` every
    ``every`` epochs but not after the last. Returns the epochs of the updates."""
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    handle = reg.attach(opt, mode="grad")
    mse = ev.loss == "mse"
    criterion = nn.functional.mse_loss if mse else nn.functional.cross_entropy
    gen = torch.Generator().manual_seed(seed)
    n = len(X)
    done: list[int] = []
    try:
        for epoch in range(1, epochs + 1):
            model.train()
            for idx in torch.randperm(n, generator=gen).split(
                n if batch_size is None else batch_size
            ):
                opt.zero_grad()
                out = model(X[idx])
                criterion(out.reshape(Y[idx].shape) if mse else out, Y[idx]).backward()
                opt.step()
            if epoch % every == 0 and epoch < epochs:
                ev.update((X, Y))
                done.append(epoch)
    finally:
        handle.remove()
    return done


class _TargetScaled(nn.Module):
    """``model(x) * y_std + y_mean``: raw target units for inputs that pass through."""

    def __init__(self, model: nn.Module, y_mean: Tensor, y_std: Tensor) -> None:
        super().__init__()
        self.model = model
        self.register_buffer("y_mean", y_mean)
        self.register_buffer("y_std", y_std)

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x) * self.y_std + self.y_mean


def _wrap(model: nn.Module, sx: Any, sy: Any) -> nn.Module:
    from .sweep.result import StandardizedModel

    f32, f64 = torch.float32, torch.float64
    y_mean = None if sy is None else torch.tensor(sy.mean, dtype=f32)
    y_std = None if sy is None else torch.tensor(sy.std, dtype=f32)
    if sx is None:
        return (model if sy is None else _TargetScaled(model, y_mean, y_std)).eval()
    y_mean = None if sy is None else torch.tensor(sy.mean, dtype=f64)
    y_std = None if sy is None else torch.tensor(sy.std, dtype=f64)
    mean, std = torch.tensor(sx.mean, dtype=f64), torch.tensor(sx.std, dtype=f64)
    return StandardizedModel(model, mean, std, y_mean, y_std).eval()
