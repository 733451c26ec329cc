"""What every run records so that it can be rerun, and what explains a rerun's difference.

Tags (all strings): ``version.<package>`` (lenet_sweep, tensorflow, keras, mlflow, optuna, numpy,
python), ``mlflow.source.git.commit`` and ``git.dirty`` (when run from a git checkout),
``threads.intra_op`` (the effective intra-op thread count: TensorFlow's 0 means one per schedulable
core, recorded as that number), ``threads.intra_op_setting`` / ``threads.inter_op_setting`` (what
was set, 0 = TensorFlow's default), ``host.cpu`` and ``host.cpus``, and ``xla_measured``: whether
this run timed XLA against no XLA on its first training chunks (``trainer.jit_compile=null`` in a
process that had not chosen yet), so those chunks mixed both. ``xla`` (the variant that trained
last) is tagged by :func:`lenet_sweep.training.train.train`.

Inputs: the run's three splits as MLflow datasets (``mlflow.data``, contexts ``training``,
``validation``, ``test``) named ``fashion-mnist-<context>``, with the SHA-256 of each decompressed IDX file
they come from as input tags ``sha256.<file>`` and a digest over those checksums and the split. Data of
another ``data._target_`` is named ``<target>-<context>``, its sources the arrays the builder returned
(``sha256.x_train``, ``sha256.y_train``; ``sha256.x_test``, ``sha256.y_test``). The tag ``input_shape``
(``28,28,1``) is one image's shape.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import os
import platform
import subprocess
import warnings
from pathlib import Path
from typing import Mapping

from mlflow.entities import DatasetInput, InputTag, RunTag
from mlflow.tracking import MlflowClient

from lenet_sweep import data

PACKAGES = ("lenet_sweep", "tensorflow", "keras", "mlflow", "optuna", "numpy")
GIT_COMMIT = "mlflow.source.git.commit"  # MLflow's own tag: the UI shows it
INPUT_SHAPE = "input_shape"  # tag: one image's shape as the model takes it, e.g. "28,28,1" (the registry's)


# What a process's runs share is looked up once per process (a sweep worker runs many trials): the
# package versions, the checkout's git state, the CPU, each split's dataset entity. A trial records
# only what is its own (threads and the XLA plan are read per run: they may change between runs).

@functools.cache
def versions() -> dict[str, str]:
    found = {"version.python": platform.python_version()}
    for name in PACKAGES:
        try:
            found[f"version.{name}"] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            found[f"version.{name}"] = "not installed"
    return found


#: The folder above the package: the top of the checkout when run from one.
CHECKOUT = Path(__file__).resolve().parent.parent


@functools.cache
def git_state(root: Path = CHECKOUT) -> dict[str, str]:
    """The commit and whether tracked files differ from it; empty when ``root`` is not the top of
    a git checkout (an installed package) or git is missing. Once per process: the code a process
    runs was imported when it started, so a later edit of the checkout is not what it runs."""
    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True,
                              timeout=30, check=True).stdout.strip()

    try:
        if Path(git("rev-parse", "--show-toplevel")).resolve() != Path(root).resolve():
            return {}
        commit = git("rev-parse", "HEAD")
        dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.SubprocessError):
        return {}
    return {GIT_COMMIT: commit, "git.dirty": str(dirty).lower()}


def schedulable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


@functools.cache
def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def threads() -> dict[str, str]:
    """TensorFlow's thread settings in this process (after :func:`lenet_sweep.devices.configure`)."""
    import tensorflow as tf

    intra = tf.config.threading.get_intra_op_parallelism_threads()
    inter = tf.config.threading.get_inter_op_parallelism_threads()
    env = os.environ.get("TF_NUM_INTRAOP_THREADS", "")
    effective = intra or (int(env) if env.isdigit() and int(env) > 0 else schedulable_cpus())
    return {"threads.intra_op": str(effective), "threads.intra_op_setting": str(intra),
            "threads.inter_op_setting": str(inter)}


def xla_measured(cfg, model, x) -> str:
    """"true" when ``fast_fit`` will time XLA against no XLA on this run's first training chunks
    (``trainer.jit_compile=null``, a run long enough to measure, and no choice made yet in this
    process for this shape); call it before training. "unknown" if ``fast_fit`` no longer exposes
    what this reads."""
    tc = cfg.trainer
    if not tc.fast or tc.jit_compile is not None:
        return "false"
    try:
        from lenet_sweep.model import fast_fit

        chunks = fast_fit.count_chunks(len(x), cfg.data.batch_size, tc.epochs, tc.steps_per_execution)
        return str(fast_fit.JitChooser(model, cfg.data.batch_size, x, None, chunks).plan != []).lower()
    except Exception:
        return "unknown"


def run_tags(cfg, model, x) -> dict[str, str]:
    return {**versions(), **git_state(), **threads(), "host.cpu": cpu_model(),
            "host.cpus": str(schedulable_cpus()), "xla_measured": xla_measured(cfg, model, x)}


#: the part of the data (:attr:`lenet_sweep.data.Splits.sources`) each split is taken from
SPLIT_PART = {"training": "train", "validation": "train", "test": "test"}


