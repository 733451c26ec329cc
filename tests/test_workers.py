"""Several sweepers on one PostgreSQL-backed study: an exact total, and a worker killed mid-trial."""

import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import optuna
import pytest
import sqlalchemy
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState

from conftest import TINY, all_runs

pytestmark = pytest.mark.postgres


def worker(tmp_path, name, storage, tracking, *extra, n_trials=6, hostname=None):
    """One sweeper process (its own process group). With ``hostname`` it runs in a UTS namespace of
    its own under that host name (``unshare -u``, as root): to every other sweeper it is on another
    host, so only the heartbeat can tell that it died (the same-host process-id check does not apply)."""
    # one trial at a time, unpacked (a packed worker also keeps a spare trial RUNNING): each sweeper's
    # running trial is the one its death leaves behind
    args = ["-m", "hydra/sweeper=optuna", f"hydra.sweeper.n_trials={n_trials}", "hydra.sweeper.n_jobs=1",
            "hydra.launcher.pack=1",
            *TINY, f"hydra.sweeper.storage={storage}", f"mlflow.tracking_uri={tracking}",
            f"hydra.sweep.dir={tmp_path}/{name}", "hydra.sweeper.study_name=shared", *extra]
    command = [sys.executable, "-m", "lenet_sweep", *args]
    if hostname is not None:
        command = ["unshare", "-u", "sh", "-c", f'hostname {hostname} && exec "$@"', "sh", *command]
    log = open(tmp_path / f"{name}.log", "w")
    return subprocess.Popen(command, cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})


def finish(proc, tmp_path, name, timeout=600):
    assert proc.wait(timeout=timeout) == 0, (tmp_path / f"{name}.log").read_text()[-3000:]


@pytest.mark.sweep
def test_two_workers_share_the_total_exactly(tmp_path, pg_url, pg_mlflow_url):
    procs = [worker(tmp_path, f"w{i}", pg_url, pg_mlflow_url) for i in range(2)]
    for i, proc in enumerate(procs):
        finish(proc, tmp_path, f"w{i}")
    study = optuna.load_study(study_name="shared", storage=pg_url)
    assert sorted(t.number for t in study.trials) == list(range(6))
    assert all(t.state.is_finished() for t in study.trials)
    assert sum("seed_trial" in t.user_attrs for t in study.trials) == 1  # enqueued once per study
    sweepers = {f"{socket.gethostname()}:{proc.pid}" for proc in procs}
    assert {t.user_attrs["worker"] for t in study.trials} <= sweepers  # each ran by one of the two
    client = MlflowClient(pg_mlflow_url)
    runs = all_runs(client)
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert len(parents) == 2 and len(children) == 6
    assert sorted(int(r.data.tags["optuna.trial_number"]) for r in children) == list(range(6))
    assert {r.data.tags["mlflow.parentRunId"] for r in children} <= {p.info.run_id for p in parents}


def heartbeats(pg_url) -> int:
    engine = sqlalchemy.create_engine(pg_url)
    try:
        with engine.connect() as conn:
            return conn.execute(sqlalchemy.text("select count(*) from trial_heartbeats")).scalar()
    finally:
        engine.dispose()


