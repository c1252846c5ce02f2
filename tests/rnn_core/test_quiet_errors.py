"""The adaptive score's quiet and spike sides: a stretch whose forecast errors collapse (a stuck sensor the
model follows exactly) and a one-event spike score high when the model stores the quiet side's training
spread, ordinary errors score as they did one-sided, stepping equals the sequence, the compiled recursion is
its Python form bit for bit, and a model saved before the spread was stored scores as then."""

from __future__ import annotations

import math

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from rnnstream.rnn_core.adaptive_state import (
    drift_slice,
    error_stats_columns,
    extra_row,
    key_inputs,
    with_extra_row,
)
from rnnstream.rnn_core.anomaly_likelihood import (
    NUM_STATS,
    QUIET_FLOOR,
    LikelihoodWindows,
    _recursion_params,
    likelihood_sequence,
    likelihood_step,
)
from rnnstream.rnn_core.config import FeatureSpec, ModelConfig
from rnnstream.rnn_core.likelihood_recursion import likelihood_recursion
from rnnstream.rnn_core.model import StreamingModel
from rnnstream.rnn_core.score_calibration import error_z_of, quiet_log_variance
from rnnstream.rnn_core.serialization import WEIGHTS_FILE, load_model, save_model

WINDOWS = LikelihoodWindows()
MEAN, VAR = 0.8, 0.36


def _usual(n: int, seed: int) -> np.ndarray:
    return np.abs(np.random.default_rng(seed).normal(MEAN, VAR**0.5, n))


def _prior() -> tuple[float, float, float]:
    runs = [_usual(2000, seed) for seed in range(3)]  # "training" errors
    quiet = quiet_log_variance(runs, MEAN, WINDOWS.short_window, WINDOWS.warmup_events, QUIET_FLOOR)
    return MEAN, VAR, quiet


def _z(e: np.ndarray, prior: tuple[float, ...]) -> np.ndarray:
    errors = torch.from_numpy(e[None].astype(np.float32))
    _, z, _ = likelihood_sequence(errors, torch.zeros(1, NUM_STATS), prior, WINDOWS)
    return z[0].numpy()


def _stuck(seed: int = 7) -> np.ndarray:
    e = _usual(3000, seed)
    e[1500:1650] = 0.01  # the errors collapse: the value stuck and the forecast following it
    return e


def test_a_quiet_stretch_alarms_two_sided_and_not_one_sided() -> None:
    prior = _prior()
    assert 0.0 < prior[2] < 1.0
    e = _stuck()
    two, one = _z(e, prior), _z(e, prior[:2])
    assert float(two[1500:1650].max()) > 4.0  # far above a 1% line on usual errors (z ~1-2)
    assert float(one[1500:1650].max()) < 1.0  # one-sided it never did: errors fall, z goes below 0
    assert np.array_equal(two[:1500] > 2.0, one[:1500] > 2.0)  # before it, the same alarms


def test_a_one_event_spike_alarms_by_itself() -> None:
    prior = _prior()
    e = _usual(2000, seed=9)
    e[1500] = 8.0  # one event's error 12 training sigmas above the usual
    with_sides, before = _z(e, prior), _z(e, prior[:2])
    assert float(with_sides[1500]) > 6.0  # (8 - ~0.8) / 0.6 - spike_sigmas
    assert float(before[1500]) < 2.0  # one tenth of it in the short mean: (8 - 0.8) / 10 / 0.6 ~ 1.2
    assert float(with_sides[1501]) < float(with_sides[1500]) - 4.0  # the event's own side ends with it


def test_usual_errors_score_as_one_sided() -> None:
    prior = _prior()
    for seed in (11, 12):
        e = _usual(4000, seed)
        two, one = _z(e, prior), _z(e, prior[:2])
        assert np.all(two >= one)  # the quiet side can only add
        assert float(np.mean(two > one)) < 0.01  # ... and on usual errors it seldom does
        assert np.array_equal(two > 1.0, one > 1.0)  # and not as far as an alert line


def test_stepping_equals_the_sequence_and_old_key_states_start_from_the_prior() -> None:
    prior = _prior()
    e = torch.from_numpy(_stuck()[1400:1700].astype(np.float32))[None]
    _, z_seq, final_seq = likelihood_sequence(e, torch.zeros(1, NUM_STATS), prior, WINDOWS)
    stats, zs = torch.zeros(1, NUM_STATS), []
    for i in range(e.shape[1]):
        _, z, stats = likelihood_step(e[:, i], stats, prior, WINDOWS)
        zs.append(z)
    assert torch.equal(torch.stack(zs, 1), z_seq) and torch.equal(stats, final_seq)
    # a key state written before the quiet statistic existed (0 there) starts it from the training prior
    old = final_seq.clone()
    old[:, 5] = 0.0
    with_prior = final_seq.clone()
    with_prior[:, 5] = prior[2]
    _, z_old, _ = likelihood_sequence(e, old, prior, WINDOWS)
    _, z_prior, _ = likelihood_sequence(e, with_prior, prior, WINDOWS)
    assert torch.equal(z_old, z_prior)


