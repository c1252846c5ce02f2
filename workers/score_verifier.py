"""An independent verifier of exactly-once scoring (modelled on Kafka Streams' EOS system tests).

It reads, from the broker and nothing else, the pipeline's events topic and its scores topic (with
``read_committed``), and checks:

- every valid source event ``(partition, offset, index)`` has exactly one committed score (``at_least_once``
  mode: at least one, and exactly one after dropping duplicates by source position);
- no score names an event that does not exist;
- each score equals the offline ``forward`` of the model over that key's whole sequence (``abs_tol``), when
  a model is given (``versions`` maps a score's model version to the model that should have made it);
- the final state of every key in the workers' checkpoints equals the offline forward's final state.

The reference never uses the serving code path (no StreamScorer, no KeyedStateStore): it groups each key's
events in offset order, fills the time delta, and runs ``model.forward`` on equal-length groups of keys.
"""

from __future__ import annotations

import json
import time
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa

from rnnstream.rnn_core.event_schema import EventSchema
from rnnstream.rnn_core.features import features_from_arrow
from rnnstream.workers.event_codec import ARROW, ENCODING_HEADER, decode, header_value
from rnnstream.workers.kafka_settings import KafkaSettings
from rnnstream.workers.worker_config import DEFAULT_DEPLOYMENT


def read_topic(
    settings: KafkaSettings, topic: str, *, read_committed: bool = True, timeout_s: float = 60.0
) -> list[Any]:
    """Every message of ``topic`` up to its current end (last stable offset when read_committed), partition
    after partition: a broker that answers a fetch with every assigned partition's whole backlog (the
    embedded one ignores ``fetch_max_bytes``) would otherwise send more than kafka-python takes in one
    response (100 MB) for a large topic, and the read would never end."""
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(
        **settings.client_kwargs(),
        enable_auto_commit=False,
        isolation_level="read_committed" if read_committed else "read_uncommitted",
        auto_offset_reset="earliest",
        max_poll_records=20_000,
    )
    try:
        out: list[Any] = []
        deadline = time.monotonic() + timeout_s
        for part in sorted(consumer.partitions_for_topic(topic) or set()):
            tp = TopicPartition(topic, part)
            consumer.assign([tp])
            consumer.seek_to_beginning(tp)
            end = consumer.end_offsets([tp])[tp]
            while consumer.position(tp) < end:
                if time.monotonic() > deadline:
                    raise TimeoutError(
                        f"reading {topic} did not reach end offset {end} of {tp} in {timeout_s} s"
                    )
                for msgs in consumer.poll(timeout_ms=200).values():
                    out.extend(msgs)
        return out
    finally:
        consumer.close()


@dataclass
class EventLog:
    """The valid events of a topic in (partition, offset, index) order, with features and per-key order."""

    batch: pa.Table
    partition: np.ndarray
    offset: np.ndarray
    index: np.ndarray
    rejects: int

    @property
    def positions(self) -> list[tuple[int, int, int]]:
        return list(zip(self.partition.tolist(), self.offset.tolist(), self.index.tolist(), strict=True))

    def without(self, positions: set[tuple[int, int, int]]) -> EventLog:
        """The log less the events at ``positions`` (partition, offset, index): e.g. the events a worker
        dead-lettered because scoring them raised, which no state and no score may contain."""
        keep = np.asarray([p not in positions for p in self.positions], dtype=bool)
        return EventLog(
            self.batch.filter(pa.array(keep)),
            self.partition[keep],
            self.offset[keep],
            self.index[keep],
            self.rejects + int((~keep).sum()),
        )


