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
    with ThreadPoolExecutor(2) as ex:
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


# ---------------------------------------------------------------------------- halving
RAW_GRID = [0.1, 1.0, 10.0, 100.0, 1e3, 1e4, 1e5]  # raw-target units: L1 factor 1/sd(y)
HKW = dict(KW, strengths=RAW_GRID, epochs=10, lr=0.1, penalty="l1")


def raw_data():
    """A raw target with std about 1000 (the engine trains on it standardized, at
    strengths times 1/sd per fold)."""
    X, y = data()
    return X, 1000 * y + 5000


def halving_table(result):
    stopped = [-1 if r["stopped_epoch"] is None else r["stopped_epoch"] for r in result.table]
    return np.column_stack([table(result), stopped])


@pytest.fixture(scope="module")
def halved():
    return tp.sweep(make_model, raw_data(), halving=True, **HKW)


def test_halving_on_a_process_pool_gives_the_single_process_table(halved):
    """Every rung's chunks go to the workers with their one-model states; the decisions,
    records and stopped epochs equal one process's (which stops 1e4 and 1e5 early)."""
    assert [r["stopped_epoch"] for r in halved.table][-2:] == [2, 2]
    with pool() as ex:
        r = tp.sweep(make_model, raw_data(), halving=True, executor=ex, **HKW)
    np.testing.assert_allclose(halving_table(r), halving_table(halved), rtol=1e-6, atol=1e-6)
    assert r.settings["model_epochs"] == halved.settings["model_epochs"] < 7 * 3 * 10
    assert (r.best_strength, r.strength_1se) == (halved.best_strength, halved.strength_1se)


def test_halving_with_a_worker_killed_then_resume_gives_the_same_table(halved, tmp_path,
                                                                       monkeypatch):  # fmt: skip
    """A worker dies in the first rung: SweepIncomplete; a resume in this process repeats
    the rungs of the strengths still training and gives the same table."""
    monkeypatch.setenv(E.DIE_ENV, str(tmp_path / "died"))
    with pool(2, "spawn") as ex, pytest.raises(E.SweepIncomplete) as info:
        tp.sweep(make_model, raw_data(), halving=True, executor=ex, **HKW)
    assert (tmp_path / "died").exists()
    r = tp.sweep(make_model, raw_data(), halving=True, resume=info.value.state, **HKW)
    np.testing.assert_allclose(halving_table(r), halving_table(halved), rtol=1e-6, atol=1e-6)


def test_strengths_stay_in_the_users_units_in_every_path(halved):
    """The engine trains on the standardized target at strength * (1/sd) per fold; the
    records and the table show the grid's values whatever the path, and the refit after
    halving (same chosen strength) is the full sweep's refit: the same conversion."""
    with ThreadPoolExecutor(2) as ex:
        paths = {
            "one process": tp.sweep(make_model, raw_data(), **HKW),
            "executor": tp.sweep(make_model, raw_data(), executor=ex, **HKW),
            "halving": halved,
            "halving on the executor": tp.sweep(
                make_model, raw_data(), halving=True, executor=ex, **HKW
            ),
        }
    saved = []  # a state with the first records only: the resume trains the rest
    tp.sweep(make_model, raw_data(), on_chunk=saved.append, **HKW)
    state = {**saved[-1], "records": saved[-1]["records"][:5]}
    paths["resumed"] = tp.sweep(make_model, raw_data(), resume=state, **HKW)
    for name, r in paths.items():
        assert [row["strength"] for row in r.table] == RAW_GRID, name
        assert {rec.strength for rec in r.records} == set(RAW_GRID), name
        assert r.settings["strength_units"] == "raw target", name
    full = tp.sweep(make_model, raw_data(), **{**HKW, "refit": "best"})
    half = tp.sweep(make_model, raw_data(), halving=True, **{**HKW, "refit": "best"})
    assert half.chosen_strength == full.chosen_strength
    for a, b in zip(half.model.parameters(), full.model.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)


# ---------------------------------------------------------------------------- threads
def test_two_threads_give_the_single_process_table(single):
    """Threads of one process share torch's global generator: model initialization holds
    a lock while it seeds it, so two threads give the same table every time."""
    for _ in range(3):
        with ThreadPoolExecutor(2) as ex:
            r = tp.sweep(make_model, data(), executor=ex, **KW)
        np.testing.assert_allclose(table(r), table(single), rtol=1e-6, atol=1e-6)


def make_dropout_model() -> nn.Module:  # vmap forward: dropout draws random numbers
    return nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Dropout(0.3), nn.Linear(16, 1))


def test_dropout_draws_from_each_chunks_own_generator():
    """Each chunk's dropout masks come from its generator (seed, chunk, first epoch): two
    threads, two processes and one process with the same chunks give one table, and the
    sweep leaves torch's global generator as it found it."""
    before = torch.get_rng_state()
    with ThreadPoolExecutor(2) as ex:
        threads = [tp.sweep(make_dropout_model, data(), executor=ex, **KW) for _ in range(2)]
    assert torch.equal(torch.get_rng_state(), before)
    with pool() as ex:
        procs = tp.sweep(make_dropout_model, data(), executor=ex, **KW)
    assert threads[0].settings["forward"] == "vmap"
    for r in (threads[1], procs):
        np.testing.assert_allclose(table(r), table(threads[0]), rtol=1e-6, atol=1e-6)
    torch.manual_seed(0)  # the global generator's state does not enter the sweep
    one = tp.sweep(make_dropout_model, data(), **KW)
    torch.manual_seed(1)
    np.testing.assert_allclose(table(tp.sweep(make_dropout_model, data(), **KW)), table(one),
                               rtol=1e-6, atol=1e-6)  # fmt: skip


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


def test_cli_halving_in_one_process_and_on_workers(tmp_path, capsys):
    """--halving is saved with the run; with --workers 2 the report's table (with the
    stopped epochs) equals one process's."""
    import json

    from torchpenalty import cli

    base = ["sweep", "--epochs", "10", "--folds", "2", "--strengths", "1e-3,1e-2,1e-1,1e3,1e4",
            "--quiet", "--model", "mlp:8", "--lr", "0.1", "--halving"]  # fmt: skip
    assert cli.main([*base, "--out", str(tmp_path / "one")]) == 0
    assert cli.main([*base, "--out", str(tmp_path / "two"), "--workers", "2"]) == 0
    reports = [json.loads((tmp_path / d / "report.json").read_text()) for d in ("one", "two")]
    assert reports[0]["inputs"]["halving"] is True
    stopped = [[row["stopped_epoch"] for row in r["table"]] for r in reports]
    assert stopped[0] == stopped[1] and any(e is not None for e in stopped[0])  # some stop
    np.testing.assert_allclose(_cli_table(tmp_path / "two"), _cli_table(tmp_path / "one"),
                               rtol=1e-6, atol=1e-6)  # fmt: skip


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
