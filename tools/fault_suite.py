"""The fault suite (issue 12, item 5): kill, stop and mis-configure real sweeps, read Optuna and MLflow
back, and say for each scenario whether what must hold held.

    .venv/bin/python tools/fault_suite.py [--fast] [--only NAME ...] [--out DIR]

Every scenario runs the real CLI (`python -m lenet_sweep -m hydra/sweeper=optuna`, one trial at a time
per sweeper (12: one pack of two), tiny data) against real stores: an Optuna journal file, SQLite,
PostgreSQL on 127.0.0.1:5432 (user postgres, trust auth; databases named lenet_fault_<hex>, dropped
afterwards), `mlflow server` processes started here on free 127.0.0.1 ports (stopped afterwards) and, for
13, a 64 KiB tmpfs it mounts (root; unmounted afterwards). It reads the study back with
`optuna.load_study` and the runs with `MlflowClient`, and prints ONE Markdown table:

    scenario | what must hold | what was observed | holds | seconds

In "what was observed" a fact that breaks the rule is marked ✗. The table (fault_suite.md, also as
fault_suite.json) and every process's log are written to --out (default: a new /tmp/lenet_fault_<hex>/).

--fast runs the scenarios that need neither PostgreSQL nor a 30 s outage (1-journal, 3, 4, 5, 7, 10–13);
--only takes scenario names or their numbers (`--only 10 3` = 10-bad-inputs and 3-sigterm).

It stops by itself: every wait is bounded, every scenario has a time budget, every process it starts
runs in its own process group, and at the end of each scenario those groups, and any process whose
working directory lies in the scenario's folder, are killed; its databases are dropped. Exit code 0
whatever the scenarios show (it is a report); 2 when the suite itself failed inside a scenario (that
row says how), 130 when interrupted.
"""

from __future__ import annotations

import argparse
import collections
import concurrent.futures
import contextlib
import datetime
import json
import logging
import os
import platform
import re
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import urllib.request
import uuid
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

BASE_ENV = dict(os.environ)  # children get this, not the client settings below
os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")  # the suite's own reads fail fast
os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")

import optuna  # noqa: E402
from mlflow.entities import ViewType  # noqa: E402
from mlflow.tracking import MlflowClient  # noqa: E402
from optuna.storages import JournalStorage, RDBStorage  # noqa: E402
from optuna.storages.journal import JournalFileBackend  # noqa: E402
from optuna.trial import FrozenTrial, TrialState  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable
MLFLOW = Path(PY).with_name("mlflow")
PG = dict(host="127.0.0.1", port=5432, user="postgres")
STUDY = "fault"
OTHER_HOST = "otherhost"
UNSHARE = ["unshare", "-u", "sh", "-c", f'hostname {OTHER_HOST} && exec "$@"', "sh"]
TERMINATE = ("select pg_terminate_backend(pid) from pg_stat_activity "
             "where datname = %s and pid <> pg_backend_pid()")
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
BAD_INPUT_SECONDS = 20  # "within seconds"

optuna.logging.set_verbosity(optuna.logging.WARNING)
warnings.filterwarnings("ignore")
logging.getLogger("mlflow").setLevel(logging.WARNING)
logging.getLogger("alembic").setLevel(logging.WARNING)


def data(epochs: int, images: int = 2000) -> list[str]:
    return [f"trainer.epochs={epochs}", f"data.train_limit={images}", "data.test_limit=500",
            "trainer.verbose=0"]


TINY = data(1, 512)
LONG = data(300)  # still training when it is killed


def say(text: str) -> None:
    print(f"[fault {time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


def short(text, limit: int = 220) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[:limit - 1] + "…"


class ScenarioError(Exception):
    """The scenario could not reach the state it tests (a trial never trained, a server never
    answered); its row does not hold and says this."""


class NotRun(Exception):
    """A store the scenario needs is not there (no PostgreSQL server)."""


@dataclass
class Row:
    scenario: str
    must: str
    observed: str
    holds: bool
    seconds: float


class Checks:
    """The facts a scenario observed; a fact that breaks its rule is marked ✗ and the row fails."""

    def __init__(self) -> None:
        self.items: list[tuple[bool | None, str]] = []

    def add(self, ok, text: str) -> bool:
        self.items.append((bool(ok), text))
        return bool(ok)

    def note(self, text: str) -> None:
        self.items.append((None, text))

    @property
    def holds(self) -> bool:
        return any(ok for ok, _ in self.items) and all(ok is not False for ok, _ in self.items)

    def observed(self) -> str:
        return "; ".join(("✗ " if ok is False else "") + text for ok, text in self.items)


# -- processes (no psutil: /proc) ---------------------------------------------------------------
def _stat(pid: int) -> tuple[str, int] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2:].split()
    return fields[0], int(fields[1])  # state, ppid


def alive(pid: int) -> bool:
    stat = _stat(pid)
    return stat is not None and stat[0] not in ("Z", "X")


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def pids_in(folder: Path, below: bool = False) -> list[int]:
    """Live processes whose working directory is ``folder`` (or, ``below``, anything under it)."""
    found, folder = [], str(folder)
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            cwd = os.readlink(f"/proc/{entry}/cwd")
        except OSError:
            continue
        if (cwd == folder or (below and cwd.startswith(folder + "/"))) and alive(int(entry)):
            found.append(int(entry))
    return found


def children(pid: int) -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            stat = _stat(int(entry))
            if stat and stat[1] == pid and stat[0] not in ("Z", "X"):
                out.append(int(entry))
    return out


def wait_exit(proc: subprocess.Popen, timeout: float) -> int | None:
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        return None


def log_text(proc) -> str:
    try:
        return proc.log_path.read_text(errors="replace")
    except OSError:
        return ""


def lines_of(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if line.strip()]


EXCEPTION_LINE = re.compile(r"^(error:|[A-Za-z_][\w.]*(Error|Exception|Exit)\b)")


def last_line(proc) -> str:
    """The last `error:` or exception line of the process's output, else its last line."""
    lines = lines_of(log_text(proc))
    errors = [line for line in lines if EXCEPTION_LINE.match(line)]
    return errors[-1] if errors else lines[-1] if lines else "(no output)"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- reading the stores back ---------------------------------------------------------------------
def trials_of(storage: str, study: str = STUDY) -> list[FrozenTrial]:
    """Every trial of the study (empty when the study is not there)."""
    try:
        return _trials_of(storage, study)
    except Exception as exc:  # noqa: BLE001 - a store the scenario broke: its row says so
        raise ScenarioError(f"the Optuna storage cannot be read back: {short(tracking_line(exc), 300)}") from exc


def _trials_of(storage: str, study: str) -> list[FrozenTrial]:
    if "://" in storage:
        rdb = RDBStorage(storage)
        try:
            return optuna.load_study(study_name=study, storage=rdb).get_trials()
        except KeyError:
            return []
        finally:
            rdb.engine.dispose()
    if not Path(storage).is_file():
        return []
    try:
        return optuna.load_study(study_name=study, storage=JournalStorage(JournalFileBackend(storage))).get_trials()
    except KeyError:
        return []


def journal_probe(path: Path, study: str = STUDY) -> Callable[[], list[int]]:
    """RUNNING trials that reported at least one epoch (read-only; waits for the file)."""
    def probe() -> list[int]:
        if not path.is_file():
            return []
        return [t.number for t in trials_of(str(path), study)
                if t.state == TrialState.RUNNING and t.intermediate_values]
    return probe


def _pg_db(url: str) -> str:
    return url.rsplit("/", 1)[1]


def pg_query(url: str, sql: str, args=()) -> list[tuple]:
    import psycopg

    with psycopg.connect(**PG, dbname=_pg_db(url), autocommit=True, connect_timeout=5) as conn:
        return conn.execute(sql, args).fetchall()


def pg_probe(url: str, study: str = STUDY) -> Callable[[], list[int]]:
    """Like journal_probe, in SQL: no Optuna engine (which would create the tables) on the database."""
    sql = ("select t.number from trials t join studies s on s.study_id = t.study_id "
           "where s.study_name = %s and t.state = 'RUNNING' and exists "
           "(select 1 from trial_intermediate_values v where v.trial_id = t.trial_id) order by t.number")

    def probe() -> list[int]:
        try:
            return [row[0] for row in pg_query(url, sql, (study,))]
        except Exception:  # the tables are not there yet
            return []
    return probe