def read_events(
    settings: KafkaSettings, topic: str, schema: EventSchema, timeout_s: float = 60.0
) -> EventLog:
    """Decode a whole events topic (rejects counted, not kept)."""
    msgs = read_topic(settings, topic, read_committed=True, timeout_s=timeout_s)
    msgs.sort(key=lambda m: (m.partition, m.offset))
    batches, parts, offs, idxs, rejects = [], [], [], [], 0
    for start in range(0, len(msgs), 5000):
        d = decode(msgs[start : start + 5000], schema, now_ms=int(time.time() * 1000))
        rejects += len(d.rejects)
        if d.num_valid:
            batches.append(d.batch)
            parts.append(d.partition)
            offs.append(d.offset)
            idxs.append(d.event_index)
    table = (
        pa.Table.from_batches(batches, schema=schema.arrow_schema())
        if batches
        else schema.arrow_schema().empty_table()
    )

    def cat(xs, dt):
        return np.concatenate(xs) if xs else np.zeros(0, dt)

    return EventLog(table, cat(parts, np.int32), cat(offs, np.int64), cat(idxs, np.int32), rejects)


@dataclass
class ScoreLog:
    """Scores read back: source positions, keys, outputs per name, model versions."""

    positions: list[tuple[int, int, int]]
    keys: list[str]
    versions: list[str]
    outputs: dict[str, np.ndarray]


def read_scores(settings: KafkaSettings, topic: str, timeout_s: float = 60.0) -> ScoreLog:
    """Every committed score of ``topic`` (JSON or Arrow messages)."""
    msgs = read_topic(settings, topic, read_committed=True, timeout_s=timeout_s)
    positions: list[tuple[int, int, int]] = []
    keys: list[str] = []
    versions: list[str] = []
    outputs: dict[str, list] = defaultdict(list)
    fixed = {"key", "time", "model_version", "topic", "partition", "offset", "index"}
    for m in msgs:
        enc = header_value(m.headers, ENCODING_HEADER) or b"json"
        if enc == ARROW.encode():
            t = pa.ipc.open_stream(m.value).read_all()
            cols = {n: t.column(n) for n in t.schema.names}
            positions += list(
                zip(
                    cols["partition"].to_pylist(),
                    cols["offset"].to_pylist(),
                    cols["index"].to_pylist(),
                    strict=True,
                )
            )
            keys += cols["key"].to_pylist()
            versions += cols["model_version"].cast(pa.string()).to_pylist()
            for n in t.schema.names:
                if n not in fixed:
                    outputs[n].append(cols[n].to_numpy())
        else:
            row = json.loads(m.value)
            positions.append((int(row["partition"]), int(row["offset"]), int(row.get("index", 0))))
            keys.append(row["key"])
            versions.append(str(row["model_version"]))
            for n, v in row.items():
                if n not in fixed:
                    outputs[n].append(np.asarray([v], dtype=np.float64))
    return ScoreLog(positions, keys, versions, {n: np.concatenate(v) for n, v in outputs.items()})


@dataclass
class Reference:
    """The offline forward's outputs per source position and final state per key."""

    outputs: dict[tuple[int, int, int], np.ndarray]
    final_states: dict[str, np.ndarray]
    output_names: list[str]


