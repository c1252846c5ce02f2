"""Partition checkpoints: the states of one partition's keys, the next offset to read, and the model version.

A checkpoint is what makes a partition movable and a worker restartable: whoever owns partition ``p`` next
loads the newest checkpoint of ``p`` *for the model version it serves*, seeks to its ``next_offset`` and
replays. The file itself is a :meth:`KeyedStateStore.snapshot` (Arrow IPC, written to a temp name and renamed,
so a reader sees a whole checkpoint or none), on any ``pyarrow.fs`` filesystem.

Layout under the checkpoint root::

    <root>/<deployment>/<pipeline>/partition=<p>/ckpt-<next_offset:020d>-v<quoted model version>.arrow

The deployment (release) name is in the path for the reason it is in the consumer group and transactional
ids: two releases given the same checkpoint root never read or prune each other's states.

The offset and version are in the file name so that finding the newest checkpoint is a directory listing,
not a read of every file. The older ones are pruned (``keep`` per version), never the newest.
"""

from __future__ import annotations

import contextlib
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, unquote

import pyarrow.fs as pafs

from rnnstream.rnn_core.state_snapshot import write_snapshot
from rnnstream.rnn_core.storage import resolve_filesystem
from rnnstream.workers.worker_config import DEFAULT_DEPLOYMENT

CHECKPOINT_PATTERN = re.compile(r"^ckpt-(\d{20})-v(.*)\.arrow$")
META_NEXT_OFFSET = "rnnstream.next_offset"
META_MODEL_VERSION = "rnnstream.model_version"
META_PARTITION = "rnnstream.partition"
META_PIPELINE = "rnnstream.pipeline"
META_WRITTEN_AT = "rnnstream.written_at_ms"


@dataclass(frozen=True)
class CheckpointInfo:
    """One checkpoint file: its partition, the next offset to read after its states, the model version."""

    partition: int
    next_offset: int
    model_version: str
    path: str


@dataclass(frozen=True)
class PreparedCheckpoint:
    """A checkpoint taken but not written yet: where it goes and the copy of the states (Arrow table)."""

    info: CheckpointInfo
    table: Any


class CheckpointsUnreadable(RuntimeError):
    """A partition has checkpoints, none readable, and the log no longer holds every event to rebuild from."""


@dataclass(frozen=True)
class RestoredCheckpoint:
    """What :meth:`PartitionCheckpoints.restore_newest` did: the store it filled, the checkpoint it came from
    (None: none was readable or there was none), and each newer checkpoint skipped with the reason."""

    store: Any
    info: CheckpointInfo | None
    skipped: tuple[tuple[CheckpointInfo, str], ...] = ()


