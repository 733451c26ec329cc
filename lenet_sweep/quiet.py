"""TensorFlow's C++ start-up lines off the terminal.

``TF_CPP_MIN_LOG_LEVEL`` does not reach the lines TensorFlow's C++ code writes before its logging is
initialised: they go straight to file descriptor 2, and which ones appear depends on the machine.
Seen on this project's machines:

- every machine: ``WARNING: All log messages before absl::InitializeLog() is called are written to
  STDERR``, ``cudart_stub.cc:… Could not find cuda drivers on your machine``, ``cuda_platform.cc:…
  failed call to cuInit`` (the first device query), ``cuda_dnn.cc``/``cuda_blas.cc`` ``Unable to
  register`` (GPU wheels);
- Intel Xeons with AVX512-VNNI/BF16/AMX (oneDNN on by default there; ``TF_ENABLE_ONEDNN_OPTS=1``
  shows it anywhere): ``port.cc:… oneDNN custom operations are on. You may see slightly different
  numerical results …``; and, at the first int32 op where oneDNN lacks an int32 kernel,
  ``util.cc:… oneDNN supports DT_INT32 only on platforms with AVX-512. Falling back to … Eigen`` (an
  ``E`` line that is only a notice);
- without ``TF_CPP_MIN_LOG_LEVEL``: ``cpu_feature_guard.cc:… This TensorFlow binary is optimized …``
  and its second line ``To enable the following instructions: …``.

:func:`startup_lines_filtered` runs a block (the import, the first device query) with fd 2 read
through a pipe and drops exactly those lines: the ones above, and any other INFO or WARNING line in
absl's format (``I0000 00:00:… file.cc:NN] …``), which is what ``TF_CPP_MIN_LOG_LEVEL=2`` asks for but
cannot reach. Errors (``E…``) and everything else are passed on unchanged. :func:`import_tensorflow`
is the one filtered import; every module that imports TensorFlow or Keras at its top calls it first,
so the first import in any process (a single run, a sweep worker, rerun, the registry) is filtered.
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
    rb"|^[IW]\d{4} [\d:.]+ +\d+ [\w./-]+\.cc:\d+\] "  # absl INFO/WARNING lines before logging is set up
    rb"|oneDNN custom operations are on"
    rb"|^To enable the following instructions:"  # cpu_feature_guard's second line
    rb"|cudart_stub\.cc.*Could not find cuda drivers"
    rb"|cuda_platform\.cc.*failed call to cuInit"
    rb"|oneDNN supports DT_INT32 only on platforms with AVX-512"  # an E line, but only a fallback notice
    rb"|cuda_dnn\.cc.*Unable to register|cuda_blas\.cc.*Unable to register|cuda_fft\.cc.*Unable to register")

_filtering = False  # fd 2 is the process's: one filter at a time, nested blocks pass through


@contextlib.contextmanager
def startup_lines_filtered() -> Iterator[None]:
    global _filtering
    if _filtering:  # nested (an import inside a filtered block): already filtered
        yield
        return
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
    _filtering = True
    try:
        yield
    finally:
        _filtering = False
        sys.stderr.flush()
        os.dup2(saved, 2)  # closes the pipe's last write end: the pump drains and ends
        thread.join(timeout=5)
        os.close(saved)


def import_tensorflow() -> None:
    """Import TensorFlow and Keras with their start-up lines filtered; a no-op once imported."""
    if "tensorflow" in sys.modules and "keras" in sys.modules:
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    with startup_lines_filtered():
        import keras  # noqa: F401  (imported for its side effect: loaded, quietly)
        import tensorflow  # noqa: F401


def filter_for_this_process() -> None:
    """Drop those lines for the rest of this process (a sweep worker: TensorFlow writes some at its
    first use of an op, not only at import), fd 2 restored and drained at its exit."""
    import atexit

    block = startup_lines_filtered()
    block.__enter__()
    atexit.register(block.__exit__, None, None, None)
