"""Video pipeline: per-frame feature vectors keyed by camera; a multiclass head names each frame's activity.

A frame encoder turns every frame into a 64-d vector. In this world a scene is idle (the background) or
something moves along one of two paths through feature space (two trajectories that cross in the middle).
The activities are defined by order and timing, not by what a frame looks like:

- ``idle``;
- ``path_a_forward`` / ``path_a_backward``: the same frames, in opposite order;
- ``path_b_forward`` / ``path_b_backward``;
- ``path_a_return``: along path A and back again within one activity.

Durations vary (12-40 frames; a return takes twice as long), frames are noisy, about five a second with
jitter and dropped frames. A single frame shows where on a path the scene is, not which way it moves: a
model of single frames can name idle frames and the path, but guesses the direction.

Truth: ``label`` (activity index into :data:`ACTIVITIES`, also the table's ``label`` column) and
``segment_id`` (global activity segment number). Metrics: accuracy and macro-F1 per frame and per segment
(a segment's prediction is the class with the highest mean probability over its frames).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pyarrow as pa

from rnnstream.pipelines.spec import (
    DEFAULT_START_MS,
    GeneratedStream,
    PipelineSpec,
    ServingDefaults,
    TrainingDefaults,
    assemble_table,
    group_cumsum,
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

NAME = "video"
SCHEMA_VERSION = 1
FEATURE_DIM = 64
ACTIVITIES: tuple[str, ...] = (
    "idle",
    "path_a_forward",
    "path_a_backward",
    "path_b_forward",
    "path_b_backward",
    "path_a_return",
)
NOISE = 0.35  # frame noise per dimension, relative to unit-norm anchors
SCHEMA = EventSchema(
    pipeline=NAME,
    version=SCHEMA_VERSION,
    vectors=(("frame", FEATURE_DIM),),
    has_label=True,
)


def _anchors() -> np.ndarray:
    """Fixed points of feature space: background, path A (3 points), path B (3 points, same middle)."""
    rng = np.random.default_rng(64)
    pts = rng.normal(0.0, 1.0, (6, FEATURE_DIM))
    pts /= np.linalg.norm(pts, axis=1, keepdims=True)
    background, a0, a2, b0, b2, middle = pts
    return np.stack([background, a0, middle, a2, b0, middle, b2]) * 2.0


_ANCHORS = _anchors()


def _path_points(path: np.ndarray, s: np.ndarray) -> np.ndarray:
    """Points at fraction ``s`` in [0, 1] along the 3-anchor path of each frame (``path`` 0 = A, 1 = B)."""
    seg = np.minimum((s * 2).astype(np.int64), 1)
    frac = (s * 2 - seg)[:, None]
    first = 1 + 3 * path + seg
    return _ANCHORS[first] * (1 - frac) + _ANCHORS[first + 1] * frac


def generate(
    n_events: int,
    n_keys: int,
    seed: int,
    start_ms: int = DEFAULT_START_MS,
    idle_share: float = 0.3,
    fps: float = 5.0,
) -> GeneratedStream:
    """``n_events`` frames of ``n_keys`` cameras; activities back to back, ``idle_share`` of them idle."""
    rng = np.random.default_rng(seed)
    counts = split_counts(rng, n_events, n_keys, minimum=40, spread=0.2)
    n = int(counts.sum())

    # ---- segments: enough per camera to fill its quota (shortest segment is 8 frames), then cut
    per_cam = counts // 8 + 2
    seg_cam = np.repeat(np.arange(n_keys), per_cam)
    n_seg = len(seg_cam)
    activity = np.where(rng.random(n_seg) < idle_share, 0, rng.integers(1, len(ACTIVITIES), n_seg))
    duration = np.where(activity == 0, rng.integers(8, 25, n_seg), rng.integers(12, 41, n_seg))
    duration = np.where(activity == 5, 2 * duration, duration)
    seg_start = group_cumsum(duration, per_cam) - duration  # first frame's position on its camera
    cam_of_frame, pos = group_positions(counts)
    # segment of each frame: the last segment of its camera that starts at or before the frame
    seg_base = group_starts(per_cam)
    seg_of_frame = seg_base[cam_of_frame] + _search_per_group(seg_start, per_cam, cam_of_frame, pos)
    j = pos - seg_start[seg_of_frame]
    dur = duration[seg_of_frame]
    act = activity[seg_of_frame]

    # ---- frames: position along the path by activity, plus noise
    s = j / np.maximum(dur - 1, 1)
    s = np.select([act == 2, act == 4, act == 5], [1 - s, 1 - s, 1 - np.abs(2 * s - 1)], s)
    path = np.where((act == 3) | (act == 4), 1, 0)
    frames = _path_points(path, np.clip(s, 0.0, 1.0)).astype(np.float32)
    frames[act == 0] = _ANCHORS[0]
    frames += np.float32(NOISE) * rng.standard_normal((n, FEATURE_DIM), dtype=np.float32)

    gap_s = rng.uniform(0.85, 1.15, n) / fps
    dropped = rng.random(n) < 0.02
    gap_s[dropped] *= 2
    spread_first_gaps(rng, gap_s, counts, 1.0)
    times = times_from_gaps(gap_s, counts, start_ms)

    used, segment_id = np.unique(seg_of_frame, return_inverse=True)
    order = time_order(cam_of_frame, times)
    table = assemble_table(
        SCHEMA,
        "camera",
        n_keys,
        cam_of_frame,
        times,
        vectors={"frame": frames},
        label=act,
        order=order,
    )
    truth = {
        "label": act[order].astype(np.int64),
        "segment_id": segment_id.reshape(-1)[order].astype(np.int64),
    }
    info = {
        "segments": len(used),
        **{f"segments_{a}": int((activity[used] == i).sum()) for i, a in enumerate(ACTIVITIES)},
    }
    return GeneratedStream(table, truth, info)


def _search_per_group(
    starts: np.ndarray, group_sizes: np.ndarray, group: np.ndarray, value: np.ndarray
) -> np.ndarray:
    """For each (group, value): index inside the group of the last ``starts`` entry <= value.

    ``starts`` is increasing within each group; groups are searched at once by offsetting each group's
    starts by a large multiple of its group index.
    """
    big = int(max(starts.max(initial=0), value.max(initial=0))) + 1
    seg_group = np.repeat(np.arange(len(group_sizes)), group_sizes)
    keyed = seg_group * big + starts
    idx = np.searchsorted(keyed, group * big + value, side="right") - 1
    return idx - group_starts(group_sizes)[group]


def evaluate(table: pa.Table, outputs: np.ndarray, truth: Mapping[str, np.ndarray]) -> dict[str, float]:
    """Accuracy and macro-F1 per frame and per activity segment (mean probability over its frames)."""
    probs = np.asarray(outputs, dtype=np.float64)
    y = np.asarray(truth["label"]).astype(np.int64)
    pred = probs.argmax(1)
    _, seg = np.unique(np.asarray(truth["segment_id"]), return_inverse=True)
    seg = seg.reshape(-1)
    n_seg = int(seg.max()) + 1 if len(seg) else 0
    seg_probs = np.zeros((n_seg, probs.shape[1]))
    np.add.at(seg_probs, seg, probs)
    seg_y = np.zeros(n_seg, dtype=np.int64)
    seg_y[seg] = y
    seg_pred = seg_probs.argmax(1)
    return {
        "accuracy": float(metrics.accuracy(y, pred)),
        "macro_f1": float(metrics.macro_f1(y, pred)),
        "segment_accuracy": float(metrics.accuracy(seg_y, seg_pred)),
        "segment_macro_f1": float(metrics.macro_f1(seg_y, seg_pred)),
    }


def pipeline_spec() -> PipelineSpec:
    """The video pipeline: GRU + multiclass head over per-frame feature vectors."""
    return PipelineSpec(
        name=NAME,
        description="64-d frame features per camera; activity of each frame from the order of frames",
        key_meaning="camera",
        schema=SCHEMA,
        model_config=ModelConfig(
            features=SCHEMA.feature_spec(),
            cell="gru",
            head="multiclass",
            hidden_size=64,
            num_layers=1,
            num_classes=len(ACTIVITIES),
        ),
        label_column="label",
        # Live frames at a few fps per camera: answer fast, a camera silent for 10 minutes starts afresh.
        serving=ServingDefaults(
            partitions=8,
            max_batch_events=4096,
            batch_linger_ms=10,
            key_ttl_seconds=10 * 60,
            checkpoint_interval_events=100_000,
            checkpoint_interval_seconds=15.0,
        ),
        training=TrainingDefaults(epochs=10, chunk_len=64, batch_keys=32, learning_rate=5e-3),
        generator=generate,
        evaluator=evaluate,
        primary_metric="accuracy",
        demo_keys=50,
        demo_events_per_key=1000,
    )
