"""Distributed training of a StreamingModel with Ray Train (V2 API): the per-worker loop and its launcher.

Every worker reads the same Parquet files of training (and held-out) events, turns them into per-key
sequences and keeps its own share of the keys (:func:`shard`: each key on exactly one worker, so a key's
state never crosses workers). Truncated BPTT (:func:`train_epoch`) carries each key's state across chunks;
gradients are averaged by DDP (gloo on CPU, NCCL on GPU) through :class:`TrainingLoss`, the module DDP wraps.

After every epoch each worker reports its metrics and rank 0 a checkpoint (safetensors weights + config,
optimizer state as plain tensors, the epoch history as JSON) through ``ray.train.report``. A run resumes from
its latest checkpoint only when started again under the *same* run name (Ray Train V2 finds it in
``storage_path``), which :func:`launch` does only when asked to: new runs get a fresh unique name.
"""

from __future__ import annotations

import json
import math
import secrets
import tempfile
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import torch

from rnnstream.rnn_core.config import ConfigError, ModelConfig
from rnnstream.rnn_core.event_schema import KEY_COLUMN
from rnnstream.rnn_core.model import StreamingModel
from rnnstream.rnn_core.serialization import load_model, model_from_bytes, model_to_bytes, save_model
from rnnstream.rnn_core.storage import resolve_filesystem, write_bytes_atomic
from rnnstream.rnn_core.training import (
    KeySequences,
    TrainingLoss,
    evaluate_loss,
    seed_everything,
    sequences_from_table,
    shard,
    train_epoch,
)

MODEL_DIR = "model"
OPTIMIZER_FILE = "optimizer.pt"
STATE_FILE = "train_state.json"
LATEST_RUN_FILE = "latest-run-{pipeline}.txt"


@dataclass(frozen=True)
class TrainLoopConfig:
    """Everything a Ray Train worker needs, as plain data (it travels as the ``train_loop_config`` dict).

    ``initial_model`` is the model to start from (``model_to_bytes``: safetensors, normalization already
    fitted on the training data by the driver, so every rank starts identical). ``train_path`` and
    ``val_path`` are Parquet files (or URIs every node can read) of events in the pipeline's schema; the
    held-out events give the per-epoch ``val_loss`` (each key starting from a zero state there).
    """

    initial_model: bytes
    train_path: str
    val_path: str | None = None
    label_column: str | None = None
    epochs: int = 5
    chunk_len: int = 64
    batch_keys: int = 32
    learning_rate: float = 3e-3
    seed: int = 0
    grad_clip: float | None = 1.0
    threads_per_worker: int = 1

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class TrainOutcome:
    """What a distributed training run produced: the final model, per-epoch history, where it lives."""

    model: StreamingModel
    history: list[dict[str, float]]
    run_name: str
    checkpoint_path: str
    resumed_at_epoch: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


