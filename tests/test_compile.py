"""Regularization inside compiled and CUDA-graph-captured training steps.

* ``reg()`` and activity penalties in a compiled forward + backward (``fullgraph=True``);
* every attached mode inside a ``fullgraph=True`` compile of the optimizer's step with its
  hooks, over 100 steps of a changing strength schedule and a changing tensor lr: one frame
  compiled, no graph break, parameters equal to eager;
* the user's whole step (``opt.step()`` included) compiled: torch.optim's own step breaks
  the graph by design (``_use_grad``, pytorch#104053; backward too), and the hooks add no
  break and no recompilation to the unregularized step's;
* ``check_capturable`` names every setting that cannot be read live;
* a CUDA graph replayed 200 times follows the schedule (GPU only), and a Python-float
  strength freezes at its captured value (the negative control).

The optimizer body without torch's graph breaks is ``inspect.unwrap(type(opt).step)`` run
under ``no_grad`` between the step hooks, exactly as ``Optimizer.step`` runs them.
"""

from __future__ import annotations

import inspect
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn
from torch._dynamo.testing import CompileCounterWithBackend
from torch._dynamo.utils import counters

import torchpenalty as tp

STEPS = 100
SCHEDULE = tp.schedules.Linear(0.0, 0.2, steps=60)  # changes for 60 steps, then flat
# mode -> (attach mode, options, penalty class)
MODES = {
    "grad": ("grad", {}, tp.L2),
    "decoupled": ("decoupled", {}, tp.L2),
    "independent": ("independent", {}, tp.L2),
    "corrected": ("corrected", {}, tp.L2),
    "cautious": ("decoupled", {"cautious": True}, tp.L2),
    "proximal": ("proximal", {}, tp.L1),
}


@pytest.fixture(autouse=True)
def fresh_dynamo():
    torch._dynamo.reset()
    counters.clear()
    yield
    torch._dynamo.reset()


def net(dtype=torch.float32):
    torch.manual_seed(0)
    layers = [nn.Linear(4, 8), nn.LayerNorm(8), nn.ReLU(), nn.Linear(8, 2)]
    return nn.Sequential(*layers).to(dtype)


def data(dtype=torch.float32):
    g = torch.Generator().manual_seed(1)
    return torch.randn(16, 4, generator=g, dtype=dtype), torch.randn(
        16, 2, generator=g, dtype=dtype
    )


def setup(mode, opt_cls=torch.optim.SGD, dtype=torch.float32, penalty=None, **opt_kw):
    """A model, an optimizer with a tensor lr, and a Regularizer with a schedule attached."""
    model = net(dtype)
    lr = torch.tensor(0.05, dtype=dtype)
    opt = opt_cls(model.parameters(), lr=lr, **opt_kw)
    if mode is None:  # the unregularized baseline
        return model, opt, None, lr
    how, options, default = MODES[mode]
    reg = tp.Regularizer(model, (penalty or default)(SCHEDULE))
    reg.attach(opt, mode=how, **options)
    return model, opt, reg, lr


def hooked_step(opt, body=None):
    """``opt.step()`` as torch runs it (pre hooks, the step, post hooks), minus the two
    ``torch._dynamo.graph_break()`` calls of its ``_use_grad`` wrapper. ``body``: the
    optimizer's own step (default: its unwrapped ``step``)."""
    unwrapped = inspect.unwrap(type(opt).step)
    body = body or (lambda: unwrapped(opt))

    def step():
        with torch.no_grad():
            for hook in opt._optimizer_step_pre_hooks.values():
                hook(opt, (opt,), {})
            body()
            for hook in opt._optimizer_step_post_hooks.values():
                hook(opt, (opt,), {})

    return step


def compiled_body(opt, backend):
    """The optimizer's step alone, compiled (the hooks around it stay eager)."""
    unwrapped = inspect.unwrap(type(opt).step)

    def body():
        with torch.no_grad():
            unwrapped(opt)

    return torch.compile(body, backend=backend, fullgraph=True)


