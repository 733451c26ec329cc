"""MLflow side of a sweep: a child run per trial under the invocation's parent run, and closing the
runs that a dead sweeper left RUNNING."""

from __future__ import annotations

from typing import Callable

from mlflow.tracking import MlflowClient
from optuna.trial import TrialState


def create_child(client: MlflowClient, experiment_id: str, parent_id: str, study_name: str,
                 number: int) -> str:
    from lenet_sweep.tracking import context_tags

    return client.create_run(experiment_id, run_name=f"trial-{number}", tags=context_tags({
        "mlflow.parentRunId": parent_id, "optuna.study_name": study_name,
        "optuna.trial_number": str(number), "optuna.trial_state": "RUNNING"})).info.run_id


def ui_path(client: MlflowClient, experiment_id: str, run_id: str) -> str:
    """Where ``mlflow ui`` (or the tracking server) shows the run: a full URL for an HTTP tracking
    URI, else the path to append to the UI's address (``mlflow ui`` in the project folder)."""
    path = f"#/experiments/{experiment_id}/runs/{run_id}"
    uri = str(client.tracking_uri)
    if not uri.startswith(("http://", "https://")):
        return path
    from lenet_sweep.tracking import mask_url  # a password in the URI stays out of the study

    return f"{mask_url(uri).rstrip('/')}/{path}"


def close_child(client: MlflowClient, run_id: str, state: TrialState, reason: str | None,
                status: str = "FAILED") -> None:
    """Tag the trial's final state; end the run with ``status`` if its job never ended it."""
    client.set_tag(run_id, "optuna.trial_state", state.name)
    if reason:
        client.set_tag(run_id, "optuna.fail_reason", reason)
    if client.get_run(run_id).info.status == "RUNNING":
        client.set_terminated(run_id, status)


def close_dead_parents(client: MlflowClient, experiment_id: str, study_name: str,
                       is_dead: Callable[[str | None], bool]) -> None:
    """Parent runs of this study whose sweeper (tag ``worker``) is dead: KILLED."""
    for run in client.search_runs([experiment_id], "attributes.status = 'RUNNING' and "
                                  f"tags.`optuna.study_name` = '{study_name}'"):
        if "mlflow.parentRunId" not in run.data.tags and is_dead(run.data.tags.get("worker")):
            client.set_tag(run.info.run_id, "error", "its sweeper process died")
            client.set_terminated(run.info.run_id, "KILLED")
