"""Placement of concurrent trials on faked device lists (these machines have no GPU)."""

import pytest

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
