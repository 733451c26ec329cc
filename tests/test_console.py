"""What a sweep prints: under a terminal, a status line and one line per ended trial (its parameters and
value) on lines of their own; in a pipe, only those lines. A real sweep under a real pseudo-terminal."""

import fcntl
import os
import pty
import re
import struct
import subprocess
import sys
import termios

import pytest
from optuna.trial import TrialState

from conftest import CALM, load, sweep_args
from lenet_sweep.sweep.console import params_text


def test_params_are_shown_by_their_last_name_unless_two_clash():
    assert params_text({"optimizer.lr": 0.123456, "optimizer.nesterov": False, "model.activation": "relu"}) == (
        "lr=0.1235 nesterov=False activation=relu")
    assert params_text({"a.units": 3, "b.units": 4}) == "a.units=3 b.units=4"


def run_in_terminal(args, cwd) -> str:
    """``python -m lenet_sweep ARGS`` with stdout and stderr on a pseudo-terminal; what it showed."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 160, 0, 0))  # 40 rows, 160 columns
    proc = subprocess.Popen([sys.executable, "-m", "lenet_sweep", *args, f"hydra.run.dir={cwd}/out"], cwd=cwd,
                            stdin=subprocess.DEVNULL, stdout=slave, stderr=slave)
    os.close(slave)
    chunks = []
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:  # EIO: the terminal's other end is closed (the sweep and its workers ended)
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(master)
    assert proc.wait(timeout=60) == 0, b"".join(chunks).decode(errors="replace")[-3000:]
    return b"".join(chunks).decode(errors="replace")


@pytest.mark.sweep
def test_a_sweep_in_a_terminal_shows_a_status_line_and_one_line_per_trial(tmp_path):
    # the trials' verbosity left at its default (conftest's TINY sets trainer.verbose=0): quiet in a sweep
    args = [a for a in sweep_args(tmp_path, *CALM, n_trials=2) if a != "trainer.verbose=0"]
    shown = run_in_terminal(args, tmp_path)
    study = load(tmp_path)
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 2
    # the status line is redrawn in place (carriage returns): done/total, running, best with its params
    # (how many run at the moment it is drawn is a matter of timing: a fast trial may end within a poll)
    assert re.search(r"\[sweep\] 1/2 .* \d\d:\d\d<\d\d:\d\d, running [01], pruned 0, failed 0 "
                     r"\| best=\d\.\d{4} \(trial \d\) lr=", shown)
    lines = [part for line in shown.replace("\r\n", "\n").split("\n") for part in line.split("\r")]
    ended = [line for line in lines if re.match(r"\[sweep\] trial \d \(\d/2\) COMPLETE", line)]
    assert len(ended) == 2, shown[-3000:]  # each on a line of its own, never glued to the status line
    for trial in study.trials:
        [line] = [x for x in ended if x.startswith(f"[sweep] trial {trial.number} ")]
        assert f"val_accuracy={trial.value:.4f} | lr={trial.params['optimizer.lr']:.4g} " in line
    assert "━" not in shown and "Epoch 1/1" not in shown  # no Keras progress bar, no layer table
    assert "layer by layer" not in shown
    # no store-creation or study-creation notes from MLflow and Optuna
    assert "Creating initial MLflow database tables" not in shown and "A new study created" not in shown
