"""The sweep loop: keeps the plan's trials in flight through a launcher, each one's life handed to
:class:`~lenet_sweep.sweep.lifecycle.TrialLifecycle`; decides only when a trial starts and when the
sweep ends (budget, timeout, an exhausted grid, too many failures), and watches for stalls."""

from __future__ import annotations

import logging
import time
from concurrent.futures import FIRST_COMPLETED, Future, wait

import optuna
from optuna.trial import TrialState

from lenet_sweep.sweep import study as studies
from lenet_sweep.sweep.lifecycle import SweepFailed, TrialLifecycle
from lenet_sweep.sweep.phases import SweepPhases
from lenet_sweep.sweep.stall import StallWatch
from lenet_sweep.trial import PACK_ATTR

log = logging.getLogger(__name__)


class SweepLoop:
    """``launcher``: ``submit(overrides, idx) -> Future``, ``flush()``, ``shutdown(kill)``;
    ``in_flight``: the trials kept running (n_jobs, and a packed pool's spares)."""

    def __init__(self, trials: TrialLifecycle, launcher, in_flight: int, phases: SweepPhases):
        self.trials, self.launcher, self.in_flight, self.phases = trials, launcher, in_flight, phases
        self.plan, self.study = trials.plan, trials.study
        self._said_timeout = False

    def run(self) -> None:
        """Keep ``in_flight`` trials running (packed: one more per worker, prepared while its pack
        trains); start the next one as soon as any finishes. When the budget is taken by other
        workers' running trials, wait for them (or their heartbeat to stop) rather than end early."""
        s, launcher, trials, study = self.plan.settings, self.launcher, self.trials, self.study
        deadline = time.monotonic() + s["timeout"] if s["timeout"] else None
        poll = trials.heartbeat.interval or 2.0
        running: dict[Future, tuple[optuna.Trial, str]] = {}
        stalls = StallWatch(s["stall_factor"], s["stall_floor"],  # a packed trial: once in its slot
                            waiting=(lambda t: PACK_ATTR not in t.user_attrs) if self.plan.pack > 1 else None)
        started = None
        failures = 0
        try:
            while True:
                self._status(len(running))
                trials.reap()
                while len(running) < self.in_flight and not self._timed_out(deadline) \
                        and not getattr(study.sampler, "exhausted", False):
                    started = trials.start()
                    if started is None:
                        break
                    running[launcher.submit(trials.overrides(started[0]), started[0].number)] = started
                    self.phases.trial_started()
                    started = None
                launcher.flush()
                if not running:
                    if studies.count_finished(study) >= self.plan.n_trials or self._timed_out(deadline) \
                            or not studies.count_running(study):
                        self.phases.trials_ended()
                        return
                    time.sleep(poll)  # the rest of the budget runs in other workers
                    continue
                done, _ = wait(running, timeout=poll, return_when=FIRST_COMPLETED)
                self._say_stalls(stalls, [t for f, (t, _) in running.items() if f not in done])
                for future in done:
                    trial, run_id = running.pop(future)
                    failures += trials.tell(trial, future.result(), run_id) == TrialState.FAIL
                    if failures > s["max_failure_rate"] * self.plan.n_trials:
                        raise SweepFailed(
                            f"{failures} trials failed, more than hydra.sweeper.max_failure_rate="
                            f"{s['max_failure_rate']} of n_trials={self.plan.n_trials}; last reason: "
                            f"{study.trials[trial.number].user_attrs.get('fail_reason')}")
        except BaseException as exc:
            launcher.shutdown(kill=True)
            for trial, run_id in [*running.values(), *([started] if started else [])]:
                trials.abandon(trial, run_id, exc)
            raise
        finally:
            trials.close()

    def _status(self, running: int) -> None:
        study = self.study
        trials = study.get_trials(deepcopy=False)
        count = {state: sum(t.state == state for t in trials) for state in (TrialState.PRUNED, TrialState.FAIL)}
        self.trials.console.status(studies.count_finished(study), running, count[TrialState.PRUNED],
                                   count[TrialState.FAIL], studies.best(study))

    def _say_stalls(self, stalls: StallWatch, running: list[optuna.Trial]) -> None:
        """One line when a running trial stops reporting (and when it reports again); the sweep's
        run gets the numbers of the trials that stalled as its tag ``sweep.stalled_trials``."""
        before, trials = len(stalls.ever), self.trials
        for line in stalls.check(self.study._storage.get_trial(t._trial_id) for t in running):
            trials.console.say(f"[sweep] {line}")
        if len(stalls.ever) > before:
            trials.client.set_tag(trials.parent_id, "sweep.stalled_trials", ",".join(map(str, sorted(stalls.ever))))

    def _timed_out(self, deadline: float | None) -> bool:
        if deadline is None or time.monotonic() <= deadline:
            return False
        if not self._said_timeout:
            log.info(f"timeout of {self.plan.settings['timeout']} s reached: no new trial starts")
            self._said_timeout = True
        return True
