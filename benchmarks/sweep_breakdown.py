"""Where one packed sweep's time went, from what its runs recorded (lenet_sweep.training.runtime's trial
phases, the parent run's sweep phases, each epoch's pack width).

    .venv/bin/python benchmarks/sweep_breakdown.py [--trials 8] [--pack 4] [--epochs 2] [--images 5000]
                                                   [--workers 1] [--baseline DIR] [-- extra overrides]

Runs ``python -m lenet_sweep -m hydra/sweeper=optuna hydra.launcher.pack=P hydra.sweeper.n_jobs=P·W``
(the default search space and pruner, raw pixels, batch 32) into temporary stores, then prints:

- the machine (CPU model, cores, whether it has avx512f, avx512_vnni, amx);
- the sweep's own phases (parent run: start-up, trials, results, report, registration) as shares of
  the wall time measured around the process;
- the trials' phases summed over trials (``phase.*_seconds``), per trial, as a share of the wall
  time and of the pack's slot-time (wall × slots: what the packs could have trained);
- the packs' epochs rebuilt from the trials' epoch metrics (one pack epoch = the epochs its trials
  logged together): fused training time (the sum of those epochs) against the wall time, the
  trial-epochs trained, the lane-epochs computed (Σ width) and the padding lanes among them.

``--baseline DIR``: the same sweep first from another checkout (e.g. ``git archive HEAD | tar -x -C
DIR``), and a side-by-side table of what both record (a checkout from before the trial phases has
only its wall time, its sweep phases and its epochs; its packs are taken as always full).
One worker (``--workers 1``) is what the pack epochs are rebuilt for exactly.
"""

from __future__ import annotations

import argparse
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PHASES = ("wait_slot", "setup", "train", "wait_record", "evaluate", "record")  # lenet_sweep.training.runtime.PHASES
SWEEP = ("startup", "trials", "results", "report", "registration")
FLAGS = ("avx512f", "avx512_vnni", "amx_tile", "amx_bf16", "amx_int8")


def machine() -> str:
    model, flags = platform.processor() or platform.machine(), set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
            elif line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    import os

    have = ", ".join(f"{f} {'yes' if f in flags else 'no'}" for f in FLAGS)
    return f"{model}, {os.cpu_count()} cores; {have}"


def run_sweep(args, tmp: str, checkout: Path = ROOT) -> float:
    cmd = [sys.executable, "-m", "lenet_sweep", "-m", "hydra/sweeper=optuna",
           f"hydra.launcher.pack={args.pack}", f"hydra.sweeper.n_jobs={args.pack * args.workers}",
           f"hydra.sweeper.n_trials={args.trials}", f"data.train_limit={args.images}",
           f"trainer.epochs={args.epochs}", "trainer.verbose=0", "hydra.sweeper.seed=0",
           f"hydra.sweeper.storage={tmp}/optuna.journal", f"mlflow.tracking_uri=sqlite:///{tmp}/mlflow.db",
           f"hydra.sweep.dir={tmp}/multirun", *args.extra]
    print(f"command ({checkout}):", " ".join(cmd[1:]).replace(tmp, "$TMP"), flush=True)
    import os

    env = {**os.environ, "PYTHONPATH": str(checkout)}
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=checkout, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"the sweep failed:\n{proc.stderr[-3000:]}")
    return wall


def pack_epochs(client, children) -> list[dict]:
    """Each pack epoch: its seconds and width and the trials that trained it (epochs logged within
    half an epoch of one another belong to one pack epoch)."""
    entries = []
    for run in children:
        seconds = {m.step: m for m in client.get_metric_history(run.info.run_id, "epoch_seconds")}
        widths = {m.step: m.value for m in client.get_metric_history(run.info.run_id, "pack_width")}
        size = float(run.data.tags.get("pack", "0/1").split("/")[1])  # before pack_width: always full
        for step, m in seconds.items():
            entries.append((m.timestamp / 1000, m.value, widths.get(step, size), run.data.tags.get("pack")))
    epochs: list[dict] = []
    for stamp, seconds, width, pack in sorted(entries):
        if epochs and stamp - epochs[-1]["stamp"] < 0.5 * seconds and pack not in epochs[-1]["slots"]:
            epochs[-1]["trials"] += 1
            epochs[-1]["slots"].add(pack)
            epochs[-1]["seconds"] = max(epochs[-1]["seconds"], seconds)
        else:
            epochs.append({"stamp": stamp, "seconds": seconds, "width": width, "trials": 1, "slots": {pack}})
    return epochs


def row(name: str, *cells) -> str:
    return f"| {name:<28} | " + " | ".join(f"{c:>10}" for c in cells) + " |"


def stores(tmp: str):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp}/mlflow.db")
    exp = client.get_experiment_by_name("lenet_sweep")
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    [parent] = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    return client, parent, [r for r in runs if "mlflow.parentRunId" in r.data.tags]


def summary(args, tmp: str, wall: float) -> dict[str, str]:
    """What any checkout's sweep records, for the side-by-side table."""
    import optuna

    client, parent, children = stores(tmp)
    study = optuna.load_study(study_name="lenet_sweep", storage=optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(f"{tmp}/optuna.journal")))
    trials = [t for t in study.trials if t.datetime_start and t.datetime_complete]
    span = (max(t.datetime_complete for t in trials) - min(t.datetime_start for t in trials)).total_seconds()
    epochs = pack_epochs(client, children)
    fused = sum(e["seconds"] for e in epochs)
    trial_epochs = sum(e["trials"] for e in epochs)
    lanes = sum(e["width"] for e in epochs)
    out = {"wall s (process)": f"{wall:.1f}"}
    for name in SWEEP:
        value = parent.data.metrics.get(f"sweep.{name}_seconds")
        out[f"sweep {name} s"] = "" if value is None else f"{value:.1f}"
    best = max((t.value for t in study.trials if t.value is not None), default=float("nan"))
    out.update({"trial-epochs": str(trial_epochs),
                "trial-epochs / min (storage)": f"{60 * trial_epochs / span:.1f}" if span else "",
                "fused training s": f"{fused:.1f}", "fused training % of wall": f"{100 * fused / wall:.0f}%",
                "lane-epochs computed": f"{lanes:.0f}", "padding lane-epochs": f"{lanes - trial_epochs:.0f}",
                "best val_accuracy": f"{best:.3f}"})
    return out