@pytest.mark.sweep
def test_a_sweeper_killed_on_another_host_fails_by_heartbeat_and_the_survivor_completes(
        tmp_path, pg_url, pg_mlflow_url):
    if shutil.which("unshare") is None or os.geteuid() != 0:
        pytest.skip("needs root and unshare (util-linux) for a UTS namespace")
    beat = ["hydra.sweeper.heartbeat_interval=1", "hydra.sweeper.grace_period=4"]
    victim = worker(tmp_path, "victim", pg_url, pg_mlflow_url, *beat, "trainer.epochs=50",
                    "data.train_limit=2000", "hydra.sweeper.enqueue_seed_trial=false", n_trials=3,
                    hostname="otherhost")
    client = MlflowClient(pg_mlflow_url)
    deadline = time.time() + 240
    while time.time() < deadline:  # until the victim's trial trains (an epoch is logged)
        running = [r for r in all_runs(client) if "mlflow.parentRunId" in r.data.tags]
        if running and client.get_metric_history(running[0].info.run_id, "loss"):
            break
        time.sleep(1)
    else:
        pytest.fail("the victim never started a trial: " + (tmp_path / "victim.log").read_text()[-2000:])
    assert heartbeats(pg_url) >= 1  # the running trial beats
    os.killpg(victim.pid, signal.SIGKILL)  # the whole "host": sweeper and its training worker
    victim.wait()
    victim_trial = int(running[0].data.tags["optuna.trial_number"])
    dead = optuna.load_study(study_name="shared", storage=pg_url).trials[victim_trial]
    assert dead.user_attrs["worker"].startswith("otherhost:")

    survivor = worker(tmp_path, "survivor", pg_url, pg_mlflow_url, *beat, n_trials=3)
    finish(survivor, tmp_path, "survivor")
    study = optuna.load_study(study_name="shared", storage=pg_url)
    trials = {t.number: t for t in study.trials}
    assert len(trials) == 3 and all(t.state.is_finished() for t in trials.values())
    assert trials[victim_trial].state == TrialState.FAIL
    assert trials[victim_trial].user_attrs["fail_reason"] == (
        "its sweeper stopped beating (no heartbeat for 4 s): presumed dead")
    assert not any("beating" in t.user_attrs.get("fail_reason", "") for n, t in trials.items() if n != victim_trial)
    killed = client.get_run(running[0].info.run_id)
    assert killed.info.status == "KILLED" and killed.data.tags["optuna.trial_state"] == "FAIL"
    assert not [r for r in all_runs(client) if r.info.status == "RUNNING"]  # the victim's parent too
    assert f"trial {victim_trial} was left RUNNING by a dead sweeper (otherhost:" in (
        tmp_path / "survivor.log").read_text()


@pytest.mark.sweep
def test_retry_failed_requeues_the_dead_workers_trial(tmp_path, pg_url, pg_mlflow_url):
    beat = ["hydra.sweeper.heartbeat_interval=1", "hydra.sweeper.grace_period=3"]
    storage = optuna.storages.RDBStorage(pg_url, heartbeat_interval=1, grace_period=3)
    study = optuna.create_study(study_name="shared", storage=storage, direction="maximize")
    # a space where no trial diverges (sigmoid, normalised pixels, small steps): the sweep must not end
    # by too many failures whatever lr the lost trial and the sampler draw
    trial = study.ask({"optimizer.lr": optuna.distributions.FloatDistribution(0.001, 0.05, log=True)})
    trial.set_user_attr("worker", "lost-host:1")
    storage.record_heartbeat(trial._trial_id)  # then the "host" goes silent
    time.sleep(4)
    proc = worker(tmp_path, "w", pg_url, pg_mlflow_url, *beat, "hydra.sweeper.retry_failed=1",
                  "hydra.sweeper.enqueue_seed_trial=false", "optimizer.lr=tag(log, interval(0.001, 0.05))",
                  "optimizer.momentum=0.5", "model.activation=sigmoid", "data.normalize=true", n_trials=2)
    finish(proc, tmp_path, "w")
    study = optuna.load_study(study_name="shared", storage=pg_url)
    assert study.trials[0].state == TrialState.FAIL
    retried = [t for t in study.trials if t.system_attrs.get("failed_trial") == 0]
    assert len(retried) == 1  # the same lr again; the keys the lost trial never got are sampled
    assert retried[0].params["optimizer.lr"] == study.trials[0].params["optimizer.lr"]
    assert retried[0].state.is_finished()
    # the retried trial does not use up the budget: two counted trials besides the failed one
    assert len(study.trials) == 3


def advisory_locks(pg_url) -> int:
    engine = sqlalchemy.create_engine(pg_url)
    try:
        with engine.connect() as conn:
            return conn.execute(sqlalchemy.text(
                "select count(*) from pg_locks l join pg_database d on d.oid = l.database "
                "where l.locktype = 'advisory' and d.datname = current_database()")).scalar()
    finally:
        engine.dispose()


def test_the_ask_lock_on_a_studys_storage_is_a_postgresql_advisory_lock(pg_url):
    """The study's storage is Optuna's cache around the RDB storage: the lock must see through it
    (it did not, and sweepers on PostgreSQL asked without a lock)."""
    from lenet_sweep.stores import open_optuna_storage
    from lenet_sweep.sweep.ask_lock import ask_lock

    study = optuna.create_study(study_name="shared", storage=open_optuna_storage(pg_url))
    with ask_lock(study._storage, pg_url, "shared"):
        assert advisory_locks(pg_url) == 1
    assert advisory_locks(pg_url) == 0
    study._storage._backend.engine.dispose()
