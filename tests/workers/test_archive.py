"""Archive sink: exact (no drops, no duplicates) after kill -9 mid-run and after a crash between a file
write and its progress write; dataset partitioned by pipeline and date."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pytest

from rnnstream.cli.main import main
from rnnstream.pipelines.sample_stream import sample_events, sample_schema
from rnnstream.workers.archive_sink import ArchiveSink, archive_dataset, read_archive
from rnnstream.workers.event_codec import message_headers
from rnnstream.workers.event_producer import EventProducer
from rnnstream.workers.kafka_io import TopicAdmin
from rnnstream.workers.kafka_settings import KafkaSettings

DAY_MS = 86_400_000
START_MS = 1_767_225_600_000 - DAY_MS // 2  # spans two dates


def _produce(settings: KafkaSettings, pipeline: str, n: int) -> pa.Table:
    schema = sample_schema(pipeline)
    with TopicAdmin(settings) as admin:
        admin.create_pipeline_topics(pipeline, 2)
    table = sample_events(schema, n, 30, seed=4, start_ms=START_MS)
    # one event every 30 s from noon: the events span two dates
    times = pa.array([START_MS + 30_000 * i for i in range(n)], pa.timestamp("ms"))
    table = table.set_column(1, "time", times)
    half = n // 2
    with EventProducer(settings, schema) as prod:
        prod.send_json(table.slice(0, half))
        prod.send_arrow(table.slice(half), events_per_message=50)
        prod.send_raw(b"not an event", b"k", message_headers(schema, "json"), partition=0)  # one reject
        prod.flush()
    return table


def _interleave_more(settings: KafkaSettings, pipeline: str, table: pa.Table, n: int) -> pa.Table:
    """Send ``n`` more events, 15 s after the first ``n`` of ``table`` (no two events share a time); returns
    every event sent, in time order."""
    schema = sample_schema(pipeline)
    more = sample_events(schema, n, 30, seed=5, start_ms=START_MS)
    more = more.set_column(
        1, "time", pa.array([START_MS + 15_000 + 30_000 * i for i in range(n)], pa.timestamp("ms"))
    )
    with EventProducer(settings, schema) as prod:
        prod.send_arrow(more, events_per_message=50)
        prod.flush()
    both = pa.concat_tables([table, more.cast(table.schema)])
    return both.take(pc.sort_indices(both, [("time", "ascending")]))


def _archive_cmd(settings: KafkaSettings, pipeline: str, root: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "rnnstream.cli.main", "archive", "--pipeline", pipeline,
            "--root", str(root), "--bootstrap-servers", settings.bootstrap_servers,
            "--flush-events", "150", "--poll-records", "100", "--flush-interval", "60", *extra]  # fmt: skip


def _files(root: Path) -> list[Path]:
    return sorted(root.rglob("*.parquet"))


def _assert_exact(root: Path, pipeline: str, table: pa.Table) -> None:
    got = read_archive(str(root), pipeline)
    ids = list(zip(*(got.column(c).to_pylist() for c in ("kafka_partition", "kafka_offset",
                                                        "kafka_event_index")), strict=True))  # fmt: skip
    assert len(ids) == len(set(ids)), "duplicates in the archive"
    assert got.num_rows == table.num_rows, "events dropped or duplicated"
    got = got.select(table.schema.names).cast(table.schema)
    got = got.take(pc.sort_indices(got, [("time", "ascending")]))
    assert got.equals(table)


def test_archive_exact_after_kill9_and_crash_before_progress(kafka_bootstrap: str, tmp_path: Path) -> None:
    settings = KafkaSettings(bootstrap_servers=kafka_bootstrap)
    pipeline = f"arch{uuid.uuid4().hex[:8]}"
    table = _produce(settings, pipeline, 4000)
    root = tmp_path / "archive"

    # 1) kill -9 mid-run (it never stops on its own without --until-caught-up)
    proc = subprocess.Popen(
        _archive_cmd(settings, pipeline, root), stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    deadline = time.monotonic() + 60
    while len(_files(root)) < 3:
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "archive wrote no files"
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()

    # 2) a run that dies (SIGKILL) right after writing a flush's files, before recording progress. It needs
    # two flushes of events the killed run did not archive (on a loaded machine that one may have archived
    # all before the kill, and this run would then wait forever): 400 more, between the first ones in time
    table = _interleave_more(settings, pipeline, table, 400)
    crash = subprocess.run(_archive_cmd(settings, pipeline, root, "--crash-after-flushes", "2"),
                           capture_output=True, text=True, timeout=300)  # fmt: skip
    assert crash.returncode == -signal.SIGKILL, crash.stderr

    # 3) restart until caught up: the orphan files are removed and re-read, nothing lost, nothing twice
    done = subprocess.run(_archive_cmd(settings, pipeline, root, "--until-caught-up"), capture_output=True,
                          text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "removed" in done.stdout  # the crashed flush's files were reconciled
    _assert_exact(root, pipeline, table)

    # 4) running again adds nothing
    assert main(["archive", "--pipeline", pipeline, "--root", str(root), "--until-caught-up",
                 "--bootstrap-servers", kafka_bootstrap]) == 0  # fmt: skip
    _assert_exact(root, pipeline, table)
    dataset = archive_dataset(str(root)).to_table(columns=["pipeline", "date"])
    assert set(dataset.column("pipeline").to_pylist()) == {pipeline}
    assert set(dataset.column("date").to_pylist()) == {"2025-12-31", "2026-01-01"}


def test_archive_in_process_counts_rejects(kafka_bootstrap: str, tmp_path: Path) -> None:
    settings = KafkaSettings(bootstrap_servers=kafka_bootstrap)
    pipeline = f"arci{uuid.uuid4().hex[:8]}"
    table = _produce(settings, pipeline, 600)
    with ArchiveSink(settings, sample_schema(pipeline), str(tmp_path), flush_events=100) as sink:
        stats = sink.run(until_caught_up=True)
    assert stats.events_written == 600 and stats.rejected == 1
    assert sum(stats.next_offsets.values()) == stats.messages
    _assert_exact(tmp_path, pipeline, table)
    with pytest.raises(FileNotFoundError):
        read_archive(str(tmp_path), "nope")
