"""The stateless baseline of a pipeline's model: same cell, size and head, trained on the same events with
the same settings, but its state is zeroed before every event (what the recurrent state is worth)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pyarrow as pa

from rnnstream.rnn_core.config import ModelConfig
from rnnstream.rnn_core.evaluation import fit_model, stateless_config
from rnnstream.rnn_core.key_sequences import KeySequences
from rnnstream.rnn_core.model import StreamingModel

if TYPE_CHECKING:
    from rnnstream.jobs.training import TrainSettings


def fit_stateless_baseline(
    config: ModelConfig,
    train: pa.Table | KeySequences,
    label_column: str | None,
    settings: TrainSettings,
) -> StreamingModel:
    """The stateless twin of ``config`` fitted on ``train`` with ``settings``' epochs, chunks, batches,
    learning rate and seed (no early stopping: it has no validation split of its own)."""
    return fit_model(
        stateless_config(config),
        train,
        label_column,
        settings.epochs,
        chunk_len=settings.chunk_len,
        batch_keys=settings.batch_keys,
        lr=settings.learning_rate,
        seed=settings.seed,
        patience=None,
    )
