"""fit-file's seed ensemble for classifiers: by default three models from independent seeds on one split,
folded into one model that serving sees as any other (rnn_core/seed_ensemble.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from rnnstream.cli.main import main
from rnnstream.errors import UsageError
from rnnstream.files.fitted_model import load_fitted
from rnnstream.files.fitting import CLASSIFIER_MEMBERS, ENSEMBLE_MAX_EVENTS, FitOptions, ensemble_members
from rnnstream.rnn_core.config import FeatureSpec, ModelConfig
from rnnstream.rnn_core.training import seeded_model
from tests.files.test_fitting import event_frame, fit_args, write


def test_default_classifier_is_three_seeds_folded_and_member_one_is_the_single_model(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = write(event_frame(keys=3, events_per_key=80, label_classes=2), tmp_path / "events.parquet")
    flags = {"value_columns": "v0,v1", "label_column": "y"}
    assert main([*fit_args(src, tmp_path / "ens", **flags), "--epochs", "2"]) == 0
    assert "a seed ensemble of 3 models" in capsys.readouterr().out
    assert main([*fit_args(src, tmp_path / "one", **flags), "--epochs", "2", "--members", "1"]) == 0
    assert "seed ensemble" not in capsys.readouterr().out
    ensemble, schema = load_fitted(tmp_path / "ens")
    single, _ = load_fitted(tmp_path / "one")
    h = single.hidden_size
    assert ensemble.hidden_size == 3 * h
    assert schema.threshold is not None
    # member 0 trained from --seed on the same split as the single model: its blocks are that model's weights
    w_hh, w_hh_single = ensemble.rnn.weight_hh_l0, single.rnn.weight_hh_l0
    for gate in range(3):  # GRU: reset, update, new
        rows = slice(gate * 3 * h, gate * 3 * h + h)
        torch.testing.assert_close(w_hh[rows, :h], w_hh_single[gate * h : (gate + 1) * h])
        assert torch.count_nonzero(w_hh[rows, h:]) == 0  # member 0 reads only its own state
    torch.testing.assert_close(ensemble.head.weight[:, :h] * 3, single.head.weight)


def test_members_on_a_model_that_cannot_fold_is_one_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = write(event_frame(keys=2, events_per_key=40, values=0, token=True), tmp_path / "tokens.parquet")
    args = [*fit_args(src, tmp_path / "m", token_column="tok"), "--epochs", "1", "--members", "2"]
    assert main(args) != 0
    assert "--members: only classifiers" in capsys.readouterr().err


def test_members_default_bounds_the_extra_training() -> None:
    binary = seeded_model(ModelConfig(features=FeatureSpec(numeric=("a",)), head="binary", hidden_size=4))
    forecast = seeded_model(ModelConfig(features=FeatureSpec(numeric=("a",)), head="forecast", hidden_size=4))
    assert ensemble_members(FitOptions(), binary, ENSEMBLE_MAX_EVENTS) == CLASSIFIER_MEMBERS == 3
    assert ensemble_members(FitOptions(), binary, ENSEMBLE_MAX_EVENTS + 1) == 1  # large files: one model
    assert ensemble_members(FitOptions(members=5), binary, 10**7) == 5
    assert ensemble_members(FitOptions(), forecast, 100) == 1
    with pytest.raises(UsageError):
        ensemble_members(FitOptions(members=0), binary, 100)
