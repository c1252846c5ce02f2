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
