"""StreamingModel: the step == forward law for every cell x head x depth, heads, normalization, baselines."""

from __future__ import annotations

import contextlib
import itertools

import numpy as np
import pytest
import torch

from rnnstream.rnn_core.config import CELLS, HEADS, ConfigError, FeatureSpec, ModelConfig
from rnnstream.rnn_core.model import StreamingModel, exact_numerics, set_exact_numerics
from rnnstream.rnn_core.score_calibration import calibrated_score, calibration_tails
from rnnstream.rnn_core.serialization import load_model, save_model

SPEC = FeatureSpec(
    numeric=("a", "b"),
    vectors=("v",),
    vector_sizes=(3,),
    categorical=("token", "colour"),
    vocabularies=(("x", "y", "z", "w"), ("red", "blue")),
    use_time_delta=True,
)
N_CONT = 5  # a, b, v[3]
CAT = slice(5, 7)
DT = 7


def make_model(cell="gru", head="binary", layers=1, seed=0, spec=SPEC, **kw) -> StreamingModel:
    torch.manual_seed(seed)
    cfg = ModelConfig(
        features=spec,
        cell=cell,
        head=head,
        hidden_size=kw.pop("hidden_size", 8),
        num_layers=layers,
        dropout=kw.pop("dropout", 0.25),
        num_classes=3,
        embedding_dim=4,
        **kw,
    )
    return StreamingModel(cfg).eval()


