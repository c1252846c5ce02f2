"""The Fraud Detection Handbook's data protocol, for ``benchmarks/real_data.py``: its split, its 15 baseline
features and its Card Precision@k, reproduced from the handbook's ``shared_functions.py`` and Chapter 3.

- **Features** (:func:`baseline_features`): the amount, weekend and night flags; per customer the number of
  transactions and their mean amount over the last 1, 7 and 30 days (the current one included); per terminal
  the number of transactions and the fraud rate ("risk") over 1, 7 and 30 days *shifted back by the 7-day
  delay*, so a transaction only sees labels that were known when it happened (frauds are confirmed a week
  late). Each window is pandas' ``rolling("Nd")`` over a key's earlier transactions, as in the handbook.
- **Split** (:func:`handbook_split`): train on days 115-121, wait out the delay week 122-128, test on days
  129-135 without the cards already known to be compromised (on test day 129+d, every customer with a fraud
  in days 115 ... 121+d). That leaves 58,264 transactions and 385 frauds, the handbook's counts.
- **CP@k** (:func:`card_precision_at_k`): day by day, each card's score is its highest that day; the share
  of the ``k`` highest-scored cards with a fraud that day, cards found on earlier days left out; the mean
  over the days.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

TRAIN_DAYS = (115, 121)
DELAY_DAYS = 7
TEST_DAYS = (129, 135)
WINDOWS = (1, 7, 30)
EXPECTED_TEST = (58_264, 385)  # transactions and frauds of the test week, known-compromised cards removed
KEY = "CUSTOMER_ID"
TIME = "TX_DATETIME"
LABEL = "TX_FRAUD"
FEATURES: tuple[str, ...] = (
    "TX_AMOUNT",
    "TX_DURING_WEEKEND",
    "TX_DURING_NIGHT",
    *(f"CUSTOMER_ID_{what}_{w}DAY_WINDOW" for w in WINDOWS for what in ("NB_TX", "AVG_AMOUNT")),
    *(f"TERMINAL_ID_{what}_{w}DAY_WINDOW" for w in WINDOWS for what in ("NB_TX", "RISK")),
)
_RAW = ("TRANSACTION_ID", TIME, KEY, "TERMINAL_ID", "TX_AMOUNT", "TX_TIME_DAYS", LABEL)


@dataclass(frozen=True)
class HandbookSplit:
    """The training week, the stream scored (``score``: every transaction from ``score_from_day`` through
    the test week, in time order) and which of its rows are the test set (known-compromised cards out)."""

    train: pd.DataFrame
    score: pd.DataFrame
    test_rows: np.ndarray  # positions in ``score``

    @property
    def test(self) -> pd.DataFrame:
        return self.score.iloc[self.test_rows]


def load_transactions(path: Path, first_day: int, last_day: int) -> pd.DataFrame:
    """Days ``first_day`` ... ``last_day`` of the handbook's file, in transaction (= time) order."""
    df = pd.read_parquet(path, columns=list(_RAW), filters=[("TX_TIME_DAYS", ">=", first_day),
                                                             ("TX_TIME_DAYS", "<=", last_day)])  # fmt: skip
    return df.sort_values("TRANSACTION_ID", kind="stable").reset_index(drop=True)


def _rolling(df: pd.DataFrame, key: str, column: str, days: int, how: str) -> np.ndarray:
    """``how`` (sum or count) of ``column`` over each key's transactions in the last ``days`` days, the
    current one included and later ones of the same second not (pandas' right-closed ``rolling("Nd")`` over
    a key's time-ordered rows), aligned with ``df``'s rows.

    Done with sorted arrays: pandas' grouped ``rolling(on=...)`` indexes its result by time, and rows of
    different keys in the same second then cannot be put back in place."""
    times = df[TIME].to_numpy().astype("datetime64[ms]").astype(np.int64)
    keys = df[key].to_numpy().astype(np.int64)
    order = np.lexsort((np.arange(len(df)), times, keys))  # by key, time, then file order
    combined = keys[order] * (1 << 42) + times[order]  # 2**42 ms: 139 years, wider than any time here
    start = np.searchsorted(combined, combined - days * 86_400_000, side="right")
    end = np.arange(len(df))
    if how == "count":
        result = (end - start + 1).astype(np.float64)
    else:
        # in integer hundredths (amounts have 2 decimals, labels none), so window sums are exact
        cents = np.rint(df[column].to_numpy(dtype=np.float64)[order] * 100).astype(np.int64)
        cumulative = np.concatenate([[0], np.cumsum(cents)])
        result = (cumulative[end + 1] - cumulative[start]) / 100.0
    out = np.empty(len(df), dtype=np.float64)
    out[order] = result
    return out


