"""What a sweep found: a ranked pandas table of its trials (Optuna study joined with the trials' MLflow
runs) and Optuna's plots, for a finished or a running sweep.

``python -m lenet_sweep.report [study_name=…] [storage=…] [mlflow.tracking_uri=…] [out=…]``

The sweeper calls :func:`write_sweep_report` when it ends (files in the sweep folder, artifacts of the
parent run). No TensorFlow here.
"""

from __future__ import annotations

import logging
import math
import sys
import time
import warnings
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import optuna
import pandas as pd
from optuna.trial import FrozenTrial, TrialState

from lenet_sweep import stores, tracking

logging.getLogger("matplotlib.category").setLevel(logging.WARNING)  # "categorical units" notes

TABLE_CSV = "ranked_trials.csv"
TABLE_MD = "ranked_trials.md"
#: Rows after the completed trials, in this order.
STATE_ORDER = {TrialState.COMPLETE: 0, TrialState.RUNNING: 1, TrialState.PRUNED: 2,
               TrialState.FAIL: 3, TrialState.WAITING: 4}
DEFAULTS = {"study_name": "lenet_sweep", "storage": None, "mlflow.tracking_uri": None, "out": None}
USAGE = ("usage: python -m lenet_sweep.report [study_name=NAME] [storage=URL_OR_JOURNAL] "
         "[mlflow.tracking_uri=URI] [out=FOLDER]\n"
         "  defaults: study_name=lenet_sweep, storage=<project>/multirun/optuna.journal, "
         "mlflow.tracking_uri=sqlite:///<project>/mlflow.db, out=<project>/multirun/reports/<study_name>")


class ReportError(RuntimeError):
    """A study or storage that is not there; the message says what is."""


# -- the table -------------------------------------------------------------------------------------
def _short_names(keys: Sequence[str]) -> dict[str, str]:
    """``optimizer.lr`` -> ``lr`` where the last part is unique among the keys, else the full key."""
    last = [k.rsplit(".", 1)[-1] for k in keys]
    return {k: s if last.count(s) == 1 else k for k, s in zip(keys, last)}


def _mlflow_facts(client, run_id: str | None) -> dict[str, Any]:
    """Latest ``val_accuracy``/``test_accuracy`` and the epochs logged so far (len of ``loss``)."""
    facts: dict[str, Any] = {"epochs": pd.NA, "val_accuracy": np.nan, "test_accuracy": np.nan,
                             "mlflow_seconds": np.nan}
    if client is None or not run_id:
        return facts
    try:
        run = client.get_run(run_id)
        facts["epochs"] = len(client.get_metric_history(run_id, "loss"))
    except Exception:  # run deleted, or another tracking store: leave the columns empty
        return facts
    metrics = run.data.metrics
    facts["val_accuracy"] = metrics.get("val_accuracy", np.nan)
    facts["test_accuracy"] = metrics.get("test_accuracy", np.nan)
    if run.info.start_time:
        end = run.info.end_time or time.time() * 1000
        facts["mlflow_seconds"] = (end - run.info.start_time) / 1000
    return facts


def _seconds(trial: FrozenTrial) -> float:
    if trial.datetime_start is None:
        return np.nan
    end = trial.datetime_complete or datetime.now(trial.datetime_start.tzinfo)
    return (end - trial.datetime_start).total_seconds()


def objective_names(study: optuna.Study) -> list[str]:
    """The study's objectives by name (``study.set_metric_names``; else ``values_0``, ...)."""
    n = len(study.directions)
    return list(study.metric_names or ([f"values_{i}" for i in range(n)] if n > 1 else ["value"]))


def trials_table(study: optuna.Study, client=None) -> pd.DataFrame:
    """Every trial, best first: completed trials by value (the study's direction), then RUNNING,
    PRUNED, FAIL and WAITING by number. Columns: rank (completed only), trial, state, value, the
    searched params (short names), epochs reached, val_accuracy, test_accuracy, seconds, the MLflow
    run id and, for failed trials, the reason.

    Several objectives: the Pareto front's trials first (column ``front``), each part by the first
    objective; a column per objective (its name) instead of ``value``, and of val_accuracy and
    test_accuracy only those that are not objectives."""
    trials = study.get_trials(deepcopy=False)
    keys = list(dict.fromkeys(k for t in trials for k in t.params))
    short = _short_names(keys)
    several = len(study.directions) > 1
    names = objective_names(study) if several else ["value"]
    front = {t.number for t in study.best_trials} if several else set()
    sign = -1 if study.directions[0] == optuna.study.StudyDirection.MAXIMIZE else 1
    facts_shown = [k for k in ("val_accuracy", "test_accuracy") if k not in names]
    rows = []
    for t in trials:
        run_id = t.user_attrs.get("mlflow_run_id")
        facts = _mlflow_facts(client, run_id)
        seconds = _seconds(t)
        if math.isnan(seconds):
            seconds = facts["mlflow_seconds"]
        values = t.values if t.values is not None else [np.nan] * len(names)
        rows.append({"trial": t.number, "state": t.state.name,
                     **({"front": "front" if t.number in front else ""} if several else {}),
                     **dict(zip(names, values)),
                     **{short[k]: t.params.get(k, pd.NA) for k in keys},
                     "epochs": facts["epochs"], **{k: facts[k] for k in facts_shown}, "seconds": seconds,
                     "mlflow_run_id": run_id or "", "fail_reason": t.user_attrs.get("fail_reason", ""),
                     "_order": STATE_ORDER.get(t.state, 5), "_front": t.number not in front,
                     "_key": sign * t.values[0] if t.values is not None else t.number})
    columns = ["rank", "trial", "state", *(["front"] if several else []), *names, *short.values(), "epochs",
               *facts_shown, "seconds", "mlflow_run_id", "fail_reason"]
    if not rows:
        return pd.DataFrame(columns=columns)
    table = pd.DataFrame(rows).sort_values(["_order", "_front", "_key", "trial"], kind="stable")
    complete = (table["state"] == TrialState.COMPLETE.name).to_numpy()
    table["rank"] = pd.array(np.where(complete, np.cumsum(complete), 0), dtype="Int64")
    table.loc[~complete, "rank"] = pd.NA
    table["epochs"] = table["epochs"].astype("Int64")
    return table[columns].reset_index(drop=True)


