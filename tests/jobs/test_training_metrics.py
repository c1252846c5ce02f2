"""The generic held-out metrics used when a pipeline's evaluator lacks its ground truth."""

import numpy as np

from rnnstream.jobs.holdout import generic_metrics


def test_generic_binary_metrics_rank_a_perfect_score_perfectly():
    y = np.array([0, 0, 1, 0, 1, 1])
    outputs = y[:, None] * 0.8 + 0.1
    m = generic_metrics(outputs, {"label": y}, "binary")
    assert m["pr_auc"] == 1.0 and m["roc_auc"] == 1.0 and m["best_f1"] == 1.0


def test_generic_binary_metrics_see_a_reversed_score():
    y = np.array([0, 0, 1, 0, 1, 1])
    outputs = (1 - y)[:, None].astype(float)
    m = generic_metrics(outputs, {"label": y}, "binary")
    assert m["roc_auc"] == 0.0 and m["best_f1"] < 1.0


def test_generic_multiclass_metrics_count_argmax_hits():
    y = np.array([0, 1, 2, 2])
    outputs = np.eye(3)[[0, 1, 2, 0]]
    m = generic_metrics(outputs, {"label": y}, "multiclass")
    assert m["accuracy"] == 0.75
