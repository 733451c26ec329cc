"""Fused training throughput: K trials in one packed graph vs one trial's fast path, side by side.

    python benchmarks/pack_throughput.py        # K = 1 4 8 16, batch 32, 4096 images, both batch modes
    python benchmarks/pack_throughput.py --packs 1 16 --images 8192 --repeats 3

Each arm runs in its own process, the arms interleaved over repeats so a busy machine slows all
alike; per arm the median over repeats of the second epoch (the first pays tracing):

* ``fast path``: one trial, ``lenet_sweep.model.fast_fit.fit`` (``trainer.fast=true``, XLA off), the
  default LeNet, SGD lr 0.1 momentum 0.9;
* ``pack K``: :class:`lenet_sweep.model.packed.PackedLeNet` with K live slots, the same model and batch
  size; ``--batches``: each slot its own batch order (``independent``) or one stream for all
  (``shared``); ``--activations``: ``mixed`` (half sigmoid, half ReLU: the per-slot blend) or all
  one (the graph traced for one shared activation); ``--formulations``: the slot convolutions'
  (:mod:`lenet_sweep.model.slot_layers`);
* ``--precision``: Keras dtype policies, ``float32`` or ``mixed_bfloat16`` (set in the arm's
  process before the model is built; ``mixed_bfloat16``: bf16 compute, float32 weights, the loss in float32; worth it only
  where the CPU has bf16 units, ``avx512_bf16`` or ``amx_bf16`` in /proc/cpuinfo's flags).

It prints trial-samples/s (training images per second of wall time, summed over the slots), the
ratio to the fast path, achieved GFLOP/s and that as a share of the machine's fp32 peak.

FLOPs per training sample (:func:`train_flops`): forward multiply-adds of every convolution and dense
layer, times 2 for FLOPs, times 3 for forward + backward (input and weight gradients), less the
first convolution's input gradient (nobody needs the image's gradient). Pooling, activations, the
loss and the update are left out (a few % here), so the figure is a lower bound on the work done.
The peak (:func:`peak_gflops`): cores of this process × clock (``cpu MHz`` of /proc/cpuinfo) × 2
FMA units × SIMD lanes (16 fp32 with avx512f, 8 with avx2, 4 otherwise) × 2 FLOPs per FMA; both
assumptions are printed.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def train_flops(model_cfg, image: int = 28) -> float:
    """FLOPs of one training sample (see the module docstring)."""
    size, channels, macs, first = image, 1, 0, 0
    for i, filters in enumerate(model_cfg.conv_filters):
        size -= model_cfg.kernel_size - 1
        layer = size * size * model_cfg.kernel_size ** 2 * channels * filters
        macs += layer
        first = first or layer
        size //= model_cfg.pool_size
        channels = filters
    inputs = size * size * channels
    for units in [*model_cfg.dense_units, model_cfg.num_classes]:
        macs += inputs * units
        inputs = units
    return 2 * (3 * macs - first)


def peak_gflops() -> tuple[float, str]:
    """This process's fp32 peak in GFLOP/s and how it was reckoned."""
    info = Path("/proc/cpuinfo").read_text()
    flags = next(line for line in info.splitlines() if line.startswith("flags")).split()
    mhz = max(float(line.split(":")[1]) for line in info.splitlines() if line.startswith("cpu MHz"))
    lanes = 16 if "avx512f" in flags else 8 if "avx2" in flags else 4
    cores = len(os.sched_getaffinity(0))
    peak = cores * mhz / 1000 * 2 * lanes * 2
    return peak, f"{cores} cores x {mhz / 1000:.2f} GHz x 2 FMA units x {lanes} fp32 lanes x 2 FLOP"


def _data(images: int):
    import numpy as np

    from lenet_sweep import data
    (x, y), _ = data.load_arrays(data.find_dir(os.environ.get("PACK_DATA_DIR")))  # None: the usual places
    return x[:images].reshape(-1, 28, 28, 1).astype(np.float32) / 255.0, y[:images].astype(np.int32)


def fast_path(arm: str, images: int, batch: int, epochs: int) -> list[float]:
    import keras

    from lenet_sweep.config import LeNetConfig
    from lenet_sweep.model import build_lenet, fast_fit
    from omegaconf import OmegaConf

    keras.mixed_precision.set_global_policy(arm.split(":")[1])
    x, y = _data(images)
    keras.utils.set_random_seed(0)
    model = build_lenet(OmegaConf.structured(LeNetConfig))
    model.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    seconds = []

    class Timer(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.start = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            seconds.append(time.perf_counter() - self.start)

    fast_fit.fit(model, x, y, batch_size=batch, epochs=epochs, seed=0, callbacks=[Timer()], verbose=0,
                 steps_per_execution=100, jit_compile=False)
    return [len(x) / s for s in seconds]


def pack(arm: str, images: int, batch: int, epochs: int) -> list[float]:
    import keras

    from lenet_sweep.config import LeNetConfig
    from lenet_sweep.model.packed import PackedLeNet, SlotParams
    from omegaconf import OmegaConf

    k, activations, formulation, batches, precision = _parse(arm)
    keras.mixed_precision.set_global_policy(precision)
    x, y = _data(images)
    packed = PackedLeNet(OmegaConf.structured(LeNetConfig), k, batch, x, y,
                         formulation=None if formulation == "default" else formulation, batches=batches)
    acts = ("sigmoid", "relu") if activations == "mixed" else (activations,)
    for slot in range(k):
        packed.assign(slot, SlotParams(0.1, 0.9, activation=acts[slot % len(acts)]), seed=slot)
    rates = []
    for _ in range(epochs):
        start = time.perf_counter()
        packed.train_epoch(steps_per_execution=100)
        rates.append(k * len(x) / (time.perf_counter() - start))
    return rates


def _arm(k: int, activations: str, formulation: str, batches: str, precision: str) -> str:
    return f"pack:{k}:{activations}:{formulation}:{batches}:{precision}"


def _parse(arm: str) -> tuple[int, str, str, str, str]:
    _, k, activations, formulation, batches, precision = arm.split(":")
    return int(k), activations, formulation, batches, precision


def gpu_peak_mib() -> float | None:
    """The first GPU's peak memory use in this process (MiB), None without a GPU."""
    import tensorflow as tf

    if not tf.config.list_logical_devices("GPU"):
        return None
    return tf.config.experimental.get_memory_info("GPU:0")["peak"] / 2**20


PEAK_MIB: dict[str, float] = {}  # arm -> its worker's GPU peak memory


def device_name() -> str:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True,
                             text=True, timeout=30)
        return out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else ""
    except (OSError, subprocess.TimeoutExpired):
        return ""


