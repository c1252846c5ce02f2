"""PartitionOffsets: where one owned partition stands, and the rules that keep its scores exactly once.

Four positions, always ``checkpoint_offset <= committed`` once a checkpoint is written and
``emit_from <= committed`` (offsets are "the next offset to process", Kafka's convention):

- ``next_offset``: every event below it is applied to the partition's states;
- ``emit_from``: events below it were scored and committed by an earlier incarnation, so replaying them
  updates the states and emits nothing (no score twice);
- ``committed``: events below it have their scores (and the consumed offset) committed;
- ``checkpoint_offset``: the newest checkpoint holds the states after every event below it.

A checkpoint may only be written at a committed position (states never ahead of what the broker has).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any


@dataclass
class PartitionOffsets:
    """Positions of one partition (see the module doc) and the checkpoint schedule."""

    partition: int
    next_offset: int
    emit_from: int
    committed: int
    checkpoint_offset: int
    events_since_checkpoint: int = 0
    last_checkpoint_time: float = field(default_factory=time.monotonic)

    @classmethod
    def restored(cls, partition: int, start: int, group_committed: int | None) -> PartitionOffsets:
        """Positions after restoring a checkpoint at ``start`` (or the log start) with the group's
        committed offset as the broker has it."""
        committed = start if group_committed is None else max(int(group_committed), start)
        return cls(
            partition, next_offset=start, emit_from=committed, committed=committed, checkpoint_offset=start
        )

    def unseen(self, messages: list[Any]) -> list[Any]:
        """The messages not applied yet (a re-delivery after a seek repeats some)."""
        if not messages or messages[-1].offset < self.next_offset:
            return []
        if messages[0].offset < self.next_offset:
            return [m for m in messages if m.offset >= self.next_offset]
        return messages

    def applied(self, last_offset: int, events: int) -> None:
        """Record that every event up to ``last_offset`` is in the states."""
        self.next_offset = last_offset + 1
        self.events_since_checkpoint += int(events)

    @property
    def uncommitted(self) -> bool:
        return self.next_offset > self.committed

    def mark_committed(self, offset: int | None = None) -> None:
        """Committed up to ``offset`` (a commit started earlier), or up to everything applied."""
        self.committed = max(self.committed, self.next_offset if offset is None else int(offset))

    def checkpoint_due(self, every_events: int, every_seconds: float, now: float | None = None) -> bool:
        """True when a checkpoint is allowed (nothing uncommitted) and one is due."""
        return not self.uncommitted and self.interval_due(every_events, every_seconds, now)

    def interval_due(self, every_events: int, every_seconds: float, now: float | None = None) -> bool:
        """Something new since the last checkpoint and its interval (events or seconds) is up."""
        if self.next_offset <= self.checkpoint_offset:
            return False
        now = time.monotonic() if now is None else now
        return (
            self.events_since_checkpoint >= every_events or now - self.last_checkpoint_time >= every_seconds
        )

    def checkpointed(self) -> None:
        """Record a checkpoint written at ``next_offset``."""
        if self.uncommitted:
            raise RuntimeError("a checkpoint may never be ahead of the committed offset")
        self.checkpoint_offset = self.next_offset
        self.copied()

    def copied(self) -> None:
        """A checkpoint's copy was taken: due again only after another interval (its write may still run;
        ``checkpoint_offset`` moves once it is written)."""
        self.events_since_checkpoint = 0
        self.last_checkpoint_time = time.monotonic()
