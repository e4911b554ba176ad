"""tp.sweep(..., executor=ex): chunks of stacked models on a concurrent.futures-style
executor (torchpenalty.sweep.executors), the same table as one process, and the fault
model (a worker that dies loses at most its chunk; resume finishes the sweep)."""

from __future__ import annotations

import multiprocessing as mp
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor

import numpy as np
import pytest
import torch
from torch import nn

import torchpenalty as tp
from torchpenalty.sweep import executors as E

GRID = [1e-3, 1e-1, 10.0]


def make_model() -> nn.Module:  # top level: picklable
    return nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1))


def data():
    g = torch.Generator().manual_seed(3)
    X = torch.randn(60, 4, generator=g)
    return X, X @ torch.tensor([1.0, -1.0, 0.5, 0.0]) + 0.2 * torch.randn(60, generator=g)


KW = dict(strengths=GRID, folds=3, epochs=4, batch_size=16, progress=False, refit=False,
          vectorize=True)  # fmt: skip


def table(result):
    return np.array([[r["val_loss_mean"], r["val_loss_se"], r["train_loss_mean"],
                      r["param_norm_mean"]] for r in result.table])  # fmt: skip


@pytest.fixture(scope="module")
def single():
    return tp.sweep(make_model, data(), **KW)


def pool(n=2, method="forkserver"):
    return ProcessPoolExecutor(n, mp_context=mp.get_context(method))


def test_a_process_pool_gives_the_single_process_table(single):
    with pool() as ex:
        r = tp.sweep(make_model, data(), executor=ex, **KW)
    np.testing.assert_allclose(table(r), table(single), rtol=1e-6, atol=1e-6)
    assert r.best_strength == single.best_strength
    assert r.settings["chunks"] == 2  # one chunk per worker


def test_a_dask_local_cluster_gives_the_single_process_table(single):
    distributed = pytest.importorskip("distributed")  # a dev extra: installed in CI
    with (
        distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                 dashboard_address=None) as cluster,
        distributed.Client(cluster) as client,
    ):  # fmt: skip
        r = tp.sweep(make_model, data(), executor=client.get_executor(), **KW)
    np.testing.assert_allclose(table(r), table(single), rtol=1e-6, atol=1e-6)


def test_records_land_in_the_checkpoint_as_chunks_finish(single):
    states = []
    with ThreadPoolExecutor(2) as ex:
        r = tp.sweep(make_model, data(), executor=ex, on_chunk=states.append, **KW)
    assert [len(s["records"]) for s in states] == [0, 3 * 3 // 2 + 1, 9] or [
        len(s["records"]) for s in states
    ][-1] == 9
    np.testing.assert_allclose(table(r), table(single), rtol=1e-6, atol=1e-6)


def test_a_worker_killed_mid_chunk_then_resume_gives_the_same_table(single, tmp_path, monkeypatch):
    """The first chunk's worker ends its process after one epoch; the pool breaks, the retry
    is refused, the sweep raises SweepIncomplete with what finished, and a resume in this
    process trains the rest: the same table."""
    monkeypatch.setenv(E.DIE_ENV, str(tmp_path / "died"))
    saved = []
    with pool(2, "spawn") as ex, pytest.raises(E.SweepIncomplete) as info:
        tp.sweep(make_model, data(), executor=ex, on_chunk=saved.append, **KW)
    assert (tmp_path / "died").exists()
    state = info.value.state
    assert len(state["records"]) < 9 and saved[-1]["records"] == state["records"]
    r = tp.sweep(make_model, data(), resume=state, **KW)
    np.testing.assert_allclose(table(r), table(single), rtol=1e-6, atol=1e-6)


