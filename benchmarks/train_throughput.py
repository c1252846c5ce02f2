"""Distributed training throughput: steady-state sequences/s with 1 and 2 Ray Train workers, in one run.

Trains a pipeline's default model (truncated BPTT, state carried across chunks) on a generated stream with
``rnnstream.workers.train_loop`` under Ray Train (DDP, gloo), first on 1 worker, then on 2, each worker
single-threaded (``torch.set_num_threads(1)``). A "sequence" is one key's whole event sequence; an epoch
trains on every key once. Throughput is measured inside the workers per epoch (slowest rank), averaged over
the epochs after the first, so Ray's start-up and the first epoch's warm-up are not counted.

    python benchmarks/train_throughput.py [--quick] [--json] [--pipeline fraud]

Key result: ``speedup_2_vs_1`` (wall clock; target >= 1.6; it needs 2 free cores). Beside it,
``cpu_bound_speedup_2_vs_1`` compares the busiest rank's CPU seconds per epoch, which other processes
competing for the cores do not inflate, and the 1-minute load average, to read a shared machine's result.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from rnnstream.jobs.training_data import generate_events
from rnnstream.pipelines.spec import get_pipeline, model_config_replace
from rnnstream.rnn_core.training import sequences_from_table
from rnnstream.workers import train_loop

# Steps big enough (keys x chunk x hidden) that compute, not the per-step gradient all-reduce, dominates.
SETTINGS = {
    "quick": {"events": 48_000, "epochs": 4, "hidden_size": 128, "chunk_len": 64, "batch_keys": 32},
    "full": {"events": 160_000, "epochs": 5, "hidden_size": 128, "chunk_len": 64, "batch_keys": 32},
}


def measure(
    pipeline: str,
    events: int,
    epochs: int,
    hidden_size: int,
    workers: list[int],
    use_gpu: bool = False,
    batch_keys: int | None = None,
    chunk_len: int | None = None,
    seed: int = 0,
) -> dict[str, dict[str, float]]:
    """Per worker count: steady-state sequences/s and events/s (mean of epochs after the first)."""
    spec = get_pipeline(pipeline)
    config = model_config_replace(spec.model_config, hidden_size=hidden_size)
    table = generate_events(spec, events, seed).table
    sequences = sequences_from_table(table, config.features, spec.label_column)
    start = train_loop.initial_model(config, sequences, seed)
    results: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="rnnstream-train-bench-") as tmp:
        data = Path(tmp) / "train.parquet"
        pq.write_table(table, data)
        cfg = train_loop.TrainLoopConfig(
            initial_model=train_loop.pack(start),
            train_path=str(data),
            label_column=spec.label_column,
            epochs=epochs,
            chunk_len=chunk_len or spec.training.chunk_len,
            batch_keys=batch_keys or spec.training.batch_keys,
            learning_rate=spec.training.learning_rate,
            seed=seed,
            threads_per_worker=1,
        )
        train_loop.ensure_ray(num_cpus=max(workers) + 1)
        for n in workers:
            started = time.perf_counter()
            name = f"bench-{n}{'-gpu' if use_gpu else ''}"
            outcome = train_loop.launch(cfg, Path(tmp) / "ray", train_loop.new_run_name(name), n, use_gpu)
            steady = outcome.history[1:] or outcome.history
            results[str(n)] = {
                "sequences_per_s": float(np.mean([h["sequences_per_s"] for h in steady])),
                "events_per_s": float(np.mean([h["events_per_s"] for h in steady])),
                "epoch_seconds": float(np.mean([h["epoch_seconds"] for h in steady])),
                "epoch_cpu_seconds": float(np.mean([h["epoch_cpu_seconds"] for h in steady])),
                "first_epoch_seconds": float(outcome.history[0]["epoch_seconds"]),
                "fit_seconds_total": time.perf_counter() - started,
                "final_train_loss": float(outcome.history[-1]["train_loss"]),
            }
    results["data"] = {"events": float(table.num_rows), "sequences": float(len(sequences))}
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller stream, fewer epochs")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--pipeline", default="fraud")
    args = parser.parse_args(argv)
    s = SETTINGS["quick" if args.quick else "full"]
    r = measure(
        args.pipeline,
        s["events"],
        s["epochs"],
        s["hidden_size"],
        workers=[1, 2],
        batch_keys=s["batch_keys"],
        chunk_len=s["chunk_len"],
    )
    out = {
        "pipeline": args.pipeline,
        "events": int(r["data"]["events"]),
        "sequences": int(r["data"]["sequences"]),
        "epochs": s["epochs"],
        "hidden_size": s["hidden_size"],
        "chunk_len": s["chunk_len"],
        "batch_keys": s["batch_keys"],
        "cpu_count": os.cpu_count(),
        "load_average_1m": os.getloadavg()[0],
        "sequences_per_s_1": r["1"]["sequences_per_s"],
        "sequences_per_s_2": r["2"]["sequences_per_s"],
        "events_per_s_1": r["1"]["events_per_s"],
        "events_per_s_2": r["2"]["events_per_s"],
        "fit_seconds_1": r["1"]["fit_seconds_total"],
        "fit_seconds_2": r["2"]["fit_seconds_total"],
        "speedup_2_vs_1": r["2"]["sequences_per_s"] / r["1"]["sequences_per_s"],
        # What 2 free cores would give: the busiest rank's CPU seconds per epoch, 1 worker vs 2.
        "cpu_bound_speedup_2_vs_1": r["1"]["epoch_cpu_seconds"] / r["2"]["epoch_cpu_seconds"],
        "target_speedup": 1.6,
    }
    if args.json:
        print(json.dumps(out))
    else:
        print(
            f"{args.pipeline}: {out['events']} events, {out['sequences']} key sequences, {s['epochs']} epochs"
        )
        for n in (1, 2):
            print(
                f"  {n} worker(s): {out[f'sequences_per_s_{n}']:.1f} sequences/s, "
                f"{out[f'events_per_s_{n}']:.0f} events/s "
                f"(steady state; fit() took {out[f'fit_seconds_{n}']:.0f} s)"
            )
        print(f"  speedup 2 vs 1: {out['speedup_2_vs_1']:.2f} (target >= 1.6; {os.cpu_count()} CPUs here)")
        print(
            f"  CPU-bound speedup (busiest rank's CPU s per epoch): {out['cpu_bound_speedup_2_vs_1']:.2f}; "
            f"load average {out['load_average_1m']:.1f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
