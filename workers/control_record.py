"""What a pipeline's coordinator cannot lose, kept where it outlives pods: :class:`ControlRecord` in one JSON
file beside the partition checkpoints (``<checkpoint root>/<deployment>/<pipeline>/control.json``, on any
filesystem pyarrow reaches: local, ``s3://``, ``gs://``), written atomically on every change.

A coordinator restarted by Ray (after kill -9 of its process) reads it back and resumes: the workers it
names (they are named, detached actors and kept scoring meanwhile), how many it should run, the serving
version, a challenger or swap in progress, and the generation counter. Each partition's owner is not in
the record: the workers' own reports say that, and they are the truth.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass, field
from typing import Any

import pyarrow.fs as pafs

from rnnstream.rnn_core.storage import resolve_filesystem, write_bytes_atomic
from rnnstream.workers.worker_config import ModelHandle, WorkerConfig

RECORD_FILE = "control.json"
RECORD_FORMAT = 1
KEEP_SWAPS = 20  # the swap history a record (and the coordinator's status) keeps, newest last
# the coordinator's attributes a record holds (ControlRecord.of_coordinator)
RECORDED_ATTRIBUTES = ("_target", "model", "generation", "shadow_handle", "swap", "swaps", "resumes")


@dataclass(frozen=True)
class SwapInProgress:
    """A hot swap under way: ``phase`` is ``warming`` (challengers shadow-score) or ``switching``."""

    to: ModelHandle
    phase: str
    warmup_events: int
    shadow: bool
    started_s: float


@dataclass(frozen=True)
class ControlRecord:
    """The coordinator's durable state (see the module docstring)."""

    pipeline: str
    num_workers: int
    serving: ModelHandle
    generation: int = 0
    shadow: ModelHandle | None = None
    swap: SwapInProgress | None = None
    swaps: tuple[dict[str, Any], ...] = ()
    stopped: bool = False
    resumes: int = 0  # how often a restarted coordinator resumed from this record
    updated_s: float = field(default_factory=time.time)

    @classmethod
    def of_coordinator(cls, pipeline: str, state: dict[str, Any], stopped: bool) -> ControlRecord:
        """The record of a coordinator's ``state`` (its :data:`RECORDED_ATTRIBUTES` by name)."""
        return cls(
            pipeline=pipeline,
            num_workers=state["_target"],
            serving=state["model"],
            generation=state["generation"],
            shadow=state["shadow_handle"],
            swap=state["swap"],
            swaps=tuple(state["swaps"]),
            stopped=stopped,
            resumes=state["resumes"],
        )

    def to_json(self) -> bytes:
        doc = {"format": RECORD_FORMAT, **dataclasses.asdict(self)}
        return json.dumps(doc, sort_keys=True, default=str).encode()

    @classmethod
    def from_json(cls, data: bytes) -> ControlRecord:
        doc = json.loads(data)
        if doc.pop("format", None) != RECORD_FORMAT:
            raise ValueError(f"control record of an unknown format (this code reads format {RECORD_FORMAT})")
        swap = doc.pop("swap")
        shadow = doc.pop("shadow")
        return cls(
            serving=ModelHandle(**doc.pop("serving")),
            shadow=ModelHandle(**shadow) if shadow else None,
            swap=SwapInProgress(**{**swap, "to": ModelHandle(**swap["to"])}) if swap else None,
            swaps=tuple(doc.pop("swaps")),
            **doc,
        )


class ControlRecordFile:
    """Reads and writes one pipeline's :class:`ControlRecord` (one small JSON file, atomic replace)."""

    def __init__(self, config: WorkerConfig) -> None:
        self.filesystem, root = resolve_filesystem(config.checkpoint_uri)
        self.path = f"{root.rstrip('/')}/{config.deployment}/{config.pipeline}/{RECORD_FILE}"

    def read(self) -> ControlRecord | None:
        """The record, or None when there is none yet."""
        if self.filesystem.get_file_info(self.path).type != pafs.FileType.File:
            return None
        with self.filesystem.open_input_stream(self.path) as f:
            return ControlRecord.from_json(f.read())

    def write(self, record: ControlRecord) -> None:
        write_bytes_atomic(self.filesystem, self.path, record.to_json())
