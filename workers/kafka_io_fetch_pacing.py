"""A consumer's empty fetches paced to its ``fetch_max_wait_ms``, as a broker's long poll would pace them.

A Kafka broker holds a fetch that finds no new records for up to the request's ``max_wait_ms`` (or until
data arrives), so an idle kafka-python consumer sends a few fetches a second. A broker that answers an empty
fetch at once (the embedded broker does, whatever ``max_wait_ms`` says) makes kafka-python fetch again at
once: an idle scoring worker's consumer (its own clients, polled as its loop polls, ``fetch_max_wait_ms`` 5)
sent ~1,300 fetches a second and spent ~960 CPU-ms a second on them, a whole core of this 2-core machine,
between every burst of events; paced, ~170 fetches and ~130 CPU-ms a second.

:func:`install_fetch_pacing` gives one consumer's fetcher a view of its connection manager whose ``send`` of a
FetchRequest returns a future that, when the answer holds no records and no error and came back sooner than
``fetch_max_wait_ms`` after the request, completes only at that moment (on kafka-python's own I/O loop, with
the same response). Until then the node counts as having a fetch in flight, as it would while a broker holds
the request, so nothing is fetched twice and the consumer's poll waits instead of spinning. Against a broker
that honours ``max_wait_ms`` an empty answer comes back no sooner, so nothing changes there. Records,
errors and failed requests are passed on at once. The cost: an event that arrives just after an empty answer
is seen up to ``fetch_max_wait_ms`` later (a real broker would answer as it arrives).
"""

from __future__ import annotations

import logging
import time
from typing import Any

log = logging.getLogger(__name__)


def install_fetch_pacing(consumer: Any) -> bool:
    """Pace this kafka-python consumer's empty fetches (see the module); False, and nothing changed, where
    its fetcher is not the one this module knows."""
    fetcher = getattr(consumer, "_fetcher", None)
    manager = getattr(fetcher, "_manager", None)
    net = getattr(manager, "_net", None)
    if manager is None or not callable(getattr(manager, "send", None)) or not hasattr(net, "call_at"):
        return False
    if isinstance(manager, _PacedFetchManager):
        return True
    try:
        from kafka.future import Future  # noqa: F401
        from kafka.protocol.consumer import FetchRequest
    except Exception:
        return False
    max_wait_s = float(fetcher.config.get("fetch_max_wait_ms", 0)) / 1000
    if max_wait_s <= 0:
        return False
    fetcher._manager = _PacedFetchManager(manager, net, FetchRequest, max_wait_s)
    return True


def fetch_is_empty(response: Any) -> bool:
    """True when a FetchResponse holds no records and no error in any partition (an unknown shape: False)."""
    try:
        if getattr(response, "error_code", 0):
            return False
        for topic in response.responses:
            for part in topic.partitions:
                if part.error_code or part.records:
                    return False
        return True
    except AttributeError:
        return False


class _PacedFetchManager:
    """The fetcher's connection manager, whose FetchRequest futures complete no sooner than ``max_wait_s``
    after the request when the answer is empty; everything else is the manager's own."""

    def __init__(self, manager: Any, net: Any, fetch_request: type, max_wait_s: float) -> None:
        self._paced_manager = manager
        self._paced_net = net
        self._fetch_request = fetch_request
        self._max_wait_s = max_wait_s

    def __getattr__(self, name: str) -> Any:
        return getattr(self._paced_manager, name)

    def send(self, request: Any, *args: Any, **kwargs: Any) -> Any:
        inner = self._paced_manager.send(request, *args, **kwargs)
        if not isinstance(request, self._fetch_request):
            return inner
        from kafka.future import Future

        due = time.monotonic() + self._max_wait_s
        outer = Future()

        def answered(response: Any) -> None:  # on kafka-python's I/O thread
            if time.monotonic() < due and fetch_is_empty(response):
                try:
                    self._paced_net.call_at(due, lambda: outer.success(response))
                    return
                except RuntimeError:  # the I/O loop is closing: hand it on now
                    log.debug("fetch pacing: I/O loop closed, empty fetch passed on at once")
            outer.success(response)

        inner.add_callback(answered)
        inner.add_errback(outer.failure)
        return outer
