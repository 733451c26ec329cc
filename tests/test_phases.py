"""Where a trial's time goes (lenet_sweep.training.runtime): each run records its phases, and a packed worker
keeps its pack training — a trial enters at the first epoch boundary after it arrives (prepared by
the starter thread meanwhile), the pack's width follows its live trials, and ending trials are
evaluated by one traced evaluator.

Real processes and stores: a real PackWorker in its own process, fed as the sweeper feeds it (a
trial's payload is written, then the trial is sent, when a slot is free), a real Optuna journal and
a real MLflow store. The one comparison of times is the one the claim is about: a refilled slot's
wait against the epoch its neighbour trained meanwhile, both recorded by the same worker (no fixed
number of seconds)."""

import json
import subprocess
import sys

import optuna
import pytest

from conftest import CALM, TINY, all_runs, compose_cfg, parents_and_children, run_cli, sweep_args
from lenet_sweep import tracking
from lenet_sweep.stores import open_optuna_storage
from lenet_sweep.training import runtime
from lenet_sweep.training.train import train
from lenet_sweep.trial import Reporter, TrialPayload

PHASES = [runtime.phase_metric(p) for p in runtime.PHASES]

#: a real PackWorker of ``size`` slots in this process, fed ``first`` at once, and each job of
#: ``after[idx]`` (its payload written just then) once trial ``idx`` ended, as the sweeper does; at
#: the end it says how often its graphs were traced and how many clients and storages it opened
WORKER = """
import json, queue, sys
from hydra import initialize_config_dir
from hydra._internal.callbacks import Callbacks
from hydra.core.global_hydra import GlobalHydra
from hydra.core.singleton import Singleton
from hydra.types import HydraContext, RunMode
from lenet_sweep import CONF_DIR
from lenet_sweep.config import register

register()
spec = json.loads(sys.argv[1])
with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
    loader = GlobalHydra.instance().config_loader()
    config = loader.load_configuration("config", spec["sweep"], RunMode.MULTIRUN)
    from lenet_sweep import trial
    from lenet_sweep.pack.worker import PackWorker
    from lenet_sweep.training import runtime
    from lenet_sweep.trial import TrialPayload
    inbox, ends, pending = queue.Queue(), [], {int(k): v for k, v in spec["after"].items()}

    def send(job):
        TrialPayload(**job["payload"]).write(job["folder"])
        inbox.put((job["idx"], job["overrides"]))

    def emit(idx, overrides, value, exc):
        ends.append([idx, value, None if exc is None else repr(exc)])
        for job in pending.pop(idx, []):
            send(job)
        if not pending:
            inbox.put(None)

    for job in spec["first"]:
        send(job)
    worker = PackWorker((HydraContext(loader, Callbacks(config)), config, None, Singleton.get_state()),
                        spec["size"], inbox, emit)
    worker.run()
    print("RESULT", json.dumps({
        "ends": ends,
        "evaluators": {a: t._traced["test_all"].experimental_get_tracing_count()
                       for a, (m, t) in worker.evaluators.items()},
        "widths": {w: lanes.train_chunk.experimental_get_tracing_count()
                   for w, lanes in worker.pack.lanes_of.items()},
        "clients": len(runtime._CLIENTS), "storages": len(trial._STORAGES)}))
"""


def run_worker(tmp_path, size, first, after=None, timeout=600):
    fixed = [f"mlflow.tracking_uri=sqlite:///{tmp_path}/mlflow.db", f"hydra.sweep.dir={tmp_path}/multirun"]
    spec = {"sweep": fixed, "size": size, "first": first, "after": after or {}}
    proc = subprocess.run([sys.executable, "-c", WORKER, json.dumps(spec)], cwd=tmp_path, text=True,
                          capture_output=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.split("RESULT", 1)[1])


