"""ScoringWorker: owns some partitions of a pipeline's events topic and scores every event exactly once.

Data flows one way: broker (poll) -> :class:`ScoringPartition` (decode, validate, score with each key's
state) -> :class:`ScoreEmitter` + dead letters into the open :class:`ScoresTransaction` -> commit (scores,
dead letters and consumed offsets together) -> checkpoint (states at the committed offset). One loop thread
does everything Kafka (kafka-python clients are not thread safe); control calls (assign, release, stop, hot
swap) are explicit methods that run on that thread between cycles.

A cycle: poll (a micro-batch closes on ``max_batch_events`` events or ``batch_linger_ms``) -> each owned
partition processes its messages -> every ``commit_interval_ms`` (sooner when caught up, or when
``max_in_flight`` events wait) the transaction commits -> partitions that are due write a checkpoint whose
``next_offset`` is exactly the committed one, after freeing expired keys.

Exactly once: on (re)start a partition restores its newest checkpoint for the serving version (or starts
empty at the log start), seeks to its ``next_offset`` and replays; events below the group's committed offset
update the state and emit nothing. The transactional id is stable per worker slot, so a restarted actor
fences its zombie and aborts what it left open; a fenced worker stops (it never re-initialises). Without
transactions the offsets are committed only after every send of the batch succeeded: at least once.

Failures: bad input never raises (rejects and scoring failures go to the dead-letter topic, see
:mod:`scoring_partition`); only Kafka errors reset the partitions to their checkpoints, with a bounded
exponential backoff. ``status()`` says so: errors, resets, the last error and since when it keeps failing.

Backpressure: at most ``max_in_flight`` events are scored but not committed; then the worker pauses its
partitions and commits. The consumer's fetch buffer is bounded, so a slow sink grows the lag, not memory.

Hot swap: :meth:`ScoringWorker.prepare_model` attaches a challenger that scores the same events with its own
states (shadow, optionally into ``<pipeline>.scores.shadow``); :meth:`ScoringWorker.switch_model` makes it
the champion at a commit boundary and checkpoints its states there.
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
from typing import Any

import numpy as np

from rnnstream.workers.dead_letter import DeadLetterWriter
from rnnstream.workers.event_codec import ARROW, ENCODING_HEADER, EventDecoder, header_value
from rnnstream.workers.partition_checkpoint import PartitionCheckpoints
from rnnstream.workers.score_emitter import ScoreEmitter, ScoreRows
from rnnstream.workers.scores_transaction import ProducerFenced, ScoresTransaction
from rnnstream.workers.scoring_partition import LoadedModel, ScoredBatch, ScoringPartition, feature_mismatch
from rnnstream.workers.worker_config import ModelHandle, WorkerConfig, transactional_id
from rnnstream.workers.worker_metrics import WorkerMetrics

log = logging.getLogger(__name__)

MAX_BACKOFF_S = 10.0


class ModelIncompatible(ValueError):
    """The model reads features the pipeline's events do not carry (one line says which)."""


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
        self.champion: LoadedModel | None = None
        self.challenger: LoadedModel | None = None
        self.shadow_emit = False
        self.challenger_events = 0
        self.parts: dict[int, ScoringPartition] = {}
        self.paused = False
        self.fenced = False
        self.last_error: str | None = None
        self.failing_since: float | None = None  # wall time of the first of the current run of failures
        self.resets = 0
        self._commands: queue.Queue[tuple[Callable[..., Any], tuple, Future]] = queue.Queue()
        self._stop = threading.Event()
        self._consumer = None
        self._tx: ScoresTransaction | None = None
        self._emitter: ScoreEmitter | None = None
        self._dead_letters: DeadLetterWriter | None = None
        self._in_flight = 0
        self._pending_latency: list[tuple[np.ndarray, np.ndarray]] = []
        self._last_lag = 0.0
        self._heartbeat = time.time()
        with contextlib.suppress(Exception):
            import torch

            torch.set_num_threads(max(1, config.torch_threads))
        self._thread = threading.Thread(target=self._run, name=f"rnnstream-{self.name}", daemon=True)
        self._thread.start()

    # ---------------------------------------------------------------------------------------- control API

    def assign(self, partitions: list[int], handle: ModelHandle) -> list[int]:
        """Take ``partitions`` (restored from their checkpoints); returns all owned partitions."""
        return self._on_loop(self._assign, list(partitions), handle)

    def set_partitions(self, partitions: list[int], handle: ModelHandle) -> list[int]:
        """Own exactly ``partitions``: release the others (final checkpoints), open the new ones."""
        return self._on_loop(self._set_partitions, list(partitions), handle)

    def release(self, partitions: list[int]) -> dict[int, int]:
        """Commit, write a final checkpoint of each partition, give them up; returns their next offsets."""
        return self._on_loop(self._release, list(partitions))

    def final_checkpoint(self) -> dict[int, int]:
        """Commit and checkpoint every owned partition now; returns their next offsets."""
        return self._on_loop(self._final_checkpoint)

    def prepare_model(self, handle: ModelHandle, shadow: bool) -> dict[int, int]:
        """Load ``handle`` as a challenger scoring the same events with fresh states from here on (into the
        shadow topic too when ``shadow``). Returns each partition's warm-up start offset."""
        return self._on_loop(self._prepare_model, handle, bool(shadow))

    def switch_model(self) -> dict[int, int]:
        """Make the warmed challenger champion at this commit boundary; returns the switch offsets."""
        return self._on_loop(self._switch_model)

    def drop_challenger(self) -> None:
        self._on_loop(self._drop_challenger)

    def stop(self, timeout: float = 120.0) -> dict[int, int]:
        """Release every partition (final checkpoints), close the clients and end the loop."""
        if not self._thread.is_alive():
            return {}
        return self._on_loop(self._stop_loop, timeout=timeout)

    def shutdown(self, timeout: float = 60.0) -> None:
        """:meth:`stop`, then wait for the loop thread."""
        if self._thread.is_alive():
            try:
                self.stop(timeout=timeout)
            finally:
                self._thread.join(timeout=timeout)

    def status(self) -> dict[str, Any]:
        """Cheap, lock-free status (answered from the caller's thread)."""
        return {
            "slot": self.slot,
            "incarnation": self.incarnation,
            "pid": os.getpid(),
            "partitions": sorted(self.parts),
            "model_version": self.champion.version if self.champion else None,
            "challenger_version": self.challenger.version if self.challenger else None,
            "challenger_events": self.challenger_events,
            "alive": self._thread.is_alive(),
            "fenced": self.fenced,
            "heartbeat_age_s": time.time() - self._heartbeat,
            "last_error": self.last_error,
            "failing_for_s": None if self.failing_since is None else time.time() - self.failing_since,
            "resets": self.resets,
        }

    def metrics_snapshot(self) -> dict[str, Any]:
        counts = {p: dict(part.counts) for p, part in self.parts.items()}
        return {**self.metrics.snapshot(), **self.status(), "partition_counts": counts}

    def _on_loop(self, fn: Callable[..., Any], *args: Any, timeout: float | None = 120.0) -> Any:
        """Run ``fn(*args)`` on the loop thread between cycles and return its result."""
        if not self._thread.is_alive():
            raise RuntimeError(f"{self.name} loop is not running ({self.last_error})")
        fut: Future = Future()
        self._commands.put((fn, args, fut))
        return fut.result(timeout=timeout)

    # ---------------------------------------------------------------------------------------- Kafka clients

    def _connect(self) -> None:
        from kafka import KafkaConsumer, KafkaProducer

        cfg = self.config
        kw = cfg.kafka.client_kwargs()
        self._consumer = KafkaConsumer(
            **kw,
            group_id=cfg.group_id,
            enable_auto_commit=False,
            isolation_level="read_committed",
            auto_offset_reset="earliest",
            max_poll_records=cfg.max_poll_records,
            fetch_max_bytes=cfg.fetch_max_bytes,
            max_partition_fetch_bytes=cfg.max_partition_fetch_bytes,
            fetch_max_wait_ms=max(1, cfg.batch_linger_ms),
        )
        pkw: dict[str, Any] = {
            "linger_ms": 2,
            "batch_size": 256 * 1024,
            "max_request_size": 16 * 1024 * 1024,
            "max_block_ms": 20_000,
        }
        if cfg.transactions:
            pkw["transactional_id"] = transactional_id(cfg.pipeline, self.slot)
        producer = KafkaProducer(**kw, **pkw)
        self._tx = ScoresTransaction(producer, cfg.transactions, cfg.commit_timeout_ms)
        if cfg.transactions:
            self._tx._guard(producer.init_transactions)  # fences our previous incarnation, aborts its txn
        self._emitter = ScoreEmitter(self._tx, cfg.events_topic)
        self._dead_letters = DeadLetterWriter(
            cfg.schema, producer=producer, topic=cfg.dlq_topic, send=self._tx.send
        )
        self._in_flight = 0

    def _close_clients(self) -> None:
        if self._tx is not None:
            with contextlib.suppress(Exception):
                self._tx.producer.close(timeout=2)
        if self._consumer is not None:
            with contextlib.suppress(Exception):
                self._consumer.close(autocommit=False)
        self._tx = None
        self._consumer = None

    # --------------------------------------------------------------------------------------------- the loop

    def _run(self) -> None:
        try:
            self._connect()
        except ProducerFenced as exc:
            self._fenced(exc)
        except Exception as exc:
            self._recover_from_error(exc)
        while not self._stop.is_set() and not self.fenced:
            self._heartbeat = time.time()
            try:
                self._serve_commands()
                if self._stop.is_set():
                    break
                if not self.parts:
                    self._wait_for_command(0.05)
                    continue
                self._cycle()
                self.failing_since = None
            except ProducerFenced as exc:
                self._fenced(exc)
            except Exception as exc:  # Kafka trouble (bad input never raises): reset to checkpoints, retry
                self._recover_from_error(exc)
        self._fail_pending_commands()

    def _fenced(self, exc: Exception) -> None:
        self.fenced = True
        self.last_error = f"fenced: {exc}"[:500]
        log.error("%s fenced by a newer incarnation; stopping without writing again", self.name)
        self._close_clients()

    def _cycle(self) -> None:
        cfg = self.config
        records = self._poll_batch()
        polled = 0
        by_partition: dict[int, list] = {}
        for tp, msgs in records.items():
            by_partition.setdefault(tp.partition, []).extend(msgs)
            polled += len(msgs)
        for p, msgs in by_partition.items():
            part = self.parts.get(p)
            if part is not None:
                self._process(part, msgs)
        tx = self._tx
        age_ms = (time.monotonic() - tx.started) * 1000
        caught_up = polled < cfg.max_batch_events and self._caught_up()  # soon when idle, batched under load
        if tx.open and (
            age_ms >= cfg.commit_interval_ms
            or (caught_up and age_ms >= cfg.min_commit_interval_ms)
            or self._in_flight >= cfg.max_in_flight
        ):
            if self._in_flight >= cfg.max_in_flight:
                self._pause()
            self._commit()
            self._resume()
        elif not tx.open and self._uncommitted():
            self._commit()  # replay-only progress past the committed offset (e.g. all rejects)
        if not tx.open:
            self._checkpoint_due()
        if time.monotonic() - self._last_lag >= cfg.lag_every_s:
            self._update_lag()

    def _caught_up(self) -> bool:
        """True when no partition has a known backlog (high watermark of the last fetch, no network call)."""
        try:
            for tp in self._tps():
                hw = self._consumer.highwater(tp)
                if hw is not None and hw > self.parts[tp.partition].offsets.next_offset:
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
        if self._tx.open:  # do not sit in poll past the moment the open transaction is due
            due = self._tx.started + min(cfg.commit_interval_ms, cfg.min_commit_interval_ms) / 1000
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

    def _process(self, part: ScoringPartition, msgs: list) -> None:
        """One partition's messages: score, then send scores and dead letters into the open transaction."""
        scored = part.process(msgs, self.decoder)
        if scored is None:
            return
        m = self.metrics
        d = scored.decoded
        m.count("events", d.events_in)
        for line in scored.errors:
            log.warning("%s: %s", self.name, line)
            self.last_error = line[:500]
            m.count("scoring_errors")
        if part.challenger is None and self.challenger is not None:  # it failed on this partition: drop it
            self._drop_challenger()
        if scored.rows.size:
            m.batch(int(scored.rows.size))
            if scored.shadow is not None:
                self.challenger_events += int(scored.rows.size)
        m.count("replayed", scored.replayed)
        n_emit = int(scored.emit.sum())
        too_large = self._send_scores(part, scored, msgs) if n_emit else []
        rejects = [*scored.rejects, *too_large]
        if rejects:
            self._tx.begin()
            self._dead_letters.write(rejects)
        part.unwritable(len(too_large))
        m.count("scored", n_emit - len(too_large))
        m.count("dead_lettered", len(rejects))
        m.count("evicted", scored.expired)
        self._in_flight += n_emit + len(scored.rejects)
        problem = part.check_counts()
        if problem:
            log.error("%s: %s", self.name, problem)
            self.last_error = problem

    def _send_scores(self, part: ScoringPartition, scored: ScoredBatch, msgs: list) -> list:
        """Send the champion's (and, when asked, the challenger's) scores; returns too-large rejects."""
        cfg = self.config
        d = scored.decoded
        sel = scored.rows[scored.emit]
        times = d.batch.column(1).cast("int64").to_numpy()
        rows = ScoreRows(
            d.batch.column(0).take(sel),
            times[sel],
            scored.outputs[scored.emit],
            d.offset[sel],
            d.event_index[sel],
            d.timestamp_ms[sel],
        )
        arrow = self._arrow_out(msgs)
        self._tx.begin()
        champ = part.champion
        rejects = self._emitter.emit(
            cfg.scores_topic, part.partition, rows, champ.output_names, champ.version, arrow
        )
        if scored.shadow is not None and self.shadow_emit and part.challenger is not None:
            shadow = ScoreRows(
                rows.keys, rows.times, scored.shadow[scored.emit], rows.offsets, rows.indexes, rows.timestamps
            )
            ch = part.challenger
            self._emitter.emit(cfg.shadow_topic, part.partition, shadow, ch.output_names, ch.version, arrow)
        self._pending_latency.append((rows.times, rows.timestamps))
        return rejects

    def _arrow_out(self, msgs: list) -> bool:
        enc = self.config.score_encoding
        if enc != "auto":
            return enc == "arrow"
        return header_value(msgs[0].headers, ENCODING_HEADER) == ARROW.encode()

    # ----------------------------------------------------------------------------------- commit and lag

    def _uncommitted(self) -> bool:
        return any(part.offsets.uncommitted for part in self.parts.values())

    def _commit(self) -> None:
        """Commit the scores and dead letters sent and the consumed offsets, atomically (or, without
        transactions, the offsets after every send succeeded)."""
        from kafka import TopicPartition
        from kafka.structs import OffsetAndMetadata

        offsets = {
            TopicPartition(self.config.events_topic, p): OffsetAndMetadata(part.offsets.next_offset, "", -1)
            for p, part in self.parts.items()
            if part.offsets.uncommitted
        }
        self._tx.commit(offsets, self.config.group_id, self._consumer)
        self._in_flight = 0
        for part in self.parts.values():
            part.offsets.mark_committed()
        if self._pending_latency:
            now_ms = time.time() * 1000
            ev = np.concatenate([t for t, _ in self._pending_latency])
            ap = np.concatenate([a for _, a in self._pending_latency])
            self._pending_latency.clear()
            self.metrics.latencies(now_ms - ev, now_ms - ap)

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

    def _update_lag(self, consumer: Any = None) -> None:
        """Lag per owned partition from the broker's end offsets (``consumer``: a client to ask with while
        the worker's own clients are down)."""
        self._last_lag = time.monotonic()
        tps = self._tps()
        if not tps:
            return
        ends = (consumer or self._consumer).end_offsets(tps)
        for tp, end in ends.items():
            part = self.parts.get(tp.partition)
            if part is not None and end is not None:
                self.metrics.set_lag(tp.partition, max(0, int(end) - part.offsets.next_offset))
        self._update_state_gauges()

    def _update_state_gauges(self) -> None:
        stores = [part.store for part in self.parts.values()]
        self.metrics.set_gauge("keys", sum(s.num_keys for s in stores))
        self.metrics.set_gauge("state_bytes", sum(s.nbytes for s in stores))

    # ---------------------------------------------------------------------------------------- checkpoints

    def _checkpoint_due(self) -> None:
        cfg = self.config
        now = time.monotonic()
        for part in self.parts.values():
            if part.offsets.checkpoint_due(
                cfg.checkpoint_interval_events, cfg.checkpoint_interval_seconds, now
            ):
                self.metrics.count("evicted", part.sweep())
                self._checkpoint(part)

    def _checkpoint(self, part: ScoringPartition) -> None:
        t0 = time.perf_counter()
        part.snapshot(self.checkpoints)
        self.metrics.checkpoint((time.perf_counter() - t0) * 1000)
        self._update_state_gauges()

    # ------------------------------------------------------------------------------- partitions and models

    def _open_partition(self, p: int) -> None:
        """Restore ``p`` from its newest checkpoint for the champion's version and seek there."""
        from kafka import TopicPartition

        tp = TopicPartition(self.config.events_topic, p)
        log_start = self._consumer.beginning_offsets([tp]).get(tp, 0) or 0
        committed = self._consumer.committed(tp)
        part, info = ScoringPartition.open(
            p, self.champion, self.config.key_ttl_ms, self.checkpoints, log_start, committed
        )
        if info is not None:
            self.metrics.count("restores")
        if self.challenger is not None:
            part.attach_challenger(self.challenger)
        self.parts[p] = part

    def _apply_assignment(self) -> None:
        tps = self._tps()
        self._consumer.assign(tps)
        for tp in tps:
            self._consumer.seek(tp, self.parts[tp.partition].offsets.next_offset)
        for p in list(self.metrics.lag):
            if p not in self.parts:
                self.metrics.forget_partition(p)
        self._update_state_gauges()

    def _reopen_all(self) -> None:
        owned = sorted(self.parts)
        self.parts.clear()
        self.challenger_events = 0
        for p in owned:
            self._open_partition(p)
        self._apply_assignment()

    def _loaded(self, handle: ModelHandle) -> LoadedModel:
        """Load ``handle`` and check that the pipeline's events carry every feature it reads."""
        run = LoadedModel.of(handle, self._load_model(handle.locator))
        problem = feature_mismatch(run.model.config.features, self.config.schema)
        if problem:
            raise ModelIncompatible(f"model {handle.version} cannot serve {self.config.pipeline}: {problem}")
        return run

    def _ensure_model(self, handle: ModelHandle) -> None:
        if self.champion is not None and self.champion.handle == handle:
            return
        if self.parts:
            raise RuntimeError("release all partitions before changing the model without a hot swap")
        self.champion = self._loaded(handle)

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

    def _execute(self, fn: Callable[..., Any], args: tuple, fut: Future) -> None:
        if not fut.set_running_or_notify_cancel():
            return
        try:
            fut.set_result(fn(*args))
        except ProducerFenced:
            fut.set_exception(RuntimeError(f"{self.name} was fenced"))
            raise
        except Exception as exc:
            fut.set_exception(exc)

    def _refuse_commands(self) -> None:
        """While Kafka is unreachable: answer a stop at once, fail other commands with the error (no hang)."""
        while True:
            try:
                fn, _, fut = self._commands.get_nowait()
            except queue.Empty:
                return
            if not fut.set_running_or_notify_cancel():
                continue
            if fn == self._stop_loop:
                self._stop.set()
                self._close_clients()
                fut.set_result({})
            else:
                fut.set_exception(RuntimeError(f"{self.name} cannot reach Kafka: {self.last_error}"))

    def _fail_pending_commands(self) -> None:
        while True:
            try:
                _, _, fut = self._commands.get_nowait()
            except queue.Empty:
                return
            if fut.set_running_or_notify_cancel():
                fut.set_exception(RuntimeError(f"{self.name} loop ended: {self.last_error}"))

    def _quiesce(self) -> None:
        if self._tx.open or self._uncommitted():
            self._commit()
        self._resume()

    def _assign(self, partitions: list[int], handle: ModelHandle) -> list[int]:
        self._quiesce()
        self._ensure_model(handle)
        for p in sorted(set(partitions) - set(self.parts)):
            self._open_partition(p)
        self._apply_assignment()
        return sorted(self.parts)

    def _set_partitions(self, partitions: list[int], handle: ModelHandle) -> list[int]:
        drop = sorted(set(self.parts) - set(partitions))
        if drop:
            self._release(drop)
        return self._assign(partitions, handle)

    def _release(self, partitions: list[int]) -> dict[int, int]:
        self._quiesce()
        out = {}
        for p in sorted(set(partitions) & set(self.parts)):
            part = self.parts[p]
            if (
                part.offsets.next_offset > part.offsets.checkpoint_offset
                or self.checkpoints.latest(p, part.champion.version) is None
            ):
                self._checkpoint(part)
            out[p] = part.offsets.next_offset
            del self.parts[p]
            part.close()
        self._apply_assignment()
        return out

    def _final_checkpoint(self) -> dict[int, int]:
        self._quiesce()
        for part in self.parts.values():
            self._checkpoint(part)
        return {p: part.offsets.next_offset for p, part in self.parts.items()}

    def _stop_loop(self) -> dict[int, int]:
        out = self._release(sorted(self.parts)) if self.parts else {}
        self._close_clients()
        self._stop.set()
        return out

    def _prepare_model(self, handle: ModelHandle, shadow: bool) -> dict[int, int]:
        challenger = self._loaded(handle)
        self._quiesce()
        self.challenger = challenger
        for part in self.parts.values():
            part.attach_challenger(challenger)
        self.challenger_events = 0
        self.shadow_emit = shadow
        return {p: part.offsets.next_offset for p, part in self.parts.items()}

    def _switch_model(self) -> dict[int, int]:
        if self.challenger is None:
            raise RuntimeError("no challenger prepared")
        self._quiesce()
        self.champion, self.challenger = self.challenger, None
        self.shadow_emit = False
        out = {}
        for p in sorted(self.parts):
            part = self.parts[p]
            part.promote_challenger()
            self._checkpoint(part)
            out[p] = part.offsets.next_offset
        return out

    def _drop_challenger(self) -> None:
        self.challenger = None
        self.shadow_emit = False
        self.challenger_events = 0
        for part in self.parts.values():
            part.drop_challenger()

    # ----------------------------------------------------------------------------------------- recovery

    def _recover_from_error(self, exc: Exception) -> None:
        """Abort, drop the clients, and reconnect with a bounded exponential backoff; then every partition
        starts again from its checkpoint (replaying what was not committed)."""
        self.last_error = f"{type(exc).__name__}: {exc}"[:500]
        self.failing_since = self.failing_since or time.time()
        self.metrics.count("kafka_errors")
        log.warning("%s: %s; resetting to checkpoints", self.name, self.last_error)
        if self._tx is not None:
            with contextlib.suppress(Exception):
                self._tx.abort()
        self._pending_latency.clear()
        self._close_clients()
        self.paused = False
        backoff = self.config.error_backoff_s
        while not self._stop.is_set():
            self._stop.wait(backoff)
            backoff = min(MAX_BACKOFF_S, backoff * 2)
            self._heartbeat = time.time()
            self._refuse_commands()
            try:
                self._connect()
                self._tx.abort_dangling(
                    sorted(self.parts), [self.config.scores_topic, self.config.shadow_topic]
                )
                self._reopen_all()
                self.resets += 1
                self.metrics.count("resets")
                return
            except ProducerFenced as again:
                self._fenced(again)
                self._stop.set()
                return
            except Exception as again:
                self.last_error = f"{type(again).__name__}: {again}"[:500]
                self.metrics.count("kafka_errors")
                self._close_clients()