def offline_reference(
    events: EventLog,
    model: Any,
    start_offsets: Mapping[int, int] | None = None,
    key_ttl_ms: int | None = None,
) -> Reference:
    """Run ``model.forward`` over each key's whole sequence (from ``start_offsets[partition]`` when given).

    With ``key_ttl_ms``, each partition's events go through :class:`StreamScorer` with that TTL instead, in
    offset order, and the final states are those of the keys not expired at the partition's end.
    """
    import torch

    spec = model.config.features
    table = events.batch
    keep = np.ones(table.num_rows, dtype=bool)
    if start_offsets:
        for p, off in start_offsets.items():
            keep &= ~((events.partition == p) & (events.offset < off))
    rows = np.flatnonzero(keep)
    if key_ttl_ms is not None:
        return _expiring_reference(events, model, rows, key_ttl_ms)
    x_all = features_from_arrow(table, spec)
    times = table.column("time").cast(pa.int64()).to_numpy()
    keys = np.asarray(table.column("key").to_pylist(), dtype=object)
    order = rows[np.lexsort((events.index[rows], events.offset[rows], events.partition[rows]))]
    by_key: dict[str, list[int]] = defaultdict(list)
    for r in order.tolist():
        by_key[keys[r]].append(r)
    dt_col = spec.input_size - 1 if spec.use_time_delta else None
    by_len: dict[int, list[str]] = defaultdict(list)
    for k, rs in by_key.items():
        by_len[len(rs)].append(k)
    outputs: dict[tuple[int, int, int], np.ndarray] = {}
    finals: dict[str, np.ndarray] = {}
    with torch.no_grad():
        for length, ks in by_len.items():
            idx = np.asarray([by_key[k] for k in ks], dtype=np.int64)  # [B, T]
            x = x_all[idx].copy()
            if dt_col is not None:
                t = times[idx]
                dt = np.zeros_like(t, dtype=np.float64)
                dt[:, 1:] = (t[:, 1:] - t[:, :-1]) / 1000.0
                x[:, :, dt_col] = dt.astype(np.float32)
            out, state = model.forward(torch.from_numpy(x), None)
            out = out.numpy()
            st = state.numpy()
            for b, k in enumerate(ks):
                finals[k] = st[b]
                for j in range(length):
                    r = idx[b, j]
                    outputs[(int(events.partition[r]), int(events.offset[r]), int(events.index[r]))] = out[
                        b, j
                    ]
    return Reference(outputs, finals, list(model.output_names()))


def _expiring_reference(events: EventLog, model: Any, rows: np.ndarray, key_ttl_ms: int) -> Reference:
    """The reference with key expiry: the scorer alone, one partition at a time, in offset order."""
    from rnnstream.rnn_core.stream_scorer import StreamScorer

    x_all = features_from_arrow(events.batch, model.config.features)
    times = events.batch.column("time").cast(pa.int64()).to_numpy()
    keys = events.batch.column("key").combine_chunks()
    outputs: dict[tuple[int, int, int], np.ndarray] = {}
    finals: dict[str, np.ndarray] = {}
    for p in np.unique(events.partition[rows]).tolist():
        mine = rows[events.partition[rows] == p]
        mine = mine[np.lexsort((events.index[mine], events.offset[mine]))]
        scorer = StreamScorer(model, key_ttl_ms=key_ttl_ms)
        for lo in range(0, mine.size, 1024):
            idx = mine[lo : lo + 1024]
            out = scorer.score(keys.take(pa.array(idx)), times[idx], x_all[idx])
            for j, r in enumerate(idx.tolist()):
                outputs[(p, int(events.offset[r]), int(events.index[r]))] = out[j]
        scorer.evict_expired()
        live = scorer.store.keys()
        if live:
            states = scorer.store.gather(live).numpy()
            finals.update({k: states[i] for i, k in enumerate(live)})
    return Reference(outputs, finals, list(model.output_names()))


@dataclass
class Verdict:
    """The verifier's findings; ``line`` is the one-line verdict to print."""

    expected: int
    scored: int
    missing: int
    duplicates: int
    unexpected: int
    max_score_error: float | None = None
    state_keys_checked: int = 0
    max_state_error: float | None = None
    versions: dict[str, int] = field(default_factory=dict)
    mode: str = "exactly_once"
    abs_tol: float = 1e-5

    @property
    def ok(self) -> bool:
        dup_ok = self.duplicates == 0 or self.mode == "at_least_once"
        score_ok = self.max_score_error is None or self.max_score_error <= self.abs_tol
        state_ok = self.max_state_error is None or self.max_state_error <= self.abs_tol
        return self.missing == 0 and self.unexpected == 0 and dup_ok and score_ok and state_ok

    @property
    def line(self) -> str:
        err = "-" if self.max_score_error is None else f"{self.max_score_error:.2e}"
        serr = "-" if self.max_state_error is None else f"{self.max_state_error:.2e}"
        return (
            f"VERDICT {'PASS' if self.ok else 'FAIL'} ({self.mode}): expected={self.expected} "
            f"scored={self.scored} "
            f"missing={self.missing} duplicates={self.duplicates} unexpected={self.unexpected} "
            f"max_score_err={err} keys_checked={self.state_keys_checked} max_state_err={serr} "
            f"versions={self.versions}"
        )


