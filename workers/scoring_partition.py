"""ScoringPartition: one owned partition of a pipeline's events, with an explicit lifecycle.

``open`` (restore the newest checkpoint of the serving version, or start empty at the log start) ->
``process`` a batch of its messages (decode, validate, score through :class:`StreamScorer`, and say what to
emit) -> ``snapshot`` (states + next offset + model version, at a committed position) -> ``close``. The
worker around it owns the Kafka clients and the transaction; this object owns the states, the offsets and
the counts, and never touches Kafka.

Bad input never stalls it: the codec turns malformed events into rejects, and when scoring a batch raises
(a model that fails on some input) the batch is split in halves until the failing events are found; they
become rejects with the exception as the reason, and the rest is scored as if they were never there
(:meth:`StreamScorer.score` is all or nothing). A failing challenger is dropped; the champion goes on.

Counted per partition: events in == scored + dead-lettered + replayed (replayed: events an earlier
incarnation already scored and committed, applied to the states again without emitting anything).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa

from rnnstream.rnn_core.config import FeatureSpec
from rnnstream.rnn_core.event_schema import EventSchema
from rnnstream.rnn_core.features import features_from_arrow
from rnnstream.rnn_core.state_store import KeyedStateStore
from rnnstream.rnn_core.stream_scorer import StreamScorer
from rnnstream.workers.archive_warmup import ArchiveWarmup, recent_history, warm_challenger
from rnnstream.workers.event_codec import (
    ARROW,
    JSON,
    DecodedBatch,
    EventDecoder,
    Reject,
    message_encoding,
)
from rnnstream.workers.partition_checkpoint import (
    CheckpointInfo,
    CheckpointsUnreadable,
    PartitionCheckpoints,
    PreparedCheckpoint,
    RestoredCheckpoint,
)
from rnnstream.workers.partition_offsets import PartitionOffsets
from rnnstream.workers.worker_config import ModelHandle

log = logging.getLogger(__name__)

SCORING_ERROR = "scoring_error"
_kernels_loaded = False  # see load_kernels_once


def load_kernels_once(model: Any) -> None:
    """Score two made-up events through a throwaway store and scorer of ``model``, once per process.

    The state store's compiled kernels are loaded by numba on their first call (0.3-0.5 s of CPU on an idle
    machine, seconds on a busy one: numba's own start); without this that pause lands in the first batch a
    worker scores, after every start and every restart. Nothing of the real partitions is touched.
    """
    global _kernels_loaded
    if _kernels_loaded:
        return
    store = KeyedStateStore(tuple(model.state_shape), capacity=4)
    scorer = StreamScorer(model, store)
    x = np.zeros((2, scorer.input_size), np.float32)
    scorer.score(pa.array(["a", "b"]), np.array([0, 1], np.int64), x)
    store.clear()
    _kernels_loaded = True


@dataclass(frozen=True)
class LoadedModel:
    """A model version in memory: its handle, the module and its output names."""

    handle: ModelHandle
    model: Any
    output_names: tuple[str, ...]

    @classmethod
    def of(cls, handle: ModelHandle, model: Any) -> LoadedModel:
        model.eval()
        return cls(handle, model, tuple(model.output_names()))

    @property
    def version(self) -> str:
        return self.handle.version


def feature_mismatch(spec: FeatureSpec, schema: EventSchema) -> str | None:
    """Why events of ``schema`` cannot feed a model with ``spec`` (None when they can): a model input the
    events do not carry, or a vector of another length."""
    have_numeric = set(schema.numeric)
    vectors = dict(schema.vectors)
    categorical = {n for n, _ in schema.categorical}
    missing = [n for n in spec.numeric if n not in have_numeric]
    missing += [n for n in spec.vectors if n not in vectors]
    missing += [n for n in spec.categorical if n not in categorical]
    if missing:
        return (
            f"the model reads {', '.join(map(repr, missing))}, which events of pipeline {schema.pipeline!r} "
            f"do not carry (they have {', '.join(map(repr, schema.field_names)) or 'no fields'})"
        )
    for name, size in zip(spec.vectors, spec.vector_sizes, strict=True):
        if vectors[name] != size:
            return f"vector {name!r} has {vectors[name]} values in the events, the model takes {size}"
    return None


@dataclass
class ScoredBatch:
    """What one :meth:`ScoringPartition.process` call produced, for the worker to emit and count."""

    decoded: DecodedBatch
    rows: np.ndarray  # rows of ``decoded`` that were scored, in order
    outputs: np.ndarray  # champion outputs [len(rows), K]
    shadow: np.ndarray | None  # challenger outputs [len(rows), K'] (None: no challenger)
    emit: np.ndarray  # bool [len(rows)]: not scored and committed before (replay emits nothing)
    rejects: list[Reject]  # to dead-letter (decode rejects and scoring failures, replayed ones left out)
    replayed: int = 0  # events applied again without emitting (scored and committed before)
    expired: int = 0  # keys that expired at an emitted event
    errors: list[str] = field(default_factory=list)  # scoring failures, challenger failures

    def select(self, values: np.ndarray) -> np.ndarray:
        """``values`` (one per decoded row) at the emitted scored rows."""
        return values[self.rows[self.emit]]


class ScoringPartition:
    """States, offsets and counts of one partition; see the module doc."""

    def __init__(
        self,
        partition: int,
        champion: LoadedModel,
        offsets: PartitionOffsets,
        key_ttl_ms: int | None,
        store: KeyedStateStore | None = None,
    ) -> None:
        self.partition = int(partition)
        self.offsets = offsets
        self.key_ttl_ms = key_ttl_ms
        self.champion = champion
        self.scorer = self._scorer(champion, store)
        self.challenger: LoadedModel | None = None
        self.challenger_scorer: StreamScorer | None = None
        self.challenger_error: str | None = None  # why the challenger was dropped, until reported
        self.counts = {"in": 0, "scored": 0, "dead_lettered": 0, "replayed": 0}

    def _scorer(self, run: LoadedModel, store: KeyedStateStore | None = None) -> StreamScorer:
        store = store if store is not None else KeyedStateStore(tuple(run.model.state_shape), capacity=1024)
        return StreamScorer(run.model, store, key_ttl_ms=self.key_ttl_ms)

    @classmethod
    def open(
        cls,
        partition: int,
        champion: LoadedModel,
        key_ttl_ms: int | None,
        checkpoints: PartitionCheckpoints,
        log_start: int,
        group_committed: int | None,
    ) -> tuple[ScoringPartition, RestoredCheckpoint]:
        """Restore the newest readable checkpoint of the champion's version (older ones when the newest is
        unreadable), or start empty at ``log_start``; returns the partition and what was restored.

        When checkpoints exist but none is readable, starting empty is exact only if the log still holds
        every event (``log_start`` 0); otherwise :class:`CheckpointsUnreadable`, never a silent zero state.
        """
        load_kernels_once(champion.model)
        shape = tuple(champion.model.state_shape)
        restored = checkpoints.restore_newest(
            partition, champion.version, lambda: KeyedStateStore(shape, capacity=1024)
        )
        info = restored.info
        if info is None and restored.skipped and log_start > 0:
            reasons = "; ".join(f"{c.path}: {why}" for c, why in restored.skipped)
            raise CheckpointsUnreadable(
                f"partition {partition}: no checkpoint of {champion.version} is readable ({reasons}) and "
                f"the log starts at offset {log_start}, the states cannot be rebuilt; restore a checkpoint "
                "file, or clear the checkpoints and the group's offsets to start over"
            )
        start = info.next_offset if info is not None else log_start
        offsets = PartitionOffsets.restored(partition, start, group_committed)
        return cls(partition, champion, offsets, key_ttl_ms, restored.store), restored

    @property
    def store(self) -> KeyedStateStore:
        return self.scorer.store

    # ------------------------------------------------------------------------------------------ process

    def process(self, messages: list[Any], decoder: EventDecoder, max_call_events: int) -> ScoredBatch | None:
        """Decode, validate and score the messages not applied yet; None when every one was applied.

        The scorer steps at most ``max_call_events`` events a call (the worker passes its
        ``max_batch_events``): a poll counts messages, and a backlog of Arrow messages (thousands of events
        each) can hand one call a few hundred thousand events, whose temporaries (inputs, the undo log's
        copy of each state, outputs) then span hundreds of MB of memory touched once; in calls of a few
        thousand events they stay the same few MB, reused and in cache. A call is all or nothing (a failed
        one is split further, see :meth:`_score_rows`), so slicing changes no result."""
        messages = self.offsets.unseen(messages)
        if not messages:
            return None
        decoded = decoder.decode(messages)
        emit_from = self.offsets.emit_from
        ok: list[tuple[int, int, np.ndarray]] = []
        poison: list[tuple[int, str]] = []
        expired = [0]
        if decoded.num_valid:
            x = self._features(decoded, poison)
            if x is not None:
                step = max(1, int(max_call_events))
                for lo in range(0, decoded.num_valid, step):
                    hi = min(decoded.num_valid, lo + step)
                    self._score_rows(decoded, x, lo, hi, ok, poison, expired)
        rows = np.concatenate([np.arange(lo, hi) for lo, hi, _ in ok]) if ok else np.zeros(0, np.int64)
        k = len(self.champion.output_names)
        outputs = np.concatenate([o for _, _, o in ok]) if ok else np.zeros((0, k), np.float32)
        shadow = self._shadow(decoded, rows) if self.challenger is not None else None
        errors = [f"{SCORING_ERROR} at offset {int(decoded.offset[r])}: {why}" for r, why in poison]
        if self.challenger_error is not None:
            errors.append(self.challenger_error)
            self.challenger_error = None
        rejects = list(decoded.rejects) + [
            self._poison_reject(messages, decoded, r, why) for r, why in poison
        ]
        fresh = [r for r in rejects if r.offset >= emit_from]
        emit = decoded.offset[rows] >= emit_from
        n_emit = int(emit.sum())
        replayed = (rows.size - n_emit) + (len(rejects) - len(fresh))
        self.counts["in"] += decoded.events_in
        self.counts["scored"] += n_emit
        self.counts["dead_lettered"] += len(fresh)
        self.counts["replayed"] += replayed
        self.offsets.applied(messages[-1].offset, decoded.events_in)
        return ScoredBatch(decoded, rows, outputs, shadow, emit, fresh, replayed, expired[0], errors)

    def _features(self, decoded: DecodedBatch, poison: list[tuple[int, str]]) -> np.ndarray | None:
        spec = self.champion.model.config.features
        try:
            return features_from_arrow(decoded.batch, spec)
        except Exception as exc:  # the codec admitted what the model cannot read: every row is poison
            why = f"{type(exc).__name__}: {exc}"[:300]
            poison.extend((r, why) for r in range(decoded.num_valid))
            return None

    def _score_rows(
        self,
        decoded: DecodedBatch,
        x: np.ndarray,
        lo: int,
        hi: int,
        ok: list[tuple[int, int, np.ndarray]],
        poison: list[tuple[int, str]],
        expired: list[int],
    ) -> None:
        """Score rows ``[lo, hi)``; when that raises, split in halves until the failing rows are found."""
        batch = decoded.batch
        keys = batch.column(0).slice(lo, hi - lo)
        times = decoded.batch.column(1).slice(lo, hi - lo).cast(pa.int64()).to_numpy()
        try:
            out = self.scorer.score(keys, times, x[lo:hi])
        except Exception as exc:
            if hi - lo == 1:
                poison.append((lo, f"{type(exc).__name__}: {exc}"[:300]))
                return
            mid = (lo + hi) // 2
            self._score_rows(decoded, x, lo, mid, ok, poison, expired)
            self._score_rows(decoded, x, mid, hi, ok, poison, expired)
            return
        if self.key_ttl_ms is not None:
            expired[0] += int(
                (self.scorer.last_expired & (decoded.offset[lo:hi] >= self.offsets.emit_from)).sum()
            )
        ok.append((lo, hi, out))

    def _shadow(self, decoded: DecodedBatch, rows: np.ndarray) -> np.ndarray | None:
        """The challenger's outputs for the champion's scored rows; a failing challenger is dropped."""
        assert self.challenger is not None and self.challenger_scorer is not None
        if rows.size == 0:
            return np.zeros((0, len(self.challenger.output_names)), np.float32)
        sub = decoded.batch.take(pa.array(rows))
        try:
            x = features_from_arrow(sub, self.challenger.model.config.features)
            times = sub.column(1).cast(pa.int64()).to_numpy()
            return self.challenger_scorer.score(sub.column(0), times, x)
        except Exception as exc:
            self.challenger_error = (
                f"challenger {self.challenger.version} dropped: {type(exc).__name__}: {exc}"
            )
            self.drop_challenger()
            return None

    def _poison_reject(self, messages: list[Any], decoded: DecodedBatch, row: int, why: str) -> Reject:
        """A reject for a decoded row whose scoring raised: the message itself for a JSON event, the row as
        a one-row Arrow stream for a row of an Arrow message."""
        offset = int(decoded.offset[row])
        message = next(m for m in messages if m.offset == offset)
        index = int(decoded.event_index[row])
        arrow = index > 0 or message_encoding(message.headers) == ARROW
        if arrow:
            sink = pa.BufferOutputStream()
            one = decoded.batch.slice(row, 1)
            with pa.ipc.new_stream(sink, one.schema) as writer:
                writer.write_batch(one)
            raw = sink.getvalue().to_pybytes()
        else:
            raw = bytes(message.value or b"")
        return Reject(
            raw=raw,
            reason=SCORING_ERROR,
            detail=why,
            topic=message.topic,
            partition=self.partition,
            offset=offset,
            timestamp_ms=int(decoded.timestamp_ms[row]),
            key=message.key,
            event_index=index if arrow else None,
            encoding=ARROW if arrow else JSON,
        )

    # ------------------------------------------------------------------------------------- lifecycle

    def sweep(self) -> int:
        """Free expired keys' memory (changes no score, see :class:`StreamScorer`); returns how many."""
        gone = self.scorer.evict_expired()
        if self.challenger_scorer is not None:
            self.challenger_scorer.evict_expired()
        return gone

    def snapshot(self, checkpoints: PartitionCheckpoints) -> CheckpointInfo:
        """Write the champion's states at the (committed) next offset."""
        info = checkpoints.write_prepared(self.prepare_snapshot(checkpoints))
        self.offsets.checkpointed()
        return info

    def prepare_snapshot(self, checkpoints: PartitionCheckpoints) -> PreparedCheckpoint:
        """A copy of the champion's states at the (committed) next offset, to be written later."""
        if self.offsets.uncommitted:
            raise RuntimeError("a checkpoint may never be ahead of the committed offset")
        offset, version = self.offsets.next_offset, self.champion.version
        return checkpoints.prepare(self.partition, self.store, offset, version)

    def attach_challenger(self, challenger: LoadedModel) -> None:
        """Score the same events with ``challenger`` from here on, with its own fresh states (warm-up)."""
        self.challenger = challenger
        self.challenger_scorer = self._scorer(challenger)

    def warm_challenger_from_archive(self, archive_uri: str, pipeline: str, last_n: int) -> ArchiveWarmup:
        """Replay each key's latest ``last_n`` archived events below the next offset through the challenger
        (see :mod:`rnnstream.workers.archive_warmup`); returns what it replayed and the archive's gap."""
        start = self.offsets.next_offset
        history, end = recent_history(archive_uri, pipeline, self.partition, start, last_n)
        return warm_challenger(self.challenger_scorer, history, start, end)

    def key_counts(self) -> tuple[int, int]:
        """(keys the champion holds a state of, keys the challenger holds a state of)."""
        return len(self.scorer.store), len(self.challenger_scorer.store) if self.challenger_scorer else 0

    def promote_challenger(self) -> None:
        """Make the challenger the champion (its states become the serving states)."""
        if self.challenger is None or self.challenger_scorer is None:
            raise RuntimeError("no challenger to promote")
        self.champion, self.scorer = self.challenger, self.challenger_scorer
        self.drop_challenger()

    def drop_challenger(self) -> None:
        self.challenger = None
        self.challenger_scorer = None

    def close(self) -> None:
        """Forget every state (the worker writes the final snapshot first)."""
        self.drop_challenger()
        self.scorer.store.clear()

    def unwritable(self, n: int) -> None:
        """``n`` scored events whose score could not be written went to the dead-letter topic instead."""
        self.counts["scored"] -= n
        self.counts["dead_lettered"] += n

    def check_counts(self) -> str | None:
        """A line when events in != scored + dead-lettered + replayed (a bug: nothing may vanish)."""
        c = self.counts
        if c["in"] != c["scored"] + c["dead_lettered"] + c["replayed"]:
            return (
                f"partition {self.partition}: events in {c['in']} != scored {c['scored']} + dead-lettered "
                f"{c['dead_lettered']} + replayed {c['replayed']}"
            )
        return None