class PartitionCheckpoints:
    """The checkpoints of one pipeline's partitions under one location (a local folder by default)."""

    def __init__(self, uri: str, pipeline: str, keep: int = 2, deployment: str = DEFAULT_DEPLOYMENT) -> None:
        self.uri = uri
        self.pipeline = pipeline
        self.keep = max(1, int(keep))
        self.filesystem, root = resolve_filesystem(uri)
        self.root = f"{root.rstrip('/')}/{deployment}/{pipeline}"

    def partition_dir(self, partition: int) -> str:
        return f"{self.root}/partition={int(partition)}"

    def list(self, partition: int) -> list[CheckpointInfo]:
        """Every checkpoint of ``partition``, oldest first (by next offset)."""
        selector = pafs.FileSelector(self.partition_dir(partition), allow_not_found=True)
        found = []
        for info in self.filesystem.get_file_info(selector):
            m = CHECKPOINT_PATTERN.match(info.base_name)
            if m and info.type == pafs.FileType.File:
                found.append(CheckpointInfo(int(partition), int(m.group(1)), unquote(m.group(2)), info.path))
        found.sort(key=lambda c: c.next_offset)
        return found

    def latest(self, partition: int, model_version: str | None = None) -> CheckpointInfo | None:
        """The newest checkpoint of ``partition`` (for ``model_version`` when given), or None."""
        cands = [c for c in self.list(partition) if model_version is None or c.model_version == model_version]
        return cands[-1] if cands else None

    def write(
        self,
        partition: int,
        store,
        next_offset: int,
        model_version: str,
        extra: dict[str, str] | None = None,
    ) -> CheckpointInfo:
        """Snapshot every key of ``store`` (one partition's) with ``next_offset`` and the model version."""
        return self.write_prepared(self.prepare(partition, store, next_offset, model_version, extra))

    def prepare(
        self,
        partition: int,
        store,
        next_offset: int,
        model_version: str,
        extra: dict[str, str] | None = None,
    ) -> PreparedCheckpoint:
        """The snapshot of ``store`` now, as an in-memory copy (the store may change right after), to be
        written by :meth:`write_prepared` (on another thread if need be)."""
        name = f"ckpt-{int(next_offset):020d}-v{quote(str(model_version), safe='')}.arrow"
        metadata = {
            META_NEXT_OFFSET: str(int(next_offset)),
            META_MODEL_VERSION: str(model_version),
            META_PARTITION: str(int(partition)),
            META_PIPELINE: self.pipeline,
            META_WRITTEN_AT: str(int(time.time() * 1000)),
            **(extra or {}),
        }
        path = f"{self.partition_dir(partition)}/{name}"
        info = CheckpointInfo(int(partition), int(next_offset), str(model_version), path)
        return PreparedCheckpoint(info, store.snapshot_table(None, metadata))

    def write_prepared(self, prepared: PreparedCheckpoint) -> CheckpointInfo:
        """Write a prepared snapshot (visible only once whole: temp name + rename, or one upload), then
        prune the older ones."""
        info = prepared.info
        self.filesystem.create_dir(self.partition_dir(info.partition), recursive=True)
        write_snapshot(prepared.table, info.path, self.filesystem)
        self.prune(info.partition, info.model_version)
        return info

    def restore(self, info: CheckpointInfo, store) -> dict[str, str]:
        """Load a checkpoint's states into ``store``; returns its metadata (checked against the file name)."""
        meta = store.restore(info.path, filesystem=self.filesystem)
        if meta.get(META_MODEL_VERSION, info.model_version) != info.model_version:
            raise ValueError(f"checkpoint {info.path} holds states of model {meta.get(META_MODEL_VERSION)}")
        return meta

    def restore_newest(
        self, partition: int, model_version: str, new_store: Callable[[], Any]
    ) -> RestoredCheckpoint:
        """The newest *readable* checkpoint of ``partition`` for ``model_version``, restored into a fresh
        ``new_store()``; an unreadable one (truncated upload, another schema, a foreign file) is skipped for
        the one before it (``keep`` >= 2 keeps one), and reported, never silently."""
        cands = [c for c in self.list(partition) if c.model_version == model_version]
        skipped: list[tuple[CheckpointInfo, str]] = []
        for info in reversed(cands):
            store = new_store()
            try:
                self.restore(info, store)
            except (OSError, ValueError, KeyError, TypeError) as exc:  # Arrow errors are OSError/ValueError
                skipped.append(
                    (info, f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
                )
                continue
            return RestoredCheckpoint(store, info, tuple(skipped))
        return RestoredCheckpoint(new_store(), None, tuple(skipped))

    def prune(self, partition: int, model_version: str) -> int:
        """Delete all but the newest ``keep`` checkpoints of this partition and version; returns how many."""
        same = [c for c in self.list(partition) if c.model_version == model_version]
        old = same[: -self.keep]
        for c in old:
            with contextlib.suppress(FileNotFoundError, OSError):
                self.filesystem.delete_file(c.path)
        return len(old)

    def clear(self) -> None:
        """Delete every checkpoint of this pipeline (a fresh start)."""
        with contextlib.suppress(FileNotFoundError):
            self.filesystem.delete_dir_contents(self.root, missing_dir_ok=True)