def train_region(mode, compile_with=None, *, hooks_eager=False, base_lr=0.05, **kw):
    """STEPS steps, the optimizer region compiled ``fullgraph=True`` with ``compile_with``
    (a backend) or eager; ``hooks_eager``: only the optimizer's own step compiled (the
    reference for optimizers whose compiled step differs from their eager one). Returns
    (parameters, compile counter, regularizer)."""
    model, opt, reg, lr = setup(mode, **kw)
    x, y = data(model[0].weight.dtype)
    cnt = CompileCounterWithBackend(compile_with or "eager")
    if hooks_eager:
        region = hooked_step(opt, compiled_body(opt, cnt))
    elif compile_with is not None:  # the public one-graph step, traced whole
        region = torch.compile(tp.one_graph_step(opt), backend=cnt, fullgraph=True)
    else:  # torch's own eager step
        region = opt.step
    for k in range(STEPS):
        opt.zero_grad()
        nn.functional.mse_loss(model(x), y).backward()
        lr.fill_(base_lr * (1 - k / STEPS))  # an lr schedule, written in place
        region()
    return [p.detach().clone() for p in model.parameters()], cnt, reg


def assert_same(a, b, tol=1e-6):
    for u, v in zip(a, b, strict=True):
        torch.testing.assert_close(u, v, rtol=tol, atol=tol)


# ----------------------------------------------------------------------- loss mode
def test_compiled_loss_fullgraph_without_recompiles():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 10), nn.ReLU(), nn.Linear(10, 5))
    reg = tp.Regularizer(
        model, {"0.*": tp.L2(tp.schedules.Linear(0.0, 1.0, steps=10)), "2.*": tp.L1(0.1)}
    )

    def loss_fn(x, y):
        return nn.functional.mse_loss(model(x), y) + reg()

    compiled = torch.compile(loss_fn, backend="aot_eager", fullgraph=True)
    x, y = torch.randn(4, 5), torch.randn(4, 5)
    for _ in range(4):
        model.zero_grad()
        loss = compiled(x, y)
        loss.backward()
        got = [p.grad.clone() for p in model.parameters()]
        model.zero_grad()
        eager = loss_fn(x, y)
        eager.backward()
        torch.testing.assert_close(loss, eager)
        for g, p in zip(got, model.parameters(), strict=True):
            torch.testing.assert_close(g, p.grad)
        reg.step()  # the scheduled strength changes every step
    assert reg.step_count == 4
    assert counters["stats"]["unique_graphs"] == 1  # no recompilation


def fwd_bwd_with_activity(compiled):
    """forward + reg() (weights and activity, both scheduled) + backward + reg.step() in
    one fullgraph compile; the SGD step eager outside."""
    model = net()
    reg = tp.Regularizer(
        model, tp.L2(SCHEDULE), activity={"2": tp.L1(tp.schedules.Cosine(0.05, 0.0, steps=40))}
    )
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    x, y = data()

    def fwd_bwd():
        loss = nn.functional.mse_loss(model(x), y) + reg()
        value = loss.detach()
        loss.backward()
        reg.step()
        return value

    cnt = CompileCounterWithBackend("aot_eager")
    fn = torch.compile(fwd_bwd, backend=cnt, fullgraph=True) if compiled else fwd_bwd
    losses = []
    for _ in range(STEPS):
        opt.zero_grad()
        losses.append(fn())
        opt.step()
    return [p.detach().clone() for p in model.parameters()], torch.stack(losses), cnt, reg


def test_forward_backward_with_activity_fullgraph():
    with torch._dynamo.config.patch(trace_autograd_ops=True):  # backward inside the graph
        got, losses, cnt, reg = fwd_bwd_with_activity(compiled=True)
    ref, ref_losses, _, _ = fwd_bwd_with_activity(compiled=False)
    assert cnt.frame_count == 1 and not counters["graph_break"]
    assert reg.step_count == STEPS  # read from the device counter
    assert_same(got, ref)
    torch.testing.assert_close(losses, ref_losses, rtol=1e-6, atol=1e-6)


# ----------------------------------------------------------------------- attached modes
@pytest.mark.parametrize("mode", list(MODES))
def test_every_mode_fullgraph_no_recompile_equals_eager(mode):
    got, cnt, reg = train_region(mode, "aot_eager")
    ref, _, ref_reg = train_region(mode)
    assert cnt.frame_count == 1  # one compile for 100 steps of changing strength and lr
    assert not counters["graph_break"]
    assert reg.step_count == ref_reg.step_count == STEPS
    torch.testing.assert_close(reg._strengths[0], ref_reg._strengths[0])
    assert reg._strengths[0].item() == pytest.approx(SCHEDULE(STEPS))
    assert_same(got, ref)