def run_one(arm: str, args) -> float:
    with tempfile.NamedTemporaryFile(suffix=".json") as out:
        cmd = [sys.executable, __file__, "--worker", arm, "--images", str(args.images), "--batch",
               str(args.batch), "--epochs", str(args.epochs), "--out", out.name]
        proc = subprocess.run(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        if proc.returncode != 0:
            sys.exit(f"{arm} failed:\n{proc.stderr[-3000:]}")
        result = json.loads(Path(out.name).read_text())
    if result["peak_mib"] is not None:
        PEAK_MIB[arm] = result["peak_mib"]
    return statistics.median(result["rates"][1:])  # the first epoch traces


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--packs", type=int, nargs="+", default=[1, 4, 8, 16])
    p.add_argument("--images", type=int, default=4096)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--epochs", type=int, default=2, help=">= 2: the first epoch is not timed")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--activations", nargs="+", default=["mixed", "sigmoid"],
                   help="the slots' hidden activations: mixed (half sigmoid, half ReLU), sigmoid or relu")
    p.add_argument("--formulations", nargs="+", default=["default"],
                   help="slot convolutions: default (lenet_sweep.model.slot_layers.default_formulation), "
                        "per_slot, patches")
    p.add_argument("--batches", nargs="+", default=["independent", "shared"],
                   help="each slot its own batch order, or one stream for all (PackedLeNet batches=)")
    p.add_argument("--precision", nargs="+", default=["float32"], choices=["float32", "mixed_bfloat16"],
                   help="Keras dtype policies: each arm under each (the first is the ratios' base)")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        rates = (fast_path(args.worker, args.images, args.batch, args.epochs) if args.worker.startswith("fast") else
                 pack(args.worker, args.images, args.batch, args.epochs))
        Path(args.out).write_text(json.dumps({"rates": rates, "peak_mib": gpu_peak_mib()}))
        return
    from omegaconf import OmegaConf

    from lenet_sweep.config import LeNetConfig
    arms = [arm for p in args.precision for arm in (
        f"fast:{p}", *(_arm(k, a, f, b, p) for k in args.packs for b in args.batches
                       for f in args.formulations for a in args.activations if k > 1 or a != "mixed"))]
    results: dict[str, list[float]] = {a: [] for a in arms}
    for r in range(args.repeats):
        for arm in (arms if r % 2 == 0 else arms[::-1]):
            results[arm].append(run_one(arm, args))
    flops = train_flops(OmegaConf.structured(LeNetConfig))
    peak, how = peak_gflops()
    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), "?")
    gpu = device_name()
    print(f"CPU: {model}; fp32 peak {peak:.0f} GFLOP/s ({how}); {flops / 1e6:.2f} MFLOP per training sample"
          + (f"\nGPU: {gpu} (the % of peak column is the CPU's)" if gpu else ""))
    print(f"batch {args.batch}, {args.images} images, epoch 2..{args.epochs} timed, median of {args.repeats}\n")
    base = statistics.median(results[f"fast:{args.precision[0]}"])
    print(f"x fast path: against the fast path under {args.precision[0]}\n")
    print("| arm | K | activations | formulation | batches | precision | trial-samples/s | x fast path "
          "| GFLOP/s | % of peak |" + (" GPU peak MiB |" if PEAK_MIB else "")
          + "\n|---|---|---|---|---|---|---|---|---|---|" + ("---|" if PEAK_MIB else ""))
    for arm in arms:
        rate = statistics.median(results[arm])
        name = f"fast path (1 trial) | 1 | sigmoid | conv2d | own | {arm[5:]}" if arm.startswith("fast") else (
            "pack | " + " | ".join(map(str, _parse(arm))))
        print(f"| {name} | {rate:,.0f} | {rate / base:.2f} | {rate * flops / 1e9:.1f} | "
              f"{100 * rate * flops / 1e9 / peak:.1f} |" + (f" {PEAK_MIB.get(arm, 0):,.0f} |" if PEAK_MIB else ""))
    top = max(args.packs)
    if 1 in args.packs and top > 1:
        print()
        for arm in arms:
            if not arm.startswith("fast") and _parse(arm)[0] == top:
                _, acts, form, batches, precision = _parse(arm)
                one = _arm(1, "sigmoid" if acts == "mixed" else acts, form, batches, precision)
                print(f"K={top} / K=1 ({acts}, {form}, {batches}, {precision}): "
                      f"{statistics.median(results[arm]) / statistics.median(results[one]):.2f}x")


if __name__ == "__main__":
    main()
