"""save_model/load_model and the bytes form: same outputs after a round trip, and no pickle anywhere."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from rnnstream.rnn_core.config import CELLS, HEADS, FeatureSpec, ModelConfig
from rnnstream.rnn_core.model import StreamingModel
from rnnstream.rnn_core.serialization import (
    CONFIG_FILE,
    WEIGHTS_FILE,
    ModelFormatError,
    load_model,
    model_from_bytes,
    model_to_bytes,
    save_model,
)

SPEC = FeatureSpec(
    numeric=("a",),
    vectors=("v",),
    vector_sizes=(2,),
    categorical=("token",),
    vocabularies=(("x", "y", "z"),),
    use_time_delta=True,
)


def _fitted_model(cell: str, head: str, spec: FeatureSpec = SPEC) -> tuple[StreamingModel, torch.Tensor]:
    torch.manual_seed(0)
    model = StreamingModel(
        ModelConfig(
            features=spec,
            cell=cell,
            head=head,
            hidden_size=6,
            num_layers=2,
            num_classes=3,
            extra={"note": "t"},
        )
    ).eval()
    g = torch.Generator().manual_seed(1)
    x = torch.randn(4, 6, spec.input_size, generator=g) * 3 + 2
    if spec.categorical:
        x[..., spec.num_continuous] = torch.randint(0, 4, (4, 6), generator=g).float()
    if spec.use_time_delta:
        x[..., -1] = torch.rand(4, 6, generator=g) * 100
    model.fit_normalization(x.reshape(-1, spec.input_size).numpy())
    if head == "forecast":
        model.fit_score_calibration(x, num_points=17)  # not the default table length
    return model, x


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("head", HEADS)
def test_save_load_same_outputs_and_no_pickle(tmp_path, cell, head):
    model, x = _fitted_model(cell, head)
    save_model(model, tmp_path / "m")
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == sorted([CONFIG_FILE, WEIGHTS_FILE])
    # the weights file is plain safetensors and holds the fitted buffers
    tensors = load_file(str(tmp_path / "m" / WEIGHTS_FILE))
    torch.testing.assert_close(tensors["norm_mean"], model.norm_mean)
    torch.testing.assert_close(tensors["norm_std"], model.norm_std)
    if head == "forecast":
        assert tensors["score_knots"].shape == (17,)
        torch.testing.assert_close(tensors["error_scale"], model.error_scale)
    raw = (tmp_path / "m" / WEIGHTS_FILE).read_bytes()
    assert not raw.startswith(b"\x80") and b"PK\x03\x04" not in raw[:8]  # not a pickle, not a torch zip
    doc = json.loads((tmp_path / "m" / CONFIG_FILE).read_text())
    assert doc["config"] == json.loads(json.dumps(model.config.to_dict()))
    loaded = load_model(tmp_path / "m")
    assert not loaded.training
    assert loaded.config == model.config and loaded.config.extra == {"note": "t"}
    with torch.no_grad():
        out, state = model(x)
        out2, state2 = loaded(x)
    torch.testing.assert_close(out2, out, atol=0, rtol=0)
    torch.testing.assert_close(state2, state, atol=0, rtol=0)


def test_bytes_round_trip_and_loading_never_unpickles(monkeypatch):
    model, x = _fitted_model("lstm", "forecast")
    data = model_to_bytes(model)

    def forbidden(*args, **kwargs):
        raise AssertionError("unpickling attempted")

    monkeypatch.setattr("pickle.loads", forbidden)
    monkeypatch.setattr("pickle.load", forbidden)
    monkeypatch.setattr("torch.load", forbidden)
    loaded = model_from_bytes(data)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x)[0], model(x)[0], atol=0, rtol=0)


def test_only_categorical_model_with_empty_normalization_buffers(tmp_path):
    spec = FeatureSpec(categorical=("token",), vocabularies=(("a", "b", "c", "d"),), use_time_delta=True)
    model, x = _fitted_model("gru", "next_token", spec)
    assert model.norm_mean.numel() == 0
    loaded = load_model(save_model(model, tmp_path / "tok"))
    torch.testing.assert_close(loaded(x)[0], model(x)[0], atol=0, rtol=0)


def test_bad_inputs_are_reported(tmp_path):
    with pytest.raises(ModelFormatError, match=CONFIG_FILE):
        load_model(tmp_path / "nothing")
    model, _ = _fitted_model("gru", "binary")
    save_model(model, tmp_path / "m")
    doc = json.loads((tmp_path / "m" / CONFIG_FILE).read_text())
    doc["config"]["hidden_size"] = 7
    (tmp_path / "m" / CONFIG_FILE).write_text(json.dumps(doc))
    with pytest.raises(ModelFormatError, match="do not match"):
        load_model(tmp_path / "m")
    doc["format_version"] = 99
    (tmp_path / "m" / CONFIG_FILE).write_text(json.dumps(doc))
    with pytest.raises(ModelFormatError, match="version"):
        load_model(tmp_path / "m")
    with pytest.raises(ModelFormatError):
        model_from_bytes(b"\x80\x04not a model")


def test_calibration_stores_the_training_error_z_moments():
    model, x = _fitted_model("gru", "forecast")
    with torch.no_grad():
        error_z = model(x)[0][..., 1].double()  # the events the calibration was fitted on, from zero states
    mean, var = model.error_z_moments.tolist()
    assert mean == pytest.approx(float(error_z.mean()), rel=1e-5)
    assert var == pytest.approx(float(error_z.var(unbiased=False)), rel=1e-4)
    knots = model.score_knots  # 17 quantiles weigh the largest error 1/17: not the same statistic
    assert abs(float(knots.var()) - var) > 1e-3


def test_model_saved_before_error_z_moments_keeps_its_knots_prior(tmp_path):
    model, x = _fitted_model("gru", "forecast")
    save_model(model, tmp_path / "m")
    weights = tmp_path / "m" / WEIGHTS_FILE
    tensors = load_file(str(weights))
    metadata = safe_open(str(weights), "pt").metadata()
    del tensors["error_z_moments"]
    save_file(tensors, str(weights), metadata=metadata)  # the format as written before the buffer existed

    old = load_model(tmp_path / "m")
    assert torch.isnan(old.error_z_moments).all()
    knots = model.score_knots
    before = model_from_bytes(model_to_bytes(model))  # scoring as it was: the knots' mean and variance
    before.error_z_moments.copy_(torch.stack([knots.mean(), knots.var()]))
    x = x.repeat(1, 8, 1)  # past the first events, which score 0.5 whatever the prior
    with torch.no_grad():
        out_old, state_old = old(x)
        out_before, state_before = before(x)
        out_new = model(x)[0]
    torch.testing.assert_close(out_old, out_before, atol=0, rtol=0)
    torch.testing.assert_close(state_old, state_before, atol=0, rtol=0)
    assert not torch.equal(out_old[..., 0], out_new[..., 0])  # the stored moments do change the score
    resaved = load_model(save_model(old, tmp_path / "again"))  # re-saving keeps it an old-prior model
    with torch.no_grad():
        torch.testing.assert_close(resaved(x)[0], out_old, atol=0, rtol=0)
