"""Restore speed of a keyed state store: snapshot N keys to an Arrow IPC file, restore into a fresh store.

Side by side in one process: ``KeyedStateStore.restore`` (memory-mapped file, capacity reserved up front,
rows copied from the file's buffers straight into the slab) against the plain path it replaced (the file
read into memory, the states copied into one array, the keys inserted into a store that starts at 1,024
slots and grows by doubling, then the rows copied by fancy indexing). CPU and wall seconds of each, the ratio,
and a bit-equality check of the restored states. Each restore runs in a fresh process (as after a worker's
restart: its memory is new, so page faults count), the two sides alternating.
Run with ``nice -n 19`` on a shared machine.

    .venv/bin/python benchmarks/state_restore.py --keys 1000000 --hidden 64
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np
import pyarrow as pa
import torch

from rnnstream.rnn_core.state_snapshot import read_snapshot_table
from rnnstream.rnn_core.state_store import KeyedStateStore


def plain_restore(store: KeyedStateStore, path: str) -> None:
    """The restore before it was reworked: whole file read, one copy of the states, growth by doubling."""
    with pa.OSFile(path) as f:
        table = pa.ipc.open_file(f).read_all()
    keys, _, times, watermark, _ = read_snapshot_table(table, store.state_shape)
    rows = table.column("state").combine_chunks().flatten().to_numpy(zero_copy_only=False)
    rows = rows.reshape(table.num_rows, -1)
    store.watermark_ms = max(store.watermark_ms, watermark)
    slots = store.lookup(keys, create=True)
    store._rows[slots] = rows
    store._times[slots] = times


def timed(fn) -> tuple[float, float]:
    c0, w0 = time.process_time(), time.perf_counter()
    fn()
    return time.process_time() - c0, time.perf_counter() - w0


def restore_once(side: str, path: str, hidden: int) -> dict[str, float]:
    """One restore into a fresh store, in this (fresh) process: its CPU and wall seconds and a digest."""
    shape = (1, 1, hidden)
    KeyedStateStore(shape, capacity=4).lookup(["a"])  # the compiled kernels loaded, for neither side to pay
    store = KeyedStateStore(shape, capacity=1024)
    cpu, wall = timed(lambda: (plain_restore if side == "plain" else KeyedStateStore.restore)(store, path))
    got = store.snapshot_table(None).sort_by("key")
    digest = hashlib.sha256(got.column("state").combine_chunks().flatten().to_numpy().tobytes())
    digest.update(got.column("last_time").to_numpy().tobytes())
    return {"cpu_s": cpu, "wall_s": wall, "digest": digest.hexdigest(), "watermark": store.watermark_ms}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--keys", type=int, default=1_000_000)
    ap.add_argument("--hidden", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--one", choices=["plain", "restore"], help=argparse.SUPPRESS)
    ap.add_argument("--path", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        print(json.dumps(restore_once(args.one, args.path, args.hidden)))
        return
    shape = (1, 1, args.hidden)
    rng = np.random.default_rng(0)
    src = KeyedStateStore(shape, capacity=args.keys, hash_seed=1)
    slots = src.lookup(pa.array([f"user-{i:09d}" for i in range(args.keys)]))
    states = torch.from_numpy(rng.standard_normal((args.keys, *shape), dtype=np.float32))
    src.scatter_slots(slots, states, rng.integers(0, 2**40, args.keys))
    src.watermark_ms = 123
    runs: dict[str, list[dict[str, float]]] = {"plain": [], "restore": []}
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "snap.arrow")
        src.snapshot(None, path)
        del src, states
        for _ in range(args.rounds):  # each restore in a fresh process, as after a worker's restart
            for side in runs:
                cmd = [sys.executable, __file__, "--one", side, "--path", path, "--hidden", str(args.hidden)]
                out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
                runs[side].append(json.loads(out.strip().splitlines()[-1]))
    digests = {r["digest"] for side in runs.values() for r in side}
    if len(digests) != 1 or any(r["watermark"] != 123 for side in runs.values() for r in side):
        raise SystemExit("the two restores disagree: restored states differ")
    best = {f"{side}_{m}": min(r[m] for r in rs) for side, rs in runs.items() for m in ("cpu_s", "wall_s")}
    best["cpu_ratio_plain_over_restore"] = best["plain_cpu_s"] / best["restore_cpu_s"]
    best["wall_ratio_plain_over_restore"] = best["plain_wall_s"] / best["restore_wall_s"]
    best["keys"] = args.keys
    if args.json:
        print(json.dumps(best))
    else:
        for k, v in best.items():
            print(f"{k:32s} {v:.3f}" if isinstance(v, float) else f"{k:32s} {v}")


if __name__ == "__main__":
    main()
