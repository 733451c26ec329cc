"""Training throughput: the notebook's own Keras code vs lenet_sweep's training path, side by side.

    python benchmarks/train_throughput.py                      # timing: 20k images, 2 epochs, 3 repeats
    python benchmarks/train_throughput.py --parity --epochs 5  # accuracy: all 60k images, 3 seeds

Each measurement runs in its own process (peak memory is that process's), and the two paths are
interleaved (a, b, b, a, ...) so that a busy machine slows both alike. Per path and batch size it
prints the median over repeats of:

* samples/s: training images per second of wall time in the epochs after the first (the first
  epoch of both paths pays the graph tracing); an epoch's time includes its validation pass;
* samples/CPU-s: the same per second of this process's CPU time (user + system), which a busy
  machine distorts less than wall time;
* peak RSS of the process;
* test accuracy on the 10k test images after the same epochs;
* for lenet_sweep, the MLflow per-epoch logging time as a share of epoch time.

(a) "notebook" is the notebook's code as written there (section 5.5, ``net.fit(train_images,
train_labels, epochs=..., validation_split=0.1)`` on the raw uint8 images reshaped with
``tf.reshape``, default progress bar), with ``batch_size`` set and the seed fixed. (b)
"lenet_sweep" is ``lenet_sweep.training.train.train(cfg)`` with the default config (``trainer.fast=true``),
logging to a throw-away MLflow store; ``--plain`` adds lenet_sweep with ``trainer.fast=false
trainer.steps_per_execution=1`` (Keras fit on tf.data). Progress bars go to /dev/null.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def _peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def epoch_timer():
    """A Keras callback recording each epoch's wall time and this process's CPU time."""
    import keras

    class EpochTimer(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.wall, self.cpu = [], []

        def on_epoch_begin(self, epoch, logs=None):
            self.start = time.perf_counter(), time.process_time()

        def on_epoch_end(self, epoch, logs=None):
            self.wall.append(time.perf_counter() - self.start[0])
            self.cpu.append(time.process_time() - self.start[1])

    return EpochTimer()


def _rates(samples: int, timer) -> dict:
    return {"samples_per_second": [samples / s for s in timer.wall],
            "samples_per_cpu_second": [samples / s for s in timer.cpu]}


def notebook(batch: int, images: int | None, epochs: int, seed: int) -> dict:
    """The notebook's cells, verbatim but for the data source, the image count and batch_size."""
    import keras
    import tensorflow as tf
    from tensorflow.keras.layers import Conv2D, Dense, Flatten, Input, MaxPool2D
    from tensorflow.keras.models import Sequential
    from tensorflow.keras.optimizers import SGD

    from lenet_sweep import data

    (train_images, train_labels), (test_images, test_labels) = data.load_arrays(data.find_dir(None))
    train_images, train_labels = train_images[:images], train_labels[:images]
    keras.utils.set_random_seed(seed)
    net = Sequential([
        Input(shape=(28, 28, 1)),
        Conv2D(filters=6, kernel_size=5, activation='sigmoid'),
        MaxPool2D(pool_size=2, strides=2),
        Conv2D(filters=16, kernel_size=5, activation='sigmoid'),
        MaxPool2D(pool_size=2, strides=2),
        Flatten(),
        Dense(120, activation='sigmoid'),
        Dense(84, activation='sigmoid'),
        Dense(10, activation='sigmoid')
    ])
    train_images = tf.reshape(train_images, (train_images.shape[0], train_images.shape[1],
                                             train_images.shape[2], 1))
    test_images = tf.reshape(test_images, (test_images.shape[0], test_images.shape[1],
                                           test_images.shape[2], 1))
    optimizer = SGD(learning_rate=0.9, momentum=0.0, nesterov=False)
    net.compile(optimizer=optimizer, loss='sparse_categorical_crossentropy', metrics=['accuracy'])

    timer = epoch_timer()
    with open(os.devnull, "w") as null, contextlib.redirect_stdout(null):
        net.fit(train_images, train_labels, epochs=epochs, validation_split=0.1, batch_size=batch,
                callbacks=[timer])
    test = net.evaluate(test_images, test_labels, verbose=0, return_dict=True)
    samples = int(train_images.shape[0] * 0.9)  # Keras' validation_split: the first 90 % train
    return {**_rates(samples, timer), "test_accuracy": float(test["accuracy"]), "peak_mib": _peak_mib()}