def test_a_worker_that_dies_once_is_retried(single, tmp_path, monkeypatch):
    """A thread pool survives the failure (the hook raises there instead of exiting):
    the chunk is submitted again and the sweep completes."""

    def fail_once(spec, tasks, _real=E.train_chunk, _seen=[]):  # noqa: B006
        if not _seen:
            _seen.append(1)
            raise RuntimeError("worker lost")
        return _real(spec, tasks)

    monkeypatch.setattr(E, "train_chunk", fail_once)
    # one thread: chunks trained at once in threads of one process share torch's global
    # generator, so two threads are not reproducible (processes are; see the tests above)
    with ThreadPoolExecutor(1) as ex:
        r = tp.sweep(make_model, data(), executor=ex, **KW)
    np.testing.assert_allclose(table(r), table(single), rtol=1e-6, atol=1e-6)


def test_make_model_must_be_picklable():
    with (
        ThreadPoolExecutor(1) as ex,
        pytest.raises(TypeError, match="make_model must be picklable"),
    ):
        tp.sweep(lambda: make_model(), data(), executor=ex, **KW)


@pytest.mark.parametrize(
    ("executor", "error", "match"),
    [
        (object(), TypeError, "executor must be a concurrent.futures-style executor"),
        ("dask", TypeError, "executor must be"),
    ],
)
def test_a_bad_executor_is_refused_by_name(executor, error, match):
    with pytest.raises(error, match=match):
        tp.sweep(make_model, data(), executor=executor, **KW)


def test_a_forking_pool_is_refused_by_name():
    with pool(1, "fork") as ex, pytest.raises(ValueError, match="executor must be a process pool"):
        tp.sweep(make_model, data(), executor=ex, **KW)


def test_executor_and_halving_together_are_refused():
    with ThreadPoolExecutor(1) as ex, pytest.raises(ValueError, match="executor runs a sweep"):
        tp.sweep(make_model, data(), executor=ex, halving=True, **KW)


def test_workers_of_known_executors():
    with ThreadPoolExecutor(3) as ex:
        assert E.workers(ex) == 3
    assert E.workers(object()) is None


# ---------------------------------------------------------------------------- command line
def thread_pool():  # a factory for --executor (this module is importable: tests/ on sys.path)
    return ThreadPoolExecutor(2)


def _cli_table(folder):
    import json

    with open(folder / "report.json", encoding="utf-8") as f:
        rows = json.load(f)["table"]
    return np.array([[r["val_loss_mean"], r["train_loss_mean"]] for r in rows])


def test_cli_workers_and_executor_give_the_same_report(tmp_path, capsys):
    from torchpenalty import cli

    base = ["sweep", "--epochs", "2", "--folds", "2", "--strengths", "1e-3,1", "--quiet",
            "--model", "mlp:8"]  # fmt: skip
    assert cli.main([*base, "--out", str(tmp_path / "one")]) == 0
    assert cli.main([*base, "--out", str(tmp_path / "two"), "--workers", "2"]) == 0
    assert cli.main([*base, "--out", str(tmp_path / "ex"), "--executor",
                     "test_executors:thread_pool"]) == 0  # fmt: skip
    one = _cli_table(tmp_path / "one")
    np.testing.assert_allclose(_cli_table(tmp_path / "two"), one, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(_cli_table(tmp_path / "ex"), one, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize(
    ("extra", "match"),
    [
        (["--workers", "0"], "--workers must be an integer >= 1, got 0"),
        (["--workers", "2", "--executor", "a:b"], "--workers conflicts with --executor"),
        (["--executor", "nomodule"], "--executor needs MODULE:FACTORY"),
        (["--executor", "no_such_module_17:make"], "cannot import 'no_such_module_17'"),
        (["--executor", "test_executors:make_model"], "must return an executor with submit"),
    ],
)
def test_cli_executor_errors_are_one_line(tmp_path, capsys, extra, match):
    from torchpenalty import cli

    code = cli.main(["sweep", "--epochs", "1", "--quiet", "--out", str(tmp_path / "r"), *extra])
    err = capsys.readouterr().err
    assert code == 2 and match in err and len(err.strip().splitlines()) == 1
