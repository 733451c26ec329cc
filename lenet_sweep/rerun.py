"""``python -m lenet_sweep.rerun RUN_ID [key=value ...]``: train a recorded run again and compare.

The configuration is the run's own record — its resolved ``config.yaml`` artifact, not today's
defaults — with the sweeper's plumbing cleared (``trial_number``, ``mlflow.run_id``: the rerun is a
new run, outside any sweep, without pruning) and ``mlflow.register`` off. To train under the same
conditions it also takes, from the run's tags (:mod:`lenet_sweep.provenance`):

- XLA: ``trainer.jit_compile=null`` let the original choose. If that run timed both variants on its
  first chunks (``xla_measured=true``), the rerun keeps ``null``: in a fresh process it trains the
  same chunks with the same variants while timing, then goes on with what the timing picks (the
  same as the original's unless the timing differs, which the comparison then names). Otherwise
  the rerun forces ``trainer.jit_compile`` to the recorded ``xla``.
- threads: the original's intra-op thread count when it was set (a sweep worker) or differs from
  this machine's default; CPU only (``CUDA_VISIBLE_DEVICES=-1``) when the original ran on a CPU.

The new run is tagged ``rerun_of=RUN_ID``. At the end both runs' final metrics are printed side by
side with the differences, and a verdict: identical, or what differs between the two runs' recorded
conditions (versions, code, CPU, threads, device, XLA, data, a pruned original).

``key=value`` arguments override keys of the recorded config (``trainer.verbose=0``,
``trainer.epochs=3``); ``mlflow.tracking_uri`` says where the run is and where the rerun goes.
"""

from __future__ import annotations

import sys
import tempfile
from typing import Any

import pandas as pd
from omegaconf import DictConfig, OmegaConf

from lenet_sweep import devices, provenance, stores, tracking
from lenet_sweep.config import UserError, flatten, validate

USAGE = "usage: python -m lenet_sweep.rerun RUN_ID [key=value ...]   (e.g. mlflow.tracking_uri=URL)"
#: Sweeper plumbing that older lenet_sweep versions kept in the config: dropped from the record, so
#: the rerun is a new run outside any sweep.
PLUMBING = ("trial_number", "mlflow.run_id")
_ABSENT = object()


class RerunError(UserError):
    """A run that cannot be rerun; the message names the run and the tracking URI."""


def parse_args(argv: list[str]) -> tuple[str, dict[str, Any]]:
    """The run id and ``key=value`` overrides (OmegaConf's command-line grammar: values are YAML)."""
    args = [a for a in argv if a]
    if not args or args[0].startswith("-") or "=" in args[0]:
        raise RerunError(f"give the MLflow run id first; {USAGE}")
    bare = [a for a in args[1:] if "=" not in a or a.startswith("=")]
    if bare:
        raise RerunError(f"{bare[0]!r} is not key=value; {USAGE}")
    return args[0], flatten(OmegaConf.to_container(OmegaConf.from_cli(args[1:])))


def _select(cfg: DictConfig, key: str):
    return OmegaConf.select(cfg, key, default=_ABSENT)


def load_original(client, run_id: str, uri: str):
    """The run and its recorded config; RerunError naming the run and the (masked) URI if either
    is missing."""
    from mlflow.exceptions import MlflowException

    where = f"in {tracking.mask_url(uri)}"
    try:
        run = client.get_run(run_id)
    except MlflowException as exc:
        if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "NOT_FOUND", "INVALID_PARAMETER_VALUE"):
            raise RerunError(f"no MLflow run {run_id!r} {where}") from None
        raise RerunError(f"cannot read run {run_id!r} {where}: {tracking.error_line(exc, 300)}") from None
    with tempfile.TemporaryDirectory() as tmp:
        try:
            from lenet_sweep.registry import CONFIG, download

            cfg = OmegaConf.load(download(client, run_id, CONFIG, tmp))
        except Exception:
            raise RerunError(f"run {run_id!r} {where} has no {CONFIG} artifact: it was not recorded "
                             "by lenet_sweep (or failed before training), so there is nothing to rerun") from None
    if not isinstance(cfg, DictConfig) or _select(cfg, "trainer") is _ABSENT:
        raise RerunError(f"run {run_id!r} {where}: its config.yaml is not a lenet_sweep config")
    return run, cfg


def _leaves(cfg: DictConfig) -> list[str]:
    return list(flatten(OmegaConf.to_container(cfg, enum_to_str=True)))


