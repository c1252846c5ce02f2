"""Real data through the no-code path: ``fit-file`` then ``score-file`` with their defaults, on ASD and SMD
(server metrics) and the Fraud Detection Handbook's simulated card transactions.

One code path for every dataset (:func:`fit_and_score`): write the files a user would have, call
:func:`rnnstream.files.fitting.fit_file` with default :class:`FitOptions`, save and load the model as
``fit-file --model-out`` / ``score-file --model`` do, and :func:`rnnstream.files.scoring.score_file` the
stream (one torch thread, the CLI's default). Nothing here sets a model size, an epoch count or a threshold.

- **asd**, **smd** (``<data-dir>/asd``, ``<data-dir>/smd``): key ``entity``, time ``t`` (step numbers),
  the metric columns as values, no label (a forecast head). fit-file trains on ``train.csv.gz``; score-file
  scores train then test as one stream, so each entity's state (and its adaptive error statistics) carries
  into the test period, which alone is evaluated. Per entity, then the mean over entities:
  ``best_f1`` (the best threshold on that entity's test labels: an upper bound, as papers report it, no point
  adjustment), ``f1_at_threshold`` (score-file's ``alert`` column: the threshold fit-file stored, chosen on
  its held-out training tails alone, at most 1% of them alerting), ``best_f1_pa`` (best threshold *and* point
  adjustment: a labelled segment counts as found when any of its steps is flagged; never lower than best_f1).
- **fraud-handbook**: the handbook's split and 15 baseline features (:mod:`fraud_handbook`). Key =
  ``CUSTOMER_ID`` (the card: its recurrent state carries the card's history), time ``TX_DATETIME``, the 15
  features as values (the per-terminal features stand in for terminal state), label ``TX_FRAUD`` (a binary
  head). fit-file's file is the training week with its labels after the week before it with empty labels
  (rows that only feed each card's state); score-file scores every transaction from that first day through
  the test week as one stream (what a deployment would have seen: the delay week's transactions feed each
  card's state, their labels are not needed), so a card's state has as much history when scored as when
  trained. The test week without the known-compromised cards is evaluated: ``roc_auc``, ``pr_auc``
  (average precision), ``recall_at_1pct_fpr``, ``f1_at_threshold`` (the ``alert`` column: fit-file's best
  F1 on its held-out cards), ``card_precision_at_100`` (the handbook's CP@100). Anchor: the handbook's
  random forest, AUC 0.867, AP 0.658, CP@100 0.287 on this split.

    python benchmarks/real_data.py [--quick] [--json] [--datasets asd,smd,fraud-handbook] [--data-dir DIR]
        [--seed N]

``--json`` prints one JSON object a line, one per dataset. Without ``--quick`` the fraud part also runs the
handbook's random forest (sklearn defaults, ``random_state=0``) on the same features beside the model; it
gives the handbook's published figures, which checks the features. fit-file's defaults either way (the
model sees the whole training week: a comparison with the forest needs the same training data).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import fraud_handbook as handbook  # noqa: E402  (the handbook's split, features and CP@k)

from rnnstream.files.columns import FileColumns  # noqa: E402
from rnnstream.files.fitted_model import load_fitted, save_fitted  # noqa: E402
from rnnstream.files.fitting import FitOptions, fit_file  # noqa: E402
from rnnstream.files.scoring import score_file  # noqa: E402
from rnnstream.rnn_core import metrics  # noqa: E402

DEFAULT_DATA_DIR = HERE.parent.parent / "shared" / "data"
DATASETS = ("asd", "smd", "fraud-handbook")
CONTEXT_DAYS = 7  # unlabelled history before the training week (each card's state), scored the same way


@dataclass(frozen=True)
class FileRun:
    """score-file's output (one row per input row, in input order), the stored threshold, the timings."""

    scores: pa.Table
    threshold: str
    summary: str
    fit_s: float
    score_s: float


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def fit_and_score(
    train_path: Path, stream_path: Path, columns: FileColumns, work: Path, progress: bool, seed: int = 0
) -> FileRun:
    """``rnnstream fit-file --input train_path ... --model-out`` then ``rnnstream score-file --input
    stream_path``, with the CLI's defaults (``seed``: ``fit-file --seed``), through the functions the CLI
    calls."""
    started = time.perf_counter()
    fitted = fit_file(train_path, columns, FitOptions(progress=progress, seed=seed))
    fit_s = time.perf_counter() - started
    log(fitted.summary())
    model, schema = load_fitted(save_fitted(fitted, work / "model"))
    started = time.perf_counter()
    result = score_file(model, schema, stream_path, work / "scores.parquet", progress=progress, note=log)
    score_s = time.perf_counter() - started
    log(f"scored {result.rows:,} events of {result.keys:,} keys in {score_s:.1f} s")
    threshold = schema.threshold.describe() if schema.threshold is not None else "none"
    return FileRun(pq.read_table(result.output), threshold, fitted.summary(), fit_s, score_s)


