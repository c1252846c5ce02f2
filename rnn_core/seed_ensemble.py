"""K classifiers trained from different seeds, folded into one :class:`StreamingModel` that averages their
logits exactly.

A classifier's held-out quality (above all the order of its highest scores, which average precision
weighs) varies from seed to seed: the initial weights and the batch order decide which of several equally
good fits a run ends in. Averaging the logits of a few such runs (a seed ensemble) keeps what they agree on
and damps what one run alone got wrong; it costs K trainings, not K models at serving time:

- K recurrent networks of hidden size ``H`` side by side are one network of hidden size ``K * H`` whose
  recurrent weights are block-diagonal (member ``k`` reads only its own block of the state) and whose
  input weights are the members' stacked (every member reads the same inputs), gate by gate;
- a linear head on the concatenated state with each member's head weights divided by K gives the mean of
  the members' logits; ``sigmoid``/``softmax`` of that is the binary/multiclass output.

So serving, checkpoints, the fused kernels and ``step == forward`` see an ordinary model (state ``K * H``
wide per key). Members must share the configuration and the input normalization (fit on the same data),
have no categorical embeddings (those would need a block-structured embedding) and a binary or multiclass
head. The fold is exact up to float rounding: :func:`fold_members` checks it on the inputs it is given.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import torch

from rnnstream.rnn_core.model import StreamingModel

__all__ = ["can_fold", "fold_members"]


def can_fold(model: StreamingModel) -> bool:
    """Whether members like ``model`` fold into one model (a classifier without embeddings)."""
    return model.head_kind in ("binary", "multiclass") and model.num_categorical == 0


@torch.no_grad()
def fold_members(members: Sequence[StreamingModel]) -> StreamingModel:
    """One model whose logits are the mean of ``members``' logits (module docstring)."""
    if not members:
        raise ValueError("fold_members needs at least one model")
    first = members[0]
    if not can_fold(first):
        raise ValueError("only binary/multiclass models without categorical embeddings fold")
    if any(m.config != first.config for m in members):
        raise ValueError("members must share one configuration")
    k, h = len(members), first.hidden_size
    folded = StreamingModel(replace(first.config, hidden_size=k * h)).to(first.norm_mean.device)
    folded.norm_mean.copy_(first.norm_mean)
    folded.norm_std.copy_(first.norm_std)
    gates = first.rnn.weight_ih_l0.shape[0] // h
    for layer in range(first.num_layers):
        w_ih, w_hh, b_ih, b_hh = first._layer_weight_names[layer]
        target_ih = getattr(folded.rnn, w_ih)
        target_hh = getattr(folded.rnn, w_hh)
        target_ih.zero_()
        target_hh.zero_()
        for g in range(gates):
            for i, m in enumerate(members):
                rows = slice(g * k * h + i * h, g * k * h + (i + 1) * h)
                mine = slice(g * h, (g + 1) * h)
                block = slice(i * h, (i + 1) * h)
                if layer == 0:  # every member reads the same inputs
                    target_ih[rows] = getattr(m.rnn, w_ih)[mine]
                else:  # a deeper layer reads its own member's block of the layer below
                    target_ih[rows, block] = getattr(m.rnn, w_ih)[mine]
                target_hh[rows, block] = getattr(m.rnn, w_hh)[mine]
                getattr(folded.rnn, b_ih)[rows] = getattr(m.rnn, b_ih)[mine]
                getattr(folded.rnn, b_hh)[rows] = getattr(m.rnn, b_hh)[mine]
    folded.head.weight.copy_(torch.cat([m.head.weight for m in members], dim=1) / k)
    folded.head.bias.copy_(torch.stack([m.head.bias for m in members]).mean(0))
    folded.eval()
    return folded
