"""Resuming (lenet_sweep.training.checkpoint): a run interrupted after some epochs, resumed, ends EXACTLY as
the same run uninterrupted, with one MLflow series and no step twice.

Exact equality, no tolerance: on one machine the same float operations in the same order give the
same bits, and a resume restores everything the next epoch reads (weights, optimizer variables, the
batch order's generator, the XLA variant). A run that learns is used (ReLU, softmax, normalised pixels,
momentum) so a resume that restored any of it wrongly (momentum lost, the first epoch's batch order
again, an optimizer step count reset) would change every later value. The one comparison with a
tolerance (a packed checkpoint continued unpacked) says why in its docstring.
"""

import json
import math
import signal
import subprocess
import sys
import time
from pathlib import Path

import keras
import numpy as np
import optuna
import pytest
from mlflow.tracking import MlflowClient

from conftest import TINY, all_runs, compose_cfg, run_cli
from lenet_sweep import data, tracking
from lenet_sweep.config import ConfigError
from lenet_sweep.model.packed import PackedLeNet, SlotParams
from lenet_sweep.stores import open_optuna_storage
from lenet_sweep.training import checkpoint
from lenet_sweep.training.train import PruningCallback, train
from lenet_sweep.trial import Reporter, TrialPayload

#: a run that learns (val_accuracy 0.1 -> 0.6 over 3 epochs on TINY's 460 images): no value repeats
LEARNS = ["model.activation=relu", "model.output_activation=softmax", "data.normalize=true",
          "trainer.epochs=3"]
SGD = ["optimizer.lr=0.05", "optimizer.momentum=0.9"]  # the default optimizer, unless a test's is given
TIMING = {"epoch_seconds", "samples_per_second", "train_seconds"}  # train_seconds: their sum
EPOCH_KEYS = ("loss", "accuracy", "val_loss", "val_accuracy")


class Interrupt(keras.callbacks.Callback):
    """Ctrl-C at the end of Keras' epoch index ``at`` (epoch ``at + 1``), after the run's own
    callbacks logged it but before its checkpoint is written: the resume trains that epoch again
    (and must not log it twice)."""

    def __init__(self, at: int):
        super().__init__()
        self.at = at

    def on_epoch_end(self, epoch, logs=None):
        if epoch == self.at:
            raise KeyboardInterrupt


def cfg(uri, *extra):
    optimizer = [] if any(e.startswith("optimizer=") for e in extra) else SGD
    return compose_cfg([*TINY, f"mlflow.tracking_uri={uri}", *LEARNS, *optimizer, *extra])


def untimed(metrics):
    return {k: v for k, v in metrics.items() if k not in TIMING}


def series(client, run_id, keys=EPOCH_KEYS):
    """Each key's (step, value) pairs as MLflow holds them, in step order."""
    return {k: sorted((m.step, m.value) for m in client.get_metric_history(run_id, k)) for k in keys}


