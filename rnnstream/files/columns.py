"""Which columns of a user's file play which part, and the reading defaults the CLI shows in ``--help``.

A module of its own, without pyarrow or pandas, so that ``rnnstream fit-file --help`` answers at once.
"""

from __future__ import annotations

from dataclasses import dataclass

from rnnstream.errors import UsageError
from rnnstream.rnn_core.event_schema import KEY_COLUMN, LABEL_COLUMN, TIME_COLUMN

TIME_FORMATS: tuple[str, ...] = ("auto", "iso", "epoch_s", "epoch_ms", "step")
DEFAULT_CHUNK_ROWS = 65_536
DEFAULT_TARGET_FPR = 0.01  # fit-file's alert threshold: the share of held-out normal events that may alert
ONE_SERIES_KEY = "series"  # the one key of a file without a key column (the whole file is one series)
ONE_SERIES_NOTE = "one key: the whole file is one series (no --key-column)"


@dataclass(frozen=True)
class FileColumns:
    """Which columns of the user's file play which part; ``values`` and ``token`` are the model's inputs.

    ``key`` None: the file has no key column and is one series (every row has the key ONE_SERIES_KEY)."""

    key: str | None
    time: str
    values: tuple[str, ...] = ()
    token: str | None = None
    label: str | None = None

    def __post_init__(self) -> None:
        if not self.values and self.token is None:
            raise UsageError("name the input columns: --value-columns a,b,... and/or --token-column c")
        roles = [c for c in (self.key, self.time, *self.values, self.token, self.label) if c]
        dup = sorted({c for c in roles if roles.count(c) > 1})
        if dup:
            raise UsageError(f"column(s) {dup} are named for two roles; each column plays one part")
        reserved = sorted({KEY_COLUMN, TIME_COLUMN, LABEL_COLUMN} & {*self.values, self.token})
        if reserved:
            raise UsageError(
                f"value/token column(s) {reserved} use a reserved name (key, time, label); "
                "rename them in the file"
            )

    @property
    def used(self) -> tuple[str, ...]:
        """Every column read from the file, in a fixed order."""
        cols = [*([self.key] if self.key else []), self.time, *self.values]
        if self.token:
            cols.append(self.token)
        if self.label:
            cols.append(self.label)
        return tuple(cols)

    def to_dict(self) -> dict:
        return {"key": self.key, "time": self.time, "values": list(self.values), "token": self.token,
                "label": self.label}  # fmt: skip

    @classmethod
    def from_dict(cls, d: dict) -> FileColumns:
        return cls(d.get("key"), d["time"], tuple(d.get("values") or ()), d.get("token"), d.get("label"))
