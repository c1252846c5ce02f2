"""Generated log-template sessions (HDFS-like) through the no-code path: ``fit-file`` then ``score-file``.

**Generated data, not a public dataset.** One key a block (a session) of a storage system, each row one log
event given as its template id, a label per session (``normal``/``abnormal``, on every row of the session),
about 3% abnormal. The workflow of a normal session:

- ``E1`` allocate block; then for each of 3 replicas (2 or 4 rarely) a chain ``E2`` receiving block ->
  ``E3`` received block -> ``E4`` packet responder terminating, with ``E5`` addStoredBlock after each
  ``E3``; the replicas' chains interleave in a random order (the events of one replica keep their order);
- optional steps: ``E6`` verification succeeded (30%), ``E7`` served block repeated 0-8 times, a deletion
  ``E8`` + ``E9`` at the end (60%);
- short normal sessions too (8%): ``E1 E8 E9`` (a block allocated then deleted) or ``E1 E7 E7``;
- rare-but-normal paths: a re-replication ``E10`` + one more replica chain (~1.5%), a checksum retry
  ``E11`` (~0.7%).

Anomalies (as in HDFS): an exception template inserted (``E20``-``E23``, often followed by the session
stopping), a required step missing (a replica's ``E3`` or ``E5``), the session cut short, extra repeated
events (a replica's chain repeated or ``E2`` x5+), and very short abnormal sessions (2-6 events: an
allocation then an exception, or a start that stops).

The benchmark writes what a user would have (``session, ts, EventId, label``), fits with fit-file's defaults
on a training part (``normal-only``: the normal sessions, as DeepLog trains; ``mixed``: normal and abnormal
sessions with no label column given, as an unlabelled log would be; ``labelled``: the mixed part with
``--label-column label``, each session's verdict on all its rows), scores a test part with score-file,
and reports per session (a session is flagged when any of its rows alerts, its end score included):
precision/recall/F1 at the model's own alert threshold (and how it was chosen: ``threshold_null``
``empirical`` for the held-out sessions' own top share, ``model_expected`` for the model's expected share,
see rnnstream/files/expected_alerts.py), the FPR on normal sessions, recall by session length (<=6, 7-10,
>10 events, and <=10), and the best F1 (threshold chosen on the test labels: an upper bound) over each
session's highest score.

    python benchmarks/log_sessions.py [--quick] [--json] [--modes normal-only,mixed,labelled] [--seed N]
        [--holdout F]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from rnnstream.files.columns import FileColumns
from rnnstream.files.fitted_model import load_fitted, save_fitted
from rnnstream.files.fitting import FitOptions, fit_file
from rnnstream.files.scoring import score_file
from rnnstream.rnn_core import metrics

ABNORMAL_SHARE = 0.03
EXCEPTIONS = ("E20", "E21", "E22", "E23")
BUCKETS = ((0, 6, "recall_len_le6"), (7, 10, "recall_len_7_10"), (11, 10**9, "recall_len_gt10"))


# --------------------------------------------------------------------------------------------- generator
def _interleave(chains: list[list[str]], rng: np.random.Generator) -> list[str]:
    """The chains merged in a random order, each chain's own order kept."""
    pos = [0] * len(chains)
    out: list[str] = []
    while True:
        live = [i for i, c in enumerate(chains) if pos[i] < len(c)]
        if not live:
            return out
        i = live[int(rng.integers(len(live)))]
        out.append(chains[i][pos[i]])
        pos[i] += 1


def _replica() -> list[str]:
    return ["E2", "E3", "E5", "E4"]


