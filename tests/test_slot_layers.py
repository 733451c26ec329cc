"""The slot-axis model (build_lenet(..., slots=K), lenet_sweep.model.slot_layers): one definition of the
network, K plain LeNets computed as one, in every formulation of the slot convolution.

Tolerance: one forward and backward pass of the same float32 maths in other kernels (depthwise,
per-slot conv2d, patches + batched matmul, another summation order) differs from Keras' layers by
a few ulps (~1e-7 relative to values of order 1); atol 1e-6 on logits and gradients, while a slot
reading another slot's images, weights or activation moves them by 1e-3 and more (the gradients
compared are checked to be above 1e-3)."""

import keras
import numpy as np
import pytest
import tensorflow as tf
from omegaconf import OmegaConf

from conftest import compose_cfg
from lenet_sweep import data
from lenet_sweep.model import build_lenet
from lenet_sweep.model.packed import PackedLeNet, SlotParams
from lenet_sweep.model.slot_layers import call_slots


@pytest.fixture(scope="module")
def images():
    (x, y), _ = data.load_arrays(data.find_dir(None, download=False))
    return x[:96].reshape(-1, 28, 28, 1).astype(np.float32) / 255.0, y[:96].astype(np.int32)


def plain_and_fused(model_cfg, activations, formulation):
    """K plain LeNets (seeded 0..K-1) and the fused model holding their weights in its slots."""
    plain = []
    for k, act in enumerate(activations):
        keras.utils.set_random_seed(k)
        plain.append(build_lenet(OmegaConf.merge(model_cfg, {"activation": act})))
    fused = build_lenet(model_cfg, slots=len(activations), formulation=formulation)
    for i, var in enumerate(fused.trainable_weights):
        var.assign(np.stack([m.weights[i].numpy() for m in plain]))
    for layer in fused.layers:
        if hasattr(layer, "relu"):
            layer.relu.assign([float(a == "relu") for a in activations])
    return plain, fused


def loss_and_grads(model, x, y, **call):
    with tf.GradientTape() as tape:
        logits = call_slots(model, x, **call) if call else model(x)
        loss = keras.losses.sparse_categorical_crossentropy(y, logits, from_logits=bool(call))
        loss = tf.reduce_sum(tf.reduce_mean(loss, axis=0))  # per slot its own batch mean
    return logits, tape.gradient(loss, model.trainable_weights)


@pytest.mark.parametrize("formulation", [None, "per_slot", "patches", ["depthwise", "patches"]])
@pytest.mark.parametrize("activations, shared", [
    (("sigmoid", "relu", "relu"), None),  # each slot's relu weight decides (a blend of both)
    (("sigmoid", "relu", "relu"), 1),  # slot 0 sigmoid, the others ReLU: one activation per range
    (("relu",) * 3, "relu"), (("sigmoid",) * 3, "sigmoid"),  # one activation for all
    (("sigmoid",), None), (("relu",), "relu")])  # a pack of one: its own matmul and flatten path
def test_each_formulation_computes_k_separate_lenets_forward_and_backward(images, formulation, activations,
                                                                           shared):
    """Each way the packed trainer has the slots' hidden activations computed."""
    x, y = images
    cfg = compose_cfg(["model.output_activation=softmax"]).model
    plain, fused = plain_and_fused(cfg, activations, formulation)
    batches = [slice(32 * k, 32 * (k + 1)) for k in range(len(activations))]  # each slot its own images
    logits, grads = loss_and_grads(fused, np.concatenate([x[b] for b in batches], -1),
                                   np.stack([y[b] for b in batches], 1), shared_activation=shared)
    for k, (model, b) in enumerate(zip(plain, batches)):
        # the plain model's softmax output; its loss reads the logits Keras keeps on it
        probs, expected = loss_and_grads(model, x[b], y[b])
        assert np.allclose(tf.nn.softmax(logits[:, k]), probs, rtol=0, atol=1e-6), f"slot {k}"
        assert all(np.allclose(g[k], e, rtol=0, atol=1e-6) for g, e in zip(grads, expected)), f"slot {k}"
        assert max(float(tf.reduce_max(tf.abs(e))) for e in expected) > 1e-3  # a gradient to compare


def test_depthwise_needs_one_input_channel_per_slot():
    cfg = compose_cfg([]).model
    with pytest.raises(ValueError, match="depthwise needs one input channel per slot, not 6"):
        build_lenet(cfg, slots=2, formulation="depthwise")


def test_another_stack_packs_and_its_slot_weights_load_into_build_lenet(images, tmp_path):
    """Three convolutions of 4, 8, 8 filters 3x3, one dense layer: a pack of two trains it and
    slot 1's weights are a usual LeNet weights file of that config."""
    x, y = images
    cfg = compose_cfg(["model.conv_filters=[4,8,8]", "model.kernel_size=3", "model.dense_units=[32]"]).model
    pack = PackedLeNet(cfg, 2, 16, x, y)
    pack.assign(0, SlotParams(0.5), seed=1)
    pack.assign(1, SlotParams(0.1, 0.9, activation="relu"), seed=2)
    start = [w.copy() for w in pack.slot_weights(1)]
    pack.train_epoch()
    test, classes = pack.evaluate(x, y)
    path = tmp_path / "slot1.weights.h5"
    pack.to_keras(1, "relu").save_weights(path)
    model = build_lenet(OmegaConf.merge(cfg, {"activation": "relu"}))
    model.load_weights(path)
    assert [w.shape for w in model.get_weights()] == [w.shape for w in start]
    assert len(model.layers) == 3 * 2 + 1 + 2  # conv+pool x3, flatten, dense 32, output
    assert not all(np.allclose(a, b, atol=1e-3) for a, b in zip(model.get_weights(), start))  # it trained
    model.compile(loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    loaded = model.evaluate(x, y, verbose=0, return_dict=True)
    assert loaded["loss"] == pytest.approx(test[1]["loss"], rel=1e-4)
    assert (model.predict(x, verbose=0).argmax(-1) == classes[:, 1]).mean() > 0.95  # a near tie may flip
