"""ScoringWorker: owns some partitions of a pipeline's events topic and scores every event exactly once.

For each partition it owns, the worker keeps one :class:`KeyedStateStore` (the states of that partition's
keys) and one :class:`StreamScorer`. One loop thread does everything Kafka (kafka-python clients are not
thread safe); Ray calls (assign, release, stop, metrics, hot swap) are queued to that thread and answered
between cycles.

A cycle: poll (a micro-batch closes on ``max_batch_events`` events or ``batch_linger_ms``) -> decode
(rejects go to the dead-letter topic with their reason) -> per partition: gather -> step -> scatter through
the scorer -> scores to ``<pipeline>.scores`` -> every ``commit_interval_ms`` (after
``min_commit_interval_ms`` when the worker has caught up, so a quiet stream is not held back; or when
``max_in_flight`` events wait) the scores and the consumed offsets are committed in ONE Kafka transaction
(``send_offsets_to_transaction``) -> after a commit, partitions that are due (``checkpoint_interval_events``
/ ``checkpoint_interval_seconds``) write a checkpoint whose ``next_offset`` is exactly the committed one.

Exactly once: on (re)start a partition restores its newest checkpoint for the serving model version (or
starts empty at the beginning of the topic), seeks to its ``next_offset`` and replays; events below the
group's committed offset update the state but emit nothing (their scores were committed already). The
transactional id is stable per worker *slot*, so a restarted actor fences its zombie and aborts the
transaction it left open. With ``transactions=False`` the same loop gives at-least-once scores (flush, then
commit the offsets); every score carries its source offset so duplicates can be dropped downstream.

Any Kafka error (broker gone, request timeout) aborts the open transaction and resets the partitions to their
checkpoints; the loop retries with a backoff and carries on when the broker is back. Bad events never raise:
the codec turns them into rejects.

Backpressure: at most ``max_in_flight`` events are scored but not committed; when that many wait the worker
pauses its partitions, commits (which waits for the sink), and resumes. The consumer's fetch buffer is bounded
by ``max_poll_records`` / fetch sizes, so a slow model or sink never grows memory: the lag grows instead,
and drains when the load drops.

Hot swap: ``prepare_model`` loads a challenger that scores the same events with its own states (shadow,
optionally into ``<pipeline>.scores.shadow``) to warm up; ``switch_model`` makes it the champion at the next
commit boundary and writes checkpoints of its states at that offset, so scores below carry the old version,
those from it on the new one, and no offset is scored by both as the champion.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from rnnstream.rnn_core.features import features_from_arrow
from rnnstream.workers.dead_letter import DeadLetterWriter
from rnnstream.workers.event_codec import ARROW, ENCODING_HEADER, EventDecoder, header_value
from rnnstream.workers.partition_checkpoint import CheckpointInfo, PartitionCheckpoints
from rnnstream.workers.score_codec import ARROW_HEADERS, JSON_HEADERS, scores_to_arrow, scores_to_json
from rnnstream.workers.worker_config import ModelHandle, WorkerConfig, transactional_id
from rnnstream.workers.worker_metrics import WorkerMetrics

log = logging.getLogger(__name__)

MAX_ARROW_SCORE_ROWS = 8192


class _Fenced(Exception):
    """Another producer with our transactional id took over: this process is a zombie and must stop."""


class _ModelRun:
    """One model version with one state store + scorer per owned partition."""

    def __init__(self, handle: ModelHandle, model: Any) -> None:
        self.handle = handle
        self.model = model
        self.output_names = list(model.output_names())
        self.stores: dict[int, Any] = {}
        self.scorers: dict[int, Any] = {}

    def new_partition(self, p: int) -> Any:
        from rnnstream.rnn_core.state_store import KeyedStateStore
        from rnnstream.rnn_core.stream_scorer import StreamScorer

        store = KeyedStateStore(tuple(self.model.state_shape), capacity=1024)
        self.stores[p] = store
        self.scorers[p] = StreamScorer(self.model, store)
        return store

    def drop_partition(self, p: int) -> None:
        self.stores.pop(p, None)
        self.scorers.pop(p, None)


@dataclass
class _PartitionState:
    partition: int
    next_offset: int  # next offset to process (all below are applied to the state)
    emit_from: int  # offsets below were scored and committed before: replay, emit nothing
    committed: int  # offsets below have their scores committed (by this process or before it)
    checkpoint_offset: int
    events_since_checkpoint: int = 0
    last_checkpoint_time: float = field(default_factory=time.monotonic)
    max_event_ms: int = -1


class ScoringWorker:
    """The loop and its state; wrapped by the Ray actor :class:`ScoringWorkerActor` (usable without Ray)."""

    def __init__(
        self,
        slot: int,
        config: WorkerConfig,
        model_loader: Callable[[str], Any] | None = None,
        export_metrics: bool = True,
    ) -> None:
        from rnnstream.workers.serving import load_model

        self.slot = int(slot)
        self.config = config
        self.incarnation = uuid.uuid4().hex[:12]
        self.name = f"worker-{slot}"
        self._load_model = model_loader or load_model
        self.metrics = WorkerMetrics(config.pipeline, self.name, export=export_metrics)
        self.checkpoints = PartitionCheckpoints(config.checkpoint_uri, config.pipeline)
        self.decoder = EventDecoder(config.schema)
        self.spec = None
        self.champion: _ModelRun | None = None
        self.challenger: _ModelRun | None = None
        self.shadow_emit = False
        self.challenger_events = 0
        self.parts: dict[int, _PartitionState] = {}
        self.paused = False
        self.fenced = False
        self.last_error: str | None = None
        self._commands: queue.Queue[tuple[str, tuple, Future]] = queue.Queue()
        self._stop = threading.Event()
        self._consumer = None
        self._producer = None
        self._dead_letters = None
        self._txn_open = False
        self._txn_connections: frozenset | None = None
        self._in_flight = 0
        self._txn_started = 0.0
        self._pending_latency: list[tuple[np.ndarray, np.ndarray]] = []
        self._last_lag = 0.0
        self._heartbeat = time.time()
        try:
            import torch

            torch.set_num_threads(max(1, config.torch_threads))
        except Exception:  # pragma: no cover - torch always present
            pass
        self._thread = threading.Thread(target=self._run, name=f"rnnstream-{self.name}", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------------------------------ control API

    def call(self, name: str, *args: Any, timeout: float | None = 120.0) -> Any:
        """Run a control command on the loop thread between cycles and return its result."""
        if not self._thread.is_alive():
            raise RuntimeError(f"{self.name} loop is not running ({self.last_error})")
        fut: Future = Future()
        self._commands.put((name, args, fut))
        return fut.result(timeout=timeout)

    def status(self) -> dict[str, Any]:
        """Cheap, lock-free status (answered from the caller's thread)."""
        return {
            "slot": self.slot,
            "incarnation": self.incarnation,
            "pid": os.getpid(),
            "partitions": sorted(self.parts),
            "model_version": self.champion.handle.version if self.champion else None,
            "challenger_version": self.challenger.handle.version if self.challenger else None,
            "challenger_events": self.challenger_events,
            "alive": self._thread.is_alive(),
            "fenced": self.fenced,
            "heartbeat_age_s": time.time() - self._heartbeat,
            "last_error": self.last_error,
        }

    def metrics_snapshot(self) -> dict[str, Any]:
        return {**self.metrics.snapshot(), **self.status()}

    def shutdown(self, timeout: float = 60.0) -> None:
        """Commit, write final checkpoints of every owned partition, close the clients, end the loop."""
        if self._thread.is_alive():
            try:
                self.call("stop", timeout=timeout)
            finally:
                self._thread.join(timeout=timeout)

    # ---------------------------------------------------------------------------------------- Kafka clients

    def _connect(self) -> None:
        from kafka import KafkaConsumer, KafkaProducer

        kw = self.config.kafka.client_kwargs()
        self._consumer = KafkaConsumer(
            **kw,
            group_id=self.config.group_id,
            enable_auto_commit=False,
            isolation_level="read_committed",
            auto_offset_reset="earliest",
            max_poll_records=self.config.max_poll_records,
            fetch_max_bytes=self.config.fetch_max_bytes,
            max_partition_fetch_bytes=self.config.max_partition_fetch_bytes,
            fetch_max_wait_ms=max(1, self.config.batch_linger_ms),
        )
        pkw: dict[str, Any] = {
            "linger_ms": 2,
            "batch_size": 256 * 1024,
            "max_request_size": 16 * 1024 * 1024,
            "max_block_ms": 20_000,
        }
        if self.config.transactions:
            pkw["transactional_id"] = transactional_id(self.config.pipeline, self.slot)
        self._producer = KafkaProducer(**kw, **pkw)
        if self.config.transactions:
            self._producer.init_transactions()  # fences our previous incarnation, aborts its open txn
        self._dead_letters = DeadLetterWriter(
            self.config.schema, producer=self._producer, topic=self.config.dlq_topic
        )
        self._txn_open = False
        self._in_flight = 0

    def _close_clients(self) -> None:
        for client in (self._producer, self._consumer):
            if client is None:
                continue
            with contextlib.suppress(Exception):
                client.close(timeout=2) if client is self._producer else client.close(autocommit=False)
        self._producer = None
        self._consumer = None

    # --------------------------------------------------------------------------------------------- the loop

    def _run(self) -> None:
        try:
            self._connect()
        except Exception as exc:
            self._recover_from_error(exc)
        while not self._stop.is_set():
            self._heartbeat = time.time()
            try:
                self._serve_commands()
                if self._stop.is_set():
                    break
                if not self.parts:
                    self._wait_for_command(0.05)
                    continue
                self._cycle()
            except _Fenced as exc:
                self.fenced = True
                self.last_error = f"fenced: {exc}"
                log.error("%s fenced by a newer incarnation; stopping", self.name)
                break
            except Exception as exc:  # Kafka trouble: reset to checkpoints and retry
                self._recover_from_error(exc)
        self._fail_pending_commands()

    def _cycle(self) -> None:
        cfg = self.config
        records = self._poll_batch()
        polled = 0
        if records:
            by_partition: dict[int, list] = {}
            for tp, msgs in records.items():
                by_partition.setdefault(tp.partition, []).extend(msgs)
                polled += len(msgs)
            for p, msgs in by_partition.items():
                if p in self.parts:
                    self._process(p, msgs)
        age_ms = (time.monotonic() - self._txn_started) * 1000
        caught_up = (
            polled < cfg.max_batch_events and self._caught_up()
        )  # soon when idle, batched under backlog
        if self._txn_open and (
            age_ms >= cfg.commit_interval_ms
            or (caught_up and age_ms >= cfg.min_commit_interval_ms)
            or self._in_flight >= cfg.max_in_flight
        ):
            if self._in_flight >= cfg.max_in_flight:
                self._pause()
            self._commit()
            self._resume()
        elif not self._txn_open and self._uncommitted():
            self._commit()  # replay-only progress past the committed offset (e.g. all rejects)
        if not self._txn_open:
            self._checkpoint_due()
        if time.monotonic() - self._last_lag >= cfg.lag_every_s:
            self._update_lag()

    def _caught_up(self) -> bool:
        """True when no partition has a known backlog (high watermark of the last fetch, no network call)."""
        try:
            for tp in self._tps():
                hw = self._consumer.highwater(tp)
                if hw is not None and hw > self.parts[tp.partition].next_offset:
                    return False
        except Exception:
            return False
        return True

    def _poll_batch(self) -> dict:
        """Poll until ``max_batch_events`` events or ``batch_linger_ms`` after the first message."""
        cfg = self.config
        out: dict = {}
        n = 0
        deadline = None
        idle_ms = 50
        if self._txn_open:  # do not sit in poll past the moment the open transaction is due
            due = self._txn_started + min(cfg.commit_interval_ms, cfg.min_commit_interval_ms) / 1000
            idle_ms = max(0, min(idle_ms, int((due - time.monotonic()) * 1000)))
        while True:
            timeout = idle_ms if deadline is None else max(0, int((deadline - time.monotonic()) * 1000))
            got = self._consumer.poll(timeout_ms=timeout, max_records=max(1, cfg.max_batch_events - n))
            for tp, msgs in got.items():
                out.setdefault(tp, []).extend(msgs)
                n += len(msgs)
            if deadline is None:
                if not n:
                    return out
                deadline = time.monotonic() + cfg.batch_linger_ms / 1000
            if n >= cfg.max_batch_events or time.monotonic() >= deadline or not got:
                return out

    def _process(self, p: int, msgs: list) -> None:
        st = self.parts[p]
        cfg = self.config
        last_offset = msgs[-1].offset
        if last_offset < st.next_offset:
            return  # already applied (a re-delivery after a seek)
        if msgs[0].offset < st.next_offset:
            msgs = [m for m in msgs if m.offset >= st.next_offset]
        decoded = self.decoder.decode(msgs)
        self.metrics.count("events", decoded.events_in)
        if decoded.rejects:
            fresh = [r for r in decoded.rejects if r.offset >= st.emit_from]
            if fresh:
                self._begin()
                self._dead_letters.write(fresh)
                self.metrics.count("dead_lettered", len(fresh))
                self._in_flight += len(fresh)
        batch = decoded.batch
        n = batch.num_rows
        if n:
            champ = self.champion
            keys_arr = batch.column(0)
            times = batch.column(1).cast(pa.int64()).to_numpy()
            x = features_from_arrow(batch, self.spec)
            out = self._score(champ, p, keys_arr, times, x)
            shadow_out = None
            if self.challenger is not None and p in self.challenger.scorers:
                shadow_out = self._score(self.challenger, p, keys_arr, times, x)
                self.challenger_events += n
            self.metrics.batch(n)
            st.max_event_ms = max(st.max_event_ms, int(times.max()))
            offsets = decoded.offset
            emit = offsets >= st.emit_from
            n_emit = int(emit.sum())
            if n_emit < n:
                self.metrics.count("replayed", n - n_emit)
            if n_emit:
                self._begin()
                arrow = self._arrow_out(msgs)
                sel = None if n_emit == n else np.flatnonzero(emit)
                self._send_scores(cfg.scores_topic, p, arrow, champ, keys_arr, times, out, decoded, sel)
                if shadow_out is not None and self.shadow_emit:
                    self._send_scores(
                        cfg.shadow_topic, p, arrow, self.challenger, keys_arr, times, shadow_out, decoded, sel
                    )
                self.metrics.count("scored", n_emit)
                self._in_flight += n_emit
                ts = decoded.timestamp_ms if sel is None else decoded.timestamp_ms[sel]
                tt = times if sel is None else times[sel]
                self._pending_latency.append((tt, ts))
        st.next_offset = last_offset + 1
        st.events_since_checkpoint += decoded.events_in

    def _arrow_out(self, msgs: list) -> bool:
        enc = self.config.score_encoding
        if enc != "auto":
            return enc == "arrow"
        return header_value(msgs[0].headers, ENCODING_HEADER) == ARROW.encode()

    def _send_scores(
        self,
        topic: str,
        p: int,
        arrow: bool,
        run: _ModelRun,
        keys_arr: pa.Array,
        times: np.ndarray,
        out: np.ndarray,
        decoded: Any,
        sel: np.ndarray | None,
    ) -> None:
        offsets, idx = decoded.offset, decoded.event_index
        if sel is not None:
            keys_arr = keys_arr.take(pa.array(sel))
            times, out, offsets, idx = times[sel], out[sel], offsets[sel], idx[sel]
        src = self.config.events_topic
        version = run.handle.version
        send = self._producer.send
        if arrow:
            for a in range(0, len(times), MAX_ARROW_SCORE_ROWS):
                b = a + MAX_ARROW_SCORE_ROWS
                value = scores_to_arrow(
                    keys_arr.slice(a, b - a),
                    times[a:b],
                    out[a:b],
                    run.output_names,
                    version,
                    src,
                    p,
                    offsets[a:b],
                    idx[a:b],
                )
                send(topic, value=value, partition=p, headers=ARROW_HEADERS)
        else:
            keys = keys_arr.to_pylist()
            values = scores_to_json(keys, times, out, run.output_names, version, src, p, offsets, idx)
            for key, value in zip(keys, values, strict=True):
                send(topic, value=value, key=key.encode(), partition=p, headers=JSON_HEADERS)

    def _score(
        self, run: _ModelRun, p: int, keys_arr: pa.Array, times: np.ndarray, x: np.ndarray
    ) -> np.ndarray:
        """Score a batch through ``run``'s scorer for partition ``p``, applying the event-time TTL.

        TTL: an event more than ``key_ttl_seconds`` after its key's previous event (in this batch or before
        it) starts from a zero state. Deterministic: it depends only on the key's own event times, so a replay
        after a crash resets exactly the same events. The batch is cut at such events so the reset happens in
        order.
        """
        scorer = run.scorers[p]
        ttl = self.config.key_ttl_ms
        if ttl is None:
            return scorer.score(keys_arr, times, x)
        n = len(times)
        codes = pc.dictionary_encode(keys_arr).indices.to_numpy(zero_copy_only=False)
        order = np.argsort(codes, kind="stable")
        same = codes[order][1:] == codes[order][:-1]
        prev = np.full(n, -1, dtype=np.int64)
        prev[order[1:][same]] = times[order[:-1][same]]
        firsts = np.ones(n, dtype=bool)
        firsts[order[1:][same]] = False
        first_idx = np.flatnonzero(firsts)
        prev[first_idx] = run.stores[p].last_times(keys_arr.take(pa.array(first_idx)))
        cuts = np.flatnonzero((prev >= 0) & (times - prev > ttl))
        if cuts.size == 0:
            return scorer.score(keys_arr, times, x)
        out = np.empty((n, len(run.output_names)), dtype=np.float32)
        start = 0
        for c in [*cuts.tolist(), n]:
            if c > start:
                out[start:c] = scorer.score(keys_arr.slice(start, c - start), times[start:c], x[start:c])
            if c < n:
                run.stores[p].remove(keys_arr.slice(c, 1))
                if run is self.champion:
                    self.metrics.count("evicted", 1)
            start = c
        return out

    # ------------------------------------------------------------------------------------ transactions etc.

    def _begin(self) -> None:
        if self._txn_open:
            return
        if self.config.transactions:
            self._producer.begin_transaction()
        self._txn_open = True
        self._txn_started = time.monotonic()
        self._txn_connections = self._producer_connections()

    def _producer_connections(self) -> frozenset | None:
        """Identity of the producer's live broker connections (None when kafka-python hides them)."""
        try:
            conns = self._producer._sender._client._manager._conns
            return frozenset((str(k), id(c)) for k, c in list(conns.items()) if c.connected)
        except Exception:
            return None

    def _check_connections_kept(self) -> None:
        """Refuse to commit a transaction during which a producer connection dropped.

        A broker that restarts aborts the transactions it had open; a real Kafka then fences the producer,
        but a broker may also answer the later EndTxn with success (the embedded one does). So a connection
        of this transaction that is gone at commit time means: treat the transaction as lost, abort, and
        reset to the checkpoints and the committed offsets the broker really has.
        """
        before = self._txn_connections
        now = self._producer_connections()
        if before is None or now is None:
            return
        if not before or not before <= now:
            raise ConnectionError("a producer connection dropped during the transaction (broker restart?)")

    def _uncommitted(self) -> bool:
        return any(st.next_offset > st.committed for st in self.parts.values())

    def _commit(self) -> None:
        """Commit the open transaction: the scores sent and the consumed offsets, atomically."""
        from kafka import TopicPartition
        from kafka.structs import OffsetAndMetadata

        offsets = {
            TopicPartition(self.config.events_topic, p): OffsetAndMetadata(st.next_offset, "", -1)
            for p, st in self.parts.items()
            if st.next_offset > st.committed
        }
        if self.config.transactions:
            if not self._txn_open and offsets:
                self._begin()
            if self._txn_open:
                if offsets:
                    self._producer.send_offsets_to_transaction(offsets, self.config.group_id)
                self._producer.flush(timeout=self.config.commit_timeout_ms / 1000)
                self._check_connections_kept()
                try:
                    self._commit_transaction()
                except Exception as exc:
                    if "Fenced" in type(exc).__name__ or "Fenced" in str(exc):
                        raise _Fenced(str(exc)) from exc
                    raise
        else:
            self._producer.flush(timeout=self.config.commit_timeout_ms / 1000)
            if offsets:
                self._consumer.commit(offsets)
        self._txn_open = False
        self._in_flight = 0
        for _p, st in self.parts.items():
            st.committed = max(st.committed, st.next_offset)
        if self._pending_latency:
            now_ms = time.time() * 1000
            ev = np.concatenate([t for t, _ in self._pending_latency])
            ap = np.concatenate([a for _, a in self._pending_latency])
            self._pending_latency.clear()
            self.metrics.latencies(now_ms - ev, now_ms - ap)

    def _commit_transaction(self) -> None:
        """``commit_transaction`` with a deadline (kafka-python's waits forever if EndTxn goes unanswered)."""
        producer = self._producer
        tm = getattr(producer, "_transaction_manager", None)
        if tm is None or not hasattr(tm, "begin_commit"):
            producer.commit_transaction()
            return
        result = tm.begin_commit()
        producer._sender.wakeup()
        if not result.wait(timeout_ms=self.config.commit_timeout_ms):
            raise TimeoutError(f"transaction commit not answered in {self.config.commit_timeout_ms} ms")

    def _abort_transaction(self) -> None:
        producer = self._producer
        tm = getattr(producer, "_transaction_manager", None)
        if tm is None or not hasattr(tm, "begin_abort"):
            producer.abort_transaction()
            return
        result = tm.begin_abort()
        producer._sender.wakeup()
        if not result.wait(timeout_ms=self.config.commit_timeout_ms):
            raise TimeoutError(f"transaction abort not answered in {self.config.commit_timeout_ms} ms")

    def _pause(self) -> None:
        if not self.paused and self.parts:
            self._consumer.pause(*self._tps())
            self.paused = True
            self.metrics.count("pauses")
            self.metrics.set_gauge("paused", 1)

    def _resume(self) -> None:
        if self.paused:
            self._consumer.resume(*self._tps())
            self.paused = False
            self.metrics.set_gauge("paused", 0)

    def _tps(self) -> list:
        from kafka import TopicPartition

        return [TopicPartition(self.config.events_topic, p) for p in sorted(self.parts)]

    # -------------------------------------------------------------------------------------- checkpoints

    def _checkpoint_due(self) -> None:
        cfg = self.config
        now = time.monotonic()
        for p, st in self.parts.items():
            if st.next_offset <= st.checkpoint_offset or st.next_offset > st.committed:
                continue
            if (
                st.events_since_checkpoint >= cfg.checkpoint_interval_events
                or now - st.last_checkpoint_time >= cfg.checkpoint_interval_seconds
            ):
                self._sweep_idle(p)
                self._checkpoint(p)

    def _sweep_idle(self, p: int) -> None:
        """Free the memory of keys idle longer than the TTL behind the partition's newest event time.

        Such a key's next event would reset it anyway (see :meth:`_score`), so sweeping changes no score
        (for events that arrive within the TTL of the partition's newest event time)."""
        ttl = self.config.key_ttl_ms
        st = self.parts[p]
        if ttl is None or st.max_event_ms < 0:
            return
        for run in (self.champion, self.challenger):
            if run is not None and p in run.stores:
                gone = run.stores[p].evict_idle(st.max_event_ms, ttl)
                if run is self.champion:
                    self.metrics.count("evicted", gone)

    def _checkpoint(self, p: int) -> CheckpointInfo:
        """Write partition ``p``'s checkpoint at its next offset (only called with nothing uncommitted)."""
        st = self.parts[p]
        if st.next_offset > st.committed:
            raise RuntimeError("a checkpoint may never be ahead of the committed offset")
        t0 = time.perf_counter()
        info = self.checkpoints.write(
            p, self.champion.stores[p], st.next_offset, self.champion.handle.version
        )
        self.metrics.checkpoint((time.perf_counter() - t0) * 1000)
        st.checkpoint_offset = st.next_offset
        st.events_since_checkpoint = 0
        st.last_checkpoint_time = time.monotonic()
        self._update_state_gauges()
        return info

    def _update_state_gauges(self) -> None:
        if self.champion is None:
            return
        stores = self.champion.stores.values()
        self.metrics.set_gauge("keys", sum(s.num_keys for s in stores))
        self.metrics.set_gauge("state_bytes", sum(s.nbytes for s in stores))

    def _update_lag(self) -> None:
        self._last_lag = time.monotonic()
        tps = self._tps()
        if not tps:
            return
        ends = self._consumer.end_offsets(tps)
        for tp, end in ends.items():
            st = self.parts.get(tp.partition)
            if st is not None and end is not None:
                self.metrics.set_lag(tp.partition, max(0, int(end) - st.next_offset))
        self._update_state_gauges()

    # ------------------------------------------------------------------------------- partitions and models

    def _open_partition(self, p: int) -> None:
        """Restore ``p`` from its newest checkpoint for the champion's version and seek there."""
        from kafka import TopicPartition

        tp = TopicPartition(self.config.events_topic, p)
        champ = self.champion
        champ.drop_partition(p)
        store = champ.new_partition(p)
        info = self.checkpoints.latest(p, champ.handle.version)
        if info is not None:
            self.checkpoints.restore(info, store)
            start = info.next_offset
            self.metrics.count("restores")
        else:
            start = self._consumer.beginning_offsets([tp]).get(tp, 0) or 0
        committed = self._consumer.committed(tp)
        committed = start if committed is None else max(int(committed), start)
        self.parts[p] = _PartitionState(
            partition=p, next_offset=start, emit_from=committed, committed=committed, checkpoint_offset=start
        )
        if self.challenger is not None:
            self.challenger.new_partition(p)

    def _apply_assignment(self) -> None:
        tps = self._tps()
        self._consumer.assign(tps)
        for tp in tps:
            self._consumer.seek(tp, self.parts[tp.partition].next_offset)
        for p in list(self.metrics.lag):
            if p not in self.parts:
                self.metrics.forget_partition(p)
        self._update_state_gauges()

    def _reopen_all(self) -> None:
        owned = sorted(self.parts)
        self.parts.clear()
        if self.challenger is not None:
            self.challenger.stores.clear()
            self.challenger.scorers.clear()
            self.challenger_events = 0
        for p in owned:
            self._open_partition(p)
        self._apply_assignment()

    def _ensure_model(self, handle: ModelHandle) -> None:
        if self.champion is not None and self.champion.handle == handle:
            return
        if self.parts:
            raise RuntimeError("release all partitions before changing the model without a hot swap")
        model = self._load_model(handle.locator)
        model.eval()
        self.champion = _ModelRun(handle, model)
        self.spec = model.config.features

    # ------------------------------------------------------------------------------------------- commands

    def _wait_for_command(self, timeout: float) -> None:
        try:
            item = self._commands.get(timeout=timeout)
        except queue.Empty:
            return
        self._execute(*item)

    def _serve_commands(self) -> None:
        while True:
            try:
                item = self._commands.get_nowait()
            except queue.Empty:
                return
            self._execute(*item)

    def _execute(self, name: str, args: tuple, fut: Future) -> None:
        if not fut.set_running_or_notify_cancel():
            return
        try:
            fut.set_result(getattr(self, f"_cmd_{name}")(*args))
        except _Fenced:
            fut.set_exception(RuntimeError(f"{self.name} was fenced"))
            raise
        except Exception as exc:
            fut.set_exception(exc)

    def _refuse_commands(self) -> None:
        """While Kafka is unreachable: answer a stop at once, fail other commands with the error (no hang)."""
        while True:
            try:
                name, _, fut = self._commands.get_nowait()
            except queue.Empty:
                return
            if not fut.set_running_or_notify_cancel():
                continue
            if name == "stop":
                self._stop.set()
                self._close_clients()
                fut.set_result({})
            else:
                fut.set_exception(RuntimeError(f"{self.name} cannot reach Kafka: {self.last_error}"))

    def _abort_dangling(self) -> None:
        """After a broker restart: write abort markers on every output partition this slot writes to.

        A restarting broker may keep transactional records whose transaction it forgot (they then hold back
        ``read_committed`` readers forever); a transaction of ours that touches those partitions and aborts
        closes them. The probe records themselves are aborted, so no reader ever sees them.
        """
        if not self.config.transactions or not self.parts:
            return
        self._producer.begin_transaction()
        for p in sorted(self.parts):
            for topic in (self.config.scores_topic, self.config.shadow_topic):
                self._producer.send(topic, value=b"", partition=p, headers=[("rnnstream-abort-probe", b"1")])
        self._producer.flush(timeout=self.config.commit_timeout_ms / 1000)
        self._abort_transaction()

    def _fail_pending_commands(self) -> None:
        while True:
            try:
                _, _, fut = self._commands.get_nowait()
            except queue.Empty:
                return
            if fut.set_running_or_notify_cancel():
                fut.set_exception(RuntimeError(f"{self.name} loop ended: {self.last_error}"))

    def _quiesce(self) -> None:
        if self._txn_open or self._uncommitted():
            self._commit()
        self._resume()

    def _cmd_assign(self, partitions: list[int], handle: ModelHandle) -> list[int]:
        """Take ``partitions`` (restored from their checkpoints); returns all owned partitions."""
        self._quiesce()
        self._ensure_model(handle)
        for p in sorted(set(partitions) - set(self.parts)):
            self._open_partition(p)
        self._apply_assignment()
        return sorted(self.parts)

    def _cmd_set_partitions(self, partitions: list[int], handle: ModelHandle) -> list[int]:
        """Own exactly ``partitions``: release the others (final checkpoints), open the new ones."""
        drop = sorted(set(self.parts) - set(partitions))
        if drop:
            self._cmd_release(drop)
        return self._cmd_assign(partitions, handle)

    def _cmd_release(self, partitions: list[int]) -> dict[int, int]:
        """Commit, write a final checkpoint of each partition, give them up; returns their next offsets."""
        self._quiesce()
        out = {}
        for p in sorted(set(partitions) & set(self.parts)):
            st = self.parts[p]
            if (
                st.next_offset > st.checkpoint_offset
                or self.checkpoints.latest(p, self.champion.handle.version) is None
            ):
                self._checkpoint(p)
            out[p] = st.next_offset
            del self.parts[p]
            self.champion.drop_partition(p)
            if self.challenger is not None:
                self.challenger.drop_partition(p)
        self._apply_assignment()
        return out

    def _cmd_final_checkpoint(self) -> dict[int, int]:
        """Commit and checkpoint every owned partition now; returns their next offsets."""
        self._quiesce()
        for p in sorted(self.parts):
            self._checkpoint(p)
        return {p: st.next_offset for p, st in self.parts.items()}

    def _cmd_stop(self) -> dict[int, int]:
        out = self._cmd_release(sorted(self.parts)) if self.parts else {}
        self._close_clients()
        self._stop.set()
        return out

    def _cmd_positions(self) -> dict[int, dict[str, int]]:
        return {
            p: {"next_offset": st.next_offset, "committed": st.committed, "checkpoint": st.checkpoint_offset}
            for p, st in self.parts.items()
        }

    def _cmd_prepare_model(self, handle: ModelHandle, shadow: bool) -> dict[int, int]:
        """Load ``handle`` as a challenger that scores the same events with its own fresh states from here
        on (warm-up; into the shadow topic too when ``shadow``). Returns each partition's warm-up start."""
        model = self._load_model(handle.locator)
        model.eval()
        self._quiesce()
        self.challenger = _ModelRun(handle, model)
        for p in self.parts:
            self.challenger.new_partition(p)
        self.challenger_events = 0
        self.shadow_emit = bool(shadow)
        return {p: st.next_offset for p, st in self.parts.items()}

    def _cmd_challenger_events(self) -> int:
        return self.challenger_events

    def _cmd_switch_model(self) -> dict[int, int]:
        """Make the warmed challenger champion at this commit boundary; returns the switch offsets."""
        if self.challenger is None:
            raise RuntimeError("no challenger prepared")
        self._quiesce()
        return self._switch_now()

    def _switch_now(self) -> dict[int, int]:
        self.champion, self.challenger = self.challenger, None
        self.spec = self.champion.model.config.features
        self.shadow_emit = False
        out = {}
        for p in sorted(self.parts):
            self._checkpoint(p)
            out[p] = self.parts[p].next_offset
        return out

    def _cmd_drop_challenger(self) -> None:
        self.challenger = None
        self.shadow_emit = False
        self.challenger_events = 0

    def _cmd_state_of(self, p: int, keys: list[str]) -> np.ndarray:
        """The champion's states of ``keys`` in partition ``p`` (tests, debugging)."""
        return self.champion.stores[p].gather(keys).numpy().copy()

    # ----------------------------------------------------------------------------------------- recovery

    def _recover_from_error(self, exc: Exception) -> None:
        self.last_error = f"{type(exc).__name__}: {exc}"[:500]
        self.metrics.count("kafka_errors")
        log.warning("%s: %s; resetting to checkpoints", self.name, self.last_error)
        if self._producer is not None and self._txn_open and self.config.transactions:
            with contextlib.suppress(Exception):
                self._abort_transaction()
        self._pending_latency.clear()
        self._close_clients()
        self.paused = False
        while not self._stop.is_set():
            self._stop.wait(self.config.error_backoff_s)
            self._heartbeat = time.time()
            self._refuse_commands()
            try:
                self._connect()
                self._abort_dangling()
                self._reopen_all()
                self.last_error = None
                return
            except Exception as again:
                self.last_error = f"{type(again).__name__}: {again}"[:500]
                self._close_clients()


class ScoringWorkerActor:
    """The Ray actor around a :class:`ScoringWorker` (made with ``ray.remote(max_restarts=-1)`` by the
    coordinator). A restart re-runs this constructor: the new process fences the old transactional producer
    and owns nothing until the coordinator assigns its partitions again (from their checkpoints)."""

    def __init__(self, slot: int, config: WorkerConfig) -> None:
        self.worker = ScoringWorker(slot, config)

    def status(self) -> dict[str, Any]:
        return self.worker.status()

    def metrics(self) -> dict[str, Any]:
        return self.worker.metrics_snapshot()

    def call(self, name: str, *args: Any) -> Any:
        return self.worker.call(name, *args)

    def stop(self) -> dict[int, int]:
        out = self.worker.call("stop")
        return out

    def pid(self) -> int:
        return os.getpid()


def fence_slot(config: WorkerConfig, slot: int) -> None:
    """Abort whatever transaction a gone worker slot left open, by starting its transactional id once.

    Called when a worker is removed without a clean stop, so its open transaction cannot hold back
    ``read_committed`` readers of the scores topic until the transaction timeout.
    """
    if not config.transactions:
        return
    from kafka import KafkaProducer

    try:
        producer = KafkaProducer(
            **config.kafka.client_kwargs(), transactional_id=transactional_id(config.pipeline, slot)
        )
        producer.init_transactions()
        producer.close(timeout=5)
    except Exception as exc:  # best effort: the broker's transaction timeout aborts it otherwise
        log.warning("could not fence worker slot %d: %s", slot, exc)
