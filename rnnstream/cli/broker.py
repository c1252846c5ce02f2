"""``rnnstream broker start|stop|status``: the embedded Kafka-protocol broker for local use."""

from __future__ import annotations

import argparse

from rnnstream.workers.embedded_broker import (
    DEFAULT_DATA_DIR,
    DEFAULT_PORT,
    BrokerError,
    EmbeddedBroker,
    metadata_answered,
    read_pid_file,
)


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("broker", help="start, stop or show the embedded Kafka broker")
    p.add_argument("action", choices=("start", "stop", "status"))
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help="Kafka port (default %(default)s)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default %(default)s)")
    p.add_argument(
        "--data-dir", default=DEFAULT_DATA_DIR, help="where the broker keeps data and its pid file"
    )
    p.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for the broker to answer")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from rnnstream.errors import UsageError

    broker = EmbeddedBroker(args.data_dir, port=args.port, host=args.host)
    if args.action == "start":
        try:
            info = broker.start(timeout_s=args.timeout)
        except BrokerError as exc:
            raise UsageError(str(exc)) from exc
        print(
            f"broker running: pid {info.pid}, bootstrap servers {info.bootstrap_servers}, "
            f"data {info.data_dir}"
        )
        for line in broker.stderr_lines():
            print(f"broker stderr: {line}")
        return 0
    if args.action == "stop":
        if broker.stop():
            print(f"broker stopped (data kept in {broker.data_dir})")
        else:
            print(f"no broker running for data dir {broker.data_dir}")
        return 0
    info = read_pid_file(args.data_dir)
    if info is None or not broker.is_running():
        print(f"no broker running for data dir {broker.data_dir}")
        return 1
    answers = metadata_answered(info.host, info.port)
    state = "answering" if answers else "NOT answering"
    print(f"broker pid {info.pid} on {info.bootstrap_servers} ({state}), data {info.data_dir}")
    return 0 if answers else 1