class Jobs:
    """Trials of one study (a real journal) with their runs (a real MLflow store)."""

    def __init__(self, tmp_path, client):
        self.tmp_path, self.client = tmp_path, client
        storage = open_optuna_storage(str(tmp_path / "optuna.journal"))
        self.study = optuna.create_study(study_name="s", storage=storage, direction="maximize")
        self.runs: dict[int, str] = {}

    def job(self, *overrides: str) -> dict:
        number = self.study.ask().number
        run_id = self.client.create_run(tracking.experiment_id(self.client, "lenet_sweep")).info.run_id
        self.runs[number] = run_id
        payload = {"number": number, "study_name": "s", "storage": str(self.tmp_path / "optuna.journal"),
                   "pruner": {"_target_": "optuna.pruners.NopPruner", "_partial_": True},
                   "monitor": "val_accuracy", "run_id": run_id}
        return {"idx": number, "payload": payload, "folder": str(self.tmp_path / "multirun" / str(number)),
                "overrides": ["data.test_limit=500", "trainer.verbose=0", *overrides,
                              f"mlflow.tracking_uri=sqlite:///{self.tmp_path}/mlflow.db",
                              f"hydra.sweep.subdir={number}"]}

    def series(self, number: int, key: str) -> list[float]:
        return [m.value for m in sorted(self.client.get_metric_history(self.runs[number], key),
                                        key=lambda m: m.step)]

    def metrics(self, number: int) -> dict[str, float]:
        return self.client.get_run(self.runs[number]).data.metrics


@pytest.mark.sweep  # a packed worker's process (make test-fast leaves it out)
def test_a_refilled_slot_waits_less_than_an_epoch_and_the_pack_narrows_while_it_is_empty(tmp_path, client):
    """A pack of 2: trials 0 (2 epochs) and 1 (10 epochs) start together; trial 2 is sent when trial
    0 has ended (its payload written then, as the sweeper writes it). While the slot is empty its
    neighbour trains at width 1; trial 2, prepared meanwhile, enters at the next boundary: its wait
    for the slot is less than an epoch of its neighbour's. One evaluator (traced once) tests the
    three trials; each width's graph is traced once; one MLflow client, one Optuna storage."""
    jobs = Jobs(tmp_path, client)
    data = ["data.train_limit=6000"]
    first = [jobs.job(*data, "trainer.epochs=2", "optimizer.lr=0.05"),
             jobs.job(*data, "trainer.epochs=10", "optimizer.lr=0.02")]
    refill = jobs.job(*data, "trainer.epochs=2", "optimizer.lr=0.03")
    out = run_worker(tmp_path, 2, first, after={0: [refill]})
    assert sorted(e[0] for e in out["ends"]) == [0, 1, 2] and all(e[2] is None for e in out["ends"])
    assert out["evaluators"] == {"sigmoid": 1} and out["widths"] == {"1": 1, "2": 1}
    assert out["clients"] == 1 and out["storages"] == 1
    for number in range(3):
        metrics = jobs.metrics(number)
        assert set(PHASES) <= set(metrics), number
        assert metrics[runtime.phase_metric("train")] >= sum(jobs.series(number, "epoch_seconds"))
    widths = jobs.series(1, runtime.PACK_WIDTH)
    assert widths[:3] == [2, 2, 1] and 2 in widths[3:]  # narrowed while the slot was empty, refilled
    assert jobs.series(0, runtime.PACK_WIDTH) == [2, 2]
    waited = jobs.metrics(2)[runtime.phase_metric("wait_slot")]
    assert waited < max(jobs.series(1, "epoch_seconds"))
    tags = {n: client.get_run(jobs.runs[n]).data.tags["pack"] for n in range(3)}
    assert tags[2] == tags[0] != tags[1]  # trial 2 took trial 0's slot


