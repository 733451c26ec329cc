"""Placement of concurrent trials on faked device lists, and the GPU list itself: these machines have
no GPU (nor NVIDIA driver), so the driver's path is checked against nvidia-smi only where one is."""

import os
import subprocess
import sys

import pytest

from lenet_sweep import devices
from lenet_sweep.devices import default_n_jobs, placement


@pytest.mark.parametrize("gpus, n_workers", [(["0"], 1), (["0", "1"], 2), (["0", "1", "2", "3"], 4),
                                             (["0", "1", "2", "3"], 2), (["4", "7"], 2)])
def test_each_worker_owns_its_gpu_when_there_are_enough(gpus, n_workers):
    seen = [placement(slot, n_workers, gpus, cpus=16).env["CUDA_VISIBLE_DEVICES"] for slot in range(n_workers)]
    assert seen == gpus[:n_workers]  # distinct, in order, exactly one visible each
    assert all("," not in g for g in seen)


def test_more_workers_than_gpus_share_round_robin():
    places = [placement(slot, 4, ["0", "1"], cpus=8) for slot in range(4)]
    assert [p.env["CUDA_VISIBLE_DEVICES"] for p in places] == ["0", "1", "0", "1"]
    assert "shared by 4 workers" in places[2].description


@pytest.mark.parametrize("cpus, n_workers, threads", [(2, 1, 2), (2, 2, 1), (16, 4, 4), (16, 3, 5), (2, 4, 1)])
def test_without_gpus_workers_split_the_cores(cpus, n_workers, threads):
    for slot in range(n_workers):
        p = placement(slot, n_workers, [], cpus=cpus)
        assert p.env["CUDA_VISIBLE_DEVICES"] == "-1"
        assert p.threads == threads and set(p.env) == {"CUDA_VISIBLE_DEVICES"}
        assert p.description == f"CPU, {threads} threads (worker {slot} of {n_workers})"
    assert n_workers * threads <= max(cpus, n_workers)  # never oversubscribed beyond 1 thread each


@pytest.mark.parametrize("gpus, cpus, expected", [([], 2, 1), ([], 16, 8), ([], 1, 1), (["0"], 16, 1),
                                                  (["0", "1", "2", "3"], 2, 4)])
def test_default_n_jobs(gpus, cpus, expected):
    assert default_n_jobs(gpus, cpus) == expected


def test_default_pack_on_faked_devices():
    from lenet_sweep.devices import CPU_PACK, GPU_PACK_MAX, default_pack, trial_bytes

    assert default_pack([], [], 32) == CPU_PACK
    assert default_pack(["0"], [143_771], 32) == GPU_PACK_MAX  # an H200 holds far more than the cap
    small = 512 * 2**20 // 2 // trial_bytes(256)  # the smaller GPU, 512 MiB, at batch 256: a handful
    assert 1 < default_pack(["0", "1"], [1024, 512], 256) == small < GPU_PACK_MAX
    assert default_pack(["0"], [1], 32) == 1  # never 0
    assert default_pack(["0"], [], 32) == 1  # memory unknown: one trial per worker


# -- which GPUs: CUDA_VISIBLE_DEVICES, else the driver's (NVML); none without a driver -----------------
def nvml_state():
    """NVML's own answer on this machine: None when it initialises, else its error (these machines
    have no NVIDIA driver: NVMLError_LibraryNotFound)."""
    import pynvml

    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as exc:
        return exc
    pynvml.nvmlShutdown()
    return None


def test_without_cuda_visible_devices_the_gpus_are_the_drivers(monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    error = nvml_state()
    if error is not None:  # no driver: no GPU, no error, whatever NVML's reason
        assert devices.visible_gpus() == [] and devices.gpu_memory_mib() == [], error
        return
    # a machine with the driver: the GPUs and memory nvidia-smi (another reader of the driver) lists
    out = subprocess.run(["nvidia-smi", "--query-gpu=index,memory.total", "--format=csv,noheader,nounits"],
                         capture_output=True, text=True, check=True, timeout=60).stdout
    rows = [[x.strip() for x in line.split(",")] for line in out.splitlines() if line.strip()]
    assert devices.visible_gpus() == [index for index, _ in rows]
    assert devices.gpu_memory_mib() == [int(mib) for _, mib in rows]


@pytest.mark.parametrize("value, gpus", [("2,3", ["2", "3"]), (" 1 ", ["1"]), ("-1", []), ("", [])])
def test_cuda_visible_devices_comes_first(monkeypatch, value, gpus):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", value)
    assert devices.visible_gpus() == gpus
    if not gpus:
        assert devices.gpu_memory_mib() == []  # none visible: nothing to ask the driver


def test_memory_of_a_gpu_the_driver_does_not_report_is_unknown(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "GPU-00000000-0000-0000-0000-000000000000")  # a UUID
    assert devices.visible_gpus() == ["GPU-00000000-0000-0000-0000-000000000000"]
    assert devices.gpu_memory_mib() == []  # NVML numbers GPUs by index: default_pack falls back to 1


def test_asking_for_gpus_imports_no_tensorflow():
    env = {k: v for k, v in os.environ.items() if k != "CUDA_VISIBLE_DEVICES"}
    out = subprocess.run([sys.executable, "-c", "import sys; from lenet_sweep import devices; "
                          "print(devices.visible_gpus(), devices.gpu_memory_mib(), 'tensorflow' in sys.modules)"],
                         capture_output=True, text=True, check=True, timeout=120, env=env).stdout
    assert out.split()[-1] == "False", out
