"""What fit-file holds out of a user's file, and what it learns from that part alone.

- :func:`split_tails`: long-lived keys hold out each key's last events (their state carried into them);
  session-like data (:func:`is_session_like`: many short keys) holds out whole keys, scored from a fresh
  state as new sessions are, because a session's tail is its ending;
- :func:`validation_sequences`: what early stopping watches, :func:`patience_epochs`: how long it waits;
- :func:`holdout_outputs` / :func:`holdout_metrics`: the model's outputs on the held-out part and
  class-balanced quality figures (never plain accuracy on a rare label);
- :func:`alert_threshold`: the stored decision threshold (:mod:`rnnstream.files.alert_threshold`), from the
  held-out part (the training events when nothing is held out), per session for session-like data; long
  unlabelled keys with too few held-out events for the target share: every event after a warm-up.
"""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import torch

from rnnstream.files.alert_threshold import TARGET_FPR_ALL_EVENTS, AlertThreshold, choose_threshold
from rnnstream.files.expected_alerts import MODEL_EXPECTED, expected_line, sample_within
from rnnstream.rnn_core import metrics
from rnnstream.rnn_core.model import StreamingModel
from rnnstream.rnn_core.token_distribution import next_token_distributions
from rnnstream.rnn_core.training import KeySequences, planned_steps

MIN_KEY_EVENTS_FOR_HOLDOUT = 5
SESSION_MIN_KEYS = 20
SESSION_MAX_MEDIAN_EVENTS = 50
MIN_PATIENCE_STEPS = 100  # early stopping waits at least this many optimizer steps without improvement
MIN_EXCEEDANCES = 10  # a target share of alerts is estimated from at least this many alerting events
WARMUP_EVENTS = 100  # a key's first events (fresh state) do not set the threshold
# a session line stays this far above a held-out score it does not flag (20x the scorer's documented
# difference from the forward pass, rnn_core/slab_step.py)
SCORE_TOLERANCE = 1e-5


def is_session_like(sequences: KeySequences) -> bool:
    """Many short keys (sessions, jobs, requests): at least ``SESSION_MIN_KEYS`` keys of a median of at most
    ``SESSION_MAX_MEDIAN_EVENTS`` events. Their tails are their endings, so holding tails out would teach
    a model never to see how a key ends."""
    lengths = np.fromiter((len(x) for x in sequences.x), dtype=np.int64, count=len(sequences.x))
    return lengths.size >= SESSION_MIN_KEYS and float(np.median(lengths)) <= SESSION_MAX_MEDIAN_EVENTS


def split_tails(
    sequences: KeySequences, holdout: float, by_key: bool = False, seed: int = 0
) -> tuple[KeySequences, np.ndarray]:
    """The training part and where each key's held-out part starts (``cuts[i]``; ``len`` = none held out).

    Long-lived keys: each key's last ``holdout`` of events is held out (its state carried into it).
    ``by_key`` (session-like data): a seeded ``holdout`` share of whole keys is held out, scored from a fresh
    state as a new session would be, and the other keys train whole.
    """
    lengths = [len(x) for x in sequences.x]
    if by_key:
        held = np.random.default_rng(seed).permutation(len(lengths))[: round(holdout * len(lengths))]
        cuts = list(lengths)
        for i in held:
            cuts[i] = 0
    else:
        cuts = [n - (int(n * holdout) if n >= MIN_KEY_EVENTS_FOR_HOLDOUT else 0) for n in lengths]
    cuts_arr = np.asarray(cuts, dtype=np.int64)
    keep = [i for i, c in enumerate(cuts) if c > 0]  # a key held out whole has no training part
    heads = KeySequences(
        keys=tuple(sequences.keys[i] for i in keep),
        x=tuple(sequences.x[i][: cuts[i]] for i in keep),
        y=None if sequences.y is None else tuple(sequences.y[i][: cuts[i]] for i in keep),
        times_ms=None
        if sequences.times_ms is None
        else tuple(sequences.times_ms[i][: cuts[i]] for i in keep),
    )
    return heads, cuts_arr