def _my_share(
    path: str | None, model: StreamingModel, label_column: str | None, rank: int, world: int
) -> tuple[KeySequences | None, int, int]:
    """This rank's key sequences of the events in ``path`` (None without a path), all keys, all events.

    The split is :func:`shard`'s (every key on one rank, events balanced), decided from per-key event
    counts, so a rank turns only its own keys' events into model inputs.
    """
    if not path:
        return None, 0, 0
    table = pq.read_table(path)
    counts = table.group_by(KEY_COLUMN).aggregate([(KEY_COLUMN, "count")])
    keys = counts.column(KEY_COLUMN).to_pylist()
    sizes = counts.column(f"{KEY_COLUMN}_count").to_numpy()
    outline = KeySequences(keys=tuple(keys), x=tuple(np.empty((int(n), 0), np.float32) for n in sizes))
    mine = shard(outline, rank, world).keys
    table = table.filter(pc.is_in(table.column(KEY_COLUMN), value_set=pa.array(mine, pa.string())))
    return sequences_from_table(table, model.config.features, label_column), len(keys), int(sizes.sum())


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """The Ray Train worker function: shard by key, TBPTT epochs under DDP, report + checkpoint each epoch."""
    import ray.train
    import ray.train.torch

    cfg = TrainLoopConfig(**config)
    torch.set_num_threads(cfg.threads_per_worker)
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    seed_everything(cfg.seed)
    device = ray.train.torch.get_device()

    model = model_from_bytes(cfg.initial_model)
    optimizer_state = None
    start_epoch, history = 0, []
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as ckpt_dir:
            model = load_model(Path(ckpt_dir) / MODEL_DIR)
            optimizer_state = torch.load(Path(ckpt_dir) / OPTIMIZER_FILE, weights_only=True)
            saved = json.loads((Path(ckpt_dir) / STATE_FILE).read_text())
            start_epoch, history = int(saved["next_epoch"]), list(saved["history"])
    model.to(device)
    model.train()
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.learning_rate)
    if optimizer_state is not None:
        optimizer.load_state_dict(optimizer_state)
    loss_module = ray.train.torch.prepare_model(TrainingLoss(model), move_to_device=False)

    mine, total_keys, total_events = _my_share(cfg.train_path, model, cfg.label_column, rank, world)
    val_mine, val_keys, _ = _my_share(cfg.val_path, model, cfg.label_column, rank, world)
    if not val_keys:
        val_mine = None

    for epoch in range(start_epoch, cfg.epochs):
        started, cpu_started = time.perf_counter(), time.process_time()
        train_loss = train_epoch(
            model,
            optimizer,
            mine,
            cfg.chunk_len,
            cfg.batch_keys,
            seed=cfg.seed,
            epoch=epoch,
            loss_module=loss_module,
            grad_clip=cfg.grad_clip,
        )
        seconds = _max_over_ranks(time.perf_counter() - started, device)
        cpu_seconds = _max_over_ranks(time.process_time() - cpu_started, device)
        # Every rank joins the loss all-reduce, also one whose share of held-out keys is empty.
        val_loss = math.nan
        if val_mine is not None:
            val_loss = evaluate_loss(model, val_mine, chunk_len=max(cfg.chunk_len, 256))
        record = {
            "epoch": float(epoch),
            "train_loss": float(train_loss),
            "val_loss": float(val_loss),
            "epoch_seconds": seconds,
            "epoch_cpu_seconds": cpu_seconds,
            "sequences_per_s": total_keys / seconds if seconds > 0 else math.nan,
            "events_per_s": total_events / seconds if seconds > 0 else math.nan,
            "workers": float(world),
            "resumed": float(checkpoint is not None and epoch == start_epoch),
        }
        history.append(record)
        _report(record, history, model, optimizer, epoch, rank)


def _max_over_ranks(value: float, device: torch.device) -> float:
    """The slowest rank's time: the epoch is done when every rank is."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return value
    t = torch.tensor([value], dtype=torch.float64, device=device)
    torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
    return float(t.item())


def _report(record, history, model, optimizer, epoch: int, rank: int) -> None:
    import ray.train

    with tempfile.TemporaryDirectory(prefix="rnnstream-ckpt-") as tmp:
        checkpoint = None
        if rank == 0:
            save_model(model, Path(tmp) / MODEL_DIR)
            torch.save(optimizer.state_dict(), Path(tmp) / OPTIMIZER_FILE)
            state = {"next_epoch": epoch + 1, "history": history}
            (Path(tmp) / STATE_FILE).write_text(json.dumps(state))
            checkpoint = ray.train.Checkpoint.from_directory(tmp)
        ray.train.report(record, checkpoint=checkpoint, checkpoint_dir_name=f"epoch-{epoch:04d}")


# ------------------------------------------------------------------------------------------------- driver
def new_run_name(pipeline: str) -> str:
    """A run name never used before (Ray Train V2 silently resumes a run whose name exists)."""
    stamp = datetime.now(tz=UTC).strftime("%Y%m%dT%H%M%S")
    return f"{pipeline}-{stamp}-{secrets.token_hex(3)}"


@dataclass(frozen=True)
class TrainStorage:
    """Where Ray Train keeps runs and checkpoints: a local folder or a URI (``s3://``, ``gs://``).

    In a cluster every node must reach it (Ray Train V2 requires a shared ``storage_path``). Besides Ray's
    run folders it holds the events staged for a run (``datasets/<run>/``) and the pipeline's latest run
    name (``latest-run-<pipeline>.txt``, what ``--resume`` picks up).
    """

    root: str

    def _fs(self) -> tuple[pafs.FileSystem, str]:
        return resolve_filesystem(self.root)

    @property
    def ray_storage_path(self) -> str:
        """``RunConfig.storage_path``: the URI, or the local folder as an absolute path."""
        return self.root if "://" in self.root else str(Path(self.root).resolve())

    def _uri(self, *parts: str) -> str:
        return "/".join([self.ray_storage_path.rstrip("/"), *parts])

    def run_exists(self, run_name: str) -> bool:
        fs, base = self._fs()
        return fs.get_file_info(f"{base}/{run_name}").type == pafs.FileType.Directory

    def remember(self, pipeline: str, run_name: str) -> None:
        """Record ``run_name`` as the pipeline's latest run."""
        fs, base = self._fs()
        write_bytes_atomic(
            fs, f"{base}/{LATEST_RUN_FILE.format(pipeline=pipeline)}", (run_name + "\n").encode()
        )

    def latest(self, pipeline: str) -> str | None:
        """The pipeline's latest run name, or None."""
        fs, base = self._fs()
        path = f"{base}/{LATEST_RUN_FILE.format(pipeline=pipeline)}"
        if fs.get_file_info(path).type != pafs.FileType.File:
            return None
        with fs.open_input_stream(path) as f:
            return f.read().decode().strip() or None

    def stage(self, run_name: str, tables: dict[str, pa.Table]) -> dict[str, str]:
        """Write ``tables`` as Parquet under ``datasets/<run>/``; returns where every worker reads each."""
        fs, base = self._fs()
        folder = f"{base}/datasets/{run_name}"
        fs.create_dir(folder, recursive=True)
        out = {}
        for name, table in tables.items():
            pq.write_table(table, f"{folder}/{name}.parquet", filesystem=fs)
            out[name] = self._uri("datasets", run_name, f"{name}.parquet")
        return out

    def unstage(self, run_name: str) -> None:
        fs, base = self._fs()
        folder = f"{base}/datasets/{run_name}"
        if fs.get_file_info(folder).type == pafs.FileType.Directory:
            fs.delete_dir(folder)


def ensure_ray(num_cpus: int | None = None) -> None:
    """Start a local Ray (no dashboard) unless this process is already connected to one."""
    import ray

    if not ray.is_initialized():
        ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False)


