"""Several objectives: ``objective=[val_accuracy,train_seconds]`` makes an Optuna multi-objective
study; the Pareto front is in ``optimization_results.yaml``, the report and the sweep's parent run,
and the registry takes its best member on the first objective. One real sweep (a subprocess) read by
several tests; bad settings are one line before any study exists."""

import pandas as pd
import pytest
import yaml
from mlflow.tracking import MlflowClient
from optuna.study import StudyDirection
from optuna.trial import TrialState

from conftest import CALM, load, parents_and_children, run_cli, sweep_args
from lenet_sweep import report
from lenet_sweep.sweep.stall import StallWatch
from lenet_sweep.trial import PROGRESS_ATTR

OBJECTIVES = ["val_accuracy", "train_seconds"]
SIGNS = [1, -1]  # maximize val_accuracy, minimize train_seconds: larger is better after the sign


def dominates(a: list[float], b: list[float]) -> bool:
    """``a`` is at least as good as ``b`` on every objective and better on one (written out here,
    not Optuna's: the test checks Optuna's front against the definition)."""
    a, b = [s * v for s, v in zip(SIGNS, a)], [s * v for s, v in zip(SIGNS, b)]
    return all(x >= y for x, y in zip(a, b)) and any(x > y for x, y in zip(a, b))


@pytest.fixture(scope="module")
def two_objective_sweep(tmp_path_factory):
    folder = tmp_path_factory.mktemp("multi_objective")
    proc = run_cli(sweep_args(folder, *CALM, "objective=[val_accuracy,train_seconds]", "hydra.sweeper.n_jobs=1",
                              "data.train_limit=300", "data.test_limit=200", n_trials=4, register=True), folder)
    assert proc.returncode == 0, proc.stderr[-3000:]
    study = load(folder)
    results = yaml.safe_load((folder / "multirun" / "optimization_results.yaml").read_text())
    return folder, proc, study, results, MlflowClient(f"sqlite:///{folder}/mlflow.db")


def front_of(study) -> set[int]:
    """The non-dominated completed trials, from every trial in the storage."""
    done = [t for t in study.trials if t.state == TrialState.COMPLETE]
    return {t.number for t in done if not any(dominates(o.values, t.values) for o in done)}


@pytest.mark.sweep
@pytest.mark.xdist_group("multi_objective")
def test_the_results_list_the_non_dominated_front(two_objective_sweep):
    _, proc, study, results, _ = two_objective_sweep
    assert study.directions == [StudyDirection.MAXIMIZE, StudyDirection.MINIMIZE]
    assert study.metric_names == OBJECTIVES
    trials = study.trials
    assert len(trials) == 4 and all(t.state == TrialState.COMPLETE for t in trials)  # CALM: none diverges
    # Hydra's Optuna sweeper's shape (name, solutions of params and values), each member a trial
    assert results["name"] == "optuna" and results["objectives"] == OBJECTIVES
    assert results["directions"] == ["maximize", "minimize"]
    solutions = {s["trial"]: s for s in results["solutions"]}
    assert set(solutions) == front_of(study) and solutions
    for number, s in solutions.items():
        assert s["values"] == trials[number].values and s["params"] == trials[number].params
        assert s["mlflow_run_id"] == trials[number].user_attrs["mlflow_run_id"]
    # the member registered: the front's best on the first objective
    best = max(solutions.values(), key=lambda s: (s["values"][0], -s["values"][1]))
    assert results["best_trial"] == best["trial"] and results["best_on"] == "val_accuracy"
    assert results["mlflow_run_id"] == best["mlflow_run_id"]
    output = proc.stdout + proc.stderr
    # pruning is off, said once; no trial reported intermediate values, each counted its epoch
    assert output.count("hydra/sweeper/pruner=median: off") == 1
    assert all(not t.intermediate_values and t.system_attrs[PROGRESS_ATTR] == 1 for t in trials)
    for t in trials:  # each trial's line has both values, and the front's size
        [line] = [x for x in proc.stdout.splitlines() if x.startswith(f"[sweep] trial {t.number} (")]
        assert f"val_accuracy={t.values[0]:.4g} train_seconds={t.values[1]:.4g}" in line and "front: " in line


