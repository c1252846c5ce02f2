"""Each pipeline needs its memory: the stateful model beats its same-size stateless baseline by >= 0.15.

Both models are trained on the same small seeded stream (tiny GRU, a few epochs) and scored on a second,
held-out stream replayed through the serving path (``evaluation.replay``: one keyed state store, events in
event-time order across keys, micro-batches). Primary metrics: fraud PR-AUC, metrics best-F1 (point-wise,
no adjustment), logs per-session F1 of the top-g rule, video per-frame accuracy.
"""

from __future__ import annotations

import pytest
import torch

from rnnstream.pipelines.spec import get_pipeline, model_config_replace
from rnnstream.rnn_core.evaluation import compare_with_baseline

MARGIN = 0.15

# pipeline: (train events, train keys), (held-out events, keys), generator options, epochs.
# Fraud at the generator's default rate (about 4% of events) and the demo's density (40 events a card).
CASES = {
    "fraud": ((40_000, 1000), (20_000, 500), {}, 15),
    "monitoring-metrics": ((24_000, 24), (12_000, 12), {}, 15),
    "monitoring-logs": ((20_000, 40), (10_000, 20), {}, 8),
    "video": ((20_000, 30), (10_000, 15), {}, 8),
}


@pytest.fixture
def one_thread():
    """Tiny models train faster on one thread (and leave the other core to the rest of the suite)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("name", list(CASES))
def test_stateful_beats_stateless(name: str, one_thread: None) -> None:
    spec = get_pipeline(name)
    (n_train, k_train), (n_held, k_held), options, epochs = CASES[name]
    train = spec.generate(n_train, k_train, seed=11, **options)
    held = spec.generate(n_held, k_held, seed=12, **options)
    config = model_config_replace(spec.model_config, hidden_size=32)
    result = compare_with_baseline(
        config,
        train.table,
        held.table,
        lambda outputs: spec.evaluate(held.table, outputs, held.truth),
        spec.primary_metric,
        spec.label_column,
        epochs,
        chunk_len=spec.training.chunk_len,
        batch_keys=spec.training.batch_keys,
        lr=spec.training.learning_rate,
        seed=0,
    )
    metric = spec.primary_metric
    print(
        f"\n{name}: {metric} stateful {result.stateful[metric]:.3f} stateless {result.stateless[metric]:.3f} "
        f"margin {result.margin:.3f}; stateful {result.stateful}; stateless {result.stateless}"
    )
    assert result.margin >= MARGIN, (result.stateful, result.stateless)
