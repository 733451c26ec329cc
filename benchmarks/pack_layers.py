"""Where a fused training step's time goes: each layer of the slot model alone, forward + backward.

    python benchmarks/pack_layers.py                                  # K = 1 16, batch 32
    python benchmarks/pack_layers.py --packs 16 32 --formulations per_slot patches

For each K and formulation of the slot convolutions (:mod:`lenet_sweep.model.slot_layers`), every layer of
``build_lenet(LeNetConfig(), slots=K)`` runs alone in a traced loop (a random input of the shape the
layer gets in training, its weights' gradients, and its input's gradient except for the first layer,
whose input is the images): microseconds per step, and the sum as trial-samples/s (K · batch / step
time; the loss, update and batch gather left out). ``one stream`` rows give the first convolution
one batch for all slots (``PackedLeNet(batches="shared")``, evaluation): one ``conv2d`` with
K·filters outputs. One activation for all slots (sigmoid), as a pack whose live trials agree.
``--precision mixed_bfloat16``: the model built under that Keras dtype policy (bf16 compute,
float32 weights), for CPUs with bf16 units (``avx512_bf16``, ``amx_bf16``).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def _step(layer, x, sink, first: bool):
    """The layer's call on ``x`` and a traced loop of n forward + backward passes."""
    import tensorflow as tf

    from lenet_sweep.model.slot_layers import SlotLayer

    def call():
        return layer(x, shared_activation="sigmoid") if isinstance(layer, SlotLayer) else layer(x)

    wrt = list(layer.trainable_weights) + ([] if first else [x])

    @tf.function
    def loop(n):
        for _ in tf.range(n):
            with tf.GradientTape() as tape:
                total = tf.reduce_sum(call())
            grads = tape.gradient(total, wrt)
            sink.assign_add(tf.add_n([tf.cast(g[(0,) * g.shape.rank], tf.float32) for g in grads]))  # used: not pruned

    return call, loop


def layer_times(k: int, batch: int, formulation: str | None, one_stream: bool, steps: int):
    import tensorflow as tf
    from omegaconf import OmegaConf

    from lenet_sweep.config import LeNetConfig
    from lenet_sweep.model import build_lenet

    model = build_lenet(OmegaConf.structured(LeNetConfig), slots=k, formulation=formulation)
    h = tf.random.uniform((batch, 28, 28, 1 if one_stream else k))
    rows, sink = [], tf.Variable(0.0)
    for layer in model.layers:
        x = tf.Variable(h)
        call, loop = _step(layer, x, sink, first=not rows)
        out = call()
        loop(tf.constant(2))
        start = time.perf_counter()
        loop(tf.constant(steps))
        rows.append((layer.name, tuple(h.shape), (time.perf_counter() - start) / steps * 1e6))
        h = out
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--packs", type=int, nargs="+", default=[1, 16])
    p.add_argument("--formulations", nargs="+", default=["default", "per_slot", "patches"])
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--precision", nargs="+", default=["float32"], choices=["float32", "mixed_bfloat16"])
    args = p.parse_args()
    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), "?")
    print(f"CPU: {model}, {len(os.sched_getaffinity(0))} cores; batch {args.batch}; "
          f"µs per step, forward + backward of the layer alone\n")
    import keras

    print("| K | formulation | input | precision | " + " | ".join(
        ["conv1", "pool1", "conv2", "pool2", "flatten", "dense1", "dense2", "dense3"])
        + " | sum | trial-samples/s |")
    print("|---" * 14 + "|")
    for k, precision in ((k, p) for k in args.packs for p in args.precision):
        keras.mixed_precision.set_global_policy(precision)
        for form in args.formulations:
            for one_stream in ([False, True] if k > 1 else [False]):
                if form == "patches" and k == 1:
                    continue  # one slot: a plain conv2d whatever the formulation asked
                rows = layer_times(k, args.batch, None if form == "default" else form, one_stream, args.steps)
                total = sum(r[2] for r in rows)
                print(f"| {k} | {form} | {'one stream' if one_stream else 'own batches'} | {precision} | "
                      + " | ".join(f"{r[2]:,.0f}" for r in rows)
                      + f" | {total:,.0f} | {k * args.batch / total * 1e6:,.0f} |", flush=True)


if __name__ == "__main__":
    main()
