"""``rnnstream backfill``: scores of an archived range equal :func:`replay` over the same events (the serving
path), ``--start``/``--end`` bound the range, and user mistakes end with one line (exit 2)."""

from __future__ import annotations

import uuid
from dataclasses import replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import torch

from rnnstream.cli.main import main
from rnnstream.jobs.backfill import MODEL_VERSION_COLUMN
from rnnstream.jobs.backfill_source import parse_time_ms
from rnnstream.jobs.score_writer import SUCCESS_FILE
from rnnstream.pipelines.spec import get_pipeline, model_config_replace
from rnnstream.rnn_core.evaluation import replay
from rnnstream.rnn_core.model import StreamingModel
from rnnstream.rnn_core.serialization import local_model_version, save_model

PIPELINE = "fraud"
PARTITIONS = 3
TOL = 1e-5


def write_archive(table: pa.Table, root: Path, pipeline: str, partitions: int = PARTITIONS) -> pa.Table:
    """Write ``table`` (event-time order) in the archive sink's layout; returns it with provenance columns.

    Each key goes to one partition (as the key-routing producer does), offsets count up per partition in
    event order, files are ``pipeline=<p>/date=<day>/p<part>-o<first>-<last>.parquet``, several a day.
    """
    keys = np.asarray(table.column("key").to_pylist())
    _, key_ids = np.unique(keys, return_inverse=True)
    part = (key_ids % partitions).astype(np.int32)
    offset = np.zeros(len(part), np.int64)
    for p in range(partitions):
        rows = np.flatnonzero(part == p)
        offset[rows] = np.arange(len(rows))
    table = table.append_column("kafka_partition", pa.array(part))
    table = table.append_column("kafka_offset", pa.array(offset))
    table = table.append_column("kafka_event_index", pa.array(np.zeros(len(part), np.int32)))
    days = pc.strftime(table.column("time"), format="%Y-%m-%d").to_numpy(zero_copy_only=False)
    for day in np.unique(days):
        for p in range(partitions):
            rows = np.flatnonzero((days == day) & (part == p))
            for chunk in np.array_split(rows, 2):  # two files per partition and day (as flushes make)
                if len(chunk) == 0:
                    continue
                first, last = offset[chunk[0]], offset[chunk[-1]]
                folder = root / f"pipeline={pipeline}" / f"date={day}"
                folder.mkdir(parents=True, exist_ok=True)
                pq.write_table(
                    table.take(pa.array(chunk)), folder / f"p{p:04d}-o{first:012d}-{last:012d}.parquet"
                )
    (root / "_progress" / pipeline).mkdir(parents=True, exist_ok=True)  # the sink's bookkeeping is skipped
    (root / "_progress" / pipeline / "p0000.json").write_text('{"next_offset": 1}')
    return table


@pytest.fixture(scope="module")
def events() -> pa.Table:
    """1500 fraud events of 30 cards; the generator's ~90 days squeezed into ~15 (fewer archive files)."""
    table = get_pipeline(PIPELINE).generate(1500, 30, seed=3).table
    times = table.column("time").cast(pa.int64()).to_numpy()
    squeezed = times[0] + (times - times[0]) // 6
    return table.set_column(1, "time", pa.array(squeezed).cast(pa.timestamp("ms")))


