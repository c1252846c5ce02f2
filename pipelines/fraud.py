"""Fraud pipeline: card transactions keyed by card; a binary head scores each transaction.

Every card has habits: a home country, a typical amount, three favourite merchant categories, an online
share; it travels now and then, and sometimes shops several times within minutes. Each of these habits
differs from card to card, so a single transaction says little: a $1.99 online purchase, a $900 TV, a
purchase in Japan or four purchases in an hour are all normal for some card. Fraud shows in how an event
departs from its own card's history:

- ``card_testing``: a burst of tiny online amounts seconds apart, then one large purchase;
- ``account_takeover``: from some event on, the card's habits change abruptly (country, categories,
  amounts, channel, pace);
- ``impossible_travel``: an in-person purchase abroad minutes after an in-person purchase at home;
- ``velocity``: many ordinary-looking purchases within minutes;
- ``compromised_merchant``: the card paid at one of the (few, rarely used) breached merchants, and a few
  events later online purchases abroad begin.

Every event of an episode is labelled fraud (``label`` = 1); the card is then closed, so an episode is the
last thing a card does in the stream. Truth: ``label`` and ``fraud_kind`` (index into :data:`FRAUD_KINDS`,
-1 for legitimate events).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pyarrow as pa

from rnnstream.pipelines.spec import (
    DEFAULT_START_MS,
    MS_PER_DAY,
    GeneratedStream,
    PipelineSpec,
    ServingDefaults,
    TrainingDefaults,
    assemble_table,
    group_positions,
    group_starts,
    split_counts,
    spread_first_gaps,
    time_order,
    times_from_gaps,
)
from rnnstream.rnn_core import metrics
from rnnstream.rnn_core.config import ModelConfig
from rnnstream.rnn_core.event_schema import KEY_COLUMN, TIME_COLUMN, EventSchema

NAME = "fraud"
SCHEMA_VERSION = 1

CATEGORIES: tuple[str, ...] = (
    "grocery",
    "restaurant",
    "fuel",
    "travel",
    "electronics",
    "fashion",
    "digital",
    "pharmacy",
    "entertainment",
    "utilities",
    "transit",
    "jewelry",
)
# Typical amount of a category relative to the card's typical amount.
_CATEGORY_SCALE = np.array([1.0, 0.8, 1.2, 5.0, 3.0, 1.5, 0.08, 0.6, 0.9, 1.8, 0.12, 4.0])
_DIGITAL, _ELECTRONICS, _JEWELRY = 6, 4, 11
COUNTRIES: tuple[str, ...] = ("US", "GB", "DE", "FR", "ES", "IT", "NL", "BR", "IN", "JP")
_COUNTRY_WEIGHTS = np.array([0.3, 0.12, 0.1, 0.1, 0.07, 0.07, 0.06, 0.07, 0.06, 0.05])
CHANNELS: tuple[str, ...] = ("pos", "online", "atm")
_POS, _ONLINE, _ATM = 0, 1, 2
_MERCHANTS_PER_CATEGORY = 5
MERCHANTS: tuple[str, ...] = tuple(f"m{i:03d}" for i in range(len(CATEGORIES) * _MERCHANTS_PER_CATEGORY))
# Breached merchants: small shops, rarely visited; in compromised_merchant episodes fraud follows a visit.
COMPROMISED_MERCHANTS: tuple[int, ...] = (7, 23, 41)
_MERCHANT_POPULARITY = np.tile([0.4, 0.25, 0.15, 0.12, 0.08], len(CATEGORIES))
_MERCHANT_POPULARITY[list(COMPROMISED_MERCHANTS)] = 0.004

FRAUD_KINDS: tuple[str, ...] = (
    "card_testing",
    "account_takeover",
    "impossible_travel",
    "velocity",
    "compromised_merchant",
)
_MIN_HISTORY = 8  # legitimate events a card has before an episode can start

SCHEMA = EventSchema(
    pipeline=NAME,
    version=SCHEMA_VERSION,
    numeric=("amount", "hour"),
    categorical=(
        ("merchant", MERCHANTS),
        ("category", CATEGORIES),
        ("country", COUNTRIES),
        ("channel", CHANNELS),
    ),
    has_label=True,
)


def generate(
    n_events: int,
    n_keys: int,
    seed: int,
    start_ms: int = DEFAULT_START_MS,
    fraud_rate: float = 0.3,
) -> GeneratedStream:
    """``n_events`` transactions of ``n_keys`` cards; ``fraud_rate`` of the cards end in a fraud episode.

    Episodes are 1-12 events long, so the share of fraudulent *events* is far lower: about 4% at the
    default rate and 40 events a card (the demo's density), fewer for cards with longer histories.
    """
    rng = np.random.default_rng(seed)
    counts = split_counts(rng, n_events, n_keys, minimum=20, spread=0.5)
    card, pos = group_positions(counts)
    starts = group_starts(counts)
    n = int(counts.sum())
    n_cat = len(CATEGORIES)
    n_country = len(COUNTRIES)

    # ---- card habits
    home = rng.choice(n_country, n_keys, p=_COUNTRY_WEIGHTS / _COUNTRY_WEIGHTS.sum())
    typical_amount = rng.lognormal(np.log(35.0), 0.7, n_keys)
    online_share = rng.beta(2.0, 5.0, n_keys)
    favourites = np.argsort(rng.random((n_keys, n_cat)), axis=1)[:, :3]
    fav_cum = np.cumsum(rng.dirichlet(np.full(3, 2.0), n_keys), axis=1)

    # ---- legitimate events
    pick = (rng.random(n)[:, None] > fav_cum[card]).sum(1).clip(0, 2)
    category = np.where(rng.random(n) < 0.85, favourites[card, pick], rng.integers(0, n_cat, n))
    channel = np.where(rng.random(n) < online_share[card], _ONLINE, _POS)
    channel = np.where(rng.random(n) < 0.04, _ATM, channel)
    merchant = _pick_merchant(rng, category)
    amount = typical_amount[card] * _CATEGORY_SCALE[category] * rng.lognormal(0.0, 0.5, n)
    amount = np.where(channel == _ATM, 20.0 * np.ceil(amount / 20.0) + 20.0, amount)
    country = home[card].copy()
    abroad_online = (channel == _ONLINE) & (rng.random(n) < 0.15)
    country[abroad_online] = rng.integers(0, n_country, int(abroad_online.sum()))
    # trips: a run of 2-6 events abroad, entered and left after a long gap
    idx = np.arange(n)
    trip_start = (rng.random(n) < 0.015) & (pos > 0)
    trip_len = rng.integers(2, 7, n)
    trip_country = (home[card] + rng.integers(1, n_country, n)) % n_country
    last_start = np.maximum.accumulate(np.where(trip_start, idx, -1))
    in_trip = (last_start >= starts[card]) & (idx - last_start < trip_len[np.maximum(last_start, 0)])
    travelling = in_trip & (channel != _ONLINE)
    country[travelling] = trip_country[last_start[travelling]]
    # gaps: mostly hours apart, some shopping trips minutes apart
    short = rng.random(n) < 0.2
    gap_s = np.where(short, rng.lognormal(np.log(15 * 60), 0.8, n), rng.lognormal(np.log(9 * 3600), 1.0, n))
    trip_edge = trip_start | (~in_trip & np.r_[False, in_trip[:-1]])
    gap_s = np.where(trip_edge, np.maximum(gap_s, 8 * 3600), gap_s)
    spread_first_gaps(rng, gap_s, counts, 2 * 86400)

    # ---- fraud episodes at the end of a card's events
    kind = rng.integers(0, len(FRAUD_KINDS), n_keys)
    length = np.select(
        [kind == 0, kind == 1, kind == 2, kind == 3, kind == 4],
        [
            rng.integers(3, 7, n_keys) + 1,
            rng.integers(4, 11, n_keys),
            rng.integers(1, 4, n_keys),
            rng.integers(6, 13, n_keys),
            rng.integers(2, 5, n_keys),
        ],
    )
    gap_before = rng.integers(1, 6, n_keys)  # compromised merchant: events between the visit and the fraud
    has = (rng.random(n_keys) < fraud_rate) & (counts >= _MIN_HISTORY + length + gap_before + 1)
    length = np.where(has, length, 0)
    episode_start = counts - length
    j = pos - episode_start[card]
    in_episode = j >= 0
    fraud_kind = np.where(in_episode, kind[card], -1)
    fraudster_country = (home + rng.integers(1, n_country, n_keys)) % n_country
    fraudster_amount = rng.lognormal(np.log(120.0), 0.5, n_keys)

    def rand_cat(mask: np.ndarray, choices: np.ndarray | None = None) -> np.ndarray:
        k = int(mask.sum())
        return rng.integers(0, n_cat, k) if choices is None else rng.choice(choices, k)

    # card testing: tiny online digital amounts seconds apart, then one large purchase
    m = fraud_kind == 0
    last = m & (j == length[card] - 1)
    tiny = m & ~last
    category[tiny] = _DIGITAL
    amount[tiny] = np.round(rng.uniform(0.5, 2.5, int(tiny.sum())), 2)
    burst = tiny & (j > 0)
    gap_s[burst] = rng.uniform(8, 90, int(burst.sum()))
    category[last] = rand_cat(last, np.array([_ELECTRONICS, _JEWELRY]))
    amount[last] = rng.uniform(300.0, 2500.0, int(last.sum()))
    gap_s[last] = rng.uniform(60, 1200, int(last.sum()))
    channel[m] = _ONLINE
    country[m] = fraudster_country[card[m]]
    # account takeover: somebody else's habits
    m = fraud_kind == 1
    category[m] = rand_cat(m)
    amount[m] = (
        fraudster_amount[card[m]] * _CATEGORY_SCALE[category[m]] * rng.lognormal(0.0, 0.5, int(m.sum()))
    )
    channel[m] = np.where(rng.random(int(m.sum())) < 0.7, _ONLINE, _POS)
    country[m] = fraudster_country[card[m]]
    gap_s[m] = rng.lognormal(np.log(3600.0), 1.0, int(m.sum()))
    # impossible travel: in person abroad, minutes after in person at home
    m = fraud_kind == 2
    channel[m] = _POS
    country[m] = fraudster_country[card[m]]
    gap_s[m] = np.where(
        j[m] == 0, rng.uniform(5 * 60, 90 * 60, int(m.sum())), rng.uniform(5 * 60, 40 * 60, int(m.sum()))
    )
    before = idx[m & (j == 0)] - 1
    channel[before] = _POS
    country[before] = home[card[before]]
    # velocity: ordinary purchases minutes apart
    m = fraud_kind == 3
    burst = m & (j > 0)
    gap_s[burst] = rng.uniform(20, 600, int(burst.sum()))
    amount[m] *= rng.lognormal(0.3, 0.3, int(m.sum()))
    # compromised merchant: a visit to a breached merchant, a few events later online purchases abroad
    m = fraud_kind == 4
    visit = idx[m & (j == 0)] - 1 - gap_before[card[m & (j == 0)]]
    merchant[visit] = rng.choice(np.array(COMPROMISED_MERCHANTS), len(visit))
    category[visit] = merchant[visit] // _MERCHANTS_PER_CATEGORY
    amount[visit] = (
        typical_amount[card[visit]] * _CATEGORY_SCALE[category[visit]] * rng.lognormal(0, 0.5, len(visit))
    )
    channel[visit] = _POS
    country[visit] = home[card[visit]]
    category[m] = rand_cat(m)
    channel[m] = _ONLINE
    country[m] = fraudster_country[card[m]]
    amount[m] = typical_amount[card[m]] * _CATEGORY_SCALE[category[m]] * rng.lognormal(1.0, 0.5, int(m.sum()))
    gap_s[m] = rng.lognormal(np.log(3 * 3600.0), 1.0, int(m.sum()))

    fraud_events = fraud_kind >= 0
    redo = fraud_events & (fraud_kind != 3)  # categories changed: merchants follow
    merchant[redo] = _pick_merchant(rng, category[redo])
    amount = np.maximum(np.round(amount, 2), 0.5)
    times = times_from_gaps(gap_s, counts, start_ms, min_gap_ms=1000)
    hour = (times % MS_PER_DAY) / 3_600_000.0
    label = fraud_events.astype(np.int64)

    order = time_order(card, times)
    table = assemble_table(
        SCHEMA,
        "card",
        n_keys,
        card,
        times,
        numeric={"amount": amount, "hour": hour},
        categorical={
            "merchant": (merchant, MERCHANTS),
            "category": (category, CATEGORIES),
            "country": (country, COUNTRIES),
            "channel": (channel, CHANNELS),
        },
        label=label,
        order=order,
    )
    truth = {"label": label[order], "fraud_kind": fraud_kind[order].astype(np.int8)}
    info = {f"episodes_{k}": int((has & (kind == i)).sum()) for i, k in enumerate(FRAUD_KINDS)}
    return GeneratedStream(table, truth, info)


def _pick_merchant(rng: np.random.Generator, category: np.ndarray) -> np.ndarray:
    """A merchant of each event's category, by merchant popularity."""
    pop = _MERCHANT_POPULARITY.reshape(len(CATEGORIES), _MERCHANTS_PER_CATEGORY)
    cum = np.cumsum(pop / pop.sum(1, keepdims=True), axis=1)
    within = (rng.random(len(category))[:, None] > cum[category]).sum(1).clip(0, _MERCHANTS_PER_CATEGORY - 1)
    return category * _MERCHANTS_PER_CATEGORY + within


def evaluate(table: pa.Table, outputs: np.ndarray, truth: Mapping[str, np.ndarray]) -> dict[str, float]:
    """PR-AUC, ROC-AUC, recall at 1% false-positive rate, and precision among each day's top-100 cards."""
    score = np.asarray(outputs)[:, 0].astype(np.float64)
    y = np.asarray(truth["label"]).astype(np.int64)
    return {
        "pr_auc": float(metrics.pr_auc(y, score)),
        "roc_auc": float(metrics.roc_auc(y, score)),
        "recall_at_1pct_fpr": float(metrics.recall_at_fpr(y, score, 0.01)),
        "daily_top100_card_precision": daily_top_card_precision(table, score, y, k=100),
        "fraud_rate": float(y.mean()) if len(y) else 0.0,
    }


def daily_top_card_precision(table: pa.Table, score: np.ndarray, label: np.ndarray, k: int = 100) -> float:
    """Mean over days of the share of fraudulent cards among the day's ``k`` highest-scored cards.

    A card's score on a day is its highest event score that day; it is fraudulent that day when any of its
    events that day is fraud. Days with fewer cards use all of them.
    """
    if table.num_rows == 0:
        return 0.0
    keys = table.column(KEY_COLUMN).combine_chunks().dictionary_encode().indices.to_numpy()
    day = table.column(TIME_COLUMN).cast(pa.int64()).to_numpy() // MS_PER_DAY
    pair, inverse = np.unique(np.stack([day, keys], axis=1), axis=0, return_inverse=True)
    inverse = inverse.reshape(-1)
    best = np.full(len(pair), -np.inf)
    np.maximum.at(best, inverse, score)
    fraud = np.zeros(len(pair), dtype=np.int64)
    np.maximum.at(fraud, inverse, label)
    precisions = []
    for d in np.unique(pair[:, 0]):
        rows = np.flatnonzero(pair[:, 0] == d)
        top = rows[np.argsort(-best[rows], kind="stable")[:k]]
        precisions.append(fraud[top].mean())
    return float(np.mean(precisions))


def pipeline_spec() -> PipelineSpec:
    """The fraud pipeline: GRU + binary head over card transactions."""
    return PipelineSpec(
        name=NAME,
        description="card transactions; P(fraud) of each transaction given the card's history",
        key_meaning="card",
        schema=SCHEMA,
        model_config=ModelConfig(
            features=SCHEMA.feature_spec(),
            cell="gru",
            head="binary",
            hidden_size=32,
            num_layers=1,
            embedding_dim=8,
        ),
        label_column="label",
        # Card authorizations: latency matters (short linger), cards are quiet for weeks (long TTL).
        serving=ServingDefaults(
            partitions=12,
            max_batch_events=2048,
            batch_linger_ms=20,
            key_ttl_seconds=90 * 86_400,
            checkpoint_interval_events=50_000,
            checkpoint_interval_seconds=30.0,
        ),
        # Fraud labels are rare (a few percent of events), so a short run needs many optimizer steps: small
        # batches of cards (per Ray Train worker) and short chunks; a card's episode spans a few events.
        training=TrainingDefaults(epochs=15, chunk_len=32, batch_keys=16, learning_rate=5e-3),
        generator=generate,
        evaluator=evaluate,
        primary_metric="pr_auc",
        # Demo stream: many cards with a short history each, so enough episodes fall into the training
        # period (episodes end a card's events, so they come late); at 20,000 events about 4% of the
        # events are fraud (about 8% in the last quarter of the time range).
        demo_keys=500,
        demo_events_per_key=40,
    )