def test_the_compiled_two_sided_recursion_equals_its_python_form_bit_for_bit() -> None:
    prior = _prior()
    e = _stuck()[None].astype(np.float32)
    outs = []
    for run in (likelihood_recursion, likelihood_recursion.py_func):
        stats = np.zeros((1, NUM_STATS), np.float32)
        stats[:, 1:6] = (prior[0], prior[0], prior[1], 0.0, prior[2])
        zs, scored = np.empty(e.shape, np.float32), np.empty(e.shape, np.bool_)
        run(e, stats, zs, scored, _recursion_params(prior, WINDOWS))
        outs.append((zs, scored, stats))
    for compiled_out, python_out in zip(*outs, strict=True):
        assert np.array_equal(compiled_out, python_out)
    assert float(outs[0][0][0, 1500:1650].max()) > 4.0


def _forecast_model() -> tuple[StreamingModel, torch.Tensor]:
    torch.manual_seed(0)
    model = StreamingModel(ModelConfig(features=FeatureSpec(numeric=("a",)), head="forecast", hidden_size=8))
    model.eval()
    g = torch.Generator().manual_seed(1)
    x = torch.sin(torch.arange(120.0) / 5).reshape(1, 120, 1).repeat(3, 1, 1)
    x = x + 0.3 * torch.randn(3, 120, 1, generator=g)
    model.fit_normalization(x.reshape(-1, 1).numpy())
    model.fit_score_calibration(x)
    return model, x


def test_fitting_stores_the_quiet_spread_and_models_saved_before_it_score_one_sided(tmp_path) -> None:
    model, x = _forecast_model()
    with torch.no_grad():
        error_z = model(x)[0][..., 1].double().numpy()  # the calibration's events, from zero states
    w = model.windows
    mean = float(model.error_z_moments[0])
    expected = quiet_log_variance(list(error_z), mean, w.short_window, w.warmup_events, QUIET_FLOOR)
    assert math.isfinite(expected)
    assert abs(float(model.error_z_quiet_var) - expected) < 1e-5 * expected  # float32 buffer
    assert error_z_of(torch.ones(2, 3), torch.full((3,), 2.0)).tolist() == [0.5, 0.5]

    save_model(model, tmp_path / "m")
    weights = tmp_path / "m" / WEIGHTS_FILE
    tensors = load_file(str(weights))
    metadata = safe_open(str(weights), "pt").metadata()
    del tensors["error_z_quiet_var"]
    save_file(tensors, str(weights), metadata=metadata)  # the format as written before the buffer existed
    old = load_model(tmp_path / "m")
    assert torch.isnan(old.error_z_quiet_var).all()
    one_sided = load_model(save_model(model, tmp_path / "again"))
    object.__setattr__(one_sided, "windows", LikelihoodWindows(two_sided=False, spike_side=False))
    quiet = x.clone()
    quiet[:, 60:] = quiet[:, 59:60]  # stuck from event 60 on
    with torch.no_grad():
        out_old, state_old = old(quiet)
        out_one, state_one = one_sided(quiet)
    torch.testing.assert_close(out_old, out_one, atol=0, rtol=0)  # score, anomaly_z and all: as then
    old_row, one_row = extra_row(old, state_old), extra_row(one_sided, state_one)
    quiet_slot = error_stats_columns(old)[-1]
    assert torch.equal(old_row[:, quiet_slot], torch.zeros(3))  # the old model never fills the quiet slot
    one_row[:, quiet_slot] = 0.0  # (the one-sided new model keeps its prior there, unused)
    assert torch.equal(old_row, one_row) and torch.equal(state_old[:, :1], state_one[:, :1])


def test_key_states_checkpointed_before_the_quiet_statistic_restore_in_place() -> None:
    """The drift-following inputs' statistics stay at [5, 5 + 1 + 3n), where states written with five error
    statistics hold them, and the quiet spread goes after them (a zero there in an old state): a restored old
    checkpoint reads every statistic from its place, and scoring from it learns the quiet spread anew."""
    torch.manual_seed(0)
    spec = FeatureSpec(numeric=("a", "b"))
    config = ModelConfig(features=spec, head="forecast", hidden_size=8, adaptive_inputs=True)
    model = StreamingModel(config).eval()
    g = torch.Generator().manual_seed(2)
    x = torch.randn(2, 80, 2, generator=g) + torch.tensor([3.0, -1.0])
    model.fit_normalization(x.reshape(-1, 2).numpy())
    model.fit_score_calibration(x)
    assert drift_slice(model) == slice(5, 5 + 1 + 3 * 2)
    assert error_stats_columns(model) == [0, 1, 2, 3, 4, 5 + 1 + 3 * 2]
    with torch.no_grad():
        _, state = model(x)
        row = extra_row(model, state)
        torch.testing.assert_close(row[:, drift_slice(model)], key_inputs(model, x, None).stats)
        assert (row[:, 0] > 0).all()  # the event count, in its place
        old = row.clone()
        old[:, error_stats_columns(model)[-1]] = 0.0  # as a state checkpointed before the statistic
        more = torch.randn(2, 40, 2, generator=g) + torch.tensor([3.0, -1.0])
        out_old, _ = model(more, with_extra_row(model, state, old))
        out_new, _ = model(more, state)
    assert torch.isfinite(out_old).all()
    # the score reads the old state's statistics from their places: ordinary events score as from the new one
    assert (out_old[..., 0] - out_new[..., 0]).abs().max() < 0.25
