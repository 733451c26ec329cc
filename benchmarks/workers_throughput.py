"""Trials per minute with 1 and with 2 sweeper processes on one PostgreSQL-backed study.

    .venv/bin/python benchmarks/workers_throughput.py [--trials 8] [--images 2000] [--epochs 2]

Each arm gets a fresh database on 127.0.0.1:5432 (user postgres) for the Optuna study and another for
MLflow, starts the worker processes at once (each `python -m lenet_sweep -m hydra/sweeper=optuna
hydra.sweeper.n_jobs=1`, same study name and n_trials), waits for all, and reads the study back.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import optuna
import psycopg

ROOT = Path(__file__).resolve().parent.parent


@contextlib.contextmanager
def database():
    admin = psycopg.connect(host="127.0.0.1", user="postgres", dbname="postgres", autocommit=True)
    name = f"lenet_bench_{uuid.uuid4().hex[:8]}"
    admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
    finally:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


def run_arm(workers: int, args) -> tuple[float, int]:
    with database() as storage, database() as tracking, tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "lenet_sweep", "-m", "hydra/sweeper=optuna", "hydra.sweeper.n_jobs=1",
               f"hydra.sweeper.n_trials={args.trials}", "hydra.sweeper.study_name=bench",
               f"hydra.sweeper.storage={storage}", f"mlflow.tracking_uri={tracking}",
               f"data.train_limit={args.images}", f"trainer.epochs={args.epochs}", "trainer.verbose=0"]
        start = time.perf_counter()
        procs = [subprocess.Popen([*cmd, f"hydra.sweep.dir={tmp}/w{i}"], cwd=ROOT, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.PIPE, text=True) for i in range(workers)]
        for proc in procs:
            _, err = proc.communicate()
            if proc.returncode != 0:
                sys.exit(f"a worker failed:\n{err[-3000:]}")
        wall = time.perf_counter() - start
        n = len(optuna.load_study(study_name="bench", storage=storage).trials)
        return wall, n


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--epochs", type=int, default=2)
    args = parser.parse_args()
    print(f"{args.trials} trials, {args.images} images, {args.epochs} epochs, {os.cpu_count()} cores")
    results = {w: run_arm(w, args) for w in (1, 2)}
    for w, (wall, n) in results.items():
        print(f"{w} worker process(es): {n} trials in {wall:6.1f} s = {60 * n / wall:5.2f} trials/min")
    print(f"ratio 2/1: {(results[2][1] / results[2][0]) / (results[1][1] / results[1][0]):.2f}x")


if __name__ == "__main__":
    main()
