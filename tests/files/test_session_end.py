"""Sessions: truncated and reordered sessions, short ones included, are caught through fit-file's defaults.

One key a session (as log-template sessions of a storage system are): ``open``, an optional ``auth``, a
number of ``read``/``write`` blocks (some with a ``verify``), ``commit``, ``close``; 3 to 25 events. A
truncated session stops anywhere before its end (after one event, too): each of its events is one a normal
session has, so only a model that learned how sessions end (the end-of-key token) sees it. A reordered
session has two neighbouring events swapped; another has a template that training never saw. A session
counts as caught when any of its rows alerts (its events' scores and, on its last row, the end score), and
no more than 1% of normal sessions may be flagged.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from rnnstream.cli.main import main
from rnnstream.files.columns import FileColumns
from rnnstream.files.fitted_model import load_fitted
from rnnstream.files.fitting import FitOptions, fit_file
from rnnstream.files.session_end import END_TOKEN, end_code, has_end_token, keys_after, with_end_events
from rnnstream.rnn_core.key_sequences import KeySequences


def _normal(rng: np.random.Generator) -> list[str]:
    s = ["open"] + (["auth"] if rng.random() < 0.5 else [])
    for _ in range(int(rng.integers(0, 9))):
        s += ["read", "write"] if rng.random() < 0.7 else ["read", "verify", "write"]
    return [*s, "commit", "close"]


def _truncated(rng: np.random.Generator) -> list[str]:
    s = _normal(rng)
    return s[: int(rng.integers(1, len(s) - 1))]


def _reordered(rng: np.random.Generator) -> list[str]:
    s = _normal(rng)
    while True:
        p = int(rng.integers(0, len(s) - 1))
        if s[p] != s[p + 1]:
            s[p], s[p + 1] = s[p + 1], s[p]
            return s


def _unseen(rng: np.random.Generator) -> list[str]:
    """A normal session with a template training never saw (an exception a new release logs)."""
    s = _normal(rng)
    p = int(rng.integers(1, len(s)))
    return [*s[:p], "disk failure", *s[p:]]


KINDS = {"normal": _normal, "truncated": _truncated, "reordered": _reordered, "unseen": _unseen}


def _sessions(kinds: list[str], rng: np.random.Generator, prefix: str) -> pd.DataFrame:
    rows = []
    for i, kind in enumerate(kinds):
        for j, token in enumerate(KINDS[kind](rng)):
            rows.append((f"{prefix}{i}", 1000 * (10 * i + j), token, kind))
    return pd.DataFrame(rows, columns=["session", "ts", "event", "kind"])


def test_truncated_and_reordered_sessions_are_caught_at_one_percent_of_normal(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    train = _sessions(["normal"] * 600, rng, "t")
    kinds = ["normal"] * 600 + ["truncated"] * 80 + ["reordered"] * 80 + ["unseen"] * 20
    rng.shuffle(kinds)
    test = _sessions(kinds, rng, "x")
    train.drop(columns="kind").to_csv(tmp_path / "train.csv", index=False)
    test.drop(columns="kind").to_csv(tmp_path / "test.csv", index=False)
    fit = ["fit-file", "--input", str(tmp_path / "train.csv"), "--key-column", "session"]
    fit += ["--time-column", "ts", "--token-column", "event", "--model-out", str(tmp_path / "model")]
    assert main(fit) == 0
    _, schema = load_fitted(tmp_path / "model")
    assert has_end_token(schema) and schema.vocabulary[-1] == END_TOKEN
    score = ["score-file", "--model", str(tmp_path / "model"), "--input", str(tmp_path / "test.csv")]
    assert main([*score, "--output", str(tmp_path / "scores.csv")]) == 0

    out = pd.read_csv(tmp_path / "scores.csv")
    assert len(out) == len(test) and out["session"].tolist() == test["session"].tolist()
    # end_score: on each session's last row only
    last = ~out["session"].duplicated(keep="last")
    assert out.loc[last, "end_score"].notna().all() and out.loc[~last, "end_score"].isna().all()
    out["kind"] = test["kind"].to_numpy()
    per = out.groupby("session").agg(alert=("alert", "max"), kind=("kind", "first"), n=("alert", "size"))
    caught = per.groupby("kind")["alert"].mean()
    assert caught["normal"] <= 0.01, caught
    assert caught["truncated"] >= 0.9 and caught["reordered"] >= 0.9, caught
    # a template never seen in training is scored (the unknown code, which training never predicts) and alerts
    unseen = out[test["event"].to_numpy() == "disk failure"]
    assert len(unseen) == 20 and unseen["alert"].all() and (unseen["prob"] < 0.01).all()
    short = per[(per.kind == "truncated") & (per.n <= 3)]
    assert len(short) >= 10 and short["alert"].mean() >= 0.9  # sessions of 1-3 events are caught too
    # what catches a truncated session is its end: without end_score its rows look like a normal start
    ends = out[last & (out["kind"] == "truncated")]
    assert (ends["end_score"] >= schema.threshold.value).mean() >= 0.9
    assert (out.loc[out["kind"] == "truncated", "score"] >= schema.threshold.value).mean() < 0.05


def test_without_a_holdout_the_threshold_is_still_per_session(tmp_path: Path) -> None:
    """--holdout 0: the threshold is chosen on the training sessions, still over each session's highest score
    (a per-event 1% would flag most sessions of 10+ events)."""
    rng = np.random.default_rng(1)
    train = _sessions(["normal"] * 300, rng, "t")
    test = _sessions(["normal"] * 300 + ["truncated"] * 30, rng, "x")
    train.drop(columns="kind").to_csv(tmp_path / "train.csv", index=False)
    test.drop(columns="kind").to_csv(tmp_path / "test.csv", index=False)
    fit = ["fit-file", "--input", str(tmp_path / "train.csv"), "--key-column", "session", "--holdout", "0"]
    fit += ["--time-column", "ts", "--token-column", "event", "--model-out", str(tmp_path / "model")]
    assert main(fit) == 0
    _, schema = load_fitted(tmp_path / "model")
    assert schema.threshold is not None and schema.threshold.events == 300  # one highest score a session
    score = ["score-file", "--model", str(tmp_path / "model"), "--input", str(tmp_path / "test.csv")]
    assert main([*score, "--output", str(tmp_path / "scores.csv")]) == 0
    out = pd.read_csv(tmp_path / "scores.csv")
    out["kind"] = test["kind"].to_numpy()
    per = out.groupby("session").agg(alert=("alert", "max"), kind=("kind", "first"))
    caught = per.groupby("kind")["alert"].mean()
    assert caught["normal"] <= 0.03 and caught["truncated"] >= 0.8, caught


def test_sessions_going_on_past_the_rows_read_learn_no_end(tmp_path: Path) -> None:
    """--max-events cuts a time-ordered log where sessions overlap: those that go on after the cut did not end
    there, so their training sequences get no end event (the others do)."""
    rng = np.random.default_rng(2)
    frame = _sessions(["normal"] * 60, rng, "s")
    frame["ts"] = frame["ts"] // 7  # sessions overlap in time, as a log's blocks do
    frame = frame.sort_values(["ts", "session"], kind="stable").reset_index(drop=True)
    frame.drop(columns="kind").to_csv(tmp_path / "log.csv", index=False)
    cut = len(frame) // 2
    read, rest = set(frame["session"][:cut]), set(frame["session"][cut:])
    assert read & rest and read - rest  # some sessions straddle the cut, some end before it
    columns = FileColumns(key="session", time="ts", token="event")
    options = FitOptions(max_events=cut, epochs=1, progress=False, chunk_rows=97)
    fitted = fit_file(tmp_path / "log.csv", columns, options)
    assert f"{len(read & rest):,} sessions go on past the rows read" in " ".join(fitted.notes)
    assert keys_after(tmp_path / "log.csv", "session", cut, chunk_rows=97) == rest
    spec = fitted.model.config.features
    x = tuple(np.zeros((n, spec.input_size), np.float32) for n in (3, 4))
    ended = with_end_events(KeySequences(keys=("a", "b"), x=x), spec, still_open={"b"})
    assert [len(s) for s in ended.x] == [4, 4] and ended.x[0][-1, spec.num_continuous] == end_code(spec)
