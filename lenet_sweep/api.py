"""The Python API: one run and one sweep, with the command line's composition and checks.

    from lenet_sweep import api
    result = api.run(["optimizer.lr=0.1", "trainer.epochs=2"])        # in this process
    print(result.metrics["test_accuracy"], result.run_id)
    best = api.sweep(["hydra.sweeper.n_trials=8", "trainer.epochs=2"])  # python -m lenet_sweep -m ...
    print(best.best_value, best.best_params, best.best_run_id)

:func:`run` composes the config as ``python -m lenet_sweep`` does (Hydra's compose API over the same
``conf/``), checks it (:func:`lenet_sweep.config.validate`, the tracking store) and trains in this
process; a mistake raises :class:`lenet_sweep.config.UserError` with the command line's one line.
:func:`sweep` runs the sweep's command itself (its workers are processes either way) and returns what
it wrote to ``optimization_results.yaml``; a sweep that fails raises UserError with its ``error:``
line. Results are in MLflow and the Optuna storage as for the command line.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from lenet_sweep.config import UserError


@dataclass(frozen=True)
class RunResult:
    run_id: str  # the MLflow run
    metrics: dict[str, float]  # the final epoch's metrics, test_accuracy and test_loss
    tracking_uri: str


@dataclass(frozen=True)
class SweepResult:
    study_name: str
    storage: str  # the Optuna storage (a password masked)
    direction: str  # several objectives: their directions, comma-separated
    best_trial: int  # several objectives: the Pareto front's best on the first objective
    best_value: float  # (on the first objective)
    best_params: dict[str, Any]
    best_run_id: str  # the best trial's MLflow run
    output_dir: str  # the best trial's job folder
    trials: dict[str, int]  # trials by state
    results_file: str  # its optimization_results.yaml
    # several objectives: the Pareto front, each member's trial, params, values and mlflow_run_id
    solutions: list[dict[str, Any]] | None = None


def run(overrides: Sequence[str] = ()) -> RunResult:
    """Train one configuration (``overrides`` as on the command line) in this process."""
    from hydra import compose, initialize_config_dir

    from lenet_sweep import CONF_DIR, tracking
    from lenet_sweep.config import register, validate

    register()
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            cfg = compose("config", overrides=list(overrides))
    except Exception as exc:  # Hydra's composition error: a key, a group option or a value type
        raise UserError(" ".join(str(exc).split())) from None
    validate(cfg)
    uri = tracking.check_store(cfg.mlflow)
    from lenet_sweep.training.train import train  # TensorFlow: only once the config holds

    client = tracking.client_for(cfg.mlflow)
    experiment = tracking.experiment_id(client, cfg.mlflow.experiment_name)
    run_id = client.create_run(experiment, run_name=cfg.mlflow.run_name,
                               tags=tracking.context_tags()).info.run_id
    try:
        metrics = train(cfg, run_id=run_id)
    except BaseException as exc:  # ended by train's own run handling; a run never opened stays not
        if client.get_run(run_id).info.status == "RUNNING":  # RUNNING either way
            tracking.end_run(client, run_id, exc)
        raise
    return RunResult(run_id, metrics, uri)


_RESULTS = re.compile(r"^\[sweep\] results: (.+optimization_results\.yaml)$", re.M)


def sweep(overrides: Sequence[str] = (), cwd: str | os.PathLike | None = None) -> SweepResult:
    """``python -m lenet_sweep -m hydra/sweeper=optuna OVERRIDES`` (its console passes through)."""
    import yaml

    args = [sys.executable, "-m", "lenet_sweep", "-m",
            *(["hydra/sweeper=optuna"] if not any(o.startswith("hydra/sweeper=") for o in overrides) else []),
            *overrides]
    proc = subprocess.run(args, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    sys.stdout.write(proc.stdout)
    if proc.returncode != 0:
        errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
        sys.stderr.write(proc.stderr)
        raise UserError(errors[-1].removeprefix("error: ") if errors else
                        f"the sweep exited with {proc.returncode}: {proc.stderr.strip()[-500:]}")
    found = _RESULTS.findall(proc.stdout)
    if not found:
        raise UserError("the sweep ended without writing optimization_results.yaml")
    path = Path(found[-1])
    r = yaml.safe_load(path.read_text())
    several = "solutions" in r
    return SweepResult(r["study_name"], r["storage"], ",".join(r["directions"]) if several else r["direction"],
                       r["best_trial"], r["best_values"][0] if several else r["best_value"], r["best_params"],
                       r["mlflow_run_id"], r["output_dir"], r["trials"], str(path), r.get("solutions"))
