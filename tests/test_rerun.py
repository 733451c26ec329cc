"""``python -m lenet_sweep.rerun``: what every run records, a rerun that equals its original (a single
run and a sweep trial, which the sweep also registered), and one-line errors. Real subprocesses, a
real MLflow store in tmp."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest
import yaml
from mlflow.tracking import MlflowClient

from conftest import TINY, all_runs, copy_stores, parents_and_children, run_cli, sweep_args
from lenet_sweep import data, provenance

TIMING = ("epoch_seconds", "samples_per_second", "figures_seconds", "checkpoint_seconds")


def rerun_cli(args, cwd, timeout=600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lenet_sweep.rerun", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "PYTHONUNBUFFERED": "1"})


def model_metrics(run) -> dict[str, float]:
    """What the model did: less times (``*_seconds``: epochs, phases, checkpoints), throughput, the
    registry's decision and the pack's width."""
    return {k: v for k, v in run.data.metrics.items()
            if k not in TIMING and not k.startswith(("registry", "phase.")) and k != "pack_width"
            and not k.endswith("_seconds")}


def rerun_of(client: MlflowClient, run_id: str):
    [new] = [r for r in all_runs(client) if r.data.tags.get("rerun_of") == run_id]
    return new


def config_of(client: MlflowClient, run_id: str, tmp_path) -> dict:
    path = client.download_artifacts(run_id, "config.yaml", str(tmp_path / run_id))
    return yaml.safe_load(open(path))


@pytest.mark.xdist_group("single_run")
def test_a_run_records_what_a_rerun_needs_and_its_rerun_is_identical(single_run, tmp_path):
    client = copy_stores(single_run, tmp_path)  # the rerun adds a run: to a copy of the shared store
    mlflow_uri = client.tracking_uri
    [original] = all_runs(client)
    tags = original.data.tags
    for package in ("lenet_sweep", "tensorflow", "keras", "mlflow", "optuna", "python"):
        assert tags[f"version.{package}"], package
    assert len(tags["mlflow.source.git.commit"]) == 40 and tags["git.dirty"] in ("true", "false")
    assert tags["threads.intra_op"] == str(provenance.schedulable_cpus())  # TF's default: all cores
    assert tags["threads.intra_op_setting"] == "0" and tags["xla"] in ("true", "false")
    inputs = {next(t.value for t in i.tags if t.key == "mlflow.data.context"): i
              for i in original.inputs.dataset_inputs}
    assert set(inputs) == {"training", "validation", "test"}
    sha = {t.key: t.value for t in inputs["test"].tags if t.key.startswith("sha256.")}
    assert sha == {"sha256.t10k-images-idx3-ubyte": data.SHA256["t10k-images-idx3-ubyte.gz"],
                   "sha256.t10k-labels-idx1-ubyte": data.SHA256["t10k-labels-idx1-ubyte.gz"]}
    assert '"features_shape": [460, 28, 28, 1]' in inputs["training"].dataset.profile  # 512 - 10 %

    proc = rerun_cli([original.info.run_id, f"mlflow.tracking_uri={mlflow_uri}"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    new = rerun_of(client, original.info.run_id)
    assert new.info.status == "FINISHED" and new.info.run_id != original.info.run_id
    assert model_metrics(new) == model_metrics(original)  # exactly: same machine, threads, XLA plan
    assert {"test_accuracy", "val_loss", "loss"} <= set(model_metrics(new))
    assert "[rerun] identical: every metric of the rerun equals the original's" in proc.stdout
    assert "test_accuracy" in proc.stdout and "difference" in proc.stdout  # the side-by-side table
    # the same configuration, from the record; only the store differs (the rerun went to the copy)
    old_cfg, new_cfg = config_of(client, original.info.run_id, tmp_path), config_of(client, new.info.run_id, tmp_path)
    assert (old_cfg["mlflow"].pop("tracking_uri"), new_cfg["mlflow"].pop("tracking_uri")) == (
        single_run.uri, mlflow_uri)
    # trainer.jit_compile=null made a choice without timing (a run too short to measure): the rerun
    # takes that choice explicitly
    assert tags["xla_measured"] == "false" and tags["xla"] == "false"
    assert (old_cfg["trainer"].pop("jit_compile"), new_cfg["trainer"].pop("jit_compile")) == (None, False)
    assert "trainer.jit_compile=false (the original's XLA choice)" in proc.stdout
    assert new_cfg == old_cfg
    assert all(r.info.status == "FINISHED" for r in all_runs(client))


@pytest.mark.sweep
@pytest.mark.xdist_group("calm_sweep")
def test_the_sweeps_winner_is_registered_and_a_packed_trial_reruns_alone_to_rounding(calm_sweep, tmp_path):
    proc = calm_sweep.proc  # three trials, the default launcher (conftest): packed
    client = copy_stores(calm_sweep, tmp_path)  # the rerun adds a run: to a copy of the shared stores
    mlflow_uri = client.tracking_uri
    runs = all_runs(client)
    [parent] = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    best_id = parent.data.tags["best_trial_run_id"]
    best = client.get_run(best_id)

    # the winner: one version, tagged; champion, since there was none; the decision on the parent
    [version] = client.search_model_versions("name = 'lenet_sweep'")
    assert version.tags == {"run_id": best_id, "study_name": "lenet_sweep",
                            "trial_number": best.data.tags["optuna.trial_number"],
                            "test_accuracy": str(best.data.metrics["test_accuracy"])}
    assert str(client.get_model_version_by_alias("lenet_sweep", "champion").version) == str(version.version)
    assert parent.data.tags["registry.decision"] == "first" and parent.data.metrics["registry_seconds"] > 0
    assert "[registry] lenet_sweep version 1" in proc.stdout
    # a sweep worker logged the winner's model: the sweeper itself never imported TensorFlow
    assert proc.stdout.strip().splitlines()[-1] == "[probe] tensorflow imported: False"

    proc_sweep = proc.stdout + proc.stderr
    # a trial reruns outside the sweep: a new run, not the trial's, with its worker's thread count
    assert best.data.tags["threads.intra_op_setting"] != "0"  # a sweep worker sets its threads
    proc = rerun_cli([best_id, f"mlflow.tracking_uri={mlflow_uri}"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    new = rerun_of(client, best_id)
    assert "mlflow.parentRunId" not in new.data.tags and "optuna.trial_number" not in new.data.tags
    assert new.data.tags["threads.intra_op"] == best.data.tags["threads.intra_op"]
    # the default sweep packs its trials; the rerun trains alone: the same maths in other kernels
    # (fused ones sum in another order), so the CALM space's sigmoid trials end within float
    # rounding (test_packed: 1e-4 relative on metrics), while another batch order or lr moves the
    # metrics by 1e-2 and more
    assert best.data.tags.get("pack") and re.search(r"hydra.launcher.pack=\d+ \(chosen for (CPU|GPU)\)", proc_sweep)
    assert model_metrics(new) == pytest.approx(model_metrics(best), rel=1e-4, abs=1e-6)
    assert ("[rerun] identical" in proc.stdout or f"the original trained packed (slot {best.data.tags['pack']}"
            in proc.stdout), proc.stdout[-2000:]
    cfg = config_of(client, new.info.run_id, tmp_path)
    assert "trial_number" not in cfg and "run_id" not in cfg["mlflow"] and cfg["mlflow"]["register"] is False
    assert len(client.search_model_versions("name = 'lenet_sweep'")) == 1  # a rerun registers nothing
    assert all(r.info.status == "FINISHED" for r in all_runs(client))


def one_error_line(proc: subprocess.CompletedProcess) -> str:
    """The error line, the last of stderr (before it, at most MLflow's log lines of a fresh store)."""
    assert proc.returncode == 1, proc.stderr[-3000:]
    lines = proc.stderr.strip().splitlines()
    assert all(" INFO mlflow." in line for line in lines[:-1]), proc.stderr[-3000:]
    return lines[-1]


def test_a_run_that_is_not_there_or_has_no_config_is_one_error_line(tmp_path, mlflow_uri, client):
    line = one_error_line(rerun_cli(["0123456789abcdef0123456789abcdef", f"mlflow.tracking_uri={mlflow_uri}"],
                                    tmp_path))
    assert line == f"error: no MLflow run '0123456789abcdef0123456789abcdef' in {mlflow_uri}"

    exp = client.create_experiment("other")
    bare = client.create_run(exp).info.run_id
    client.set_terminated(bare, "FINISHED")
    line = one_error_line(rerun_cli([bare, f"mlflow.tracking_uri={mlflow_uri}"], tmp_path))
    assert line.startswith(f"error: run '{bare}' in {mlflow_uri} has no config.yaml artifact")

    assert one_error_line(rerun_cli([], tmp_path)).startswith("error: give the MLflow run id first")
    typo = f"sqlite:///{tmp_path / 'no_such.db'}"
    line = one_error_line(rerun_cli([bare, f"mlflow.tracking_uri={typo}"], tmp_path))
    assert line == f"error: no MLflow run '{bare}' in {typo}: that database file does not exist"
    assert not (tmp_path / "no_such.db").exists()
    assert all(r.info.status != "RUNNING" for r in client.search_runs([exp]))


@pytest.mark.postgres
def test_the_error_line_masks_the_password_of_the_store(tmp_path, pg_url):
    secret = pg_url.replace("postgres@", "postgres:s3cret@")  # the test server trusts local users
    line = one_error_line(rerun_cli(["0123456789abcdef0123456789abcdef", f"mlflow.tracking_uri={secret}"],
                                    tmp_path))
    assert line == ("error: no MLflow run '0123456789abcdef0123456789abcdef' in "
                    f"{pg_url.replace('postgres@', 'postgres:***@')}")


def recorded():
    """A sweep trial's recorded config.yaml, as an older lenet_sweep logged it (no mlflow.register,
    no optimizer._target_, the sweeper's plumbing keys trial_number and mlflow.run_id in the config)."""
    from omegaconf import OmegaConf

    from conftest import compose_cfg

    cfg = OmegaConf.to_container(compose_cfg(TINY), resolve=True, enum_to_str=True)
    cfg["trial_number"], cfg["mlflow"]["run_id"] = 4, "abc"
    del cfg["mlflow"]["register"], cfg["optimizer"]["_target_"]
    return OmegaConf.create(cfg)


def test_the_rerun_config_is_the_record_without_sweeper_plumbing_and_with_the_xla_choice():
    from lenet_sweep.rerun import RerunError, rerun_config

    cfg, notes = rerun_config(recorded(), {"xla": "false", "xla_measured": "false"}, "sqlite:///x.db",
                              {"trainer.verbose": 2})
    assert "trial_number" not in cfg and "run_id" not in cfg.mlflow  # a new run, outside the sweep
    assert cfg.mlflow.register is False and cfg.mlflow.tracking_uri == "sqlite:///x.db"
    assert cfg.trainer.jit_compile is False and cfg.trainer.verbose == 2
    assert cfg.data.train_limit == 512 and cfg.optimizer.lr == 0.9  # the record, not today's defaults
    assert cfg.optimizer._target_ == "keras.optimizers.SGD"  # the recorded optimizer.name's class
    assert notes == ["not in the record, today's default: mlflow.register, optimizer._target_",
                     "trainer.jit_compile=false (the original's XLA choice)", "trainer.verbose=2 (given)"]

    cfg, _ = rerun_config(recorded(), {"xla": "true", "xla_measured": "true"}, "sqlite:///x.db", {})
    assert cfg.trainer.jit_compile is None  # it timed both variants: time them again, the same way
    with pytest.raises(RerunError, match="trainer.epoch is not a key of the recorded config"):
        rerun_config(recorded(), {}, "sqlite:///x.db", {"trainer.epoch": 3})


def test_the_verdict_names_what_differs():
    from types import SimpleNamespace

    from lenet_sweep.rerun import compare, verdict

    def run(tags, status="FINISHED"):
        return SimpleNamespace(data=SimpleNamespace(tags=tags), info=SimpleNamespace(status=status),
                               inputs=None)

    base = {"version.tensorflow": "2.21.0", "threads.intra_op": "2", "device": "CPU (all threads)",
            "xla": "true", "xla_measured": "true", "host.cpu": "AMD EPYC"}
    same = compare({"test_accuracy": 0.8, "epoch_seconds": 3.0}, {"test_accuracy": 0.8, "epoch_seconds": 5.0})
    assert list(same.index) == ["test_accuracy"]  # timings are not compared
    assert verdict(same, run(base), run(base)).startswith("identical")

    table = compare({"test_accuracy": 0.8, "loss": 0.5}, {"test_accuracy": 0.81, "loss": 0.5})
    line = verdict(table, run({**base, "optuna.trial_state": "PRUNED", "optuna.pruned_at_epoch": "1"}),
                   run({**base, "version.tensorflow": "2.22.0", "threads.intra_op": "4", "xla": "false"}))
    assert line.startswith("not exact: 1 of 2 metrics differ (largest |difference| 0.01); because: ")
    for reason in ("the original was a pruned trial (stopped after epoch 1)", "tensorflow 2.21.0 -> 2.22.0",
                   "intra-op threads 2 -> 4", "XLA true -> false (trainer.jit_compile=null timed"):
        assert reason in line, reason
    assert "no recorded difference explains it" in verdict(table, run(base), run(base))


@pytest.mark.sweep
def test_a_shared_batches_trial_that_entered_late_reruns_alone_on_its_stream(tmp_path, client):
    """hydra.launcher.batches=shared, one worker with a pack of 2, three trials of two epochs (ReLU on
    normalised pixels, lr 0.05, momentum < 0.5: they learn from the first epoch, so the batch order
    shows, and stay well-conditioned; no pruning before five trials complete): the third
    enters when the first two end, after the pack drew two batch orders. Each trial records the
    stream (trainer.stream_seed: the sweep's seed) and its position; the late one's rerun, alone,
    trains on those orders and ends where it ended within float rounding (1e-4 relative, as above),
    while the same rerun on its own seed's orders (trainer.stream_seed=null) ends elsewhere."""
    proc = run_cli(sweep_args(tmp_path, "model.activation=relu", "data.normalize=true", "optimizer.lr=0.05",
                              "optimizer.momentum=interval(0.0, 0.5)", "hydra.launcher.pack=2", "hydra.sweeper.n_jobs=2",
                              "hydra.launcher.batches=shared", "hydra.sweeper.seed=3", "trainer.epochs=2"),
                   tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    _, children = parents_and_children(client)
    by_number = {int(r.data.tags["optuna.trial_number"]): r for r in children}
    assert [by_number[n].data.params["trainer.stream_seed"] for n in range(3)] == ["3"] * 3
    assert [by_number[n].data.params["trainer.stream_position"] for n in range(3)] == ["0", "0", "2"]
    late = by_number[2]
    assert config_of(client, late.info.run_id, tmp_path)["trainer"]["stream_position"] == 2
    uri = client.tracking_uri
    proc = rerun_cli([late.info.run_id, f"mlflow.tracking_uri={uri}", "trainer.verbose=0"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert model_metrics(rerun_of(client, late.info.run_id)) == pytest.approx(model_metrics(late), rel=1e-4, abs=1e-6)
    own = [by_number[0].info.run_id, f"mlflow.tracking_uri={uri}", "trainer.verbose=0", "trainer.stream_seed=null",
           "trainer.stream_position=null"]
    proc = rerun_cli(own, tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    elsewhere = model_metrics(rerun_of(client, by_number[0].info.run_id))
    assert abs(elsewhere["loss"] - by_number[0].data.metrics["loss"]) > 1e-3  # another batch order moves it
    assert all(r.info.status == "FINISHED" for r in all_runs(client))
