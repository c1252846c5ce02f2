"""Save and load a StreamingModel as safetensors weights + a JSON config; nothing is ever unpickled.

On disk a model is a directory with ``model.safetensors`` (every parameter and buffer: weights, input
normalization, forecast error scale and score calibration) and ``config.json`` (``ModelConfig.to_dict()``
plus a format tag). In memory, :func:`model_to_bytes` packs the same into one safetensors blob whose
metadata carries the config JSON, for passing models through Ray's object store or MLflow artifacts.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load as load_safetensors_bytes
from safetensors.torch import load_file, save, save_file

from rnnstream.rnn_core.config import ModelConfig
from rnnstream.rnn_core.model import StreamingModel
from rnnstream.rnn_core.score_buffers import saved_score_buffers

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
FORMAT = "rnnstream.streaming_model"
FORMAT_VERSION = 1
_CONFIG_METADATA_KEY = "rnnstream.config"


class ModelFormatError(ValueError):
    """A saved model is missing, of another format/version, or does not match its config."""


def model_config_document(model: StreamingModel) -> dict[str, Any]:
    """The JSON document saved next to the weights."""
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "config": model.config.to_dict(),
        "output_names": model.output_names(),
        "state_shape": list(model.state_shape),
    }


def save_model(model: StreamingModel, directory: str | os.PathLike[str]) -> Path:
    """Write ``model.safetensors`` and ``config.json`` into ``directory`` (created; replaced atomically)."""
    path = Path(directory)
    path.mkdir(parents=True, exist_ok=True)
    tensors = _tensors(model)
    doc = model_config_document(model)
    _atomic_write(path / WEIGHTS_FILE, lambda tmp: save_file(tensors, tmp, metadata={"format": FORMAT}))
    _atomic_write(
        path / CONFIG_FILE, lambda tmp: Path(tmp).write_text(json.dumps(doc, indent=2, sort_keys=True))
    )
    return path


def load_model(directory: str | os.PathLike[str], device: str | torch.device = "cpu") -> StreamingModel:
    """Read a model written by :func:`save_model`, in eval mode, without unpickling anything."""
    path = Path(directory)
    config_path, weights_path = path / CONFIG_FILE, path / WEIGHTS_FILE
    if not config_path.is_file() or not weights_path.is_file():
        raise ModelFormatError(f"{path} is not a saved model: it needs {CONFIG_FILE} and {WEIGHTS_FILE}")
    doc = json.loads(config_path.read_text())
    return _build(doc, load_file(str(weights_path), device=str(device)))


def model_digest(directory: str | os.PathLike[str]) -> str:
    """A content identity of a saved model: SHA-256 (hex, 16 digits) of its config and weights files.

    Two folders holding the same model have the same digest; retraining into the same folder changes it,
    so a version named by it never restores one model's states into another.
    """
    path = Path(directory)
    digest = hashlib.sha256()
    for name in (CONFIG_FILE, WEIGHTS_FILE):
        digest.update(name.encode())
        digest.update((path / name).read_bytes())
    return digest.hexdigest()[:16]


META_FILE = (
    "rnnstream_meta.json"  # beside the weights of a registered (MLflow) version: its version, pipeline
)
WEIGHTS_FOLDER = (
    "weights"  # where a registered version keeps the saved model, under ``artifacts/`` once fetched
)


def model_folder(path: str | os.PathLike[str]) -> Path:
    """The folder holding a saved model's files: ``artifacts/weights`` or ``weights`` inside a downloaded
    registry version, else ``path`` itself."""
    root = Path(path)
    return next((c for c in (root / "artifacts" / WEIGHTS_FOLDER, root / WEIGHTS_FOLDER) if c.is_dir()), root)


def model_meta(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The meta JSON of a downloaded registry version (``artifacts/`` or top level); ``{}`` when none."""
    root = Path(path)
    found = next((f for f in (root / "artifacts" / META_FILE, root / META_FILE) if f.is_file()), None)
    return json.loads(found.read_text()) if found else {}


def local_model_version(directory: str | os.PathLike[str], meta_version: str | None = None) -> str:
    """The version of a model served from a folder: the one its meta JSON names (a downloaded registry
    version), else ``local:<folder name>@<content digest>`` (the name for people, the digest for identity)."""
    if meta_version:
        return str(meta_version)
    path = Path(directory)
    return f"local:{path.resolve().name}@{model_digest(model_folder(path))}"


def model_to_bytes(model: StreamingModel) -> bytes:
    """One safetensors blob holding the weights and, in its metadata, the config document."""
    doc = json.dumps(model_config_document(model), sort_keys=True)
    return save(_tensors(model), metadata={"format": FORMAT, _CONFIG_METADATA_KEY: doc})


def model_from_bytes(data: bytes, device: str | torch.device = "cpu") -> StreamingModel:
    """Inverse of :func:`model_to_bytes` (eval mode; no unpickling)."""
    metadata = _safetensors_metadata(data)
    if _CONFIG_METADATA_KEY not in metadata:
        raise ModelFormatError(
            "these bytes are not an rnnstream model (no config in the safetensors metadata)"
        )
    tensors = {k: v.to(device) for k, v in load_safetensors_bytes(data).items()}
    return _build(json.loads(metadata[_CONFIG_METADATA_KEY]), tensors)


def _tensors(model: StreamingModel) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}


def _build(doc: dict[str, Any], tensors: dict[str, torch.Tensor]) -> StreamingModel:
    if doc.get("format") != FORMAT:
        raise ModelFormatError(f"unknown model format {doc.get('format')!r}; expected {FORMAT!r}")
    if doc.get("format_version") != FORMAT_VERSION:
        raise ModelFormatError(
            f"model format version {doc.get('format_version')} is not supported"
            f" (this code reads version {FORMAT_VERSION})"
        )
    model = StreamingModel(ModelConfig.from_dict(doc["config"]))
    device = next(iter(tensors.values())).device if tensors else torch.device("cpu")
    model.to(device)
    tensors = saved_score_buffers(model, tensors, device)
    try:
        model.load_state_dict(tensors, strict=True)
    except RuntimeError as exc:
        raise ModelFormatError(f"saved weights do not match the saved config: {exc}") from exc
    return model.eval()


def _safetensors_metadata(data: bytes) -> dict[str, str]:
    """The ``__metadata__`` of a safetensors blob (8-byte little-endian header length, then JSON)."""
    if len(data) < 8:
        raise ModelFormatError("too few bytes for a safetensors blob")
    (n,) = struct.unpack("<Q", data[:8])
    if n > len(data) - 8:
        raise ModelFormatError("corrupt safetensors header length")
    try:
        header = json.loads(data[8 : 8 + n])
    except ValueError as exc:
        raise ModelFormatError(f"corrupt safetensors header: {exc}") from exc
    return dict(header.get("__metadata__") or {})


def _atomic_write(target: Path, write) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