def digest(data_cfg, context: str, sources) -> str:
    """16 hex digits over the split, its sources' SHA-256 and what the run takes of them (MLflow
    keeps at most 36 characters)."""
    text = "\n".join([context, *(f"{n} {sha}" for n, sha in sources[SPLIT_PART[context]].items()),
                      *(f"{k}={data_cfg[k]}" for k in ("train_limit", "test_limit",
                                                        "validation_split", "normalize"))])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def datasets(data_cfg, splits: data.Splits) -> list[DatasetInput]:
    """The three splits as MLflow dataset inputs, with the checksums of their sources (Fashion-MNIST's
    files, verified against :data:`lenet_sweep.data.SHA256` when loaded; another data builder's
    arrays)."""
    arrays = {"training": (splits.x_train, splits.y_train),
              "validation": (splits.x_val, splits.y_val), "test": (splits.x_test, splits.y_test)}
    return [_dataset(splits, context, digest(data_cfg, context, splits.sources), x, y)
            for context, (x, y) in arrays.items()]


_DATASETS: dict[tuple, DatasetInput] = {}


def _dataset(splits: data.Splits, context: str, split_digest: str, x, y) -> DatasetInput:
    """One split's dataset input, made once per process for each (source, split, digest): the digest
    covers the sources' checksums and every data setting that selects the split's images."""
    key = (splits.origin, splits.name, context, split_digest, x.shape, y.shape)
    if key not in _DATASETS:
        import mlflow.data

        with warnings.catch_warnings():  # MLflow registers two equal sources for a local path
            warnings.filterwarnings("ignore", "The specified dataset source can be interpreted")
            ds = mlflow.data.from_numpy(x, targets=y, source=splits.origin,
                                        name=f"{splits.name}-{context}", digest=split_digest)
        sources = splits.sources[SPLIT_PART[context]]
        tags = [InputTag("mlflow.data.context", context),
                *(InputTag(f"sha256.{n.removesuffix('.gz')}", sha) for n, sha in sources.items())]
        _DATASETS[key] = DatasetInput(ds._to_mlflow_entity(), tags)
    return _DATASETS[key]


def log_run(client: MlflowClient, run_id: str, cfg, model, splits: data.Splits) -> None:
    """Record this run's provenance (module docstring); call it before training."""
    tags = {**run_tags(cfg, model, splits.x_train), INPUT_SHAPE: ",".join(map(str, splits.x_train.shape[1:]))}
    client.log_batch(run_id, tags=[RunTag(k, v) for k, v in tags.items()])
    client.log_inputs(run_id, datasets=datasets(cfg.data, splits))


# -- comparing two runs (a rerun with its original) ----------------------------------------------

def device_kind(device_tag: str | None) -> str | None:
    if not device_tag:
        return None
    return "GPU" if "GPU" in device_tag.upper() else "CPU"


def dataset_digests(run) -> dict[str, str]:
    """{context: digest} of a run's dataset inputs."""
    found = {}
    for di in (run.inputs.dataset_inputs if run.inputs else []):
        context = next((t.value for t in di.tags if t.key == "mlflow.data.context"), di.dataset.name)
        found[context] = di.dataset.digest
    return found


def differences(original: Mapping[str, str], rerun: Mapping[str, str]) -> list[str]:
    """What differs between two runs' recorded conditions (their tags), one phrase each."""
    out = []
    if not any(k.startswith("version.") for k in original):
        out.append("the original recorded no versions, threads or commit (made before lenet_sweep "
                   "recorded them)")
    for key in sorted(k for k in {*original, *rerun} if k.startswith("version.")):
        if key in original and original.get(key) != rerun.get(key):
            out.append(f"{key.removeprefix('version.')} {original.get(key)} -> {rerun.get(key)}")
    if GIT_COMMIT in original:
        a = (original.get(GIT_COMMIT), original.get("git.dirty"))
        b = (rerun.get(GIT_COMMIT), rerun.get("git.dirty"))
        def show(c):
            return f"{(c[0] or 'none')[:10]}{' (uncommitted changes)' if c[1] == 'true' else ''}"

        if a != b:
            out.append(f"code: commit {show(a)} -> {show(b)}")
        elif a[1] == "true":
            out.append(f"code: commit {show(a)} in both runs (the uncommitted changes may differ)")
    for key, what in (("host.cpu", "CPU"), ("threads.intra_op", "intra-op threads")):
        if key in original and original.get(key) != rerun.get(key):
            out.append(f"{what} {original.get(key)} -> {rerun.get(key)}")
    if device_kind(original.get("device")) != device_kind(rerun.get("device")) \
            and original.get("device"):
        out.append(f"device {original.get('device')} -> {rerun.get('device')}")
    if original.get("pack") and not rerun.get("pack"):
        out.append(f"the original trained packed (slot {original['pack']}: fused kernels, another "
                   "summation order), the rerun alone")
    if "xla" in original and original.get("xla") != rerun.get("xla"):
        out.append(f"XLA {original.get('xla')} -> {rerun.get('xla')}"
                   + (" (trainer.jit_compile=null timed the variants again and chose otherwise)"
                      if original.get("xla_measured") == "true" else ""))
    return out
