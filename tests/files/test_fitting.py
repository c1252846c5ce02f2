"""fit-file / score-file on files of every kind, through the real CLI: every head, CSV and Parquet.

The files are small and seeded (a few hundred events). Besides the shape of the output (one row per input
row, same order, the right columns), the scores are checked against the offline ``forward`` of each key's
whole sequence: score-file must apply the same streaming step, with the state carried across the file.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
import torch

from rnnstream.cli.main import main
from rnnstream.files.fitted_model import load_fitted
from rnnstream.files.reader import RawChunk
from rnnstream.files.schema import SIDECAR_NAME
from rnnstream.rnn_core.training import sequences_from_table

BASE = pd.Timestamp("2024-03-01T00:00:00Z")


# ------------------------------------------------------------------------------------------------ test data
def event_frame(
    *,
    keys: int = 3,
    events_per_key: int = 120,
    irregular: bool = True,
    values: int = 2,
    token: bool = False,
    label_classes: int = 0,
    time_kind: str = "iso",
    seed: int = 0,
) -> pd.DataFrame:
    """Interleaved keys in time order. Values follow a per-key cycle, tokens cycle a-b-c-d (rarely "zz"),
    the label of an event depends on the key's previous value (memory helps); time as ISO strings, epoch
    seconds or milliseconds, Arrow timestamps, or step numbers."""
    rng = np.random.default_rng(seed)
    rows = []
    for k in range(keys):
        t = 0.0
        prev = 0.0
        for i in range(events_per_key):
            t += float(rng.exponential(30.0)) + 1.0 if irregular else 30.0
            v = np.sin(i / 5.0 + k) + 0.05 * rng.normal()
            row: dict = {"device": f"dev-{k}", "t": t}
            for j in range(values):
                row[f"v{j}"] = v * (j + 1) + 0.01 * j
            if token:
                row["tok"] = "abcd"[i % 4] if rng.random() > 0.02 else "zz"
            if label_classes == 2:
                row["y"] = "alert" if prev > 0.8 else "ok"
            elif label_classes > 2:
                row["y"] = f"c{int((prev + 1.0) / 2.0 * label_classes) % label_classes}"
            rows.append(row)
            prev = v
    df = pd.DataFrame(rows).sort_values(["t", "device"], kind="stable").reset_index(drop=True)
    seconds = df.pop("t")
    if time_kind == "iso":
        df.insert(1, "time", [(BASE + pd.Timedelta(seconds=s)).isoformat() for s in seconds])
    elif time_kind == "epoch_s":
        df.insert(1, "time", (BASE.timestamp() + seconds).round(3))
    elif time_kind == "epoch_ms":
        df.insert(1, "time", (BASE.timestamp() * 1000 + seconds * 1000).round().astype("int64"))
    elif time_kind == "timestamp":
        df.insert(1, "time", BASE + pd.to_timedelta(seconds, unit="s"))
    else:  # step numbers
        df.insert(1, "time", (seconds / 30.0).round(3) if irregular else np.arange(len(seconds)) // keys)
    return df


def write(df: pd.DataFrame, path: Path) -> Path:
    if path.suffix == ".parquet":
        df.to_parquet(path, index=False)
    else:
        df.to_csv(path, index=False)
    return path


def read(path: Path) -> pd.DataFrame:
    return pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path, dtype={"time": str})


def fit_args(path: Path, out: Path, **cols: str) -> list[str]:
    args = ["fit-file", "--input", str(path), "--key-column", "device", "--time-column", "time"]
    for flag, value in cols.items():
        args += [f"--{flag.replace('_', '-')}", value]
    return [*args, "--model-out", str(out), "--no-progress"]


def offline_outputs(model_dir: Path, input_path: Path) -> dict[str, np.ndarray]:
    """Each key's outputs from ``forward`` over its whole sequence (the law says step == forward)."""
    model, schema = load_fitted(model_dir)
    df = read(input_path)
    table = pa.Table.from_pandas(df, preserve_index=False)
    events = schema.events(RawChunk(table, 0))
    seqs = sequences_from_table(events, model.config.features)
    out = {}
    with torch.no_grad():
        for key, x in zip(seqs.keys, seqs.x, strict=True):
            y, _ = model(torch.from_numpy(x).unsqueeze(0))
            out[key] = y[0].numpy()
    return out


