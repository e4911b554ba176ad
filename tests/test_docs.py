"""The user guide cannot rot: every ```python block of docs/*.md runs (each page's blocks in
order, in one namespace, in a temporary folder), and the examples the guide quotes run."""

from __future__ import annotations

import copy
import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import torchpenalty as tp

ROOT = Path(__file__).resolve().parent.parent
PAGES = sorted((ROOT / "docs").glob("*.md"))
FENCE = re.compile(r"^```python[^\n]*\n(.*?)^```", re.S | re.M)


def blocks(page: Path) -> list[str]:
    return FENCE.findall(page.read_text(encoding="utf-8"))


def test_the_guide_has_pages_with_code():
    names = {p.name for p in PAGES}
    assert {"index.md", "conventions.md", "decay.md", "parameters.md", "strength.md",
            "scale.md", "integrations.md", "compiled.md"} <= names  # fmt: skip
    for page in PAGES:
        if page.name not in ("index.md", "performance.md"):  # tables of measurements
            assert blocks(page), f"{page.name} has no python block"


def test_index_links_every_page():
    index = (ROOT / "docs" / "index.md").read_text(encoding="utf-8")
    for page in PAGES:
        if page.name != "index.md":
            assert f"({page.name})" in index, page.name


@pytest.mark.parametrize("page", PAGES, ids=[p.name for p in PAGES])
def test_page_runs(page, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    torch.manual_seed(0)
    namespace: dict = {"__name__": f"docs_{page.stem}"}
    for i, code in enumerate(blocks(page)):
        lineno = (
            page.read_text(encoding="utf-8")[: page.read_text(encoding="utf-8").find(code)].count(
                "\n"
            )
            + 1
        )
        try:
            exec(compile(code, f"{page.name}:{lineno}", "exec"), namespace)
        except Exception as exc:  # name the block that failed
            raise AssertionError(
                f"{page.name}, block {i + 1} (line {lineno}) failed: {exc!r}"
            ) from exc


# ----------------------------------------------------------------------- examples/finetune_l2sp.py
def load_example(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "examples" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_finetune_l2sp_runs_and_prints_a_table():
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT / "src")}
    res = subprocess.run([sys.executable, "examples/finetune_l2sp.py", "--seeds", "2"], cwd=ROOT,
                         capture_output=True, text=True, timeout=300, env=env)  # fmt: skip
    assert res.returncode == 0, res.stderr
    lines = res.stdout.strip().splitlines()
    assert lines[0].startswith("held-out target MSE over 2 seeds")
    assert lines[1].split() == [
        "penalty",
        "mean",
        "MSE",
        "SE",
        "minus",
        "none",
        "SE",
        "strengths",
        "chosen",
    ]
    rows = {line.split()[0]: line.split()[1:] for line in lines[2:]}
    assert list(rows) == ["none", "L2", "L2-SP"]
    for name, cells in rows.items():
        mean, se, diff, diff_se = map(float, cells[:4])
        assert mean > 0 and se >= 0 and diff_se >= 0
        picks = cells[4:]
        if name == "none":
            assert diff == 0 and picks == ["-"]
        else:  # one strength per seed, from the grid
            assert len(picks) == 2 and all(
                float(s) in load_example("finetune_l2sp").STRENGTHS for s in picks
            )


def test_displaced_l2_is_l2sp():
    # The example sweeps L2-SP as L2 on w = w0 + d: both trainings take the same steps.
    ex = load_example("finetune_l2sp")
    torch.manual_seed(0)
    pre = ex.student()
    x, y = torch.randn(20, ex.D), torch.randn(20, 1)
    displaced = ex.fit(ex.Displaced(pre), x, y, tp.L2(0.3), epochs=30)
    direct = ex.fit(copy.deepcopy(pre), x, y, tp.L2SP(0.3, reference=pre), epochs=30)
    assert [n for n, _ in tp.select(ex.Displaced(pre))] == [
        "d_0_weight",
        "d_2_weight",
        "d_4_weight",
    ]
    for n, p in direct.named_parameters():
        k = n.replace(".", "_")
        w = getattr(displaced, f"w0_{k}") + getattr(displaced, f"d_{k}")
        torch.testing.assert_close(w, p, rtol=0, atol=1e-5)
    with torch.no_grad():
        torch.testing.assert_close(displaced(x), direct(x), rtol=0, atol=1e-5)