@pytest.mark.sweep
def test_a_trial_sent_while_the_pack_is_full_enters_where_a_trial_leaves(tmp_path, client):
    """Three trials for a pack of 2 at once: the third, prepared while the first two train, takes
    the first one's slot at the boundary where it leaves; its neighbour never trains narrower."""
    jobs = Jobs(tmp_path, client)
    data = ["data.train_limit=1000"]
    out = run_worker(tmp_path, 2, [jobs.job(*data, "trainer.epochs=2"), jobs.job(*data, "trainer.epochs=4"),
                                   jobs.job(*data, "trainer.epochs=2")])
    assert all(e[2] is None for e in out["ends"]) and out["widths"] == {"2": 1}
    assert jobs.series(1, runtime.PACK_WIDTH) == [2, 2, 2, 2]
    assert jobs.series(2, runtime.PACK_WIDTH) == [2, 2]
    tags = {n: client.get_run(jobs.runs[n]).data.tags["pack"] for n in range(3)}
    assert tags[2] == tags[0] != tags[1]


@pytest.mark.sweep
def test_a_lone_trial_in_a_pack_of_four_trains_at_width_one(tmp_path, client):
    jobs = Jobs(tmp_path, client)
    out = run_worker(tmp_path, 4, [jobs.job("data.train_limit=512", "trainer.epochs=3")])
    assert out["ends"][0][2] is None and out["widths"] == {"1": 1}
    assert jobs.series(0, runtime.PACK_WIDTH) == [1, 1, 1]
    assert client.get_run(jobs.runs[0]).data.tags["pack"] == "0/4"


def test_a_single_run_records_its_phases_but_no_wait(tmp_path, mlflow_uri, client):
    metrics = train(compose_cfg([*TINY, f"mlflow.tracking_uri={mlflow_uri}"]))
    [run] = all_runs(client)
    recorded = {k: v for k, v in run.data.metrics.items() if k.startswith("phase.")}
    assert set(recorded) == set(PHASES) - {runtime.phase_metric("wait_slot"), runtime.phase_metric("wait_record")}
    assert all(v >= 0 for v in recorded.values())
    assert recorded[runtime.phase_metric("train")] >= metrics["epoch_seconds"]


def test_a_payload_says_when_it_was_written_and_reporters_share_one_storage(tmp_path):
    storage = open_optuna_storage(str(tmp_path / "optuna.journal"))
    study = optuna.create_study(study_name="s", storage=storage, direction="maximize")
    payloads = []
    for folder in ("a", "b"):
        trial = study.ask()
        TrialPayload(number=trial.number, study_name="s", storage=str(tmp_path / "optuna.journal"),
                     pruner={"_target_": "optuna.pruners.NopPruner", "_partial_": True},
                     monitor="val_accuracy", run_id="r").write(tmp_path / folder)
        payloads.append(TrialPayload.read(tmp_path / folder))
    assert payloads[0].written_at <= payloads[1].written_at
    assert (tmp_path / "a" / ".trial.json").stat().st_mtime == pytest.approx(payloads[0].written_at, abs=5)
    first, second = Reporter(payloads[0]), Reporter(payloads[1])
    assert first.trial.study._storage is second.trial.study._storage
    second.report(1, 0.5)
    assert study.trials[1].intermediate_values == {1: 0.5}


def test_a_failed_run_records_the_phases_it_went_through(tmp_path, mlflow_uri, client):
    with pytest.raises(Exception, match="diverged"):
        train(compose_cfg([*TINY, f"mlflow.tracking_uri={mlflow_uri}", "model.activation=relu",
                           "model.output_activation=softmax", "data.normalize=true", "optimizer.lr=1000"]))
    [run] = all_runs(client)
    assert run.info.status == "FAILED"
    assert {runtime.phase_metric("setup"), runtime.phase_metric("train")} <= set(run.data.metrics)


@pytest.mark.sweep
def test_unpacked_trials_record_the_same_phases(tmp_path, client):
    proc = run_cli(sweep_args(tmp_path, *CALM, "hydra.launcher.pack=1", "hydra.sweeper.n_jobs=1", n_trials=2),
                   tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    children = parents_and_children(client)[1]
    assert len(children) == 2
    for child in children:
        recorded = {k for k in child.data.metrics if k.startswith("phase.")}
        assert recorded == set(PHASES) - {runtime.phase_metric("wait_record")}
        assert "pack" not in child.data.tags and runtime.PACK_WIDTH not in child.data.metrics