@pytest.mark.parametrize("mode", ["grad", "proximal", "cautious"])
def test_momentum_compiles_as_often_as_without_regularizer(mode):
    """SGD's momentum buffer appears at the first step: torch compiles its step twice (the
    second step takes the other branch), with or without the Regularizer."""
    _, base, _ = train_region(None, "aot_eager", momentum=0.9)
    torch._dynamo.reset()
    got, cnt, _ = train_region(mode, "aot_eager", momentum=0.9)
    ref, _, _ = train_region(mode, momentum=0.9)
    assert cnt.frame_count == base.frame_count == 2 and not counters["graph_break"]
    assert_same(got, ref)


@pytest.mark.parametrize("mode", ["proximal", "decoupled"])
def test_adam_metric_fullgraph(mode):
    """The proximal step reads Adam's state (bias correction from its step tensor) without
    a host read. torch's compiled Adam differs from its eager Adam by ~1e-5 after 100
    steps with no regularizer at all, so the reference compiles Adam's step alone and runs
    the hooks eagerly around it: only the hooks differ. The proximal step is L2's here: under
    L1, Adam moves near-zero weights by about lr per step whatever their gradient, so a
    last-bit difference in a threshold (the bias correction in float32 on the device, in
    float64 on the host) flips a weight between 0 and +-lr and the runs drift apart by
    ~1e-4 (chaotic, not wrong). lr 0.01: at 0.05 Adam on this tiny model amplifies
    last-bit differences 1000-fold over 100 steps, even between its own eager and compiled
    steps with no hooks compiled (6e-3)."""
    kw = {"opt_cls": torch.optim.Adam, "penalty": tp.L2, "base_lr": 0.01}
    got, cnt, _ = train_region(mode, "aot_eager", **kw)
    torch._dynamo.reset()
    ref, ref_cnt, _ = train_region(mode, "aot_eager", hooks_eager=True, **kw)
    assert cnt.frame_count == ref_cnt.frame_count == 1 and not counters["graph_break"]
    assert_same(got, ref)


def test_inductor_decoupled_fullgraph():
    got, cnt, _ = train_region("decoupled", "inductor")
    ref, _, _ = train_region("decoupled")
    assert cnt.frame_count == 1 and not counters["graph_break"]
    assert_same(got, ref)


def whole_step(mode, compiled, one_graph=False):
    """The user's step: zero_grad, forward, backward, opt.step() (``one_graph``:
    ``tp.one_graph_step(opt)()``), compiled as a whole (fullgraph=False: torch breaks it);
    returns (params, frames after each step, breaks)."""
    if mode is None:
        model = net()
        lr = torch.tensor(0.05)
        opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    else:
        model, opt, _, lr = setup(mode, momentum=0.9)
    x, y = data()
    opt_step = tp.one_graph_step(opt) if one_graph else opt.step

    def step():
        opt.zero_grad()
        nn.functional.mse_loss(model(x), y).backward()
        opt_step()

    torch._dynamo.reset()
    counters.clear()
    cnt = CompileCounterWithBackend("aot_eager")
    fn = torch.compile(step, backend=cnt) if compiled else step
    frames = []
    for k in range(STEPS):
        lr.fill_(0.05 * (1 - k / STEPS))
        fn()
        frames.append(cnt.frame_count)
    breaks = sorted(r.split("\n")[0] for r in counters["graph_break"])
    return [p.detach().clone() for p in model.parameters()], frames, breaks


@pytest.mark.parametrize("mode", ["grad", "decoupled", "proximal"])
def test_whole_step_hooks_add_no_graph_break_and_no_recompile(mode):
    _, base_frames, base_breaks = whole_step(None, compiled=True)
    got, frames, breaks = whole_step(mode, compiled=True)
    ref, _, _ = whole_step(mode, compiled=False)
    assert breaks == base_breaks  # torch's own: zero_grad, backward, _use_grad (x2)
    assert any("graph_break()" in b for b in breaks)
    # compiles stop after the second step (torch's: SGD's momentum buffer appears), and
    # the hooks' two regions are compiled once each
    assert frames[1:] == [frames[1]] * (STEPS - 1) and base_frames[1:] == [base_frames[1]] * (
        STEPS - 1
    )
    # one more compiled region per hook phase the mode uses (before and/or after the step)
    assert base_frames[-1] < frames[-1] <= base_frames[-1] + 2
    assert_same(got, ref)