def wait_training(probe, proc, timeout: float, who: str) -> int:
    """The number of a trial of ``proc`` that is RUNNING and has reported an epoch."""
    return wait_trainings(probe, proc, timeout, who, 1)[0]


def wait_trainings(probe, proc, timeout: float, who: str, count: int) -> list[int]:
    """The numbers of ``count`` trials of ``proc`` that are RUNNING and have reported an epoch."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise ScenarioError(f"{who} exited with {proc.returncode} before {count} trial(s) trained: "
                                f"{short(last_line(proc))}")
        try:
            found = probe()
        except Exception:  # noqa: BLE001 - a file being written, a table being created
            found = []
        if len(found) >= count:
            return found[:count]
        time.sleep(0.5)
    raise ScenarioError(f"{count} trial(s) of {who} did not report an epoch together within {timeout:.0f} s")


def runs_of(uri: str, experiment: str) -> list:
    """Every run of the experiment (reading a SQLite file upgrades its schema, as any client does)."""
    if uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///"):]).is_file():
        return []
    try:
        return _runs_of(uri, experiment)
    except Exception as exc:  # noqa: BLE001 - a store the scenario broke: its row says so
        raise ScenarioError(f"the MLflow store cannot be read back: {short(tracking_line(exc), 300)}") from exc


def _runs_of(uri: str, experiment: str) -> list:
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return []
    return client.search_runs([exp.experiment_id], max_results=5000, run_view_type=ViewType.ALL)


def is_child(run) -> bool:
    return "mlflow.parentRunId" in run.data.tags


def retried_sources(trials) -> set[int]:
    """Every attempt a retry replaced: its chain (Optuna's ``retry_history``; ``failed_trial`` names the
    first), as the sweeper counts them (lenet_sweep.sweep.study.count_finished)."""
    return {n for t in trials for n in t.system_attrs.get("retry_history", ())}


def states(trials) -> str:
    counts = collections.Counter(t.state.name for t in trials)
    return ", ".join(f"{v} {k}" for k, v in sorted(counts.items())) or "no trials"


# -- checks shared by several scenarios ------------------------------------------------------------
def check_total(c: Checks, trials, n_trials: int) -> None:
    """n_trials counted trials (a failed trial that was retried does not count), all finished."""
    retried = retried_sources(trials)
    counted = [t for t in trials if t.number not in retried]
    ok = len(counted) == n_trials and all(t.state in FINISHED for t in counted)
    c.add(ok, f"{len(counted)} counted trials of n_trials={n_trials} ({len(trials)} in the study: "
              f"{states(trials)})")


def check_nothing_running(c: Checks, trials, runs) -> None:
    busy = [t.number for t in trials if t.state == TrialState.RUNNING]
    c.add(not busy, "nothing RUNNING in Optuna" if not busy else f"trials still RUNNING in Optuna: {busy}")
    running = [r.info.run_name for r in runs if r.info.status == "RUNNING"]
    c.add(not running, "nothing RUNNING in MLflow" if not running else
          f"MLflow runs still RUNNING: {running}")


def check_retry(c: Checks, trials, dead: int) -> None:
    by = {t.number: t for t in trials}
    retries = [t for t in trials if t.system_attrs.get("failed_trial") == dead]
    if not c.add(len(retries) == 1, f"trial {dead} retried {len(retries)} time(s)"
                 + (f" as trial {', '.join(str(r.number) for r in retries)}" if retries else "")):
        return
    retry = retries[0]
    c.add(retry.params == by[dead].params, f"trial {retry.number} has trial {dead}'s params"
          if retry.params == by[dead].params else
          f"trial {retry.number} params {retry.params} != trial {dead}'s {by[dead].params}")
    c.add(retry.state == TrialState.COMPLETE, f"trial {retry.number} {retry.state.name}")


def check_dead_trial(c: Checks, trials, dead: int, runs, *, run_status="KILLED") -> FrozenTrial | None:
    by = {t.number: t for t in trials}
    trial = by.get(dead)
    if not c.add(trial is not None and trial.state == TrialState.FAIL,
                 f"trial {dead} {trial.state.name if trial else 'missing'}"
                 + (f" (fail_reason: {short(trial.user_attrs.get('fail_reason'), 160)!r})" if trial else "")):
        return trial
    kids = [r for r in runs if is_child(r) and r.data.tags.get("optuna.trial_number") == str(dead)]
    got = [r.info.status for r in kids]
    c.add(got == [run_status], f"trial {dead}'s child run {'/'.join(got) or 'missing'}")
    return trial


def check_registered(c: Checks, tracking: str, runs, name: str = "lenet_sweep") -> None:
    """Each sweeper registers the best trial it saw under ``name`` (mlflow.registered_model's default);
    a run is one version, however many sweepers register it."""
    parents = [r for r in runs if not is_child(r)]
    named = sorted(r.data.tags.get("registry.version") or "none" for r in parents)
    errors = [short(r.data.tags["registry.error"], 120) for r in parents if "registry.error" in r.data.tags]
    c.add(errors == [] and "none" not in named, f"the {len(parents)} sweepers' registry.version tags: {named}"
          + (f"; registry.error: {errors}" if errors else ""))
    versions = MlflowClient(tracking).search_model_versions(f"name = '{name}'")
    per_run = collections.Counter(v.run_id for v in versions)
    trial_of = {r.info.run_id: r.data.tags.get("optuna.trial_number") for r in runs if is_child(r)}
    ok = (versions and max(per_run.values()) == 1 and {str(v.version) for v in versions} == set(named)
          and set(per_run) <= set(trial_of))
    c.add(ok, f"registered model {name}: {len(versions)} version(s) for {len(per_run)} distinct winning run(s) "
              f"(trials {sorted(trial_of.get(run, 'not of this study') for run in per_run)}; versions per run "
              f"{sorted(per_run.values())})")


def check_parent(c: Checks, runs, worker_match: Callable[[str], bool], who: str, status="KILLED") -> None:
    parents = [r for r in runs if not is_child(r) and worker_match(r.data.tags.get("worker", ""))]
    got = [r.info.status for r in parents]
    c.add(got == [status], f"{who}'s parent run {'/'.join(got) or 'missing'}")


# -- the suite: processes, databases, servers --------------------------------------------------------
@dataclass
class Server:
    backend: str
    folder: Path
    port: int
    proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@dataclass
class Scope:
    """What one scenario started: killed and dropped when it ends."""
    folder: Path
    procs: list = field(default_factory=list)
    dbs: list = field(default_factory=list)
    servers: list = field(default_factory=list)


class Suite:
    def __init__(self, work: Path):
        self.work = work
        self.crashed = False
        self.admin = None
        self.pg_error = None
        try:
            import psycopg

            self.admin = psycopg.connect(**PG, dbname="postgres", autocommit=True, connect_timeout=5)
        except Exception as exc:  # noqa: BLE001
            self.pg_error = f"no PostgreSQL server at {PG['user']}@{PG['host']}:{PG['port']} ({short(exc, 120)})"
        self.global_scope = Scope(work / "shared")
        self.scope = self.global_scope
        self._shared_server: Server | None = None

    # processes
    def spawn(self, cmd: list[str], cwd: Path, name: str, scope: Scope | None = None) -> subprocess.Popen:
        cwd.mkdir(parents=True, exist_ok=True)
        log_path = cwd / f"{name}.log"
        log = open(log_path, "ab")
        log.write(f"$ {shlex.join(cmd)}\n".encode())
        log.flush()
        proc = subprocess.Popen(cmd, cwd=cwd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True, env={**BASE_ENV, "PYTHONUNBUFFERED": "1"})
        proc.log_path, proc.log_file, proc.cwd = log_path, log, cwd
        (scope or self.scope).procs.append(proc)
        return proc

    def sweeper(self, d: Path, name: str, storage: str, tracking: str, n_trials: int, data_args: list[str],
                *extra: str, experiment: str = "fault", wrap: list[str] = (), n_jobs: int = 1) -> subprocess.Popen:
        cwd = d / name
        cmd = [*wrap, PY, "-m", "lenet_sweep", "-m", "hydra/sweeper=optuna",
               f"hydra.sweeper.n_trials={n_trials}", f"hydra.sweeper.n_jobs={n_jobs}",
               f"hydra.sweeper.study_name={STUDY}", f"hydra.sweeper.storage={storage}",
               f"mlflow.tracking_uri={tracking}", f"mlflow.experiment_name={experiment}",
               f"hydra.sweep.dir={cwd}/multirun", "trainer.jit_compile=false",
               "hydra.sweeper.max_failure_rate=1.0",  # a sampled lr that diverges must not end a scenario
               # the median pruner (5 start-up trials): a scenario's few trials are never pruned, so a
               # retried trial's COMPLETE is its retry's doing (the default, successive halving, may prune)
               *([] if any(a.startswith("hydra/sweeper/pruner=") for a in extra) else ["hydra/sweeper/pruner=median"]),
               *data_args, *extra]
        return self.spawn(cmd, cwd, "sweeper")

    @staticmethod
    def kill_group(proc: subprocess.Popen) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        wait_exit(proc, 15)
        proc.log_file.close()

    def close_scope(self, scope: Scope) -> None:
        for proc in scope.procs:
            self.kill_group(proc)
        for _ in range(3):  # strays: anything still working in the scenario's folder (orphaned workers)
            strays = pids_in(scope.folder, below=True)
            if not strays:
                break
            for pid in strays:
                say(f"killing stray process {pid} ({short(cmdline(pid), 100)})")
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.5)
        for name in scope.dbs:
            self.drop_db(name)
        scope.procs, scope.dbs, scope.servers = [], [], []

    # PostgreSQL
    def need_pg(self) -> None:
        if self.admin is None:
            raise NotRun(self.pg_error)

    def new_db(self, scope: Scope | None = None) -> tuple[str, str]:
        self.need_pg()
        name = f"lenet_fault_{uuid.uuid4().hex[:12]}"
        self.admin.execute(f'CREATE DATABASE "{name}"')
        (scope or self.scope).dbs.append(name)
        return name, f"postgresql+psycopg://{PG['user']}@{PG['host']}:{PG['port']}/{name}"

    def db_exists(self, name: str) -> bool:
        return bool(self.admin.execute("select 1 from pg_database where datname = %s", (name,)).fetchall())

    def drop_db(self, name: str) -> None:
        try:
            self.admin.execute(TERMINATE, (name,))
            self.admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        except Exception as exc:  # noqa: BLE001
            say(f"could not drop database {name}: {short(exc)}")

    # MLflow servers
    def start_server(self, backend: str, folder: Path, scope: Scope | None = None) -> Server:
        server = Server(backend, folder, free_port())
        self._launch(server, scope)
        return server

    def _launch(self, server: Server, scope: Scope | None = None) -> None:
        exe = [str(MLFLOW)] if MLFLOW.exists() else [PY, "-m", "mlflow"]
        server.proc = self.spawn(
            [*exe, "server", "--backend-store-uri", server.backend, "--artifacts-destination",
             str(server.folder / "artifacts"), "--serve-artifacts", "--host", "127.0.0.1",
             "--port", str(server.port), "--workers", "1"], server.folder, "server", scope)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if server.proc.poll() is not None:
                raise ScenarioError(f"mlflow server exited with {server.proc.returncode}: "
                                    f"{short(last_line(server.proc))}")
            try:
                with urllib.request.urlopen(f"{server.url}/health", timeout=5) as response:
                    if response.status == 200:
                        return
            except OSError:
                pass
            time.sleep(1)
        raise ScenarioError(f"mlflow server did not answer {server.url}/health within 120 s")

    def stop_server(self, server: Server) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.proc.pid, signal.SIGTERM)
        if wait_exit(server.proc, 20) is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(server.proc.pid, signal.SIGKILL)
            wait_exit(server.proc, 10)
        deadline = time.monotonic() + 10  # its workers too: the port must be free for a restart
        while pids_in(server.folder) and time.monotonic() < deadline:
            time.sleep(0.5)

    def restart_server(self, server: Server) -> None:
        self._launch(server)

    def shared_server(self) -> Server:
        """One PostgreSQL-backed tracking server for the PostgreSQL scenarios (each uses its own
        experiment), started on first use and stopped when the suite ends."""
        if self._shared_server is None:
            _, url = self.new_db(self.global_scope)
            self._shared_server = self.start_server(url, self.work / "shared" / "mlflow-server", self.global_scope)
        return self._shared_server

    def close(self) -> None:
        self.close_scope(self.global_scope)
        if self.admin is not None:
            self.admin.close()


def experiment_name(d: Path) -> str:
    return f"fault-{d.name}-{uuid.uuid4().hex[:6]}"


def journal_stores(d: Path) -> tuple[str, str, Callable[[], list[int]]]:
    d.mkdir(parents=True, exist_ok=True)
    return str(d / "optuna.journal"), f"sqlite:///{d}/mlflow.db", journal_probe(d / "optuna.journal")


# -- scenarios -------------------------------------------------------------------------------------
def s1_sigkill_same_host(kind: str):
    def run(suite: Suite, d: Path, c: Checks):
        n = 3
        if kind == "journal":
            storage, tracking, probe = journal_stores(d)
        else:
            _, storage = suite.new_db()
            tracking, probe = suite.shared_server().url, pg_probe(storage)
        exp = experiment_name(d)
        a = suite.sweeper(d, "killed", storage, tracking, n, LONG, experiment=exp)
        dead = wait_training(probe, a, 300, "the first sweeper")
        workers = [p for p in pids_in(a.cwd) if p != a.pid]
        c.note(f"SIGKILL to sweeper {a.pid} during trial {dead} (processes in its cwd: "
               f"{len(workers)} worker/helper)")
        os.kill(a.pid, signal.SIGKILL)
        killed_at = time.monotonic()
        wait_exit(a, 30)
        # the re-launch starts at once (its own cwd); meanwhile the killed sweeper's cwd is watched
        b = suite.sweeper(d, "relaunch", storage, tracking, n, TINY, "hydra.sweeper.retry_failed=1",
                          experiment=exp)
        while time.monotonic() < killed_at + 20 and [p for p in workers + pids_in(a.cwd) if alive(p)]:
            time.sleep(0.25)
        left = sorted({p for p in workers + pids_in(a.cwd) if alive(p)})
        c.add(not left, f"its worker processes gone {time.monotonic() - killed_at:.1f} s after the kill"
              if not left else f"{len(left)} processes of the killed sweeper alive 20 s after the kill: "
              + ", ".join(f"{p} {short(cmdline(p), 80)}" for p in left))
        for pid in left:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        rc = wait_exit(b, 600)
        c.add(rc == 0, f"re-launch exit {rc}" + ("" if rc == 0 else f": {short(last_line(b))}"))
        said = [line for line in lines_of(log_text(b)) if line.startswith(f"[sweep] trial {dead} ")]
        c.note(f"re-launch said: {short(said[0], 160)!r}" if said else f"re-launch printed no line about trial {dead}")
        trials, runs = trials_of(storage), runs_of(tracking, exp)
        check_dead_trial(c, trials, dead, runs)
        check_retry(c, trials, dead)
        check_total(c, trials, n)
        check_parent(c, runs, lambda w: w.endswith(f":{a.pid}"), "the killed sweeper")
        check_nothing_running(c, trials, runs)
    return run


def s2_other_host(suite: Suite, d: Path, c: Checks):
    suite.need_pg()
    n = 3
    dbname, storage = suite.new_db()
    server = suite.shared_server()
    exp = experiment_name(d)
    beat = ["hydra.sweeper.heartbeat_interval=1", "hydra.sweeper.grace_period=5"]
    a = suite.sweeper(d, OTHER_HOST, storage, server.url, n, LONG, *beat, experiment=exp, wrap=UNSHARE)
    dead = wait_training(pg_probe(storage), a, 300, f"the sweeper on {OTHER_HOST}")
    beats = pg_query(storage, "select count(*) from trial_heartbeats")[0][0]
    c.add(beats > 0, f"select count(*) from trial_heartbeats while it ran: {beats}")
    worker = [json.loads(v) for (v,) in pg_query(
        storage, "select a.value_json from trial_user_attributes a join trials t on t.trial_id = a.trial_id "
                 "where t.number = %s and a.key = 'worker'", (dead,))]
    c.add(worker and worker[0].startswith(f"{OTHER_HOST}:"), f"trial {dead} runs on worker {worker[0] if worker else None}")
    os.killpg(a.pid, signal.SIGKILL)  # the whole host: its sweeper and worker
    wait_exit(a, 30)
    c.note(f"SIGKILL to the {OTHER_HOST} process group during trial {dead}")
    deadline = time.monotonic() + 20
    while pids_in(a.cwd) and time.monotonic() < deadline:
        time.sleep(0.25)
    b = suite.sweeper(d, "thishost", storage, server.url, n, TINY, *beat, "hydra.sweeper.retry_failed=1",
                      experiment=exp)
    rc = wait_exit(b, 600)
    c.add(rc == 0, f"sweeper on this host exit {rc}" + ("" if rc == 0 else f": {short(last_line(b))}"))
    trials, runs = trials_of(storage), runs_of(server.url, exp)
    trial = check_dead_trial(c, trials, dead, runs)
    said = [line for line in lines_of(log_text(b)) if line.startswith(f"[sweep] trial {dead} ")]
    reason = (trial.user_attrs.get("fail_reason") or "") if trial else ""
    by_beat = "heartbeat" in reason.lower() or any("heartbeat" in line.lower() for line in said)
    c.add(by_beat, f"failed by heartbeat: fail_reason {short(reason, 120)!r}, [sweep] line "
                   f"{short(said[0], 160) if said else None!r}")
    check_retry(c, trials, dead)
    check_total(c, trials, n)
    check_parent(c, runs, lambda w: w.startswith(f"{OTHER_HOST}:"), f"the {OTHER_HOST} sweeper")
    check_nothing_running(c, trials, runs)


def s_signal(sig: int):
    phrase = "terminated (SIGTERM)" if sig == signal.SIGTERM else "interrupted (Ctrl-C)"

    def run(suite: Suite, d: Path, c: Checks):
        storage, tracking, probe = journal_stores(d)
        retry = "hydra.sweeper.retry_failed=1"
        a = suite.sweeper(d, "signalled", storage, tracking, 1, LONG, retry)
        dead = wait_training(probe, a, 300, "the sweeper")
        offset = a.log_path.stat().st_size
        if sig == signal.SIGTERM:
            os.kill(a.pid, signal.SIGTERM)
            c.note(f"SIGTERM to sweeper {a.pid} during trial {dead}")
        else:
            os.killpg(a.pid, signal.SIGINT)  # what a terminal's Ctrl-C does: the whole group
            c.note(f"SIGINT to sweeper {a.pid}'s process group during trial {dead}")
        rc = wait_exit(a, 90)
        with open(a.log_path, "rb") as f:
            f.seek(offset)
            after = lines_of(f.read().decode(errors="replace"))
        c.add(len(after) == 1 and phrase in after[0],
              f"printed after the signal ({len(after)} lines): " + " / ".join(repr(short(x, 150)) for x in after[:4])
              + (" …" if len(after) > 4 else ""))
        c.add(rc not in (0, None), f"exit code {rc}" if rc is not None else "still running 90 s after the signal")
        trials, runs = trials_of(storage), runs_of(tracking, "fault")
        check_dead_trial(c, trials, dead, runs)
        check_parent(c, runs, lambda w: w.endswith(f":{a.pid}"), "the signalled sweeper")
        check_nothing_running(c, trials, runs)
        b = suite.sweeper(d, "relaunch", storage, tracking, 1, TINY, retry)
        rc = wait_exit(b, 600)
        c.add(rc == 0, f"re-launch exit {rc}" + ("" if rc == 0 else f": {short(last_line(b))}"))
        trials, runs = trials_of(storage), runs_of(tracking, "fault")
        check_retry(c, trials, dead)
        check_total(c, trials, 1)
        check_nothing_running(c, trials, runs)
    return run


def s5_worker_kill(suite: Suite, d: Path, c: Checks):
    n = 2
    storage, tracking, probe = journal_stores(d)
    a = suite.sweeper(d, "sweep", storage, tracking, n, data(15))
    dead = wait_training(probe, a, 300, "the sweeper")
    workers = [p for p in children(a.pid) if "spawn_main" in cmdline(p)]
    if len(workers) != 1:
        raise ScenarioError(f"expected one pool worker under sweeper {a.pid}, found {workers}")
    os.kill(workers[0], signal.SIGKILL)
    c.note(f"SIGKILL to worker {workers[0]} of sweeper {a.pid} during trial {dead}")
    new, deadline = [], time.monotonic() + 120
    while time.monotonic() < deadline and a.poll() is None:
        new = [p for p in children(a.pid) if "spawn_main" in cmdline(p) and p != workers[0]]
        if new:
            break
        time.sleep(0.25)
    c.add(new, f"new worker {new[0]} took the slot" if new else "no new worker process appeared")
    rc = wait_exit(a, 600)
    c.add(rc == 0, f"sweep exit {rc}" + ("" if rc == 0 else f": {short(last_line(a))}"))
    trials, runs = trials_of(storage), runs_of(tracking, "fault")
    trial = check_dead_trial(c, trials, dead, runs, run_status="FAILED")
    reason = (trial.user_attrs.get("fail_reason") or "") if trial else ""
    c.add(re.search(r"worker process died|signal|SIGKILL", reason), f"reason names the death: {short(reason, 120)!r}")
    check_total(c, trials, n)
    check_nothing_running(c, trials, runs)


def s_four_sweepers(kind: str):
    def run(suite: Suite, d: Path, c: Checks):
        if kind == "postgres":
            _, storage = suite.new_db()
            _, mlflow_db = suite.new_db()
            tracking = suite.start_server(mlflow_db, d / "mlflow-server").url
            n = 8
        else:
            storage, tracking, _ = journal_stores(d)
            n = 6
        first = time.monotonic()
        procs = [suite.sweeper(d, f"w{i}", storage, tracking, n, TINY) for i in range(4)]
        spread = time.monotonic() - first
        c.add(spread <= 0.2, f"4 sweepers started within {spread:.3f} s")
        deadline = time.monotonic() + 900
        rcs = [wait_exit(p, max(1.0, deadline - time.monotonic())) for p in procs]
        bad = [f"w{i} {rc}: {short(last_line(p), 160)}" for i, (p, rc) in enumerate(zip(procs, rcs)) if rc != 0]
        c.add(not bad, f"exit codes {rcs}" + (f" ({'; '.join(bad)})" if bad else ""))
        tracebacks = sum("Traceback" in log_text(p) for p in procs)
        c.note(f"{tracebacks} of 4 logs show a traceback")
        trials, runs = trials_of(storage), runs_of(tracking, "fault")
        c.add(len(trials) == n and all(t.state in FINISHED for t in trials),
              f"{len(trials)} trials for n_trials={n} ({states(trials)})")
        points = collections.defaultdict(list)
        for t in trials:
            points[tuple(sorted(t.params.items()))].append(t.number)
        repeats = {numbers: dict(p) for p, numbers in ((p, tuple(v)) for p, v in points.items()) if len(numbers) > 1}
        c.add(not repeats, f"{len(points)} distinct parameter sets" if not repeats else "repeated parameter sets: "
              + "; ".join(f"trials {list(numbers)} all ran {p}" for numbers, p in repeats.items()))
        workers = collections.Counter(t.user_attrs.get("worker") for t in trials)
        c.note(f"trials per sweeper: {sorted(workers.values(), reverse=True)}; seed trials (user attr seed_trial): "
               f"{[t.number for t in trials if 'seed_trial' in t.user_attrs]}")
        per_trial = collections.Counter(r.data.tags.get("optuna.trial_number") for r in runs if is_child(r))
        wrong = {num: k for num, k in per_trial.items() if k != 1}
        missing = [t.number for t in trials if str(t.number) not in per_trial]
        extra = [num for num in per_trial if num not in {str(t.number) for t in trials}]
        c.add(not wrong and not missing and not extra,
              f"one MLflow child run per trial ({sum(per_trial.values())} child runs)" if not (wrong or missing or extra)
              else f"child runs per trial wrong: counts {wrong}, missing {missing}, unknown {extra}")
        c.note(f"{sum(not is_child(r) for r in runs)} parent runs")
        check_nothing_running(c, trials, runs)
        check_registered(c, tracking, runs)
    return run


def s8_mlflow_restart(suite: Suite, d: Path, c: Checks):
    n, epochs, down = 3, 20, 30
    d.mkdir(parents=True, exist_ok=True)
    server = suite.start_server(f"sqlite:///{d / 'mlflow-server' / 'mlflow.db'}", d / "mlflow-server")
    storage = str(d / "optuna.journal")
    a = suite.sweeper(d, "sweep", storage, server.url, n, data(epochs))
    dead = wait_training(journal_probe(d / "optuna.journal"), a, 300, "the sweeper")
    suite.stop_server(server)
    stopped = time.monotonic()
    while time.monotonic() < stopped + down:
        time.sleep(0.5)
    suite.restart_server(server)
    c.note(f"mlflow server stopped during trial {dead}, restarted after {down} s on port {server.port}, "
           f"answering again {time.monotonic() - stopped:.0f} s after the stop")
    rc = wait_exit(a, 900)
    c.note(f"sweep exit {rc}" + ("" if rc == 0 else f": {short(last_line(a))}"))
    trials, runs = trials_of(storage), runs_of(server.url, "fault")
    client = MlflowClient(server.url)
    kids = {r.data.tags.get("optuna.trial_number"): r for r in runs if is_child(r)}
    c.add(trials, f"{len(trials)} trials ({states(trials)})")
    for t in trials:
        run = kids.get(str(t.number))
        if t.state == TrialState.COMPLETE:
            points = len(client.get_metric_history(run.info.run_id, "loss")) if run else 0
            c.add(points == epochs, f"trial {t.number} COMPLETE with {points}/{epochs} loss points"
                  + ("" if run else " (no child run)"))
        elif t.state == TrialState.FAIL:
            reason = t.user_attrs.get("fail_reason")
            c.add(reason, f"trial {t.number} FAIL: {short(reason, 160)!r}")
        else:
            c.add(t.state == TrialState.PRUNED, f"trial {t.number} {t.state.name}")
    running = [r.info.run_name for r in runs if r.info.status == "RUNNING"]
    c.note("nothing RUNNING in MLflow" if not running else f"MLflow runs still RUNNING: {running}")


def s9_pg_terminate(suite: Suite, d: Path, c: Checks):
    n = 4
    dbname, storage = suite.new_db()
    server = suite.shared_server()
    exp = experiment_name(d)
    a = suite.sweeper(d, "sweep", storage, server.url, n, data(10), experiment=exp)
    dead = wait_training(pg_probe(storage), a, 300, "the sweeper")
    offset = a.log_path.stat().st_size
    killed = suite.admin.execute(TERMINATE, (dbname,)).fetchall()
    c.note(f"pg_terminate_backend on {len(killed)} connections of the Optuna database during trial {dead}")
    rc = wait_exit(a, 900)
    with open(a.log_path, "rb") as f:
        f.seek(offset)
        after = lines_of(f.read().decode(errors="replace"))
    trials, runs = trials_of(storage), runs_of(server.url, exp)
    retried = retried_sources(trials)
    counted = [t for t in trials if t.number not in retried]
    exact = len(counted) == n and all(t.state in FINISHED for t in counted)
    errors = [x for x in after if x.startswith("error:")]
    one_line = rc not in (0, None) and after and after[-1].startswith("error:") and len(errors) == 1 \
        and not any("Traceback" in x for x in after)
    c.add((rc == 0 and exact) or one_line,
          f"exit {rc}; {len(counted)} counted trials of n_trials={n} ({states(trials)})"
          + (f"; output after the kill ends {short(after[-1], 160)!r}, {sum('Traceback' in x for x in after)} "
             f"tracebacks" if rc != 0 and after else ""))
    dead_trial = {t.number: t for t in trials}.get(dead)
    if dead_trial is not None:
        c.note(f"trial {dead} {dead_trial.state.name} ({short(dead_trial.user_attrs.get('fail_reason'), 120)!r})")
    check_nothing_running(c, trials, runs)


def s10_bad_inputs(suite: Suite, d: Path, c: Checks) -> list[Row]:
    missing_db = f"lenet_fault_{uuid.uuid4().hex[:12]}"
    port = free_port()
    pg1 = "postgresql+psycopg://postgres@127.0.0.1:1/x"
    cases = [  # name, overrides (None: the report command), fragments the line must name
        ("storage port 1", [f"hydra.sweeper.storage={pg1}"], ["hydra.sweeper.storage", "127.0.0.1:1"]),
        ("storage database missing",
         [f"hydra.sweeper.storage=postgresql+psycopg://postgres@127.0.0.1:5432/{missing_db}"],
         ["hydra.sweeper.storage", missing_db]),
        ("mlflow http nothing listening", [f"mlflow.tracking_uri=http://127.0.0.1:{port}"],
         ["mlflow.tracking_uri", f"127.0.0.1:{port}"]),
        ("n_trials=0", ["hydra.sweeper.n_trials=0"], ["hydra.sweeper.n_trials=0 is invalid: must be >= 1"]),
        ("n_jobs=0", ["hydra.sweeper.n_jobs=0"], ["hydra.sweeper.n_jobs=0 is invalid"]),
        ("n_jobs=-1", ["hydra.sweeper.n_jobs=-1"], ["hydra.sweeper.n_jobs=-1 is invalid"]),
        ("n_workers=1 n_jobs=2", ["hydra.launcher.n_workers=1", "hydra.sweeper.n_jobs=2", "hydra.launcher.pack=1"],
         ["hydra.launcher.n_workers=1 is fewer than the 2 trials hydra.sweeper.n_jobs runs at once"]),
        ("sweep dir under a file", ["hydra.sweep.dir={case}/a_file/sweep"], ["hydra.sweep.dir"]),
        ("sweep dir /proc/nope", ["hydra.sweep.dir=/proc/nope"], ["hydra.sweep.dir: cannot write in /proc/nope"]),
        ("report storage port 1", None, ["127.0.0.1:1"]),
        ("batch_size choice(0, 32)", ["data.batch_size=choice(0, 32)"], ["data.batch_size"]),
        ("activation choice(relu, tanhh)", ["model.activation=choice(relu, tanhh)"], ["model.activation"]),
        ("momentum interval(0.5, 1.5)", ["optimizer.momentum=interval(0.5, 1.5)"], ["optimizer.momentum"]),
    ]
    must = (f"one line `error: …` naming the key/URL, exit ≠ 0, ≤ {BAD_INPUT_SECONDS} s, no "
            "study/experiment/run created")
    lock = threading.Lock()

    def run_case(name: str, overrides: list[str] | None, fragments: list[str]) -> Row:
        t0 = time.monotonic()
        cc = Checks()
        case = d / re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
        case.mkdir(parents=True, exist_ok=True)
        (case / "a_file").write_text("a file, not a folder\n")
        journal, tracking = case / "optuna.journal", f"sqlite:///{case}/mlflow.db"
        if overrides is None:
            cmd = [PY, "-m", "lenet_sweep.report", f"storage={pg1}", f"mlflow.tracking_uri={tracking}",
                   f"out={case}/report"]
        else:
            given = {o.split("=", 1)[0]: o.replace("{case}", str(case)) for o in overrides}
            base = {"hydra.sweeper.n_trials": "hydra.sweeper.n_trials=2",
                    "hydra.sweeper.n_jobs": "hydra.sweeper.n_jobs=1",
                    "hydra.sweeper.storage": f"hydra.sweeper.storage={journal}",
                    "mlflow.tracking_uri": f"mlflow.tracking_uri={tracking}",
                    "hydra.sweep.dir": f"hydra.sweep.dir={case}/multirun"}
            cmd = [PY, "-m", "lenet_sweep", "-m", "hydra/sweeper=optuna", f"hydra.sweeper.study_name={STUDY}",
                   *{**base, **given}.values(), *TINY]
        proc = suite.spawn(cmd, case, "run")
        rc = wait_exit(proc, 120)
        seconds = time.monotonic() - t0
        lines = lines_of(log_text(proc))[1:]  # less the "$ command" line
        line = lines[0] if len(lines) == 1 else None
        cc.add(rc not in (0, None), f"exit {rc}" if rc is not None else "still running after 120 s")
        cc.add(line is not None and line.startswith("error:"),
               f"one line: {short(line, 200)!r}" if line is not None else
               f"{len(lines)} lines: " + " / ".join(repr(short(x, 120)) for x in lines[-3:]))
        named = [f for f in fragments if line is not None and f in line]
        cc.add(len(named) == len(fragments), f"names {', '.join(fragments)}" if len(named) == len(fragments)
               else f"does not name {', '.join(f for f in fragments if f not in named)}")
        cc.add(seconds <= BAD_INPUT_SECONDS, f"{seconds:.1f} s")
        created = []
        if journal.is_file():
            names = optuna.study.get_all_study_names(JournalStorage(JournalFileBackend(str(journal))))
            if names:
                created.append(f"studies {names}")
        if Path(tracking[len("sqlite:///"):]).is_file():
            client = MlflowClient(tracking)
            experiments = client.search_experiments(view_type=ViewType.ALL)
            n_runs = len(client.search_runs([e.experiment_id for e in experiments], run_view_type=ViewType.ALL))
            named_exps = [e.name for e in experiments if e.name != "Default"]
            if named_exps or n_runs:
                created.append(f"experiments {named_exps}, {n_runs} runs")
        if name == "storage database missing" and suite.admin is not None:
            with lock:
                if suite.db_exists(missing_db):
                    created.append(f"database {missing_db}")
                    suite.scope.dbs.append(missing_db)
        cc.add(not created, "created nothing" if not created else f"created {', '.join(created)}")
        say(f"  {name}: {'holds' if cc.holds else 'DOES NOT HOLD'} ({seconds:.1f} s)")
        return Row(f"10-bad-inputs: {name}", must, cc.observed(), cc.holds, seconds)

    with concurrent.futures.ThreadPoolExecutor(max_workers=3) as pool:  # three at a time: ~2x faster
        rows = list(pool.map(lambda case: run_case(*case), cases))
    c.note(f"{len(rows)} cases")
    return rows


def s11_torn_journal(suite: Suite, d: Path, c: Checks) -> list[Row]:
    """Two rows: a journal whose last line a crash cut mid-line, then one damaged in the middle."""
    storage, tracking, _ = journal_stores(d)
    path = Path(storage)
    first = suite.sweeper(d, "first", storage, tracking, 2, TINY)
    rc = wait_exit(first, 600)
    if rc != 0:
        raise ScenarioError(f"the first sweep exited with {rc}: {short(last_line(first))}")
    rows = []

    t0, cc = time.monotonic(), Checks()
    whole = path.read_bytes()
    start = whole.rstrip(b"\n").rfind(b"\n") + 1  # where the last line begins
    cut = start + (len(whole) - start) // 2
    os.truncate(path, cut)  # what a crash in the middle of an append leaves
    fragment = whole[start:cut]
    before = {t.number: t for t in trials_of(storage)}  # Optuna's reader skips the torn line
    cc.note(f"the 2-trial sweep's journal ({len(whole)} bytes) cut to {cut} bytes, half-way through its last "
            f"line; the study reads {len(before)} trials ({states(before.values())})")
    b = suite.sweeper(d, "after-tear", storage, tracking, 3, TINY)
    rc = wait_exit(b, 600)
    cc.add(rc == 0, f"re-launch with n_trials=3 exit {rc}" + ("" if rc == 0 else f": {short(last_line(b))}"))
    said = [x for x in lines_of(log_text(b)) if x.startswith("warning:") and "last line was cut short" in x]
    cc.add(len(said) == 1 and said[0].startswith(f"warning: {storage}: "),
           f"{len(said)} warning line(s)" + (f": {short(said[0], 200)!r}" if said else ""))
    backups = sorted(path.parent.glob(path.name + ".torn-*"))
    held = [x.read_bytes() for x in backups]
    cc.add(held == [fragment], f"{backups[0].name} holds the {len(fragment)} bytes cut off" if held == [fragment]
           else f"backups {[x.name for x in backups]} hold {[len(h) for h in held]} bytes, not the "
                f"{len(fragment)} cut off")
    trials = trials_of(storage)
    by = {t.number: t for t in trials}
    lost = [n for n, t in before.items() if n not in by or by[n].params != t.params
            or (t.state in FINISHED and by[n].state != t.state)]
    cc.add(before and not lost, f"every earlier trial kept ({len(before)})" if not lost else
           f"earlier trials lost or changed: {lost}")
    for n, t in before.items():  # a trial whose end was the torn record is RUNNING after the cut
        if t.state == TrialState.RUNNING and n in by:
            cc.note(f"trial {n} RUNNING after the cut (its end was the torn record), then {by[n].state.name} "
                    f"({short(by[n].user_attrs.get('fail_reason'), 100)!r})")
    check_total(cc, trials, 3)
    check_nothing_running(cc, trials, runs_of(tracking, "fault"))
    rows.append(Row("11-torn-journal: last line cut", "a crash mid-append cut the journal's last line: the re-launch "
                    "exits 0 and says one `warning: <journal>: its last line was cut short …` line; the cut-off "
                    "bytes kept in <journal>.torn-<time>; every earlier trial kept; exactly n_trials; nothing "
                    "RUNNING", cc.observed(), cc.holds, time.monotonic() - t0))

    t0, cc = time.monotonic(), Checks()
    lines = path.read_bytes().splitlines(keepends=True)
    middle = len(lines) // 2
    lines[middle] = b"this line is not JSON\n"
    damaged = b"".join(lines)
    path.write_bytes(damaged)
    cc.note(f"line {middle + 1} of {len(lines)} replaced by a line that is not JSON")
    e = suite.sweeper(d, "after-damage", storage, tracking, 4, TINY)
    rc = wait_exit(e, 120)
    out = lines_of(log_text(e))[1:]  # less the "$ command" line
    cc.add(rc not in (0, None), f"exit {rc}" if rc is not None else "still running after 120 s")
    expected = f"error: {storage}: line {middle + 1} is not an Optuna journal record"
    cc.add(len(out) == 1 and out[0].startswith(expected),
           f"{len(out)} line(s): " + " / ".join(repr(short(x, 200)) for x in out[-3:]))
    cc.add(path.read_bytes() == damaged, "the journal byte-for-byte unchanged" if path.read_bytes() == damaged
           else "the journal was changed")
    again = sorted(path.parent.glob(path.name + ".torn-*"))
    cc.add(again == backups, "no new .torn file" if again == backups else f"new files {again}")
    rows.append(Row("11-torn-journal: middle line damaged", "a complete line in the middle that is not JSON: the "
                    "re-launch prints one `error: <journal>: line N is not an Optuna journal record …` line, exits "
                    "≠ 0, and leaves the file byte-for-byte unchanged", cc.observed(), cc.holds, time.monotonic() - t0))
    for row in rows:
        say(f"  {row.scenario}: {'holds' if row.holds else 'DOES NOT HOLD'} ({row.seconds:.1f} s)")
    c.note(f"{len(rows)} cases")
    return rows


CALM = ["model.activation=sigmoid", "optimizer.momentum=interval(0.0, 0.5)"]  # no diverging lr (tests/conftest.py)
WORKER_DIED = ("the worker process died (killed or out of memory); queued again with the same parameters "
               "(hydra.sweeper.retry_failed=1)")


EPOCHS_12 = 12


def s12_packed_worker_kill(suite: Suite, d: Path, c: Checks):
    n = 2
    storage, tracking, probe = journal_stores(d)
    a = suite.sweeper(d, "sweep", storage, tracking, n, data(EPOCHS_12), *CALM, "hydra.launcher.pack=2",
                      "hydra.sweeper.retry_failed=1", n_jobs=2)
    dead = wait_trainings(probe, a, 300, "the packed worker", 2)
    deadline = time.monotonic() + 120  # and each has kept a checkpoint (written at the end of an epoch)
    while not all((d / "sweep" / "multirun" / str(n) / "checkpoint.npz").is_file() for n in dead):
        if time.monotonic() > deadline or a.poll() is not None:
            raise ScenarioError(f"trials {dead} wrote no checkpoint within 120 s")
        time.sleep(0.2)
    workers = [p for p in children(a.pid) if "spawn_main" in cmdline(p)]
    if len(workers) != 1:
        raise ScenarioError(f"expected one packed worker under sweeper {a.pid}, found {workers}")
    epochs = {t.number: max(t.intermediate_values) for t in trials_of(storage) if t.number in dead}
    os.kill(workers[0], signal.SIGKILL)
    c.note(f"SIGKILL to packed worker {workers[0]} of sweeper {a.pid} while trials {dead} trained (last epochs "
           f"reported {epochs})")
    rc = wait_exit(a, 600)
    c.add(rc == 0, f"sweep exit {rc}" + ("" if rc == 0 else f": {short(last_line(a))}"))
    trials, runs = trials_of(storage), runs_of(tracking, "fault")
    for number in dead:
        trial = check_dead_trial(c, trials, number, runs, run_status="FAILED")
        reason = (trial.user_attrs.get("fail_reason") or "") if trial else ""
        c.add(reason == WORKER_DIED, "fail_reason exactly the death and the retry" if reason == WORKER_DIED
              else f"fail_reason {short(reason, 160)!r}")
        check_retry(c, trials, number)
        retry = next((t for t in trials if t.system_attrs.get("failed_trial") == number), None)
        if retry is not None:
            c.add(retry.system_attrs.get("retry_history") == [number],
                  f"trial {retry.number} retry_history {retry.system_attrs.get('retry_history')}")
            # resumed: from the killed attempt's last checkpoint, its run one continuous series
            run = next((r for r in runs if r.data.tags.get("optuna.trial_number") == str(retry.number)), None)
            at = run.data.tags.get("resumed_after_epoch") if run is not None else None
            c.add(at is not None and int(at) >= 1,
                  f"trial {retry.number} resumed after epoch {at} (killed attempt reported up to {epochs[number]})"
                  if at else f"trial {retry.number} did not resume (no resumed_after_epoch tag)")
            if run is not None:
                steps = [m.step for m in MlflowClient(tracking).get_metric_history(run.info.run_id, "loss")]
                c.add(steps == list(range(1, EPOCHS_12 + 1)), f"trial {retry.number}'s run: loss at steps "
                      f"{steps[0] if steps else None}..{steps[-1] if steps else None}, {len(steps)} points "
                      f"for {EPOCHS_12} epochs, none twice")
    check_total(c, trials, n)
    check_nothing_running(c, trials, runs)


NOSPACE = "No space left on device"


@contextlib.contextmanager
def small_disk(folder: Path, size: str = "64k"):
    """A real ``size`` tmpfs mounted at ``folder`` (root), unmounted afterwards; NotRun where mounting fails."""
    folder.mkdir(parents=True, exist_ok=True)
    try:
        proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
                              capture_output=True, text=True, timeout=30)
    except OSError as exc:
        raise NotRun(f"no mount command ({exc})") from None
    if proc.returncode:
        raise NotRun(f"cannot mount a {size} tmpfs at {folder}: {short(proc.stderr, 160)}")
    try:
        yield folder
    finally:
        proc = subprocess.run(["umount", "--lazy", str(folder)], capture_output=True, text=True, timeout=30)
        if proc.returncode:
            say(f"could not unmount {folder}: {short(proc.stderr, 160)}")


def s13_full_disk(suite: Suite, d: Path, c: Checks):
    storage, tracking, _ = journal_stores(d)
    with small_disk(d / "mlruns") as artifacts:  # a SQLite store's artifacts: mlruns/ beside mlflow.db
        c.note(f"the MLflow artifact store {artifacts} is a 64 KiB tmpfs")
        a = suite.sweeper(d, "sweep", storage, tracking, 1, TINY, *CALM)
        rc = wait_exit(a, 300)
        text = log_text(a)
    c.add(rc not in (0, None), f"exit {rc}" if rc is not None else "still running after 300 s")
    errors = [x for x in lines_of(text) if x.startswith("error:")]
    c.add(len(errors) == 1 and errors[0].startswith(f"error: cannot write {artifacts}/") and errors[0].endswith(
        f": {NOSPACE}"), f"{len(errors)} error line(s)" + (f": {short(errors[-1], 200)!r}" if errors else
                                                             f"; output ends {short(last_line(a), 200)!r}"))
    c.add("Traceback" not in text, "no traceback" if "Traceback" not in text else
          f"{text.count('Traceback')} traceback(s) in its output")
    trials, runs = trials_of(storage), runs_of(tracking, "fault")
    c.add(trials, f"the study loads: {len(trials)} trial(s) ({states(trials)})")
    for t in trials:
        c.note(f"trial {t.number} {t.state.name} ({short(t.user_attrs.get('fail_reason'), 200)!r})")
    check_nothing_running(c, trials, runs)


@dataclass
class Scenario:
    name: str
    fast: bool
    must: str
    run: Callable
    budget_s: int


RETRIED = "killed trial FAIL, retried once with the same params (COMPLETE), exactly n_trials counted"
REGISTERED = ("each sweeper registers the winner it saw (registry.version tag on its parent run); the "
              "registered model lenet_sweep has exactly one version per distinct winning run")
SCENARIOS = [
    Scenario("1-journal", True,
             "SIGKILL of a sweeper mid-trial (journal file + SQLite MLflow); re-launch with retry_failed=1 "
             f"finishes the study: {RETRIED}; nothing RUNNING in Optuna or MLflow (child and parent run "
             "KILLED); no process of the killed sweeper alive 20 s after the kill", s1_sigkill_same_host("journal"), 900),
    Scenario("1-postgres", False,
             "as 1-journal, on PostgreSQL + a PostgreSQL-backed mlflow server", s1_sigkill_same_host("postgres"), 900),
    Scenario("2-other-host", False,
             f"sweeper under `unshare -u` (hostname {OTHER_HOST}), PostgreSQL, heartbeat 1 s / grace 5 s: "
             "trial_heartbeats > 0 while it runs; after SIGKILL of its process group a sweeper on this host with "
             f"retry_failed=1 finishes: the trial failed BY HEARTBEAT (fail_reason or [sweep] line says so), "
             f"{RETRIED}; its runs KILLED, nothing RUNNING", s2_other_host, 900),
    Scenario("3-sigterm", True,
             "SIGTERM to a sweeper mid-trial: one line 'terminated (SIGTERM)', exit ≠ 0, trial FAIL, child and "
             "parent runs KILLED, nothing RUNNING; re-launch with retry_failed=1 re-runs it with the same params",
             s_signal(signal.SIGTERM), 600),
    Scenario("4-ctrl-c", True,
             "SIGINT to the sweeper's process group mid-trial: one line 'interrupted (Ctrl-C)', exit ≠ 0, trial "
             "FAIL, runs KILLED, nothing RUNNING; re-launch with retry_failed=1 re-runs it with the same params",
             s_signal(signal.SIGINT), 600),
    Scenario("5-worker-kill", True,
             "SIGKILL of the pool worker process mid-trial: that trial FAIL naming the death ('worker process "
             "died' / signal), a new worker takes the slot, the sweep exits 0 with exactly n_trials, nothing RUNNING",
             s5_worker_kill, 600),
    Scenario("6-four-sweepers-postgres", False,
             "4 sweepers started within 0.2 s on an empty PostgreSQL database + a fresh PostgreSQL-backed mlflow "
             "server: all exit 0, exactly n_trials, all parameter sets distinct, one MLflow child run per trial, "
             f"nothing RUNNING; {REGISTERED}", s_four_sweepers("postgres"), 1200),
    Scenario("7-four-sweepers-journal", True,
             "4 sweepers started within 0.2 s on one journal file (MLflow on one SQLite file): all exit 0, exactly "
             "n_trials, all parameter sets distinct, one MLflow child run per trial, nothing RUNNING; "
             f"{REGISTERED}", s_four_sweepers("journal"), 1200),
    Scenario("8-mlflow-restart", False,
             "mlflow server stopped 30 s mid-trial and restarted (same store, same port): every COMPLETE trial "
             "has all its per-epoch `loss` points (history length == epochs); otherwise the trial is FAIL with "
             "a reason — never COMPLETE with metrics missing", s8_mlflow_restart, 1200),
    Scenario("9-pg-terminate", False,
             "pg_terminate_backend on every connection to the Optuna database mid-trial: the sweep finishes with "
             "exactly n_trials (exit 0) or fails with one `error:` line (no traceback); nothing RUNNING in Optuna "
             "or MLflow", s9_pg_terminate, 900),
    Scenario("10-bad-inputs", True, "", s10_bad_inputs, 900),
    Scenario("11-torn-journal", True, "", s11_torn_journal, 600),
    Scenario("12-packed-worker-kill", True,
             "hydra.launcher.pack=2, n_jobs=2, retry_failed=1: SIGKILL of the packed worker while both slots "
             "train: both trials FAIL with fail_reason 'the worker process died (killed or out of memory); queued "
             "again with the same parameters (hydra.sweeper.retry_failed=1)', their child runs FAILED; each "
             "retried once (failed_trial, retry_history) with the same params, resumed from the killed attempt's "
             "last checkpoint (resumed_after_epoch ≥ 1), its run one series (each step once), COMPLETE; sweep exit "
             "0 with exactly n_trials; nothing RUNNING", s12_packed_worker_kill, 600),
    Scenario("13-full-disk", True,
             "the MLflow artifact store on a 64 KiB tmpfs the suite mounts (root; not run where mounting fails): "
             f"the sweep exits ≠ 0 with one line `error: cannot write <path under it>: {NOSPACE}`, no traceback, "
             "nothing RUNNING in Optuna or MLflow, the study loads", s13_full_disk, 600),
]


def select(names: list[str] | None, fast: bool) -> list[Scenario]:
    chosen = [s for s in SCENARIOS if not fast or s.fast]
    if names:
        unknown = [n for n in names if not any(s.name == n or s.name.startswith(n + "-") for s in SCENARIOS)]
        if unknown:
            sys.exit(f"error: unknown scenario {', '.join(unknown)}; scenarios: "
                     f"{', '.join(s.name for s in SCENARIOS)}")
        chosen = [s for s in chosen if any(s.name == n or s.name.startswith(n + "-") for n in names)]
    return chosen


class Budget(Exception):
    pass


def run_scenario(suite: Suite, sc: Scenario) -> list[Row]:
    d = suite.work / sc.name
    d.mkdir(parents=True, exist_ok=True)
    suite.scope = Scope(d)
    c = Checks()
    rows = None
    say(f"{sc.name} ...")
    t0 = time.monotonic()

    def over_budget(signum, frame):
        raise Budget(f"the scenario ran past its budget of {sc.budget_s} s")

    previous = signal.signal(signal.SIGALRM, over_budget)
    signal.alarm(sc.budget_s)
    try:
        rows = sc.run(suite, d, c)
    except (ScenarioError, Budget) as exc:
        c.add(False, f"could not run to the end: {exc}")
    except NotRun as exc:
        c.add(False, f"not run: {exc}")
    except Exception as exc:  # noqa: BLE001 - a bug of the suite: report it, go on, exit 2
        suite.crashed = True
        traceback.print_exc()
        c.add(False, f"SUITE ERROR {short(tracking_line(exc), 300)}")
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
        suite.close_scope(suite.scope)
        suite.scope = suite.global_scope
    seconds = time.monotonic() - t0
    if rows is None:
        rows = [Row(sc.name, sc.must, c.observed(), c.holds, seconds)]
    elif any(ok is False for ok, _ in c.items):  # a scenario of several rows stopped part-way
        rows.append(Row(sc.name, sc.must, c.observed(), False, seconds))
    for row in rows:
        say(f"{row.scenario}: {'holds' if row.holds else 'DOES NOT HOLD'} ({row.seconds:.1f} s)")
    return rows


def tracking_line(exc: BaseException) -> str:
    return " ".join("".join(traceback.format_exception_only(type(exc), exc)).split())


def markdown(rows: list[Row]) -> str:
    def cell(value) -> str:
        return str(value).replace("|", "\\|").replace("\n", " ")

    out = ["| scenario | what must hold | what was observed | holds | seconds |", "|---|---|---|---|---|"]
    out += [f"| {cell(r.scenario)} | {cell(r.must)} | {cell(r.observed)} | {'yes' if r.holds else 'no'} | "
            f"{r.seconds:.1f} |" for r in rows]
    return "\n".join(out)


def machine() -> str:
    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), platform.processor() or "unknown CPU")
    flags = Path("/proc/cpuinfo").read_text()
    avx512 = "AVX-512 present" if "avx512" in flags else "no AVX-512"
    return f"{model}, {os.cpu_count()} cores, {avx512}"


def code_version() -> str:
    """The commit, and whether the code under test had uncommitted changes."""
    def git(*args: str) -> str:
        try:
            return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=10).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""

    commit = git("rev-parse", "--short", "HEAD") or "unknown"
    dirty = git("status", "--porcelain", "--", "lenet_sweep", "hydra_plugins", "conf")
    return commit + (" + uncommitted changes in lenet_sweep/, hydra_plugins/ or conf/" if dirty else "")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fast", action="store_true", help="only the fast scenarios (1-journal, 3, 4, 5, 7, 10–13)")
    parser.add_argument("--only", nargs="+", metavar="NAME", help="scenario names or numbers, e.g. 10 3-sigterm")
    parser.add_argument("--out", type=Path, help="folder for the table and the logs (default: a new /tmp folder)")
    args = parser.parse_args(argv)
    chosen = select(args.only, args.fast)
    out = (args.out.resolve() if args.out else Path(tempfile.mkdtemp(prefix="lenet_fault_")))
    work = out / f"work-{uuid.uuid4().hex[:8]}"  # the processes of this run live (cwd) only below here
    work.mkdir(parents=True)
    command = shlex.join([".venv/bin/python", "tools/fault_suite.py", *(argv if argv is not None else sys.argv[1:])])
    say(f"{len(chosen)} scenarios: {', '.join(s.name for s in chosen)}; logs in {work}")

    def terminated(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, terminated)
    suite = Suite(work)
    rows: list[Row] = []
    started, t0, version = datetime.datetime.now().astimezone(), time.monotonic(), code_version()
    try:
        for sc in chosen:
            rows += run_scenario(suite, sc)
    except KeyboardInterrupt:
        say("interrupted: stopping every process and dropping the databases")
        return 130
    finally:
        suite.close()
    total = time.monotonic() - t0
    table = markdown(rows)
    held = sum(r.holds for r in rows)
    summary = f"{held} of {len(rows)} rows hold; {total:.0f} s in all"
    print(table)
    print(summary)
    header = (f"Command: `{command}`  \nDate: {started:%Y-%m-%d %H:%M %Z}  \nCode: {version}  \n"
              f"Machine: {machine()}  \n{summary}\n\n")
    (out / "fault_suite.md").write_text(header + table + "\n")
    (out / "fault_suite.json").write_text(json.dumps(
        {"command": command, "date": started.isoformat(), "code": version, "machine": machine(), "seconds": total,
         "rows": [asdict(r) for r in rows]}, indent=1))
    say(f"table and logs: {out}")
    return 2 if suite.crashed else 0


if __name__ == "__main__":
    sys.exit(main())
