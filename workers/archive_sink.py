"""Archive sink: a pipeline's events topic -> a Parquet dataset partitioned by pipeline and date.

This dataset is what training reads. The sink keeps its own progress (not a consumer group) so that across
restarts and kill -9 it neither drops nor duplicates an event:

- Layout (hive style, any ``pyarrow.fs`` filesystem)::

      <root>/pipeline=<p>/date=<YYYY-MM-DD>/p<partition>-o<first offset>-<last offset>.parquet
      <root>/_progress/<p>/p<partition>.json          {"next_offset": N}

  A file holds the valid events of the messages ``first..last`` of one partition that fall on that date
  (event time, UTC), plus the columns ``kafka_partition``, ``kafka_offset``, ``kafka_event_index``.
- A flush writes each file to a hidden temp name and renames it, *then* writes the progress file (temp +
  rename). A crash between the two leaves files whose first offset is >= the recorded next offset: on start
  the sink deletes exactly those (and any temp files) and consumes again from the recorded offset.
- Rejected events are counted and skipped (the scoring workers dead-letter them).
"""

from __future__ import annotations

import json
import os
import posixpath
import re
import signal
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from rnnstream.rnn_core.event_schema import TIME_COLUMN, EventSchema
from rnnstream.rnn_core.storage import is_temporary, resolve_filesystem, write_atomic, write_bytes_atomic
from rnnstream.workers.event_codec import EventDecoder
from rnnstream.workers.kafka_io import PartitionConsumer, topic_names
from rnnstream.workers.kafka_settings import KafkaSettings

PROVENANCE_COLUMNS = ("kafka_partition", "kafka_offset", "kafka_event_index")
_FILE_RE = re.compile(r"^p(\d+)-o(\d+)-(\d+)\.parquet$")
PARTITIONING = ds.partitioning(pa.schema([("pipeline", pa.string()), ("date", pa.string())]), flavor="hive")


@dataclass
class ArchiveStats:
    """What a run did."""

    events_written: int = 0
    rejected: int = 0
    messages: int = 0
    files_written: int = 0
    orphans_removed: int = 0
    next_offsets: dict[int, int] = field(default_factory=dict)


@dataclass
class _Buffer:
    batches: list[pa.RecordBatch] = field(default_factory=list)
    offsets: list[np.ndarray] = field(default_factory=list)
    indices: list[np.ndarray] = field(default_factory=list)
    first: int | None = None
    last: int | None = None
    events: int = 0


