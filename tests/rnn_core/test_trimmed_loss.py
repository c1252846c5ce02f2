"""Trimmed training (rnn_core/trimmed_loss.py): a next-token model trained on sessions that hold a few
anomalies of one kind learns them without the trim, and stays surprised by them with it."""

from __future__ import annotations

import numpy as np

from rnnstream.rnn_core.config import FeatureSpec, ModelConfig
from rnnstream.rnn_core.key_sequences import KeySequences
from rnnstream.rnn_core.training import fit, seeded_model
from rnnstream.rnn_core.trimmed_loss import TrimmedKeys, key_losses, robust_cut

SPEC = FeatureSpec(categorical=("token",), vocabularies=(("a", "b", "c", "d", "x"),))
A, B, C, D, X = 1, 2, 3, 4, 5


def sessions(n: int, anomalous_share: float, seed: int) -> tuple[KeySequences, np.ndarray]:
    """Normal sessions ``a (b|c) d d`` (b or c, as likely); anomalies ``a x x x`` (one kind, repeated)."""
    rng = np.random.default_rng(seed)
    abnormal = rng.random(n) < anomalous_share
    x = []
    for bad in abnormal:
        codes = [A, X, X, X] if bad else [A, int(rng.choice([B, C])), D, D]
        x.append(np.asarray(codes, np.float32)[:, None])
    return KeySequences(keys=tuple(f"s{i}" for i in range(n)), x=tuple(x)), abnormal


def trained(data: KeySequences, select_keys) -> object:
    model = seeded_model(ModelConfig(features=SPEC, head="next_token", hidden_size=8, embedding_dim=4), 0)
    fit(model, data, epochs=10, lr=2e-2, batch_keys=64, seed=0, validation=None, select_keys=select_keys)
    return model


def test_trimmed_loss_leaves_a_repeated_anomaly_unlearned_and_estimates_its_share():
    data, abnormal = sessions(300, 0.06, seed=1)
    trim = TrimmedKeys()
    plain, robust = trained(data, None), trained(data, trim)
    plain_loss, robust_loss = key_losses(plain, data), key_losses(robust, data)
    # without the trim the model learns the anomaly's path; with it the anomalies stay far more surprising
    assert np.mean(robust_loss[abnormal]) > 2.0 * np.mean(plain_loss[abnormal])
    assert np.mean(robust_loss[abnormal]) > robust_cut(robust_loss)
    # ... while the normal sessions are learned as well as before (b or c: ~ln 2 / 4 per event at best)
    assert np.mean(robust_loss[~abnormal]) < np.mean(plain_loss[~abnormal]) + 0.05
    # the left-out share estimates the anomalies' (over the epochs: one may also cut a normal key or two)
    assert abs(float(np.median(trim.history)) - abnormal.mean()) < 0.02


def test_clean_sessions_lose_nothing_to_the_trim():
    data, abnormal = sessions(300, 0.0, seed=2)
    assert not abnormal.any()
    trim = TrimmedKeys()
    trained(data, trim)
    assert max(trim.history) == 0.0  # the loss spread of clean sessions has no far tail to cut
