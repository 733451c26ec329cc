"""Packed trials vs unpacked vs plain Optuna, one budget, one invocation.

    .venv/bin/python benchmarks/packed_sweep.py [--trials 12] [--images 10000] [--epochs 4] [--packs 8 16]

Arms, each on the same search space (the sweeper's default: lr, momentum, Nesterov, activation), the
same trial budget, data (the first --images training images, raw pixels, batch 32) and MedianPruner
(3 startup trials, no warm-up), each into its own temporary stores:
  default      python -m lenet_sweep -m hydra/sweeper=optuna            (packed: pack chosen from the devices)
  pack=1       ... hydra.launcher.pack=1                                 (one trial per worker)
  default, its own pruner: the command alone (successive halving, not the median pruner)
  pack=K       ... hydra.launcher.pack=K hydra.sweeper.n_jobs=K          (K trials in one fused graph)
  plain Optuna optuna.create_study + study.optimize, Keras fit one epoch at a time, trial.report and
               should_prune (no tracking): what a user writes by hand
  KerasTuner   keras_tuner.Hyperband(max_epochs=--epochs, factor=3, one iteration, seed 0: 10 trials at
               4 epochs) on the same space and data,
               when keras-tuner is installed (pip install -e ".[bench]"); its trial count is Hyperband's
Prints wall seconds, trial-epochs trained per minute (epochs reported by all trials), best
val_accuracy, and each arm's ratios to the pack=1 and the plain arms.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PRUNER = ["hydra/sweeper/pruner=median", "hydra.sweeper.pruner.n_startup_trials=3",
          "hydra.sweeper.pruner.n_warmup_steps=0"]


def lenet_sweep_arm(name: str, extra: list[str], args, pruner: list[str] = PRUNER, seed: int = 0,
                    study_out: list | None = None) -> dict:
    """One whole ``python -m lenet_sweep -m`` process into temporary stores: its summary; its study's
    trials appended to ``study_out`` when given."""
    import optuna

    from lenet_sweep.stores import open_optuna_storage

    with tempfile.TemporaryDirectory(prefix="packed_bench_") as tmp:
        cmd = [sys.executable, "-m", "lenet_sweep", "-m", "hydra/sweeper=optuna", *pruner,
               f"hydra.sweeper.n_trials={args.trials}", f"data.train_limit={args.images}",
               f"trainer.epochs={args.epochs}", "trainer.verbose=0", f"hydra.sweeper.seed={seed}",
               f"hydra.sweeper.storage={tmp}/optuna.journal", f"mlflow.tracking_uri=sqlite:///{tmp}/mlflow.db",
               f"hydra.sweep.dir={tmp}/multirun", *extra]
        start = time.perf_counter()
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
        wall = time.perf_counter() - start
        if proc.returncode != 0:
            sys.exit(f"{name} failed:\n{proc.stderr[-3000:]}")
        study = optuna.load_study(study_name="lenet_sweep", storage=open_optuna_storage(f"{tmp}/optuna.journal"))
        if study_out is not None:
            study_out.extend(study.trials)
        return summary(name, wall, study)


def summary(name: str, wall: float, study) -> dict:
    from optuna.trial import TrialState

    states = [t.state for t in study.trials]
    epochs = sum(len(t.intermediate_values) for t in study.trials)
    return {"arm": name, "wall_s": wall, "trials": len(states), "epochs": epochs,
            "epochs_per_min": 60 * epochs / wall, "best": study.best_value,
            "complete": states.count(TrialState.COMPLETE), "pruned": states.count(TrialState.PRUNED),
            "failed": states.count(TrialState.FAIL)}


def _data(args):
    """The project's data split (first --images images, 10% validation, raw pixels)."""
    from lenet_sweep import data

    class Cfg:
        dir, validation_split, normalize, train_limit, test_limit = None, 0.1, False, args.images, None

    return data.load(Cfg)


def _lenet(act: str, lr: float, momentum: float, nesterov: bool):
    """The notebook's LeNet, compiled, as a user of Keras writes it."""
    import keras

    keras.utils.set_random_seed(42)
    layers = keras.layers
    model = keras.Sequential([
        keras.Input((28, 28, 1)), layers.Conv2D(6, 5, activation=act), layers.MaxPool2D(2),
        layers.Conv2D(16, 5, activation=act), layers.MaxPool2D(2), layers.Flatten(),
        layers.Dense(120, activation=act), layers.Dense(84, activation=act),
        layers.Dense(10, activation="sigmoid")])
    model.compile(keras.optimizers.SGD(lr, momentum=momentum, nesterov=nesterov),
                  "sparse_categorical_crossentropy", metrics=["accuracy"])
    return model