@pytest.mark.sweep
@pytest.mark.xdist_group("multi_objective")
def test_mlflow_records_both_objectives_the_front_and_the_registered_member(two_objective_sweep):
    _, _, study, results, client = two_objective_sweep
    [parent], children = parents_and_children(client)
    runs = {c.info.run_id: c for c in children}
    for t in study.trials:  # what the trial was told is what its run recorded
        metrics = runs[t.user_attrs["mlflow_run_id"]].data.metrics
        assert [metrics["val_accuracy"], metrics["train_seconds"]] == t.values  # the same doubles
        assert metrics["num_params"] == 44426  # the notebook's LeNet
    front = results["solutions"]
    tags = parent.data.tags
    assert tags["pareto_front_trials"] == ",".join(str(s["trial"]) for s in front)
    assert tags["pareto_front_run_ids"] == ",".join(s["mlflow_run_id"] for s in front)
    assert parent.data.metrics["pareto_front_size"] == len(front)
    assert tags["best_trial_number"] == str(results["best_trial"])
    assert tags["optuna.direction"] == "maximize,minimize" and tags["optuna.pruner"] == "none"
    [version] = client.search_model_versions("name = 'lenet_sweep'")
    assert version.run_id == results["mlflow_run_id"]
    assert "optimization_results.yaml" in {a.path for a in client.list_artifacts(parent.info.run_id)}


@pytest.mark.sweep
@pytest.mark.xdist_group("multi_objective")
def test_the_report_ranks_the_front_first_and_draws_it(two_objective_sweep):
    folder, _, study, results, client = two_objective_sweep
    sweep_dir = folder / "multirun"
    table = pd.read_csv(sweep_dir / report.TABLE_CSV, keep_default_na=False)
    front = {s["trial"] for s in results["solutions"]}
    assert list(table.columns[:6]) == ["rank", "trial", "state", "front", *OBJECTIVES]
    marked = table["front"] == "front"
    assert set(table.loc[marked, "trial"]) == front
    assert marked.tolist() == sorted(marked.tolist(), reverse=True)  # the front's trials first
    assert table["val_accuracy"][marked].is_monotonic_decreasing  # by the first objective
    assert table["rank"].tolist() == [1, 2, 3, 4]
    assert (sweep_dir / "pareto_front.png").read_bytes().startswith(b"\x89PNG")
    [parent], _ = parents_and_children(client)
    assert "report/pareto_front.png" in {a.path for a in client.list_artifacts(parent.info.run_id, "report")}


def multi(*overrides):
    return ["objective=[val_accuracy,train_seconds]", *overrides]


@pytest.mark.parametrize("overrides, fragment", [
    (multi("hydra.sweeper.direction=[maximize]"), "error: hydra.sweeper.direction=[maximize] does not match "
                                                  "objective=[val_accuracy,train_seconds]: give one direction per"),
    (multi("hydra.sweeper.direction=maximize"), "error: hydra.sweeper.direction=maximize does not match"),
    (multi("hydra.sweeper.direction=[null,maximize]"), "error: hydra.sweeper.direction=[null,maximize] contradicts "
                                                       "objective=[val_accuracy,train_seconds], whose train_seconds"),
    (["objective=[val_accuracy,speed]"], "error: objective=[val_accuracy,speed] is invalid: speed is not a metric"),
    (multi("hydra/sweeper/sampler=cmaes"), "error: hydra/sweeper/sampler=cmaes optimises one objective"),
])
@pytest.mark.sweep
def test_bad_objectives_or_directions_are_one_line_before_any_study(tmp_path, overrides, fragment):
    proc = run_cli(sweep_args(tmp_path, *overrides), tmp_path, timeout=120)
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(fragment), proc.stderr[-2000:]
    assert not (tmp_path / "optuna.journal").exists() and not (tmp_path / "mlflow.db").exists()


def test_the_stall_watch_counts_epochs_where_no_intermediate_value_is_reported():
    from optuna.trial import create_trial

    now = [0.0]
    watch = StallWatch(factor=10, floor=5, clock=lambda: now[0])

    def running(epochs: int):
        trial = create_trial(state=TrialState.RUNNING, system_attrs={PROGRESS_ATTR: epochs} if epochs else {})
        trial.number = 0
        return [trial]

    for epochs in (0, 1, 2):  # an epoch per second
        assert watch.check(running(epochs)) == []
        now[0] += 1
    now[0] += 20  # silent for 20 epochs' time
    [line] = watch.check(running(2))
    assert line.startswith("trial 0 has reported nothing for 21 s (an epoch takes 1.0 s)")
    [line] = watch.check(running(3))
    assert line.startswith("trial 0 reports again")


def test_the_status_line_shows_the_size_of_the_front():
    import io

    from optuna.trial import create_trial

    from lenet_sweep.sweep.console import SweepConsole

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    front = [create_trial(values=[0.8, 12.0], params={}, distributions={}),
             create_trial(values=[0.7, 3.5], params={}, distributions={})]
    front[0].number, front[1].number = 3, 1
    stream = Terminal()
    console = SweepConsole(4, OBJECTIVES, stream=stream)
    console.status(2, 1, 0, 0, front)
    console.ended(front[0], 2, front)
    console.close()
    assert "running 1, pruned 0, failed 0 | front: 2 trials (1, 3)" in stream.getvalue()
    assert "[sweep] trial 3 (2/4) COMPLETE val_accuracy=0.8 train_seconds=12 | front: 2 trials (1, 3)" \
        in stream.getvalue()