# ----------------------------------------------------------------------------------------- ASD and SMD
def read_csv(path: Path, schema: pa.Schema | None = None) -> pa.Table:
    if schema is None:
        return pacsv.read_csv(path)
    types = dict(zip(schema.names, schema.types, strict=True))
    return pacsv.read_csv(path, convert_options=pacsv.ConvertOptions(column_types=types))


def f1_at(labels: np.ndarray, flagged: np.ndarray) -> float:
    tp = float(np.sum(flagged & (labels == 1)))
    denom = float(flagged.sum() + labels.sum())
    return 2.0 * tp / denom if denom else 0.0


def run_metric_set(name: str, data_dir: Path, work: Path, progress: bool, seed: int = 0) -> dict:
    """fit-file on ``train.csv.gz``, score-file on train then test (one stream), evaluate the test part."""
    train_csv, test_csv = data_dir / "train.csv.gz", data_dir / "test.csv.gz"
    train = read_csv(train_csv)
    values = tuple(n for n in train.column_names if n.startswith("m") and n[1:].isdigit())
    columns = FileColumns(key="entity", time="t", values=values)
    test = read_csv(test_csv, pa.schema([train.schema.field(c) for c in columns.used]))
    stream = work / "stream.parquet"  # t continues from each entity's training part into its test part
    pq.write_table(pa.concat_tables([train.select(columns.used), test.select(columns.used)]), stream)
    log(f"{name}: {train.num_rows:,} training and {test.num_rows:,} test events of "
        f"{len(set(train.column('entity').to_pylist()))} entities")  # fmt: skip
    run = fit_and_score(train_csv, stream, columns, work, progress, seed)
    scored = run.scores.slice(train.num_rows)
    entity = np.asarray(test.column("entity").to_pylist())
    label = test.column("label").to_numpy().astype(np.int64)
    score = scored.column("score").to_numpy().astype(np.float64)
    error_z = scored.column("error_z").to_numpy().astype(np.float64)
    alert = scored.column("alert").to_numpy(zero_copy_only=False).astype(bool)
    per_entity = {}
    for e in sorted(set(entity.tolist()), key=lambda s: [int(p) for p in s.split("-")[1:]]):
        rows = entity == e
        y = label[rows]
        per_entity[e] = {
            "anomaly_rate": round(float(y.mean()), 4),
            "best_f1": metrics.best_f1(y, score[rows]).f1,
            "f1_at_threshold": f1_at(y, alert[rows]),
            "best_f1_pa": metrics.best_f1_point_adjusted(y, score[rows]).f1,
            "best_f1_error_z": metrics.best_f1(y, error_z[rows]).f1,
            "alert_rate": float(alert[rows].mean()),
        }

    def mean(field: str) -> float:
        return round(float(np.mean([v[field] for v in per_entity.values()])), 4)

    best, at = mean("best_f1"), mean("f1_at_threshold")
    return {
        "dataset": name,
        "best_f1": best,
        "f1_at_threshold": at,
        "calibrated_vs_best": round(at / best, 3) if best else None,
        "best_f1_pa": mean("best_f1_pa"),
        "best_f1_error_z": mean("best_f1_error_z"),
        "alert_rate": mean("alert_rate"),
        "fit_s": round(run.fit_s, 1),
        "score_s": round(run.score_s, 1),
        "threshold": run.threshold,
        "rules": "best_f1: best threshold on each entity's test labels, no point adjustment (upper bound); "
        "f1_at_threshold: fit-file's stored threshold; best_f1_pa: best threshold, point-adjusted; "
        "means over entities",
        "train_events": train.num_rows,
        "test_events": test.num_rows,
        "per_entity": {k: {f: round(v, 4) for f, v in row.items()} for k, row in per_entity.items()},
    }


