"""Detectron2's launcher asserts CUDA; ours runs N gloo processes on a CPU machine."""
import os

import torch

from sissi_d2.engine.launch import launch


def _worker(out_dir):
    import torch.distributed as dist
    from detectron2.utils import comm

    ranks = comm.all_gather(comm.get_rank())
    with open(os.path.join(out_dir, f"rank{comm.get_rank()}.txt"), "w") as f:
        f.write(f"{dist.get_backend()} {comm.get_world_size()} {sorted(ranks)}")


def test_two_gloo_processes(tmp_path):
    launch(_worker, 2, dist_url="auto", args=(str(tmp_path),))
    texts = sorted(p.read_text() for p in tmp_path.iterdir())
    expected_backend = "nccl" if torch.cuda.device_count() >= 2 else "gloo"
    assert texts == [f"{expected_backend} 2 [0, 1]"] * 2


def _worker_with_a_crashing_teardown(out_dir):
    import atexit
    import logging

    # stands in for the native teardown that sometimes aborted a finished gloo worker
    atexit.register(os.abort)
    logging.getLogger("sissi_d2.test_launch").warning("rank done")
    with open(os.path.join(out_dir, f"done{os.getpid()}.txt"), "w") as f:
        f.write("done")


def test_a_finished_worker_skips_the_interpreter_teardown(tmp_path):
    launch(_worker_with_a_crashing_teardown, 2, dist_url="auto", args=(str(tmp_path),))
    assert len(list(tmp_path.glob("done*.txt"))) == 2