def the_run(client, metrics):
    """The run whose final test_loss is ``metrics``' (each run of a store has its own)."""
    [run] = [r for r in all_runs(client) if r.data.metrics.get("test_loss") == metrics["test_loss"]
             and r.info.status == "FINISHED"]
    return run


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The uninterrupted run of each variant, trained once for the module (in-process, as the
    resumed ones): its final metrics and its MLflow series."""
    folder = tmp_path_factory.mktemp("reference")
    uri = f"sqlite:///{folder}/mlflow.db"
    client, out = MlflowClient(uri), {}

    def get(*extra):
        if extra not in out:
            metrics = train(cfg(uri, *extra))
            out[extra] = (metrics, series(client, the_run(client, metrics).info.run_id))
        return out[extra]

    return get


@pytest.mark.parametrize("extra", [(), ("optimizer=adam", "optimizer.lr=0.002"),
                                   ("trainer.fast=false",)], ids=["sgd-momentum", "adam", "keras-fit"])
def test_an_interrupted_run_resumed_ends_exactly_as_the_uninterrupted_one(reference, tmp_path, extra):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = MlflowClient(uri)
    first, second = tmp_path / "first", tmp_path / "second"
    expected, expected_series = reference(*extra)
    with pytest.raises(KeyboardInterrupt):
        train(cfg(uri, f"trainer.checkpoint_dir={first}", *extra), callbacks=[Interrupt(at=1)])
    [killed] = all_runs(client)
    assert killed.info.status == "KILLED"
    saved = checkpoint.read(first)
    assert saved.epoch == 1 and saved.run_id == killed.info.run_id and len(saved.history) == 1
    assert sorted(m.step for m in client.get_metric_history(killed.info.run_id, "loss")) == [1, 2]

    resumed = train(cfg(uri, f"trainer.checkpoint_dir={second}", f"trainer.resume={first}", *extra))

    assert untimed(resumed) == untimed(expected)  # exactly: the test metrics and the last epoch's
    [run] = all_runs(client)  # the same run, continued
    assert run.info.run_id == killed.info.run_id and run.info.status == "FINISHED"
    assert "error" not in run.data.tags and run.data.tags["resumed_after_epoch"] == "1"
    assert series(client, run.info.run_id) == expected_series  # steps 1, 2, 3 once each, same values
    assert [m.step for m in client.get_metric_history(run.info.run_id, "epoch_seconds")] == [1, 2, 3]
    assert not checkpoint.path_of(first).exists() and not checkpoint.path_of(second).exists()
    assert run.data.metrics["checkpoint_seconds"] > 0


def test_the_checkpoint_is_kept_on_request_and_holds_the_whole_run(tmp_path, mlflow_uri, client):
    folder = tmp_path / "job"
    # XLA off: under jit_compile=null the choice is measured and remembered per process, so which
    # variant a run uses depends on the CPU and on the runs before it in this pytest worker
    metrics = train(cfg(mlflow_uri, "trainer.epochs=2", f"trainer.checkpoint_dir={folder}",
                        "trainer.keep_checkpoint=true", "trainer.jit_compile=false"))
    [run] = all_runs(client)
    saved = checkpoint.read(folder)
    assert saved.epoch == 2 and saved.run_id == run.info.run_id
    logged = series(client, run.info.run_id)["val_loss"]
    assert [h["val_loss"] for h in saved.history] == [v for _, v in logged]
    assert saved.history[-1]["val_accuracy"] == metrics["val_accuracy"]
    assert saved.rng["bit_generator"] == "PCG64" and saved.jit == {"jit": False, "plan": [], "per_step": {}}
    assert [o.shape for o in saved.optimizer[:2]] == [(), ()]  # Keras' SGD: iterations, learning rate,
    assert len(saved.optimizer) == 2 + len(saved.weights)  # then one momentum per weight
    assert list(folder.iterdir()) == [folder / checkpoint.FILE]  # no temporary file left
    train(cfg(mlflow_uri, "trainer.epochs=2", f"trainer.checkpoint_dir={tmp_path / 'other'}"))
    assert not (tmp_path / "other" / checkpoint.FILE).exists()  # the default: removed at the end


def test_a_resume_with_another_config_or_no_checkpoint_is_refused_before_any_run(tmp_path, mlflow_uri,
                                                                                  client):
    folder = tmp_path / "job"
    with pytest.raises(KeyboardInterrupt):
        train(cfg(mlflow_uri, f"trainer.checkpoint_dir={folder}"), callbacks=[Interrupt(at=1)])
    with pytest.raises(ConfigError, match=r"optimizer.lr=0.05 \(now 0.1\)"):
        train(cfg(mlflow_uri, f"trainer.resume={folder}", "optimizer.lr=0.1"))
    with pytest.raises(ConfigError, match="no checkpoint.npz there"):
        train(cfg(mlflow_uri, f"trainer.resume={tmp_path / 'nowhere'}"))
    assert len(all_runs(client)) == 1 and checkpoint.path_of(folder).exists()


def test_a_diverged_run_leaves_no_checkpoint(tmp_path, mlflow_uri):
    folder = tmp_path / "job"
    with pytest.raises(Exception, match="diverged"):
        train(cfg(mlflow_uri, f"trainer.checkpoint_dir={folder}", "optimizer.lr=1000"))
    assert not checkpoint.path_of(folder).exists()  # a resume would diverge again


def study_with_trials(tmp_path, n):
    storage = open_optuna_storage(str(tmp_path / "optuna.journal"))
    study = optuna.create_study(study_name="s", storage=storage, direction="maximize")
    return study, [study.ask() for _ in range(n)]


def payload(tmp_path, client, number, resume_from=None, pruner="optuna.pruners.NopPruner"):
    run_id = client.create_run(tracking.experiment_id(client, "lenet_sweep")).info.run_id
    return TrialPayload(number=number, study_name="s", storage=str(tmp_path / "optuna.journal"),
                        pruner={"_target_": pruner, "_partial_": True}, monitor="val_accuracy",
                        run_id=run_id, resume_from=resume_from)


def test_a_retried_trial_continues_its_failed_attempt_in_its_own_run_and_trial(reference, tmp_path,
                                                                                mlflow_uri, client):
    """The sweeper re-queues a dead worker's trial as a new Optuna trial with a new run; the job
    resumes from the failed attempt's folder: its new run holds the whole series (no step twice),
    its new trial every epoch's value (the attempt's re-reported), and it ends as an uninterrupted
    trial."""
    study, _ = study_with_trials(tmp_path, 2)
    expected, expected_series = reference()
    failed = payload(tmp_path, client, 0)
    retry = payload(tmp_path, client, 1, resume_from=str(tmp_path / "0"))
    with pytest.raises(KeyboardInterrupt):
        train(cfg(mlflow_uri, f"trainer.checkpoint_dir={tmp_path / '0'}"), run_id=failed.run_id,
              callbacks=[PruningCallback(Reporter(failed).report, "val_accuracy"), Interrupt(at=1)])
    resumed = train(cfg(mlflow_uri, f"trainer.checkpoint_dir={tmp_path / '1'}"), run_id=retry.run_id,
                    resume_from=retry.resume_from,
                    callbacks=[PruningCallback(Reporter(retry).report, "val_accuracy")])
    assert untimed(resumed) == untimed(expected)
    assert series(client, retry.run_id) == expected_series
    run = client.get_run(retry.run_id)
    assert run.data.tags["resumed_after_epoch"] == "1" and run.data.params["optimizer.lr"] == "0.05"
    values = [v for _, v in expected_series["val_accuracy"]]
    trials = study.get_trials()
    assert trials[1].intermediate_values == dict(enumerate(values, start=1))  # the attempt's epoch 1 re-reported
    assert trials[0].intermediate_values == {1: values[0], 2: values[1]}
    assert not (tmp_path / "0" / checkpoint.FILE).exists() and not (tmp_path / "1" / checkpoint.FILE).exists()


def kill_when_checkpointed(proc: subprocess.Popen, path: Path, timeout: float = 300) -> None:
    """SIGKILL ``proc`` as soon as ``path`` appears (the end of its first epoch, or a little later):
    no handler runs, as when a worker is killed or runs out of memory."""
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None, f"exited before its first checkpoint:\n{proc.stderr.read()[-3000:]}"
        assert time.monotonic() < deadline, "no checkpoint written"
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()


#: longer epochs than TINY's, so that the kill lands mid-run; XLA off: epochs this long are timed by
#: ``trainer.jit_compile=null``, and the killed run and the uninterrupted one could then choose
#: differently (other kernels, other bits: seen on a loaded machine)
KILLED_RUN = ["data.train_limit=1000", "trainer.epochs=4", "trainer.verbose=0", "data.test_limit=500",
              "trainer.jit_compile=false", *LEARNS[:-1], *SGD]


def test_a_killed_cli_run_resumed_from_its_folder_ends_as_the_uninterrupted_run(tmp_path, mlflow_uri, client):
    """The realistic interruption: the CLI process SIGKILLed mid-run (its run stays RUNNING), then
    ``python -m lenet_sweep trainer.resume=<its Hydra folder>``."""
    args = [*KILLED_RUN, f"mlflow.tracking_uri={mlflow_uri}"]
    proc = subprocess.Popen([sys.executable, "-m", "lenet_sweep", *args, f"hydra.run.dir={tmp_path}/first"],
                            cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    kill_when_checkpointed(proc, tmp_path / "first" / checkpoint.FILE)
    saved = checkpoint.read(tmp_path / "first")
    assert 1 <= saved.epoch < 4, saved.epoch
    [killed] = all_runs(client)
    assert killed.info.status == "RUNNING"  # nothing ran to close it

    done = run_cli([*args, "trainer.resume=first", f"hydra.run.dir={tmp_path}/second"], tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    [run] = all_runs(client)
    assert run.info.run_id == killed.info.run_id and run.info.status == "FINISHED"
    assert run.data.tags["resumed_after_epoch"] == str(saved.epoch)
    assert not any((tmp_path / job / checkpoint.FILE).exists() for job in ("first", "second"))

    # the uninterrupted run, in this process (it computes what the CLI computes, bit for bit: measured)
    other = MlflowClient(f"sqlite:///{tmp_path}/uninterrupted.db")
    train(compose_cfg([*KILLED_RUN, f"mlflow.tracking_uri={other.tracking_uri}"]))
    [reference] = all_runs(other)
    keys = (*EPOCH_KEYS, "test_loss", "test_accuracy")
    assert series(client, run.info.run_id, keys) == series(other, reference.info.run_id, keys)
    assert [m.step for m in client.get_metric_history(run.info.run_id, "epoch_seconds")] == [1, 2, 3, 4]


# -- packed slots -------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def small():
    (x, y), _ = data.load_arrays(data.find_dir(None, download=False))
    x = x[:800].reshape(-1, 28, 28, 1).astype(np.float32) / 255.0
    return x[:640], y[:640].astype(np.int32), x[640:], y[640:800].astype(np.int32)


TRIAL = SlotParams(lr=0.05, momentum=0.9, activation="relu")


def train_slot(small, model_cfg, slot, neighbours, epochs, resume=None, save_after=None, folder=None):
    """``TRIAL`` (seed 5) in ``slot`` of a pack of 4 beside ``neighbours``: its per-epoch logs and
    final weights; ``save_after``: stop after that many epochs, its checkpoint in ``folder``."""
    x, y, xv, yv = small
    pack = PackedLeNet(model_cfg, 4, 32, x, y)
    for k in range(4):
        if k == slot:
            pack.assign(k, TRIAL, seed=5)
        else:
            pack.assign(k, neighbours[k % len(neighbours)], seed=50 + k)
    start = 0
    if resume is not None:
        saved = checkpoint.read(resume)
        velocities = checkpoint.sgd_velocities(saved, [tuple(w.shape[1:]) for w in pack.weights])
        pack.restore(slot, saved.epoch, saved.weights, velocities, saved.rng)
        start = saved.epoch
    logs = []
    for epoch in range(start, epochs):
        train_logs = pack.train_epoch(steps_per_execution=5)
        val, _ = pack.evaluate(xv, yv)
        logs.append({**train_logs[slot], **{f"val_{k}": v for k, v in val[slot].items()}})
        if save_after == epoch + 1:
            weights, velocities, rng = pack.slot_states([slot])[slot]
            optimizer = checkpoint.sgd_variables((epoch + 1) * pack.steps, TRIAL.lr, TRIAL.momentum,
                                                 velocities)
            checkpoint.Checkpoint(epoch + 1, weights, optimizer, logs, {}, None, rng).write(folder)
            return logs, None
    return logs, pack.slot_weights(slot)


def test_a_packed_slot_resumes_exactly_in_another_pack_of_its_size_and_slot(small, tmp_path):
    """The slot is saved after one epoch of three and continued in a new pack of four, beside other
    trials and in another slot: the same training logs and weights, bit for bit, as the slot never stopped
    (a slot's arithmetic does not depend on its neighbours or its place: measured; in a pack of
    another size the kernels differ and it continues equal up to float rounding)."""
    model_cfg = compose_cfg(["model.activation=relu"]).model
    first = [SlotParams(0.9), SlotParams(0.01, 0.5)]
    others = [SlotParams(0.3, 0.2, True, "relu"), SlotParams(1e4, 0.9, True, "relu")]  # one diverges
    whole, weights = train_slot(small, model_cfg, 2, first, epochs=3)
    train_slot(small, model_cfg, 2, first, epochs=3, save_after=1, folder=tmp_path)
    resumed, resumed_weights = train_slot(small, model_cfg, 0, others, epochs=3, resume=tmp_path)
    assert all(np.array_equal(a, b) for a, b in zip(weights, resumed_weights))
    assert [{k: m[k] for k in ("loss", "accuracy")} for m in resumed] == [
        {k: m[k] for k in ("loss", "accuracy")} for m in whole[1:]]
    # validation runs the slot's weights through the evaluation graph, whose one-stream first
    # convolution (6·K output channels) puts this slot's channels elsewhere in the vector registers: on
    # an AVX2 CPU its sums came out 2e-7 apart (a float32 ulp at 1.1); 1e-6 is a few ulps
    for got, want in zip(resumed, whole[1:]):
        assert got == pytest.approx(want, rel=1e-6)


#: smooth (sigmoid, softmax, normalised pixels): packed and unpacked kernels stay within float rounding
SMOOTH = ["model.activation=sigmoid", "model.output_activation=softmax", "data.normalize=true",
          "optimizer.lr=0.1", "optimizer.momentum=0.9", "seed=5", "trainer.epochs=3"]


def test_a_packed_checkpoint_continues_in_an_unpacked_run(tmp_path, mlflow_uri, client):
    """A retried trial may land in an unpacked worker: the slot's checkpoint (its SGD velocities as
    Keras' SGD momentums) continues there. Tolerance as in test_packed (the fused kernels differ from
    Keras' by a few ulps; in this smooth configuration 3 epochs stay within 4e-6): rel 1e-4, while
    a lost momentum or another batch order moves the values by 1e-2."""
    run_cfg = compose_cfg([*TINY, f"mlflow.tracking_uri={mlflow_uri}", *SMOOTH])
    splits = data.load(run_cfg.data)
    params = SlotParams(0.1, 0.9, False, "sigmoid")
    pack = PackedLeNet(run_cfg.model, 2, 32, splits.x_train, splits.y_train)
    pack.assign(1, params, seed=5)
    logs = []
    for epoch in range(3):
        train_logs = pack.train_epoch(steps_per_execution=100)
        val, _ = pack.evaluate(splits.x_val, splits.y_val)
        logs.append({**train_logs[1], **{f"val_{k}": v for k, v in val[1].items()}})
        if epoch == 0:
            weights, velocities, rng = pack.slot_states([1])[1]
            optimizer = checkpoint.sgd_variables(pack.steps, 0.1, 0.9, velocities)
            checkpoint.Checkpoint(1, weights, optimizer, [logs[0]], checkpoint.fingerprint(run_cfg), None,
                                  rng).write(tmp_path / "slot")
    metrics = train(run_cfg, resume_from=str(tmp_path / "slot"))
    for key in EPOCH_KEYS:
        assert metrics[key] == pytest.approx(logs[-1][key], rel=1e-4), key
    [run] = all_runs(client)
    assert [s for s, _ in series(client, run.info.run_id)["loss"]] == [1, 2, 3]


def test_an_unpacked_checkpoint_continues_in_a_pack(tmp_path, mlflow_uri):
    """The other way: an unpacked run's checkpoint (Keras' SGD momentums) continues in a slot and
    ends where the uninterrupted unpacked run ends (tolerance: the test above's)."""
    run_cfg = compose_cfg([*TINY, f"mlflow.tracking_uri={mlflow_uri}", *SMOOTH,
                           f"trainer.checkpoint_dir={tmp_path}"])
    with pytest.raises(KeyboardInterrupt):
        train(run_cfg, callbacks=[Interrupt(at=1)])
    expected = train(compose_cfg([*TINY, f"mlflow.tracking_uri={mlflow_uri}", *SMOOTH]))
    saved = checkpoint.read(tmp_path)
    splits = data.load(run_cfg.data)
    pack = PackedLeNet(run_cfg.model, 2, 32, splits.x_train, splits.y_train)
    pack.assign(0, SlotParams(0.1, 0.9, False, "sigmoid"), seed=5)
    velocities = checkpoint.sgd_velocities(saved, [tuple(w.shape[1:]) for w in pack.weights])
    pack.restore(0, saved.epoch, saved.weights, velocities, saved.rng)
    for _ in range(saved.epoch, 3):
        train_logs = pack.train_epoch(steps_per_execution=100)
    val, _ = pack.evaluate(splits.x_val, splits.y_val)
    logs = {**train_logs[0], **{f"val_{k}": v for k, v in val[0].items()}}
    for key in EPOCH_KEYS:
        assert logs[key] == pytest.approx(expected[key], rel=1e-4), key


PACK_SCRIPT = """
import json, queue, sys
from hydra import initialize_config_dir
from hydra._internal.callbacks import Callbacks
from hydra.core.global_hydra import GlobalHydra
from hydra.core.singleton import Singleton
from hydra.types import HydraContext, RunMode
from lenet_sweep import CONF_DIR
from lenet_sweep.config import register

register()
sweep, jobs = json.loads(sys.argv[1]), json.loads(sys.argv[2])
with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
    loader = GlobalHydra.instance().config_loader()
    config = loader.load_configuration("config", sweep, RunMode.MULTIRUN)
    from lenet_sweep.pack.worker import PackWorker
    inbox, ends = queue.Queue(), []
    for job in jobs:
        inbox.put(tuple(job))
    inbox.put(None)
    emit = lambda idx, overrides, value, exc: ends.append([idx, value, None if exc is None else repr(exc)])
    PackWorker((HydraContext(loader, Callbacks(config)), config, None, Singleton.get_state()), 2, inbox,
               emit).run()
    print("ENDS", json.dumps(ends))
"""


def pack_worker(tmp_path, sweep, jobs, wait=True):
    """A real packed worker (lenet_sweep.pack.worker.PackWorker, a pack of 2) in its own process,
    fed ``jobs`` ([idx, overrides]) as the sweeper's pool feeds it."""
    cmd = [sys.executable, "-c", PACK_SCRIPT, json.dumps(sweep), json.dumps(jobs)]
    proc = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return proc if not wait else finished(proc)


def finished(proc: subprocess.Popen) -> list:
    """A :func:`pack_worker`'s ends ([idx, value, error]), once it exits."""
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-3000:]
    return json.loads(out.split("ENDS", 1)[1])