# -------------------------------------------------------------------------------------------------- cases
CASES = {
    # name: (frame kwargs, file suffix, column flags, expected head, expected score columns)
    "binary-csv-iso-multivariate": (
        {"label_classes": 2, "time_kind": "iso"},
        ".csv",
        {"value_columns": "v0,v1", "label_column": "y"},
        "binary",
        ["score", "alert"],
    ),
    "binary-parquet-values-and-token": (
        {"label_classes": 2, "token": True, "values": 1, "time_kind": "epoch_s"},
        ".parquet",
        {"value_columns": "v0", "token_column": "tok", "label_column": "y"},
        "binary",
        ["score", "alert"],
    ),
    "multiclass-parquet-epoch-ms": (
        {"label_classes": 3, "time_kind": "epoch_ms", "values": 3},
        ".parquet",
        {"value_columns": "v0,v1,v2", "label_column": "y"},
        "multiclass",
        ["class", "p_c0", "p_c1", "p_c2"],
    ),
    "forecast-csv-one-key-univariate-regular-steps": (
        {"keys": 1, "events_per_key": 300, "irregular": False, "values": 1, "time_kind": "step"},
        ".csv",
        {"value_columns": "v0"},
        "forecast",
        ["score", "error_z", "forecast_v0", "score_static", "anomaly_z", "alert"],
    ),
    "forecast-parquet-timestamps": (
        {"keys": 4, "time_kind": "timestamp"},
        ".parquet",
        {"value_columns": "v0,v1"},
        "forecast",
        ["score", "error_z", "forecast_v0", "forecast_v1", "score_static", "anomaly_z", "alert"],
    ),
    "next-token-parquet-epoch-s": (
        {"keys": 3, "values": 0, "token": True, "time_kind": "epoch_s"},
        ".parquet",
        {"token_column": "tok"},
        "next_token",
        ["score", "rank", "prob", "alert"],
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_fit_then_score_every_head(case: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    frame_kw, suffix, cols, head, score_cols = CASES[case]
    df = event_frame(**frame_kw)
    src = write(df, tmp_path / f"events{suffix}")
    model_dir = tmp_path / "model"
    assert main([*fit_args(src, model_dir, **cols), "--epochs", "3"]) == 0
    assert f"fitted a {head} model" in capsys.readouterr().out
    sidecar = json.loads((model_dir / SIDECAR_NAME).read_text())
    assert sidecar["head"] == head and sidecar["columns"]["key"] == "device"

    # Score the file in the other format, in small chunks, so state must carry across chunks.
    other = write(df, tmp_path / ("again.csv" if suffix == ".parquet" else "again.parquet"))
    out_path = tmp_path / "scores.parquet"
    assert main(["score-file", "--model", str(model_dir), "--input", str(other), "--output", str(out_path),
                 "--chunk-rows", "50", "--no-progress"]) == 0  # fmt: skip
    out = pd.read_parquet(out_path)
    assert len(out) == len(df)
    assert list(out.columns[:2]) == ["device", "time"]
    assert out["device"].tolist() == df["device"].tolist()  # same order as the input
    label_cols = ["y"] if "label_column" in cols else []
    assert list(out.columns[2:]) == label_cols + score_cols
    assert out["score" if "score" in score_cols else "p_c0"].between(0, 1).all()
    if "alert" in score_cols:  # the stored threshold, chosen by fit-file on its own held-out part
        threshold = sidecar["threshold"]["value"]
        assert out["alert"].tolist() == (out["score"] >= threshold).tolist()

    # The same numbers as the offline forward over each key's sequence.
    offline = offline_outputs(model_dir, src)
    model, _ = load_fitted(model_dir)
    names = model.output_names()
    for key, expected in offline.items():
        got = out[out["device"] == key]
        if head == "multiclass":
            np.testing.assert_allclose(got[["p_c0", "p_c1", "p_c2"]].to_numpy(), expected, atol=1e-5)
        else:
            np.testing.assert_allclose(got["score"].to_numpy(), expected[:, names.index("score")], atol=1e-5)
        if head == "next_token":
            np.testing.assert_array_equal(got["rank"].to_numpy(), expected[:, names.index("rank")].round())
        if head == "forecast":
            np.testing.assert_allclose(got["forecast_v0"].to_numpy(), expected[:, 2], atol=1e-4)


def test_score_csv_output_keeps_the_input_time_text(tmp_path: Path) -> None:
    df = event_frame(keys=2, events_per_key=40, label_classes=2)
    src = write(df, tmp_path / "e.csv")
    assert main([*fit_args(src, tmp_path / "m", value_columns="v0", label_column="y"), "--epochs", "1"]) == 0
    out_path = tmp_path / "s.csv"
    assert main(["score-file", "--model", str(tmp_path / "m"), "--input", str(src), "--output", str(out_path),
                 "--no-progress"]) == 0  # fmt: skip
    out = pd.read_csv(out_path, dtype={"time": str})
    assert out["time"].tolist() == df["time"].tolist()
    assert out["y"].tolist() == df["y"].tolist()


def test_next_token_learns_a_cycle_and_stops_early(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    df = event_frame(keys=2, events_per_key=200, values=0, token=True, time_kind="epoch_ms")
    src = write(df, tmp_path / "logs.parquet")
    assert main([*fit_args(src, tmp_path / "m", token_column="tok"), "--epochs", "15"]) == 0
    text = capsys.readouterr().out
    top1 = float(text.split("top1_accuracy ")[1].split(",")[0])
    assert top1 > 0.9, text  # a-b-c-d cycle: the next token is known from the previous one


def test_binary_positive_class_is_the_rarer_label(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    df = event_frame(keys=2, events_per_key=80, label_classes=2)
    src = write(df, tmp_path / "e.csv")
    assert main([*fit_args(src, tmp_path / "m", value_columns="v0", label_column="y"), "--epochs", "1"]) == 0
    assert "positive class: 'alert'" in capsys.readouterr().out
    _, schema = load_fitted(tmp_path / "m")
    assert schema.classes == ("ok", "alert")


def test_keys_out_of_time_order_are_sorted_with_a_note(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    df = event_frame(keys=3, events_per_key=60)
    src = write(df, tmp_path / "sorted.csv")
    assert main([*fit_args(src, tmp_path / "m", value_columns="v0,v1"), "--epochs", "1"]) == 0
    shuffled = df.sample(frac=1.0, random_state=1).reset_index(drop=True)
    shuffled_path = write(shuffled, tmp_path / "shuffled.csv")
    capsys.readouterr()
    for name, path in (("a", src), ("b", shuffled_path)):
        assert main(["score-file", "--model", str(tmp_path / "m"), "--input", str(path),
                     "--output", str(tmp_path / f"{name}.csv"), "--no-progress"]) == 0  # fmt: skip
    assert "not in time order within each key" in capsys.readouterr().err
    a = pd.read_csv(tmp_path / "a.csv", dtype={"time": str})
    b = pd.read_csv(tmp_path / "b.csv", dtype={"time": str})
    assert b["time"].tolist() == shuffled["time"].tolist()  # output in the input's order
    merged = b.merge(a, on=["device", "time"], suffixes=("_b", "_a"))
    np.testing.assert_allclose(merged["score_b"], merged["score_a"], atol=1e-6)


def test_register_and_score_from_mlflow(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.setenv("RNNSTREAM_HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    df = event_frame(keys=2, events_per_key=50, label_classes=2)
    src = write(df, tmp_path / "e.csv")
    args = [a for a in fit_args(src, tmp_path / "unused", value_columns="v0", label_column="y")
            if a not in ("--model-out", str(tmp_path / "unused"))]  # fmt: skip
    assert main([*args, "--register", "--pipeline", "mydata", "--epochs", "1"]) == 0
    out = tmp_path / "s.parquet"
    assert main(["score-file", "--model", "models:/rnnstream-mydata@champion", "--input", str(src),
                 "--output", str(out), "--no-progress"]) == 0  # fmt: skip
    assert len(pd.read_parquet(out)) == len(df)


def test_session_like_data_holds_out_whole_keys_not_their_endings() -> None:
    from rnnstream.files.holdout import is_session_like, split_tails
    from rnnstream.rnn_core.training import KeySequences

    rng = np.random.default_rng(0)
    sessions = KeySequences(
        keys=tuple(f"s{i}" for i in range(100)),
        x=tuple(rng.normal(size=(int(n), 2)).astype(np.float32) for n in rng.integers(3, 30, 100)),
    )
    long_lived = KeySequences(
        keys=("a", "b"), x=(np.zeros((500, 2), np.float32), np.zeros((400, 2), np.float32))
    )
    assert is_session_like(sessions) and not is_session_like(long_lived)
    train, cuts = split_tails(sessions, 0.2, by_key=True, seed=1)
    held = [i for i, c in enumerate(cuts) if c == 0]
    assert len(held) == 20 and all(cuts[i] == len(sessions.x[i]) for i in range(100) if i not in held)
    assert len(train) == 80 and set(train.keys) == {sessions.keys[i] for i in range(100) if i not in held}
    assert split_tails(sessions, 0.2, by_key=True, seed=1)[1].tolist() == cuts.tolist()  # seeded
    _, tail_cuts = split_tails(long_lived, 0.2)
    assert tail_cuts.tolist() == [400, 320]  # long-lived keys keep the tail rule


def test_rows_without_a_label_feed_the_state_and_are_not_learned_from(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Delayed labels: each key's first half has an empty label (history before the labelled period). fit-file
    accepts it, says how many rows only feed their key's state, and learns from the labelled rest; the same
    file with those rows' labels all set to one class fits a different model (a blank is not a class)."""
    df = event_frame(keys=3, events_per_key=100, label_classes=2)
    first_half = df.groupby("device").cumcount() < 50
    blank = df.copy()
    blank.loc[first_half, "y"] = None
    src = write(blank, tmp_path / "blank.parquet")
    flags = {"value_columns": "v0,v1", "label_column": "y"}
    assert main([*fit_args(src, tmp_path / "m", **flags), "--epochs", "2"]) == 0
    assert "150 rows have no label: they feed their key's state" in capsys.readouterr().out
    model, schema = load_fitted(tmp_path / "m")
    assert schema.classes == ("ok", "alert")
    assert schema.threshold is not None
    ones = df.copy()
    ones.loc[first_half, "y"] = "alert"
    src_ones = write(ones, tmp_path / "ones.parquet")
    assert main([*fit_args(src_ones, tmp_path / "m1", **flags), "--epochs", "2"]) == 0
    other, _ = load_fitted(tmp_path / "m1")
    w, w1 = model.state_dict(), other.state_dict()
    assert any(not torch.equal(w[k], w1[k]) for k in w)


def test_an_unknown_label_value_is_still_an_error() -> None:
    from rnnstream.errors import UsageError
    from rnnstream.files.schema import label_codes

    codes = label_codes(pa.array(["ok", None, "alert"]), ("ok", "alert"), "y", 0)
    assert codes.to_pylist() == [0, None, 1]
    with pytest.raises(UsageError, match="label column 'y' has the value 'maybe', not one of"):
        label_codes(pa.array(["ok", "maybe"]), ("ok", "alert"), "y", 0)


def test_a_label_column_empty_in_every_row_says_so() -> None:
    from rnnstream.errors import UsageError
    from rnnstream.files.columns import FileColumns
    from rnnstream.files.schema import choose_head

    columns = FileColumns(key="device", time="time", values=("v0",), label="y")
    with pytest.raises(UsageError, match="label column 'y' has no value in any row"):
        choose_head(columns, 0)
    with pytest.raises(UsageError, match="label column 'y' has only one class"):
        choose_head(columns, 1)