def rerun_config(cfg: DictConfig, tags: dict[str, str], uri: str,
                 overrides: dict[str, Any]) -> tuple[DictConfig, list[str]]:
    """The config to train again, and what was set beyond the record (printed). Keys today's
    schema has and the record lacks (a run recorded by an older lenet_sweep) take their defaults."""
    from lenet_sweep.builders import DEFAULTS
    from lenet_sweep.config import Config, OPTIMIZERS

    for key in PLUMBING:  # recorded by lenet_sweep before the trial payload (lenet_sweep.trial)
        parent, _, leaf = key.rpartition(".")
        node = OmegaConf.select(cfg, parent) if parent else cfg
        if node is not None and leaf in node:
            node.pop(leaf)
    base = OmegaConf.structured(Config)
    OmegaConf.set_struct(base, False)  # keys of the record that the schema no longer has are kept
    merged = OmegaConf.merge(base, cfg)
    opt = merged.optimizer
    if "_target_" not in opt and opt.get("name") in OPTIMIZERS:  # recorded before optimizers had one
        opt["_target_"] = OPTIMIZERS[opt.name]._target_
    for group, builder in DEFAULTS.items():  # recorded before the groups had one: LeNet, Fashion-MNIST
        if "_target_" not in merged[group]:
            merged[group]["_target_"] = builder
    added = sorted(set(_leaves(merged)) - set(_leaves(cfg)))
    notes = [f"not in the record, today's default: {', '.join(added)}"] if added else []
    cfg = merged
    if _select(cfg, "mlflow.register") not in (_ABSENT, False):
        OmegaConf.update(cfg, "mlflow.register", False)
    OmegaConf.update(cfg, "mlflow.tracking_uri", uri)
    tc = cfg.trainer
    if tc.get("fast", True) and tc.get("jit_compile") is None and tags.get("xla") in ("true", "false"):
        if tags.get("xla_measured") == "true":
            notes.append("trainer.jit_compile=null as recorded (the original timed XLA against no "
                         "XLA on its first chunks; this rerun does the same)")
        else:
            tc.jit_compile = tags["xla"] == "true"
            notes.append(f"trainer.jit_compile={tags['xla']} (the original's XLA choice)")
    for key, value in overrides.items():
        if key == "mlflow.tracking_uri":
            continue
        if _select(cfg, key) is _ABSENT:
            raise RerunError(f"{key} is not a key of the recorded config; keys are those of "
                             "config.yaml in the run's artifacts (e.g. trainer.verbose=0)")
        OmegaConf.update(cfg, key, value)
        notes.append(f"{key}={value} (given)")
    return cfg, notes


def match_threads(tags: dict[str, str]) -> list[str]:
    """Set this process's thread budget (and CPU-only) as the original's; call before TensorFlow
    is imported. Returns what was set."""
    notes = []
    setting, effective = tags.get("threads.intra_op_setting"), tags.get("threads.intra_op")
    here = str(provenance.schedulable_cpus())
    wanted = setting if setting and setting != "0" else effective
    cpu_only = provenance.device_kind(tags.get("device")) == "CPU" and bool(devices.visible_gpus())
    if cpu_only:
        notes.append("CPU only (the original ran on a CPU)")
    if wanted and wanted.isdigit() and (setting not in (None, "0") or wanted != here):
        notes.append(f"{wanted} intra-op threads (as the original)")
    elif not cpu_only:
        return notes
    threads = int(wanted) if wanted and wanted.isdigit() else None
    env = {"CUDA_VISIBLE_DEVICES": "-1"} if cpu_only else {}
    devices.assign(devices.Placement(env, threads or 0, f"CPU, {threads or 'all'} threads (as the original)"
                                     if threads or cpu_only else tags.get("device", "")))
    return notes


#: Metrics that measure time or how a run was scheduled, not the model: never compared.
def _timing(key: str) -> bool:
    return (key.endswith("_seconds") or key.endswith("per_second") or key.startswith("registry")
            or key == "pack_width")


def compare(original: dict[str, float], rerun: dict[str, float]) -> pd.DataFrame:
    keys = sorted(k for k in {*original, *rerun} if not _timing(k))
    table = pd.DataFrame({"original": [original.get(k) for k in keys],
                          "rerun": [rerun.get(k) for k in keys]}, index=pd.Index(keys, name="metric"))
    table["difference"] = table["rerun"] - table["original"]
    return table


