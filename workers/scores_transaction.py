"""ScoresTransaction: the one place a scoring worker writes to Kafka (scores, dead letters, offsets).

With transactions (exactly once) a transaction holds every score and dead letter of the events since the
last commit together with the consumed offsets (``send_offsets_to_transaction``), and commits them in one
step. Without transactions (at least once) the same object sends, waits for every send, and only then
commits the offsets through the consumer, so an offset is never committed past a score that failed.

Every send's future is kept until the commit and checked after the flush: kafka-python's ``flush()`` returns
normally when a send failed, so without this check a failed score would be committed past silently.

Fencing: a producer whose transactional id was taken over by a newer incarnation is fenced by the broker; it
must stop, never call ``init_transactions`` again (that would fence the new owner back). kafka-python
reports it as ``ProducerFencedError`` at commit, but a send after it fails with a generic ``KafkaError``
whose cause is the transaction manager's fatal error. :meth:`ScoresTransaction.raise_if_fenced` looks at
that state and raises :class:`ProducerFenced`, which the worker treats as "stop", not as Kafka trouble.

A stale epoch is fencing too. When a zombie's produce request is refused with ``INVALID_PRODUCER_EPOCH`` (its
transactional id was initialised again by the handover's fence), kafka-python's default is to recover:
bump its epoch (KIP-360) and, when the broker refuses that, initialise a fresh producer id for the same
transactional id, which fences the legitimate holder back and lets the zombie commit again (seen in CI).
Our transactional ids are only ever initialised again to take them over, so :class:`ScoresTransaction`
makes that error fatal for its producer (:func:`_stale_epoch_is_fatal`).

kafka-python's private attributes are read here only (and nowhere else in the worker): the transaction
manager (fatal state; commit and abort with a deadline, since the public calls wait forever when the broker
never answers EndTxn) and the sender's broker connections (a transaction during which a connection dropped
is not committed, see :meth:`ScoresTransaction._check_connections_kept`).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from rnnstream.workers.kafka_io_bulk_send import bulk_supported, send_records

_FENCING_MARKS = ("Fenced", "InvalidProducerEpoch")  # in the error's type name or text


def _stale_epoch_is_fatal(producer: Any) -> None:
    """For this producer only: ``InvalidProducerEpochError`` fails the producer (fatal) instead of starting
    kafka-python's epoch bump / fresh-producer-id recovery, which would fence the partitions' new owner."""
    from kafka import errors

    tm = getattr(producer, "_transaction_manager", None)
    if tm is None or not hasattr(tm, "_NEEDS_EPOCH_BUMP_ERRORS") or not hasattr(tm, "_FATAL_ERRORS"):
        return
    stale = errors.InvalidProducerEpochError
    tm._NEEDS_EPOCH_BUMP_ERRORS = frozenset(tm._NEEDS_EPOCH_BUMP_ERRORS) - {stale}
    tm._FATAL_ERRORS = frozenset(tm._FATAL_ERRORS) | {stale}


class ProducerFenced(Exception):
    """A newer incarnation owns our transactional id: this process is a zombie and must stop writing."""


class SendFailed(Exception):
    """A send of the open transaction failed (its records were not written); nothing may be committed."""


class ScoresTransaction:
    """Begin, send, commit and abort the writes of one worker (transactional or at-least-once)."""

    def __init__(self, producer: Any, transactional: bool, commit_timeout_ms: int) -> None:
        self.producer = producer
        self.transactional = bool(transactional)
        self.commit_timeout_ms = int(commit_timeout_ms)
        self.open = False
        self.started = 0.0  # time.monotonic() of begin()
        self._futures: list[Any] = []
        self._connections: frozenset | None = None
        self._bulk: bool | None = None  # whether kafka-python takes whole batches (checked on first use)
        self._offered: tuple[dict, Any] | None = (
            None  # offsets attached ahead of the commit, and their result
        )
        if self.transactional:
            _stale_epoch_is_fatal(producer)

    @property
    def max_request_size(self) -> int:
        """The largest record the producer sends (bigger ones are refused before they reach the broker)."""
        return int(self.producer.config["max_request_size"])

    def begin(self) -> None:
        """Open a transaction (idempotent while one is open)."""
        if self.open:
            return
        if self.transactional:
            self._guard(self.producer.begin_transaction)
        self.open = True
        self.started = time.monotonic()
        self._futures.clear()
        self._connections = self._producer_connections()

    def send(self, topic: str, value: bytes, partition: int, key: bytes | None = None, headers=None) -> None:
        """Send one record in the open transaction (:meth:`begin` first)."""
        self._futures.append(
            self._guard(self.producer.send, topic, value=value, key=key, partition=partition, headers=headers)
        )

    def send_many(
        self, topic: str, partition: int, values: list[bytes], keys: list[bytes | None], headers=None
    ) -> None:
        """Send ``values[i]`` keyed ``keys[i]`` to one partition in the open transaction (one call for a
        batch: the cost per record is kafka-python's own ``send``)."""
        send = self.producer.send
        try:
            self._futures += [
                send(topic, value=v, key=k, partition=partition, headers=headers)
                for v, k in zip(values, keys, strict=True)
            ]
        except Exception as exc:
            self.raise_if_fenced(exc)
            raise

    def offer_offsets(self, offsets: Mapping[Any, Any], group_id: str) -> None:
        """Attach ``offsets`` to the transaction now (opening it) without waiting for the broker: the two
        round trips to the group coordinator (AddOffsetsToTxn, TxnOffsetCommit) then run on the producer's
        thread while the batch is scored, and :meth:`commit` with the same offsets only checks they went
        through. Nothing is visible before the commit; an abort drops them with the scores. Without
        transactions (offsets go through the consumer after the sends) or kafka-python's transaction
        manager at hand, this does nothing and :meth:`commit` sends them as before."""
        tm = getattr(self.producer, "_transaction_manager", None)
        if (
            not self.transactional
            or not offsets
            or tm is None
            or not hasattr(tm, "send_offsets_to_transaction")
        ):
            return
        self.begin()
        result = self._guard(tm.send_offsets_to_transaction, dict(offsets), group_id)
        self.producer._sender.wakeup()
        self._offered = (dict(offsets), result)

    def _send_offsets(self, offsets: Mapping[Any, Any], group_id: str) -> None:
        """Make ``offsets`` part of the open transaction: wait for the ones offered ahead when they are
        the same, else send them now (a later TxnOffsetCommit of the same partition wins)."""
        offered, self._offered = self._offered, None
        if offered is not None and offered[0] == dict(offsets):
            if not self._guard(offered[1].wait, timeout_ms=self.commit_timeout_ms):
                raise TimeoutError(f"TxnOffsetCommit not answered in {self.commit_timeout_ms} ms")
        elif offsets:
            self._guard(self.producer.send_offsets_to_transaction, dict(offsets), group_id)

    def send_records(self, topic: str, partition: int, keys: Any, values: Any) -> None:
        """Send ``(keys[i], values[i])`` (Arrow binary/string arrays) to one partition in the open transaction
        as whole record batches (:func:`rnnstream.workers.kafka_io_bulk_send.send_records`: no Python object
        a record; the same records ``send`` writes)."""
        if self._bulk is None:
            self._bulk = bulk_supported(self.producer)
        try:
            self._futures += send_records(self.producer, topic, partition, keys, values, check=self._bulk)
        except Exception as exc:
            self.raise_if_fenced(exc)
            raise

    def commit(self, offsets: Mapping[Any, Any], group_id: str, consumer: Any) -> None:
        """Make every send since :meth:`begin` and ``offsets`` (TopicPartition -> OffsetAndMetadata) durable.

        Raises :class:`SendFailed` when a send failed (then :meth:`abort` and reset), :class:`ProducerFenced`
        when fenced, or the Kafka error.
        """
        timeout_s = self.commit_timeout_ms / 1000
        if self.transactional:
            if not self.open and offsets:
                self.begin()
            if self.open:
                self._send_offsets(offsets, group_id)
                self._guard(self.producer.flush, timeout=timeout_s)
                self._check_sends()
                self._check_connections_kept()
                self._guard(self._finish, "begin_commit", self.producer.commit_transaction)
        else:
            self.producer.flush(timeout=timeout_s)
            self._check_sends()
            if offsets:
                consumer.commit(dict(offsets))
        self.open = False
        self._futures.clear()

    def abort(self) -> None:
        """Drop the open transaction's writes (read_committed readers never see them)."""
        self._offered = None
        if self.open and self.transactional:
            self._finish("begin_abort", self.producer.abort_transaction)
        self.open = False
        self._futures.clear()

    def abort_dangling(self, partitions: list[int], topics: list[str]) -> None:
        """After a broker restart: write abort markers on every output partition this worker writes to.

        A restarting broker may keep transactional records whose transaction it forgot (they then hold back
        ``read_committed`` readers forever); a transaction of ours that touches those partitions and aborts
        closes them. The probe records themselves are aborted, so no reader ever sees them.
        """
        if not self.transactional or not partitions:
            return
        self.begin()
        for p in partitions:
            for topic in topics:
                self.send(topic, b"", p, headers=[("rnnstream-abort-probe", b"1")])
        self.producer.flush(timeout=self.commit_timeout_ms / 1000)
        self.abort()

    def raise_if_fenced(self, exc: BaseException | None = None) -> None:
        """Raise :class:`ProducerFenced` when the producer is fenced (whatever error reported it)."""
        if not self.transactional:
            return
        tm = getattr(self.producer, "_transaction_manager", None)
        causes = [exc, getattr(tm, "last_error", None) if tm is not None and tm.has_fatal_error() else None]
        for cause in causes:
            if cause is not None and any(m in f"{type(cause).__name__} {cause}" for m in _FENCING_MARKS):
                raise ProducerFenced(str(cause)) from exc

    # ------------------------------------------------------------------------------------------ internals

    def _guard(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        """Call a producer method; a failure caused by fencing becomes :class:`ProducerFenced`."""
        try:
            return fn(*args, **kwargs)
        except Exception as exc:
            self.raise_if_fenced(exc)
            raise

    def _check_sends(self) -> None:
        for fut in self._futures:
            if fut.failed():
                self.raise_if_fenced(fut.exception)
                raise SendFailed(f"a send failed: {type(fut.exception).__name__}: {fut.exception}")

    def _finish(self, begin_name: str, fallback: Any) -> None:
        """Commit or abort with a deadline (kafka-python's public calls wait forever for EndTxn)."""
        tm = getattr(self.producer, "_transaction_manager", None)
        if tm is None or not hasattr(tm, begin_name):
            fallback()
            return
        result = getattr(tm, begin_name)()
        self.producer._sender.wakeup()
        if not result.wait(timeout_ms=self.commit_timeout_ms):
            raise TimeoutError(f"EndTxn not answered in {self.commit_timeout_ms} ms")

    def _producer_connections(self) -> frozenset | None:
        """Identity of the producer's live broker connections (None when kafka-python hides them)."""
        try:
            conns = self.producer._sender._client._manager._conns
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
        before = self._connections
        now = self._producer_connections()
        if before is None or now is None:
            return
        if not before or not before <= now:
            raise ConnectionError("a producer connection dropped during the transaction (broker restart?)")
