"""rnn_core.evaluation: replay (the serving path) agrees with whole-sequence forward; fit_model is seeded."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
import torch

from rnnstream.pipelines.spec import get_pipeline, model_config_replace
from rnnstream.rnn_core.config import ConfigError
from rnnstream.rnn_core.evaluation import compare_with_baseline, fit_model, replay, stateless_config
from rnnstream.rnn_core.model import StreamingModel
from rnnstream.rnn_core.state_store import KeyedStateStore
from rnnstream.rnn_core.stream_scorer import StreamScorer
from rnnstream.rnn_core.training import sequences_from_table


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny models run faster on one thread on a busy machine; restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def metrics_stream():
    spec = get_pipeline("monitoring-metrics")
    return spec, spec.generate(1500, 7, seed=5)


def _random_model(spec, table: pa.Table, **changes) -> StreamingModel:
    torch.manual_seed(0)
    config = model_config_replace(spec.model_config, hidden_size=16, **changes)
    model = StreamingModel(config)
    model.fit_normalization(sequences_from_table(table, config.features).all_x())
    return model.eval()


@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_replay_equals_forward_per_key(metrics_stream, cell: str) -> None:
    spec, stream = metrics_stream
    model = _random_model(spec, stream.table, cell=cell)
    out = replay(model, stream.table, batch_size=37)
    assert out.shape == (stream.num_events, len(model.output_names()))
    seqs = sequences_from_table(stream.table, model.config.features)
    keys = np.asarray(stream.table.column("key").to_numpy(zero_copy_only=False))
    with torch.no_grad():
        for key, x in zip(seqs.keys, seqs.x, strict=True):
            expected, _ = model(torch.from_numpy(x).unsqueeze(0))
            np.testing.assert_allclose(out[keys == key], expected[0].numpy(), atol=1e-5, rtol=1e-4)


def test_replay_returns_row_order_of_an_unsorted_table(metrics_stream) -> None:
    spec, stream = metrics_stream
    model = _random_model(spec, stream.table)
    perm = np.random.default_rng(0).permutation(stream.num_events)
    shuffled = stream.table.take(pa.array(perm))
    np.testing.assert_allclose(replay(model, shuffled), replay(model, stream.table)[perm], atol=1e-6)


def test_replay_continues_states_through_a_scorer(metrics_stream) -> None:
    spec, stream = metrics_stream
    model = _random_model(spec, stream.table)
    before, after, _ = stream.split_time(0.5)
    scorer = StreamScorer(model, KeyedStateStore(model.config.state_shape))
    first = replay(model, before.table, scorer=scorer)
    second = replay(model, after.table, scorer=scorer, batch_size=5)
    whole = replay(model, stream.table)
    np.testing.assert_allclose(np.concatenate([first, second]), whole, atol=1e-5)
    # without the warm states the second half scores differently
    assert not np.allclose(replay(model, after.table), second, atol=1e-3)


def test_fit_model_is_seeded_and_fits_calibration(metrics_stream) -> None:
    spec, stream = metrics_stream
    config = model_config_replace(spec.model_config, hidden_size=8)
    a = fit_model(config, stream.table, None, 2, chunk_len=32, seed=3)
    b = fit_model(config, stream.table, None, 2, chunk_len=32, seed=3)
    for (name, pa_), (_, pb) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        torch.testing.assert_close(pa_, pb, msg=name)
    assert not a.training
    scores = replay(a, stream.table)[:, 0]
    assert scores.min() >= 0.0 and scores.max() <= 1.0
    assert 0.3 < float(np.median(scores)) < 0.7  # calibrated on training errors: the median maps near 0.5


def test_fit_model_needs_labels_for_supervised_heads() -> None:
    spec = get_pipeline("video")
    table = spec.generate(200, 2, seed=0).table
    with pytest.raises(ConfigError, match="label_column"):
        fit_model(spec.model_config, table, None, 1)


def test_stateless_baseline_has_the_same_size() -> None:
    config = get_pipeline("fraud").model_config
    base = stateless_config(config)
    assert base.stateless and not config.stateless
    n = sum(p.numel() for p in StreamingModel(config).parameters())
    assert n == sum(p.numel() for p in StreamingModel(base).parameters())


def test_compare_with_baseline_runs_both_models() -> None:
    spec = get_pipeline("video")
    train = spec.generate(1200, 4, seed=0)
    held = spec.generate(600, 2, seed=1)
    config = model_config_replace(spec.model_config, hidden_size=8)
    result = compare_with_baseline(
        config,
        train.table,
        held.table,
        lambda out: spec.evaluate(held.table, out, held.truth),
        spec.primary_metric,
        spec.label_column,
        epochs=1,
    )
    assert result.stateless_model.config.stateless and not result.stateful_model.config.stateless
    assert set(result.stateful) == set(result.stateless)
    assert result.margin == pytest.approx(result.stateful["accuracy"] - result.stateless["accuracy"])