def normal_session(rng: np.random.Generator) -> list[str]:
    u = rng.random()
    if u < 0.05:
        return ["E1", "E8", "E9"]
    if u < 0.08:
        return ["E1", *["E7"] * int(rng.integers(1, 4))]
    replicas = 3 if rng.random() < 0.9 else int(rng.choice([2, 4]))
    chains = [_replica() for _ in range(replicas)]
    if rng.random() < 0.007:  # rare normal: a checksum retry inside one replica's chain
        chains[0] = ["E2", "E11", "E2", "E3", "E5", "E4"]
    s = ["E1", *_interleave(chains, rng)]
    if rng.random() < 0.015:  # rare normal: re-replication to one more node
        s += ["E10", *_replica()]
    if rng.random() < 0.3:
        s.append("E6")
    s += ["E7"] * int(rng.integers(0, 9))
    if rng.random() < 0.6:
        s += ["E8", "E9"]
    return s


def abnormal_session(rng: np.random.Generator) -> tuple[list[str], str]:
    kind = str(rng.choice(["exception", "missing", "cut", "repeated", "short"]))
    s = normal_session(rng)
    while len(s) < 8:
        s = normal_session(rng)
    if kind == "exception":
        p = int(rng.integers(2, len(s)))
        s = [*s[:p], str(rng.choice(EXCEPTIONS))] + (s[p:] if rng.random() < 0.4 else [])
    elif kind == "missing":
        victim = str(rng.choice(["E3", "E5"]))
        idx = [i for i, t in enumerate(s) if t == victim]
        del s[idx[int(rng.integers(len(idx)))]]
    elif kind == "cut":
        last_chain = max(i for i, t in enumerate(s) if t == "E4")  # cut before the replicas are done
        s = s[: int(rng.integers(2, last_chain))]
    elif kind == "repeated":
        p = int(rng.integers(2, len(s)))
        extra = _replica() if rng.random() < 0.5 else ["E2"] * int(rng.integers(3, 6))
        s = [*s[:p], *extra, *s[p:]]
    else:
        n = int(rng.integers(2, 7))
        s = ["E1", *_interleave([_replica() for _ in range(3)], rng)][: n - 1]
        s.append(str(rng.choice(EXCEPTIONS)) if rng.random() < 0.5 else "E2")
    return s, kind


def sessions_frame(n: int, abnormal_share: float, rng: np.random.Generator, prefix: str) -> pd.DataFrame:
    """``n`` sessions (``abnormal_share`` of them abnormal) as rows ``session, ts, EventId, label, kind``;
    sessions overlap in time as a log's blocks do (rows sorted by time)."""
    rows = []
    start = 0
    for i in range(n):
        if rng.random() < abnormal_share:
            events, kind = abnormal_session(rng)
        else:
            events, kind = normal_session(rng), "normal"
        t = start + np.cumsum(rng.integers(1, 2000, size=len(events)))
        label = "normal" if kind == "normal" else "abnormal"
        rows += [(f"{prefix}{i}", int(ti), e, label, kind) for ti, e in zip(t, events, strict=True)]
        start += int(rng.integers(50, 400))
    frame = pd.DataFrame(rows, columns=["session", "ts", "EventId", "label", "kind"])
    return frame.sort_values(["ts", "session"], kind="stable").reset_index(drop=True)


# --------------------------------------------------------------------------------------------- evaluation
def session_metrics(scored: pd.DataFrame) -> dict:
    """Per-session figures from score-file's rows (``alert``, ``score``, ``end_score``) and the truth."""
    end = scored["end_score"] if "end_score" in scored else pd.Series(np.nan, index=scored.index)
    scored = scored.assign(top=np.fmax(scored["score"].to_numpy(float), end.to_numpy(float)))
    per = scored.groupby("session").agg(
        alert=("alert", "max"), top=("top", "max"), n=("alert", "size"), label=("label", "first"),
        kind=("kind", "first"),
    )  # fmt: skip
    truth = (per["label"] == "abnormal").to_numpy()
    flagged = per["alert"].to_numpy(bool)
    tp = int((flagged & truth).sum())
    precision = tp / max(1, int(flagged.sum()))
    recall = tp / max(1, int(truth.sum()))
    found = {
        "sessions": len(per),
        "abnormal": int(truth.sum()),
        "precision": precision,
        "recall": recall,
        "f1": 2 * precision * recall / (precision + recall) if precision + recall else 0.0,
        "fpr_normal": float(flagged[~truth].mean()),
    }
    for lo, hi, name in BUCKETS:
        inside = truth & (per["n"].to_numpy() >= lo) & (per["n"].to_numpy() <= hi)
        found[name] = float(flagged[inside].mean()) if inside.any() else float("nan")
        found[name.replace("recall", "n")] = int(inside.sum())
    short = truth & (per["n"].to_numpy() <= 10)  # the hidden sessions' weak spot: 10 events or fewer
    found["recall_len_le10"] = float(flagged[short].mean()) if short.any() else float("nan")
    for kind in ("exception", "missing", "cut", "repeated", "short"):
        inside = (per["kind"] == kind).to_numpy()
        found[f"recall_{kind}"] = float(flagged[inside].mean()) if inside.any() else float("nan")
    top = np.nan_to_num(per["top"].to_numpy(float), nan=1.0)
    found["best_f1_upper_bound"] = float(metrics.best_f1(truth.astype(int), top).f1)
    found["pr_auc"] = float(metrics.pr_auc(truth.astype(int), top))
    return found