# ----------------------------------------------------------------------- check_capturable
@pytest.mark.parametrize("mode", list(MODES))
def test_whole_step_with_one_graph_step_compiles_the_hooks_into_the_step(mode):
    """With ``tp.one_graph_step`` the optimizer region (hooks + step) is one graph: the
    regularized step compiles exactly as many frames as the unregularized one, and only
    torch's zero_grad/backward breaks remain."""
    _, base_frames, base_breaks = whole_step(None, compiled=True, one_graph=True)
    got, frames, breaks = whole_step(mode, compiled=True, one_graph=True)
    ref, _, _ = whole_step(mode, compiled=False)
    assert breaks == base_breaks
    assert not any("graph_break()" in b for b in breaks)  # _use_grad's breaks are gone
    assert frames == base_frames  # the hooks add no frame
    assert_same(got, ref)


def test_one_graph_step_eager_is_optimizer_step_and_keeps_scheduler_bookkeeping():
    """Outside tracing it is ``optimizer.step`` (closure passed through); traced, it marks
    the step for the LR scheduler as torch's wrapper does (no "scheduler before optimizer"
    warning) and returns the closure's loss."""
    model, opt, _, _ = setup("decoupled")
    x, y = data()
    step = tp.one_graph_step(opt)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)

    def closure():
        opt.zero_grad()
        loss = nn.functional.mse_loss(model(x), y)
        loss.backward()
        return loss

    loss = step(closure)
    assert isinstance(loss, torch.Tensor) and opt._opt_called
    sched.step()
    traced = torch.compile(step, backend="eager")
    opt._opt_called = False
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        out = traced(closure)
        sched.step()
    assert not [w for w in seen if "lr_scheduler.step()" in str(w.message)]
    assert opt._opt_called and torch.isfinite(out)
    with pytest.raises(TypeError, match="optimizer"):
        tp.one_graph_step(model)


def _reg_with(strength=SCHEDULE, mode="decoupled", lr=None, opt_cls=torch.optim.SGD, **kw):
    model = net()
    lr = torch.tensor(0.05) if lr is None else lr
    opt = opt_cls(model.parameters(), lr=lr)
    pen = tp.L1 if mode == "proximal" else tp.L2
    reg = tp.Regularizer(model, pen(strength))
    reg.attach(opt, mode=mode, **kw)
    return reg, opt


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({}, None),
        ({"mode": "grad", "lr": 0.05}, None),  # grad mode never reads the lr
        (
            {"strength": lambda k: 0.1 / (1 + k)},
            r"the strength of L2\(.*\) for '0.weight' is a callable without a tensor\(step\)",
        ),
        (
            {"lr": 0.05},
            r"optimizer.param_groups\[0\]\['lr'\] must be a tensor for mode='decoupled'",
        ),
        (
            {"mode": "proximal", "opt_cls": torch.optim.RAdam},
            r"mode='proximal' with RAdam reads the rectification term on the host",
        ),
        (
            {"opt_cls": torch.optim.Adam},  # capturable=False by default
            r"param_groups\[0\]\['capturable'\] must be True for Adam",
        ),
    ],
)
def test_check_capturable_names_the_setting(kwargs, match):
    reg, opt = _reg_with(**kwargs)
    if match is None:
        reg.check_capturable(opt)
        return
    with pytest.raises(ValueError, match=match):
        reg.check_capturable(opt)


def test_check_capturable_compensated_rounding_and_activity():
    model = net().to(torch.bfloat16)
    reg = tp.Regularizer(model, tp.L2(0.1), activity={"2": tp.L1(lambda k: 0.1)})
    opt = torch.optim.SGD(model.parameters(), lr=torch.tensor(0.1))
    reg.attach(opt, mode="decoupled", rounding="compensated")
    with pytest.raises(ValueError) as err:
        reg.check_capturable(opt)
    msg = str(err.value)
    assert "rounding='compensated' keeps float32 residuals" in msg
    assert "the strength of activity penalty L1(" in msg


def test_callable_schedule_inside_compile_raises_a_clear_error():
    model = net()
    reg = tp.Regularizer(model, tp.L2(lambda k: 0.1 / (1 + k)))
    fn = torch.compile(reg.step, backend="eager", fullgraph=True)
    with pytest.raises(Exception, match=r"callable without a tensor\(step\) form"):
        fn()


