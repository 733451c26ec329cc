"""The README's first screen, run as a new user would: its one run and its sweep, on tiny data, in
temporary stores; and what the rest of that screen names (the store the UIs open, the served model)
checked against what the sweep left. Two CLI subprocesses in all."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from conftest import TINY, load, run_cli, sweep_args
from lenet_sweep import PROJECT_ROOT
from lenet_sweep.config import MlflowConfig

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
#: the user docs whose links must resolve (docs/benchmarks.md and docs/fault_suite.md are reports)
DOCS = [README, ROOT / "docs/architecture.md", ROOT / "docs/reliability.md", ROOT / "docs/many_machines.md"]


def code_blocks(text: str) -> list[str]:
    return re.findall(r"^```[^\n]*\n(.*?)^```", text, flags=re.S | re.M)


def quick_start() -> str:
    """The first code block under ``## Quick start``."""
    text = README.read_text()
    return code_blocks(text[text.index("\n## Quick start"):])[0]


def cli_commands(block: str) -> list[list[str]]:
    """The ``python -m lenet_sweep …`` lines of a block, as argument lists (comments dropped)."""
    return [shlex.split(line, comments=True)[3:] for line in block.splitlines()
            if line.startswith("python -m lenet_sweep ") or line.strip() == "python -m lenet_sweep"]


def key(arg: str) -> str:
    return arg.split("=", 1)[0].lstrip("+~")


def tiny(args: list[str], extra: list[str]) -> list[str]:
    """``args`` with every key that ``extra`` sets replaced by ``extra``'s value."""
    replaced = {key(a) for a in extra}
    return [a for a in args if key(a) not in replaced] + extra


def one_run_and_sweep() -> tuple[list[str], list[str]]:
    commands = cli_commands(quick_start())
    runs = [c for c in commands if "-m" not in c]
    sweeps = [c for c in commands if "-m" in c]
    assert len(runs) == 1 and len(sweeps) == 1, f"the quick start should show one run and one sweep: {commands}"
    return runs[0], sweeps[0]


def slug(heading: str) -> str:
    """GitHub's anchor for a heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_first_lines_set_up_and_run():
    first = code_blocks(README.read_text())[0].splitlines()
    assert [line.split()[:2] for line in first] == [["make", "run"], ["make", "test"]]
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^run: setup$", makefile, re.M) and re.search(r"^test: setup$", makefile, re.M)


def test_quick_start_names_what_exists():
    block = quick_start()
    journal = Path(PROJECT_ROOT, "multirun", "optuna.journal")
    assert f"optuna-dashboard {journal.relative_to(PROJECT_ROOT)}" in block  # the sweep's default storage
    assert f'models:/{MlflowConfig.registered_model}@champion' in block
    assert "mlflow ui" in block and "Model training" in README.read_text()
    assert (ROOT / "docs/example_request.json").is_file() and (ROOT / "docs/mlflow_ui.png").is_file()
    assert len(README.read_text().splitlines()) <= 320, "the user guide stays near 300 lines"


def test_links_resolve():
    """Every relative link of the user docs points at a file that exists, and at a heading of it."""
    broken = []
    for doc in DOCS:
        for target in re.findall(r"\]\(([^)\s]+)\)", doc.read_text()):
            if target.startswith(("http://", "https://")):
                continue
            path, _, anchor = target.partition("#")
            file = (doc.parent / path).resolve() if path else doc
            if not file.exists():
                broken.append(f"{doc.name}: {target}")
            elif anchor and file.suffix == ".md":
                headings = re.findall(r"^#+ (.*)$", file.read_text(), re.M)
                if anchor not in {slug(h) for h in headings}:
                    broken.append(f"{doc.name}: {target} (no such heading)")
    assert not broken, broken


def test_quick_start_one_run(tmp_path):
    run, _ = one_run_and_sweep()
    proc = run_cli(tiny(run, [*TINY, f"mlflow.tracking_uri=sqlite:///{tmp_path}/mlflow.db"]), tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "test_accuracy=" in proc.stdout + proc.stderr


@pytest.mark.sweep
def test_quick_start_sweep(tmp_path):
    _, sweep = one_run_and_sweep()
    proc = run_cli(tiny(sweep, sweep_args(tmp_path, n_trials=2, register=True)), tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert re.search(r"^\[sweep\] trial 1 \(2/2\) COMPLETE ", proc.stdout, re.M), proc.stdout[-3000:]
    # what the rest of the quick start relies on
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    experiment = client.get_experiment_by_name("lenet_sweep").experiment_id
    assert experiment == "1", "the README's runs-table URL names experiment 1 for a fresh store"
    assert client.get_model_version_by_alias(MlflowConfig.registered_model, "champion")  # models serve
    study = load(tmp_path)
    assert study.metric_names == ["val_accuracy"]  # optuna-dashboard names the objective
    assert all(t.user_attrs["mlflow_run_url"].startswith(f"#/experiments/{experiment}/runs/")
               for t in study.trials)
