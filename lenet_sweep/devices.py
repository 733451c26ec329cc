"""Which device a run trains on. ``configure`` is called once per process, before any model."""

from __future__ import annotations


def configure() -> str:
    """Turn on memory growth for every visible GPU (as the notebook does); describe the device."""
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    for gpu in gpus:
        try:
            tf.config.experimental.set_memory_growth(gpu, True)
        except RuntimeError:  # already initialised in this process: growth was set the first time
            pass
    if gpus:
        print("GPUs: " + ", ".join(g.name for g in gpus))
        return ",".join(g.name.replace("/physical_device:", "") for g in gpus)
    return f"CPU (intra-op threads {tf.config.threading.get_intra_op_parallelism_threads() or 'all'})"
