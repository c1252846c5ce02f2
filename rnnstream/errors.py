"""The errors every layer may raise toward the user: each is printed by the CLI as one line (exit 2).

``ConfigError`` (a setting that cannot be used) lives in :mod:`rnnstream.rnn_core.config` because the core
raises it too; it is re-exported here so application code has one place to import errors from.
"""

from __future__ import annotations

from rnnstream.rnn_core.config import ConfigError

__all__ = ["ConfigError", "UsageError"]


class UsageError(Exception):
    """A user-facing mistake (bad argument, missing file, unreachable service): printed as one line."""