def test_gpu_step_benchmark_runs_or_refuses_without_cuda():
    """benchmarks/gpu_step.py: on a GPU its quick run prints the table; on CPU it exits 2
    with the reason on stderr (and nothing measured)."""
    root = Path(__file__).resolve().parent.parent
    env = {**os.environ, "PYTHONPATH": str(root / "src")}
    res = subprocess.run([sys.executable, "benchmarks/gpu_step.py", "--quick"], cwd=root,
                         capture_output=True, text=True, timeout=900, env=env)  # fmt: skip
    if torch.cuda.is_available():
        assert res.returncode == 0, res.stderr
        assert "fuse decoupled" in res.stdout and "x" in res.stdout
    else:
        assert res.returncode == 2 and res.stdout == ""
        assert "needs a CUDA device" in res.stderr


# ----------------------------------------------------------------------- CUDA graphs
def _cuda_setup(strength):
    dev = torch.device("cuda")
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 4)).to(dev)
    lr = torch.tensor(1e-2, device=dev)
    opt = torch.optim.Adam(model.parameters(), lr=lr, capturable=True)
    reg = tp.Regularizer(model, tp.L2(strength))
    reg.attach(opt, mode="decoupled")
    g = torch.Generator(device=dev).manual_seed(1)
    x = torch.randn(64, 8, device=dev, generator=g)
    y = torch.randn(64, 4, device=dev, generator=g)
    return model, opt, reg, x, y


def _one_step(model, opt, x, y):
    nn.functional.mse_loss(model(x), y).backward()
    opt.step()


def _captured(strength, replays, warmup=3):
    """Warm up on a side stream, capture one step, replay it ``replays`` times."""
    model, opt, reg, x, y = _cuda_setup(strength)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(warmup):
            opt.zero_grad(set_to_none=True)
            _one_step(model, opt, x, y)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    opt.zero_grad(set_to_none=True)
    with torch.cuda.graph(graph):
        _one_step(model, opt, x, y)
    for _ in range(replays):
        graph.replay()
    torch.cuda.synchronize()
    return model, reg


def _eager(strength, steps):
    model, opt, reg, x, y = _cuda_setup(strength)
    for _ in range(steps):
        opt.zero_grad(set_to_none=True)
        _one_step(model, opt, x, y)
    torch.cuda.synchronize()
    return model, reg


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA device")
def test_cuda_graph_replays_follow_the_schedule():
    schedule = tp.schedules.Linear(0.0, 0.5, steps=150)
    model, reg = _captured(schedule, replays=200)
    ref, ref_reg = _eager(schedule, steps=203)  # 3 warm-up steps + 200 replays
    assert reg.step_count == 203
    torch.testing.assert_close(reg._strengths[0].cpu(), ref_reg._strengths[0].cpu())
    assert_same(list(model.parameters()), list(ref.parameters()))
    reg.check_capturable(reg._handles[0].optimizer)


class _FloatDecay:
    """The negative control: a pre-hook that decays by a Python float read from the
    schedule at each call, as a naive hook would. Captured, the float is frozen."""

    def __init__(self, params, schedule, lr):
        self.params, self.schedule, self.lr, self.k = list(params), schedule, lr, 0

    def __call__(self, opt, args, kwargs):
        with torch.no_grad():
            torch._foreach_mul_(self.params, 1.0 - self.lr * self.schedule(self.k))
        self.k += 1


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA device")
def test_cuda_graph_python_float_strength_is_frozen():
    """Weights decay only (zero loss gradient: lr 0 for the optimizer's own step): with the
    Regularizer the 200 replays follow the schedule; the float hook repeats its capture-time
    value 200 times."""
    schedule = tp.schedules.Linear(0.0, 0.5, steps=150)
    w = torch.ones(4, device="cuda", requires_grad=True)
    w.grad = torch.zeros_like(w)
    opt = torch.optim.SGD([w], lr=0.0)
    hook = _FloatDecay([w], schedule, lr=1e-2)
    opt.register_step_pre_hook(hook)
    for _ in range(3):
        opt.step()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        opt.step()  # captures 1 - lr * schedule(3), a constant
    for _ in range(200):
        graph.replay()
    torch.cuda.synchronize()
    frozen = torch.tensor(
        [1.0 - 1e-2 * schedule(k) for k in range(3)] + [1.0 - 1e-2 * schedule(3)] * 200,
        dtype=torch.float64,
    ).prod()
    live = torch.tensor([1.0 - 1e-2 * schedule(k) for k in range(203)], dtype=torch.float64).prod()
    assert w[0].item() == pytest.approx(frozen.item(), rel=1e-4)
    assert abs(frozen.item() - live.item()) > 0.1  # the schedule was lost
