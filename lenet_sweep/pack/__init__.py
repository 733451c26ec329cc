"""Packed sweep trials (``hydra.launcher.pack``): :mod:`.rules` (which trials can share a pack: config
only, no TensorFlow), :mod:`.pool` (the sweeper's side: one process per pack) and :mod:`.worker` (the
worker's side: the fused model's slots refilled with trials). The fused model and its trainer are
:mod:`lenet_sweep.model.packed`."""