def make_x(b=3, t=9, seed=1) -> torch.Tensor:
    """Events with continuous values, categorical codes (incl. out-of-range), irregular gaps (0 at start)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, t, SPEC.input_size, generator=g) * 2 + 1
    x[..., CAT] = torch.randint(0, 6, (b, t, 2), generator=g).float()  # 5 is out of range -> unknown
    gaps = torch.exp(torch.randn(b, t, generator=g) * 3)  # from ~1e-4 s to hours
    gaps[:, 0] = 0.0
    x[..., DT] = gaps
    return x


def step_through(model, x, state):
    outs = []
    for t in range(x.shape[1]):
        out, state = model.step(x[:, t], state)
        outs.append(out)
    return torch.stack(outs, dim=1), state


@pytest.mark.parametrize(("cell", "head", "layers"), list(itertools.product(CELLS, HEADS, (1, 2, 3))))
def test_step_equals_forward_and_final_states_equal(cell, head, layers):
    model = make_model(cell, head, layers)
    x = make_x()
    start = torch.randn(3, *model.state_shape, generator=torch.Generator().manual_seed(2)) * 0.5
    with torch.no_grad():
        out_fwd, state_fwd = model(x, start)
        out_step, state_step = step_through(model, x, start)
    assert out_fwd.shape == (3, 9, len(model.output_names()))
    assert state_fwd.shape == state_step.shape == (3, *model.state_shape)
    # rtol: anomaly_z is unbounded (~100 from this random statistics slab), where 1e-5 is below one float32
    # ulp; every bounded output is held to the law's 1e-5
    torch.testing.assert_close(out_step, out_fwd, atol=1e-5, rtol=1e-6)
    torch.testing.assert_close(state_step, state_fwd, atol=1e-5, rtol=0)
    # The outputs depend on the start state (the law is not vacuous) ...
    out_zero, _ = model(x, model.init_state(3))
    assert (out_zero - out_fwd).abs().max() > 1e-4
    # ... and forward in two chunks carrying the state equals forward on the whole sequence.
    with torch.no_grad():
        out_a, mid = model(x[:, :4], start)
        out_b, end = model(x[:, 4:], mid)
    torch.testing.assert_close(torch.cat([out_a, out_b], 1), out_fwd, atol=1e-5, rtol=0)
    torch.testing.assert_close(end, state_fwd, atol=1e-5, rtol=0)


def test_state_layout_and_init_state():
    lstm = make_model("lstm", layers=3)
    assert lstm.state_shape == (2, 3, 8)
    s = lstm.init_state(5)
    assert s.shape == (5, 2, 3, 8) and s.dtype == torch.float32 and not s.any()
    assert make_model("gru", layers=2).init_state(1).shape == (1, 1, 2, 8)
    # forward(state=None) starts from zeros
    model = make_model("lstm", "forecast", 2)
    x = make_x()
    torch.testing.assert_close(model(x)[0], model(x, model.init_state(3))[0])
    # LSTM state index 0 is h: the top layer's h equals the top hidden the heads read
    with torch.no_grad():
        _, state = model(x)
        torch.testing.assert_close(model.rnn(model._rnn_inputs(x), None)[0][:, -1], state[:, 0, -1])


def test_output_names_and_ranges():
    x = make_x()
    names = {h: make_model(head=h).output_names() for h in HEADS}
    assert names["binary"] == ["score"]
    assert names["multiclass"] == ["p_0", "p_1", "p_2"]
    forecasts = [f"forecast_{i}" for i in range(N_CONT)]
    assert names["forecast"] == ["score", "error_z", *forecasts, "score_static", "anomaly_z"]
    assert names["next_token"] == ["score", "rank", "prob"]
    with torch.no_grad():
        binary = make_model(head="binary")(x)[0]
        assert ((binary > 0) & (binary < 1)).all()
        multi = make_model(head="multiclass")(x)[0]
        torch.testing.assert_close(multi.sum(-1), torch.ones(3, 9))
        fc = make_model(head="forecast")(x)[0]
        assert ((fc[..., 0] >= 0) & (fc[..., 0] <= 1)).all() and (fc[..., 1] >= 0).all()


def test_next_token_prob_rank_score_match_the_distribution_from_the_previous_state():
    model = make_model(head="next_token", layers=2)
    x = make_x()
    with torch.no_grad():
        out, _ = model(x)
        top_after = model.rnn(model._rnn_inputs(x), None)[0]
        top_before = torch.cat([torch.zeros(3, 1, 8), top_after[:, :-1]], 1)
        probs = torch.softmax(model.head(top_before), -1)
    token = x[..., CAT.start].long()
    token = torch.where(token < 5, token, 0)  # vocabulary of 4 + unknown
    p = probs.gather(-1, token.unsqueeze(-1)).squeeze(-1)
    rank = (probs > p.unsqueeze(-1)).sum(-1).float()
    torch.testing.assert_close(out[..., 2], p, atol=1e-6, rtol=0)
    torch.testing.assert_close(out[..., 0], 1 - p, atol=1e-6, rtol=0)
    torch.testing.assert_close(out[..., 1], rank)
    assert set(rank.unique().tolist()) > {0.0}  # not all top-1: the check means something


def test_forecast_columns_error_z_and_rollout():
    model = make_model("lstm", "forecast", 2)
    model.fit_normalization(make_x(20, 10, seed=5).reshape(-1, SPEC.input_size).numpy())
    x = make_x()
    with torch.no_grad():
        out, state = model(x)
        # error_z of event t+1 = RMS of its standardized error vs forecast_* made after event t
        forecast = out[..., 2 : 2 + N_CONT]
        err = (x[:, 1:, :N_CONT] - forecast[:, :-1]) / model.norm_std / model.error_scale
        torch.testing.assert_close(out[:, 1:, 1], err.square().mean(-1).sqrt(), atol=1e-5, rtol=1e-5)
        # rollout: first row is the last event's forecast; the next rows feed the forecast back in
        roll = model.rollout(state, 3, step_seconds=60.0, x_last=x[:, -1])
        assert roll.shape == (3, 3, N_CONT)
        torch.testing.assert_close(roll[:, 0], forecast[:, -1], atol=1e-5, rtol=0)
        fed = x[:, -1].clone()
        fed[:, :N_CONT] = roll[:, 0]
        fed[:, DT] = 60.0
        out_next, _ = model.step(fed, state)
        torch.testing.assert_close(roll[:, 1], out_next[:, 2 : 2 + N_CONT], atol=1e-5, rtol=0)
    with pytest.raises(ConfigError):
        make_model(head="binary").rollout(state[:, :1], 2)


def test_score_calibration_maps_training_errors_to_uniform_and_is_monotone():
    model = make_model("gru", "forecast")
    train = make_x(16, 12, seed=7)
    model.fit_normalization(train.reshape(-1, SPEC.input_size).numpy())
    before = model.score_knots.clone()
    model.fit_score_calibration(train)
    assert not torch.equal(before, model.score_knots)
    assert (model.score_knots.diff() >= 0).all()
    with torch.no_grad():
        out, _ = model(train)
    score, z = out[..., -2].flatten(), out[..., 1].flatten()  # score_static: the calibrated map of error_z
    assert abs(score.mean().item() - 0.5) < 0.05  # training events spread evenly over [0, 1]
    order = torch.argsort(z)
    assert (score[order].diff() >= -1e-6).all()  # monotone in error_z
    assert score.min() >= 0 and score.max() < 1
    # a huge surprise scores near 1 (but below: see the strictness test), a perfect forecast scores ~0
    assert 0.999 < model._calibrated(torch.tensor([1e6, 0.0])).tolist()[0] < 1.0
    assert model._calibrated(torch.tensor([0.0])).item() < 0.05
    # list-of-keys form gives the same fit as the padded batch without padding
    other = make_model("gru", "forecast")
    other.load_state_dict(model.state_dict())
    torch.testing.assert_close(other.score_tails, model.score_tails)  # derived buffer follows the load
    torch.testing.assert_close(model.score_tails, calibration_tails(model.score_knots))
    other.fit_score_calibration([train[i].numpy() for i in range(16)])
    torch.testing.assert_close(other.score_knots, model.score_knots)
    torch.testing.assert_close(other.error_scale, model.error_scale)


def _strictly_increasing(values: torch.Tensor) -> bool:
    return bool((values.diff() > 0).all())


def test_calibrated_score_is_strictly_increasing_far_past_the_knots_and_stays_below_one():
    model = make_model("gru", "forecast")
    train = make_x(16, 12, seed=7)
    model.fit_normalization(train.reshape(-1, SPEC.input_size).numpy())
    model.fit_score_calibration(train)
    knots = model.score_knots
    top, bottom = knots[-1].item(), knots[0].item()
    for z in (
        torch.linspace(0.0, top, 2001),  # below and through the knots
        torch.linspace(top, top + 20.0, 2001),  # past the top knot to ~10x it, steps of 0.01
        top * 1.01 ** torch.arange(1400.0),  # on to ~1e6 x the top knot, each 1% above the previous
        torch.logspace(np.log10(top) + 0.01, 30, 500),  # huge errors, each ~10% above the previous
    ):
        s = model._calibrated(z)
        assert _strictly_increasing(s), z[:-1][s.diff() <= 0][:5]
        assert (s >= 0).all() and (s < 1).all()
    assert bottom > 0  # the grid above did reach below the bottom knot
    # the knots keep their plotting positions: ~uniform over training events, symmetric tails
    n = knots.shape[0]
    torch.testing.assert_close(
        model._calibrated(knots[[0, n // 2, -1]]), torch.tensor([0.5, n // 2 + 0.5, n - 0.5]) / n
    )
    assert model._calibrated(torch.tensor([float("inf")])).item() == 1.0
    assert model._calibrated(torch.tensor([float("nan")])).isnan().all()


def test_calibrated_score_is_strict_for_uncalibrated_and_degenerate_knots():
    grids = (torch.linspace(-5.0, 5.0, 1001), torch.logspace(0.7, 25, 300))
    uncalibrated = make_model("gru", "forecast").score_knots
    for knots in (uncalibrated, torch.zeros(7), torch.tensor([0.0, 1.0, 1.0, 1.0, 3.0]), torch.ones(2)):
        for z in grids:
            s = calibrated_score(z, knots)
            assert _strictly_increasing(s) and (s >= 0).all() and (s < 1).all(), knots
    # before calibration the score is about error_z / 4 up to 4
    z = torch.tensor([0.0, 1.0, 2.0, 4.0])
    torch.testing.assert_close(calibrated_score(z, uncalibrated), z / 4, atol=0.006, rtol=0)


@pytest.mark.parametrize("cell", CELLS)
def test_step_equals_forward_for_calibrated_scores_of_anomalies_beyond_the_knots(cell, tmp_path):
    model = make_model(cell, "forecast", 2)
    train = make_x(16, 12, seed=7)
    model.fit_normalization(train.reshape(-1, SPEC.input_size).numpy())
    model.fit_score_calibration(train)
    x = make_x(3, 9, seed=11)
    x[:, 3::2, :N_CONT] *= torch.tensor([30.0, 300.0, 3000.0]).view(3, 1, 1)  # far outside training errors
    with torch.no_grad():
        out_fwd, _ = model(x)
        out_step, _ = step_through(model, x, model.init_state(3))
    assert (out_fwd[..., 1] > model.score_knots[-1]).sum() >= 6  # the tail is what is compared
    torch.testing.assert_close(out_step, out_fwd, atol=1e-5, rtol=1e-6)
    anomalies = out_fwd[:, 3::2].reshape(-1, out_fwd.shape[-1])
    order = torch.argsort(anomalies[:, 1])
    assert _strictly_increasing(anomalies[order, -2])  # ranking by score_static == ranking by error_z
    # a saved and loaded model scores the tails the same (its tail parameters follow the loaded knots)
    save_model(model, tmp_path / "m")
    with torch.no_grad():
        torch.testing.assert_close(load_model(tmp_path / "m")(x)[0], out_fwd, atol=0, rtol=0)


@pytest.fixture
def restore_precision_flags():
    """Global torch precision flags as they were (exact_numerics / set_exact_numerics change them)."""
    b = torch.backends
    saved = (b.cudnn.allow_tf32, b.cuda.matmul.allow_tf32)
    yield
    b.cudnn.allow_tf32, b.cuda.matmul.allow_tf32 = saved
    assert (b.cudnn.allow_tf32, b.cuda.matmul.allow_tf32) == saved  # still readable by the legacy API


def test_exact_numerics_turns_tf32_off_inside_and_restores_after(restore_precision_flags):
    b = torch.backends
    b.cudnn.allow_tf32 = True  # torch's default: cuDNN RNNs in TF32
    b.cuda.matmul.allow_tf32 = True  # as after torch.set_float32_matmul_precision("high")
    with exact_numerics():
        assert b.cudnn.rnn.fp32_precision == "ieee" and b.cuda.matmul.fp32_precision == "ieee"
    assert b.cudnn.allow_tf32 is True and b.cuda.matmul.allow_tf32 is True
    with pytest.raises(RuntimeError, match="restored"), exact_numerics():
        raise RuntimeError("restored on errors too")
    assert b.cudnn.allow_tf32 is True and b.cudnn.rnn.fp32_precision == "tf32"
    # after the process-wide setting the legacy flags read False and the context changes nothing
    set_exact_numerics()
    assert b.cudnn.allow_tf32 is False and b.cuda.matmul.allow_tf32 is False
    before = [b.cudnn.rnn.fp32_precision, b.cuda.matmul.fp32_precision]
    with exact_numerics():
        assert [b.cudnn.rnn.fp32_precision, b.cuda.matmul.fp32_precision] == before
    assert b.cudnn.allow_tf32 is False and b.cuda.matmul.allow_tf32 is False
    # on CPU the model never enters it (and training on CUDA keeps TF32 too)
    model = make_model("gru", "forecast")
    assert isinstance(model._numerics(make_x()), contextlib.nullcontext)
    assert isinstance(model.train()._numerics(make_x()), contextlib.nullcontext)


def test_stateless_baseline_forgets_and_stateful_remembers():
    x = make_x()
    changed = x.clone()
    changed[:, 0, :N_CONT] += 5.0
    for head in HEADS:
        for stateless, expect_same in ((True, True), (False, False)):
            model = make_model("lstm", head, 2, stateless=stateless)
            start = torch.randn(3, *model.state_shape, generator=torch.Generator().manual_seed(3))
            with torch.no_grad():
                out, state = model(x, start)
                out2, _ = model(changed, start)
                step_out, step_state = step_through(model, x, torch.randn(3, *model.state_shape))
            later_same = torch.allclose(out[:, 2:], out2[:, 2:], atol=1e-6)
            assert later_same == expect_same, (head, stateless)
            assert state.shape == (3, *model.state_shape)
            if stateless:  # step ignores the state it is given and matches forward
                torch.testing.assert_close(step_out, out, atol=1e-5, rtol=0)
                torch.testing.assert_close(step_state, state, atol=1e-5, rtol=0)


def test_fit_normalization_uses_continuous_columns_and_makes_units_irrelevant():
    rng = np.random.default_rng(0)
    x = make_x(8, 10).reshape(-1, SPEC.input_size).numpy()
    x[:, 1] = 7.0  # a constant column: std falls back to 1
    model = make_model()
    model.fit_normalization(x)
    np.testing.assert_allclose(model.norm_mean.numpy(), x[:, :N_CONT].mean(0), rtol=1e-5, atol=1e-6)
    expected_std = x[:, :N_CONT].std(0)
    expected_std[1] = 1.0
    np.testing.assert_allclose(model.norm_std.numpy(), expected_std, rtol=1e-5)
    # the same weights fitted on data in other units give the same outputs on that data
    scale = rng.uniform(2, 50, N_CONT).astype(np.float32)
    shift = rng.uniform(-100, 100, N_CONT).astype(np.float32)
    x2 = x.copy()
    x2[:, :N_CONT] = x[:, :N_CONT] * scale + shift
    other = make_model()
    other.fit_normalization(x2)
    xb, xb2 = torch.from_numpy(x).view(8, 10, -1), torch.from_numpy(x2).view(8, 10, -1)
    with torch.no_grad():
        torch.testing.assert_close(model(xb)[0], other(xb2)[0], atol=1e-5, rtol=0)
        assert (model(xb2)[0] - other(xb2)[0]).abs().max() > 1e-3


def test_unknown_codes_share_the_unknown_embedding_and_time_delta_matters():
    model = make_model(layers=2)
    x = make_x()
    with torch.no_grad():
        base = model(x)[0]
        oov = x.clone()
        oov[..., CAT.start] = torch.where(x[..., CAT.start] == 0, 99.0, x[..., CAT.start])
        oov[..., CAT.start + 1] = torch.where(x[..., CAT.start + 1] == 0, -3.0, x[..., CAT.start + 1])
        torch.testing.assert_close(model(oov)[0], base)
        longer = x.clone()
        longer[..., DT] *= 1000
        assert (model(longer)[0] - base).abs().max() > 1e-4
        negative = x.clone()
        negative[:, 0, DT] = -5.0  # clock skew: treated as 0
        torch.testing.assert_close(model(negative)[0], base)


def test_dropout_only_in_training():
    model = make_model("gru", "binary", 3, dropout=0.5)
    x = make_x()
    with torch.no_grad():
        torch.testing.assert_close(model(x)[0], model(x)[0])
        model.train()
        torch.manual_seed(0)
        a = model(x)[0]
        b = model(x)[0]
        s1, _ = model.step(x[:, 0], model.init_state(3))
        s2, _ = model.step(x[:, 0], model.init_state(3))
    assert (a - b).abs().max() > 1e-4
    assert (s1 - s2).abs().max() > 1e-5


def test_loss_per_head_masks_padding_and_missing_labels():
    x = make_x()
    y = torch.tensor(
        [[0, 1, -1, 1, 0, 1, 0, 0, 1], [1, 1, 0, 0, 2, 0, 1, 0, 1], [0, 0, 0, 1, 1, 1, 2, 0, 0]]
    ).float()
    y[0, 4] = float("nan")
    mask = torch.ones(3, 9, dtype=torch.bool)
    mask[2, 6:] = False
    for head in HEADS:
        model = make_model("gru", head, 2)
        loss, state = model.loss(x, y if head != "binary" else y.clamp(max=1), None, mask)
        assert loss.ndim == 0 and torch.isfinite(loss) and loss > 0
        assert state.shape == (3, *model.state_shape)
        loss.backward()
        assert all(p.grad is not None for p in model.head.parameters())
        # what sits in padding (labels and inputs after the mask) never changes the loss
        x_pad, y_pad = x.clone(), y.clone()
        x_pad[2, 6:] = 1e3
        y_pad[2, 6:] = 1.0
        y_pad[0, 2] = 1.0 if head != "multiclass" else 2.0  # a -1 label (missing) made real changes the loss
        with torch.no_grad():
            loss_pad, _ = model.loss(x_pad, y_pad.clamp(max=1) if head == "binary" else y_pad, None, mask)
        if head in ("forecast", "next_token"):  # y unused: only the masked input change, which must not count
            torch.testing.assert_close(loss_pad, loss.detach())
        else:
            assert (loss_pad - loss.detach()).abs() > 1e-6
            y_pad[0, 2] = -1.0
            with torch.no_grad():
                loss_pad2, _ = model.loss(
                    x_pad, y_pad.clamp(max=1) if head == "binary" else y_pad, None, mask
                )
            torch.testing.assert_close(loss_pad2, loss.detach())


def test_next_token_loss_is_cross_entropy_of_the_previous_state_prediction():
    model = make_model("rnn", "next_token", 1)
    x = make_x()
    with torch.no_grad():
        loss, _ = model.loss(x)
        out, _ = model(x)
    torch.testing.assert_close(loss, -out[..., 2].log().mean(), atol=1e-5, rtol=1e-5)


def test_forecast_loss_is_mse_of_normalized_previous_state_prediction():
    model = make_model("gru", "forecast", 1)
    model.fit_normalization(make_x(10, 10, seed=9).reshape(-1, SPEC.input_size).numpy())
    x = make_x()
    with torch.no_grad():
        loss, _ = model.loss(x)
        out, _ = model(x)
        start_forecast = model.head(torch.zeros(3, 8)) * model.norm_std + model.norm_mean
    previous = torch.cat([start_forecast.unsqueeze(1), out[:, :-1, 2 : 2 + N_CONT]], 1)
    expected = ((x[..., :N_CONT] - previous) / model.norm_std).square().mean()
    torch.testing.assert_close(loss, expected, atol=1e-5, rtol=1e-5)


def test_same_seed_same_model():
    a, b, c = make_model(seed=4), make_model(seed=4), make_model(seed=5)
    x = make_x()
    with torch.no_grad():
        torch.testing.assert_close(a(x)[0], b(x)[0], atol=0, rtol=0)
        assert (a(x)[0] - c(x)[0]).abs().max() > 1e-4


@pytest.mark.parametrize("cell", CELLS)
def test_inference_step_folds_normalization_and_follows_every_weight_change(cell):
    """Without autograd, ``step`` folds the input normalization into cached weights; the law must hold
    after each way the weights or the normalization can change."""
    model = make_model(cell, "binary", 2)
    x = make_x()
    flat = x.reshape(-1, x.shape[-1]).numpy()

    def assert_step_equals_forward() -> None:
        with torch.inference_mode():
            out_fwd, state_fwd = model(x)
            out_step, state_step = step_through(model, x, model.init_state(3))
        torch.testing.assert_close(out_step, out_fwd, atol=1e-5, rtol=0)
        torch.testing.assert_close(state_step, state_fwd, atol=1e-5, rtol=0)

    model.fit_normalization(flat * 3 + 0.5)  # |mean| / std small: folded
    assert_step_equals_forward()
    assert model._inference_weights()[0]
    model.fit_normalization(flat * 0.01 + 50)  # |mean| / std large: not folded, still equal
    assert_step_equals_forward()
    assert not model._inference_weights()[0]
    model.fit_normalization(flat)
    assert_step_equals_forward()
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    model.loss(x, torch.ones(3, 9))[0].backward()
    optimizer.step()
    model.eval()
    assert_step_equals_forward()
    other = make_model(cell, "binary", 2, seed=5)
    other.fit_normalization(flat * 2 - 1)
    model.load_state_dict(other.state_dict())
    assert_step_equals_forward()
    with torch.no_grad():
        model.rnn.weight_ih_l0.mul_(0.5)
        model.norm_std.mul_(2.0)
    assert_step_equals_forward()
