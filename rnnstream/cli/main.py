"""The ``rnnstream`` command line: one sub-command group per module of ``rnnstream.cli``.

A wrong argument or config ends with one line on stderr saying what is wrong and how to fix it (exit 2).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from rnnstream import __version__
from rnnstream.errors import ConfigError, UsageError

# Module names under rnnstream.cli; each defines ``register(subparsers)``.
COMMAND_MODULES: tuple[str, ...] = (
    "demo",
    "broker",
    "topics",
    "produce",
    "archive",
    "serve",
    "config_show",
    "train",
    "models",
    "mlflow_ui",
    "files",
    "backfill",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rnnstream",
        description="Score event streams with recurrent models that remember each stream key.",
    )
    parser.add_argument("--version", action="version", version=f"rnnstream {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(f"rnnstream.cli.{name}").register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except (UsageError, ConfigError) as exc:
        print(f"rnnstream {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"rnnstream {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
