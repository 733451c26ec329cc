"""TensorFlow's C++ start-up lines are filtered wherever TensorFlow is first imported, whatever the
CPU prints (lenet_sweep.quiet); every other line of stderr passes unchanged. A real import with oneDNN's
line on: test_imports.py."""

import subprocess
import sys

#: lines TensorFlow 2.21 printed on this project's machines (AMD EPYC AVX2 / AVX-512, Intel Xeon with
#: AMX: the oneDNN line), as they reach fd 2 before absl's logging is initialised
NOISE = [
    "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR",
    "I0000 00:00:1796160266.731186    5804 port.cc:153] oneDNN custom operations are on. You may see "
    "slightly different numerical results due to floating-point round-off errors from different "
    "computation orders. To turn them off, set the environment variable `TF_ENABLE_ONEDNN_OPTS=0`.",
    "I0000 00:00:1796160266.731528    5804 cudart_stub.cc:31] Could not find cuda drivers on your "
    "machine, GPU will not be used.",
    "I0000 00:00:1796160266.802369    5804 cpu_feature_guard.cc:227] This TensorFlow binary is optimized "
    "to use available CPU instructions in performance-critical operations.",
    "To enable the following instructions: AVX2 FMA, in other operations, rebuild TensorFlow with the "
    "appropriate compiler flags.",
    "E0000 00:00:1733 12 cuda_dnn.cc:8310] Unable to register cuDNN factory: Attempting to register "
    "factory for plugin cuDNN when one has already been registered",
    "W0000 00:00:1796160266.9 5804 cuda_platform.cc:51] failed call to cuInit: INTERNAL: CUDA error",
]
KEPT = ["E0000 00:00:1796160266.9 5804 some_kernel.cc:12] a real error", "error: a line of ours",
        "Traceback (most recent call last):"]

PROBE = """
import os, sys
from lenet_sweep.quiet import startup_lines_filtered
lines = sys.stdin.read().splitlines()
with startup_lines_filtered():
    for line in lines:
        os.write(2, (line + "\\n").encode())
"""


def test_start_up_lines_of_every_cpu_are_dropped_and_the_rest_pass():
    proc = subprocess.run([sys.executable, "-c", PROBE], input="\n".join(NOISE + KEPT), capture_output=True,
                          text=True, timeout=60, check=True)
    assert proc.stderr.splitlines() == KEPT

