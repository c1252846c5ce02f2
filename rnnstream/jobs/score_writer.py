"""Score tables to Parquet files ``part-NNNNN.parquet`` under a folder or ``pyarrow.fs`` URI: each written to
a hidden temporary name and renamed when complete, then a ``_SUCCESS.json`` marker with the summary."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from rnnstream.errors import UsageError
from rnnstream.rnn_core.storage import resolve_filesystem

DEFAULT_ROWS_PER_FILE = 2_000_000
ROW_GROUP_ROWS = 262_144
SUCCESS_FILE = "_SUCCESS.json"


class ScoreWriter:
    """Writes score tables as ``part-NNNNN.parquet`` files (temp name, then rename) under ``output``."""

    def __init__(
        self, output: str, overwrite: bool = False, rows_per_file: int = DEFAULT_ROWS_PER_FILE
    ) -> None:
        try:
            self.fs, self.root = resolve_filesystem(output)
            info = self.fs.get_file_info(self.root)
        except (OSError, ValueError) as exc:
            raise UsageError(f"cannot open --output {output}: {exc}") from None
        if info.type == pafs.FileType.File:
            raise UsageError(
                f"--output {output} is a file; give a folder (or URI prefix) for the score files"
            )
        if info.type == pafs.FileType.Directory:
            existing = self.fs.get_file_info(pafs.FileSelector(self.root, recursive=True))
            if any(i.type == pafs.FileType.File for i in existing):
                if not overwrite:
                    raise UsageError(
                        f"--output {output} is not empty (pass --overwrite to replace its files)"
                    )
                self.fs.delete_dir_contents(self.root)
        self.fs.create_dir(self.root, recursive=True)
        self.output = output
        self.rows_per_file = rows_per_file
        self.files: list[str] = []
        self._writer: pq.ParquetWriter | None = None
        self._stream = None
        self._tmp = ""
        self._rows_in_file = 0

    def write(self, table: pa.Table) -> None:
        if self._writer is not None and self._writer.schema != table.schema:
            self._close_file()
        if self._writer is None:
            name = f"part-{len(self.files):05d}.parquet"
            self._tmp = f"{self.root}/.{name}.tmp"
            self._stream = self.fs.open_output_stream(self._tmp)
            self._writer = pq.ParquetWriter(self._stream, table.schema)
            self.files.append(name)
        self._writer.write_table(table, row_group_size=ROW_GROUP_ROWS)
        self._rows_in_file += table.num_rows
        if self._rows_in_file >= self.rows_per_file:
            self._close_file()

    def _close_file(self) -> None:
        if self._writer is None:
            return
        self._writer.close()
        assert self._stream is not None
        self._stream.close()
        self.fs.move(self._tmp, f"{self.root}/{self.files[-1]}")
        self._writer, self._stream, self._rows_in_file = None, None, 0

    def finish(self, summary: dict) -> None:
        """Close the last file and write ``_SUCCESS.json`` (the marker that the output is complete)."""
        self._close_file()
        with self.fs.open_output_stream(f"{self.root}/{SUCCESS_FILE}") as f:
            f.write(json.dumps(summary, indent=2, default=str).encode())

    def abort(self) -> None:
        """Drop the file being written (finished part files stay; no success marker)."""
        if self._writer is not None:
            self._writer.close()
            assert self._stream is not None
            self._stream.close()
            self.fs.delete_file(self._tmp)
            self.files.pop()
            self._writer = None