def _cell(value, empty: str = "-") -> str:
    if value is None or value is pd.NA or value == "" or (isinstance(value, float) and math.isnan(value)):
        return empty
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def format_table(table: pd.DataFrame) -> str:
    """The table as terminal text (4 significant digits, run ids in full, empty cells as ``-``)."""
    if table.empty:
        return "(no trials yet)"
    shown = table.drop(columns=["fail_reason"] if not table["fail_reason"].astype(bool).any() else [])
    if "fail_reason" in shown:  # the CSV keeps the whole reason
        shown = shown.assign(fail_reason=shown["fail_reason"].map(lambda r: r if len(r) <= 60 else r[:57] + "..."))
    return shown.map(_cell).to_string(index=False)


def to_markdown(table: pd.DataFrame) -> str:
    """A GitHub-flavoured Markdown table (pandas through ``tabulate``), cells as the terminal shows them."""
    cells = table.map(lambda v: _cell(v, empty="").replace("|", "\\|").replace("\n", " "))
    return cells.to_markdown(index=False, tablefmt="github", disable_numparse=True) + "\n"


# -- the plots -------------------------------------------------------------------------------------
def _plots(study: optuna.Study) -> dict[str, Any]:
    """Optuna's matplotlib plots worth drawing for this study, by file stem. Several objectives: the
    Pareto front (two or three objectives), the others of the first objective."""
    from optuna.visualization import matplotlib as vis

    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    varied = [k for k in dict.fromkeys(k for t in complete for k in t.params)
              if len({repr(t.params.get(k)) for t in complete}) > 1]
    plots: dict[str, Any] = {}
    first = {}
    if len(study.directions) > 1:
        first = {"target": lambda t: t.values[0], "target_name": objective_names(study)[0]}
        if complete and len(study.directions) <= 3:
            plots["pareto_front"] = vis.plot_pareto_front
    if complete:
        plots["optimization_history"] = partial(vis.plot_optimization_history, **first)
        plots["slice"] = partial(vis.plot_slice, **first)
    if len(complete) >= 2:
        plots["parallel_coordinate"] = partial(vis.plot_parallel_coordinate, **first)
    if len(complete) >= 2 and varied:
        plots["param_importances"] = partial(vis.plot_param_importances, **first)
    if study.get_trials(deepcopy=False):
        plots["timeline"] = vis.plot_timeline
    return plots


def write_plots(study: optuna.Study, folder: Path) -> list[Path]:
    """PNG files of the plots that make sense for the study so far; a plot that fails is skipped with
    a warning on stderr (a report never fails on a picture)."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    written = []
    for stem, plot in _plots(study).items():
        path = Path(folder) / f"{stem}.png"
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # ExperimentalWarning, tight_layout chatter
                axes = plot(study)
                fig = np.atleast_1d(axes).flat[0].figure
                fig.set_size_inches(max(fig.get_figwidth(), 8), max(fig.get_figheight(), 4.5))
                with tracking.writing(path):
                    fig.savefig(path, dpi=100, bbox_inches="tight")
            written.append(path)
        except Exception as exc:
            if tracking.write_error(exc):  # a full disk fails the next file too: one error, not warnings
                raise
            print(f"warning: {stem} plot skipped: {type(exc).__name__}: {exc}", file=sys.stderr)
        finally:
            plt.close("all")
    return written


# -- files -----------------------------------------------------------------------------------------
def write_report(study: optuna.Study, client, folder: Path) -> tuple[pd.DataFrame, list[Path]]:
    """``ranked_trials.csv``, ``ranked_trials.md`` and the plots' PNGs into ``folder``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    table = trials_table(study, client)
    with tracking.writing(folder / TABLE_CSV):
        table.to_csv(folder / TABLE_CSV, index=False)
    header = f"# Study `{study.study_name}` ({_summary(study)})\n\n"
    with tracking.writing(folder / TABLE_MD):
        (folder / TABLE_MD).write_text(header + to_markdown(table))
    return table, [folder / TABLE_CSV, folder / TABLE_MD, *write_plots(study, folder)]