def verdict(table: pd.DataFrame, original_run, rerun_run) -> str:
    """One line: identical, or how much differs and the recorded differences that explain it."""
    both = table.dropna()
    reasons = provenance.differences(original_run.data.tags, rerun_run.data.tags)
    if original_run.data.tags.get("optuna.trial_state") == "PRUNED":
        epoch = original_run.data.tags.get("optuna.pruned_at_epoch", "?")
        reasons.insert(0, f"the original was a pruned trial (stopped after epoch {epoch}); the rerun "
                          "trained every epoch")
    if original_run.info.status != "FINISHED":
        reasons.insert(0, f"the original run ended {original_run.info.status}")
    a, b = provenance.dataset_digests(original_run), provenance.dataset_digests(rerun_run)
    if a and a != b:
        reasons.append(f"data digests {a} -> {b}")
    if len(both) == len(table) and (both["difference"] == 0).all():
        note = f" (recorded differences: {'; '.join(reasons)})" if reasons else ""
        return f"identical: every metric of the rerun equals the original's{note}"
    worst = both["difference"].abs().max() if len(both) else float("nan")
    missing = sorted(set(table.index) - set(both.index))
    head = (f"not exact: {int((both['difference'] != 0).sum())} of {len(both)} metrics differ "
            f"(largest |difference| {worst:.3g})" + (f"; only in one run: {', '.join(missing)}"
                                                     if missing else ""))
    why = "; ".join(reasons) if reasons else ("no recorded difference explains it (same versions, "
                                               "code, CPU, threads, device, XLA and data)")
    return f"{head}; because: {why}"


def rerun(run_id: str, overrides: dict[str, Any]) -> str:
    """Rerun ``run_id``; returns the new run's id. Prints the comparison."""
    uri_given = overrides.get("mlflow.tracking_uri")
    mlflow_cfg = OmegaConf.create({"tracking_uri": uri_given})
    uri = tracking.tracking_uri(mlflow_cfg)
    if (path := stores.sqlite_path(uri)) is not None and not path.exists():
        raise RerunError(f"no MLflow run {run_id!r} in {tracking.mask_url(uri)}: that database file "
                         "does not exist")  # opening it would create an empty store
    try:
        client = tracking.client_for(mlflow_cfg)
    except UserError:  # the store does not answer: one line already
        raise
    except Exception as exc:
        raise RerunError(f"cannot open the MLflow store {tracking.mask_url(uri)} to find run "
                         f"{run_id!r}: {tracking.error_line(exc, 300)}") from None
    original, recorded = load_original(client, run_id, uri)
    tags = dict(original.data.tags)
    cfg, notes = rerun_config(recorded, tags, uri, overrides)
    notes += match_threads(tags)
    validate(cfg)
    print(f"[rerun] run {run_id} ({original.info.run_name}) from {tracking.mask_url(uri)}"
          + (f": {'; '.join(notes)}" if notes else ""), flush=True)

    new_tags = {"rerun_of": run_id, "rerun.overrides": tracking.redact(
        " ".join(f"{k}={v}" for k, v in overrides.items()))}
    new_id = client.create_run(tracking.experiment_id(client, cfg.mlflow.experiment_name),
                               run_name=f"{original.info.run_name}-rerun", tags=new_tags).info.run_id
    try:
        with tracking.sigterm_as_exit():  # a kill before train() opens the run still closes it
            from lenet_sweep.training.train import train  # TensorFlow's start-up lines filtered (quiet.py)

            train(cfg, run_id=new_id)
    except BaseException as exc:
        if client.get_run(new_id).info.status == "RUNNING":  # failed before train() opened it
            client.set_tag(new_id, "error", tracking.error_line(exc))
            client.set_terminated(new_id, "FAILED" if isinstance(exc, Exception) else "KILLED")
        raise

    new = client.get_run(new_id)
    table = compare(original.data.metrics, new.data.metrics)
    with pd.option_context("display.float_format", "{:.6g}".format, "display.width", 120):
        print(f"\n[rerun] original {run_id} vs rerun {new_id}:\n{table.to_string()}\n")
    print(f"[rerun] {verdict(table, original, new)}", flush=True)
    return new_id


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if any(a in ("-h", "--help") for a in argv):
        print(f"{__doc__.strip()}\n\n{USAGE}")
        return
    try:
        run_id, overrides = parse_args(argv)
        rerun(run_id, overrides)
    except UserError as exc:
        sys.exit(f"error: {exc}")


if __name__ == "__main__":
    main()