def _scaled_error(got: np.ndarray, ref: np.ndarray) -> float:
    """max |got - ref| / max(1, |ref|): absolute for small values, relative for large ones."""
    ref = np.asarray(ref, dtype=np.float64)
    return float(np.max(np.abs(np.asarray(got, dtype=np.float64) - ref) / np.maximum(1.0, np.abs(ref))))


def verify(
    events: EventLog,
    scores: ScoreLog,
    reference: Reference | None = None,
    final_states: Mapping[str, np.ndarray] | None = None,
    *,
    mode: str = "exactly_once",
    abs_tol: float = 1e-5,
    version_filter: str | None = None,
) -> Verdict:
    """Compare scores (and final states) with the events and the offline reference; see the module doc.

    Score errors are absolute below 1 and relative above (float32 outputs such as a forecast in the metric's
    own units carry about 7 significant digits, so 1e-5 of a value of 40 is float32 rounding, not a bug).
    """
    expected = set(events.positions)
    counts: dict[tuple[int, int, int], int] = defaultdict(int)
    first_row: dict[tuple[int, int, int], int] = {}
    for i, pos in enumerate(scores.positions):
        counts[pos] += 1
        first_row.setdefault(pos, i)
    missing = len(expected - counts.keys())
    unexpected = len(counts.keys() - expected)
    duplicates = sum(c - 1 for c in counts.values() if c > 1)
    versions: dict[str, int] = defaultdict(int)
    for v in scores.versions:
        versions[v] += 1
    max_err = None
    if reference is not None:
        errs = []
        names = reference.output_names
        mat = np.stack([scores.outputs[n] for n in names], axis=1) if names else None
        for pos, i in first_row.items():
            ref = reference.outputs.get(pos)
            if ref is None or mat is None:
                continue
            if version_filter is not None and scores.versions[i] != version_filter:
                continue
            errs.append(_scaled_error(mat[i], ref))
        max_err = max(errs) if errs else 0.0
    state_err = None
    checked = 0
    if reference is not None and final_states is not None:
        state_err = 0.0
        for k, ref in reference.final_states.items():
            got = final_states.get(k)
            if got is None:
                state_err = float("inf")
                continue
            state_err = max(state_err, float(np.max(np.abs(np.asarray(got) - ref))))
            checked += 1
    return Verdict(
        expected=len(expected),
        scored=len(scores.positions),
        missing=missing,
        duplicates=duplicates,
        unexpected=unexpected,
        max_score_error=max_err,
        state_keys_checked=checked,
        max_state_error=state_err,
        versions=dict(versions),
        mode=mode,
        abs_tol=abs_tol,
    )


def checkpoint_states(
    checkpoint_uri: str,
    pipeline: str,
    partitions: list[int],
    model: Any,
    version: str,
    deployment: str = DEFAULT_DEPLOYMENT,
) -> dict[str, np.ndarray]:
    """The states of every key in the newest checkpoint of each partition (for ``version``)."""
    from rnnstream.rnn_core.state_store import KeyedStateStore
    from rnnstream.workers.partition_checkpoint import PartitionCheckpoints

    ckpts = PartitionCheckpoints(checkpoint_uri, pipeline, deployment=deployment)
    out: dict[str, np.ndarray] = {}
    for p in partitions:
        info = ckpts.latest(p, version)
        if info is None:
            continue
        store = KeyedStateStore(tuple(model.state_shape))
        ckpts.restore(info, store)
        keys = store.keys()
        if keys:
            states = store.gather(keys).numpy()
            for k, s in zip(keys, states, strict=True):
                out[k] = s
    return out
