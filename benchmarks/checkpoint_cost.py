"""What the per-epoch checkpoint (lenet_sweep.training.checkpoint) costs, against an epoch's time.

    python benchmarks/checkpoint_cost.py                       # all 54k training images
    python benchmarks/checkpoint_cost.py --train-limit 6000 --dir multirun   # on another disk

For the unpacked run (``trainer.fast=true``, SGD with momentum: weights + one momentum per weight)
and for a pack of 4 (``hydra.launcher.pack=4``: every slot's checkpoint at each pack epoch), prints:

* the epoch's wall time (the second epoch: the first pays the graph tracing), validation included;
* the checkpoint's wall time per epoch, median and worst of ``--repeats`` writes: reading the
  variables out (``model.get_weights()``, the optimizer's; a pack's variables once for all slots),
  writing the ``.npz`` to a temporary file, ``fsync`` and the rename; and of that the ``fsync``
  alone (the same writes with ``os.fsync`` a no-op);
* that as a share of the epoch, and the file's size;
* a resume's read and restore (once per resumed run, not per epoch).

One process, the checkpoints in a temporary folder under ``--dir`` (default: the system's).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def timed(fn, repeats: int) -> list[float]:
    out = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        out.append(time.perf_counter() - start)
    return out


def without_fsync(fn):
    def run():
        real, os.fsync = os.fsync, lambda fd: None
        try:
            fn()
        finally:
            os.fsync = real
    return run


def row(name: str, epoch: float, writes: list[float], plain: list[float], size: int) -> str:
    med, worst = statistics.median(writes), max(writes)
    fsync = max(0.0, med - statistics.median(plain))  # a difference of medians: noisy on a busy machine
    return (f"{name:<22} epoch {epoch:7.3f} s | checkpoint {med * 1e3:6.1f} ms median, {worst * 1e3:6.1f} ms "
            f"worst (fsync ~{fsync * 1e3:4.1f} ms) | {100 * med / epoch:5.2f} % of the epoch | "
            f"{size / 1024:6.0f} KiB per trial")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--train-limit", type=int, default=None, help="first N training images (all: 60000)")
    parser.add_argument("--pack", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--dir", default=None, help="where the checkpoints are written")
    args = parser.parse_args()

    from hydra import compose, initialize_config_dir

    from lenet_sweep import CONF_DIR, data
    from lenet_sweep.config import register
    from lenet_sweep.model import build_lenet, fast_fit
    from lenet_sweep.model.packed import PackedLeNet, SlotParams
    from lenet_sweep.training import checkpoint
    from lenet_sweep.training.train import make_optimizer

    register()
    overrides = ["optimizer.momentum=0.9", "trainer.verbose=0"]
    if args.train_limit:
        overrides.append(f"data.train_limit={args.train_limit}")
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", overrides=overrides)
    splits = data.load(cfg.data)
    t = data.to_tensors(splits)
    folder = Path(tempfile.mkdtemp(prefix="checkpoint_cost_", dir=args.dir))
    fp = checkpoint.fingerprint(cfg)
    print(f"{len(splits.x_train)} training images, batch {cfg.data.batch_size}; checkpoints in {folder}")

    # -- unpacked -------------------------------------------------------------------------------
    model = build_lenet(cfg.model)
    model.compile(optimizer=make_optimizer(cfg.optimizer), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    import keras

    states, epoch_times = [], []

    class EpochClock(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.start = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            epoch_times.append(time.perf_counter() - self.start)

    fast_fit.fit(model, t.x_train, t.y_train, batch_size=cfg.data.batch_size, epochs=2, seed=0,
                 validation_data=(t.x_val, t.y_val), callbacks=[EpochClock()], verbose=0,
                 steps_per_execution=100, jit_compile=False, after_epoch=states.append)
    history = [{"loss": 1.0, "accuracy": 0.5, "val_loss": 1.0, "val_accuracy": 0.5, "epoch_seconds": 1.0,
                "samples_per_second": 1.0}] * 10  # a 10-epoch run's history at its last epoch

    def save_unpacked():
        weights, optimizer = checkpoint.model_state(model)
        checkpoint.Checkpoint(2, weights, optimizer, history, fp, "0" * 32, states[-1].rng,
                              states[-1].jit).write(folder / "unpacked")

    writes = timed(save_unpacked, args.repeats)
    plain = timed(without_fsync(save_unpacked), args.repeats)
    size = checkpoint.path_of(folder / "unpacked").stat().st_size
    print(row("unpacked", epoch_times[-1], writes, plain, size))
    resume = timed(lambda: checkpoint.restore_model(model, checkpoint.read(folder / "unpacked")), 5)
    print(f"{'':<22} a resume's read + restore: {statistics.median(resume) * 1e3:.1f} ms (once per run)")

    # -- a pack ---------------------------------------------------------------------------------
    k = args.pack
    pack = PackedLeNet(cfg.model, k, cfg.data.batch_size, t.x_train, t.y_train)
    for slot in range(k):
        pack.assign(slot, SlotParams(lr=0.1 * (slot + 1), momentum=0.9), seed=slot)
    epoch_times.clear()
    for _ in range(2):
        begin = time.perf_counter()
        pack.train_epoch(100)
        pack.evaluate(t.x_val, t.y_val)
        epoch_times.append(time.perf_counter() - begin)

    def save_pack():
        for slot, (weights, velocities, rng) in pack.slot_states(range(k)).items():
            opt = checkpoint.sgd_variables(2 * pack.steps, 0.1, 0.9, velocities)
            checkpoint.Checkpoint(2, weights, opt, history, fp, "0" * 32, rng).write(folder / f"slot{slot}")

    writes = timed(save_pack, args.repeats)
    plain = timed(without_fsync(save_pack), args.repeats)
    print(row(f"pack of {k} (all slots)", epoch_times[-1], writes, plain, size))
    for path in folder.rglob("*"):
        if path.is_file():
            path.unlink()
    for path in sorted(folder.rglob("*"), reverse=True):
        path.rmdir()
    folder.rmdir()


if __name__ == "__main__":
    main()
