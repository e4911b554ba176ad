"""The README's code runs as written: its ```python blocks in order, in one namespace, in a
temporary folder (as tests/test_docs.py does for the guide)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
FENCE = re.compile(r"^```python[^\n]*\n(.*?)^```", re.S | re.M)


def test_readme_is_a_first_page():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(text.splitlines()) <= 150
    assert text.index("make demo") < text.index("make test") < text.index("```python")
    for link in re.findall(r"\]\((docs/[^)#]+)", text):
        assert (ROOT / link).is_file(), link


@pytest.mark.filterwarnings("error")
def test_readme_blocks_run(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    torch.manual_seed(0)
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    blocks = FENCE.findall(text)
    assert len(blocks) >= 3
    namespace: dict = {"__name__": "readme"}
    for i, code in enumerate(blocks):
        try:
            exec(compile(code, f"README.md block {i + 1}", "exec"), namespace)
        except Exception as exc:  # name the block that failed
            raise AssertionError(f"README.md block {i + 1} failed: {exc!r}") from exc
    assert "regularized" in capsys.readouterr().out.lower()
