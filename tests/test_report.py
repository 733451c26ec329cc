"""The sweep report: ranked table, plots, the sweeper's report files and ``python -m lenet_sweep.report``."""

import os
import subprocess
import sys

import optuna
import pandas as pd
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState

from conftest import parents_and_children
from lenet_sweep import report
from lenet_sweep.stores import open_optuna_storage

PLOTS = ["optimization_history.png", "slice.png", "parallel_coordinate.png", "param_importances.png",
         "timeline.png"]


def run_report(*args, cwd) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lenet_sweep.report", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONUNBUFFERED": "1"})


def table_rows(stdout: str) -> list[list[str]]:
    """The printed table's rows (the lines below the header that starts with ``rank``)."""
    lines = stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.split()[:2] == ["rank", "trial"])
    return [line.split() for line in lines[start + 1:] if line.strip() and not line.startswith("wrote ")]


@pytest.mark.sweep
@pytest.mark.xdist_group("calm_sweep")
def test_three_trial_sweep_report(calm_sweep, tmp_path):
    # the shared sweep's space: no trial diverges, every row is a COMPLETE one (conftest.CALM)
    store = calm_sweep.folder
    client = MlflowClient(calm_sweep.uri)
    sweep_dir = store / "multirun"
    for name in [report.TABLE_CSV, report.TABLE_MD, *PLOTS]:  # the sweeper wrote its report
        assert (sweep_dir / name).stat().st_size > 0, name
    [parent], children = parents_and_children(client)
    logged = {a.path for a in client.list_artifacts(parent.info.run_id, "report")}
    assert {f"report/{n}" for n in [report.TABLE_CSV, *PLOTS]} <= logged
    assert "trials.csv" in {a.path for a in client.list_artifacts(parent.info.run_id)}

    out = tmp_path / "report"
    proc = run_report("study_name=lenet_sweep", f"storage={store}/optuna.journal",
                      f"mlflow.tracking_uri={calm_sweep.uri}", f"out={out}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "3 trials: 3 COMPLETE" in proc.stdout.splitlines()[0]
    rows = table_rows(proc.stdout)
    assert len(rows) == 3
    assert [r[0] for r in rows] == ["1", "2", "3"] and {r[2] for r in rows} == {"COMPLETE"}
    values = [float(r[3]) for r in rows]
    assert values == sorted(values, reverse=True)  # direction maximize: best first
    run_ids = {c.info.run_id: c for c in children}
    assert {r[-1] for r in rows} == set(run_ids)
    for r in rows:  # val_accuracy from MLflow is the objective Optuna was told
        assert float(r[3]) == pytest.approx(run_ids[r[-1]].data.metrics["val_accuracy"], rel=1e-3)

    table = pd.read_csv(out / report.TABLE_CSV)
    # the searched keys by their short names, in the space's order (CALM fixes model.activation)
    assert list(table.columns[:8]) == ["rank", "trial", "state", "value", "lr", "momentum", "nesterov", "epochs"]
    assert table["epochs"].tolist() == [1, 1, 1] and table["seconds"].gt(0).all()
    assert table["test_accuracy"].between(0, 1).all() and table["value"].is_monotonic_decreasing
    assert (out / report.TABLE_MD).read_text().count("\n| ") == 4  # header + 3 rows
    for name in PLOTS:
        assert (out / name).read_bytes().startswith(b"\x89PNG"), name


def test_unknown_study_lists_the_studies_there(tmp_path):
    storage = open_optuna_storage(str(tmp_path / "optuna.journal"))
    for name in ("alpha", "beta"):
        optuna.create_study(study_name=name, storage=storage)
    proc = run_report("study_name=gamma", f"storage={tmp_path}/optuna.journal", cwd=tmp_path)
    assert proc.returncode != 0
    assert proc.stderr.strip().splitlines()[-1] == (
        f"error: no study named 'gamma' in {tmp_path}/optuna.journal; studies there: alpha, beta")
    proc = run_report(f"storage={tmp_path}/missing.journal", cwd=tmp_path)
    assert proc.returncode != 0 and "no Optuna storage at" in proc.stderr
    assert not (tmp_path / "missing.journal").exists()


def fake_study(storage, name="s", direction="minimize") -> optuna.Study:
    """Trials in every state, no training: values 0.3, 0.1, 0.2, a FAIL, a RUNNING and a PRUNED one."""
    study = optuna.create_study(study_name=name, storage=storage, direction=direction)
    space = {"optimizer.lr": FloatDistribution(1e-3, 1, log=True),
             "model.activation": CategoricalDistribution(["sigmoid", "relu"])}
    for i, value in enumerate([0.3, 0.1, 0.2]):
        study.add_trial(optuna.trial.create_trial(
            params={"optimizer.lr": 0.01 * (i + 1), "model.activation": ["sigmoid", "relu"][i % 2]},
            distributions=space, value=value))
    fail = study.ask(space)
    study.tell(fail, state=TrialState.FAIL)
    study.ask(space)  # left RUNNING, as in a sweep still going
    pruned = study.ask(space)
    study.tell(pruned, state=TrialState.PRUNED)
    return study


def test_table_orders_by_direction_and_keeps_every_state(tmp_path):
    study = fake_study(open_optuna_storage(str(tmp_path / "j.journal")))
    table = report.trials_table(study)  # no MLflow client: its columns stay empty
    assert table["state"].tolist() == ["COMPLETE"] * 3 + ["RUNNING", "PRUNED", "FAIL"]
    assert table["value"].tolist()[:3] == [0.1, 0.2, 0.3]  # minimize: lowest first
    assert table["rank"].tolist()[:3] == [1, 2, 3] and table["rank"].isna().sum() == 3
    assert {"lr", "activation", "epochs", "val_accuracy", "test_accuracy", "seconds",
            "mlflow_run_id"} <= set(table.columns)
    files = report.write_plots(study, tmp_path)
    assert [f.name for f in files] == ["optimization_history.png", "slice.png", "parallel_coordinate.png",
                                       "param_importances.png", "timeline.png"]


def test_plots_of_a_study_with_one_trial_do_not_crash(tmp_path):
    study = optuna.create_study()
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=1)
    assert [f.name for f in report.write_plots(study, tmp_path)] == [
        "optimization_history.png", "slice.png", "timeline.png"]
    assert report.format_table(report.trials_table(optuna.create_study())) == "(no trials yet)"


@pytest.mark.postgres
def test_report_reads_a_postgresql_storage(tmp_path, capsys, pg_url):
    storage = open_optuna_storage(pg_url)
    fake_study(storage, "pg_study", direction="maximize")
    assert report.main([f"storage={pg_url}", "study_name=pg_study", f"out={tmp_path / 'out'}",
                        f"mlflow.tracking_uri=sqlite:///{tmp_path}/mlflow.db"]) == 0
    rows = table_rows(capsys.readouterr().out)
    assert [r[2] for r in rows] == ["COMPLETE"] * 3 + ["RUNNING", "PRUNED", "FAIL"]
    assert [float(r[3]) for r in rows[:3]] == [0.3, 0.2, 0.1]
    assert (tmp_path / "out" / report.TABLE_CSV).is_file()
    assert report.main([f"storage={pg_url}", "study_name=nope"]) == 1
    assert "studies there: pg_study" in capsys.readouterr().err
    storage.engine.dispose()