class ArchiveSink:
    """Consumes ``<pipeline>.events`` (all or given partitions) into the Parquet archive under ``root``."""

    def __init__(
        self,
        settings: KafkaSettings,
        schema: EventSchema,
        root: str,
        *,
        filesystem: pafs.FileSystem | None = None,
        partitions: Sequence[int] | None = None,
        flush_events: int = 20_000,
        flush_interval_s: float = 5.0,
        poll_records: int = 2000,
        crash_after_flushes: int | None = None,
    ) -> None:
        self.settings = settings
        self.schema = schema
        self.fs, self.root = resolve_filesystem(root, filesystem)
        self.topic = topic_names(schema.pipeline).events
        self.flush_events = flush_events
        self.flush_interval_s = flush_interval_s
        self.poll_records = poll_records
        self._crash_after = crash_after_flushes  # fault injection for tests: SIGKILL before a progress write
        self._flushes = 0
        self._decoder = EventDecoder(schema)
        self._consumer = PartitionConsumer(settings, self.topic)
        self.partitions = (
            sorted(partitions) if partitions is not None else self._consumer.partitions_for_topic()
        )
        if not self.partitions:
            raise RuntimeError(f"topic {self.topic} has no partitions (create it first)")
        self.stats = ArchiveStats()
        self._buffers = {p: _Buffer() for p in self.partitions}
        self._next: dict[int, int | None] = {}
        self._last_flush = time.monotonic()
        self._reconcile()

    # -- paths

    @property
    def pipeline_dir(self) -> str:
        return f"{self.root}/pipeline={self.schema.pipeline}"

    def _progress_path(self, partition: int) -> str:
        return f"{self.root}/_progress/{self.schema.pipeline}/p{partition:04d}.json"

    # -- start: read progress, delete files of unfinished flushes, seek

    def _reconcile(self) -> None:
        infos = self.fs.get_file_info(
            pafs.FileSelector(self.pipeline_dir, recursive=True, allow_not_found=True)
        )
        for p in self.partitions:
            self._next[p] = self._read_progress(p)
        for info in infos:
            if info.type != pafs.FileType.File:
                continue
            name = info.base_name
            if is_temporary(name):
                self.fs.delete_file(info.path)
                continue
            m = _FILE_RE.match(name)
            if not m:
                continue
            part, first = int(m.group(1)), int(m.group(2))
            if part not in self._next:
                continue
            nxt = self._next[part]
            if nxt is None or first >= nxt:
                self.fs.delete_file(info.path)  # written by a flush whose progress never got recorded
                self.stats.orphans_removed += 1
        self._consumer.assign(self.partitions)
        for p in self.partitions:
            nxt = self._next[p]
            if nxt is None:
                self._consumer.seek_to_beginning([p])
            else:
                self._consumer.seek(p, nxt)

    def _read_progress(self, partition: int) -> int | None:
        try:
            with self.fs.open_input_stream(self._progress_path(partition)) as f:
                return int(json.loads(f.read())["next_offset"])
        except (FileNotFoundError, OSError, ValueError, KeyError):
            return None

    def _write_progress(self, partition: int, next_offset: int) -> None:
        path = self._progress_path(partition)
        self.fs.create_dir(posixpath.dirname(path), recursive=True)
        write_bytes_atomic(
            self.fs, path, json.dumps({"next_offset": int(next_offset), "topic": self.topic}).encode()
        )
        self._next[partition] = next_offset

    def progress(self) -> dict[int, int | None]:
        """Next offset to archive per partition (None: nothing archived yet)."""
        return dict(self._next)

    # -- consume

    def step(self, timeout_ms: int = 200) -> int:
        """Poll once, decode, buffer; flush what is due. Returns messages consumed."""
        msgs = self._consumer.poll(max_records=self.poll_records, timeout_ms=timeout_ms)
        if msgs:
            decoded = self._decoder.decode(msgs)
            self.stats.messages += len(msgs)
            self.stats.rejected += len(decoded.rejects)
            parts = np.fromiter((m.partition for m in msgs), dtype=np.int64, count=len(msgs))
            offs = np.fromiter((m.offset for m in msgs), dtype=np.int64, count=len(msgs))
            for p in np.unique(parts):
                buf = self._buffers[int(p)]
                mine = offs[parts == p]
                buf.first = int(mine.min()) if buf.first is None else buf.first
                buf.last = int(mine.max())
                rows = np.flatnonzero(decoded.partition == p)
                if len(rows):
                    take = pa.array(rows)
                    buf.batches.append(decoded.batch.take(take))
                    buf.offsets.append(decoded.offset[rows])
                    buf.indices.append(decoded.event_index[rows])
                    buf.events += len(rows)
        due = time.monotonic() - self._last_flush >= self.flush_interval_s
        for p, buf in self._buffers.items():
            if buf.last is not None and (buf.events >= self.flush_events or due):
                self.flush(p)
        if due:
            self._last_flush = time.monotonic()
        return len(msgs)

    def flush(self, partition: int | None = None) -> int:
        """Write buffered events (of one or all partitions) as files, then record progress. Returns files."""
        written = 0
        for p in [partition] if partition is not None else list(self._buffers):
            buf = self._buffers[p]
            if buf.last is None:
                continue
            assert buf.first is not None
            if buf.events:
                table = pa.Table.from_batches(buf.batches, schema=self.schema.arrow_schema())
                table = table.append_column(PROVENANCE_COLUMNS[0], pa.array(np.full(buf.events, p, np.int32)))
                table = table.append_column(PROVENANCE_COLUMNS[1], pa.array(np.concatenate(buf.offsets)))
                table = table.append_column(PROVENANCE_COLUMNS[2], pa.array(np.concatenate(buf.indices)))
                written += self._write_files(p, buf.first, buf.last, table)
            self._flushes += 1
            if self._crash_after is not None and self._flushes >= self._crash_after:
                os.kill(os.getpid(), signal.SIGKILL)  # test hook: die between file write and progress write
            self._write_progress(p, buf.last + 1)
            self.stats.events_written += buf.events
            self._buffers[p] = _Buffer()
        self.stats.files_written += written
        self.stats.next_offsets = {p: n for p, n in self._next.items() if n is not None}
        return written

    def _write_files(self, partition: int, first: int, last: int, table: pa.Table) -> int:
        dates = pc.strftime(table.column(TIME_COLUMN), format="%Y-%m-%d")
        uniq = pc.unique(dates).to_pylist()
        name = f"p{partition:04d}-o{first:012d}-{last:012d}.parquet"
        for day in sorted(uniq):
            part = table if len(uniq) == 1 else table.filter(pc.equal(dates, day))
            directory = f"{self.pipeline_dir}/date={day}"
            write_atomic(self.fs, f"{directory}/{name}", lambda out, part=part: pq.write_table(part, out))
        return len(uniq)

    def caught_up(self, ends: dict[int, int]) -> bool:
        return all(self._consumer.position(p) >= end for p, end in ends.items())

    def run(self, until_caught_up: bool = False, max_seconds: float | None = None) -> ArchiveStats:
        """Consume and archive; ``until_caught_up``: stop once the end offsets seen at start are archived."""
        ends = self._consumer.end_offsets(self.partitions) if until_caught_up else None
        started = time.monotonic()
        try:
            while True:
                self.step()
                if ends is not None and self.caught_up(ends):
                    break
                if max_seconds is not None and time.monotonic() - started > max_seconds:
                    break
        finally:
            self.flush()
        return self.stats

    def close(self) -> None:
        self._consumer.close()

    def __enter__(self) -> ArchiveSink:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def archive_dataset(root: str, filesystem: pafs.FileSystem | None = None) -> ds.Dataset:
    """The archive as a pyarrow dataset with ``pipeline`` and ``date`` partition columns (strings)."""
    fs, path = resolve_filesystem(root, filesystem)
    return ds.dataset(path, filesystem=fs, format="parquet", partitioning=PARTITIONING)


def read_archive(
    root: str,
    pipeline: str,
    filesystem: pafs.FileSystem | None = None,
    columns: Sequence[str] | None = None,
) -> pa.Table:
    """One pipeline's archived events, ordered by (kafka_partition, kafka_offset, kafka_event_index)."""
    fs, path = resolve_filesystem(root, filesystem)
    pdir = f"{path}/pipeline={pipeline}"
    if fs.get_file_info(pdir).type == pafs.FileType.NotFound:
        raise FileNotFoundError(f"no archive for pipeline {pipeline!r} under {root}")
    dataset = ds.dataset(pdir, filesystem=fs, format="parquet", partitioning=ds.partitioning(
        pa.schema([("date", pa.string())]), flavor="hive"))  # fmt: skip
    table = dataset.to_table()
    order = pc.sort_indices(table, [(c, "ascending") for c in PROVENANCE_COLUMNS])
    table = table.take(order)
    return table.select(list(columns)) if columns is not None else table
