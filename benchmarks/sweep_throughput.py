"""Sweep throughput: batch-blocking without pruning vs asynchronous with pruning, same space and budget.

    .venv/bin/python benchmarks/sweep_throughput.py [--trials 12] [--images 5000] [--epochs 4] [--jobs 2] [--pruner median ...]

Both arms run the real CLI (`python -m lenet_sweep -m hydra/sweeper=optuna`) with the same sampler
seed, search space, trial budget and worker count, into their own temporary stores:
  (a) batch:  hydra.launcher.asynchronous=false, pruner none  -> n_jobs trials per batch, wait for all
  (b) async:  the default launcher, a pruner (--pruner)       -> a free worker starts the next trial
Prints trials finished per minute, wall time and best val_accuracy for each, and the ratio (b)/(a);
also the median duration of a completed and of a pruned trial and when the first trial started
(seconds after the command), read from the study's storage.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna
from optuna.trial import TrialState

from lenet_sweep.stores import open_optuna_storage

ROOT = Path(__file__).resolve().parent.parent


def run_arm(name: str, extra: list[str], args) -> dict:
    with tempfile.TemporaryDirectory(prefix="sweep_bench_") as tmp:
        cmd = [sys.executable, "-m", "lenet_sweep", "-m", "hydra/sweeper=optuna",
               f"hydra.sweeper.n_trials={args.trials}", f"hydra.sweeper.n_jobs={args.jobs}",
               f"data.train_limit={args.images}", f"trainer.epochs={args.epochs}", "trainer.verbose=0",
               "hydra.sweeper.seed=0", f"hydra.sweeper.storage={tmp}/optuna.journal",
               f"mlflow.tracking_uri=sqlite:///{tmp}/mlflow.db", f"hydra.sweep.dir={tmp}/multirun", *extra]
        start, started = time.perf_counter(), time.time()
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
        wall = time.perf_counter() - start
        if proc.returncode != 0:
            sys.exit(f"{name} sweep failed:\n{proc.stderr[-3000:]}")
        study = optuna.load_study(study_name="lenet_sweep", storage=open_optuna_storage(f"{tmp}/optuna.journal"))
        states = [t.state for t in study.trials]

        def seconds(state):  # median trial duration in that state, from the storage's timestamps
            d = [(t.datetime_complete - t.datetime_start).total_seconds() for t in study.trials
                 if t.state == state and t.datetime_start and t.datetime_complete]
            return statistics.median(d) if d else float("nan")

        return {"arm": name, "wall_s": wall, "trials": len(states),
                "complete_s": seconds(TrialState.COMPLETE), "pruned_s": seconds(TrialState.PRUNED),
                "first_start_s": (min(t.datetime_start for t in study.trials).timestamp() - started),
                "complete": states.count(TrialState.COMPLETE), "pruned": states.count(TrialState.PRUNED),
                "failed": states.count(TrialState.FAIL), "per_min": 60 * len(states) / wall,
                "best": study.best_value}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--trials", type=int, default=12)
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--pruner", nargs="+", default=["median"],
                        help="median | successive_halving | hyperband; several: one async arm each")
    args = parser.parse_args()
    arms = [run_arm("batch, no pruning", ["hydra.launcher.asynchronous=false", "hydra/sweeper/pruner=none"], args)]
    for name in args.pruner:
        pruner = [f"hydra/sweeper/pruner={name}"]
        if name == "median":
            pruner += ["hydra.sweeper.pruner.n_startup_trials=3", "hydra.sweeper.pruner.n_warmup_steps=0"]
        arms.append(run_arm(f"async + {name}", pruner, args))
    print(f"{args.trials} trials, {args.images} images, {args.epochs} epochs, n_jobs={args.jobs}")
    print(f"{'arm':<30} {'wall s':>7} {'trials/min':>10} {'complete':>8} {'pruned':>6} {'failed':>6} "
          f"{'best val_acc':>12} {'s/complete':>10} {'s/pruned':>8} {'1st start s':>11}")
    for a in arms:
        print(f"{a['arm']:<30} {a['wall_s']:7.1f} {a['per_min']:10.2f} {a['complete']:8d} {a['pruned']:6d} "
              f"{a['failed']:6d} {a['best']:12.4f} {a['complete_s']:10.1f} {a['pruned_s']:8.1f} "
              f"{a['first_start_s']:11.1f}")
    for a in arms[1:]:
        print(f"ratio ({a['arm']} / batch): {a['per_min'] / arms[0]['per_min']:.2f}x trials per minute, "
              f"best val_accuracy {a['best'] - arms[0]['best']:+.4f}")


if __name__ == "__main__":
    main()
