"""ScoringWorker: owns some partitions of a pipeline's events topic and scores every event exactly once.

Data flows one way: broker (poll) -> :class:`ScoringPartition` (decode, validate, score with each key's
state) -> :class:`ScoreEmitter` + dead letters into the open :class:`ScoresTransaction` -> commit (scores,
dead letters and consumed offsets together) -> checkpoint (states at the committed offset). One loop thread
does everything Kafka (kafka-python clients are not thread safe); control calls (assign, release, stop, hot
swap) are explicit methods that run on that thread between cycles.

A cycle: poll (a micro-batch closes on ``max_batch_events`` events or ``batch_linger_ms``) -> each owned
partition processes its messages -> the transaction commits as soon as the batch is scored when the worker
keeps up, at least every ``commit_interval_ms`` when it is behind, or when ``max_in_flight`` events wait
(:mod:`commit_policy`) -> partitions that are due write a checkpoint whose ``next_offset`` is exactly the
committed one, after freeing expired keys. With transactions and ``overlap_commits`` a commit runs in the
background (:mod:`commit_in_flight`) while the next cycle polls, decodes and scores; that batch's scores are
sent only once the commit returned (a due checkpoint, a full in-flight budget or a control call wait for it).

Exactly once: on (re)start a partition restores its newest checkpoint for the serving version (or starts
empty at the log start), seeks to its ``next_offset`` and replays; events below the group's committed offset
update the state and emit nothing. The transactional id is stable per worker slot, so a restarted actor
fences its zombie and aborts what it left open; a fenced worker stops (it never re-initialises). Without
transactions the offsets are committed only after every send of the batch succeeded: at least once.

Failures: bad input never raises (rejects and scoring failures go to the dead-letter topic, see
:mod:`scoring_partition`); only Kafka errors reset the partitions to their checkpoints, with a bounded
exponential backoff. ``status()`` says so (:mod:`failure_record`): errors, resets, the last error and since
when it keeps failing. Lag is read from the broker by a watcher of its own (:mod:`partition_lag`), so it
stays true while the loop fails; the per-partition series are served on the worker's own Prometheus
endpoint (:mod:`partition_metrics_endpoint`), where a released partition's series disappears.

Backpressure: at most ``max_in_flight`` events are scored but not committed; then the worker pauses its
partitions and commits. The consumer's fetch buffer is bounded, so a slow sink grows the lag, not memory.

Hot swap (:mod:`served_models`): :meth:`ScoringWorker.prepare_model` attaches a challenger that scores the
same events with its own states (shadow, optionally into ``<pipeline>.scores.shadow``);
:meth:`ScoringWorker.switch_model` makes it the champion at a commit boundary and checkpoints its states
there.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from rnnstream.workers.checkpoint_writer import CheckpointWriteFailed
from rnnstream.workers.commit_in_flight import CommitInFlight
from rnnstream.workers.commit_policy import IDLE_POLL_MS, CommitPolicy, offsets_after
from rnnstream.workers.event_codec import EventDecoder
from rnnstream.workers.failure_record import FailureRecord, backoff_delays
from rnnstream.workers.loop_calls import LoopCalls
from rnnstream.workers.model_loading import load_model
from rnnstream.workers.owned_partitions import OwnedPartitions
from rnnstream.workers.partition_checkpoint import PartitionCheckpoints
from rnnstream.workers.scores_transaction import ProducerFenced
from rnnstream.workers.scoring_partition import ScoredBatch, ScoringPartition
from rnnstream.workers.served_models import ModelIncompatible, ServedModels
from rnnstream.workers.worker_clients import WorkerClients
from rnnstream.workers.worker_commands import WorkerCommands
from rnnstream.workers.worker_config import WorkerConfig
from rnnstream.workers.worker_metrics import WorkerMetrics
from rnnstream.workers.worker_report import WorkerReport

__all__ = ["ModelIncompatible", "ScoringWorker"]

log = logging.getLogger(__name__)


def limit_torch_threads(n: int) -> None:
    """Cap torch's intra-op threads at ``n`` on the calling thread. It must run on the thread that scores:
    OpenMP keeps the thread count per thread, so a cap set by the thread that built the worker leaves the
    loop's team at one thread a core, and then every tiny op of a small batch wakes a second OpenMP thread
    that spins at its barrier (an ``addmm`` of 25 rows: ~400 CPU-us over both threads instead of ~9 us;
    ``benchmarks/cycle_cost.py``)."""
    with contextlib.suppress(Exception):
        import torch

        torch.set_num_threads(max(1, int(n)))


class ScoringWorker(WorkerCommands):
    """The loop and its state (the control calls are :class:`WorkerCommands`'s); wrapped by the Ray actor
    :class:`ScoringWorkerActor` (usable without Ray)."""

    def __init__(
        self,
        slot: int,
        config: WorkerConfig,
        model_loader: Callable[[str], Any] | None = None,
        export_metrics: bool = True,
    ) -> None:
        self.slot = int(slot)
        self.config = config
        self.name = f"worker-{slot}"
        self.metrics = WorkerMetrics(config.pipeline, self.name, export=export_metrics)
        self.checkpoints = PartitionCheckpoints(
            config.checkpoint_uri, config.pipeline, deployment=config.deployment
        )
        self.decoder = EventDecoder(config.schema)
        self.models = ServedModels(config, model_loader or load_model)
        self.parts = OwnedPartitions(self.checkpoints, self.metrics, config.key_ttl_ms)
        self.health = FailureRecord()
        self.policy = CommitPolicy(config)
        self.paused = False
        self._calls = LoopCalls()
        self._stop = threading.Event()
        self._clients: WorkerClients | None = None
        self._in_flight = 0
        self._committing = CommitInFlight(f"rnnstream-{self.name}")
        self._thread = threading.Thread(target=self._run, name=f"rnnstream-{self.name}", daemon=True)
        alive = self._thread.is_alive
        self.report = WorkerReport(self.slot, config, self.models, self.health, self.metrics, alive)
        self._thread.start()

    # ---------------------------------------------------------------------------------------- Kafka clients

    def _connect(self) -> None:
        self._clients = WorkerClients(self.config, self.slot)
        self._in_flight = 0

    def _close_clients(self) -> None:
        if self._clients is not None:
            self._clients.close()
        self._clients = None

    # --------------------------------------------------------------------------------------------- the loop

    def _run(self) -> None:
        limit_torch_threads(self.config.torch_threads)
        try:
            self._connect()
        except ProducerFenced as exc:
            self._fenced(exc)
        except Exception as exc:
            self._recover_from_error(exc)
        while not self._stop.is_set() and not self.health.fenced:
            self.report.beat()
            try:
                self._calls.run_pending(reraise=(ProducerFenced,))
                if self._stop.is_set():
                    break
                if not self.parts:
                    self._calls.run_pending(wait_s=0.05, reraise=(ProducerFenced,))
                    continue
                self._cycle()
                self.health.cycle_ok()
            except ProducerFenced as exc:
                self._fenced(exc)
            except Exception as exc:  # Kafka trouble (bad input never raises): reset to checkpoints, retry
                self._recover_from_error(exc)
        self._committing.close()
        try:
            self.parts.close()  # the checkpoint writes in flight end before the loop does
        except CheckpointWriteFailed as exc:  # its message names each partition, offset and reason
            self.health.note(str(exc))
            log.error("%s: %s", self.name, exc)
        except Exception as exc:
            self.health.note(f"checkpoint write failed: {type(exc).__name__}: {exc}")
            log.error("%s: checkpoint write failed: %s", self.name, exc)
        self._calls.refuse(f"{self.name} loop ended: {self.health.last_error}", self._stop_loop, dict)

    def _fenced(self, exc: Exception) -> None:
        self._committing.abandon()
        self.health.fence(exc)
        log.error("%s fenced by a newer incarnation; stopping without writing again", self.name)
        self._close_clients()

    def _cycle(self) -> None:
        cfg = self.config
        clients = self._clients
        tx = clients.tx
        if self._committing.done():
            self._settle_commit()
        committing = self._committing.pending  # then the commit thread owns the producer and ``tx``
        wait_ms = IDLE_POLL_MS if committing else self.policy.poll_wait_ms(tx.open, tx.started)
        by_partition = clients.poll_batch(cfg.max_batch_events, cfg.batch_linger_ms, wait_ms)
        polled = sum(map(len, by_partition.values()))
        if polled:  # a batch that will end in a commit attaches its offsets first (see commit_policy)
            self.metrics.polled([t for m in by_partition.values() for t in (m[0].timestamp, m[-1].timestamp)])
            after = offsets_after(self.parts.next_offsets(), by_partition)
            age_ms = (time.monotonic() - tx.started) * 1000 if not committing and tx.open else 0.0
            if not committing and self.policy.due(polled, lambda: clients.caught_up(after), age_ms):
                self._offer(after)
        owned = [(part, msgs) for p, msgs in by_partition.items() if (part := self.parts.get(p)) is not None]
        per_call = cfg.max_batch_events  # a poll counts messages; the scorer's calls count events
        batches = [(part, msgs, part.process(msgs, self.decoder, per_call)) for part, msgs in owned]
        if self._committing.pending:  # batch N+1 is scored: its scores go out once N is committed
            self._settle_commit()
            if polled and self.policy.due(polled, lambda: clients.caught_up(self.parts.next_offsets()), 0.0):
                self._offer(self.parts.next_offsets())  # its round trips overlap the sends, as above
        for part, msgs, batch in batches:
            if batch is not None:
                self._emit(part, msgs, batch)
        age_ms = (time.monotonic() - tx.started) * 1000
        full = self._in_flight >= cfg.max_in_flight
        if tx.open and (
            full or self.policy.due(polled, lambda: clients.caught_up(self.parts.next_offsets()), age_ms)
        ):
            if full:
                self._pause()
            self._commit(wait=full or self.parts.checkpoint_wanted(*self._checkpoint_every()))
            self._resume()
        elif not tx.open and bool(self.parts.uncommitted_offsets()):
            self._commit()  # replay-only progress past the committed offset (e.g. all rejects)
        if not self._committing.pending and not tx.open:
            self.parts.checkpoint_due(*self._checkpoint_every())

    def _offer(self, after: dict[int, int]) -> None:
        """Attach the offsets the batch in hand reaches to the transaction ahead of its commit."""
        committed = {p: part.offsets.committed for p, part in self.parts.items()}
        self._clients.offer_offsets({p: o for p, o in after.items() if o > committed[p]})

    def _checkpoint_every(self) -> tuple[int, float]:
        return self.config.checkpoint_interval_events, self.config.checkpoint_interval_seconds

    def _emit(self, part: ScoringPartition, msgs: list, scored: ScoredBatch) -> None:
        """One partition's scored messages: send scores and dead letters into the open transaction."""
        m = self.metrics
        d = scored.decoded
        m.count("events", d.events_in)
        for line in scored.errors:
            log.warning("%s: %s", self.name, line)
            self.health.note(line)
            m.count("scoring_errors")
        if part.challenger is None and self.models.challenger is not None:  # it failed here: drop it
            self._drop_challenger()
        if scored.rows.size:
            m.batch(int(scored.rows.size))
            if scored.shadow is not None:
                self.models.challenger_events += int(scored.rows.size)
        m.count("replayed", scored.replayed)
        n_emit = int(scored.emit.sum())
        too_large: list = []
        if n_emit:
            self._clients.tx.begin()
            too_large, rows = self._clients.emitter.emit_scored(part, scored, msgs, self.models.shadow_emit)
            self.metrics.scores_sent(rows.times, rows.timestamps)
        rejects = [*scored.rejects, *too_large]
        if rejects:
            self._clients.tx.begin()
            self._clients.dead_letters.write(rejects)
        part.unwritable(len(too_large))
        m.count("scored", n_emit - len(too_large))
        m.count("dead_lettered", len(rejects))
        m.count("evicted", scored.expired)
        self._in_flight += n_emit + len(scored.rejects)
        problem = part.check_counts()
        if problem:
            log.error("%s: %s", self.name, problem)
            self.health.note(problem)

    # ----------------------------------------------------------------------------------- commit and lag

    def _commit(self, wait: bool = True) -> None:
        """Commit the scores and dead letters sent and the consumed offsets, atomically (or, without
        transactions, the offsets after every send succeeded). With transactions and ``wait`` False the
        commit runs in the background (:class:`CommitInFlight`) while the loop reads and scores the next
        batch; a commit already in flight is collected first."""
        if self._committing.pending:
            self._settle_commit()
        offsets = self.parts.uncommitted_offsets()
        if not self._clients.tx.open and not offsets:
            return
        clients = self._clients
        cfg = self.config  # without transactions the consumer commits: on the loop only
        background = not wait and cfg.transactions and cfg.overlap_commits
        self._committing.start(lambda: clients.commit(offsets), offsets, background=background)
        self._in_flight = 0
        if not background:
            self._settle_commit()

    def _settle_commit(self) -> None:
        """Wait for the commit in flight (raising what it raised) and record it as committed."""
        done = self._committing.wait()
        self.parts.mark_committed(done.offsets)
        self.metrics.scores_committed(since=done.started, ended=done.ended, waited_s=done.waited_s)

    def _pause(self) -> None:
        if not self.paused and self.parts:
            self._clients.pause(self.parts)
            self.paused = True
            self.metrics.count("pauses")
            self.metrics.set_gauge("paused", 1)

    def _resume(self) -> None:
        if self.paused:
            self._clients.resume(self.parts)
            self.paused = False
            self.metrics.set_gauge("paused", 0)

    # ----------------------------------------------------------------------------------------- recovery

    def _recover_from_error(self, exc: Exception) -> None:
        """Abort, drop the clients, and reconnect with a bounded exponential backoff; then every partition
        starts again from its checkpoint (replaying what was not committed)."""
        self._committing.abandon()  # its outcome is read back from the broker by the reset below
        self.health.failed(exc)
        self.metrics.count("kafka_errors")
        log.warning("%s: %s; resetting to checkpoints", self.name, self.health.last_error)
        if self._clients is not None:
            with contextlib.suppress(Exception):
                self._clients.tx.abort()
        self.metrics.scores_aborted()
        self._close_clients()
        self.paused = False
        for delay in backoff_delays(self.config.error_backoff_s):
            if self._stop.wait(delay):
                return
            self.report.beat()
            self._calls.refuse(
                f"{self.name} cannot reach Kafka: {self.health.last_error}", self._stop_loop, self._stop_now
            )
            try:
                self._connect()
                self._clients.tx.abort_dangling(
                    sorted(self.parts), [self.config.scores_topic, self.config.shadow_topic]
                )
                self.models.challenger_events = 0
                self.parts.reopen_all(self.models.champion, self.models.challenger, self._clients)
                self.report.publish(self.parts)
                self.health.resets += 1
                self.metrics.count("resets")
                return
            except ProducerFenced as again:
                self._fenced(again)
                self._stop.set()
                return
            except Exception as again:
                self.health.failed(again)
                self.metrics.count("kafka_errors")
                self._close_clients()
