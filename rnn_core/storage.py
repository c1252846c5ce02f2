"""Where files live: one resolver from a location to a ``pyarrow.fs`` filesystem, and one atomic writer.

Every place that writes durable files (state snapshots, partition checkpoints, the Parquet archive, backfill
output, training checkpoints) goes through these two functions, so a local folder, ``file://``, ``s3://`` and
``gs://`` behave the same everywhere and a crash never leaves a half-written file under its final name.
"""

from __future__ import annotations

import os
import posixpath
import uuid
from collections.abc import Callable
from datetime import timedelta
from typing import IO

import pyarrow.fs as pafs

Writer = Callable[[IO[bytes]], None]
# Google's own clients send gs:// requests to this host when it is set (a local emulator); pyarrow's
# FileSystem.from_uri does not read it, so the resolver does. s3:// needs nothing: pyarrow reads
# AWS_ENDPOINT_URL itself.
GCS_EMULATOR_ENV = "STORAGE_EMULATOR_HOST"
_TEMP_INFIX = ".tmp-"


def resolve_filesystem(
    location: str, filesystem: pafs.FileSystem | None = None
) -> tuple[pafs.FileSystem, str]:
    """``(filesystem, path)`` of ``location``: a local path (made absolute) or any URI pyarrow knows.

    With ``filesystem`` given, ``location`` is already a path inside it and is returned as it is (without a
    trailing slash).
    """
    if filesystem is not None:
        return filesystem, location.rstrip("/") or location
    if location.startswith("gs://") and os.environ.get(GCS_EMULATOR_ENV):
        fs, path = _gcs_emulator(os.environ[GCS_EMULATOR_ENV]), location.removeprefix("gs://")
        return fs, path.rstrip("/") or path
    if "://" in location:
        fs, path = pafs.FileSystem.from_uri(location)
        return fs, path.rstrip("/") or path
    return pafs.LocalFileSystem(), os.path.abspath(location)


def _gcs_emulator(host: str) -> pafs.FileSystem:
    """A GCS filesystem talking to the emulator at ``host`` (``http://127.0.0.1:9023`` or ``host:port``)."""
    scheme, _, address = host.rpartition("://")
    return pafs.GcsFileSystem(
        anonymous=True,
        endpoint_override=address,
        scheme=scheme or "http",
        project_id=os.environ.get("GOOGLE_CLOUD_PROJECT", "rnnstream"),
        retry_time_limit=timedelta(seconds=30),  # an emulator that is down fails fast, not after 15 min
    )


def local_path(fs: pafs.FileSystem, path: str) -> str | None:
    """The OS path when ``fs`` writes to the local disk (directly or under a SubTreeFileSystem), else None."""
    while isinstance(fs, pafs.SubTreeFileSystem):
        path = fs.base_path.rstrip("/") + "/" + path.lstrip("/")
        fs = fs.base_fs
    return path if isinstance(fs, pafs.LocalFileSystem) else None


def write_atomic(fs: pafs.FileSystem, path: str, write: Writer) -> None:
    """Create ``path`` with what ``write(stream)`` writes, so that readers see all of it or nothing.

    On a local disk: a hidden temporary file beside it, fsynced, renamed over ``path``, and the folder
    fsynced (the file survives a power cut once this returns). On object stores a single upload is atomic by
    itself (and a rename would be a copy), so the stream goes to ``path`` directly.
    """
    local = local_path(fs, path)
    if local is None:
        parent = posixpath.dirname(path)
        if parent:
            fs.create_dir(parent, recursive=True)
        with fs.open_output_stream(path) as out:
            write(out)
        return
    directory = os.path.dirname(local) or "."
    os.makedirs(directory, exist_ok=True)
    tmp = os.path.join(directory, f".{os.path.basename(local)}{_TEMP_INFIX}{uuid.uuid4().hex}")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, local)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def is_temporary(name: str) -> bool:
    """True for the base name of a temporary file that :func:`write_atomic` left behind in a crash."""
    return name.startswith(".") and _TEMP_INFIX in name


def write_bytes_atomic(fs: pafs.FileSystem, path: str, data: bytes) -> None:
    """:func:`write_atomic` of a small payload (a JSON progress marker, a manifest)."""
    write_atomic(fs, path, lambda out: out.write(data))