def baseline_features(df: pd.DataFrame, delay: int = DELAY_DAYS) -> pd.DataFrame:
    """``df`` (time-ordered, with its history) plus the handbook's 15 baseline features (module docstring).

    A feature is exact for a transaction only when ``df`` holds its key's last 30 + ``delay`` days."""
    out = df.copy()
    out["TX_DURING_WEEKEND"] = (out[TIME].dt.weekday >= 5).astype(np.int8)
    out["TX_DURING_NIGHT"] = (out[TIME].dt.hour <= 6).astype(np.int8)
    for w in WINDOWS:
        count = _rolling(out, KEY, "TX_AMOUNT", w, "count")
        out[f"CUSTOMER_ID_NB_TX_{w}DAY_WINDOW"] = count
        out[f"CUSTOMER_ID_AVG_AMOUNT_{w}DAY_WINDOW"] = _rolling(out, KEY, "TX_AMOUNT", w, "sum") / count
    frauds_delay = _rolling(out, "TERMINAL_ID", LABEL, delay, "sum")
    tx_delay = _rolling(out, "TERMINAL_ID", LABEL, delay, "count")
    for w in WINDOWS:  # the window [t - delay - w, t - delay]: labels a week old, known by now
        tx = _rolling(out, "TERMINAL_ID", LABEL, delay + w, "count") - tx_delay
        frauds = _rolling(out, "TERMINAL_ID", LABEL, delay + w, "sum") - frauds_delay
        out[f"TERMINAL_ID_NB_TX_{w}DAY_WINDOW"] = tx
        out[f"TERMINAL_ID_RISK_{w}DAY_WINDOW"] = np.divide(
            frauds, tx, out=np.zeros_like(frauds), where=tx > 0
        )
    return out


def known_compromised_filter(df: pd.DataFrame) -> np.ndarray:
    """Row mask of the test week without the known-compromised cards (handbook's ``get_train_test_set``):
    on test day 129+d, a customer with a fraud in days 115 ... 121+d is dropped."""
    mask = np.zeros(len(df), dtype=bool)
    days = df["TX_TIME_DAYS"].to_numpy()
    frauds = df[LABEL].to_numpy() == 1
    customers = df[KEY].to_numpy()
    for d in range(TEST_DAYS[1] - TEST_DAYS[0] + 1):
        known_until = TRAIN_DAYS[1] + d  # the training week and the delay days whose labels are known
        known = np.unique(customers[frauds & (days >= TRAIN_DAYS[0]) & (days <= known_until)])
        today = days == TEST_DAYS[0] + d
        mask |= today & ~np.isin(customers, known)
    return mask


def handbook_split(path: Path, score_from_day: int = TRAIN_DAYS[0]) -> HandbookSplit:
    """The handbook's train week and test week (features from 30 + 7 days of history before each day); the
    stream scored runs from ``score_from_day`` through the test week, so each card's state has seen its
    earlier transactions (the delay week's included: their labels are not needed, only their features)."""
    first = min(score_from_day, TRAIN_DAYS[0]) - max(WINDOWS) - DELAY_DAYS
    df = baseline_features(load_transactions(path, first, TEST_DAYS[1]))
    days = df["TX_TIME_DAYS"].to_numpy()
    train = df[(days >= TRAIN_DAYS[0]) & (days <= TRAIN_DAYS[1])].reset_index(drop=True)
    score = df[(days >= score_from_day) & (days <= TEST_DAYS[1])].reset_index(drop=True)
    test_rows = np.flatnonzero(known_compromised_filter(score))
    found = (len(test_rows), int(score[LABEL].to_numpy()[test_rows].sum()))
    if found != EXPECTED_TEST:
        raise AssertionError(f"handbook test set: {found} transactions/frauds, expected {EXPECTED_TEST}")
    return HandbookSplit(train=train, score=score, test_rows=test_rows)


def card_precision_at_k(test: pd.DataFrame, scores: np.ndarray, k: int = 100) -> float:
    """The handbook's CP@k (``card_precision_top_k``, removing cards detected on earlier days)."""
    frame = pd.DataFrame({"day": test["TX_TIME_DAYS"].to_numpy(), "card": test[KEY].to_numpy(),
                          "fraud": test[LABEL].to_numpy(), "score": scores})  # fmt: skip
    detected: set[int] = set()
    per_day = []
    for _, day in frame.groupby("day", sort=True):
        day = day[~day["card"].isin(detected)]
        cards = day.groupby("card")[["score", "fraud"]].max().sort_values("score", ascending=False)
        top = cards.head(k)
        found = top.index[top["fraud"] == 1]
        per_day.append(len(found) / k)
        detected.update(found.tolist())
    return float(np.mean(per_day))
