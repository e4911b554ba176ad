"""DDP and FSDP2 with 2 gloo processes on CPU, each scenario compared with the same
training in a single process on the concatenated batch (1e-6)."""

from __future__ import annotations

import dist_worker as w
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import torchpenalty as tp

pytestmark = pytest.mark.skipif(not dist.is_available(), reason="torch.distributed unavailable")


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    folder = tmp_path_factory.mktemp("dist")
    mp.spawn(w.run, args=(2, str(folder / "store"), str(folder)), nprocs=2, join=True)
    return [torch.load(folder / f"rank{r}.pt", weights_only=True) for r in range(2)]


@pytest.mark.parametrize("name", list(w.SCENARIOS))
def test_matches_single_process(ranks, name):
    _wrapper, mode, penalty, optimizer = w.SCENARIOS[name]
    ref = w.train(None, mode, penalty, optimizer)
    for r in ranks:
        res = r[name]
        assert "error" not in res, res.get("error")
        for n, p in ref["params"].items():
            torch.testing.assert_close(res["params"][n], p, rtol=1e-6, atol=1e-6, msg=f"{name} {n}")
        # reg.value() is the global value, the same on every rank
        assert res["value"] == pytest.approx(ref["value"], rel=1e-6)
    # and the penalty mattered: without it the result differs
    plain = w.train(None, mode, "none", optimizer)
    diff = max((plain["params"][n] - ref["params"][n]).abs().max().item() for n in ref["params"])
    assert diff > 1e-4


def test_find_unused_parameters(ranks):
    for r in ranks:
        s = r["special"]
        assert "error" not in s, s.get("error")
        assert "find_unused_parameters=True" in s["find_unused_loss"]
        assert "mode='grad'" in s["find_unused_loss"]
        assert s["find_unused_grad_ok"] is True


def test_whole_tensor_penalties_refused_on_shards(ranks):
    for r in ranks:
        s = r["special"]
        assert (
            "Orthogonal needs whole matrices, but parameter '0.weight' is sharded along dim 0"
            in s["orthogonal"]
        )
        assert (
            "GroupLasso needs whole slices along dim 1" in s["group1"]
            and "GroupLasso(dim=0)" in s["group1"]
        )
        assert "L2SP needs whole tensors (its reference tensors are not sharded)" in s["l2sp"]


def test_sweep_splits_the_grid_and_gathers_the_table(ranks):
    X, _Y = w.data()
    X = torch.cat([X] * 5)
    y = (
        X[:, 0]
        - 2 * X[:, 1]
        + 0.1 * torch.randn(40, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    )
    single = tp.sweep(lambda: torch.nn.Linear(6, 1), (X, y), strengths=[1e-3, 1e-1, 1.0], folds=3,
                      epochs=5, batch_size=8, progress=False, solver="train")  # fmt: skip
    for r in ranks:
        s = r["special"]
        assert s["sweep_chunks"] >= 2  # the grid really was split
        assert len(s["sweep_table"]) == 3
        for a, b in zip(s["sweep_table"], single.table, strict=True):
            assert a["strength"] == b["strength"]
            assert a["val_loss_mean"] == pytest.approx(b["val_loss_mean"], rel=1e-6)
