"""Trimmed training for unlabelled data that holds anomalies: keys the model finds far too surprising are left
out of the next epoch's gradient (opt-in: ``fit``'s ``select_keys``, fit-file's ``FitOptions.trim_keys``).

A raw log trains a next-token model on everything it holds, anomalies included, and a model that learns
them stops being surprised by them. Robust statistics' answer is a trimmed likelihood (least trimmed
squares): fit to the bulk, not to the outliers. Here, after ``warmup_epochs`` epochs on every key (the model
must know the common paths before "surprising" means anything), each later epoch first scores every
training key with the current weights (one pass without gradients: its mean loss per event) and trains only
on the keys whose mean loss is at most the :func:`robust_cut` (median + ``k`` robust standard deviations of
the losses' logarithms), never more than ``max_share`` of the keys. Keys are judged again every epoch.

Measured (``benchmarks/log_sessions.py --quick --json --trim``, generated HDFS-like sessions, seed 0): on a
mixed training part the upper-bound best F1 rises 0.650 -> 0.704 and F1 at a 1% held-out threshold
0.551 -> 0.615; but on normal-only data the sessions with more free choices (and the rare normal paths)
drift beyond the cut as the bulk sharpens, ~9% of the keys end up left out, and F1 falls 0.842 -> 0.707.
Hence off by default: a rare normal path and an anomaly of the same frequency look alike to a per-key loss.
Leaving out instead, each epoch after 5 on everything, the training sessions above the held-out alert line
(the stored threshold's own rule, so only ~1% of clean sessions) was measured and not kept either (seed 0):
mixed F1 0.551 -> 0.569, normal-only 0.842 -> 0.711; the held-out twins of the left-out rare paths raise the
validation loss, early stopping ends at epoch 12 instead of 27, and a missing step is caught in 5% of
sessions instead of 89%.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from rnnstream.rnn_core.key_sequences import KeySequences
from rnnstream.rnn_core.model import StreamingModel
from rnnstream.rnn_core.sequence_loss import event_losses

MAD_TO_SD = 1.4826  # a normal's standard deviation over its median absolute deviation
DEFAULT_K = 3.0
DEFAULT_MAX_SHARE = 0.1
# keys whose losses (nearly) tie have no spread to measure: a key is never left out for less than
# e^(k * 0.1) (1.35x at k = 3) the median loss
MIN_LOG_SPREAD = 0.1


def padded_batches(sequences: KeySequences, batch_keys: int, device: torch.device):
    """``(indices, x, y, mask)`` batches of keys of similar lengths (little padding), padded at the end."""
    order = np.argsort(sequences.lengths, kind="stable")
    for start in range(0, len(order), batch_keys):
        idx = order[start : start + batch_keys]
        lengths = [len(sequences.x[i]) for i in idx]
        x = np.zeros((len(idx), max(lengths), sequences.x[idx[0]].shape[1]), np.float32)
        y = None if sequences.y is None else np.full(x.shape[:2], np.nan, np.float32)
        mask = np.zeros(x.shape[:2], bool)
        for row, (i, n) in enumerate(zip(idx, lengths, strict=True)):
            x[row, :n], mask[row, :n] = sequences.x[i], True
            if y is not None:
                y[row, :n] = sequences.y[i]
        yield (
            idx,
            torch.from_numpy(x).to(device),
            None if y is None else torch.from_numpy(y).to(device),
            torch.from_numpy(mask).to(device),
        )


@torch.no_grad()
def key_losses(model: StreamingModel, sequences: KeySequences, batch_keys: int = 64) -> np.ndarray:
    """Each key's mean training loss per event, its state carried from a fresh start (eval mode); NaN for a
    key with no event that counts."""
    was_training = model.training
    model.eval()
    found = np.full(len(sequences), np.nan)
    try:
        for idx, x, y, mask in padded_batches(sequences, batch_keys, next(model.parameters()).device):
            per_event, weights, _ = event_losses(model, x, y, None, mask)
            total = (per_event * weights).sum(1).double().cpu().numpy()
            count = weights.sum(1).double().cpu().numpy()
            found[idx] = np.where(count > 0, total / np.maximum(count, 1.0), np.nan)
    finally:
        model.train(was_training)
    return found


def robust_cut(losses: np.ndarray, k: float = DEFAULT_K) -> float:
    """The loss beyond which a key is left out: ``median + k * 1.4826 * MAD`` of the finite positive
    ``losses`` on a log scale (inf when there are none). A mean of per-event surprisals is a positive,
    right-skewed quantity (a session with more free choices has a higher mean loss), so its spread is
    relative: on the log scale its bulk is close to symmetric and the cut is a ratio to the median loss
    (at least ``MIN_LOG_SPREAD`` is taken as the spread)."""
    finite = losses[np.isfinite(losses) & (losses > 0)]
    if finite.size == 0:
        return float("inf")
    log = np.log(finite)
    median = float(np.median(log))
    spread = max(MAD_TO_SD * float(np.median(np.abs(log - median))), MIN_LOG_SPREAD)
    return float(np.exp(median + k * spread))


@dataclass
class TrimmedKeys:
    """``fit``'s ``select_keys``: the keys to train on in each epoch (all of them in the warm-up epochs).

    ``history`` records the share of keys left out in each epoch; :attr:`contamination` is the last one.
    """

    k: float = DEFAULT_K
    warmup_epochs: int = 1
    max_share: float = DEFAULT_MAX_SHARE
    batch_keys: int = 64
    history: list[float] = field(default_factory=list)

    def __call__(self, model: StreamingModel, sequences: KeySequences, epoch: int) -> KeySequences:
        if epoch < self.warmup_epochs or len(sequences) == 0:
            return sequences
        losses = key_losses(model, sequences, self.batch_keys)
        ranked = np.argsort(-np.nan_to_num(losses, nan=-np.inf), kind="stable")  # most surprising first
        beyond = int(np.sum(losses > robust_cut(losses, self.k)))
        dropped = ranked[: min(beyond, int(self.max_share * len(sequences)))]
        self.history.append(dropped.size / len(sequences))
        if dropped.size == 0:
            return sequences
        kept = np.ones(len(sequences), bool)
        kept[dropped] = False
        return sequences.subset(np.flatnonzero(kept).tolist())

    @property
    def contamination(self) -> float:
        """The share of keys left out in the last epoch (0 before any)."""
        return self.history[-1] if self.history else 0.0