@pytest.mark.sweep  # a sweep's packed worker, three times (make test-fast leaves it out)
def test_a_killed_packed_workers_trials_resume_in_a_new_worker_exactly(tmp_path, client):
    """A worker holding two trials is SIGKILLed mid-run; their retries (new Optuna trials, new runs,
    resume_from = the dead attempts' folders) in a new worker end exactly as the same two trials
    trained by a worker that was never killed, each with one continuous series and every epoch's
    value reported to its new trial."""
    fixed = [*KILLED_RUN, f"mlflow.tracking_uri=sqlite:///{tmp_path}/mlflow.db"]  # in every job's overrides
    sweep = [*fixed, f"hydra.sweep.dir={tmp_path}/multirun"]
    study, _ = study_with_trials(tmp_path, 6)
    lrs = ["optimizer.lr=0.05", "optimizer.lr=0.02"]
    payloads = {}

    def jobs(numbers, resume=None):
        for i, n in enumerate(numbers):
            where = None if resume is None else str(tmp_path / "multirun" / str(resume[i]))
            payloads[n] = payload(tmp_path, client, n, resume_from=where)
            payloads[n].write(tmp_path / "multirun" / str(n))
        return [[n, [lrs[i], *fixed, f"hydra.sweep.subdir={n}"]] for i, n in enumerate(numbers)]

    calm = pack_worker(tmp_path, sweep, jobs([0, 1]), wait=False)  # never killed, beside the killed one
    proc = pack_worker(tmp_path, sweep, jobs([2, 3]), wait=False)
    kill_when_checkpointed(proc, tmp_path / "multirun" / "3" / checkpoint.FILE)
    ends = finished(calm)
    assert [e[2] for e in ends] == [None, None]
    saved = [checkpoint.read(tmp_path / "multirun" / str(n)) for n in (2, 3)]
    assert all(s is not None and 1 <= s.epoch < 4 for s in saved), [s and s.epoch for s in saved]
    ends = pack_worker(tmp_path, sweep, jobs([4, 5], resume=[2, 3]))
    assert sorted(e[0] for e in ends) == [4, 5] and [e[2] for e in ends] == [None, None]
    values = {idx: value for idx, value, _ in ends}
    trials = study.get_trials()
    for uninterrupted, retried, attempt in ((0, 4, saved[0]), (1, 5, saved[1])):
        keys = (*EPOCH_KEYS, "test_loss", "test_accuracy")
        assert (series(client, payloads[retried].run_id, keys)
                == series(client, payloads[uninterrupted].run_id, keys))
        run = client.get_run(payloads[retried].run_id)
        assert run.data.tags["resumed_after_epoch"] == str(attempt.epoch)
        expected = [v for _, v in series(client, payloads[uninterrupted].run_id)["val_accuracy"]]
        assert trials[retried].intermediate_values == dict(enumerate(expected, start=1))
        assert values[retried] == expected[-1]  # the objective (val_accuracy), exactly
        assert not (tmp_path / "multirun" / str(retried) / checkpoint.FILE).exists()
        assert not (tmp_path / "multirun" / str(retried - 2) / checkpoint.FILE).exists()
    assert all(math.isfinite(v) for v in values.values())
