"""Alert rules side by side on real server metrics: is a better calibrated alert possible from training data?

Issue 12 asks for F1 at the model's own threshold (chosen on training data alone) of at least 0.8x the F1 at
the best threshold on test labels. ASD meets it, SMD did not (0.75x): several SMD machines are 10-16%
anomalous in their test period and alert on 1-4% of their points at the 1% target. This benchmark fits and
scores ASD and SMD exactly as ``benchmarks/real_data.py`` does (fit-file and score-file defaults, one stream
of train then test per entity), then evaluates alert rules on the same scores, each rule's lines chosen on
the held-out part of the training data alone (each key's last ``holdout`` events, as fit-file holds out):

- ``stored``: ``score >= threshold``, fit-file's stored threshold (score-file's ``alert`` column);
- ``hysteresis_k``: production alerting's hysteresis: an alert opens at the stored threshold and stays open
  while the score stays at or above a lower clear line, the robust normal's line at ``k`` times the target
  FPR (:func:`~rnnstream.files.alert_threshold.robust_normal_threshold`), per key;
- ``hold_n``: an alert stays open ``n`` events after the last event at or above the threshold;
- ``lower_open_k``: no state, the threshold itself at ``k`` times the target FPR (how much of any gain is
  just alerting more often);
- ``per_key_k``: each key's own robust-normal line from its own held-out events at ``k`` times the target.

Printed per dataset: ``best_f1`` (best threshold on each entity's test labels, no point adjustment, mean
over entities; unchanged by every rule, which only reads the scores), each rule's ``f1`` (mean over
entities), ``ratio`` (f1 / best_f1) and ``alert_rate``; ``added_precision`` for the hysteresis rules (the
share of anomalous events among the events the rule adds to ``stored``: the test's anomaly rate is what a
random addition gets); and ``after_end``: the share of events alerting at offsets after an anomaly
segment ends (0 = its first normal event; how long the score lags the end of an anomaly).

    python benchmarks/alert_rules.py [--datasets asd,smd] [--data-dir DIR]

One JSON object a line, one per dataset.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import real_data  # noqa: E402  (the same fit-file / score-file run)

from rnnstream.files.alert_threshold import ABOVE_NEUTRAL, robust_normal_threshold  # noqa: E402
from rnnstream.files.columns import DEFAULT_TARGET_FPR, FileColumns  # noqa: E402
from rnnstream.files.fitting import FitOptions  # noqa: E402
from rnnstream.files.holdout import MIN_KEY_EVENTS_FOR_HOLDOUT  # noqa: E402
from rnnstream.rnn_core import metrics  # noqa: E402

HYSTERESIS_FACTORS = (2, 5, 10, 20)
HOLD_EVENTS = (2, 5, 10, 20)
LOWER_OPEN_FACTORS = (0.5, 2, 5, 10)
PER_KEY_FACTORS = (1, 2, 5)
AFTER_END_OFFSETS = (0, 5, 10, 20)


def hysteresis(score: np.ndarray, open_at: float, clear_at: float) -> np.ndarray:
    """One key's alerts: open when ``score >= open_at``, stay open while ``score >= clear_at``."""
    alert = np.zeros(score.size, dtype=bool)
    on = False
    for i, s in enumerate(score.tolist()):
        on = s >= open_at or (on and s >= clear_at)
        alert[i] = on
    return alert


def hold(score: np.ndarray, open_at: float, events: int) -> np.ndarray:
    """One key's alerts: each event at or above ``open_at`` and the ``events`` after it."""
    crossed = (score >= open_at).astype(np.int64)
    running = np.convolve(crossed, np.ones(events + 1, dtype=np.int64))[: score.size]
    return running > 0


def robust_line(held_out: np.ndarray, share: float) -> float:
    """The robust normal's line at ``share`` (fit-file's forecast rule), never at or below neutral."""
    line = robust_normal_threshold(held_out, share)
    return ABOVE_NEUTRAL if line is None else max(line, ABOVE_NEUTRAL)


def f1_of(label: np.ndarray, alert: np.ndarray) -> float:
    return real_data.f1_at(label, alert)


def after_end_profile(label: np.ndarray, alert: np.ndarray, offsets: tuple[int, ...]) -> list[list[bool]]:
    """For each offset: whether the event that far after each anomaly segment's end alerts."""
    edges = np.diff(np.r_[0, label, 0])
    ends = np.flatnonzero(edges == -1)
    return [[bool(alert[j + o]) for j in ends if j + o < label.size and not label[j + o]] for o in offsets]


