"""Packed trials (lenet_sweep.model.packed): K LeNets in one fused graph train as K separate LeNets would.

Tolerances: the fused graph runs the same float32 maths as Keras' layers in other kernels (a
depthwise convolution instead of conv2d, batched matmuls, another summation order), so single
results differ by a few ulps (~1e-7 relative). Over several epochs that stays so only where the
network is smooth: with ReLU, a pre-activation within rounding of 0, or a max-pool window within
rounding of a tie, sends a gradient another way, and a few such flips put the weights 1e-4..1e-2
apart (measured: lr 0.02 ReLU, 7e-5 after one epoch, in a pack of one as in a pack of four). The
multi-epoch comparison therefore uses sigmoid hidden layers, a softmax output, normalised pixels and
small steps, where 3 epochs stay within 4e-6 of the standalone run (measured, packs of 1 and 4);
atol 1e-5 on weights and rel 1e-4 on metrics, while a wrong update (another lr, momentum or batch)
moves the weights by 1e-3 and more. Single steps are compared with ReLU too.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf
from omegaconf import OmegaConf

from conftest import compose_cfg
from lenet_sweep import data
from lenet_sweep.model import build_lenet, fast_fit
from lenet_sweep.model.packed import PackedLeNet, SlotParams
from lenet_sweep.training.train import make_optimizer

#: sigmoid hidden layers (no kinks), softmax output, normalised pixels: rounding does not grow
WELL = SlotParams(lr=0.1, momentum=0.9, nesterov=False, activation="sigmoid")


@pytest.fixture(scope="module")
def small():
    (x, y), _ = data.load_arrays(data.find_dir(None, download=False))
    x = x[:800].reshape(-1, 28, 28, 1).astype(np.float32) / 255.0
    return x[:640], y[:640].astype(np.int32), x[640:], y[640:800].astype(np.int32)


def lenet(model_cfg, params: SlotParams, seed: int):
    """The standalone run's model: seeded as lenet_sweep.training.train.train seeds it."""
    keras.utils.set_random_seed(seed)
    model = build_lenet(OmegaConf.merge(model_cfg, {"activation": params.activation}))
    opt = compose_cfg([f"optimizer.lr={params.lr}", f"optimizer.momentum={params.momentum}",
                       f"optimizer.nesterov={params.nesterov}"]).optimizer
    model.compile(optimizer=make_optimizer(opt), loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    return model


def close(a, b, atol=1e-5):
    return all(np.allclose(u, v, rtol=0, atol=atol) for u, v in zip(a, b))


@pytest.mark.parametrize("output", ["sigmoid", "softmax"])
def test_fused_losses_and_gradients_equal_separate_lenets(small, output):
    x, y, _, _ = small
    cfg = compose_cfg([f"model.output_activation={output}"])
    slots = [SlotParams(0.1, activation="sigmoid"), SlotParams(0.1, activation="relu"),
             SlotParams(0.1, activation="relu"), SlotParams(0.1, activation="sigmoid")]
    pack = PackedLeNet(cfg.model, len(slots), 16, x, y)
    for k, p in enumerate(slots):
        pack.assign(k, p, seed=20 + k)
    weights = pack.weights  # laid out: sigmoid trials on the first lanes (slot k on lane pack.lane[k])
    assert [pack.lane[k] for k in range(len(slots))] == [0, 2, 3, 1] and pack.current.shared == 2
    batches = [np.arange(16) + 16 * k for k in range(len(slots))]  # each slot its own images
    by_lane = sorted(range(len(slots)), key=pack.lane.get)
    xs = np.concatenate([x[batches[k]] for k in by_lane], axis=-1)
    ys = np.stack([y[batches[k]] for k in by_lane], axis=1)
    with tf.GradientTape() as tape:
        lane_losses, _ = pack.losses(tf.constant(xs), tf.constant(ys))
        total = tf.reduce_sum(lane_losses)
    lane_grads = tape.gradient(total, weights)
    losses = [lane_losses[pack.lane[k]] for k in range(len(slots))]
    grads = [[g[pack.lane[k]] for k in range(len(slots))] for g in lane_grads]  # [weight][slot]
    for k, p in enumerate(slots):
        model = lenet(cfg.model, p, 20 + k)
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(keras.losses.sparse_categorical_crossentropy(y[batches[k]],
                                                                               model(x[batches[k]])))
        expected = tape.gradient(loss, model.trainable_weights)
        assert float(losses[k]) == pytest.approx(float(loss), rel=1e-6)
        assert close([g[k] for g in grads], expected, atol=1e-6), f"slot {k}"
        assert max(float(tf.reduce_max(tf.abs(g))) for g in expected) > 1e-3  # a gradient to compare


def test_the_update_is_keras_sgd_per_slot(small):
    """Two steps (momentum acts from the second), with and without momentum and Nesterov, each slot
    equal to Keras' SGD on its own model."""
    x, y, _, _ = small
    cfg = compose_cfg(["model.output_activation=softmax"])
    slots = [SlotParams(0.1), SlotParams(0.05, 0.9), SlotParams(0.05, 0.9, True, "relu")]
    pack = PackedLeNet(cfg.model, len(slots), 32, x, y)
    models = []
    for k, p in enumerate(slots):
        pack.assign(k, p, seed=7)
        models.append(lenet(cfg.model, p, 7))
    for step in range(2):
        idx = [np.arange(32) + 32 * (k + step) for k in range(len(slots))]
        pack.train_step(tf.constant(np.concatenate([x[i] for i in idx], -1)),
                        tf.constant(np.stack([y[i] for i in idx], 1)))
        for k, model in enumerate(models):
            model.train_on_batch(x[idx[k]], y[idx[k]])
    for k, model in enumerate(models):
        assert close(pack.slot_weights(k), model.get_weights(), atol=1e-6), f"slot {k}: {slots[k]}"
    start = lenet(cfg.model, slots[0], 7).get_weights()
    assert not close(pack.slot_weights(2), start, atol=1e-3)  # the steps moved the weights


def standalone(small, model_cfg, params, seed, epochs):
    x, y, xv, yv = small
    model = lenet(model_cfg, params, seed)
    history, _ = fast_fit.fit(model, x, y, batch_size=32, epochs=epochs, seed=seed, validation_data=(xv, yv),
                              verbose=0, steps_per_execution=5, jit_compile=False)
    return history.history, model.get_weights()


def test_a_trial_equals_itself_alone_whatever_it_is_packed_with_and_whenever_it_enters(small):
    """Slot 2 enters after its neighbours trained an epoch (one of them diverging), trains three
    epochs, and ends where the same trial run alone (trainer.fast=true, same seed) ends."""
    x, y, xv, yv = small
    cfg = compose_cfg(["model.output_activation=softmax"])
    pack = PackedLeNet(cfg.model, 4, 32, x, y)
    neighbours = [SlotParams(0.9), SlotParams(1e4, 0.9, True, "relu"), None, SlotParams(0.01, 0.5)]
    for k, p in enumerate(neighbours):
        if p is not None:
            pack.assign(k, p, seed=100 + k)
    pack.train_epoch(steps_per_execution=5)
    pack.assign(2, WELL, seed=5)
    logs = []
    for _ in range(3):
        train = pack.train_epoch(steps_per_execution=7)
        val, _ = pack.evaluate(xv, yv)
        logs.append({**train[2], **{f"val_{k}": v for k, v in val[2].items()}})
    alone, weights = standalone(small, cfg.model, WELL, seed=5, epochs=3)
    for key, values in alone.items():
        assert [log[key] for log in logs] == pytest.approx(values, rel=1e-4, abs=1e-5), key
    assert close(pack.slot_weights(2), weights)
    assert not np.isfinite(train[1]["loss"])  # the diverging neighbour failed alone
    assert np.isfinite(train[0]["loss"]) and np.isfinite(train[3]["loss"])


def test_slot_weights_are_a_standard_lenet_file_with_the_packs_test_accuracy(small, tmp_path):
    x, y, xv, yv = small
    cfg = compose_cfg([])
    pack = PackedLeNet(cfg.model, 2, 32, x, y)
    pack.assign(0, SlotParams(0.9), seed=1)
    pack.assign(1, SlotParams(0.1, 0.9, activation="relu"), seed=2)
    pack.train_epoch()
    test, classes = pack.evaluate(xv, yv)
    for k, activation in enumerate(["sigmoid", "relu"]):
        path = tmp_path / f"slot{k}.weights.h5"
        pack.to_keras(k, activation).save_weights(path)
        model = build_lenet(OmegaConf.merge(cfg.model, {"activation": activation}))
        model.load_weights(path)
        model.compile(loss="sparse_categorical_crossentropy", metrics=["accuracy"])
        loaded = model.evaluate(xv, yv, verbose=0, return_dict=True)
        assert loaded["accuracy"] == pytest.approx(test[k]["accuracy"], abs=1.5 / len(yv))  # a near tie
        assert loaded["loss"] == pytest.approx(test[k]["loss"], rel=1e-4)
        assert (model.predict(xv, verbose=0).argmax(-1) == classes[:, k]).mean() > 0.99


def test_the_pack_narrows_to_its_live_trials_and_a_trial_moves_between_widths_intact(small):
    """A pack of 4 computes as many lanes as it has live trials (rounded up to 1, 2 or 4): after its
    three neighbours leave, slot 2's trial trains on at width 1 (its state moved to the narrower
    graph) and still ends where it ends alone (tolerance as above: other widths, other kernels)."""
    x, y, xv, yv = small
    cfg = compose_cfg(["model.output_activation=softmax"])
    pack = PackedLeNet(cfg.model, 4, 32, x, y)
    assert pack.width == 0
    for k, p in enumerate([SlotParams(0.9), SlotParams(0.01, 0.5), WELL]):
        pack.assign(k, p, seed=[1, 2, 5][k])
    assert pack.width == 4  # three live trials: 4 lanes, one of them padding
    logs = []
    for epoch in range(3):
        if epoch == 1:
            pack.release(0)
            pack.release(1)
            assert pack.width == 1
        train = pack.train_epoch(steps_per_execution=7)
        val, _ = pack.evaluate(xv, yv)
        logs.append({**train[2], **{f"val_{k}": v for k, v in val[2].items()}})
        assert train[0] == {} if epoch else train[0]  # an empty slot has no results
    assert sorted(pack.lanes_of) == [1, 4]
    alone, weights = standalone(small, cfg.model, WELL, seed=5, epochs=3)
    for key, values in alone.items():
        assert [log[key] for log in logs] == pytest.approx(values, rel=1e-4, abs=1e-5), key
    assert close(pack.slot_weights(2), weights)
    pack.assign(3, SlotParams(0.1), seed=3)  # a newcomer widens it again
    assert pack.width == 2 and len(pack.train_epoch()[3]) == 2


def test_with_shared_batches_a_trial_equals_a_standalone_run_from_its_stream_position(small):
    """batches="shared": every slot trains on one batch stream (default_rng(stream_seed), one order
    per pack epoch). Slot 1 enters after one epoch (stream position 1) and ends where a standalone
    run ends whose batch orders are the stream's from that position on (fast_fit with the stream's
    seed, resumed at epoch 1 before any training: the same draws). Tolerance as above."""
    x, y, xv, yv = small
    cfg = compose_cfg(["model.output_activation=softmax"])
    pack = PackedLeNet(cfg.model, 2, 32, x, y, batches="shared", stream_seed=11)
    pack.assign(0, SlotParams(0.9), seed=1)
    pack.train_epoch(steps_per_execution=5)
    pack.assign(1, WELL, seed=5)
    assert pack.stream_position == {0: 0, 1: 1}
    logs = []
    for _ in range(2):
        train = pack.train_epoch(steps_per_execution=7)
        val, _ = pack.evaluate(xv, yv)
        logs.append({**train[1], **{f"val_{k}": v for k, v in val[1].items()}})
    model = lenet(cfg.model, WELL, 5)
    history, _ = fast_fit.fit(model, x, y, batch_size=32, epochs=3, seed=11, validation_data=(xv, yv), verbose=0,
                              steps_per_execution=5, jit_compile=False, resume=fast_fit.LoopState(epoch=1))
    for key, values in history.history.items():
        assert [log[key] for log in logs] == pytest.approx(values, rel=1e-4, abs=1e-5), key
    assert close(pack.slot_weights(1), model.get_weights())
    # its own batch order instead (seed 5's) ends elsewhere: the stream is what it trained on
    _, own = standalone(small, cfg.model, WELL, seed=5, epochs=2)
    assert not close(pack.slot_weights(1), own, atol=1e-3)
