"""Which sweep trials can share a pack (``hydra.launcher.pack``): pure config rules, no TensorFlow.

A pack (:mod:`lenet_sweep.model.packed`) trains trials that differ only in :data:`PACKED_KEYS`; the
sweeper packs a sweep whose search space varies nothing else, and a packed worker refuses a trial
whose other keys differ from its pack's.
"""

from __future__ import annotations

from typing import Any, Iterable

from omegaconf import DictConfig, OmegaConf

from lenet_sweep.config import LENET

#: keys the trials of one pack may differ in
PACKED_KEYS = ("optimizer.lr", "optimizer.momentum", "optimizer.nesterov", "model.activation",
               "trainer.epochs", "seed")
#: keys that never change what is trained
UNTRAINED_KEYS = ("trainer.verbose", "mlflow.run_name")


def shared_part(cfg: DictConfig) -> dict[str, Any]:
    """The config less :data:`PACKED_KEYS` and :data:`UNTRAINED_KEYS`: equal within a pack."""
    tree = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
    for key in (*PACKED_KEYS, *UNTRAINED_KEYS):
        parent, _, leaf = key.rpartition(".")
        (tree[parent] if parent else tree).pop(leaf, None)
    return tree


def unpackable(cfg: DictConfig, space_keys: Iterable[str] = ()) -> str | None:
    """Why trials of ``cfg`` whose search space is ``space_keys`` cannot be packed, or None."""
    varied = sorted(set(space_keys) - set(PACKED_KEYS) - set(UNTRAINED_KEYS))
    if varied:
        return f"the search space varies {', '.join(varied)}; a pack varies only {', '.join(PACKED_KEYS)}"
    model = cfg.model.get("_target_")
    if model != LENET:
        return f"model._target_={model}: packed trials train the default LeNet ({LENET}) only"
    target = cfg.optimizer.get("_target_")
    if target != "keras.optimizers.SGD":
        return f"optimizer._target_={target}: packed trials train SGD only"
    if not cfg.trainer.fast:
        return "trainer.fast=false: packed trials run the in-graph loop (trainer.fast=true)"
    if cfg.trainer.get("stream_seed") is not None:
        return (f"trainer.stream_seed={cfg.trainer.stream_seed}: a packed trial's batch orders come from its "
                "seed, or from its pack's stream with hydra.launcher.batches=shared")
    return None
