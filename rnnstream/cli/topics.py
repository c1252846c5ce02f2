"""``rnnstream topics create|list``: a pipeline's topics (events, scores, dlq) on any Kafka."""

from __future__ import annotations

import argparse

from rnnstream.workers.kafka_settings import KafkaSettings, KafkaUnreachable


def add_kafka_args(p: argparse.ArgumentParser) -> None:
    """The Kafka connection flags every Kafka-using command shares."""
    p.add_argument(
        "--bootstrap-servers",
        default=None,
        help="host:port[,...] (default: RNNSTREAM_KAFKA_BOOTSTRAP_SERVERS, config file, or 127.0.0.1:9092)",
    )
    p.add_argument(
        "--kafka-config", default=None, help="JSON/YAML file of Kafka client settings (security ...)"
    )


def check_reachable(settings: KafkaSettings) -> None:
    """One clear line (a UsageError) when no broker answers at ``settings``."""
    from rnnstream.errors import UsageError

    try:
        settings.check_reachable()
    except KafkaUnreachable as exc:
        raise UsageError(str(exc)) from exc


def settings_from_args(args: argparse.Namespace, run_kafka: KafkaSettings | None = None) -> KafkaSettings:
    """KafkaSettings from flags, config file and environment; a clear error if no broker answers.

    ``run_kafka`` is the run config's ``kafka:`` section (already layered with ``RNNSTREAM_KAFKA_*``): the
    base when given, unless ``--kafka-config`` names a client file of its own; ``--bootstrap-servers`` wins.
    """
    from dataclasses import replace

    from rnnstream.errors import UsageError

    kafka_config = getattr(args, "kafka_config", None)
    bootstrap = getattr(args, "bootstrap_servers", None)
    try:
        if run_kafka is not None and not kafka_config:
            settings = replace(run_kafka, bootstrap_servers=bootstrap) if bootstrap else run_kafka
        else:
            settings = KafkaSettings.load(config_file=kafka_config, bootstrap_servers=bootstrap)
        settings.check_reachable()
    except KafkaUnreachable as exc:
        raise UsageError(str(exc)) from exc
    except ValueError as exc:
        raise UsageError(str(exc)) from exc
    return settings


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("topics", help="create or list Kafka topics of a pipeline")
    sub = p.add_subparsers(dest="topics_action", metavar="ACTION", required=True)
    c = sub.add_parser("create", help="create <p>.events, <p>.scores, <p>.dlq if missing")
    c.add_argument("--pipeline", required=True)
    c.add_argument("--partitions", type=int, default=4)
    c.add_argument("--replication-factor", type=int, default=1)
    add_kafka_args(c)
    c.set_defaults(func=run_create)
    ls = sub.add_parser("list", help="list topics (internal __ topics hidden)")
    add_kafka_args(ls)
    ls.set_defaults(func=run_list)


def run_create(args: argparse.Namespace) -> int:
    from rnnstream.errors import UsageError
    from rnnstream.workers.kafka_io import TopicAdmin

    if args.partitions < 1:
        raise UsageError("--partitions must be at least 1")
    settings = settings_from_args(args)
    with TopicAdmin(settings, check=False) as admin:
        made = admin.create_pipeline_topics(args.pipeline, args.partitions, args.replication_factor)
    for name, n in made.items():
        note = "" if n == args.partitions else f" (exists; kept its {n} partitions)"
        print(f"{name}: {n} partitions{note}")
    return 0


def run_list(args: argparse.Namespace) -> int:
    from rnnstream.workers.kafka_io import TopicAdmin

    settings = settings_from_args(args)
    with TopicAdmin(settings, check=False) as admin:
        for name in admin.list_topics():
            print(f"{name}\t{admin.partitions(name)}")
    return 0
