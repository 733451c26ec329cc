"""What a sweep prints: one line per ended trial (its parameters and value) and, on a terminal, one
status line under them (tqdm, which Optuna already depends on): trials done of the budget, running,
pruned, failed, the best value so far with its parameters (several objectives: the size of the
Pareto front), elapsed time and ETA. Off a terminal (a log file, a pipe) only the lines: a status
line would be a line per update there."""

from __future__ import annotations

import sys
import time
from typing import Any, Mapping, Sequence, TextIO

from optuna.trial import FrozenTrial, TrialState


def _value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def values_text(objectives: Sequence[str], values: Sequence[float]) -> str:
    """``val_accuracy=0.8123 train_seconds=12.3``: each objective's value (a count as a whole number)."""
    return " ".join(f"{name}={v:.0f}" if name == "num_params" else f"{name}={v:.4g}"
                    for name, v in zip(objectives, values))


def params_text(params: Mapping[str, Any]) -> str:
    """``lr=0.12 momentum=0.5``: each key less its group (``optimizer.``), unless two keys would clash."""
    leaves = [k.rsplit(".", 1)[-1] for k in params]
    names = [leaf if leaves.count(leaf) == 1 else key for key, leaf in zip(params, leaves)]
    return " ".join(f"{name}={_value(v)}" for name, v in zip(names, params.values()))


class SweepConsole:
    def __init__(self, n_trials: int, objectives: Sequence[str], stream: TextIO | None = None):
        self.stream = stream or sys.stdout
        self.n_trials, self.objectives = n_trials, list(objectives)
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

    def ended(self, trial: FrozenTrial, done: int, best: FrozenTrial | list[FrozenTrial] | None) -> None:
        if trial.state == TrialState.COMPLETE and len(self.objectives) > 1:
            outcome = values_text(self.objectives, trial.values)
        elif trial.state == TrialState.COMPLETE:
            outcome = f"{self.objectives[0]}={trial.value:.4f}"
        elif trial.state == TrialState.PRUNED:
            at = max(trial.intermediate_values, default=None)
            outcome = f"at epoch {at}" if at is not None else ""
        else:
            outcome = trial.user_attrs.get("fail_reason", "")
        head = f"[sweep] trial {trial.number} ({done}/{self.n_trials}) {trial.state.name}"
        self.say(" | ".join(x for x in (f"{head} {outcome}".rstrip(), params_text(trial.params),
                                        self._best(best)) if x))

    def status(self, done: int, running: int, pruned: int, failed: int,
               best: FrozenTrial | list[FrozenTrial] | None) -> None:
        if self.bar is None:
            return
        self.bar.n = done
        self.bar.set_postfix_str(f"running {running}, pruned {pruned}, failed {failed} | {self._best(best, True)}",
                                 refresh=False)
        self.bar.refresh()

    def _best(self, best: FrozenTrial | list[FrozenTrial] | None, with_params: bool = False) -> str:
        """The best trial so far; several objectives: the Pareto front (``best`` a list)."""
        if best is None:
            return "best=none yet"
        if isinstance(best, list):
            numbers = ", ".join(str(t.number) for t in sorted(best, key=lambda t: t.number))
            return f"front: {len(best)} trial{'s' if len(best) != 1 else ''}" + (
                f" ({numbers})" if len(best) <= 6 else "")
        text = f"best={best.value:.4f} (trial {best.number})"
        return f"{text} {params_text(best.params)}" if with_params else text

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