def check_capacity(num_workers: int, use_gpu: bool) -> None:
    """On a local Ray (no ``RAY_ADDRESS``), fail at once when the workers cannot all be placed.

    Ray Train would otherwise wait for resources that never come. A cluster may autoscale: not checked.
    """
    import os

    import ray

    if os.environ.get("RAY_ADDRESS"):
        return
    have = ray.cluster_resources()
    need = {"CPU": float(num_workers), **({"GPU": float(num_workers)} if use_gpu else {})}
    for name, amount in need.items():
        if have.get(name, 0.0) < amount:
            raise ConfigError(
                f"{num_workers} training worker(s) need {amount:g} {name}(s); this Ray has "
                f"{have.get(name, 0.0):g}: use --workers {max(int(have.get(name, 0.0)), 1)} or a bigger Ray"
            )


def launch(
    cfg: TrainLoopConfig,
    storage_path: str | Path,
    run_name: str,
    num_workers: int = 2,
    use_gpu: bool = False,
) -> TrainOutcome:
    """Run :func:`train_loop_per_worker` on ``num_workers`` Ray Train workers and load the final checkpoint.

    ``run_name`` must be new unless the run is meant to resume (then it continues after its latest
    checkpoint, up to ``cfg.epochs``). ``storage_path`` must be shared by every node in a cluster.
    """
    from ray.train import CheckpointConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    if num_workers < 1:
        raise ValueError("num_workers must be >= 1")
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config=cfg.to_dict(),
        torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
        scaling_config=ScalingConfig(
            num_workers=num_workers,
            use_gpu=use_gpu,
            resources_per_worker={"CPU": 1, **({"GPU": 1} if use_gpu else {})},
        ),
        run_config=RunConfig(
            name=run_name,
            storage_path=str(storage_path),
            checkpoint_config=CheckpointConfig(num_to_keep=2),
        ),
    )
    result = trainer.fit()
    if result.checkpoint is None:
        raise RuntimeError(f"training run {run_name} ended without a checkpoint (epochs already done?)")
    with result.checkpoint.as_directory() as ckpt_dir:
        model = load_model(Path(ckpt_dir) / MODEL_DIR)
        saved = json.loads((Path(ckpt_dir) / STATE_FILE).read_text())
    history = list(saved["history"])
    resumed_at = next((int(h["epoch"]) for h in history if h.get("resumed")), 0)
    return TrainOutcome(
        model=model,
        history=history,
        run_name=run_name,
        checkpoint_path=result.checkpoint.path,
        resumed_at_epoch=resumed_at,
    )


def initial_model(config: ModelConfig, train: KeySequences, seed: int) -> StreamingModel:
    """The starting model every rank gets: seeded weights, input normalization fitted on the training data."""
    seed_everything(seed)
    model = StreamingModel(config)
    if len(train):
        model.fit_normalization(train.all_x())
    return model


def pack(model: StreamingModel) -> bytes:
    """The model as one safetensors blob for :attr:`TrainLoopConfig.initial_model`."""
    return model_to_bytes(model)
