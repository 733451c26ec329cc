"""Packed sweeps (hydra.launcher.pack=K) end to end: real CLI subprocesses, journal storage, MLflow."""

import re
import signal
import subprocess
import sys
import time

import pytest
from optuna.trial import TrialState

from conftest import CALM, all_runs, child_pids, compose_cfg, load, parents_and_children, run_cli, sweep_args
from lenet_sweep import tracking

pytestmark = pytest.mark.sweep  # every test here runs a sweep (make test-fast skips them)

def test_a_packed_sweep_records_each_trial_as_an_unpacked_one(tmp_path, client):
    proc = run_cli(sweep_args(tmp_path, *CALM, "hydra.launcher.pack=4", "hydra.sweeper.n_jobs=4",
                              "trainer.epochs=2", n_trials=6, register=True), tmp_path, probe_tensorflow=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    # the winner was registered by the packed worker, not in the sweeper; no TensorFlow line on stderr
    assert "[registry] lenet_sweep version 1" in proc.stdout + proc.stderr
    assert proc.stdout.rstrip().endswith("[probe] tensorflow imported: False"), proc.stdout[-500:]
    assert not [line for line in proc.stderr.splitlines() if ".cc:" in line], proc.stderr[-2000:]
    study = load(tmp_path)
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 6  # n_trials exactly
    [parent], children = parents_and_children(client)
    assert parent.info.status == "FINISHED" and len(children) == 6
    expected = set(tracking.flat_params(compose_cfg(["trainer.epochs=2"]))) | {"num_params", "precision"}
    slots = []
    for child in children:
        number = int(child.data.tags["optuna.trial_number"])
        assert child.info.status == "FINISHED" and child.data.tags["optuna.trial_state"] == "COMPLETE"
        assert set(child.data.params) == expected  # the params an unpacked trial records
        assert float(child.data.params["optimizer.lr"]) == study.trials[number].params["optimizer.lr"]
        steps = sorted(m.step for m in client.get_metric_history(child.info.run_id, "val_accuracy"))
        assert steps == sorted(study.trials[number].intermediate_values) == [1, 2]  # epochs from 1, both
        assert child.data.metrics["val_accuracy"] == pytest.approx(study.trials[number].value)
        assert {"test_accuracy", "test_loss", "epoch_seconds"} <= set(child.data.metrics)
        artifacts = {a.path for a in client.list_artifacts(child.info.run_id)}
        assert {"lenet.weights.h5", "figures", "config.yaml", ".hydra", "model_summary.txt"} <= artifacts
        slot, size = child.data.tags["pack"].split("/")
        assert size == "4"
        # the slot convolutions' formulations the pack ran (one per convolution, from slot_layers')
        forms = child.data.tags["pack_formulation"].split(",")
        assert len(forms) == 2 and set(forms) <= {"depthwise", "per_slot", "patches", "grouped"}
        slots.append(slot)
    assert len(set(slots)) == 4 and len(slots) == 6  # four slots, two of them refilled


def test_a_pruned_slot_takes_the_next_trial_while_its_neighbour_trains(tmp_path, client):
    """One worker, a pack of 2. With sampler seed 0 the random sampler draws lr 1e-6 for trials 0 and 2
    (no learning: val_accuracy 0.11 after epoch 1, below the threshold 0.3: pruned) and lr 0.1 for
    trial 1 (measured 0.485, 0.605, 0.675, 0.65 over its 4 epochs) (lenet_sweep.sweep.samplers)."""
    proc = run_cli(sweep_args(
        tmp_path, "hydra.launcher.pack=2", "hydra.sweeper.n_jobs=2", "hydra/sweeper/sampler=random",
        "hydra.sweeper.seed=0", "hydra.sweeper.enqueue_seed_trial=false", "hydra/sweeper/pruner=threshold",
        "hydra.sweeper.pruner.lower=0.3", "optimizer.lr=choice(0.000001, 0.1)", "optimizer.momentum=0.9",
        "optimizer.nesterov=false", "model.activation=relu", "data.normalize=true", "data.train_limit=2000",
        "trainer.epochs=4", n_trials=3), tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    study = load(tmp_path)
    assert [t.params["optimizer.lr"] for t in study.trials] == [1e-6, 0.1, 1e-6]
    assert [t.state for t in study.trials] == [TrialState.PRUNED, TrialState.COMPLETE, TrialState.PRUNED]
    first, neighbour, next_ = study.trials
    assert list(first.intermediate_values) == [1]  # pruned after its first epoch
    # the next trial was asked with the first two (the worker's spare, prepared while they train) and
    # took the first one's slot when it was pruned, while the neighbour trained on
    assert next_.datetime_start < first.datetime_complete and next_.datetime_complete < neighbour.datetime_complete
    assert next_.user_attrs["pack"] == first.user_attrs["pack"] != neighbour.user_attrs["pack"]
    runs = {int(r.data.tags["optuna.trial_number"]): r for r in parents_and_children(client)[1]}
    assert runs[2].data.tags["pack"] == runs[0].data.tags["pack"] != runs[1].data.tags["pack"]
    # (which epochs of the neighbour the next trial shared is a matter of timing: not asserted)
    assert all(r.info.status == "FINISHED" for r in runs.values())


def test_a_space_that_varies_other_keys_runs_unpacked_and_says_why(tmp_path, client):
    """Under the default hydra.launcher.pack=null (chosen from the devices: lenet_sweep.devices.default_pack)."""
    proc = run_cli(sweep_args(tmp_path, *CALM, "data.batch_size=choice(32, 64)", n_trials=1), tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    [pack] = re.findall(r"hydra.launcher.pack=(\d+) \(chosen for (?:CPU|GPU)\): trials not packed", proc.stdout)
    assert int(pack) > 1
    assert ("trials not packed (the search space varies data.batch_size; a pack "
            "varies only optimizer.lr, optimizer.momentum, optimizer.nesterov, model.activation, "
            "trainer.epochs, seed); one trial per worker") in proc.stdout
    children = parents_and_children(client)[1]
    assert len(children) == 1 and "pack" not in children[0].data.tags


def wait_until_both_slots_train(client, proc, timeout=240):
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        children = parents_and_children(client)[1]
        if len(children) == 2 and all(client.get_metric_history(c.info.run_id, "loss") for c in children):
            return
        time.sleep(1)
    pytest.fail("the pack never trained")


def test_a_killed_packed_workers_trials_are_retried_with_their_parameters(tmp_path, client):
    """SIGKILL to a packed worker holding two trials: both fail naming the death and the retry, a new
    worker runs each again with the same parameters, and the sweep ends with exactly n_trials."""
    args = sweep_args(tmp_path, *CALM, "hydra.launcher.pack=2", "hydra.sweeper.n_jobs=2", "trainer.epochs=30",
                      "data.train_limit=2000", "hydra.sweeper.retry_failed=1", n_trials=2)
    proc = subprocess.Popen([sys.executable, "-m", "lenet_sweep", *args], cwd=tmp_path, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        wait_until_both_slots_train(client, proc)
        deadline = time.time() + 120  # and both have kept a checkpoint (written at each epoch's end)
        while not all((tmp_path / "multirun" / n / "checkpoint.npz").is_file() for n in "01"):
            assert time.time() < deadline and proc.poll() is None, "no checkpoint written"
            time.sleep(0.2)
        [worker] = [pid for pid in child_pids(proc.pid) if "multiprocessing" in open(
            f"/proc/{pid}/cmdline").read() and "resource_tracker" not in open(f"/proc/{pid}/cmdline").read()]
        subprocess.run(["kill", "-9", str(worker)], check=True)
        out, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err[-2000:]
    study = load(tmp_path)
    assert [t.state for t in study.trials] == [TrialState.FAIL] * 2 + [TrialState.COMPLETE] * 2
    retried = {t.system_attrs["failed_trial"]: t for t in study.trials[2:]}
    assert sorted(retried) == [0, 1]
    for trial in study.trials[:2]:
        assert trial.user_attrs["fail_reason"] == ("the worker process died (killed or out of memory); queued "
                                                   "again with the same parameters (hydra.sweeper.retry_failed=1)")
        assert retried[trial.number].params == trial.params
        assert f"trial {trial.number} (" in out and "queued again with the same parameters" in out
    assert not [r for r in all_runs(client) if r.info.status == "RUNNING"]
    children = {c.data.tags["optuna.trial_number"]: c for c in parents_and_children(client)[1]}
    assert {n: c.info.status for n, c in children.items()} == {
        "0": "FAILED", "1": "FAILED", "2": "FINISHED", "3": "FINISHED"}
    assert children["0"].data.tags["optuna.fail_reason"].startswith("the worker process died")
    # each retry resumed from its failed attempt's last checkpoint (both had trained an epoch or more)
    # and its run holds the whole series once: 30 epochs, steps 1..30
    for trial in study.trials[2:]:
        child = children[str(trial.number)]
        attempt = trial.system_attrs["retry_history"][-1]
        assert child.data.tags["resumed_from"] == str(tmp_path / "multirun" / str(attempt))
        assert int(child.data.tags["resumed_after_epoch"]) >= 1
        steps = [m.step for m in client.get_metric_history(child.info.run_id, "loss")]
        assert steps == list(range(1, 31))
        assert sorted(trial.intermediate_values) == list(range(1, 31))


def test_sigterm_ends_every_slot_of_a_pack_killed(tmp_path, client):
    args = sweep_args(tmp_path, *CALM, "hydra.launcher.pack=2", "hydra.sweeper.n_jobs=2", "trainer.epochs=50",
                      "data.train_limit=2000", n_trials=2)
    proc = subprocess.Popen([sys.executable, "-m", "lenet_sweep", *args], cwd=tmp_path, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        wait_until_both_slots_train(client, proc)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert "[sweep] terminated (SIGTERM): running trials marked FAIL, their runs KILLED" in out
    assert [t.state for t in load(tmp_path).trials] == [TrialState.FAIL] * 2
    assert not [r for r in all_runs(client) if r.info.status == "RUNNING"]
    assert {c.info.status for c in parents_and_children(client)[1]} == {"KILLED"}
