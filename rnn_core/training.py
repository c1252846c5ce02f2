"""Train like you serve: truncated BPTT over long per-key sequences, carrying each key's state across chunks.

Serving keeps a key's state for its whole life, so training must show the model states that have seen many
events, not windows that always start from zero. Each key's events form one long sequence; a batch holds
several keys (padded at the end, with a mask); the batch is cut into chunks of ``chunk_len`` events, the
loss of a chunk is back-propagated through that chunk only, and the state it ends in is detached and becomes
the next chunk's start state.

Works from a plain loop (:func:`fit`) and from a DDP loop (Ray Train): wrap :class:`TrainingLoss` (not the
bare model: DDP only synchronizes what runs through its ``forward``), pass it as ``loss_module``, give each
rank its :func:`shard`. When ``torch.distributed`` is initialized, ranks agree on the number of optimizer
steps per epoch (a rank with fewer chunks takes empty steps, so collectives never hang) and on the reported
losses (so early stopping stops every rank at the same epoch).
"""

from __future__ import annotations

import copy
import math
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor, nn

from rnnstream.rnn_core.config import ModelConfig
from rnnstream.rnn_core.key_sequences import (
    KeySequences,
    sequences_from_table,
    shard,
    split_keys,
    time_deltas_seconds,
)
from rnnstream.rnn_core.model import StreamingModel
from rnnstream.rnn_core.weight_averaging import WeightAverage

__all__ = [
    "FitResult",
    "KeySequences",
    "TrainingLoss",
    "evaluate_loss",
    "fit",
    "seed_everything",
    "seeded_model",
    "sequences_from_table",
    "shard",
    "split_keys",
    "time_deltas_seconds",
    "train_epoch",
]


class TrainingLoss(nn.Module):
    """``forward(x, y, state, mask) -> (loss, state)`` = ``model.loss``: the module to wrap in DDP."""

    def __init__(self, model: StreamingModel) -> None:
        super().__init__()
        self.model = model

    def forward(
        self, x: Tensor, y: Tensor | None, state: Tensor | None, mask: Tensor | None
    ) -> tuple[Tensor, Tensor]:
        return self.model.loss(x, y, state, mask)


@dataclass
class _Batch:
    x: Tensor  # [B, T, D]
    y: Tensor | None  # [B, T]
    mask: Tensor  # [B, T] bool


def _batches(sequences: KeySequences, batch_keys: int, rng: np.random.Generator | None) -> list[list[int]]:
    """Groups of key indices; keys of similar length share a batch (little padding), batch order shuffled."""
    n = len(sequences)
    if rng is None:
        order = np.argsort(sequences.lengths, kind="stable")
    else:
        order = np.lexsort((rng.random(n), sequences.lengths))
    groups = [order[i : i + batch_keys].tolist() for i in range(0, n, batch_keys)]
    if rng is not None:
        rng.shuffle(groups)
    return groups


def _pad(sequences: KeySequences, idx: list[int], device: torch.device) -> _Batch:
    lengths = [len(sequences.x[i]) for i in idx]
    t_max, d = max(lengths), sequences.x[idx[0]].shape[1]
    x = np.zeros((len(idx), t_max, d), dtype=np.float32)
    y = None if sequences.y is None else np.full((len(idx), t_max), np.nan, dtype=np.float32)
    mask = np.zeros((len(idx), t_max), dtype=bool)
    for row, (i, n) in enumerate(zip(idx, lengths, strict=True)):
        x[row, :n] = sequences.x[i]
        mask[row, :n] = True
        if y is not None:
            y[row, :n] = sequences.y[i]
    return _Batch(
        x=torch.from_numpy(x).to(device),
        y=None if y is None else torch.from_numpy(y).to(device),
        mask=torch.from_numpy(mask).to(device),
    )


def _chunks(batch: _Batch, chunk_len: int) -> Iterator[tuple[Tensor, Tensor | None, Tensor]]:
    for start in range(0, batch.x.shape[1], chunk_len):
        end = start + chunk_len
        yield (
            batch.x[:, start:end],
            None if batch.y is None else batch.y[:, start:end],
            batch.mask[:, start:end],
        )


def _valid_events(model: StreamingModel, y: Tensor | None, mask: Tensor) -> Tensor:
    """How many events of a chunk count in its loss (labelled ones for binary/multiclass)."""
    if model.head_kind in ("binary", "multiclass") and y is not None:
        return (mask & torch.isfinite(y) & (y >= 0)).sum()
    return mask.sum()


def _distributed() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def _all_reduce(values: list[float], op: str, device: torch.device) -> list[float]:
    if not _distributed():
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    reduce_op = torch.distributed.ReduceOp.MAX if op == "max" else torch.distributed.ReduceOp.SUM
    torch.distributed.all_reduce(t, op=reduce_op)
    return t.tolist()