class ScoringWorkerActor:
    """The Ray actor around a :class:`ScoringWorker` (made with ``ray.remote(max_restarts=-1)`` by the
    coordinator). A restart re-runs this constructor: the new process fences the old transactional producer
    and owns nothing until the coordinator assigns its partitions again (from their checkpoints)."""

    def __init__(
        self, slot: int, config: WorkerConfig, model_loader: Callable[[str], Any] | None = None
    ) -> None:
        self.worker = ScoringWorker(slot, config, model_loader=model_loader)

    def status(self) -> dict[str, Any]:
        return self.worker.status()

    def metrics(self) -> dict[str, Any]:
        return self.worker.metrics_snapshot()

    def assign(self, partitions: list[int], handle: ModelHandle) -> list[int]:
        return self.worker.assign(partitions, handle)

    def set_partitions(self, partitions: list[int], handle: ModelHandle) -> list[int]:
        return self.worker.set_partitions(partitions, handle)

    def release(self, partitions: list[int]) -> dict[int, int]:
        return self.worker.release(partitions)

    def final_checkpoint(self) -> dict[int, int]:
        return self.worker.final_checkpoint()

    def prepare_model(self, handle: ModelHandle, shadow: bool) -> dict[int, int]:
        return self.worker.prepare_model(handle, shadow)

    def challenger_events(self) -> int:
        return self.worker.challenger_events

    def switch_model(self) -> dict[int, int]:
        return self.worker.switch_model()

    def drop_challenger(self) -> None:
        self.worker.drop_challenger()

    def stop(self) -> dict[int, int]:
        return self.worker.stop()

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
