"""Packed trials: K LeNets of one architecture trained as one fused graph (horizontal fusion).

Trials of one sweep share the architecture and differ in hyperparameters, so K of them train as one
model whose weights carry a leading slot axis ``[K, ...]``: :func:`build_lenet` with ``slots=K``,
the same builder as the plain model's, from the slot layers of :mod:`lenet_sweep.model.slot_layers`
(whatever stack the ``model`` group expresses: filter counts, conv and dense layers). This module
trains it:

- each slot's batch comes from its own batch order, gathered once for all slots and stacked on the
  channel axis (slot k's images on channels k·C …); with ``batches="shared"`` every slot trains on
  one batch stream (one order per pack epoch from ``default_rng(stream_seed)``), the first
  convolution one ``conv2d`` over that one batch, and a trial depends on its stream position (the
  orders drawn before its first epoch, :attr:`PackedLeNet.stream_position`) instead of its seed;
- the loss is the sum of the slots' batch-mean losses, so each slot's gradient is its own;
- each slot's ``lr``, ``momentum`` and ``nesterov`` are tensors held in variables, so a slot takes a
  new trial without retracing the graph; the hidden activation (sigmoid or ReLU) is computed per
  lane range: sigmoid trials on the first lanes, ReLU ones after, one graph per split (at most
  K + 1 per width, each traced when first needed);
- the update is Keras' SGD rule per slot (``m = m·momentum − g·lr``; ``w += m``, or with Nesterov
  ``w += m·momentum − g·lr``; with momentum 0 this is exactly ``w −= g·lr``).

The pack's width follows its live trials: a pack of K slots computes only as many lanes as it has
live trials, rounded up to one of :func:`widths` (powers of two below K, and K). Each width has its
own variables and graphs (a :class:`_Lanes`), made and traced when first needed and kept; when the
live trials need another width, their state moves there at the epoch boundary. A slot is where a
trial stays for its whole life (the ``pack`` tag names it); its lane in the current width is an
internal matter (lanes move at an epoch boundary when the activation order needs it). So a lone
trial trains at the speed of a pack of one.

A slot's trial does not depend on its neighbours: its initial weights are those :func:`build_lenet`
builds after ``keras.utils.set_random_seed(seed)`` (as :func:`lenet_sweep.training.train.train` does), and
each epoch it draws its own batch order from its own ``np.random.default_rng(seed)``, as
:func:`lenet_sweep.model.fast_fit.fit` does. What the slots share is the architecture (``model`` config
less ``activation``), the batch size and the data. A trial's initial state (:meth:`initial_state`)
can be made in another thread while the pack trains; at the boundary the slot only takes it
(:meth:`put`).

Knows nothing of MLflow or Optuna (:mod:`lenet_sweep.pack.worker` refills slots as trials end).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

from lenet_sweep.quiet import import_tensorflow

import_tensorflow()  # first: TensorFlow's C++ start-up lines filtered (lenet_sweep.quiet)
import keras  # noqa: E402
import numpy as np
import tensorflow as tf
from omegaconf import OmegaConf

from lenet_sweep.model import _name, build_lenet
from lenet_sweep.model.fast_fit import EVAL_BATCH
from lenet_sweep.config import BATCHES  # PackedLeNet(batches=): each slot its own order, or one stream
from lenet_sweep.model.slot_layers import call_slots, conv_formulations


#: seeding and building a LeNet are one step: Keras' seed generator is per thread, but numpy's,
#: Python's and TensorFlow's global seeds are not (a trial's initial state is made in a starter
#: thread while another thread may build an evaluator)
BUILD_LOCK = threading.Lock()


@dataclass(frozen=True)
class SlotParams:
    """What varies between the trials of a pack."""

    lr: float
    momentum: float = 0.0
    nesterov: bool = False
    activation: str = "sigmoid"  # model.activation: sigmoid or relu


@dataclass
class SlotState:
    """What a slot takes at an epoch boundary: a trial's weights and SGD velocities
    (:func:`build_lenet`'s order), hyperparameters and batch-order generator."""

    params: SlotParams
    weights: list[np.ndarray]
    velocities: list[np.ndarray]
    rng: np.random.Generator = field(repr=False)


def widths(size: int) -> list[int]:
    """The widths a pack of ``size`` slots computes at: powers of two below ``size``, and ``size``."""
    out, w = [], 1
    while w < size:
        out.append(w)
        w *= 2
    return [*out, size]


def width_for(live: int, size: int) -> int:
    """The narrowest width holding ``live`` trials."""
    return next(w for w in widths(size) if w >= live)


class _Lanes:
    """The variables and traced graphs of one width: ``width`` lanes, each a LeNet's weights with
    its own hyperparameters (:func:`build_lenet` with ``slots=width``). Padding lanes (no live
    trial) have lr and momentum 0: they compute but never change."""

    def __init__(self, pack: "PackedLeNet", width: int):
        self.pack, self.slots = pack, width  # ``slots``: the lanes of this width
        with BUILD_LOCK:
            self.model = build_lenet(pack.model_cfg, tuple(pack.x.shape[1:]), slots=width,
                                     formulation=pack.formulation)
        self.weights = list(self.model.trainable_weights)  # [width, *plain shape], build_lenet's order
        self.relu = [layer.relu for layer in self.model.layers if hasattr(layer, "relu")]  # per layer
        self.velocity = [tf.Variable(tf.zeros(w.shape), trainable=False) for w in self.weights]
        self.lr = tf.Variable(tf.zeros(width), trainable=False)
        self.momentum = tf.Variable(tf.zeros(width), trainable=False)
        self.nesterov = tf.Variable(tf.zeros(width, tf.bool), trainable=False)
        # per-lane sums over the current epoch: loss·samples, correct predictions; and samples seen
        self.loss_sum = tf.Variable(tf.zeros(width), trainable=False)
        self.correct = tf.Variable(tf.zeros(width), trainable=False)
        self.seen = tf.Variable(0.0, trainable=False)
        x, y = pack.x, pack.y
        self.train_chunk = tf.function(self._chunk)  # traced per :attr:`shared` value
        self._eval_specs = [tf.TensorSpec([None, *x.shape[1:]], x.dtype), tf.TensorSpec([None], y.dtype)]
        self._eval_graphs: dict[str | int | None, tf.types.experimental.GenericFunction] = {}

    @property
    def shared(self) -> str | int | None:
        """What the graph computes as the hidden activation of these lanes, the pack's current ones
        (padding lanes never change, so what they compute does not matter): the one every live lane
        uses, if they agree; else n when lanes 0 … n−1 are the sigmoid ones and the others ReLU
        (:meth:`PackedLeNet._layout` keeps them so: one activation per lane range); else None (a
        per-lane blend of both)."""
        pack = self.pack
        activation = {lane: _name(pack.params[s].activation) for s, lane in pack.lane.items()}
        used = set(activation.values())
        if len(used) == 1:
            return used.pop()
        sigmoid = {lane for lane, act in activation.items() if act == "sigmoid"}
        if sigmoid == set(range(len(sigmoid))) and used == {"sigmoid", "relu"}:
            return len(sigmoid)
        return None

    def eval_batch(self, x, y):
        shared = self.shared
        if shared not in self._eval_graphs:
            self._eval_graphs[shared] = tf.function(lambda x, y: self._eval_batch(x, y, shared),
                                                    input_signature=self._eval_specs)
        return self._eval_graphs[shared](x, y)

    def write(self, states: dict[int, SlotState]) -> None:
        """Put ``states`` ({lane: state}) into their lanes, every variable written once."""
        if not states:
            return
        for group, pick in ((self.weights, lambda s: s.weights), (self.velocity, lambda s: s.velocities)):
            for i, var in enumerate(group):
                value = var.numpy()
                for lane, state in states.items():
                    value[lane] = pick(state)[i]
                var.assign(value)
        for var, pick in ((self.lr, lambda p: p.lr), (self.momentum, lambda p: p.momentum),
                          (self.nesterov, lambda p: bool(p.nesterov)),
                          *((relu, lambda p: float(_name(p.activation) == "relu")) for relu in self.relu)):
            value = var.numpy()
            for lane, state in states.items():
                value[lane] = pick(state.params)
            var.assign(value)

    def idle(self, lanes) -> None:
        """Lanes left without a trial: they compute but never change."""
        for var in (self.lr, self.momentum):
            value = var.numpy()
            value[list(lanes)] = 0.0
            var.assign(value)

    def read(self, lanes) -> dict[int, tuple[list[np.ndarray], list[np.ndarray]]]:
        """Each of ``lanes``' weights and velocities; every variable read once."""
        weights, velocity = [w.numpy() for w in self.weights], [v.numpy() for v in self.velocity]
        return {lane: ([w[lane] for w in weights], [v[lane] for v in velocity]) for lane in lanes}

    # -- the fused graph ----------------------------------------------------------------------
    def forward(self, x, shared: str | int | None = None):
        """``x`` ``[B, H, W, K·C]`` (lane k's images on channels k·C …) -> logits ``[B, K, classes]``;
        ``shared``: every lane's hidden activation (None: each its own)."""
        return call_slots(self.model, x, shared)

    def losses(self, x, y, shared: str | int | None = None):
        """Per-lane batch-mean losses ``[K]`` and output probabilities; ``y`` ``[B, K]``.

        Keras' ``sparse_categorical_crossentropy`` on a sigmoid or softmax output layer reads the
        logits the activation leaves on its output (``_keras_logits``) and computes softmax
        cross-entropy from them; so does this (the output activation only gives the probabilities
        that accuracy's argmax reads, which saturated sigmoids can tie)."""
        logits = tf.cast(self.forward(x, shared), tf.float32)  # a mixed_bfloat16 model's: loss in fp32
        per_sample = keras.losses.sparse_categorical_crossentropy(y, logits, from_logits=True)  # [B, K]
        probs = tf.nn.softmax(logits) if self.pack.softmax else tf.sigmoid(logits)
        return tf.reduce_mean(per_sample, axis=0), probs

    def _accumulate(self, losses, probs, y) -> None:
        b = tf.cast(tf.shape(y)[0], tf.float32)
        self.loss_sum.assign_add(losses * b)
        hits = tf.cast(tf.equal(tf.argmax(probs, -1, output_type=y.dtype), y), tf.float32)
        self.correct.assign_add(tf.reduce_sum(hits, axis=0))
        self.seen.assign_add(b)

    def train_step(self, x, y, shared: str | int | None = None) -> None:
        with tf.GradientTape() as tape:
            losses, probs = self.losses(x, y, shared)
            total = tf.reduce_sum(losses)  # lane k's variables get lane k's gradient only
        grads = tape.gradient(total, self.weights)
        shape = (self.slots,)
        for var, vel, g in zip(self.weights, self.velocity, grads):
            rank = (1,) * (len(var.shape) - 1)
            lr, mom = tf.reshape(self.lr, shape + rank), tf.reshape(self.momentum, shape + rank)
            m = vel * mom - g * lr
            vel.assign(m)
            var.assign_add(tf.where(tf.reshape(self.nesterov, shape + rank), m * mom - g * lr, m))
        self._accumulate(losses, probs, y)

    def _chunk(self, perms, begin, end, shared: str | int | None):
        bs, x, y = self.pack.batch_size, self.pack.x, self.pack.y
        for i in tf.range(begin, end):
            if perms.shape.rank == 1:  # one batch for every lane: the slot convolution takes it once
                idx = perms[i * bs:(i + 1) * bs]
                self.train_step(tf.gather(x, idx), tf.tile(tf.gather(y, idx)[:, None], (1, self.slots)), shared)
                continue
            idx = perms[:, i * bs:(i + 1) * bs]  # [K, b]
            xb = tf.transpose(tf.gather(x, idx), (1, 2, 3, 0, 4))  # [b, H, W, K, C]
            xb = tf.reshape(xb, (-1, *xb.shape[1:3], self.slots * xb.shape[-1]))
            self.train_step(xb, tf.transpose(tf.gather(y, idx)), shared)

    def _eval_batch(self, x, y, shared: str | int | None):
        """Every lane on the same images: accumulates per-lane sums; returns predicted classes [B, K]."""
        yk = tf.tile(y[:, None], (1, self.slots))
        losses, probs = self.losses(x, yk, shared)  # x once: the slot convolution shares it
        self._accumulate(losses, probs, yk)
        return tf.argmax(probs, -1)

    def results(self) -> list[dict[str, float]]:
        seen = float(self.seen.numpy())
        return [{"loss": l / seen, "accuracy": c / seen}
                for l, c in zip(self.loss_sum.numpy().tolist(), self.correct.numpy().tolist())]

    def reset(self) -> None:
        for v in (self.loss_sum, self.correct):
            v.assign(tf.zeros_like(v))
        self.seen.assign(0.0)


class PackedLeNet:
    """K LeNet-5 slots over in-memory training tensors ``x`` ``[N, H, W, C]``, ``y`` ``[N]``."""

    def __init__(self, model_cfg, slots: int, batch_size: int, x, y, formulation: str | None = None,
                 batches: str = "independent", stream_seed: int = 0):
        if batches not in BATCHES:
            raise ValueError(f"batches={batches}: one of {', '.join(BATCHES)}")
        self.model_cfg, self.slots, self.batch_size = model_cfg, slots, batch_size
        self.formulation = formulation  # the slot convolutions' (lenet_sweep.model.slot_layers)
        self.batches = batches
        #: ``batches="shared"``: the one batch order every slot trains on, and the orders drawn so far
        self.stream, self.stream_epochs = np.random.default_rng(stream_seed), 0
        self.stream_position: dict[int, int] = {}  # slot -> stream orders drawn before its first epoch
        self.x, self.y = tf.convert_to_tensor(x), tf.convert_to_tensor(y)
        self.n = int(self.x.shape[0])
        self.steps = -(-self.n // batch_size)
        self.softmax = _name(model_cfg.output_activation) == "softmax"
        self.rngs: list[np.random.Generator | None] = [None] * slots
        self.params: list[SlotParams | None] = [None] * slots
        self.lanes_of: dict[int, _Lanes] = {}  # width -> its variables and graphs, made when needed
        self.current: _Lanes | None = None
        self.lane: dict[int, int] = {}  # live slot -> its lane in ``current``
        self.entering: dict[int, SlotState] = {}  # slots put since the last layout

    @property
    def formulations(self) -> list[str]:
        """The slot convolutions' formulations at the pack's full width."""
        return conv_formulations(self.model_cfg.conv_filters, int(self.x.shape[-1]), self.slots, self.formulation)

    # -- slots --------------------------------------------------------------------------------
    def _lenet(self, activation: str) -> keras.Sequential:
        return build_lenet(OmegaConf.merge(self.model_cfg, {"activation": _name(activation)}),
                           tuple(self.x.shape[1:]))

    def initial_state(self, params: SlotParams, seed: int) -> tuple[SlotState, keras.Sequential]:
        """A new trial's state (the weights a standalone run with ``seed`` starts from, zero
        velocities, its own batch-order generator) and that standalone run's initial model. Touches
        no variable of the pack: any thread may make it while the pack trains."""
        with BUILD_LOCK:
            keras.utils.set_random_seed(seed)
            reference = self._lenet(params.activation)
        weights = [np.asarray(keras.ops.convert_to_numpy(v), np.float32) for v in reference.weights]
        return SlotState(params, weights, [np.zeros_like(w) for w in weights],
                         np.random.default_rng(seed)), reference

    def put(self, slot: int, state: SlotState) -> None:
        """``slot`` takes ``state``'s trial (from the next epoch on)."""
        self.entering[slot] = state
        self.stream_position[slot] = self.stream_epochs
        self.rngs[slot], self.params[slot] = state.rng, state.params

    def assign(self, slot: int, params: SlotParams, seed: int) -> keras.Sequential:
        """Start a new trial in ``slot`` (:meth:`initial_state`, :meth:`put`). Returns the
        standalone run's initial model."""
        state, reference = self.initial_state(params, seed)
        self.put(slot, state)
        return reference

    def release(self, slot: int) -> None:
        """Leave ``slot`` empty: its lane stops changing, and the width may shrink at the next epoch."""
        self.entering.pop(slot, None)
        lane = self.lane.pop(slot, None)
        if lane is not None:
            self.current.idle([lane])
        self.rngs[slot] = self.params[slot] = None

    def live(self) -> list[int]:
        """The slots holding a trial."""
        return sorted({*self.lane, *self.entering})

    @property
    def width(self) -> int:
        """The lanes the next epoch computes (0: no trial)."""
        live = self.live()
        return width_for(len(live), self.slots) if live else 0

    def _layout(self) -> _Lanes | None:
        """The width's lanes for the live slots, the entering ones written in, sigmoid trials first;
        on a change of width, or when the order needs a staying slot on another lane, every live
        slot's state moves (to the new width's variables, made the first time)."""
        live = self.live()
        if not live:
            return self.current
        width = width_for(len(live), self.slots)
        # sigmoid trials on the first lanes, ReLU ones after: each layer computes one activation
        # per lane range (:attr:`_Lanes.shared`), not both for every lane
        order = sorted(live, key=lambda s: (_name(self.params[s].activation) != "sigmoid", s))
        wanted = {s: i for i, s in enumerate(order)}
        if self.current is None or self.current.slots != width or any(
                self.lane[s] != wanted[s] for s in live if s in self.lane):
            old, old_lane = self.current, self.lane
            staying = old.read([old_lane[s] for s in live if s in old_lane]) if old is not None else {}
            if width not in self.lanes_of:
                self.lanes_of[width] = _Lanes(self, width)
            new = self.current = self.lanes_of[width]
            self.lane = wanted
            states = {}
            for s in live:
                if s in self.entering:
                    states[self.lane[s]] = self.entering[s]
                else:
                    weights, velocities = staying[old_lane[s]]
                    states[self.lane[s]] = SlotState(self.params[s], weights, velocities, self.rngs[s])
            new.write(states)
            new.idle(range(len(live), width))
        elif self.entering:  # the staying slots are where the order wants them: write the newcomers
            self.lane = wanted
            self.current.write({self.lane[s]: state for s, state in self.entering.items()})
        self.entering = {}
        return self.current

    def _lanes(self) -> _Lanes:
        """The lanes holding every live slot, laid out anew only when a slot entered (reading a
        slot's state never changes the width: the pack narrows when it next trains)."""
        return self._layout() if self.entering or self.current is None else self.current

    def _by_slot(self, per_lane: list) -> list:
        out = [{} for _ in range(self.slots)]
        for s, lane in self.lane.items():
            out[s] = per_lane[lane]
        return out

    def slot_weights(self, slot: int) -> list[np.ndarray]:
        """``slot``'s weights in :func:`build_lenet`'s order (``model.set_weights`` takes them)."""
        lanes = self._lanes()
        return [w[self.lane[slot]].numpy() for w in lanes.weights]

    def slot_states(self, slots) -> dict[int, tuple[list[np.ndarray], list[np.ndarray], dict]]:
        """Each of ``slots``' resume point: its weights and SGD velocities (:func:`build_lenet`'s
        order) and its batch-order generator's state; every variable is read once for all of them."""
        lanes = self._lanes()
        read = lanes.read([self.lane[k] for k in slots])
        return {k: (*read[self.lane[k]], self.rngs[k].bit_generator.state) for k in slots}

    def restore(self, slot: int, epochs: int, weights, velocities, rng_state: dict | None) -> None:
        """Continue ``slot``'s trial (just :meth:`assign`-ed) after ``epochs`` epochs: its weights,
        velocities and batch-order generator as a checkpoint saved them (no generator state: the
        ``epochs`` draws again)."""
        rng = self.rngs[slot]
        restore_rng(rng, epochs, self.n, rng_state)
        self.put(slot, SlotState(self.params[slot], [np.asarray(w) for w in weights],
                                 [np.asarray(m) for m in velocities], rng))

    def to_keras(self, slot: int, activation: str) -> keras.Sequential:
        """A standard LeNet holding ``slot``'s weights (``save_weights`` writes a usual file)."""
        with BUILD_LOCK:
            model = self._lenet(activation)
        model.set_weights(self.slot_weights(slot))
        return model

    # -- the current width's graph (all slots live: lane k is slot k) ---------------------------
    @property
    def weights(self) -> list[tf.Variable]:
        return self._layout().weights

    @property
    def velocity(self) -> list[tf.Variable]:
        return self._layout().velocity

    def forward(self, x):
        return self._layout().forward(x)

    def losses(self, x, y):
        lanes = self._layout()
        return lanes.losses(x, y, lanes.shared)

    def train_step(self, x, y) -> None:
        lanes = self._layout()
        lanes.train_step(x, y, lanes.shared)

    # -- epochs -------------------------------------------------------------------------------
    def train_epoch(self, steps_per_execution: int = 100) -> list[dict[str, float]]:
        """One epoch for every live slot (each on its own batch order), at :attr:`width`; per-slot
        ``loss``, ``accuracy`` (empty slots: ``{}``)."""
        lanes = self._layout()
        if lanes is None or not self.lane:
            return [{} for _ in range(self.slots)]
        slot_of = {lane: s for s, lane in self.lane.items()}
        lanes.reset()
        if self.batches == "shared":
            perms = self.stream.permutation(self.n).astype(np.int32)
            self.stream_epochs += 1
        else:
            perms = np.stack([self.rngs[slot_of[lane]].permutation(self.n).astype(np.int32)
                              if lane in slot_of else np.arange(self.n, dtype=np.int32)
                              for lane in range(lanes.slots)])
        perms = tf.constant(perms)
        for begin in range(0, self.steps, steps_per_execution):
            end = min(begin + steps_per_execution, self.steps)
            lanes.train_chunk(perms, tf.constant(begin), tf.constant(end), lanes.shared)
        return self._by_slot(lanes.results())

    def evaluate(self, x, y) -> tuple[list[dict[str, float]], np.ndarray]:
        """Per-slot ``loss``, ``accuracy`` over all of (x, y) (empty slots: ``{}``), and each slot's
        predicted classes ``[N, K]`` (empty slots: 0)."""
        lanes = self._layout()
        n = int(x.shape[0])
        if lanes is None or not self.lane:
            return [{} for _ in range(self.slots)], np.zeros((n, self.slots), np.int64)
        lanes.reset()
        x, y = tf.convert_to_tensor(x), tf.convert_to_tensor(y)
        per_lane = np.concatenate([lanes.eval_batch(x[i:i + EVAL_BATCH], y[i:i + EVAL_BATCH]).numpy()
                                   for i in range(0, n, EVAL_BATCH)])
        classes = np.zeros((n, self.slots), per_lane.dtype)
        for s, lane in self.lane.items():
            classes[:, s] = per_lane[:, lane]
        return self._by_slot(lanes.results()), classes


def restore_rng(rng: np.random.Generator, epochs: int, n: int, state: dict | None) -> None:
    """A batch-order generator as it stands after ``epochs`` epochs: ``state`` (a checkpoint's), or
    the same draws again."""
    if state is not None:
        rng.bit_generator.state = state
    else:
        for _ in range(epochs):
            rng.permutation(n)
