"""A generated stand-in for a public card-fraud table of anonymized transactions (``Time`` in seconds, 28
PCA-like features ``V1``..``V28``, a heavy-tailed ``Amount``, ``Class`` 1 for 0.17% of rows), through
``fit-file`` / ``score-file`` defaults, as a regression check for the classifier path on data shaped like
that (no per-card key: ``--key row`` gives each transaction its own key, ``--key const`` one key for all).

Frauds differ from genuine rows in a few of the features (shifted and wider) and in the amount; rows are
independent, so the recurrent state has nothing to carry. The first 60% of rows (by time) are the training
file; all rows are scored as one stream, the last 40% evaluated: ROC-AUC, AP, recall at 1% FPR.

    python benchmarks/card_fraud_standin.py [--rows 120000] [--key row|const] [--seeds 0,1,2]
        [--time-format auto|epoch_s] [--json]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import torch

from rnnstream.files.columns import FileColumns
from rnnstream.files.fitted_model import load_fitted, save_fitted
from rnnstream.files.fitting import FitOptions, fit_file
from rnnstream.files.scoring import score_file
from rnnstream.rnn_core import metrics

FRAUD_RATE = 0.0017
TRAIN_SHARE = 0.6


def card_table(rows: int, seed: int = 123) -> pd.DataFrame:
    """``Time``, ``V1``..``V28`` (variances falling as a PCA's do, 2% of rows with heavy tails), ``Amount``
    (log-normal), ``Class``; frauds shifted in eight of the features and wider, with larger amounts."""
    rng = np.random.default_rng(seed)
    t = np.sort(rng.uniform(0, 2 * 86_400, rows)).round().astype(np.int64)
    y = (rng.random(rows) < FRAUD_RATE).astype(np.int64)
    scales = np.sqrt(np.linspace(3.8, 0.1, 28))
    v = rng.normal(size=(rows, 28)) * scales
    heavy = rng.random(rows) < 0.02
    v[heavy] *= rng.uniform(2, 6, size=(int(heavy.sum()), 1))
    shift = np.zeros(28)
    shift[[0, 2, 3, 9, 10, 11, 13, 16]] = [-1.5, -2.5, 2.0, -2.0, 1.8, -3.0, -3.5, -2.5]
    frauds = int(y.sum())
    v[y == 1] = v[y == 1] * 1.8 + shift * scales * rng.uniform(0.3, 1.5, size=(frauds, 1))
    amount = np.exp(rng.normal(3.0, 1.4, rows))
    amount[y == 1] = np.exp(rng.normal(3.5, 2.0, frauds))
    return pd.DataFrame({"Time": t, **{f"V{i + 1}": v[:, i] for i in range(28)},
                         "Amount": amount.round(2), "Class": y})  # fmt: skip


def run(rows: int, key: str, seed: int, work: Path, time_format: str = "auto") -> dict:
    df = card_table(rows)
    df.insert(0, "card", 0 if key == "const" else np.arange(len(df)))
    cut = int(len(df) * TRAIN_SHARE)
    df.iloc[:cut].to_parquet(work / "train.parquet", index=False)
    df.drop(columns=["Class"]).to_parquet(work / "stream.parquet", index=False)
    values = (*(f"V{i}" for i in range(1, 29)), "Amount")
    columns = FileColumns(key="card", time="Time", values=values, label="Class")
    started = time.perf_counter()
    options = FitOptions(progress=False, seed=seed, time_format=time_format)
    fitted = fit_file(work / "train.parquet", columns, options)
    fit_s = time.perf_counter() - started
    model, schema = load_fitted(save_fitted(fitted, work / "model"))
    out = score_file(model, schema, work / "stream.parquet", work / "scores.parquet", progress=False)
    score = pq.read_table(out.output).column("score").to_numpy()[cut:].astype(np.float64)
    y = df["Class"].to_numpy()[cut:]
    return {
        "dataset": f"card-fraud-standin-{key}",
        "seed": seed,
        "roc_auc": round(metrics.roc_auc(y, score), 4),
        "pr_auc": round(metrics.pr_auc(y, score), 4),
        "recall_at_1pct_fpr": round(metrics.recall_at_fpr(y, score, 0.01), 4),
        "best_epoch": fitted.best_epoch + 1,
        "epochs": len(fitted.history),
        "fit_s": round(fit_s, 1),
        "test_events": int(y.size),
        "test_frauds": int(y.sum()),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=120_000)
    parser.add_argument("--key", choices=("row", "const"), default="row")
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--time-format", default="auto", help="fit-file's --time-format (auto: steps here)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # the CLI's --threads default
    for seed in (int(s) for s in args.seeds.split(",")):
        with tempfile.TemporaryDirectory(prefix="card-standin-") as tmp:
            row = run(args.rows, args.key, seed, Path(tmp), args.time_format)
        print(json.dumps(row) if args.json else
              f"{row['dataset']} seed {seed}: ROC-AUC {row['roc_auc']:.4f}  AP {row['pr_auc']:.4f}  "
              f"recall at 1% FPR {row['recall_at_1pct_fpr']:.4f}  best epoch {row['best_epoch']} of "
              f"{row['epochs']}  fit {row['fit_s']:.0f} s", flush=True)  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