def scored_stream(name: str, data_dir: Path, work: Path) -> dict:
    """fit-file on the training file, score-file on train then test (as ``real_data.run_metric_set``)."""
    train_csv, test_csv = data_dir / "train.csv.gz", data_dir / "test.csv.gz"
    train = real_data.read_csv(train_csv)
    values = tuple(n for n in train.column_names if n.startswith("m") and n[1:].isdigit())
    columns = FileColumns(key="entity", time="t", values=values)
    test = real_data.read_csv(test_csv, pa.schema([train.schema.field(c) for c in columns.used]))
    stream = work / "stream.parquet"
    pq.write_table(pa.concat_tables([train.select(columns.used), test.select(columns.used)]), stream)
    run = real_data.fit_and_score(train_csv, stream, columns, work, progress=False)
    score = run.scores.column("score").to_numpy().astype(np.float64)
    return {
        "threshold": float(run.threshold.split(">= ")[1].split(" ")[0]),
        "train_entity": np.asarray(train.column("entity").to_pylist()),
        "train_score": score[: train.num_rows],
        "entity": np.asarray(test.column("entity").to_pylist()),
        "label": test.column("label").to_numpy().astype(np.int64),
        "score": score[train.num_rows :],
    }


def held_out_tail(score: np.ndarray, holdout: float) -> np.ndarray:
    """A key's held-out part of its training events, as fit-file's ``split_tails`` cuts it."""
    n = score.size
    return score[n - (int(n * holdout) if n >= MIN_KEY_EVENTS_FOR_HOLDOUT else 0) :]


def evaluate(run: dict, target_fpr: float, holdout: float) -> dict:
    """Every rule's F1 per entity (mean), alert rate, and the diagnostics; see the module docstring."""
    entities = sorted(set(run["entity"].tolist()))
    held = {e: held_out_tail(run["train_score"][run["train_entity"] == e], holdout) for e in entities}
    pooled = np.concatenate([held[e] for e in entities])
    stored = run["threshold"]
    rules: dict[str, Callable[[str, np.ndarray], np.ndarray]] = {"stored": lambda e, s: s >= stored}
    for k in HYSTERESIS_FACTORS:
        clear = min(robust_line(pooled, k * target_fpr), stored)
        rules[f"hysteresis_{k}"] = lambda e, s, c=clear: hysteresis(s, stored, c)
    for n in HOLD_EVENTS:
        rules[f"hold_{n}"] = lambda e, s, n=n: hold(s, stored, n)
    for k in LOWER_OPEN_FACTORS:
        line = robust_line(pooled, k * target_fpr)
        rules[f"lower_open_{k}"] = lambda e, s, t=line: s >= t
    for k in PER_KEY_FACTORS:
        lines = {e: robust_line(held[e], k * target_fpr) for e in entities}
        rules[f"per_key_{k}"] = lambda e, s, lines=lines: s >= lines[e]
    per_entity = {e: (run["label"][run["entity"] == e], run["score"][run["entity"] == e]) for e in entities}
    best = float(np.mean([metrics.best_f1(y, s).f1 for y, s in per_entity.values()]))
    alerts = {name: {e: rule(e, s) for e, (_, s) in per_entity.items()} for name, rule in rules.items()}
    found = {}
    label_all = np.concatenate([per_entity[e][0] for e in entities])
    stored_all = np.concatenate([alerts["stored"][e] for e in entities])
    for name, by_entity in alerts.items():
        f1 = float(np.mean([f1_of(per_entity[e][0], by_entity[e]) for e in entities]))
        row = {"f1": round(f1, 4), "ratio": round(f1 / best, 3) if best else None}
        row["alert_rate"] = round(float(np.mean([a.mean() for a in by_entity.values()])), 4)
        if name.startswith("hysteresis"):
            added = np.concatenate([by_entity[e] for e in entities]) & ~stored_all
            row["added_precision"] = round(float(label_all[added].mean()), 3) if added.any() else None
        found[name] = row
    profile = [[] for _ in AFTER_END_OFFSETS]
    for e in entities:
        for i, at in enumerate(after_end_profile(per_entity[e][0], alerts["stored"][e], AFTER_END_OFFSETS)):
            profile[i].extend(at)
    return {
        "best_f1": round(best, 4),
        "stored_threshold": stored,
        "recomputed_threshold": robust_line(pooled, target_fpr),  # fit-file's rule on the same held-out part
        "anomaly_rate": round(float(label_all.mean()), 4),
        "rules": found,
        "after_end": {
            str(o): round(float(np.mean(p)), 3) if p else None
            for o, p in zip(AFTER_END_OFFSETS, profile, strict=True)
        },
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--datasets", default="asd,smd", help="comma-separated subset of asd,smd")
    parser.add_argument("--data-dir", type=Path, default=real_data.DEFAULT_DATA_DIR)
    args = parser.parse_args(argv)
    chosen = [d.strip() for d in args.datasets.split(",") if d.strip()]
    if set(chosen) - {"asd", "smd"}:
        parser.error("datasets: asd and/or smd")
    missing = [d for d in chosen if not (args.data_dir / d / "README.md").exists()]
    if missing:
        real_data.log(f"alert_rules: no {', '.join(missing)} in {args.data_dir} (pass --data-dir)")
        return 2
    torch.set_num_threads(1)
    options = FitOptions()
    for name in chosen:
        with tempfile.TemporaryDirectory(prefix=f"alert-rules-{name}-") as tmp:
            run = scored_stream(name, args.data_dir / name, Path(tmp))
        print(json.dumps({"dataset": name, **evaluate(run, DEFAULT_TARGET_FPR, options.holdout)}), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
