"""fit-file / score-file mistakes end with one clear line (exit 2), naming the column, row and value."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from rnnstream.cli.main import main
from tests.files.test_fitting import event_frame, fit_args, write


def run_error(args: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """Run the CLI, expect exit 2 and return its one-line error."""
    assert main(args) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
    assert len(err) == 1, err
    return err[0]


@pytest.fixture()
def csv_file(tmp_path: Path) -> Path:
    return write(event_frame(keys=2, events_per_key=30, label_classes=2), tmp_path / "e.csv")


def test_missing_column_lists_the_available_ones(csv_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    err = run_error(fit_args(csv_file, csv_file.parent / "m", value_columns="v0,cpu"), capsys)
    assert "no column(s) ['cpu']" in err and "'device', 'time', 'v0', 'v1', 'y'" in err


def test_unparseable_time_names_value_and_row(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    df = event_frame(keys=1, events_per_key=20)
    df.loc[4, "time"] = "yesterday"
    path = write(df, tmp_path / "e.csv")
    err = run_error(fit_args(path, tmp_path / "m", value_columns="v0"), capsys)
    assert "time column 'time'" in err and "'yesterday'" in err and "row 5" in err


def test_forced_epoch_format_on_dates_says_what_to_do(
    csv_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    err = run_error(
        [*fit_args(csv_file, csv_file.parent / "m", value_columns="v0"), "--time-format", "epoch_s"], capsys
    )
    assert "--time-format iso" in err


def test_non_numeric_value(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    df = event_frame(keys=1, events_per_key=20).astype({"v1": object})
    df.loc[7, "v1"] = "n/a!"
    path = write(df, tmp_path / "e.csv")
    err = run_error(fit_args(path, tmp_path / "m", value_columns="v0,v1"), capsys)
    assert "value column 'v1'" in err and "'n/a!'" in err and "row 8" in err


def test_empty_value(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    df = event_frame(keys=1, events_per_key=20)
    df.loc[2, "v0"] = None
    path = write(df, tmp_path / "e.parquet")
    err = run_error(fit_args(path, tmp_path / "m", value_columns="v0"), capsys)
    assert "value column 'v0' is empty at row 3" in err


def test_label_with_one_class(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    df = event_frame(keys=2, events_per_key=20).assign(y="ok")
    path = write(df, tmp_path / "e.csv")
    err = run_error(fit_args(path, tmp_path / "m", value_columns="v0", label_column="y"), capsys)
    assert "label column 'y' has only one class" in err


def test_model_used_with_a_file_lacking_its_columns(
    csv_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = csv_file.parent / "m"
    assert main([*fit_args(csv_file, model, value_columns="v0,v1"), "--epochs", "1"]) == 0
    other = write(pd.read_csv(csv_file).drop(columns=["v1"]), csv_file.parent / "other.csv")
    err = run_error(["score-file", "--model", str(model), "--input", str(other), "--output",
                     str(csv_file.parent / "s.csv"), "--no-progress"], capsys)  # fmt: skip
    assert "no column(s) ['v1'] needed by this model" in err
    assert not (csv_file.parent / "s.csv").exists()


def test_unknown_file_type_and_missing_file(csv_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    txt = csv_file.with_suffix(".txt")
    txt.write_text(csv_file.read_text())
    assert "use a .csv or .parquet file" in run_error(
        fit_args(txt, txt.parent / "m", value_columns="v0"), capsys
    )
    missing = csv_file.parent / "nope.csv"
    assert "no such file" in run_error(fit_args(missing, txt.parent / "m", value_columns="v0"), capsys)


def test_no_input_columns_named(csv_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    err = run_error(fit_args(csv_file, csv_file.parent / "m"), capsys)
    assert "--value-columns" in err


def test_not_a_fit_file_model(tmp_path: Path, csv_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "empty-model").mkdir()
    err = run_error(["score-file", "--model", str(tmp_path / "empty-model"), "--input", str(csv_file),
                     "--output", str(tmp_path / "s.csv")], capsys)  # fmt: skip
    assert "not a model made by `rnnstream fit-file`" in err


def test_output_must_be_csv_or_parquet(csv_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = csv_file.parent / "m"
    assert main([*fit_args(csv_file, model, value_columns="v0"), "--epochs", "1"]) == 0
    err = run_error(["score-file", "--model", str(model), "--input", str(csv_file), "--output",
                     str(csv_file.parent / "s.json")], capsys)  # fmt: skip
    assert "use a .csv or .parquet file" in err


def test_builtin_pipeline_name_is_refused(csv_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = [*fit_args(csv_file, csv_file.parent / "m", value_columns="v0"), "--pipeline", "fraud"]
    assert "built-in pipeline" in run_error(args, capsys)
