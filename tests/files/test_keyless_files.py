"""fit-file / score-file on a file without a key column (one series a file, e.g. NAB's ``timestamp,value``).

Through the real CLI: with no ``--key-column`` and no column called ``key`` the whole file is one key, the
summary says so, the sidecar remembers it (``"key": null``) so score-file needs no flags, and the scores equal
the offline forward over the whole series. A column called ``key`` is the key; a keyless model given such a
file stops with one line.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from rnnstream.cli.main import main
from rnnstream.files.columns import ONE_SERIES_NOTE, FileColumns
from rnnstream.files.schema import SIDECAR_NAME
from tests.files.test_file_errors import run_error
from tests.files.test_fitting import offline_outputs


def nab_frame(n: int = 240, seed: int = 0) -> pd.DataFrame:
    """One series as NAB stores it: ``timestamp`` like ``2014-04-01 00:00:00`` (no zone) and ``value``."""
    rng = np.random.default_rng(seed)
    times = pd.date_range("2014-04-01", periods=n, freq="5min")
    values = 10.0 + np.sin(np.arange(n) / 8.0) + 0.05 * rng.normal(size=n)
    return pd.DataFrame({"timestamp": times.strftime("%Y-%m-%d %H:%M:%S"), "value": values.round(4)})


def fit_keyless(src: Path, model: Path) -> list[str]:
    return ["fit-file", "--input", str(src), "--time-column", "timestamp", "--value-columns", "value",
            "--model-out", str(model), "--no-progress", "--epochs", "1"]  # fmt: skip


def score(model: Path, src: Path, out: Path) -> list[str]:
    return ["score-file", "--model", str(model), "--input", str(src), "--output", str(out), "--no-progress"]


@pytest.mark.parametrize("index_column", [False, True], ids=["nab-csv", "pandas-csv-with-index"])
def test_a_file_without_a_key_column_is_one_series(
    index_column: bool, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    df = nab_frame()
    src = tmp_path / "nab.csv"
    df.to_csv(src, index=index_column)  # pandas' index: a first column with an empty header
    model = tmp_path / "m"
    assert main(fit_keyless(src, model)) == 0
    summary = capsys.readouterr().out
    assert "of 1 keys" in summary and f"note: {ONE_SERIES_NOTE}" in summary
    sidecar = json.loads((model / SIDECAR_NAME).read_text())
    assert sidecar["columns"]["key"] is None and sidecar["head"] == "forecast"

    plain = tmp_path / "plain.csv"  # score a plain NAB file with the model: no flags
    df.to_csv(plain, index=False)
    out_path = tmp_path / "scores.csv"
    assert main(score(model, plain, out_path)) == 0
    assert "of 1 keys" in capsys.readouterr().out
    out = pd.read_csv(out_path, dtype={"timestamp": str})
    assert list(out.columns[:2]) == ["timestamp", "score"] and "key" not in out.columns
    assert out["timestamp"].tolist() == df["timestamp"].tolist()
    # one series: the same numbers as the offline forward over the whole file
    (expected,) = offline_outputs(model, plain).values()
    np.testing.assert_allclose(out["score"].to_numpy(), expected[:, 0], atol=1e-5)


def test_excel_csv_with_a_byte_order_mark_and_crlf(tmp_path: Path) -> None:
    src = tmp_path / "excel.csv"
    src.write_bytes(b"\xef\xbb\xbf" + nab_frame(60).to_csv(index=False, lineterminator="\r\n").encode())
    assert main(fit_keyless(src, tmp_path / "m")) == 0
    assert main(score(tmp_path / "m", src, tmp_path / "s.parquet")) == 0
    assert len(pd.read_parquet(tmp_path / "s.parquet")) == 60


def test_a_column_called_key_is_the_key_and_a_named_key_column_wins(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    a, b = nab_frame(80, seed=1), nab_frame(80, seed=2)
    df = pd.concat([a.assign(key="a", host="h1"), b.assign(key="b", host="h2")]).sort_values(
        "timestamp", kind="stable"
    )
    src = tmp_path / "keyed.csv"
    df.to_csv(src, index=False)
    assert main(fit_keyless(src, tmp_path / "by-name")) == 0
    assert "of 2 keys" in capsys.readouterr().out
    assert json.loads((tmp_path / "by-name" / SIDECAR_NAME).read_text())["columns"]["key"] == "key"

    assert main([*fit_keyless(src, tmp_path / "named"), "--key-column", "host"]) == 0
    assert json.loads((tmp_path / "named" / SIDECAR_NAME).read_text())["columns"]["key"] == "host"


def test_a_keyless_model_refuses_a_file_with_a_key_column(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = tmp_path / "nab.csv"
    nab_frame(60).to_csv(src, index=False)
    assert main(fit_keyless(src, tmp_path / "m")) == 0
    keyed = tmp_path / "keyed.csv"
    nab_frame(60).assign(key="a").to_csv(keyed, index=False)
    err = run_error(score(tmp_path / "m", keyed, tmp_path / "s.csv"), capsys)
    assert "fitted on one series" in err and "--key-column key" in err
    assert not (tmp_path / "s.csv").exists()


def test_bad_input_in_a_keyless_file_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    df = nab_frame(60)
    df.loc[9, "timestamp"] = "2014-04-01 25:99"
    src = tmp_path / "bad.csv"
    df.to_csv(src, index=False)
    err = run_error(fit_keyless(src, tmp_path / "m"), capsys)
    assert "time column 'timestamp'" in err and "'2014-04-01 25:99'" in err and "row 10" in err
    err = run_error(["fit-file", "--input", str(src), "--time-column", "timestamp", "--value-columns",
                     "cpu", "--model-out", str(tmp_path / "m"), "--no-progress"], capsys)  # fmt: skip
    assert "no column(s) ['cpu']" in err and "['timestamp', 'value']" in err


def test_keyless_columns_round_trip_and_read_only_what_they_name() -> None:
    cols = FileColumns(None, "timestamp", ("value",))
    assert cols.used == ("timestamp", "value")
    assert FileColumns.from_dict(json.loads(json.dumps(cols.to_dict()))) == cols
