"""What a sweep prints: one line per ended trial (its parameters and value) and, on a terminal, one
status line under them (tqdm, which Optuna already depends on): trials done of the budget, running,
pruned, failed, the best value so far with its parameters, elapsed time and ETA. Off a terminal
(a log file, a pipe) only the lines: a status line would be a line per update there."""

from __future__ import annotations

import sys
import time
from typing import Any, Mapping, TextIO

from optuna.trial import FrozenTrial, TrialState


def _value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def params_text(params: Mapping[str, Any]) -> str:
    """``lr=0.12 momentum=0.5``: each key less its group (``optimizer.``), unless two keys would clash."""
    leaves = [k.rsplit(".", 1)[-1] for k in params]
    names = [leaf if leaves.count(leaf) == 1 else key for key, leaf in zip(params, leaves)]
    return " ".join(f"{name}={_value(v)}" for name, v in zip(names, params.values()))


class SweepConsole:
    def __init__(self, n_trials: int, objective: str, stream: TextIO | None = None):
        self.stream = stream or sys.stdout
        self.n_trials, self.objective = n_trials, objective
        self.started = time.monotonic()
        self.bar = None
        if self.stream.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=n_trials, file=self.stream, dynamic_ncols=True, leave=False,
                            bar_format="[sweep] {n_fmt}/{total_fmt} {bar:12} {elapsed}<{remaining}{postfix}")

    def say(self, line: str) -> None:
        """A line of its own, above the status line (never glued to it)."""
        if self.bar is not None:
            self.bar.write(line, file=self.stream)
        else:
            print(line, file=self.stream, flush=True)

    def ended(self, trial: FrozenTrial, done: int, best: FrozenTrial | None) -> None:
        if trial.state == TrialState.COMPLETE:
            outcome = f"{self.objective}={trial.value:.4f}"
        elif trial.state == TrialState.PRUNED:
            at = max(trial.intermediate_values, default=None)
            outcome = f"at epoch {at}" if at is not None else ""
        else:
            outcome = trial.user_attrs.get("fail_reason", "")
        head = f"[sweep] trial {trial.number} ({done}/{self.n_trials}) {trial.state.name}"
        self.say(" | ".join(x for x in (f"{head} {outcome}".rstrip(), params_text(trial.params),
                                        self._best(best)) if x))

    def status(self, done: int, running: int, pruned: int, failed: int, best: FrozenTrial | None) -> None:
        if self.bar is None:
            return
        self.bar.n = done
        self.bar.set_postfix_str(f"running {running}, pruned {pruned}, failed {failed} | {self._best(best, True)}",
                                 refresh=False)
        self.bar.refresh()

    def _best(self, best: FrozenTrial | None, with_params: bool = False) -> str:
        if best is None:
            return "best=none yet"
        text = f"best={best.value:.4f} (trial {best.number})"
        return f"{text} {params_text(best.params)}" if with_params else text

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
