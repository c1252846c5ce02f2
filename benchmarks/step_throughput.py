"""Events per second of one recurrent step per event, with per-key state, three ways, in one run.

1. naive: a dict of per-key hidden tensors and one ``GRUCell`` call per event;
2. rnnstream: ``StreamScorer.score`` = ``KeyedStateStore`` lookup + gather + step + scatter (for this
   one-layer GRU the step is ``rnn_core/slab_step.py``: two matrix products and one compiled pass for the
   gates, the new state written into the slab and the binary head's score; where torch carries MKL, the whole
   batch is one compiled call with MKL's products inside; other models run ``StreamingModel.step``; a
   batch's repeated keys planned into chunks of distinct keys, last event times kept, every change logged so a
   failed call rolls back) - the path the workers run, head output included (the kernel rows compute no
   output). Keys arrive as an Arrow string array, as decoded event batches hold them (also timed: a Python
   list of str);
3. bare kernel: the same batched GRU step on preallocated states, with no key lookup and no store, in up to
   three forms: ``torch.gru_cell`` on the model's weights; the scorer's own step without the store with
   torch's products (two ``addmm`` into reused buffers and the compiled gate pass of
   ``rnn_core/gru_kernels.py``); and, where torch carries MKL, with MKL's products inside the compiled pass
   (``gru_rows`` of ``rnn_core/gru_kernels.py``); new states written in place; each as one call per
   batch and as calls of the scorer's ``step_rows`` rows (256 on the CPU). The kernel is credited with the
   fastest of these, so store / kernel measures what the store costs, not which step is faster.

GRU(input 32, hidden 64, 1 layer), binary head, input normalization fitted; 1,000,000 keys (100,000 with
``--quick``, any number with ``--keys``), batches of 4,096 events with uniformly random keys. One torch
thread for every method (fair, and what one worker core gets). The methods alternate batch by batch and
each one's median batch time is reported (the machine is shared); the ratios of each method's fastest batch,
and of each one's median CPU time a batch (``cpu_*``: what neighbours on a loaded machine inflate least),
are printed too. Also timed: ``StreamingModel.step`` alone.

Prints events/s, the ratios store/naive and store/kernel, and the store's bytes per key against the raw
state size (targets: >= 0.85x the kernel, >= 25x the naive loop, <= 1.5x the raw state). Also measured: the
resident memory the filled store added to the process (RSS, target <= 2x raw + 100 B a key;
``--keys 10000000`` for 10M keys in one store), and the first lookup's latency in this process (numba's
compiled kernels loaded from its cache, or compiled when the cache is cold). ``--json`` prints one JSON
object instead.

    python benchmarks/step_throughput.py [--quick] [--keys N] [--json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable

import numpy as np
import psutil
import pyarrow as pa
import pyarrow.compute as pc
import torch

from rnnstream.rnn_core import mkl_gemm
from rnnstream.rnn_core.config import FeatureSpec, ModelConfig
from rnnstream.rnn_core.gru_kernels import gru_gates, gru_rows
from rnnstream.rnn_core.model import StreamingModel
from rnnstream.rnn_core.state_store import KeyedStateStore
from rnnstream.rnn_core.stream_scorer import StreamScorer

INPUT_SIZE = 32
HIDDEN_SIZE = 64
BATCH = 4096
METHODS = (
    "naive",
    "store",
    "store_list",
    "kernel_whole",
    "kernel_chunked",
    "fused_whole",
    "fused_chunked",
    "model_step",
)
MKL_KERNELS = ("mkl_whole", "mkl_chunked") if mkl_gemm.AVAILABLE else ()  # the scorer's MKL step, bare
METHODS += MKL_KERNELS
MKL_FIELDS = (("whole_batch", "whole"), ("chunked", "chunked")) if MKL_KERNELS else ()
KERNELS = ("kernel_whole", "kernel_chunked", "fused_whole", "fused_chunked", *MKL_KERNELS)


def make_model(seed: int = 0) -> StreamingModel:
    """The benchmark's model, its input normalization fitted on a sample like the timed inputs (as a trained
    model's would be; ``step`` then folds it into the first layer's weights)."""
    torch.manual_seed(seed)
    spec = FeatureSpec(numeric=tuple(f"f{i}" for i in range(INPUT_SIZE)))
    config = ModelConfig(features=spec, cell="gru", head="binary", hidden_size=HIDDEN_SIZE, num_layers=1)
    model = StreamingModel(config)
    model.fit_normalization(np.random.default_rng(seed).standard_normal((BATCH, INPUT_SIZE)))
    return model.eval()


def key_batches(rng: np.random.Generator, num_keys: int, count: int) -> list[list[str]]:
    """``count`` batches of BATCH random keys, as fresh ``str`` objects (hashes not cached)."""
    return [[f"key-{i}" for i in rng.integers(0, num_keys, BATCH)] for _ in range(count)]


def bench_naive(model: StreamingModel, keys: list[list[str]], xs: list[torch.Tensor]) -> float:
    cell = torch.nn.GRUCell(INPUT_SIZE, HIDDEN_SIZE)
    with torch.no_grad():
        cell.weight_ih.copy_(model.rnn.weight_ih_l0)
        cell.weight_hh.copy_(model.rnn.weight_hh_l0)
        cell.bias_ih.copy_(model.rnn.bias_ih_l0)
        cell.bias_hh.copy_(model.rnn.bias_hh_l0)
    states: dict[str, torch.Tensor] = {}
    zero = torch.zeros(1, HIDDEN_SIZE)
    with torch.inference_mode():
        start = time.perf_counter()
        for batch_keys, x in zip(keys, xs, strict=True):
            for i, key in enumerate(batch_keys):
                states[key] = cell(x[i : i + 1], states.get(key, zero))
        elapsed = time.perf_counter() - start
    return len(keys) * BATCH / elapsed


def bench_store(scorer: StreamScorer, keys: list[list[str]], xs: list[np.ndarray], t0: int) -> float:
    times = [np.full(BATCH, t0 + i, np.int64) for i in range(len(keys))]
    start = time.perf_counter()
    for batch_keys, batch_times, x in zip(keys, times, xs, strict=True):
        scorer.score(batch_keys, batch_times, x)
    elapsed = time.perf_counter() - start
    return len(keys) * BATCH / elapsed


def bench_kernel(model: StreamingModel, xs: list[torch.Tensor], rows: int = BATCH) -> float:
    """The bare batched GRU step on preallocated states, ``rows`` events a call."""
    rnn = model.rnn
    bounds = [(lo, min(BATCH, lo + rows)) for lo in range(0, BATCH, rows)]
    hs = [torch.zeros(hi - lo, HIDDEN_SIZE) for lo, hi in bounds]
    with torch.inference_mode():
        start = time.perf_counter()
        for x in xs:
            for j, (lo, hi) in enumerate(bounds):
                hs[j] = torch.gru_cell(
                    x[lo:hi], hs[j], rnn.weight_ih_l0, rnn.weight_hh_l0, rnn.bias_ih_l0, rnn.bias_hh_l0
                )
        elapsed = time.perf_counter() - start
    return len(xs) * BATCH / elapsed


def bench_fused_kernel(model: StreamingModel, xs: list[torch.Tensor], rows: int = BATCH) -> float:
    """The scorer's own GRU step without the store (``rnn_core/slab_step.py``): two ``addmm`` into reused
    buffers and the compiled gate pass, on two preallocated state buffers a chunk (each call reads one and
    writes the other), ``rows`` events a call."""
    rnn = model.rnn
    w_ih_t, w_hh_t, b_ih, b_hh = rnn.weight_ih_l0.t(), rnn.weight_hh_l0.t(), rnn.bias_ih_l0, rnn.bias_hh_l0
    bounds = [(lo, min(BATCH, lo + rows)) for lo in range(0, BATCH, rows)]
    hs = [[np.zeros((hi - lo, HIDDEN_SIZE), np.float32) for _ in range(2)] for lo, hi in bounds]
    hts = [[torch.from_numpy(h) for h in pair] for pair in hs]
    gi, gh = (np.empty((min(rows, BATCH), 3 * HIDDEN_SIZE), np.float32) for _ in range(2))
    gi_t, gh_t = torch.from_numpy(gi), torch.from_numpy(gh)
    with torch.inference_mode():
        start = time.perf_counter()
        for t, x in enumerate(xs):
            for j, (lo, hi) in enumerate(bounds):
                m, now = hi - lo, t % 2
                torch.addmm(b_ih, x[lo:hi], w_ih_t, out=gi_t[:m])
                torch.addmm(b_hh, hts[j][now], w_hh_t, out=gh_t[:m])
                gru_gates(gi[:m], gh[:m], hs[j][now], hs[j][1 - now])
        elapsed = time.perf_counter() - start
    return len(xs) * BATCH / elapsed


def bench_mkl_kernel(model: StreamingModel, xs: list[np.ndarray], rows: int = BATCH) -> float:
    """The scorer's step where torch carries MKL, without the store (``rnn_core/gru_kernels.py``): the
    two products and the gate pass in one compiled call a chunk, on two preallocated state buffers a chunk
    (each call reads one and writes the other), ``rows`` events a call."""
    rnn = model.rnn
    w_ih, w_hh = (np.ascontiguousarray(w.detach().numpy().T) for w in (rnn.weight_ih_l0, rnn.weight_hh_l0))
    b_ih, b_hh = rnn.bias_ih_l0.detach().numpy(), rnn.bias_hh_l0.detach().numpy()
    bounds = [(lo, min(BATCH, lo + rows)) for lo in range(0, BATCH, rows)]
    hs = [[np.zeros((hi - lo, HIDDEN_SIZE), np.float32) for _ in range(2)] for lo, hi in bounds]
    gi, gh = (np.empty((min(rows, BATCH), 3 * HIDDEN_SIZE), np.float32) for _ in range(2))
    start = time.perf_counter()
    for t, x in enumerate(xs):
        for j, (lo, hi) in enumerate(bounds):
            now = t % 2
            gru_rows(x[lo:hi], hs[j][now], w_ih, w_hh, b_ih, b_hh, gi, gh, hs[j][1 - now])
    elapsed = time.perf_counter() - start
    return len(xs) * BATCH / elapsed


def bench_model_step(model: StreamingModel, xs: list[torch.Tensor], rows: int = BATCH) -> float:
    """``StreamingModel.step`` on preallocated states (no key lookup), ``rows`` events a call."""
    bounds = [(lo, min(BATCH, lo + rows)) for lo in range(0, BATCH, rows)]
    states = [model.init_state(hi - lo) for lo, hi in bounds]
    with torch.inference_mode():
        start = time.perf_counter()
        for x in xs:
            for j, (lo, hi) in enumerate(bounds):
                _, states[j] = model.step(x[lo:hi], states[j])
        elapsed = time.perf_counter() - start
    return len(xs) * BATCH / elapsed


def key_range(lo: int, hi: int) -> pa.Array:
    """Keys ``key-lo`` .. ``key-(hi-1)`` as an Arrow string array (no Python objects, for 10M keys)."""
    return pc.binary_join_element_wise("key-", pc.cast(pa.array(np.arange(lo, hi)), pa.string()), "")


def first_lookup_ms(state_shape: tuple[int, int, int]) -> tuple[float, float]:
    """(wall, CPU) ms of the first lookup of this process: numba loads (or, on a cold cache, compiles) the
    store's kernels. The CPU time is the figure that a loaded machine does not inflate."""
    wall, cpu = time.perf_counter(), time.process_time()
    KeyedStateStore(state_shape).lookup(["first"])
    return (time.perf_counter() - wall) * 1e3, (time.process_time() - cpu) * 1e3


