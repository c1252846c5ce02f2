"""kafka-python options that cut the CPU of a scoring worker's clients without changing what they send.

A worker at 10k events/s commits ~50 transactions a second, five broker requests each (AddPartitionsToTxn,
Produce, AddOffsetsToTxn, TxnOffsetCommit, EndTxn), and kafka-python's network thread spends more CPU on
them than the worker's own loop does (``benchmarks/txn_cost.py``). Two of its costs are pure overhead here:

- **metric sensors** (``metrics_enabled``): ~36 ``Sensor.record`` calls a transaction on the producer's
  network thread, plus the consumer's per-fetch sensors, for metrics nobody reads (the worker exports its
  own, :mod:`worker_metrics`);
- **a failed key lookup that formats a socket**: kafka-python's network selector asks the stdlib selector
  for a socket's key before each wait for a response (``register_event``); the socket is not registered
  then, and ``selectors.BaseSelector.get_key`` builds its ``KeyError`` message with ``repr(socket)``, which
  makes ``getsockname``/``getpeername`` system calls (each a GIL release) twice a request.
  :class:`QuietKeySelector` is the platform's default selector with a ``get_key`` that answers the same
  (the key, ``KeyError``, ``ValueError`` for a closed socket, ``RuntimeError`` once closed) without the
  message; kafka-python takes it through its own ``selector`` option.

:func:`lean_client_kwargs` gives both; settings the user passed (``KafkaSettings.extra``) win over them.

A third cost is per poll: kafka-python 3's ``KafkaConsumer.poll`` first asks its group coordinator to
``poll``, which for a consumer with manually assigned partitions and no auto commit only makes sure the group
coordinator is known, by running a coroutine on the client's I/O thread and waiting for it: a socket wake-up
and two thread switches a poll (``benchmarks/cycle_cost.py`` measures what that costs a cycle).
The worker never needs that there: its offset commits and ``committed()`` find the coordinator themselves
(``commit_offsets_sync`` / ``fetch_committed_offsets`` await it). :func:`skip_idle_coordinator_poll` makes
that poll answer at once while the partitions are manually assigned and auto commit is off (completed commit
callbacks still run); otherwise the stock poll runs.
"""

from __future__ import annotations

import selectors
from typing import Any


class QuietKeySelector(selectors.DefaultSelector):  # type: ignore[misc,valid-type]
    """The default selector, whose ``get_key`` of an unregistered file raises a bare ``KeyError``."""

    def get_key(self, fileobj: Any) -> selectors.SelectorKey:
        fd_to_key = getattr(self, "_fd_to_key", None)
        if fd_to_key is None or getattr(self, "_map", None) is None:
            return super().get_key(fileobj)  # closed, or a selector without the stdlib's table
        key = fd_to_key.get(self._fileobj_lookup(fileobj))  # ValueError for a closed socket, as before
        if key is None:
            raise KeyError("not registered")
        return key


def lean_client_kwargs() -> dict[str, Any]:
    """Options for a worker's KafkaConsumer / KafkaProducer (merge the user's settings over them)."""
    return {"metrics_enabled": False, "selector": QuietKeySelector}


def skip_idle_coordinator_poll(consumer: Any) -> bool:
    """Let ``consumer.poll`` skip its group coordinator's I/O-thread round trip while its partitions are
    manually assigned and auto commit is off (see the module doc). Returns whether it was installed (False
    for a kafka-python without these internals, or with auto commit on: the stock poll then runs)."""
    coordinator = getattr(consumer, "_coordinator", None)
    subscription = getattr(consumer, "_subscription", None)
    callbacks = getattr(coordinator, "_invoke_completed_offset_commit_callbacks", None)
    auto = getattr(subscription, "partitions_auto_assigned", None)
    if callbacks is None or auto is None or consumer.config.get("enable_auto_commit", True):
        return False
    stock = coordinator.poll

    def poll(timeout_ms: Any = None) -> bool:
        if auto():  # a subscription: joining the group and heart-beating are needed
            return stock(timeout_ms=timeout_ms)
        callbacks()
        return True

    coordinator.poll = poll
    return True
