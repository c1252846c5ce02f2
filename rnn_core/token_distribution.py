"""What a next-token model expected at each event of each key: its whole distribution over the next token.

``score`` is ``1 - P(the token that came)``; the distribution it came from also says how likely an alert was
at that event, whatever token came (:mod:`rnnstream.files.expected_alerts` uses that).
"""

from __future__ import annotations

import numpy as np
import torch

from rnnstream.rnn_core.key_sequences import KeySequences
from rnnstream.rnn_core.model import StreamingModel
from rnnstream.rnn_core.trimmed_loss import padded_batches


@torch.no_grad()
def next_token_distributions(
    model: StreamingModel, sequences: KeySequences, batch_keys: int = 64
) -> list[np.ndarray]:
    """Per key ``[T, V]`` float32: the model's probabilities of each token code at each of its events, the
    state before that event (from a fresh state); each row sums to 1. Next-token heads only."""
    if model.head_kind != "next_token":
        raise ValueError(f"next-token distributions need a next_token head, this model has {model.head_kind}")
    was_training = model.training
    model.eval()
    found: list[np.ndarray] = [np.zeros((0, 0), np.float32)] * len(sequences)
    try:
        for idx, x, _, _ in padded_batches(sequences, batch_keys, next(model.parameters()).device):
            _, top_before, _, _ = model._run(x, None)
            probs = model.head(top_before).softmax(-1).float().cpu().numpy()
            for row, i in enumerate(idx):
                found[i] = probs[row, : len(sequences.x[i])]
    finally:
        model.train(was_training)
    return found