def report(args, tmp: str, wall: float) -> None:
    client, parent, children = stores(tmp)
    slots = args.pack * args.workers
    print(f"\nmachine: {machine()}")
    print(f"{len(children)} trials, pack {args.pack} x {args.workers} worker(s), {args.epochs} epochs, "
          f"{args.images} images; wall {wall:.1f} s (the whole process)\n")

    print(row("sweep phase (parent run)", "seconds", "% of wall"))
    print(row("-" * 28, *["-" * 10] * 2))
    for name in SWEEP:
        value = parent.data.metrics.get(f"sweep.{name}_seconds")
        if value is not None:
            print(row(name, f"{value:.1f}", f"{100 * value / wall:.0f}%"))
    recorded = parent.data.metrics.get("sweep.wall_seconds")
    if recorded is not None:
        print(row("wall (recorded)", f"{recorded:.1f}", f"{100 * recorded / wall:.0f}%"))

    print()
    print(row("trial phase (sum over trials)", "seconds", "per trial", "% of wall", "% slot-time"))
    print(row("-" * 28, *["-" * 10] * 4))
    for name in PHASES:
        values = [r.data.metrics[f"phase.{name}_seconds"] for r in children
                  if f"phase.{name}_seconds" in r.data.metrics]
        total = sum(values)
        print(row(name, f"{total:.1f}", f"{total / max(1, len(values)):.2f}", f"{100 * total / wall:.0f}%",
                  f"{100 * total / (wall * slots):.0f}%"))
    epochs_sum = sum(sum(m.value for m in client.get_metric_history(r.info.run_id, "epoch_seconds"))
                     for r in children)
    print(row("  of train: in epochs", f"{epochs_sum:.1f}", f"{epochs_sum / max(1, len(children)):.2f}",
              f"{100 * epochs_sum / wall:.0f}%", f"{100 * epochs_sum / (wall * slots):.0f}%"))

    print()
    print("| trial | state    | " + " | ".join(f"{p:>11}" for p in PHASES) + " | widths")
    print("| ----- | -------- | " + " | ".join("-" * 11 for _ in PHASES) + " | ------")
    for run in sorted(children, key=lambda r: int(r.data.tags.get("optuna.trial_number", -1))):
        m = run.data.metrics
        widths = [int(x.value) for x in sorted(client.get_metric_history(run.info.run_id, "pack_width"),
                                               key=lambda x: x.step)]
        cells = [f"{m[f'phase.{p}_seconds']:.2f}" if f"phase.{p}_seconds" in m else "" for p in PHASES]
        print(f"| {run.data.tags.get('optuna.trial_number', '?'):>5} | {run.data.tags.get('optuna.trial_state', '?'):<8} | "
              + " | ".join(f"{c:>11}" for c in cells) + f" | {widths}")

    epochs = pack_epochs(client, children)
    fused = sum(e["seconds"] for e in epochs)
    trial_epochs = sum(e["trials"] for e in epochs)
    lanes = sum(e["width"] for e in epochs)
    print()
    print(row("packs' epochs", "value", "% of wall"))
    print(row("-" * 28, *["-" * 10] * 2))
    print(row("fused training seconds", f"{fused:.1f}", f"{100 * fused / (wall * args.workers):.0f}%"))
    print(row("pack epochs", len(epochs), ""))
    print(row("trial-epochs trained", trial_epochs, ""))
    print(row("lane-epochs computed", f"{lanes:.0f}", ""))
    print(row("  of which padding", f"{lanes - trial_epochs:.0f}", ""))
    widths = sorted({int(e["width"]) for e in epochs})
    print(row("widths used", " ".join(map(str, widths)), ""))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--pack", type=int, default=4)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--keep", help="a folder for the sweep's stores, kept (default: a temporary one)")
    parser.add_argument("extra", nargs="*", help="more overrides for the sweep (after --)")
    parser.add_argument("--baseline", type=Path, help="another checkout: the same sweep from it, side by side")
    args = parser.parse_args()
    if args.baseline:
        rows = {}
        for name, checkout in (("baseline", args.baseline.resolve()), ("this checkout", ROOT)):
            with tempfile.TemporaryDirectory(prefix="sweep_breakdown_") as tmp:
                wall = run_sweep(args, tmp, checkout)
                rows[name] = summary(args, tmp, wall)
                if checkout == ROOT:
                    report(args, tmp, wall)
        print()
        print(row("", *rows))
        print(row("-" * 28, *["-" * 10] * len(rows)))
        for key in rows["this checkout"]:
            print(row(key, *(r.get(key, "") for r in rows.values())))
        return
    if args.keep:
        Path(args.keep).mkdir(parents=True, exist_ok=True)
        report(args, args.keep, run_sweep(args, str(Path(args.keep).resolve())))
        return
    with tempfile.TemporaryDirectory(prefix="sweep_breakdown_") as tmp:
        wall = run_sweep(args, tmp)
        report(args, tmp, wall)


if __name__ == "__main__":
    main()
