"""The examples and benchmarks run (benchmarks in their --quick mode)."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(*args, timeout=300, check=True):
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    res = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=env)
    if check:
        assert res.returncode == 0, res.stdout + res.stderr
    return res if not check else res.stdout


def test_tutorial_done_right():
    out = run(sys.executable, "examples/tutorial_done_right.py")
    assert "Validation loss improved with L2" in out
    assert "fc1.bias    (10,)    no           bias" in out


def test_choose_strength(tmp_path):
    out = run(sys.executable, "examples/choose_strength.py", "--out", str(tmp_path / "c.png"))
    assert "1-SE strength" in out and "exactly zero" in out
    assert (tmp_path / "c.png").stat().st_size > 10_000


@pytest.mark.parametrize(
    ("script", "last_lines"),
    [
        ("examples/torchrun_ddp.py", ["step  40", "done on 2 ranks (gloo)"]),
        ("examples/torchrun_fsdp2.py", ["step  40", "rank 0: ", "rank 1: "]),
    ],
)
def test_torchrun_examples(script, last_lines):
    res = run(sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
              script, check=False)  # fmt: skip
    for line in last_lines:  # every rank finished its work and printed its result
        assert line in res.stdout, res.stdout + res.stderr
    # Exit status 0, except for a rare abort of gloo's worker threads while a process is
    # torn down after its work is done (pytorch/pytorch#190489); anything else fails.
    teardown_abort = "terminate called without an active exception" in res.stderr
    assert res.returncode == 0 or teardown_abort, res.stdout + res.stderr


@pytest.mark.parametrize(
    ("script", "marker"),
    [
        ("benchmarks/step_overhead.py", "x"),
        ("benchmarks/sweep_speed.py", "x"),
        ("benchmarks/decay_rules.py", "/ decoupled"),
        ("benchmarks/denormal_scaling.py", "x"),
        ("benchmarks/engine_step.py", "x"),
        ("benchmarks/sweep_stream.py", "of stacked"),
        ("benchmarks/halving.py", "model-epochs saved"),
        ("benchmarks/convex.py", "sk/ours"),
    ],
)
def test_benchmarks_quick(script, marker):
    out = run(sys.executable, script, "--quick")
    assert marker in out  # the ratio column against the same run's baseline


def test_gpu_sweep_benchmark_runs_on_the_cpu():
    """benchmarks/gpu_sweep.py is written for a GPU; on the CPU it runs its smoke mode."""
    out = run(sys.executable, "benchmarks/gpu_sweep.py", "--device", "cpu", "--quick")
    assert "model-steps/s" in out and "the plan's stack size" in out


def _test_functions() -> list[tuple[str, str]]:
    """(``file::name``, source with decorators) of every test function in tests/."""
    import ast
    import glob

    out = []
    for path in sorted(glob.glob(os.path.join(ROOT, "tests", "test_*.py"))):
        with open(path, encoding="utf-8") as f:
            text = f.read()
        lines = text.splitlines()
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.FunctionDef) and node.name.startswith("test_"):
                first = min([node.lineno, *(d.lineno for d in node.decorator_list)])
                body = "\n".join(lines[first - 1 : node.end_lineno])
                out.append((f"{os.path.basename(path)}::{node.name}", body))
    return out


def test_every_example_and_benchmark_runs_in_exactly_one_test():
    # A script counts as run by a test whose source (decorators included) names its
    # folder and its file name: examples run in this file, test_compact.py
    # (compact_group_lasso) and test_docs.py (finetune_l2sp); benchmarks here (--quick)
    # and in test_evidence.py (evidence). A new script without a test, or a second test
    # running the same script, fails here.
    scripts = sorted(
        (folder, name)
        for folder in ("examples", "benchmarks")
        for name in os.listdir(os.path.join(ROOT, folder))
        if name.endswith(".py")
    )
    tests = _test_functions()
    me = "test_examples.py::test_every_example_and_benchmark_runs_in_exactly_one_test"
    runs = {
        f"{folder}/{name}": [
            t
            for t, src in tests
            if t != me and folder in src and re.search(rf"\b{re.escape(name)}", src)
        ]
        for folder, name in scripts
    }
    assert {s: ts for s, ts in runs.items() if len(ts) != 1} == {}
