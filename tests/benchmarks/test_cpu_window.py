"""``benchmarks/cpu_window``: the machine's busy share and some processes' CPU around a block."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

from cpu_window import CpuWindow


def _burn() -> None:
    h = b"x"
    for _ in range(200_000):
        h = hashlib.sha256(h).digest()


def test_counts_the_cpu_of_the_processes_it_watches() -> None:
    with CpuWindow([os.getpid()]) as mine:
        _burn()
    assert mine.cores() > 0.0
    assert 0.0 <= mine.busy() <= 1.0
    if os.nice(0) <= 0:  # busy() leaves niced CPU out (by design): the burn shows only where it is not niced
        assert mine.busy() > 0.0  # (the suite run as `nice -n 10 pytest` found 0.0 here on a quiet machine)


def test_a_process_gone_before_the_block_is_left_out() -> None:
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    with CpuWindow([gone.pid]) as w:
        _burn()
    assert w.cores() == 0.0
    assert 0.0 <= w.busy() <= 1.0
