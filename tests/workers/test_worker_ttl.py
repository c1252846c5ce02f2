"""Event-time TTL in a scoring worker (run without Ray: the worker class is usable on its own).

A key idle for longer than the TTL (in event time) starts again from a zero state, deterministically (the
check is against the key's previous event, so a replay gives the same result), and idle keys are swept out
of memory at checkpoint time; both are counted as evictions.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import torch

from rnnstream.rnn_core.features import features_from_arrow
from rnnstream.workers.score_verifier import read_scores
from rnnstream.workers.scoring_worker import ScoringWorker
from rnnstream.workers.worker_config import committed_all
from tests.workers.worker_harness import (
    make_events,
    produce,
    wait_for,
    worker_config,
)

TTL_MS = 60_000


def test_ttl_resets_idle_keys_and_evicts(new_stream, tmp_path):
    settings, _, schema, model, handle = new_stream("ttl", 1)
    start = 1_700_000_000_000
    first = make_events(schema, 3, 1, seed=8, start_ms=start)  # key k00000: 3 events within a few ms
    later = make_events(schema, 1, 1, seed=9, start_ms=start + 10 * TTL_MS)  # same key, long after the TTL
    table = pa.concat_tables([first, later])
    produce(settings, schema, table, encoding="json")
    config = worker_config(
        settings, schema, tmp_path / "ckpt", key_ttl_seconds=TTL_MS / 1000, checkpoint_interval_seconds=0.2
    )
    worker = ScoringWorker(0, config, export_metrics=False)
    try:
        worker.assign([0], handle)
        wait_for(lambda: committed_all(settings, config), 60, "all events committed")
        evicted = worker.metrics.counts["evicted"]
    finally:
        worker.shutdown()
    scores = read_scores(settings, config.scores_topic)
    by_offset = {pos[1]: scores.outputs["score"][i] for i, pos in enumerate(scores.positions)}
    # the 4th event must score like a key's first event (zero state, time delta 0)
    x = features_from_arrow(later, model.config.features)
    x[:, -1] = 0.0
    with torch.no_grad():
        expected, _ = model.forward(torch.from_numpy(x[None]), None)
    assert np.isclose(by_offset[3], float(expected[0, 0, 0]), atol=1e-5)
    assert evicted >= 1
