"""``rnnstream produce``: write generated events of a pipeline to its events topic (JSON or Arrow).

The events come from :mod:`rnnstream.pipelines.sample_stream`: a registered pipeline's own generator, or the
built-in test schema for any other name.
"""

from __future__ import annotations

import argparse
import time

from rnnstream.cli.topics import add_kafka_args, settings_from_args


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("produce", help="write generated events of a pipeline to <pipeline>.events")
    p.add_argument("--pipeline", required=True)
    p.add_argument("--events", type=int, default=10_000, help="how many events (default %(default)s)")
    p.add_argument("--keys", type=int, default=100, help="how many stream keys (default %(default)s)")
    p.add_argument(
        "--rate", type=float, default=None, help="events per second (default: as fast as possible)"
    )
    p.add_argument("--encoding", choices=("json", "arrow"), default="json")
    p.add_argument("--events-per-message", type=int, default=1000, help="Arrow events per message")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--partitions", type=int, default=None, help="create missing topics with N partitions")
    add_kafka_args(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from rnnstream.errors import UsageError
    from rnnstream.pipelines.sample_stream import generate_events, resolve_schema
    from rnnstream.workers.event_producer import EventProducer
    from rnnstream.workers.kafka_io import TopicAdmin, topic_names

    if args.events < 0 or args.keys < 1:
        raise UsageError("--events must be >= 0 and --keys >= 1")
    if args.rate is not None and args.rate <= 0:
        raise UsageError("--rate must be positive")
    settings = settings_from_args(args)
    schema = resolve_schema(args.pipeline)
    topic = topic_names(args.pipeline).events
    with TopicAdmin(settings, check=False) as admin:
        if args.partitions:
            admin.create_pipeline_topics(args.pipeline, args.partitions)
        elif admin.partitions(topic) is None:
            raise UsageError(
                f"topic {topic} does not exist: run `rnnstream topics create --pipeline {args.pipeline} "
                "--partitions N` (or pass --partitions N)"
            )
    table = generate_events(args.pipeline, args.events, args.keys, args.seed)
    chunk = max(1, min(table.num_rows, int(args.rate) if args.rate else 10_000, 10_000))
    started = time.monotonic()
    sent = 0
    with EventProducer(
        settings, schema, topic, events_per_message=args.events_per_message, check=False
    ) as prod:
        for start in range(0, table.num_rows, chunk):
            part = table.slice(start, chunk)
            if args.encoding == "json":
                prod.send_json(part)
            else:
                prod.send_arrow(part)
            sent += part.num_rows
            if args.rate:
                ahead = sent / args.rate - (time.monotonic() - started)
                if ahead > 0:
                    prod.flush()
                    time.sleep(ahead)  # pacing to the requested rate, not waiting for a condition
        prod.flush()
    took = time.monotonic() - started
    print(f"produced {sent} events ({args.encoding}) of {args.keys} keys to {topic} in {took:.2f} s")
    return 0
