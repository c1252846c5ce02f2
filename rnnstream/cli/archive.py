"""``rnnstream archive``: copy a pipeline's events topic into the Parquet archive (what training reads)."""

from __future__ import annotations

import argparse
import signal

from rnnstream.cli.topics import add_kafka_args, settings_from_args


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("archive", help="archive <pipeline>.events as Parquet (partitioned by date)")
    p.add_argument("--pipeline", required=True)
    p.add_argument(
        "--root",
        default=None,
        help="archive folder or URI such as s3://... (default: the config's archive.uri, else the local "
        "data dir's archive/, which `train` reads)",
    )
    p.add_argument(
        "--config",
        default=None,
        help="the run-config file (archive:, kafka: sections; default $RNNSTREAM_CONFIG)",
    )
    p.add_argument("--until-caught-up", action="store_true", help="stop once the current end is archived")
    p.add_argument("--max-seconds", type=float, default=None, help="stop after this long")
    p.add_argument("--flush-events", type=int, default=20_000, help="events per partition per file")
    p.add_argument("--flush-interval", type=float, default=5.0, help="seconds between flushes")
    p.add_argument("--poll-records", type=int, default=2000, help=argparse.SUPPRESS)
    p.add_argument("--crash-after-flushes", type=int, default=None, help=argparse.SUPPRESS)  # tests only
    add_kafka_args(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from rnnstream.data_dir import DataDir
    from rnnstream.errors import UsageError
    from rnnstream.pipelines.sample_stream import resolve_schema
    from rnnstream.run_config import load_run_config
    from rnnstream.workers.archive_sink import ArchiveSink
    from rnnstream.workers.kafka_io import TopicAdmin, topic_names

    run_config = load_run_config(args.config)
    settings = settings_from_args(args, run_config.kafka)
    root = args.root or run_config.archive.uri or str(DataDir.default().archive)
    topic = topic_names(args.pipeline).events
    with TopicAdmin(settings, check=False) as admin:
        if admin.partitions(topic) is None:
            raise UsageError(
                f"topic {topic} does not exist: run `rnnstream topics create --pipeline {args.pipeline}`"
            )
    schema = resolve_schema(args.pipeline)
    with ArchiveSink(
        settings,
        schema,
        root,
        flush_events=args.flush_events,
        flush_interval_s=args.flush_interval,
        poll_records=args.poll_records,
        crash_after_flushes=args.crash_after_flushes,
    ) as sink:
        if sink.stats.orphans_removed:
            print(f"removed {sink.stats.orphans_removed} files of an interrupted flush; re-reading them")
        previous = signal.signal(signal.SIGTERM, _interrupt)  # a pod stop flushes like Ctrl-C does
        try:
            stats = sink.run(until_caught_up=args.until_caught_up, max_seconds=args.max_seconds)
        except KeyboardInterrupt:
            stats = sink.stats
        finally:
            signal.signal(signal.SIGTERM, previous)
    print(
        f"archived {stats.events_written} events ({stats.rejected} rejected) of {stats.messages} messages "
        f"into {stats.files_written} files under {root}; next offsets {stats.next_offsets}"
    )
    return 0


def _interrupt(signum: int, frame: object) -> None:
    """SIGTERM handler: stop the way Ctrl-C does (the sink flushes what it holds, then the command ends)."""
    raise KeyboardInterrupt
