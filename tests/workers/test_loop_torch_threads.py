"""The worker's torch thread cap holds on its loop thread, where it scores. OpenMP keeps the thread count per
thread: a cap set only by the thread that built the worker leaves the loop's team at one thread a core, and
then every tiny op of a small batch wakes a second OpenMP thread that spins at its barrier (the fixed CPU of
a cycle, ``benchmarks/cycle_cost.py``)."""

from __future__ import annotations

import ctypes
import threading
from pathlib import Path

import pytest
import torch

from rnnstream.workers.scoring_worker import ScoringWorker, limit_torch_threads
from tests.workers.worker_harness import make_schema, new_pipeline, worker_config


def _omp_max_threads() -> int:
    """``omp_get_max_threads()`` of the calling thread, from torch's own OpenMP runtime: other packages load
    theirs too (scikit-learn ships its own libgomp, whose thread counts are not torch's), so the one under
    torch's folder is asked, never the first one mapped."""
    torch_dir = str(Path(torch.__file__).resolve().parent)
    with open("/proc/self/maps") as maps:
        paths = {
            line.split()[-1]
            for line in maps
            if line.split()[-1].startswith(torch_dir) and any(n in line for n in ("gomp", "libomp", "iomp"))
        }
    assert len(paths) == 1, f"expected torch's one OpenMP runtime under {torch_dir}, found {paths}"
    return int(ctypes.CDLL(paths.pop()).omp_get_max_threads())


def _on_new_thread(fn) -> int:
    out: list[int] = []
    t = threading.Thread(target=lambda: out.append(fn()))
    t.start()
    t.join()
    return out[0]


def test_the_cap_is_per_thread_and_the_loop_thread_sets_its_own(kafka_settings, tmp_path):
    torch.set_num_threads(1)  # on this thread only, as far as OpenMP is concerned
    fresh = _on_new_thread(_omp_max_threads)
    if fresh == 1:
        pytest.skip("one core (or OMP_NUM_THREADS=1): a new thread's team is one thread anyway")

    def capped() -> int:
        limit_torch_threads(1)
        return _omp_max_threads()

    assert _on_new_thread(capped) == 1
    schema = make_schema(new_pipeline("torch-threads"))
    worker = ScoringWorker(0, worker_config(kafka_settings, schema, tmp_path / "ckpt"), export_metrics=False)
    try:
        assert worker._on_loop(_omp_max_threads) == worker.config.torch_threads == 1
    finally:
        worker.shutdown()