def write_sweep_report(study: optuna.Study, client, parent_id: str, folder: Path) -> list[Path]:
    """The sweeper's end: the report into the sweep folder and under ``report/`` of the parent run.
    Never raises, but on a full disk: a sweep does not fail on its report."""
    try:
        _, files = write_report(study, client, folder)
        for path in files:
            client.log_artifact(parent_id, str(path), "report")
        return files
    except Exception as exc:
        if tracking.write_error(exc):  # the sweeper says it on one line
            raise
        print(f"warning: sweep report not written: {type(exc).__name__}: {exc}", file=sys.stderr)
        return []


def _summary(study: optuna.Study) -> str:
    trials = study.get_trials(deepcopy=False)
    counts = pd.Series([t.state.name for t in trials]).value_counts().to_dict() if trials else {}
    states = ", ".join(f"{n} {s}" for s, n in counts.items())
    goals = [d.name.lower() for d in study.directions]
    if len(goals) > 1:  # "maximize val_accuracy, minimize train_seconds, Pareto front of 3"
        goals = [*(f"{d} {n}" for d, n in zip(goals, objective_names(study))),
                 f"Pareto front of {len(study.best_trials)}"]
    return f"{', '.join(goals)}, {len(trials)} trials" + (f": {states}" if states else "")


# -- the command -----------------------------------------------------------------------------------
def parse_args(argv: Sequence[str]) -> dict[str, str | None]:
    """``key=value`` words, as Hydra takes them; ``hydra.sweeper.study_name`` / ``.storage`` work too,
    so a sweep's own overrides can be pasted."""
    # by hand, not OmegaConf.from_cli: the values are names and paths, taken verbatim (YAML would
    # read a study named 007 as 7)
    options = dict(DEFAULTS)
    for word in argv:
        key, sep, value = word.partition("=")
        key = key.removeprefix("hydra.sweeper.").removeprefix("+")
        if not sep or key not in options:
            raise ReportError(f"{word!r} is not a key=value of: {', '.join(options)}\n{USAGE}")
        options[key] = None if value in ("", "null") else value
    return options


def open_study(name: str, storage_url: str | None) -> optuna.Study:
    """Load an existing study; a missing storage or study raises ReportError naming what exists."""
    url = storage_url or stores.default_optuna_storage()
    shown = tracking.mask_url(url)
    if "://" not in url and not Path(url).is_file():
        raise ReportError(f"no Optuna storage at {url} (run a sweep first, or give storage=…)")
    try:
        if "://" in url:
            stores.check_database(url, "storage")
        storage = stores.open_optuna_storage(url)  # a journal: a torn last line cut, damage refused
    except stores.StoreError as exc:
        raise ReportError(str(exc)) from None
    names = optuna.study.get_all_study_names(storage)
    if name not in names:
        if hasattr(storage, "engine"):
            storage.engine.dispose()
        listing = ", ".join(sorted(names)) if names else "none"
        raise ReportError(f"no study named '{name}' in {shown}; studies there: {listing}")
    return optuna.load_study(study_name=name, storage=storage)


def mlflow_client(uri: str | None):
    """The MLflow client, or None when the default SQLite store does not exist (no runs to join;
    opening it would create an empty database)."""
    from mlflow.tracking import MlflowClient

    uri = uri or tracking.default_tracking_uri()
    if (path := stores.sqlite_path(uri)) is not None and not path.is_file():
        print(f"warning: no MLflow store at {uri}: the MLflow columns stay empty", file=sys.stderr)
        return None
    return MlflowClient(uri)


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if any(a in ("-h", "--help") for a in argv):
        print(__doc__.strip().split("\n\n")[1] + "\n\n" + USAGE)
        return 0
    try:
        options = parse_args(argv)
        study = open_study(options["study_name"], options["storage"])
    except ReportError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2 if "key=value" in str(exc) else 1
    out = (Path(options["out"]).resolve() if options["out"]
           else Path(stores.default_optuna_storage()).parent / "reports" / study.study_name)
    client = mlflow_client(options["mlflow.tracking_uri"])
    try:
        table, files = write_report(study, client, out)
        print(f"study {study.study_name} ({_summary(study)}), storage "
              f"{tracking.mask_url(options['storage'] or stores.default_optuna_storage())}")
        print(format_table(table))
        print(f"wrote {len(files)} files to {out}: {', '.join(p.name for p in files)}")
    except OSError as exc:  # a full disk: the path and the reason
        if tracking.write_error(exc) is None:
            raise
        print(f"error: {tracking.write_error(exc)}", file=sys.stderr)
        return 1
    finally:  # an RDB storage's pooled connections: closed now, not at garbage collection
        storage = getattr(study._storage, "_backend", study._storage)
        if hasattr(storage, "engine"):
            storage.engine.dispose()
    return 0


if __name__ == "__main__":
    sys.exit(main())
