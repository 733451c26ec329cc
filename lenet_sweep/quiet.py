"""TensorFlow's C++ start-up lines off the terminal.

``TF_CPP_MIN_LOG_LEVEL`` does not reach the lines TensorFlow's C++ code writes before its logging is
initialised ("All log messages before absl::InitializeLog() ...", "Could not find cuda drivers",
"failed call to cuInit"): they go straight to file descriptor 2. :func:`startup_lines_filtered` runs
a block (the import, the first device query) with fd 2 read through a pipe and drops exactly those
lines; everything else is passed on unchanged.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import threading
from typing import Iterator

STARTUP_NOISE = re.compile(
    rb"All log messages before absl::InitializeLog\(\) is called"
    rb"|cudart_stub\.cc.*Could not find cuda drivers"
    rb"|cuda_platform\.cc.*failed call to cuInit"
    rb"|cuda_dnn\.cc.*Unable to register|cuda_blas\.cc.*Unable to register")


@contextlib.contextmanager
def startup_lines_filtered() -> Iterator[None]:
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no real fd 2 (embedded, captured): leave it alone
        yield
        return
    read_fd, write_fd = os.pipe()
    os.dup2(write_fd, 2)
    os.close(write_fd)

    def pump() -> None:
        with os.fdopen(read_fd, "rb") as lines:
            for line in lines:
                if not STARTUP_NOISE.search(line):
                    os.write(saved, line)

    thread = threading.Thread(target=pump, daemon=True, name="stderr-filter")
    thread.start()
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)  # closes the pipe's last write end: the pump drains and ends
        thread.join(timeout=5)
        os.close(saved)