@pytest.fixture(scope="module")
def archive(events: pa.Table, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("archive")
    write_archive(events, root, PIPELINE)
    return root


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    config = model_config_replace(get_pipeline(PIPELINE).model_config, hidden_size=16)
    model = StreamingModel(config)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(3.0)  # livelier outputs than a fresh init, so equal scores mean something
    return save_model(model.eval(), tmp_path_factory.mktemp("model") / "fraud-model")


def run_backfill(archive: Path | str, model_dir: Path | str, output: Path, *extra: str) -> int:
    return main(["backfill", "--pipeline", PIPELINE, "--model", str(model_dir), "--data", str(archive),
                 "--output", str(output), "--no-progress", *extra])  # fmt: skip


def read_scores(output: Path) -> pa.Table:
    files = sorted(output.glob("part-*.parquet"))
    assert files, f"no score files under {output}"
    return pa.concat_tables(pq.read_table(f) for f in files)


def expected_scores(model_dir: Path, events: pa.Table) -> np.ndarray:
    from rnnstream.rnn_core.serialization import load_model

    return replay(load_model(model_dir), events, batch_size=257)


def assert_same_scores(got: pa.Table, events: pa.Table, expected: np.ndarray) -> None:
    """Row for row (matched on key and time, which identify an event here) the scores equal ``expected``."""
    assert got.num_rows == events.num_rows
    times = got.column("time").cast(pa.int64()).to_numpy()
    assert np.all(np.diff(times) >= 0), "scores are not in event-time order"
    event_ids = zip(
        events.column("key").to_pylist(), events.column("time").cast(pa.int64()).to_pylist(), strict=True
    )
    want = {event_id: row for row, event_id in enumerate(event_ids)}
    assert len(want) == events.num_rows, "test data needs unique (key, time) pairs"
    rows = np.array(
        [want[(k, t)] for k, t in zip(got.column("key").to_pylist(), times.tolist(), strict=True)]
    )
    np.testing.assert_allclose(got.column("score").to_numpy(), expected[rows, 0], rtol=0, atol=TOL)


def test_backfill_of_archive_equals_replay(
    archive: Path, model_dir: Path, events: pa.Table, tmp_path: Path
) -> None:
    out = tmp_path / "scores"
    assert run_backfill(archive, model_dir, out) == 0
    got = read_scores(out)
    assert got.column_names == ["key", "time", "kafka_partition", "kafka_offset", "kafka_event_index",
                                MODEL_VERSION_COLUMN, "score"]  # fmt: skip
    assert set(got.column(MODEL_VERSION_COLUMN).to_pylist()) == {local_model_version(model_dir)}
    assert local_model_version(model_dir).startswith("local:fraud-model@")
    assert_same_scores(got, events, expected_scores(model_dir, events))
    assert (out / SUCCESS_FILE).is_file()
    # The same through the pipeline folder, as the Helm chart passes it (--data .../pipeline=fraud), read a
    # day at a time (windows of <= 40 events) and scored in smaller batches.
    again = tmp_path / "again"
    assert (
        run_backfill(
            archive / f"pipeline={PIPELINE}",
            model_dir,
            again,
            "--batch-events",
            "100",
            "--window-events",
            "40",
        )
        == 0
    )
    np.testing.assert_allclose(
        read_scores(again).column("score").to_numpy(), got.column("score").to_numpy(), rtol=0, atol=TOL
    )


def test_start_end_bound_the_range(archive: Path, model_dir: Path, events: pa.Table, tmp_path: Path) -> None:
    start, end = "2026-01-04", "2026-01-09T12:00:00Z"
    out = tmp_path / "scores"
    assert run_backfill(archive, model_dir, out, "--start", start, "--end", end) == 0
    times = events.column("time").cast(pa.int64()).to_numpy()
    lo, hi = parse_time_ms(start), parse_time_ms(end)
    in_range = events.filter(pa.array((times >= lo) & (times < hi)))
    assert 0 < in_range.num_rows < events.num_rows
    got = read_scores(out)
    got_times = got.column("time").cast(pa.int64()).to_numpy()
    assert got_times.min() >= lo and got_times.max() < hi
    # States start from zero at --start: the scores are those of replaying only the range.
    assert_same_scores(got, in_range, expected_scores(model_dir, in_range))


def test_plain_parquet_file_without_provenance(model_dir: Path, events: pa.Table, tmp_path: Path) -> None:
    """Any Parquet file works (read a UTC day at a time); rows are shuffled on disk, scored in time order."""
    order = np.random.default_rng(0).permutation(events.num_rows)
    path = tmp_path / "events.parquet"
    pq.write_table(events.take(pa.array(order)), path, row_group_size=200)
    out = tmp_path / "scores"
    assert run_backfill(path, model_dir, out, "--end", "2026-01-11") == 0
    got = read_scores(out)
    assert got.column_names == ["key", "time", MODEL_VERSION_COLUMN, "score"]
    times = events.column("time").cast(pa.int64()).to_numpy()
    in_range = events.filter(pa.array(times < parse_time_ms("2026-01-11")))
    assert_same_scores(got, in_range, expected_scores(model_dir, in_range))


def run_error(args: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    assert main(args) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
    assert len(err) == 1, err
    return err[0]


def test_mistakes_end_with_one_line(
    archive: Path, model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    def args(**kw: str) -> list[str]:
        base = {
            "pipeline": PIPELINE,
            "model": str(model_dir),
            "data": str(archive),
            "output": str(tmp_path / "o"),
        }
        base.update(kw)
        return ["backfill", "--no-progress", *[x for k, v in base.items() for x in (f"--{k}", v)]]

    assert "no data at" in run_error(args(data=str(tmp_path / "nope")), capsys)
    assert "unknown pipeline 'frod'" in run_error(args(pipeline="frod"), capsys)
    err = run_error(args(pipeline="video"), capsys)
    assert "no archive for pipeline 'video'" in err and "fraud" in err
    err = run_error(args(data=str(archive / "pipeline=fraud"), pipeline="monitoring-metrics"), capsys)
    assert "holds pipeline 'fraud'" in err
    # A model of another pipeline on fraud events: the columns it reads are not there.
    other = save_model(StreamingModel(get_pipeline("monitoring-metrics").model_config), tmp_path / "mm")
    err = run_error(args(model=str(other)), capsys)
    assert "the model reads columns" in err and "another pipeline" in err
    assert "neither a model folder" in run_error(args(model="some/where"), capsys)
    assert "not an ISO date" in run_error(args(start="last tuesday"), capsys)
    assert "--end must be after --start" in run_error(args(start="2026-01-05", end="2026-01-01"), capsys)
    (tmp_path / "o").mkdir()
    (tmp_path / "o" / "old.parquet").write_bytes(b"x")
    assert "not empty (pass --overwrite" in run_error(args(), capsys)
    bad_config = tmp_path / "bad.yaml"
    bad_config.write_text("serving: {max_batch_events: many}\n")
    err = run_error([*args(), "--config", str(bad_config)], capsys)
    assert "serving.max_batch_events must be an integer" in err


def test_overwrite_replaces_old_output(archive: Path, model_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "o"
    out.mkdir()
    (out / "stale.parquet").write_bytes(b"x")
    assert run_backfill(archive, model_dir, out, "--overwrite", "--start", "2026-01-12") == 0
    assert not (out / "stale.parquet").exists()
    assert read_scores(out).num_rows > 0


def test_backfill_of_the_real_archive_sink(kafka_bootstrap: str, model_dir: Path, tmp_path: Path) -> None:
    """Events through Kafka and the ArchiveSink (Arrow messages: several events an offset) score as replay."""
    from rnnstream.jobs.backfill import backfill
    from rnnstream.jobs.backfill_source import TimeRange, open_events
    from rnnstream.rnn_core.serialization import load_model
    from rnnstream.workers.archive_sink import ArchiveSink
    from rnnstream.workers.event_producer import EventProducer
    from rnnstream.workers.kafka_io import TopicAdmin
    from rnnstream.workers.kafka_settings import KafkaSettings

    settings = KafkaSettings(bootstrap_servers=kafka_bootstrap)
    fraud = get_pipeline(PIPELINE).schema
    schema = replace(fraud, pipeline=f"bf{uuid.uuid4().hex[:8]}")  # fraud's columns, a topic of its own
    table = get_pipeline(PIPELINE).generate(600, 20, seed=5).table.replace_schema_metadata(None)
    table = table.cast(schema.arrow_schema())
    with TopicAdmin(settings) as admin:
        admin.create_pipeline_topics(schema.pipeline, 2)
    with EventProducer(settings, schema) as producer:
        producer.send_arrow(table, events_per_message=25)
        producer.flush()
    root = tmp_path / "archive"
    with ArchiveSink(settings, schema, str(root), flush_events=150) as sink:
        assert sink.run(until_caught_up=True).events_written == table.num_rows
    model = load_model(model_dir)
    out = tmp_path / "scores"
    result = backfill(
        model, "v7", open_events(str(root), schema.pipeline), str(out), TimeRange(), progress=False
    )
    assert result.events == table.num_rows
    got = read_scores(out)
    assert set(got.column("kafka_event_index").to_pylist()) > {0}  # Arrow messages: many events an offset
    assert set(got.column(MODEL_VERSION_COLUMN).to_pylist()) == {"v7"}
    assert_same_scores(got, table, expected_scores(model_dir, table))


def test_registered_model_by_alias(
    archive: Path,
    model_dir: Path,
    events: pa.Table,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``--model models:/rnnstream-fraud@champion`` loads the version the alias names from MLflow."""
    import mlflow

    from rnnstream.data_dir import DataDir
    from rnnstream.rnn_core.serialization import load_model
    from rnnstream.workers import model_registry, tracking

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    store = tracking.resolve_store(DataDir(tmp_path / "data"))
    try:
        with tracking.training_run(store, PIPELINE, "backfill-test"):
            logged = model_registry.log_model_version(load_model(model_dir), get_pipeline(PIPELINE).schema)
    finally:
        mlflow.set_tracking_uri(None)  # the run pointed mlflow's globals at this store: leave nothing behind
        mlflow.set_registry_uri(None)
    model_registry.promote(store, PIPELINE, logged.version)
    out = tmp_path / "scores"
    uri = ["--mlflow-uri", store.uri]
    assert run_backfill(archive, "models:/rnnstream-fraud@champion", out, *uri, "--start", "2026-01-10") == 0
    got = read_scores(out)
    assert set(got.column(MODEL_VERSION_COLUMN).to_pylist()) == {logged.version}
    times = events.column("time").cast(pa.int64()).to_numpy()
    in_range = events.filter(pa.array(times >= parse_time_ms("2026-01-10")))
    assert_same_scores(got, in_range, expected_scores(model_dir, in_range))
    # The fraud model on another pipeline's events: refused before scoring.
    plain = tmp_path / "events.parquet"
    pq.write_table(events, plain)
    args = ["backfill", "--pipeline", "monitoring-metrics", "--model", "models:/rnnstream-fraud@champion",
            "--data", str(plain), "--output", str(tmp_path / "x"), *uri]  # fmt: skip
    assert "trained for pipeline 'fraud', not 'monitoring-metrics'" in run_error(args, capsys)
    missing = ["backfill", "--pipeline", PIPELINE, "--model", "models:/rnnstream-fraud@nobody",
               "--data", str(archive), "--output", str(tmp_path / "y"), *uri]  # fmt: skip
    assert "no alias @nobody of registered model 'rnnstream-fraud'" in run_error(missing, capsys)