def keras_tuner_arm(args) -> None:
    """The KerasTuner arm, in its own process: prints its summary as JSON (epochs: what each
    Hyperband trial trained, ``tuner/epochs - tuner/initial_epoch``)."""
    start = time.perf_counter()
    import keras_tuner as kt

    s = _data(args)

    def build(hp):
        return _lenet(hp.Choice("activation", ["sigmoid", "relu"]),
                      hp.Float("lr", 0.001, 1.0, sampling="log"), hp.Float("momentum", 0.0, 0.99),
                      hp.Boolean("nesterov"))

    with tempfile.TemporaryDirectory(prefix="kt_bench_") as tmp:
        tuner = kt.Hyperband(build, objective="val_accuracy", max_epochs=args.epochs, factor=3,
                             hyperband_iterations=1, seed=0, directory=tmp, project_name="lenet")
        tuner.search(s.x_train, s.y_train, batch_size=32, validation_data=(s.x_val, s.y_val), verbose=0)
        trials = list(tuner.oracle.trials.values())
        epochs = sum(t.hyperparameters.get("tuner/epochs") - t.hyperparameters.get("tuner/initial_epoch")
                     for t in trials)
        scores = [t.score for t in trials if t.score is not None and t.score == t.score]
        done = sum(t.status == "COMPLETED" for t in trials)
        wall = time.perf_counter() - start
        print(json.dumps({"arm": "KerasTuner Hyperband", "wall_s": wall, "trials": len(trials), "epochs": epochs,
                          "epochs_per_min": 60 * epochs / wall, "best": max(scores), "complete": done,
                          "pruned": 0, "failed": len(trials) - done}))


def plain_optuna(args) -> None:
    """The plain arm, in its own process (its own TensorFlow): prints its summary as JSON."""
    start = time.perf_counter()
    import optuna

    s = _data(args)
    optuna.logging.set_verbosity(optuna.logging.WARNING)

    def objective(trial):
        lr = trial.suggest_float("lr", 0.001, 1.0, log=True)
        momentum = trial.suggest_float("momentum", 0.0, 0.99)
        nesterov = trial.suggest_categorical("nesterov", [True, False])
        act = trial.suggest_categorical("activation", ["sigmoid", "relu"])
        model = _lenet(act, lr, momentum, nesterov)
        value = 0.0
        for epoch in range(args.epochs):
            h = model.fit(s.x_train, s.y_train, batch_size=32, epochs=1, verbose=0,
                          validation_data=(s.x_val, s.y_val)).history
            value = h["val_accuracy"][0]
            if value != value:  # NaN: diverged
                raise optuna.TrialPruned()
            trial.report(value, epoch)
            if trial.should_prune():
                raise optuna.TrialPruned()
        return value

    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=0),
                                pruner=optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=0))
    study.enqueue_trial({"lr": 0.9, "momentum": 0.0, "nesterov": False, "activation": "sigmoid"})
    study.optimize(objective, n_trials=args.trials)
    print(json.dumps(summary("plain Optuna + Keras fit", time.perf_counter() - start, study)))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--trials", type=int, default=12)
    parser.add_argument("--images", type=int, default=10000)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--packs", type=int, nargs="*", default=[8, 16])
    parser.add_argument("--plain-arm", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--tuner-arm", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.plain_arm:
        return plain_optuna(args)
    if args.tuner_arm:
        return keras_tuner_arm(args)
    arms = [lenet_sweep_arm("pack=1 (unpacked)", ["hydra.launcher.pack=1"], args),
            lenet_sweep_arm("default (packed)", [], args),
            lenet_sweep_arm("default, its own pruner", [], args, pruner=[])]  # the command as a user types it
    for k in args.packs:
        arms.append(lenet_sweep_arm(f"pack={k}", [f"hydra.launcher.pack={k}", f"hydra.sweeper.n_jobs={k}"], args))
    for flag in ("--plain-arm", "--tuner-arm"):  # each in its own process, timed from outside
        if flag == "--tuner-arm" and importlib.util.find_spec("keras_tuner") is None:
            print("KerasTuner arm left out: keras-tuner is not installed (pip install -e '.[bench]')")
            continue
        start = time.perf_counter()
        proc = subprocess.run([sys.executable, __file__, flag, f"--trials={args.trials}",
                               f"--images={args.images}", f"--epochs={args.epochs}"],
                              cwd=ROOT, capture_output=True, text=True)
        if proc.returncode != 0:
            sys.exit(f"{flag} arm failed:\n{proc.stderr[-3000:]}")
        arm = {**json.loads(proc.stdout.strip().splitlines()[-1]), "wall_s": time.perf_counter() - start}
        arm["epochs_per_min"] = 60 * arm["epochs"] / arm["wall_s"]
        arms.append(arm)
    plain_arm = next(a for a in arms if a["arm"].startswith("plain"))
    print(f"{args.trials} trials, <= {args.epochs} epochs, {args.images} images, batch 32, raw pixels, "
          "MedianPruner(3 startup trials)")
    print(f"{'arm':<26} {'trials':>6} {'wall s':>7} {'trial-epochs':>12} {'epochs/min':>10} {'complete':>8} {'pruned':>6} "
          f"{'failed':>6} {'best val_acc':>12} {'vs pack=1':>11} {'wall vs plain':>13}")
    for a in arms:
        print(f"{a['arm']:<26} {a['trials']:6d} {a['wall_s']:7.1f} {a['epochs']:12d} {a['epochs_per_min']:10.1f} "
              f"{a['complete']:8d} {a['pruned']:6d} {a['failed']:6d} {a['best']:12.4f} "
              f"{a['epochs_per_min'] / arms[0]['epochs_per_min']:10.2f}x {a['wall_s'] / plain_arm['wall_s']:12.2f}x")


if __name__ == "__main__":
    main()