def validation_sequences(sequences: KeySequences, cuts: np.ndarray, head: str) -> KeySequences | None:
    """What early stopping watches: classifiers see whole keys with the training labels hidden (state
    carried into the tail); forecast/next-token heads (whose loss ignores labels) see the tails alone."""
    has_tail = [i for i, (x, c) in enumerate(zip(sequences.x, cuts, strict=True)) if c < len(x)]
    if not has_tail:
        return None
    if head in ("binary", "multiclass") and sequences.y is not None:
        ys = []
        for i in has_tail:
            y = sequences.y[i].copy()
            y[: cuts[i]] = np.nan
            ys.append(y)
        return KeySequences(
            keys=tuple(sequences.keys[i] for i in has_tail),
            x=tuple(sequences.x[i] for i in has_tail),
            y=tuple(ys),
        )
    return KeySequences(
        keys=tuple(sequences.keys[i] for i in has_tail),
        x=tuple(sequences.x[i][cuts[i] :] for i in has_tail),
    )


def patience_epochs(train: KeySequences, patience: int, chunk_len: int, batch_keys: int) -> int:
    """Epochs without improvement before early stopping: ``patience``, or more when an epoch is only a few
    optimizer steps (one short series: ~13), so that at least ``MIN_PATIENCE_STEPS`` steps are waited for.
    A held-out tail of a few hundred events is a noisy judge; 3 epochs of 13 steps stopped one short series'
    training at its 2nd-4th epoch (benchmarks/univariate_drift.py, 20 series: NAB 31.2 -> 39.1)."""
    steps = max(1, planned_steps(train, chunk_len, batch_keys)) if len(train) else 1
    return max(patience, math.ceil(MIN_PATIENCE_STEPS / steps))


@torch.no_grad()
def holdout_outputs(
    model: StreamingModel, sequences: KeySequences, cuts: np.ndarray
) -> tuple[np.ndarray, np.ndarray | None]:
    """Model outputs ``[N, K]`` (and labels) of the held-out tails, each key's state carried from its
    training part (forward == step)."""
    outs, ys = [], []
    for i, x in enumerate(sequences.x):
        if cuts[i] >= len(x):
            continue
        out, _ = model(torch.from_numpy(np.ascontiguousarray(x)).unsqueeze(0))
        outs.append(out[0, cuts[i] :].numpy())
        if sequences.y is not None:
            ys.append(sequences.y[i][cuts[i] :])
    if not outs:
        return np.zeros((0, model.output_size), np.float32), None
    return np.concatenate(outs), (np.concatenate(ys) if ys else None)


def holdout_metrics(
    out: np.ndarray, y: np.ndarray | None, names: list[str], head: str, threshold: AlertThreshold | None
) -> dict[str, float]:
    """Quality on the held-out tails: class-balanced for labels (PR-AUC, recall and precision at the stored
    threshold, the positive rate), never plain accuracy on a rare label."""
    if out.shape[0] == 0:
        return {}
    if head == "next_token":
        rank = out[:, names.index("rank")]
        return {"top1_accuracy": float(np.mean(rank < 0.5)), "top5_accuracy": float(np.mean(rank < 4.5))}
    if head == "forecast":
        found = {"mean_error_z": float(np.mean(out[:, names.index("error_z")]))}
        if threshold is not None:
            found["alert_rate"] = float(np.mean(out[:, 0].astype(np.float64) >= threshold.value))
        return found
    if y is None:
        return {}
    ok = np.isfinite(y)
    truth = y[ok].astype(int)
    if head == "multiclass":
        pred = out[ok].argmax(1)
        return {"accuracy": float(np.mean(pred == truth)), "macro_f1": metrics.macro_f1(truth, pred)}
    score = out[ok, 0].astype(np.float64)
    found = {"positive_rate": float(truth.mean()) if truth.size else 0.0}
    if 0 < truth.sum() < truth.size:
        found["pr_auc"] = metrics.pr_auc(truth, score)
    if threshold is not None and truth.sum() > 0:
        flagged = score >= threshold.value
        found["recall_at_threshold"] = float(flagged[truth == 1].mean())
        found["precision_at_threshold"] = float(truth[flagged].mean()) if flagged.any() else 0.0
    return found


