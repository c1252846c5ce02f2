"""Pipeline specs and their stream generators: schema, seeded determinism, event-time order, interleaved keys,
ground truth that agrees with itself and with the table."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from rnnstream.pipelines import fraud, monitoring_logs, monitoring_metrics, video
from rnnstream.pipelines.spec import (
    DEFAULT_START_MS,
    PIPELINE_NAMES,
    GeneratedStream,
    PipelineSpec,
    get_pipeline,
)
from rnnstream.rnn_core.config import ConfigError
from rnnstream.rnn_core.features import features_from_arrow

N_EVENTS = 4000
N_KEYS = 25


@pytest.fixture(scope="module", params=PIPELINE_NAMES)
def spec(request: pytest.FixtureRequest) -> PipelineSpec:
    return get_pipeline(request.param)


@pytest.fixture(scope="module")
def stream(spec: PipelineSpec) -> GeneratedStream:
    return spec.generate(N_EVENTS, N_KEYS, seed=7)


def _keys(stream: GeneratedStream) -> np.ndarray:
    return np.asarray(stream.table.column("key").to_numpy(zero_copy_only=False))


def test_get_pipeline_by_name_and_module_name() -> None:
    for name in PIPELINE_NAMES:
        assert get_pipeline(name).name == name
        assert get_pipeline(name.replace("-", "_")).name == name
    with pytest.raises(ConfigError, match="unknown pipeline"):
        get_pipeline("nope")


def test_spec_is_consistent(spec: PipelineSpec) -> None:
    assert spec.model_config.features == spec.schema.feature_spec()
    assert spec.schema.pipeline == spec.name
    assert spec.stateless_config().stateless and not spec.model_config.stateless
    assert spec.stateless_config().hidden_size == spec.model_config.hidden_size
    assert (spec.label_column is not None) == (spec.model_config.head in ("binary", "multiclass"))
    s = spec.serving
    assert s.partitions >= 1 and s.max_batch_events >= 256 and s.key_ttl_seconds >= 60
    assert s.checkpoint_interval_events >= 1000 and s.checkpoint_interval_seconds > 0


def test_table_matches_arrow_schema_and_size(spec: PipelineSpec, stream: GeneratedStream) -> None:
    assert stream.table.schema.equals(spec.schema.arrow_schema(), check_metadata=True)
    assert stream.num_events == N_EVENTS
    assert len(set(_keys(stream))) == N_KEYS
    for name, arr in stream.truth.items():
        assert len(arr) == N_EVENTS, name
    x = features_from_arrow(stream.table, spec.model_config.features)
    assert x.shape == (N_EVENTS, spec.model_config.features.input_size)
    assert np.isfinite(x).all()


def test_seeded_determinism(spec: PipelineSpec, stream: GeneratedStream) -> None:
    again = spec.generate(N_EVENTS, N_KEYS, seed=7)
    assert again.table.equals(stream.table)
    for name, arr in stream.truth.items():
        np.testing.assert_array_equal(again.truth[name], arr)
    other = spec.generate(N_EVENTS, N_KEYS, seed=8)
    assert not other.table.equals(stream.table)


def test_event_time_order_and_interleaved_keys(stream: GeneratedStream) -> None:
    times = stream.times_ms()
    assert (np.diff(times) >= 0).all(), "rows must be in event-time order"
    keys = _keys(stream)
    order = np.lexsort((np.arange(len(keys)), keys))
    same_key = keys[order][1:] == keys[order][:-1]
    assert (np.diff(times[order])[same_key] > 0).all(), "a key's events must have increasing times"
    # keys interleave: consecutive rows mostly belong to different keys, and every key is active early
    assert (keys[1:] != keys[:-1]).mean() > 0.5
    first_row = {k: i for i, k in reversed(list(enumerate(keys)))}
    assert max(first_row.values()) < N_EVENTS // 4
    # irregular gaps within keys
    gaps = np.diff(times[order])[same_key]
    assert gaps.std() / gaps.mean() > 0.05


def test_start_ms_shifts_the_stream(spec: PipelineSpec, stream: GeneratedStream) -> None:
    default = spec.generate(N_EVENTS, N_KEYS, seed=7)
    shifted = spec.generate(N_EVENTS, N_KEYS, seed=7, start_ms=DEFAULT_START_MS + 10**9)
    np.testing.assert_array_equal(shifted.times_ms(), default.times_ms() + 10**9)
    assert shifted.table.column("key").equals(stream.table.column("key"))


def test_label_column_is_the_truth(stream: GeneratedStream) -> None:
    np.testing.assert_array_equal(stream.table.column("label").to_numpy(), stream.truth["label"])


def _contiguous_per_key(keys: np.ndarray, ids: np.ndarray) -> bool:
    """Each id >= 0 belongs to one key and forms one run of that key's events."""
    for key in np.unique(keys):
        own = ids[keys == key]
        own = own[own >= 0]
        runs = own[np.r_[True, own[1:] != own[:-1]]]
        if len(runs) != len(np.unique(runs)):
            return False
    owners: dict[int, str] = {}
    return all(i < 0 or owners.setdefault(int(i), k) == k for k, i in zip(keys, ids, strict=True))


def test_fraud_truth() -> None:
    s = fraud.generate(20_000, 400, seed=3, fraud_rate=0.5)
    kind = s.truth["fraud_kind"]
    np.testing.assert_array_equal(s.truth["label"] == 1, kind >= 0)
    assert all(s.info[f"episodes_{k}"] > 0 for k in fraud.FRAUD_KINDS)
    assert 0.01 < s.truth["label"].mean() < 0.2
    keys = _keys(s)
    # an episode is the last thing a card does: no legitimate event after a card's first fraud
    for key in np.unique(keys[s.truth["label"] == 1])[:50]:
        own = s.truth["label"][keys == key]
        assert own[np.argmax(own == 1) :].all()
    # card testing starts with tiny amounts
    amounts = s.table.column("amount").to_numpy()
    tests = kind == fraud.FRAUD_KINDS.index("card_testing")
    assert (amounts[tests] <= 2.5).mean() > 0.5


