"""Training on one GPU vs the CPU of the same machine: sequences/s of a pipeline's model under Ray Train.

Runs the same training (``rnnstream.workers.train_loop``, truncated BPTT, one Ray Train worker) twice on one
generated stream: with ``use_gpu=True`` (one GPU, NCCL backend) and on CPU (one worker; its thread count
is the machine's cores). Reports steady-state sequences/s (epochs after the first) of each and the ratio.
Without a GPU it prints "no GPU here: skipped" and exits 0: that is not a failure.

    python benchmarks/train_gpu.py [--quick] [--json] [--pipeline fraud]
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
import torch

SETTINGS = {
    "quick": {"events": 60_000, "epochs": 3, "hidden_size": 128, "batch_keys": 256},
    "full": {"events": 300_000, "epochs": 4, "hidden_size": 256, "batch_keys": 512},
}


def run(pipeline: str, events: int, epochs: int, hidden_size: int, batch_keys: int, use_gpu: bool) -> dict:
    from rnnstream.jobs.training_data import generate_events
    from rnnstream.pipelines.spec import get_pipeline, model_config_replace
    from rnnstream.rnn_core.training import sequences_from_table
    from rnnstream.workers import train_loop

    spec = get_pipeline(pipeline)
    config = model_config_replace(spec.model_config, hidden_size=hidden_size)
    table = generate_events(spec, events, 0).table
    sequences = sequences_from_table(table, config.features, spec.label_column)
    start = train_loop.initial_model(config, sequences, 0)
    with tempfile.TemporaryDirectory(prefix="rnnstream-gpu-bench-") as tmp:
        pq.write_table(table, Path(tmp) / "train.parquet")
        cfg = train_loop.TrainLoopConfig(
            initial_model=train_loop.pack(start),
            train_path=str(Path(tmp) / "train.parquet"),
            label_column=spec.label_column,
            epochs=epochs,
            chunk_len=spec.training.chunk_len,
            batch_keys=batch_keys,
            learning_rate=spec.training.learning_rate,
            threads_per_worker=1 if use_gpu else max(1, (os.cpu_count() or 2) - 1),
        )
        train_loop.ensure_ray()
        started = time.perf_counter()
        outcome = train_loop.launch(cfg, Path(tmp) / "ray", train_loop.new_run_name("gpu-bench"), 1, use_gpu)
    steady = outcome.history[1:] or outcome.history
    return {
        "sequences_per_s": float(np.mean([h["sequences_per_s"] for h in steady])),
        "events_per_s": float(np.mean([h["events_per_s"] for h in steady])),
        "fit_seconds": time.perf_counter() - started,
        "final_train_loss": float(outcome.history[-1]["train_loss"]),
        "events": table.num_rows,
        "sequences": len(sequences),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--pipeline", default="fraud")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        msg = "no GPU here: skipped (train_gpu.py needs CUDA; run it on a machine with a GPU)"
        print(json.dumps({"skipped": True, "reason": msg}) if args.json else msg)
        return 0
    s = SETTINGS["quick" if args.quick else "full"]
    gpu = run(args.pipeline, s["events"], s["epochs"], s["hidden_size"], s["batch_keys"], use_gpu=True)
    cpu = run(args.pipeline, s["events"], s["epochs"], s["hidden_size"], s["batch_keys"], use_gpu=False)
    out = {
        "pipeline": args.pipeline,
        "gpu": torch.cuda.get_device_name(0),
        "cpu_count": os.cpu_count(),
        "hidden_size": s["hidden_size"],
        "batch_keys": s["batch_keys"],
        "events": gpu["events"],
        "sequences": gpu["sequences"],
        "gpu_sequences_per_s": gpu["sequences_per_s"],
        "cpu_sequences_per_s": cpu["sequences_per_s"],
        "gpu_events_per_s": gpu["events_per_s"],
        "cpu_events_per_s": cpu["events_per_s"],
        "gpu_vs_cpu": gpu["sequences_per_s"] / cpu["sequences_per_s"],
        "gpu_final_train_loss": gpu["final_train_loss"],
        "cpu_final_train_loss": cpu["final_train_loss"],
    }
    if args.json:
        print(json.dumps(out))
    else:
        print(
            f"{args.pipeline} on {out['gpu']} vs {out['cpu_count']} CPU cores ({out['sequences']} sequences):"
        )
        print(f"  GPU: {out['gpu_sequences_per_s']:.1f} sequences/s ({out['gpu_events_per_s']:.0f} events/s)")
        print(f"  CPU: {out['cpu_sequences_per_s']:.1f} sequences/s ({out['cpu_events_per_s']:.0f} events/s)")
        print(f"  GPU / CPU: {out['gpu_vs_cpu']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