def alert_threshold(
    model: StreamingModel,
    sequences: KeySequences,
    cuts: np.ndarray,
    held_out: tuple[np.ndarray, np.ndarray | None],
    head: str,
    per_session: bool,
    target_fpr: float,
) -> AlertThreshold | None:
    """The alert threshold from the held-out outputs ``held_out`` (of ``cuts``), or from every event when
    nothing is held out. ``per_session``: a session alerts when any of its events does, so the share of
    normal sessions is bounded (over each key's highest score); labelled binary data stays per event.

    Long-lived keys without labels: a share of ``target_fpr`` is only estimated well from at least
    ``MIN_EXCEEDANCES / target_fpr`` events (1,000 at 1%); with fewer held out (one short series: ~200),
    the threshold is chosen on every event of every key after its first ``warmup_events`` (the held-out
    tails and the training part, whose events the state has warmed up to), see :func:`warm_events_outputs`.
    """
    out, y = held_out
    if head != "binary" and not per_session and out.shape[0] < MIN_EXCEEDANCES / target_fpr:
        pooled = warm_events_outputs(model, sequences)
        if pooled.shape[0] > out.shape[0]:
            chosen = choose_threshold(head, pooled[:, 0], None, target_fpr)
            return None if chosen is None else replace(chosen, rule=TARGET_FPR_ALL_EVENTS)
    if out.shape[0] == 0:
        cuts = np.zeros_like(cuts)
        out, y = holdout_outputs(model, sequences, cuts)
    scores = out[:, 0]
    if per_session and head != "binary" and scores.size:
        sizes = np.asarray([len(x) - c for x, c in zip(sequences.x, cuts, strict=True) if c < len(x)])
        scores = np.maximum.reduceat(scores, np.r_[0, np.cumsum(sizes)[:-1]].astype(np.int64))
    chosen = choose_threshold(head, scores, y if head == "binary" else None, target_fpr)
    if per_session and head == "next_token" and chosen is not None:
        chosen = lower_if_expected(chosen, scores, model, sequences, cuts, target_fpr)
        return replace(chosen, value=between_scores(chosen.value, scores))
    return chosen


def between_scores(value: float, scores: np.ndarray) -> float:
    """``value`` moved to ``SCORE_TOLERANCE`` above the highest of ``scores`` below it (at most halfway to the
    lowest at or above it, or to 1): the same scores alert, and none sits within float noise of the line.
    Sessions share their highest score where their worst event is the same one in the same context (the
    held-out sessions of tests/files/test_session_end.py: the top 6 of 120 tie), and a line one float step
    above such a tie flagged 4.5% of normal test sessions once the scorer's GRU step came within 5e-7 of
    the forward pass instead of equal to it. (Halfway between the scores, measured: a stricter line where
    the gap is wide, mixed log_sessions F1 0.551 / 0.645 / 0.707 -> 0.529 / 0.609 / 0.669.)"""
    s = np.asarray(scores, np.float64)
    below, above = s[s < value], s[s >= value]
    if below.size == 0:
        return value
    high = float(above.min()) if above.size else 1.0
    low = float(below.max())
    return min(low + SCORE_TOLERANCE, 0.5 * (low + high))


def lower_if_expected(
    chosen: AlertThreshold,
    session_scores: np.ndarray,
    model: StreamingModel,
    sequences: KeySequences,
    cuts: np.ndarray,
    target_fpr: float,
) -> AlertThreshold:
    """``chosen`` (at most ``target_fpr`` of the held-out sessions, highest scores ``session_scores``,
    observed to alert) or the lower line at which the model expects that share of them to alert
    (:func:`~rnnstream.files.expected_alerts.expected_line`, from its next-token distributions over the
    held-out sessions, a seeded sample of them beyond ``MAX_CELLS``)."""
    held = [i for i, (x, c) in enumerate(zip(sequences.x, cuts, strict=True)) if c < len(x)]
    lengths = np.asarray([len(sequences.x[i]) for i in held], dtype=np.int64)
    held = [held[j] for j in sample_within(lengths, model.head.out_features)]
    dists = next_token_distributions(model, sequences.subset(held))
    dists = [d[cuts[i] :] for d, i in zip(dists, held, strict=True)]
    line = expected_line(dists, session_scores, target_fpr)
    if line is None or line >= chosen.value:
        return chosen
    return replace(chosen, value=line, null=MODEL_EXPECTED)


def warmup_events(n: int) -> int:
    """A key's first events whose scores the threshold ignores: its state (recurrent and adaptive) starts
    from nothing there, which a warmed-up key never sees again (``WARMUP_EVENTS``, at most a tenth)."""
    return min(WARMUP_EVENTS, n // 10)


@torch.no_grad()
def warm_events_outputs(model: StreamingModel, sequences: KeySequences) -> np.ndarray:
    """Outputs ``[N, K]`` of each key's events after its :func:`warmup_events` (from a fresh state)."""
    outs = []
    for x in sequences.x:
        out, _ = model(torch.from_numpy(np.ascontiguousarray(x)).unsqueeze(0))
        outs.append(out[0, warmup_events(len(x)) :].numpy())
    return np.concatenate(outs) if outs else np.zeros((0, model.output_size), np.float32)