def test_metrics_truth() -> None:
    s = monitoring_metrics.generate(30_000, 20, seed=3)
    anomaly_id, kind, label = s.truth["anomaly_id"], s.truth["anomaly_kind"], s.truth["label"]
    np.testing.assert_array_equal(label == 1, anomaly_id >= 0)
    np.testing.assert_array_equal(label == 1, kind >= 0)
    assert _contiguous_per_key(_keys(s), anomaly_id)
    assert all(s.info[f"segments_{k}"] > 0 for k in monitoring_metrics.ANOMALY_KINDS)
    assert 0.02 < label.mean() < 0.12
    for name in monitoring_metrics.METRICS:
        assert np.isfinite(s.table.column(name).to_numpy()).all()


def test_logs_truth() -> None:
    s = monitoring_logs.generate(20_000, 30, seed=3)
    keys = _keys(s)
    session, session_label, label = s.truth["session_id"], s.truth["session_label"], s.truth["label"]
    assert _contiguous_per_key(keys, session)
    for sid in np.unique(session[session_label == 1])[:100]:
        assert label[session == sid].max() == 1
    assert (label[session_label == 0] == 0).all()
    templates = np.asarray(s.table.column("template").to_numpy(zero_copy_only=False))
    unseen = ~np.isin(templates, monitoring_logs.TEMPLATES)
    kind = s.truth["anomaly_kind"]
    np.testing.assert_array_equal(unseen, kind == monitoring_logs.ANOMALY_KINDS.index("unseen_template"))
    # a normal session follows one of the workflows
    for key in np.unique(keys)[:5]:
        own_t = templates[keys == key]
        own_s = session[keys == key]
        own_l = session_label[keys == key]
        for sid in np.unique(own_s)[1:-1]:  # whole sessions (the last one may be cut)
            seq = tuple(int(t[1:]) - 1 for t in own_t[own_s == sid])
            if own_l[own_s == sid][0] == 0:
                assert seq in monitoring_logs.WORKFLOWS
    broken = sum(s.info[f"sessions_{k}"] for k in monitoring_logs.ANOMALY_KINDS)
    assert 0.05 < broken / s.info["sessions"] < 0.2


def test_logs_sessions_from_archived_events() -> None:
    """Archived events carry only ``label``: sessions read off the events match the generator's, and the
    logs metrics computed from ``label`` alone equal those from the full truth."""
    s = monitoring_logs.generate(6_000, 12, seed=5)
    derived = monitoring_logs.sessions_from_table(s.table)
    truth = s.truth["session_id"]
    pairs = np.unique(np.stack([derived, truth], axis=1), axis=0)
    assert len(pairs) == len(np.unique(derived)) == len(np.unique(truth))
    rng = np.random.default_rng(0)
    outputs = np.stack([rng.random(s.num_events), rng.integers(0, 6, s.num_events)], axis=1)
    full = monitoring_logs.evaluate(s.table, outputs, s.truth)
    assert monitoring_logs.evaluate(s.table, outputs, {"label": s.truth["label"]}) == full


def test_video_truth() -> None:
    s = video.generate(20_000, 20, seed=3)
    keys = _keys(s)
    seg, label = s.truth["segment_id"], s.truth["label"]
    assert _contiguous_per_key(keys, seg)
    for sid in np.unique(seg)[:200]:
        assert len(np.unique(label[seg == sid])) == 1
    assert set(np.unique(label)) == set(range(len(video.ACTIVITIES)))
    frames = np.asarray(s.table.column("frame").combine_chunks().flatten().to_numpy()).reshape(
        -1, video.FEATURE_DIM
    )
    # forward and backward activities of a path show the same frames (only their order differs)
    fwd = frames[label == video.ACTIVITIES.index("path_a_forward")].mean(0)
    bwd = frames[label == video.ACTIVITIES.index("path_a_backward")].mean(0)
    idle = frames[label == 0].mean(0)
    assert np.linalg.norm(fwd - bwd) < 0.2 * np.linalg.norm(fwd - idle)


def test_split_time_and_take(stream: GeneratedStream) -> None:
    before, after, split_ms = stream.split_time(0.6)
    assert before.num_events + after.num_events == stream.num_events
    assert (before.times_ms() < split_ms).all() and (after.times_ms() >= split_ms).all()
    assert abs(before.num_events - 0.6 * stream.num_events) < 0.05 * stream.num_events
    rows = np.flatnonzero(stream.truth["label"] == 1)
    sub = stream.take(rows)
    assert sub.num_events == len(rows) and (sub.truth["label"] == 1).all()


def test_generators_scale_vectorized() -> None:
    """200k events per pipeline in about a second each (vectorized numpy, no per-event Python)."""
    for name in PIPELINE_NAMES:
        s = get_pipeline(name).generate(200_000, 5_000, seed=1)
        assert s.num_events == 200_000
        assert pc.count_distinct(s.table.column("key")).as_py() == 5_000
        assert isinstance(s.table, pa.Table)


@pytest.mark.parametrize(("n_events", "n_keys"), [(1, 1), (10, 50), (57, 7)])
def test_tiny_and_key_heavy_streams(spec: PipelineSpec, n_events: int, n_keys: int) -> None:
    s = spec.generate(n_events, n_keys, seed=0)
    assert s.num_events == n_events
    assert (np.diff(s.times_ms()) >= 0).all()