# -------------------------------------------------------------------------------------- fraud handbook
def run_fraud(data_dir: Path, work: Path, quick: bool, progress: bool, seed: int = 0) -> dict:
    """The handbook's split and features; fit-file on the training week with the week before it as
    unlabelled history, score-file from that history's first day through the test week."""
    first_day = handbook.TRAIN_DAYS[0] - CONTEXT_DAYS
    log(f"fraud-handbook: the handbook's split and baseline features (days {first_day}-135)")
    split = handbook.handbook_split(data_dir / "transactions.parquet", score_from_day=first_day)
    days = split.score["TX_TIME_DAYS"].to_numpy()
    used = [handbook.KEY, handbook.TIME, *handbook.FEATURES]
    # the training file: the training week with its labels, after a week whose rows only feed each card's
    # state (empty label), so a card's state at training time has seen what it will have seen when scored
    train = split.score.loc[days <= handbook.TRAIN_DAYS[1], [*used, handbook.LABEL]].copy()
    train[handbook.LABEL] = train[handbook.LABEL].astype("Int64")
    train.loc[days[days <= handbook.TRAIN_DAYS[1]] < handbook.TRAIN_DAYS[0], handbook.LABEL] = None
    train_path, stream_path = work / "train.parquet", work / "stream.parquet"
    train.to_parquet(train_path, index=False)
    split.score[used].to_parquet(stream_path, index=False)  # no labels in the scored stream
    labelled = train[handbook.LABEL].notna()
    log(f"fraud-handbook: training on {int(labelled.sum()):,} labelled transactions "
        f"({int(train[handbook.LABEL].sum())} frauds) after {int((~labelled).sum()):,} unlabelled ones, "
        f"scoring {len(split.score):,} (days {first_day}-{handbook.TEST_DAYS[1]}), "
        f"evaluating {len(split.test_rows):,}")  # fmt: skip
    columns = FileColumns(key=handbook.KEY, time=handbook.TIME, values=handbook.FEATURES,
                          label=handbook.LABEL)  # fmt: skip
    run = fit_and_score(train_path, stream_path, columns, work, progress, seed)
    test = split.test
    y = test[handbook.LABEL].to_numpy().astype(np.int64)
    score = run.scores.column("score").to_numpy()[split.test_rows].astype(np.float64)
    alert = run.scores.column("alert").to_numpy(zero_copy_only=False)[split.test_rows].astype(bool)
    return {
        "dataset": "fraud-handbook",
        **fraud_metrics(test, score),
        "f1_at_threshold": round(f1_at(y, alert), 4),
        "best_f1": round(metrics.best_f1(y, score).f1, 4),
        "fit_s": round(run.fit_s, 1),
        "score_s": round(run.score_s, 1),
        "seed": seed,
        "threshold": run.threshold,
        "protocol": "handbook Chapter 3 single split: train days 115-121 (days 108-114 as unlabelled "
        "history), delay 122-128, test 129-135 without known-compromised cards; scored as one stream "
        "from day 108",
        "anchor_handbook_random_forest": {"roc_auc": 0.867, "pr_auc": 0.658, "card_precision_at_100": 0.287},
        "reference_random_forest": None if quick else reference_forest(split),
        "train_events": int(labelled.sum()),
        "test_events": int(y.size),
        "test_frauds": int(y.sum()),
        "mode": "quick" if quick else "full",
    }


def fraud_metrics(test, score: np.ndarray) -> dict:
    y = test[handbook.LABEL].to_numpy().astype(np.int64)
    return {
        "roc_auc": round(metrics.roc_auc(y, score), 4),
        "pr_auc": round(metrics.pr_auc(y, score), 4),
        "recall_at_1pct_fpr": round(metrics.recall_at_fpr(y, score, 0.01), 4),
        "card_precision_at_100": round(handbook.card_precision_at_k(test, score, 100), 4),
    }