def lenet_sweep(batch: int, images: int | None, epochs: int, seed: int, plain: bool = False) -> dict:
    """``lenet_sweep.training.train.train(cfg)`` on the same images, logging to a temporary MLflow store."""
    from hydra import compose, initialize_config_dir
    from mlflow.tracking import MlflowClient

    from lenet_sweep import CONF_DIR
    from lenet_sweep.config import register
    from lenet_sweep.training import record, train as train_mod

    loggers = []

    class CountingLogger(record.EpochLogger):  # keeps the instance to read its log_seconds
        def __init__(self, *a, **kw):
            super().__init__(*a, **kw)
            loggers.append(self)

    record.EpochLogger = CountingLogger
    register()
    with tempfile.TemporaryDirectory() as tmp:
        uri = f"sqlite:///{tmp}/mlflow.db"
        overrides = [f"data.batch_size={batch}", f"trainer.epochs={epochs}", f"seed={seed}",
                     f"data.train_limit={images if images else 'null'}", "trainer.verbose=1",
                     f"mlflow.tracking_uri={uri}"]
        if plain:
            overrides += ["trainer.fast=false", "trainer.steps_per_execution=1"]
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            cfg = compose("config", overrides=overrides)
        timer = epoch_timer()
        with open(os.devnull, "w") as null, contextlib.redirect_stdout(null):
            metrics = train_mod.train(cfg, callbacks=[timer])
        client = MlflowClient(uri)
        [run] = client.search_runs([client.get_experiment_by_name("lenet_sweep").experiment_id])
        logged = client.get_metric_history(run.info.run_id, "samples_per_second")
        assert len(logged) == epochs, logged  # per-epoch throughput is in MLflow too
    samples = loggers[0].samples
    return {**_rates(samples, timer), "test_accuracy": metrics["test_accuracy"],
            "peak_mib": _peak_mib(), "tracking_share": loggers[0].log_seconds / sum(timer.wall)}


def worker(args) -> None:
    fn = {"notebook": notebook, "lenet_sweep": lenet_sweep,
          "plain": lambda *a: lenet_sweep(*a, plain=True)}[args.worker]
    result = fn(args.batch, args.images, args.epochs, args.seed)
    Path(args.out).write_text(json.dumps(result))


def run_one(path: str, batch: int, images: int | None, epochs: int, seed: int) -> dict:
    with tempfile.NamedTemporaryFile(suffix=".json") as out:
        cmd = [sys.executable, __file__, "--worker", path, "--batch", str(batch), "--epochs",
               str(epochs), "--seed", str(seed), "--out", out.name]
        if images:
            cmd += ["--images", str(images)]
        proc = subprocess.run(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                              text=True)
        if proc.returncode != 0:
            sys.exit(f"{path} batch {batch} failed:\n{proc.stderr[-3000:]}")
        return json.loads(Path(out.name).read_text())


def _steady(result: dict, key: str) -> float:
    """Median over the epochs after the first (which pays graph tracing in both paths)."""
    return statistics.median(result[key][1:] or result[key])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batches", type=int, nargs="+", default=[32, 256])
    p.add_argument("--images", type=int, default=20000,
                   help="first N training images (0: all 60k); 10 %% of them validate")
    p.add_argument("--epochs", type=int, default=2, help=">= 2: the first epoch is not timed")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--plain", action="store_true",
                   help="also time lenet_sweep's plain path (trainer.fast=false)")
    p.add_argument("--parity", action="store_true",
                   help="accuracy check: all 60k images, batch 32, one seed per repeat")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--batch", type=int, help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        args.images = args.images or None
        return worker(args)
    if args.parity:
        args.images, args.batches = 0, [32] if args.batches == [32, 256] else args.batches
    images = args.images or None
    paths = ["notebook", "lenet_sweep"] + (["plain"] if args.plain else [])
    results: dict[tuple[str, int], list[dict]] = {}
    print(f"{images or 60000} images (90 % train), {args.epochs} epochs, {args.repeats} repeats, "
          f"{os.cpu_count()} CPUs", flush=True)
    for rep in range(args.repeats):
        seed = args.seed + rep if args.parity else args.seed
        for batch in args.batches:
            for path in (paths if rep % 2 == 0 else paths[::-1]):
                r = run_one(path, batch, images, args.epochs, seed)
                results.setdefault((path, batch), []).append(r)
                print(f"  repeat {rep} batch {batch:4d} {path:12s} {_steady(r, 'samples_per_second'):8.0f}"
                      f" samples/s {_steady(r, 'samples_per_cpu_second'):8.0f} samples/CPU-s  "
                      f"test_accuracy {r['test_accuracy']:.4f}", flush=True)
    print()
    print("| batch | path | samples/s | × notebook | samples/CPU-s | × notebook | peak RSS MiB "
          "| test accuracy (median, min–max) | MLflow share of epoch time |")
    print("|---|---|---|---|---|---|---|---|---|")
    for batch in args.batches:
        def sps(path, key="samples_per_second"):
            return statistics.median(_steady(r, key) for r in results[(path, batch)])
        base, base_cpu = sps("notebook"), sps("notebook", "samples_per_cpu_second")
        for path in paths:
            rs = results[(path, batch)]
            acc = [r["test_accuracy"] for r in rs]
            share = (f"{statistics.median(r['tracking_share'] for r in rs) * 100:.2f} %"
                     if "tracking_share" in rs[0] else "–")
            name = {"notebook": "(a) notebook", "lenet_sweep": "(b) lenet_sweep",
                    "plain": "lenet_sweep fast=false"}[path]
            cpu = sps(path, "samples_per_cpu_second")
            print(f"| {batch} | {name} | {sps(path):.0f} | {sps(path) / base:.2f} | {cpu:.0f} | "
                  f"{cpu / base_cpu:.2f} | "
                  f"{statistics.median(r['peak_mib'] for r in rs):.0f} | "
                  f"{statistics.median(acc):.4f} ({min(acc):.4f}–{max(acc):.4f}) | {share} |")


if __name__ == "__main__":
    main()
