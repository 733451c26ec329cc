"""Device placement of concurrent trials, and per-process device set-up.

``placement`` is a pure function (visible GPUs, worker slot -> environment); ``visible_gpus`` asks
the NVIDIA driver through NVML (``nvidia-ml-py``, imported when asked) so the sweeper never imports
TensorFlow; ``configure`` runs in the training process.
"""

from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import dataclass

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Placement:
    env: dict[str, str]  # CUDA_VISIBLE_DEVICES only: the one setting that must precede TensorFlow
    threads: int  # intra-op threads of the worker's TensorFlow
    description: str  # recorded in each run's ``device`` tag


#: This process's placement, set once by a pool worker when it starts (:func:`assign`); None in a
#: process that owns the whole machine (a single run).
_ASSIGNED: Placement | None = None


def assign(place: Placement | None) -> None:
    """Make ``place`` this process's placement (before TensorFlow starts, for its ``env``)."""
    global _ASSIGNED
    _ASSIGNED = place
    if place is not None:
        os.environ.update(place.env)


def visible_gpus() -> list[str]:
    """GPU ids this process may use: CUDA_VISIBLE_DEVICES if set, else every GPU the driver lists."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return [g.strip() for g in visible.split(",") if g.strip() and g.strip() != "-1"]
    return list(_driver_gpus())


def _driver_gpus() -> dict[str, int]:
    """Every GPU the NVIDIA driver reports (NVML's index, as ``nvidia-smi`` numbers them) with its
    total memory in MiB; {} without a driver (no NVML library, or it does not initialise) or when
    NVML fails."""
    import pynvml  # nvidia-ml-py: a ctypes binding, loads libnvidia-ml only in nvmlInit

    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:  # NVMLError_LibraryNotFound on a machine without the driver
        return {}
    try:
        return {str(i): pynvml.nvmlDeviceGetMemoryInfo(pynvml.nvmlDeviceGetHandleByIndex(i)).total // 2**20
                for i in range(pynvml.nvmlDeviceGetCount())}
    except pynvml.NVMLError:
        return {}
    finally:
        with contextlib.suppress(pynvml.NVMLError):
            pynvml.nvmlShutdown()


def default_n_jobs(gpus: list[str], cpus: int) -> int:
    """One trial per GPU; without GPUs, one trial per two cores (LeNet gains little from more
    threads, and each trial gets its own)."""
    return len(gpus) if gpus else max(1, cpus // 2)


#: trials per worker with ``hydra.launcher.pack=null`` on a CPU: the shortest wall time of
#: benchmarks/packed_sweep.py on a 2-core EPYC (docs/benchmarks.md: larger packs train more epochs per
#: minute but prune less); on a GPU as many as half its memory holds, at most GPU_PACK_MAX
CPU_PACK = 4
GPU_PACK_MAX = 64


def trial_bytes(batch_size: int, params: int = 61_706, activations_per_image: int = 6_000) -> int:
    """A LeNet trial's GPU memory in a pack: weights, gradients and momentum (3 x params) and the
    activations a training step keeps for its backward pass (LeNet-5 on 28x28: ~5,800 floats per
    image, rounded up), float32, times 4 for the allocator's slack and the evaluation batches."""
    return 4 * 4 * (3 * params + activations_per_image * batch_size)


def default_pack(gpus: list[str], gpu_memory_mib: list[int], batch_size: int) -> int:
    """Trials per worker when ``hydra.launcher.pack=null``: :data:`CPU_PACK` without GPUs; with GPUs,
    as many as half the smallest GPU's memory holds (:func:`trial_bytes`), between 1 and
    :data:`GPU_PACK_MAX`."""
    if not gpus:
        return CPU_PACK
    memory = min(gpu_memory_mib) * 2**20 if gpu_memory_mib else 0
    return max(1, min(GPU_PACK_MAX, memory // 2 // trial_bytes(batch_size)))


def gpu_memory_mib() -> list[int]:
    """Total memory of each visible GPU (NVML), in MiB; [] when it cannot say (none visible, no
    driver, or CUDA_VISIBLE_DEVICES names GPUs by UUID)."""
    visible = visible_gpus()
    if not visible:
        return []
    memory = _driver_gpus()
    return [memory[g] for g in visible if g in memory]


def placement(slot: int, n_workers: int, gpus: list[str], cpus: int) -> Placement:
    """The environment of worker ``slot`` (0-based) out of ``n_workers`` running at once.

    With GPUs, slot k gets GPU k (round-robin when there are more workers than GPUs) and only that
    one is visible to it; CPU threads are split between the workers either way.
    """
    threads = max(1, cpus // max(1, n_workers))
    if gpus:
        gpu = gpus[slot % len(gpus)]
        shared = "" if n_workers <= len(gpus) else f", shared by {n_workers} workers"
        return Placement({"CUDA_VISIBLE_DEVICES": gpu}, threads, f"GPU {gpu} (worker {slot}{shared})")
    return Placement({"CUDA_VISIBLE_DEVICES": "-1"},  # no GPU: never probe one
                     threads, f"CPU, {threads} threads (worker {slot} of {n_workers})")


def configure() -> str:
    """Apply this process's thread budget, turn on memory growth for every visible GPU (as the
    notebook does), and describe the device."""
    import tensorflow as tf

    threads = _ASSIGNED.threads if _ASSIGNED is not None else None
    if threads:
        try:
            tf.config.threading.set_intra_op_parallelism_threads(int(threads))
            tf.config.threading.set_inter_op_parallelism_threads(min(2, int(threads)))
        except RuntimeError:  # already initialised by an earlier run in this worker: same values
            pass
    gpus = tf.config.list_physical_devices("GPU")
    for gpu in gpus:
        try:
            tf.config.experimental.set_memory_growth(gpu, True)
        except RuntimeError:  # already initialised in this process: growth was set the first time
            pass
    if gpus:
        log.info("GPUs: %s", ", ".join(g.name for g in gpus))
    if _ASSIGNED is not None:
        return _ASSIGNED.description
    if gpus:
        return ",".join(g.name.replace("/physical_device:", "") for g in gpus)
    return f"CPU ({tf.config.threading.get_intra_op_parallelism_threads() or 'all'} threads)"