def reference_forest(split: handbook.HandbookSplit) -> dict | None:
    """The handbook's random forest (sklearn defaults, random_state 0, StandardScaler fitted on the training
    week) on the same features and split, run here: the side-by-side anchor for our feature computation."""
    try:
        from sklearn.ensemble import RandomForestClassifier
        from sklearn.preprocessing import StandardScaler
    except ImportError:
        return None
    log("fraud-handbook: the reference random forest on the same features (about a minute)")
    features = list(handbook.FEATURES)
    scaler = StandardScaler().fit(split.train[features])
    forest = RandomForestClassifier(random_state=0, n_jobs=1)
    forest.fit(scaler.transform(split.train[features]), split.train[handbook.LABEL])
    score = forest.predict_proba(scaler.transform(split.test[features]))[:, 1]
    return fraud_metrics(split.test, score)


# ------------------------------------------------------------------------------------------------ main
def print_table(rows: list[dict]) -> None:
    sets = [r for r in rows if r["dataset"] != "fraud-handbook"]
    if sets:
        print("metric sets (means over entities; best-F1: best threshold on test labels, an upper bound)")
        print(f"{'data':<6} {'best-F1':>8} {'F1 at threshold':>16} {'ratio':>6} {'best-F1 PA':>11} "
              f"{'error_z best-F1':>16} {'fit s':>6} {'score s':>8}")  # fmt: skip
        for r in sets:
            print(f"{r['dataset']:<6} {r['best_f1']:>8.3f} {r['f1_at_threshold']:>16.3f} "
                  f"{r['calibrated_vs_best'] or 0:>6.2f} {r['best_f1_pa']:>11.3f} "
                  f"{r['best_f1_error_z']:>16.3f} {r['fit_s']:>6.1f} {r['score_s']:>8.1f}")  # fmt: skip
        rules = "; ".join(f"{r['dataset']}: {r['threshold']}" for r in sets)
        print(f"PA = point-adjusted; threshold: {rules}")
    for r in rows:
        if r["dataset"] == "fraud-handbook":
            print(f"fraud-handbook ({r['protocol']}; {r['mode']})")
            print(
                f"  ROC-AUC {r['roc_auc']:.3f}  PR-AUC (AP) {r['pr_auc']:.3f}  "
                f"recall at 1% FPR {r['recall_at_1pct_fpr']:.3f}  "
                f"F1 at threshold {r['f1_at_threshold']:.3f}  CP@100 {r['card_precision_at_100']:.3f}  "
                f"fit {r['fit_s']:.1f} s  score {r['score_s']:.1f} s"
            )
            ref = r["reference_random_forest"]
            if ref:
                print(f"  handbook's random forest run here, same features: ROC-AUC {ref['roc_auc']:.3f}  "
                      f"AP {ref['pr_auc']:.3f}  CP@100 {ref['card_precision_at_100']:.3f}")  # fmt: skip
            print(f"  published random forest: ROC-AUC 0.867, AP 0.658, CP@100 0.287; {r['threshold']}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="skip the fraud reference forest run beside it")
    parser.add_argument("--json", action="store_true", help="one JSON object a line, one per dataset")
    parser.add_argument("--datasets", default=",".join(DATASETS), help="comma-separated subset")
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR, help="holds asd/, smd/, ...")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.add_argument("--seed", type=int, default=0, help="fit-file's --seed (default 0, the CLI's)")
    args = parser.parse_args(argv)
    chosen = [d.strip() for d in args.datasets.split(",") if d.strip()]
    unknown = sorted(set(chosen) - set(DATASETS))
    if unknown:
        parser.error(f"unknown dataset(s) {unknown}; choose from {', '.join(DATASETS)}")
    data_dir = args.data_dir.resolve()
    missing = [d for d in chosen if not (data_dir / d / "README.md").exists()]
    if missing:
        log(f"real_data: no {', '.join(missing)} in {data_dir} (pass --data-dir)")
        return 2
    torch.set_num_threads(1)  # the CLI's --threads default
    rows = []
    for name in chosen:
        with tempfile.TemporaryDirectory(prefix=f"real-data-{name}-") as tmp:
            if name == "fraud-handbook":
                row = run_fraud(data_dir / name, Path(tmp), args.quick, not args.no_progress, args.seed)
            else:
                row = run_metric_set(name, data_dir / name, Path(tmp), not args.no_progress, args.seed)
        rows.append(row)
        if args.json:
            print(json.dumps(row), flush=True)
    if not args.json:
        print_table(rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
