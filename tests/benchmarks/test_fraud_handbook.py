"""The fraud handbook's protocol in ``benchmarks/fraud_handbook.py`` (used by ``benchmarks/real_data.py``), on
a few hand-made transactions: the window features against a brute-force count, same-second rows of different
keys included (the case pandas' grouped ``rolling(on=time)`` put back in the wrong rows), the delayed terminal
risk, the known-compromised filter and CP@k."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import fraud_handbook as fh

DAY = pd.Timedelta(days=1)
START = pd.Timestamp("2018-07-01")


def transactions(seed: int = 0, n: int = 400) -> pd.DataFrame:
    """Random transactions over 60 days, many in the same second across customers and terminals."""
    rng = np.random.default_rng(seed)
    seconds = np.sort(rng.integers(0, 60 * 24, n)) * 3600  # on the hour: many same-second rows
    return pd.DataFrame({
        "TRANSACTION_ID": np.arange(n),
        "TX_DATETIME": START + pd.to_timedelta(seconds, unit="s"),
        "CUSTOMER_ID": rng.integers(0, 6, n),
        "TERMINAL_ID": rng.integers(0, 5, n),
        "TX_AMOUNT": np.round(rng.uniform(0, 300, n), 2),
        "TX_TIME_DAYS": seconds // 86_400,
        "TX_FRAUD": (rng.random(n) < 0.2).astype(np.int8),
    })  # fmt: skip


def test_window_features_equal_a_brute_force_count_with_same_second_rows() -> None:
    df = transactions()
    assert df["TX_DATETIME"].duplicated().sum() > 10  # the case that broke the pandas version
    out = fh.baseline_features(df)
    for i in range(len(df)):
        t = df.at[i, "TX_DATETIME"]
        mine = df.iloc[: i + 1]
        mine = mine[mine["CUSTOMER_ID"] == df.at[i, "CUSTOMER_ID"]]
        term = df[df["TERMINAL_ID"] == df.at[i, "TERMINAL_ID"]]
        for w in fh.WINDOWS:
            cust = mine[mine["TX_DATETIME"] > t - w * DAY]
            assert out.at[i, f"CUSTOMER_ID_NB_TX_{w}DAY_WINDOW"] == len(cust)
            assert np.isclose(out.at[i, f"CUSTOMER_ID_AVG_AMOUNT_{w}DAY_WINDOW"], cust["TX_AMOUNT"].mean())
            # the terminal's window ends a delay before the transaction: only labels known by then
            known = term[(term["TX_DATETIME"] > t - (fh.DELAY_DAYS + w) * DAY)
                         & (term["TX_DATETIME"] <= t - fh.DELAY_DAYS * DAY)]  # fmt: skip
            assert out.at[i, f"TERMINAL_ID_NB_TX_{w}DAY_WINDOW"] == len(known)
            risk = known["TX_FRAUD"].mean() if len(known) else 0.0
            assert np.isclose(out.at[i, f"TERMINAL_ID_RISK_{w}DAY_WINDOW"], risk)


def test_known_compromised_cards_leave_the_test_days_as_their_labels_become_known() -> None:
    rows = [  # (day, customer, fraud)
        (115, 1, 1),  # customer 1: compromised in the training week -> out of every test day
        (125, 2, 1),  # customer 2: fraud on delay day 125 = 121 + 4 -> known from test day 133 on
        *[(d, c, 0) for d in range(129, 136) for c in (1, 2, 3)],
    ]
    df = pd.DataFrame(rows, columns=["TX_TIME_DAYS", "CUSTOMER_ID", "TX_FRAUD"])
    kept = df[fh.known_compromised_filter(df)]
    assert 1 not in set(kept["CUSTOMER_ID"])
    assert sorted(kept.loc[kept["CUSTOMER_ID"] == 2, "TX_TIME_DAYS"]) == [129, 130, 131, 132]
    assert len(kept[kept["CUSTOMER_ID"] == 3]) == 7


def test_card_precision_counts_cards_once_and_drops_those_found_earlier() -> None:
    test = pd.DataFrame({
        "TX_TIME_DAYS": [129, 129, 129, 130, 130],
        "CUSTOMER_ID": [1, 1, 2, 1, 3],
        "TX_FRAUD": [0, 1, 0, 1, 0],
    })  # fmt: skip
    scores = np.array([0.9, 0.1, 0.5, 0.99, 0.2])
    # day 129, top 1: card 1 (max 0.9, a fraud that day) -> 1.0; day 130: card 1 was found, card 3 -> 0.0
    assert fh.card_precision_at_k(test, scores, k=1) == 0.5
