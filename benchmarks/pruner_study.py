"""Which pruner suits a packed sweep: the pruners side by side on one budget, several seeds.

    .venv/bin/python benchmarks/pruner_study.py [--trials 12] [--images 10000] [--epochs 4] [--seeds 0 1 2]
        [--arms none median successive_halving hyperband hyperband_epochs]

Every arm is the default command (packed: pack chosen from the devices), a whole process into its own
temporary stores, with one pruner as a user gets it (``hydra/sweeper/pruner=NAME``, the project's
defaults for its options; ``hyperband_epochs`` is Hyperband with ``max_resource`` = the trial's epochs
instead of ``auto``). The sampler is TPE; with its 10 random start-up trials, trial n draws the same
parameters in every arm of one seed (the draws are seeded by (seed, trial number)), so the pruner is
the only difference for those trials.

Per arm and seed it prints wall seconds, trial-epochs trained, trials pruned, trials pruned before the
first trial completed (in the first wave: a packed sweep's first K trials train in lockstep), the best
val_accuracy and its difference to the ``none`` arm of the same seed, and whether the ``none`` arm's
best trial (when it is one of the start-up trials) was kept (not pruned). Then one line per arm: the
medians over the seeds.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from packed_sweep import lenet_sweep_arm  # noqa: E402

TPE_STARTUP = 10  # TPESamplerConf.n_startup_trials


def pruner_args(arm: str, epochs: int) -> list[str]:
    if arm == "hyperband_epochs":
        return ["hydra/sweeper/pruner=hyperband", f"hydra.sweeper.pruner.max_resource={epochs}"]
    return [f"hydra/sweeper/pruner={arm}"]


def first_wave_pruned(trials) -> int:
    from optuna.trial import TrialState

    done = [t.datetime_complete for t in trials if t.state == TrialState.COMPLETE]
    first = min(done) if done else None
    return sum(1 for t in trials if t.state == TrialState.PRUNED
               and (first is None or t.datetime_complete < first))


def main() -> None:
    from optuna.trial import TrialState

    parser = argparse.ArgumentParser()
    parser.add_argument("--trials", type=int, default=12)
    parser.add_argument("--images", type=int, default=10000)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--arms", nargs="+",
                        default=["none", "median", "successive_halving", "hyperband", "hyperband_epochs"])
    args = parser.parse_args()
    if args.arms[0] != "none":
        args.arms.insert(0, "none")
    rows = []
    print(f"{args.trials} trials, <= {args.epochs} epochs, {args.images} images, batch 32, default pack, TPE")
    print(f"{'pruner':<20} {'seed':>4} {'wall s':>7} {'trial-epochs':>12} {'pruned':>6} {'1st wave':>8} "
          f"{'best':>7} {'vs none':>8} {'none best kept':>14}")
    for seed in args.seeds:
        reference = None
        for arm in args.arms:
            trials: list = []
            r = lenet_sweep_arm(arm, [], args, pruner=pruner_args(arm, args.epochs), seed=seed, study_out=trials)
            by_number = {t.number: t for t in trials}
            if arm == "none":
                best = max((t for t in trials if t.state == TrialState.COMPLETE), key=lambda t: t.value)
                reference = (r["best"], best.number if best.number < TPE_STARTUP else None, by_number)
            kept = "n/a"
            if reference[1] is not None:
                t = by_number.get(reference[1])
                same = t is not None and t.params == reference[2][reference[1]].params
                kept = ("yes" if t.state == TrialState.COMPLETE else "PRUNED") if same else "params differ"
            r.update(pruner=arm, seed=seed, wave=first_wave_pruned(trials), delta=r["best"] - reference[0],
                     kept=kept)
            rows.append(r)
            print(f"{arm:<20} {seed:4d} {r['wall_s']:7.1f} {r['epochs']:12d} {r['pruned']:6d} {r['wave']:8d} "
                  f"{r['best']:7.4f} {r['delta']:+8.4f} {kept:>14}", flush=True)
    print("\nmedians over seeds", args.seeds)
    print(f"{'pruner':<20} {'wall s':>7} {'trial-epochs':>12} {'pruned':>6} {'1st wave':>8} {'best':>7} "
          f"{'vs none':>8} {'none best kept':>14}")
    for arm in args.arms:
        mine = [r for r in rows if r["pruner"] == arm]
        med = {k: statistics.median(r[k] for r in mine) for k in ("wall_s", "epochs", "pruned", "wave", "best",
                                                                  "delta")}
        kept = f"{sum(r['kept'] == 'yes' for r in mine)}/{sum(r['kept'] != 'n/a' for r in mine)}"
        print(f"{arm:<20} {med['wall_s']:7.1f} {med['epochs']:12.0f} {med['pruned']:6.0f} {med['wave']:8.0f} "
              f"{med['best']:7.4f} {med['delta']:+8.4f} {kept:>14}")


if __name__ == "__main__":
    main()