def run(quick: bool, rounds: int | None = None, keys: int | None = None) -> dict[str, float | int | str]:
    torch.set_num_threads(1)
    num_keys = keys or (100_000 if quick else 1_000_000)
    rounds = rounds or (4 if quick else 6)
    per_round = 10 if quick else 20
    naive_batches = 2  # the naive loop is ~50x slower: two batches a round (a median of 8 or 12)
    rng = np.random.default_rng(0)
    model = make_model()
    first_ms, first_cpu_ms = first_lookup_ms(model.config.state_shape)

    process = psutil.Process()
    rss_before = process.memory_info().rss
    store = KeyedStateStore(model.config.state_shape)
    store.reserve(num_keys)
    scorer = StreamScorer(model, store)
    fill = 65_536
    zeros_x = np.zeros((fill, INPUT_SIZE), np.float32)
    started = time.perf_counter()
    for start in range(0, num_keys, fill):  # every key has a state before timing starts
        chunk = key_range(start, min(num_keys, start + fill))
        scorer.score(chunk, np.zeros(len(chunk), np.int64), zeros_x[: len(chunk)])
    fill_s = time.perf_counter() - started
    rss_per_key = (process.memory_info().rss - rss_before) / num_keys

    xs_np = [rng.standard_normal((BATCH, INPUT_SIZE)).astype(np.float32) for _ in range(per_round)]
    xs = [torch.from_numpy(x) for x in xs_np]
    spent: dict[str, list[float]] = {name: [] for name in METHODS}  # wall-clock seconds a batch
    cpu: dict[str, list[float]] = {name: [] for name in METHODS}  # this thread's CPU seconds a batch

    def timed(name: str, fn: Callable[..., float], *args: object) -> None:
        wall, cpu_start = time.perf_counter(), time.thread_time()
        fn(*args)
        spent[name].append(time.perf_counter() - wall)
        cpu[name].append(time.thread_time() - cpu_start)

    bench_kernel(model, xs[:2])  # warm up
    bench_fused_kernel(model, xs[:2], scorer.step_rows)
    bench_model_step(model, xs[:2], scorer.step_rows)
    if MKL_KERNELS:
        bench_mkl_kernel(model, xs_np[:2], scorer.step_rows)
    for r in range(rounds):
        # Batch by batch the methods alternate, so a busy neighbour slows all of them alike.
        keys = key_batches(rng, num_keys, per_round)
        arrow_keys = [pa.array(k) for k in key_batches(rng, num_keys, per_round)]
        for i in range(per_round):
            t = 100 * r + i
            timed("store", bench_store, scorer, arrow_keys[i : i + 1], xs_np[i : i + 1], t)
            timed("store_list", bench_store, scorer, keys[i : i + 1], xs_np[i : i + 1], t)
            timed("kernel_whole", bench_kernel, model, xs[i : i + 1])
            timed("kernel_chunked", bench_kernel, model, xs[i : i + 1], scorer.step_rows)
            timed("fused_whole", bench_fused_kernel, model, xs[i : i + 1])
            timed("fused_chunked", bench_fused_kernel, model, xs[i : i + 1], scorer.step_rows)
            timed("model_step", bench_model_step, model, xs[i : i + 1], scorer.step_rows)
            if MKL_KERNELS:
                timed("mkl_whole", bench_mkl_kernel, model, xs_np[i : i + 1])
                timed("mkl_chunked", bench_mkl_kernel, model, xs_np[i : i + 1], scorer.step_rows)
            if i < naive_batches:
                timed("naive", bench_naive, model, keys[i : i + 1], xs[i : i + 1])
    median = {name: BATCH / float(np.median(times)) for name, times in spent.items()}
    best = {name: BATCH / float(np.min(times)) for name, times in spent.items()}
    per_cpu = {name: BATCH / float(np.median(times)) for name, times in cpu.items()}
    # the bare kernel is credited with the fastest: gru_cell or the scorer's step, whole batch or chunked
    for d in (median, best, per_cpu):
        d["kernel"] = max(d[k] for k in KERNELS)
        d["gru_cell"] = max(d["kernel_whole"], d["kernel_chunked"])

    return {
        "num_keys": store.num_keys,
        "batch": BATCH,
        "torch_threads": torch.get_num_threads(),
        "batches_timed": len(spent["store"]),
        "naive_eps": round(median["naive"]),
        "store_eps": round(median["store"]),
        "kernel_eps": round(median["kernel"]),
        "store_vs_naive": round(median["store"] / median["naive"], 2),
        "store_vs_kernel": round(median["store"] / median["kernel"], 3),
        "bytes_per_key": round(store.nbytes / store.num_keys, 1),
        "raw_bytes_per_key": store.raw_bytes_per_key,
        "bytes_per_key_vs_raw": round(store.nbytes / store.num_keys / store.raw_bytes_per_key, 3),
        "rss_bytes_per_key": round(rss_per_key, 1),
        "rss_limit_bytes_per_key": 2 * store.raw_bytes_per_key + 100,
        "rss_gib": round(rss_per_key * num_keys / 2**30, 2),
        "fill_keys_per_s": round(num_keys / fill_s),
        "first_lookup_ms": round(first_ms, 1),
        "first_lookup_cpu_ms": round(first_cpu_ms, 1),
        # extras: keys as a Python list instead of an Arrow array, the model's step without the store,
        # and the ratios of the fastest batch of each method (timeit-style, less noise from neighbours)
        "store_list_eps": round(median["store_list"]),
        "kernel_whole_batch_eps": round(median["kernel_whole"]),
        "kernel_chunked_eps": round(median["kernel_chunked"]),
        "kernel_fused_whole_batch_eps": round(median["fused_whole"]),
        "kernel_fused_chunked_eps": round(median["fused_chunked"]),
        **{f"kernel_mkl_{k}_eps": round(median[f"mkl_{m}"]) for k, m in MKL_FIELDS},
        "kernel_best_of": max(KERNELS, key=lambda k: median[k]),
        "store_vs_gru_cell_kernel": round(median["store"] / median["gru_cell"], 3),
        "cpu_store_vs_gru_cell_kernel": round(per_cpu["store"] / per_cpu["gru_cell"], 3),
        "step_rows": scorer.step_rows,
        "model_step_eps": round(median["model_step"]),
        "store_list_vs_kernel": round(median["store_list"] / median["kernel"], 3),
        "model_step_vs_kernel": round(median["model_step"] / median["kernel"], 3),
        "best_store_vs_kernel": round(best["store"] / best["kernel"], 3),
        "best_store_vs_naive": round(best["store"] / best["naive"], 2),
        "best_store_list_vs_kernel": round(best["store_list"] / best["kernel"], 3),
        # the same ratios of CPU time (this thread's) a batch: what a shared, loaded machine inflates least
        "cpu_store_vs_kernel": round(per_cpu["store"] / per_cpu["kernel"], 3),
        "cpu_store_vs_naive": round(per_cpu["store"] / per_cpu["naive"], 2),
        "cpu_store_eps": round(per_cpu["store"]),
        "cpu_kernel_eps": round(per_cpu["kernel"]),
        "cpu_eps": {name: round(per_cpu[name]) for name in METHODS},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="100,000 keys, fewer rounds (< 30 s)")
    parser.add_argument("--keys", type=int, default=None, help="keys in the store (default 1M, --quick 100k)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    r = run(args.quick, keys=args.keys)
    r["seconds"] = round(time.perf_counter() - started, 1)
    if args.json:
        print(json.dumps(r))
        return 0
    print(
        f"GRU({INPUT_SIZE}->{HIDDEN_SIZE}), {r['num_keys']:,} keys, batches of {BATCH:,} random keys, "
        f"torch threads = {r['torch_threads']} (every method); median batch time of "
        f"{r['batches_timed']} interleaved batches"
    )
    print(f"  naive dict + GRUCell per event       : {r['naive_eps']:>12,} events/s")
    print(f"  rnnstream scorer, Arrow keys         : {r['store_eps']:>12,} events/s")
    print(f"  rnnstream scorer, Python list keys   : {r['store_list_eps']:>12,} events/s")
    print(f"  bare batched kernel, no store        : {r['kernel_eps']:>12,} events/s  (the fastest of:)")
    rows = r["step_rows"]
    for label, field in (
        (f"gru_cell, one call per batch of {BATCH}", "kernel_whole_batch_eps"),
        (f"gru_cell, calls of {rows} rows", "kernel_chunked_eps"),
        ("addmm + compiled gates, whole batch", "kernel_fused_whole_batch_eps"),
        (f"addmm + compiled gates, {rows} rows", "kernel_fused_chunked_eps"),
        ("MKL products in the compiled pass, whole batch", "kernel_mkl_whole_batch_eps"),
        (f"MKL products in the compiled pass, {rows} rows", "kernel_mkl_chunked_eps"),
    ):
        if field in r:
            print(f"    {label:<47}: {r[field]:>12,} events/s")
    print(f"  StreamingModel.step alone (no store) : {r['model_step_eps']:>12,} events/s")
    print(
        f"  store / naive  = {r['store_vs_naive']:.1f}x   "
        f"(target >= 25; fastest batches: {r['best_store_vs_naive']:.1f}x)"
    )
    print(
        f"  store / kernel = {r['store_vs_kernel']:.3f}   (target >= 0.85; fastest batches: "
        f"{r['best_store_vs_kernel']:.3f}; list keys {r['store_list_vs_kernel']:.3f})"
    )
    print(
        f"  by CPU time a batch: store / kernel = {r['cpu_store_vs_kernel']:.3f}, "
        f"store / naive = {r['cpu_store_vs_naive']:.1f}x"
    )
    print(f"  model.step / kernel = {r['model_step_vs_kernel']:.3f}")
    print(
        f"  store / gru_cell kernel = {r['store_vs_gru_cell_kernel']:.3f} "
        f"(CPU time: {r['cpu_store_vs_gru_cell_kernel']:.3f})"
    )
    print(
        f"  bytes per key  = {r['bytes_per_key']:.0f}  (raw state {r['raw_bytes_per_key']}: "
        f"{r['bytes_per_key_vs_raw']:.2f}x, target <= 1.5x)"
    )
    print(
        f"  RSS per key    = {r['rss_bytes_per_key']:.0f}  ({r['rss_gib']} GiB for {r['num_keys']:,} keys; "
        f"target <= {r['rss_limit_bytes_per_key']})"
    )
    print(f"  fill           = {r['fill_keys_per_s']:,} new keys/s through the scorer")
    print(
        f"  first lookup in this process = {r['first_lookup_ms']} ms, CPU {r['first_lookup_cpu_ms']} ms "
        "(numba kernels loaded from the cache, or compiled)"
    )
    print(f"  took {r['seconds']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
