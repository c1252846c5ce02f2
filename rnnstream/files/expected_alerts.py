"""The alert line of unlabelled sessions from the share of sessions the model *expects* to alert.

fit-file's line for session-like data flags at most ``target_fpr`` of the held-out sessions (over each
session's highest score). An unlabelled log's held-out sessions hold its anomalies too (a few percent of
HDFS-style blocks), and an anomaly scores above nearly every normal session: with 3% anomalies and a 1%
target, the top 1% of the held-out part is all anomalies and the line lands among them, flagging ~0% of
normal sessions and missing the milder anomalies (``benchmarks/log_sessions.py``, mixed: 0.0-0.3% of normal
test sessions flagged against a 1% target). Robust fits of the held-out scores (median/MAD) do not help:
normal sessions' highest surprisals are heavy-tailed themselves.

A next-token model says more than the score of the token that came: at each event it gives the probability
of every token, so the chance that this event alerts at a line ``p`` (a token of probability ``<= p`` comes)
is ``r = sum of the probabilities <= p``, whatever token did come, and a session alerts with probability
``1 - prod(1 - r)`` over its events (its end event included). Averaged over the held-out sessions this is
the share of sessions the model expects to alert; the line is the highest ``p`` whose expected share is at
most ``target_fpr``. Each held-out session adds a probability, not a 0/1 alert, and an anomalous session's
contexts are mostly normal ones, so a few percent of anomalies move the expected share by a few percent of
itself, where they set the empirical quantile outright.
"""

from __future__ import annotations

import math
from statistics import NormalDist

import numpy as np

MODEL_EXPECTED = "model_expected"  # AlertThreshold.null of a line chosen on the expected share
MAX_CELLS = 20_000_000  # events x tokens kept to estimate the line (a seeded sample of sessions beyond it)
_SEARCH_STEPS = 60


def expected_alert_share(distributions: list[np.ndarray], p: float) -> float:
    """The mean over keys of ``1 - prod(1 - r)``, ``r`` = each event's probability mass on tokens ``<= p``."""
    return _share(*_stacked(distributions), p)


def expected_alert_probability(distributions: list[np.ndarray], target_fpr: float) -> float:
    """The highest token probability ``p`` (an event alerts when its token's probability is ``<= p``) at
    which the sessions are expected to alert at most ``target_fpr`` of the time (bisection on ``log p``,
    then the highest probability of the distributions at or below it)."""
    probs, starts = _stacked(distributions)
    lo, hi = -30.0, 0.0  # log p: e^-30 alerts on (almost) nothing, p = 1 on everything
    if _share(probs, starts, float(np.exp(lo))) > target_fpr:
        return float(np.exp(lo))
    for _ in range(_SEARCH_STEPS):
        mid = 0.5 * (lo + hi)
        if _share(probs, starts, float(np.exp(mid))) <= target_fpr:
            lo = mid
        else:
            hi = mid
    below = probs[probs <= np.exp(lo)]  # the step's own probability: a line that flags no more than it
    return float(below.max()) if below.size else float(np.exp(lo))


def expected_line(
    distributions: list[np.ndarray], session_scores: np.ndarray, target_fpr: float
) -> float | None:
    """The score line (alert when ``score >= line``) at which the sessions of ``distributions`` are expected
    to alert at most ``target_fpr`` of the time, if the sessions observed to alert there (highest scores
    ``session_scores``) are no more than a share ``target_fpr`` of normal sessions would give in 19 of 20
    draws (:func:`binomial_upper`): a model sharper than the data (one that expects too few alerts) does not
    lower a line past what the held-out sessions allow. None when that check fails."""
    p = expected_alert_probability(distributions, target_fpr)
    line = float(np.float32(1.0) - np.float32(p))  # score = 1 - P(token) in float32: alerts iff P <= p
    observed = int(np.sum(np.asarray(session_scores, np.float64) >= line))
    return line if observed <= binomial_upper(len(session_scores), target_fpr) else None


def binomial_upper(n: int, p: float, level: float = 0.95) -> int:
    """The smallest ``k`` with ``P(Binomial(n, p) <= k) >= level`` (a normal approximation where the
    first term underflows: thousands of expected counts)."""
    pmf = (1.0 - p) ** n
    if pmf < 1e-300:
        return math.ceil(n * p + NormalDist().inv_cdf(level) * math.sqrt(n * p * (1.0 - p)))
    cdf, k = pmf, 0
    while cdf < level and k < n:
        pmf *= (n - k) / (k + 1) * p / (1.0 - p)
        k += 1
        cdf += pmf
    return k


def _stacked(distributions: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    kept = [d for d in distributions if d.shape[0]]
    if not kept:
        return np.zeros((0, 1), np.float32), np.zeros(0, np.int64)
    starts = np.r_[0, np.cumsum([d.shape[0] for d in kept])[:-1]].astype(np.int64)
    return np.concatenate(kept), starts


def _share(probs: np.ndarray, starts: np.ndarray, p: float) -> float:
    if starts.size == 0:
        return 0.0
    r = np.where(probs <= p, probs, 0.0).sum(1, dtype=np.float64)
    log_quiet = np.add.reduceat(np.log1p(-np.minimum(r, 1.0 - 1e-12)), starts)
    return float(np.mean(-np.expm1(log_quiet)))


def sample_within(lengths: np.ndarray, width: int, seed: int = 0) -> np.ndarray:
    """A seeded sample of key indices whose events x ``width`` tokens fit ``MAX_CELLS`` (all if they do)."""
    if int(lengths.sum()) * width <= MAX_CELLS:
        return np.arange(lengths.size)
    order = np.random.default_rng(seed).permutation(lengths.size)
    keep = np.cumsum(lengths[order]) * width <= MAX_CELLS
    return np.sort(order[keep])
