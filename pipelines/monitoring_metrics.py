"""Monitoring-metrics pipeline: multivariate host metrics keyed by host; a forecast head scores each event.

Each host reports six metrics about once a minute (jittered, with missed scrapes). A host's metrics follow
its own levels and a daily cycle (load, CPU, requests and latency move together), plus measurement noise
that is large next to the change from one scrape to the next. A single event therefore says little: its
values are normal for some host at some hour. What is abnormal is an event relative to what this host's
recent history predicts, and that needs memory: the stateless baseline forecasts every event from a zero
state (the same forecast for all hosts), so it only finds values that are extreme for any host.

Anomaly segments (``label`` = 1 over the segment), kinds in :data:`ANOMALY_KINDS`: ``spike`` (1-3 events),
``level_shift``, ``variance_change``, ``drift`` (a slow ramp), ``correlated_failure`` (latency and errors
up, requests and CPU down together) and ``cycle_change`` (the daily cycle inverts). Truth: ``label``,
``anomaly_id`` (segment number, -1 outside) and ``anomaly_kind`` (index into :data:`ANOMALY_KINDS`, -1).

Head: forecast. The event's anomaly score is its standardized forecast error (from the state before the
event), mapped to [0, 1] by the calibration fitted on training data. Metrics: best-F1 with and without point
adjustment (a segment counts as found when any of its events is flagged) and the delay from a segment's start
to its first alert at the best threshold.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pyarrow as pa

from rnnstream.pipelines.spec import (
    DEFAULT_START_MS,
    MS_PER_DAY,
    GeneratedStream,
    PipelineSpec,
    ServingDefaults,
    TrainingDefaults,
    assemble_table,
    group_positions,
    group_starts,
    split_counts,
    spread_first_gaps,
    time_order,
    times_from_gaps,
)
from rnnstream.rnn_core import metrics
from rnnstream.rnn_core.config import ModelConfig
from rnnstream.rnn_core.event_schema import EventSchema

NAME = "monitoring-metrics"
SCHEMA_VERSION = 1
METRICS: tuple[str, ...] = ("cpu", "memory", "load", "latency_ms", "error_rate", "requests")
# latent unit (one noise standard deviation) -> metric units: value = offset + scale * latent
_OFFSET = np.array([45.0, 55.0, 2.0, 120.0, 1.0, 500.0])
_SCALE = np.array([4.0, 3.0, 0.3, 12.0, 0.08, 40.0])
_LOWER = np.array([0.0, 0.0, 0.0, 1.0, 0.0, 0.0])
# how strongly each metric follows the host's daily cycle
_CYCLE_WEIGHT = np.array([1.0, 0.3, 1.0, 0.7, 0.2, 1.2])
ANOMALY_KINDS: tuple[str, ...] = (
    "spike",
    "level_shift",
    "variance_change",
    "drift",
    "correlated_failure",
    "cycle_change",
)
_MIN_LEN = np.array([1, 4, 10, 10, 5, 10])
_MAX_LEN = np.array([3, 15, 30, 25, 20, 25])
_CORRELATED_SIGNATURE = np.array([-2.5, 0.0, -1.5, 4.0, 5.0, -3.0])
_SLOT = 64  # at most one anomaly segment per slot of a host's events

SCHEMA = EventSchema(pipeline=NAME, version=SCHEMA_VERSION, numeric=METRICS, has_label=True)


def generate(
    n_events: int,
    n_keys: int,
    seed: int,
    start_ms: int = DEFAULT_START_MS,
    anomaly_rate: float = 0.06,
    interval_s: float = 60.0,
) -> GeneratedStream:
    """``n_events`` scrapes of ``n_keys`` hosts ``interval_s`` apart; about ``anomaly_rate`` anomalous."""
    rng = np.random.default_rng(seed)
    n_metrics = len(METRICS)
    counts = split_counts(rng, n_events, n_keys, minimum=_SLOT, spread=0.2)
    host, pos = group_positions(counts)
    n = int(counts.sum())

    # ---- times: jittered scrapes, some missed
    gap_s = interval_s * rng.uniform(0.9, 1.1, n)
    missed = rng.random(n) < 0.02
    gap_s[missed] *= rng.integers(2, 5, int(missed.sum()))
    spread_first_gaps(rng, gap_s, counts, interval_s)
    times = times_from_gaps(gap_s, counts, start_ms)

    # ---- normal behaviour, in noise units
    level = rng.normal(0.0, 6.0, (n_keys, n_metrics))
    amplitude = rng.uniform(2.0, 5.0, n_keys)[:, None] * _CYCLE_WEIGHT
    phase = rng.uniform(0.0, 1.0, n_keys)
    trend_per_day = rng.normal(0.0, 0.5, (n_keys, n_metrics))
    day = (times - start_ms) / MS_PER_DAY
    angle = 2 * np.pi * (times / MS_PER_DAY + phase[host])
    cycle = np.sin(angle) + 0.3 * np.sin(2 * angle)
    signal = level[host] + amplitude[host] * cycle[:, None] + trend_per_day[host] * day[:, None]
    noise = rng.normal(0.0, 1.0, (n, n_metrics))

    # ---- anomaly segments: at most one per slot of _SLOT events, none in a host's first slot
    n_slots = -(-counts // _SLOT)
    slot_base = group_starts(n_slots)
    total_slots = int(n_slots.sum())
    slot_host, slot_index = group_positions(n_slots)
    kind = rng.integers(0, len(ANOMALY_KINDS), total_slots)
    length = rng.integers(_MIN_LEN[kind], _MAX_LEN[kind] + 1)
    mean_len = float(((_MIN_LEN + _MAX_LEN) / 2).mean())
    slot_events = np.minimum(counts[slot_host] - slot_index * _SLOT, _SLOT)
    has = (
        (rng.random(total_slots) < anomaly_rate * _SLOT / mean_len)
        & (slot_index > 0)
        & (slot_events > length)
    )
    offset = (rng.random(total_slots) * np.maximum(slot_events - length, 1)).astype(np.int64)
    sign = np.where(rng.random(total_slots) < 0.5, -1.0, 1.0)
    magnitude = np.select(
        [kind == 0, kind == 1, kind == 2, kind == 3, kind == 4],
        [
            rng.uniform(8, 12, total_slots),  # spike: size in noise units
            rng.uniform(5, 8, total_slots),  # level shift: size
            rng.uniform(5, 7, total_slots),  # variance change: noise multiplier
            rng.uniform(10, 14, total_slots),  # drift: size reached at the end
            rng.uniform(1.5, 2.0, total_slots),  # correlated failure: signature multiplier
        ],
        1.0,
    )
    n_affected = np.where(kind == 2, rng.integers(2, 5, total_slots), rng.integers(1, 4, total_slots))
    affected = np.argsort(rng.random((total_slots, n_metrics)), axis=1) < n_affected[:, None]

    slot = slot_base[host] + pos // _SLOT
    j = pos - (pos // _SLOT) * _SLOT - offset[slot]
    inside = has[slot] & (j >= 0) & (j < length[slot])
    ev_kind = np.where(inside, kind[slot], -1)
    delta = np.zeros((n, n_metrics))
    for k in range(len(ANOMALY_KINDS)):
        rows = np.flatnonzero(ev_kind == k)
        seg = slot[rows]
        mask = affected[seg]
        mag = magnitude[seg][:, None]
        if k in (0, 1):  # spike, level shift
            delta[rows] = sign[seg][:, None] * mag * mask
        elif k == 2:  # variance change: extra noise
            delta[rows] = (mag - 1.0) * mask * rng.normal(0.0, 1.0, (len(rows), n_metrics))
        elif k == 3:  # slow drift: a ramp
            ramp = (j[rows] + 1) / length[seg]
            delta[rows] = sign[seg][:, None] * mag * mask * ramp[:, None]
        elif k == 4:  # correlated failure: latency and errors up, requests and CPU down, all erratic
            erratic = 2.0 * (_CORRELATED_SIGNATURE != 0) * rng.normal(0.0, 1.0, (len(rows), n_metrics))
            delta[rows] = mag * _CORRELATED_SIGNATURE + erratic
        else:  # cycle change: the daily cycle inverts
            delta[rows] = -2.0 * amplitude[host[rows]] * cycle[rows, None]

    values = np.maximum(_OFFSET + _SCALE * (signal + noise + delta), _LOWER)
    label = inside.astype(np.int64)
    segment_id = np.cumsum(has) - 1
    anomaly_id = np.where(inside, segment_id[slot], -1)

    order = time_order(host, times)
    table = assemble_table(
        SCHEMA,
        "host",
        n_keys,
        host,
        times,
        numeric={name: values[:, i] for i, name in enumerate(METRICS)},
        label=label,
        order=order,
    )
    truth = {
        "label": label[order],
        "anomaly_id": anomaly_id[order],
        "anomaly_kind": ev_kind[order].astype(np.int8),
    }
    info = {f"segments_{k}": int((has & (kind == i)).sum()) for i, k in enumerate(ANOMALY_KINDS)}
    return GeneratedStream(table, truth, info)


def evaluate(table: pa.Table, outputs: np.ndarray, truth: Mapping[str, np.ndarray]) -> dict[str, float]:
    """Best-F1 with and without point adjustment, and the alert delay, of the forecast head's outputs.

    Thresholds sweep ``error_z`` (column 1): the calibrated ``score`` (column 0) is a strictly increasing
    map of it (still rising past the largest training error), so ranking by either gives the same best F1;
    ``error_z`` keeps the reported thresholds in forecast-error units.
    """
    error_z = np.asarray(outputs)[:, 1].astype(np.float64)
    return anomaly_metrics(table, error_z, np.asarray(truth["label"]))


def anomaly_metrics(table: pa.Table, score: np.ndarray, label: np.ndarray) -> dict[str, float]:
    """Best-F1 over thresholds without and with point adjustment, and the alert delay, all keys together.

    Segments are runs of anomalous events of one key, so rows are grouped by key (event order kept) and
    the key is the series id of the segment metrics. ``alert_delay_events`` / ``alert_delay_s``: mean over
    found segments of the events / event-time seconds from a segment's start to its first event at or above
    the point-adjusted best threshold; ``segments_found`` the share of segments found at that threshold.
    """
    keys = table.column("key").combine_chunks().dictionary_encode().indices.to_numpy()
    by_key = np.argsort(keys, kind="stable")
    series = keys[by_key]
    y = np.asarray(label).astype(np.int64)[by_key]
    s = np.asarray(score, dtype=np.float64)[by_key]
    times = table.column("time").cast(pa.int64()).to_numpy()[by_key]
    point = metrics.best_f1(y, s)
    adjusted = metrics.best_f1_point_adjusted(y, s, series)
    delays = metrics.detection_delay(y, s, adjusted.threshold, series)
    starts, _ = metrics.anomaly_segments(y, series)
    found = ~np.isnan(delays)
    first_alert = starts[found] + delays[found].astype(np.int64)
    delay_s = (times[first_alert] - times[starts[found]]) / 1000.0
    return {
        "best_f1": float(point.f1),
        "best_f1_threshold": float(point.threshold),
        "best_f1_pa": float(adjusted.f1),
        "best_f1_pa_threshold": float(adjusted.threshold),
        "alert_delay_events": float(delays[found].mean()) if found.any() else float("nan"),
        "alert_delay_s": float(delay_s.mean()) if found.any() else float("nan"),
        "segments_found": float(found.mean()) if len(found) else float("nan"),
        "anomaly_rate": float(y.mean()) if len(y) else 0.0,
    }


def pipeline_spec() -> PipelineSpec:
    """The monitoring-metrics pipeline: GRU + forecast head over host metrics."""
    return PipelineSpec(
        name=NAME,
        description="host metrics once a minute; anomaly score = calibrated standardized forecast error",
        key_meaning="host",
        schema=SCHEMA,
        model_config=ModelConfig(
            features=SCHEMA.feature_spec(), cell="gru", head="forecast", hidden_size=64, num_layers=1
        ),
        label_column=None,
        # A scrape a minute per host: modest rates, batches can wait; a host silent for a day is gone.
        serving=ServingDefaults(
            partitions=6,
            max_batch_events=4096,
            batch_linger_ms=200,
            key_ttl_seconds=86_400,
            checkpoint_interval_events=100_000,
            checkpoint_interval_seconds=60.0,
        ),
        # Few hosts, long series: short chunks give many optimizer steps per epoch, so few epochs suffice
        # (a Ray Train epoch costs a checkpoint; 8 x 32 matched 15 x 64 on the demo stream).
        training=TrainingDefaults(epochs=8, chunk_len=32, batch_keys=32, learning_rate=5e-3),
        generator=generate,
        evaluator=evaluate,
        primary_metric="best_f1",
        demo_keys=50,
        demo_events_per_key=1000,
    )
