"""A trial that stops reporting is said in one line (and a tag on the sweep's run); nothing is killed."""

import re
import subprocess
import sys
import time

import optuna
import pytest
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState

from conftest import CALM, child_pids, load, parents_and_children, sweep_args
from lenet_sweep.sweep.stall import StallWatch
from lenet_sweep.trial import PACK_ATTR


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def running(number, reports):
    trial = optuna.trial.create_trial(state=TrialState.RUNNING, params={"x": 0.5},
                                      distributions={"x": FloatDistribution(0, 1)},
                                      intermediate_values={e: 0.5 for e in range(1, reports + 1)})
    trial.number = number
    return trial


def test_a_trial_silent_for_ten_median_epochs_is_said_once_then_again_when_it_reports():
    clock = Clock()
    watch = StallWatch(factor=10, floor=5, clock=clock)
    assert watch.check([running(0, 0)]) == []
    for epoch in range(1, 4):  # epochs of 2 s (the first report's wait holds start-up: not an epoch)
        clock.now += 30 if epoch == 1 else 2
        assert watch.check([running(0, epoch)]) == []
    assert watch.limit() == 20  # 10 x the median epoch, above the floor
    clock.now += 19
    assert watch.check([running(0, 3)]) == []
    clock.now += 2
    [line] = watch.check([running(0, 3)])
    assert line == ("trial 0 has reported nothing for 21 s (an epoch takes 2.0 s): its worker may be "
                    "stopped or hung; nothing is killed")
    clock.now += 30
    assert watch.check([running(0, 3)]) == []  # said once
    clock.now += 1
    assert watch.check([running(0, 4)]) == ["trial 0 reports again after 52 s (epoch 4)"]
    assert watch.ever == {0}


def test_before_any_epoch_the_floor_holds_and_ended_trials_are_forgotten():
    clock = Clock()
    watch = StallWatch(factor=10, floor=60, clock=clock)
    watch.check([running(0, 0), running(1, 0)])
    clock.now += 59
    assert watch.check([running(0, 0), running(1, 0)]) == []
    clock.now += 2
    assert [line.split(" has")[0] for line in watch.check([running(0, 0)])] == ["trial 0"]
    assert set(watch.seen) == {0}  # trial 1 ended


def test_a_packed_workers_spare_is_watched_from_when_it_enters_its_slot():
    """A packed worker holds one trial more than its slots (lenet_sweep.pack.pool.SPARE): it
    is RUNNING while it waits for a slot, silent by design, until its user attr ``pack`` is set."""
    clock = Clock()
    watch = StallWatch(factor=10, floor=60, clock=clock, waiting=lambda t: PACK_ATTR not in t.user_attrs)
    spare = running(0, 0)
    assert watch.check([spare]) == []
    clock.now += 600  # ten minutes in the inbox
    assert watch.check([spare]) == [] and watch.ever == set()
    spare.user_attrs[PACK_ATTR] = "1/4"  # it entered slot 1
    assert watch.check([spare]) == []
    clock.now += 59
    assert watch.check([spare]) == []  # its 60 s floor counts from its entry
    clock.now += 2
    [line] = watch.check([spare])
    assert line.startswith("trial 0 has reported nothing for 61 s")


@pytest.mark.sweep
def test_a_stopped_worker_is_said_and_the_sweep_goes_on_after_sigcont(tmp_path, client):
    # no XLA (its compile is a real silence of seconds); floor 8 s: four of the sweeper's 2 s polls
    args = sweep_args(tmp_path, *CALM, "trainer.epochs=80", "data.train_limit=500", "trainer.jit_compile=false",
                      "hydra.sweeper.stall_floor=8", "hydra.sweeper.stall_factor=5", n_trials=1)
    proc = subprocess.Popen([sys.executable, "-m", "lenet_sweep", *args, f"hydra.run.dir={tmp_path}/out"],
                            cwd=tmp_path, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 240
        while time.time() < deadline and proc.poll() is None:  # two epochs reported: epochs measured
            try:
                trials = load(tmp_path).trials
            except KeyError:  # the journal holds no study yet
                trials = []
            if trials and len(trials[0].intermediate_values) >= 3:
                break
            time.sleep(0.5)
        else:
            pytest.fail("the trial never reported three epochs")
        [worker] = [pid for pid in child_pids(proc.pid) if "resource_tracker" not in open(
            f"/proc/{pid}/cmdline").read()]
        # an epoch of 450 images takes well under a second; the limit is max(8 s, 5 epochs):
        # 25 s stopped is a stall on any machine this suite runs on
        subprocess.run(["kill", "-STOP", str(worker)], check=True)
        time.sleep(25)
        subprocess.run(["kill", "-CONT", str(worker)], check=True)
        out, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err[-2000:]
    # the stop is said (a machine loaded by other tests may add a stall of its own: not counted)
    stalled = [line for line in out.splitlines() if "has reported nothing" in line]
    assert stalled and all(line.startswith("[sweep] trial 0 has reported nothing for ") and
                           line.endswith("its worker may be stopped or hung; nothing is killed")
                           for line in stalled), out
    again = [int(x) for x in re.findall(r"\[sweep\] trial 0 reports again after (\d+) s", out)]
    # the sweeper sees reports at its 2 s polls: it may see the silence end up to a poll early, and
    # its start up to a poll late
    assert len(again) == len(stalled) and max(again) >= 25 - 2 * 2, out
    assert load(tmp_path).trials[0].state == TrialState.COMPLETE
    [parent], _ = parents_and_children(client)
    assert parent.data.tags["sweep.stalled_trials"] == "0"