def run_mode(
    mode: str,
    train: pd.DataFrame,
    test: pd.DataFrame,
    work: Path,
    progress: bool,
    holdout: float | None,
    trim: bool = False,
) -> dict:
    """fit-file (defaults; ``holdout`` = its --holdout when given) on the training part, score-file on the
    test part, per-session figures."""
    if mode == "normal-only":
        train = train[train["label"] == "normal"]
    train.drop(columns=["kind"]).to_csv(work / "train.csv", index=False)
    test.drop(columns=["kind"]).to_csv(work / "test.csv", index=False)
    label = "label" if mode == "labelled" else None  # labelled: a binary head, the verdict on every row
    columns = FileColumns(key="session", time="ts", token="EventId", label=label)
    started = time.perf_counter()
    options = FitOptions(progress=progress, trim_keys=trim)
    if holdout is not None:
        options = replace(options, holdout=holdout)
    fitted = fit_file(work / "train.csv", columns, options)
    fit_s = time.perf_counter() - started
    print(fitted.summary(), file=sys.stderr, flush=True)
    model, schema = load_fitted(save_fitted(fitted, work / "model"))
    started = time.perf_counter()
    out = score_file(model, schema, work / "test.csv", work / "scores.csv", progress=progress)
    score_s = time.perf_counter() - started
    scored = pd.read_csv(out.output)
    scored["kind"] = test["kind"].to_numpy()
    scored["label"] = test["label"].to_numpy()
    found = {"dataset": "generated-log-sessions", "mode": mode, "holdout": options.holdout, "trim": trim}
    found.update(session_metrics(scored))
    if fitted.schema.threshold is not None:
        found.update(threshold=fitted.schema.threshold.value, threshold_null=fitted.schema.threshold.null)
    found["holdout_top1"] = fitted.holdout_metrics.get("top1_accuracy", float("nan"))
    found.update(fit_s=round(fit_s, 1), score_s=round(score_s, 1))
    return found


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="fewer sessions (a few minutes on 2 cores)")
    p.add_argument("--json", action="store_true", help="one JSON object a line")
    p.add_argument("--modes", default="normal-only,mixed")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--holdout", type=float, default=None, help="fit-file --holdout (default: its own)")
    p.add_argument("--trim", action="store_true", help="fit-file with trim_keys (rnn_core/trimmed_loss.py)")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    rng = np.random.default_rng(args.seed)
    n_train, n_test = (3000, 5000) if args.quick else (20000, 30000)
    train = sessions_frame(n_train, ABNORMAL_SHARE, rng, "train-")
    test = sessions_frame(n_test, ABNORMAL_SHARE, rng, "test-")
    rows = []
    for mode in args.modes.split(","):
        with tempfile.TemporaryDirectory() as tmp:
            rows.append(run_mode(mode, train, test, Path(tmp), not args.json, args.holdout, args.trim))
        print(json.dumps(rows[-1]) if args.json else rows[-1], flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