def _device_of(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def train_epoch(
    model: StreamingModel,
    optimizer: torch.optim.Optimizer,
    sequences: KeySequences,
    chunk_len: int = 64,
    batch_keys: int = 32,
    *,
    seed: int = 0,
    epoch: int = 0,
    loss_module: nn.Module | None = None,
    grad_clip: float | None = 1.0,
    carry_state: bool = True,
    after_step: Callable[[], None] | None = None,
) -> float:
    """One pass over ``sequences`` by truncated BPTT; returns the event-weighted mean training loss.

    ``loss_module`` (default ``TrainingLoss(model)``) computes ``(loss, state)`` from ``(x, y, state, mask)``;
    pass a DDP-wrapped :class:`TrainingLoss` under Ray Train. ``carry_state=False`` restarts every chunk from
    zero (the windowed baseline that serving would not match). Batches are drawn with ``seed`` + ``epoch``.
    ``after_step`` runs after every optimizer step (the empty DDP steps included: they move Adam's weights).
    """
    if chunk_len < 1 or batch_keys < 1:
        raise ValueError("chunk_len and batch_keys must be >= 1")
    module = loss_module if loss_module is not None else TrainingLoss(model)
    device = _device_of(model)
    model.train()
    rng = np.random.default_rng([seed, epoch])
    steps = 0
    total, weight = 0.0, 0.0
    (max_steps,) = _all_reduce([float(planned_steps(sequences, chunk_len, batch_keys))], "max", device)
    for idx in _batches(sequences, batch_keys, rng):
        batch = _pad(sequences, idx, device)
        state = model.init_state(len(idx))
        for x, y, mask in _chunks(batch, chunk_len):
            if not carry_state:
                state = model.init_state(len(idx))
            loss, state = _train_step(module, optimizer, model, x, y, state, mask, grad_clip)
            if after_step is not None:
                after_step()
            state = state.detach()
            n = _valid_events(model, y, mask).item()
            total += loss * n
            weight += n
            steps += 1
    # Under DDP every rank must take the same number of steps: pad with steps that see no events.
    for _ in range(int(max_steps) - steps):
        x = torch.zeros((1, 1, model.input_size), device=device)
        y = torch.full((1, 1), float("nan"), device=device)
        no_events = torch.zeros((1, 1), dtype=torch.bool, device=device)
        _train_step(module, optimizer, model, x, y, model.init_state(1), no_events, grad_clip)
        if after_step is not None:
            after_step()
    total, weight = _all_reduce([total, weight], "sum", device)
    return total / weight if weight else float("nan")


def planned_steps(sequences: KeySequences, chunk_len: int, batch_keys: int) -> int:
    """Optimizer steps of one :func:`train_epoch` on ``sequences`` (one per chunk of each batch)."""
    return sum(
        math.ceil(max(len(sequences.x[i]) for i in idx) / chunk_len)
        for idx in _batches(sequences, batch_keys, None)
    )


def _train_step(module, optimizer, model, x, y, state, mask, grad_clip) -> tuple[float, Tensor]:
    optimizer.zero_grad(set_to_none=True)
    loss, new_state = module(x, y, state, mask.to(x.device))
    loss.backward()
    if grad_clip is not None:
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    optimizer.step()
    return float(loss.detach()), new_state


@torch.no_grad()
def evaluate_loss(
    model: StreamingModel, sequences: KeySequences, chunk_len: int = 256, batch_keys: int = 64
) -> float:
    """Event-weighted mean loss with each key's state carried through its whole sequence (eval mode).

    Under ``torch.distributed`` the result is over all ranks, so every rank must call it, even one whose
    shard holds no keys (an empty :class:`KeySequences` is fine; skipping the call hangs the others).
    """
    was_training = model.training
    model.eval()
    device = _device_of(model)
    total, weight = 0.0, 0.0
    try:
        for idx in _batches(sequences, batch_keys, None):
            batch = _pad(sequences, idx, device)
            state = model.init_state(len(idx))
            for x, y, mask in _chunks(batch, chunk_len):
                loss, state = model.loss(x, y, state, mask)
                n = _valid_events(model, y, mask).item()
                total += float(loss) * n
                weight += n
    finally:
        model.train(was_training)
    total, weight = _all_reduce([total, weight], "sum", device)
    return total / weight if weight else float("nan")


@dataclass
class FitResult:
    """What :func:`fit` did: per-epoch losses, the best epoch (by validation loss when given)."""

    history: list[dict[str, float]] = field(default_factory=list)
    best_epoch: int = -1
    best_val_loss: float = float("nan")
    stopped_early: bool = False


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (dropout, initialization)."""
    random.seed(seed)
    np.random.seed(seed)  # the legacy global RNG some libraries still use
    torch.manual_seed(seed)


def seeded_model(config: ModelConfig, seed: int = 0) -> StreamingModel:
    """A new :class:`StreamingModel` whose initial weights depend on ``seed`` only.

    The weights equal those of ``seed_everything(seed); StreamingModel(config)``, but the global RNGs are left
    as they were. Build the model with this (same ``seed`` as :func:`fit`) and a whole training run is
    reproducible: :func:`fit` seeds everything else itself, but only once the model already exists.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return StreamingModel(config)


def fit(
    model: StreamingModel,
    sequences: KeySequences,
    epochs: int = 10,
    lr: float = 1e-3,
    chunk_len: int = 64,
    batch_keys: int = 32,
    seed: int = 0,
    progress: Callable[[dict[str, float]], None] | None = None,
    validation: KeySequences | None = None,
    patience: int | None = 3,
    *,
    optimizer: torch.optim.Optimizer | None = None,
    loss_module: nn.Module | None = None,
    weight_decay: float = 0.0,
    grad_clip: float | None = 1.0,
    fit_normalization: bool = True,
    calibrate: bool = True,
    carry_state: bool = True,
    average_epochs: float | None = None,
    select_keys: Callable[[StreamingModel, KeySequences, int], KeySequences] | None = None,
) -> FitResult:
    """Train ``model`` on ``sequences`` for up to ``epochs`` epochs (Adam, truncated BPTT with carried state).

    Before training, fits the input normalization on ``sequences`` (``fit_normalization``; under DDP do it
    on the full data before wrapping, and pass False). With ``validation``, stops after ``patience`` epochs
    without improvement and restores the best weights. Afterwards forecast heads get their score
    calibration fitted on ``sequences`` (``calibrate``). ``progress`` receives one dict per epoch:
    ``epoch``, ``train_loss``, ``val_loss`` (NaN without validation), ``seconds``.

    ``average_epochs``: validate, early-stop on and keep an exponential moving average of the weights with
    this time constant in epochs (:mod:`~rnnstream.rnn_core.weight_averaging`) instead of the weights of the
    epoch's last step, from the second epoch on (the first is the raw weights: the average leaves out the
    first epoch's steps); the model ends with the best (or, without ``validation``, the last) average.

    ``select_keys(model, sequences, epoch)``: the keys an epoch trains on (e.g. a trimmed loss leaving out
    the most surprising keys: :class:`~rnnstream.rnn_core.trimmed_loss.TrimmedKeys`); default all of them.

    Reproducibility: ``seed`` fixes everything ``fit`` draws: the batch order of each epoch (from
    ``(seed, epoch)``, independent of any global RNG) and dropout (``fit`` calls :func:`seed_everything`
    with ``seed`` first, so it also reseeds the process's global Python/NumPy/torch RNGs). It cannot fix
    the model's *initial weights*: they were drawn when ``model`` was built, before this call. For runs that
    repeat exactly, build it with :func:`seeded_model` (or call ``seed_everything(seed)`` right before
    ``StreamingModel(config)``); two ``fit`` calls with the same seed on models built from different RNG
    states train different models. On CUDA, cuDNN may still differ in the last bits between runs.
    """
    seed_everything(seed)
    if fit_normalization and len(sequences):
        model.fit_normalization(sequences.all_x())
    if optimizer is None:
        optimizer = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    result = FitResult()
    averaged: WeightAverage | None = None
    if average_epochs is not None:
        device = _device_of(model)
        (steps,) = _all_reduce([float(planned_steps(sequences, chunk_len, batch_keys))], "max", device)
        averaged = WeightAverage(model, average_epochs, int(steps))
    best_state: dict[str, Tensor] | None = None
    since_best = 0
    for epoch in range(epochs):
        started = time.perf_counter()
        train_loss = train_epoch(
            model,
            optimizer,
            sequences if select_keys is None else select_keys(model, sequences, epoch),
            chunk_len,
            batch_keys,
            seed=seed,
            epoch=epoch,
            loss_module=loss_module,
            grad_clip=grad_clip,
            carry_state=carry_state,
            after_step=None if averaged is None or epoch == 0 else averaged.update,  # from the 2nd epoch
        )
        kept = model if averaged is None or epoch == 0 else averaged.averaged_model()  # validated and kept
        val_loss = (
            evaluate_loss(kept, validation, chunk_len=max(chunk_len, 256))
            if validation is not None
            else math.nan
        )
        record = {"epoch": float(epoch), "train_loss": train_loss, "val_loss": val_loss}
        record["seconds"] = time.perf_counter() - started
        result.history.append(record)
        if progress is not None:
            progress(record)
        if validation is None:
            result.best_epoch = epoch
            if averaged is not None:
                best_state = copy.deepcopy(kept.state_dict())
            continue
        if best_state is None or val_loss < result.best_val_loss:
            result.best_epoch, result.best_val_loss, since_best = epoch, val_loss, 0
            best_state = copy.deepcopy(kept.state_dict())
        else:
            since_best += 1
            if patience is not None and since_best >= patience:
                result.stopped_early = True
                break
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    if calibrate and model.head_kind == "forecast" and len(sequences):
        model.fit_score_calibration(list(sequences.x))
    return result
