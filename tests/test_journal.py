"""The default journal storage (an Optuna journal file) after a write that never completed: a torn
last line is cut off and kept, with one line saying so; a line that is not JSON anywhere else is one
``error:`` line and the file stays as it was. Real journals written by Optuna, real subprocesses."""

import os
import subprocess
import sys
import threading
import time

import optuna
import pytest
from optuna.storages.journal import JournalFileSymlinkLock
from optuna.trial import TrialState

from conftest import CALM, copy_stores, load, run_cli, sweep_args
from lenet_sweep.stores import StoreError, open_optuna_storage


def told_study(path, name="s", values=(0.1, 0.2, 0.3)) -> list[bytes]:
    """A study whose trials were told ``values``, written by Optuna into the journal ``path``; its lines."""
    study = optuna.create_study(study_name=name, storage=open_optuna_storage(str(path)))
    for value in values:
        study.tell(study.ask(), value)
    return path.read_bytes().splitlines(keepends=True)


def trials_of(path, name="s"):
    return [(t.state, t.value) for t in optuna.load_study(study_name=name,
                                                          storage=open_optuna_storage(str(path))).trials]


def test_a_torn_last_line_is_cut_off_kept_and_said_and_the_study_goes_on(tmp_path, capsys):
    journal = tmp_path / "optuna.journal"
    lines = told_study(journal)
    whole = journal.read_bytes()
    fragment = lines[-1][:25]  # the first bytes of a record whose write never completed
    with open(journal, "ab") as f:
        f.write(fragment)
    capsys.readouterr()

    storage = open_optuna_storage(str(journal))
    assert journal.read_bytes() == whole
    [backup] = tmp_path.glob("optuna.journal.torn-*")
    assert backup.read_bytes() == fragment
    [said] = capsys.readouterr().err.splitlines()
    assert str(journal) in said and "25 bytes" in said and str(backup) in said
    study = optuna.load_study(study_name="s", storage=storage)
    assert [(t.state, t.value) for t in study.trials] == [(TrialState.COMPLETE, v) for v in (0.1, 0.2, 0.3)]

    # the repaired file takes new records, and reads back whole
    study.tell(study.ask(), 0.4)
    other = optuna.create_study(study_name="t", storage=storage)
    other.tell(other.ask(), 1.0)
    assert trials_of(journal) == [(TrialState.COMPLETE, v) for v in (0.1, 0.2, 0.3, 0.4)]
    assert trials_of(journal, "t") == [(TrialState.COMPLETE, 1.0)]
    assert capsys.readouterr().err == "" and len(list(tmp_path.glob("optuna.journal.torn-*"))) == 1


def test_a_line_being_written_under_the_lock_is_not_cut(tmp_path):
    """A process opening the journal while another appends waits for the backend's lock, and then
    finds the line complete."""
    journal, elsewhere = tmp_path / "optuna.journal", tmp_path / "other.journal"
    told_study(journal)
    [record] = told_study(elsewhere, name="t", values=())  # a create_study record of study "t"
    whole = journal.read_bytes()
    writer = JournalFileSymlinkLock(str(journal))  # what the backend's append_logs holds
    writer.acquire()
    opened = []
    try:
        with open(journal, "ab") as f:
            f.write(record[:20])  # half of the line: the writer is mid-write
            f.flush()
            opener = threading.Thread(target=lambda: opened.append(open_optuna_storage(str(journal))))
            opener.start()
            time.sleep(1.5)  # time enough to cut the half line, were the lock not taken
            f.write(record[20:])
    finally:
        writer.release()
    opener.join(timeout=60)
    assert journal.read_bytes() == whole + record and not list(tmp_path.glob("*.torn-*"))
    assert set(optuna.study.get_all_study_names(opened[0])) == {"s", "t"}


def glued(lines):
    """What the issue's re-launch left: a torn fragment, the next append written straight onto it."""
    return lines[:2] + [lines[2][:30] + lines[3]] + lines[4:], 3


def broken_last(lines):
    """A last line with its newline that is not JSON: no torn write (its newline is there), damage."""
    return lines[:-1] + [lines[-1][:30] + b"\n"], len(lines)


def glued_and_torn(lines):
    """Damage in the middle and a torn last line: the tail is not cut either."""
    damaged, number = glued(lines)
    return damaged + [lines[-1][:25]], number


@pytest.mark.parametrize("damage", [glued, broken_last, glued_and_torn])
def test_a_line_that_is_not_json_is_refused_and_the_file_left_unchanged(tmp_path, damage):
    journal = tmp_path / "optuna.journal"
    damaged, number = damage(told_study(journal))
    journal.write_bytes(b"".join(damaged))
    before = journal.read_bytes()
    with pytest.raises(StoreError) as caught:
        open_optuna_storage(str(journal))
    message = str(caught.value)
    assert "\n" not in message and f"{journal}: line {number} is not an Optuna journal record" in message
    assert "restore it from a backup" in message and "hydra.sweeper.storage=" in message
    assert journal.read_bytes() == before and not list(tmp_path.glob("*.torn-*"))


def test_report_on_a_damaged_journal_is_one_error_line(tmp_path):
    journal = tmp_path / "optuna.journal"
    damaged, number = glued(told_study(journal, name="lenet_sweep"))
    journal.write_bytes(b"".join(damaged))
    before = journal.read_bytes()
    proc = subprocess.run([sys.executable, "-m", "lenet_sweep.report", f"storage={journal}",
                           f"out={tmp_path}/report"], cwd=tmp_path, capture_output=True, text=True,
                          timeout=300, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert proc.returncode != 0
    [line] = proc.stderr.strip().splitlines()
    assert line.startswith(f"error: {journal}: line {number} is not an Optuna journal record"), line
    assert journal.read_bytes() == before and not (tmp_path / "report").exists()


@pytest.mark.sweep
@pytest.mark.xdist_group("calm_sweep")
def test_a_sweep_resumes_a_journal_whose_last_line_was_torn(calm_sweep, tmp_path):
    copy_stores(calm_sweep, tmp_path)  # 3 completed trials (conftest)
    journal = tmp_path / "optuna.journal"
    earlier = [(t.number, t.state, t.value, t.params) for t in load(tmp_path).trials]
    fragment = journal.read_bytes().splitlines(keepends=True)[-1][:40]
    with open(journal, "ab") as f:
        f.write(fragment)  # a sweeper killed in the middle of a write

    proc = run_cli(sweep_args(tmp_path, *CALM, n_trials=4), tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    [said] = [line for line in proc.stderr.splitlines() if "cut short" in line]
    [backup] = tmp_path.glob("optuna.journal.torn-*")
    assert str(journal) in said and str(backup) in said and backup.read_bytes() == fragment
    trials = load(tmp_path).trials
    assert [(t.number, t.state, t.value, t.params) for t in trials[:3]] == earlier
    assert len(trials) == 4 and trials[3].state == TrialState.COMPLETE
