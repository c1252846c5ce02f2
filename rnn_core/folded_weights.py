"""Layer 0's cell weights with the input normalization folded in, for ``StreamingModel.step`` at inference.

``W (x - mean) / std + b = (W / std) x + (b - (W / std) mean)``, computed in float64, saves the per-step
slice, subtract and divide of the continuous inputs. It is only done while ``|mean| / std <= 4`` for every
column, where the float32 rounding of the folded sum stays within a few ulps of the unfolded one (far below
the 1e-5 of the step == forward law); otherwise the weights are used as they are.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor

if TYPE_CHECKING:
    from rnnstream.rnn_core.model import StreamingModel

CellWeights = tuple[Tensor, Tensor, Tensor, Tensor]  # w_ih, w_hh, b_ih, b_hh of one layer

FOLD_MAX_OFFSET = 4.0  # fold the input normalization into the weights while |mean| / std <= this
_FOLDED_SOURCES = (0, 1, 2, 4)  # norm_mean, norm_std, w_ih_l0, b_ih_l0 among inference_weights' sources
_CACHE = "_inference_cache"  # the model attribute (outside the module's state) holding the cache


def inference_weights(model: StreamingModel) -> tuple[bool, list[CellWeights]]:
    """(folded, per-layer cell weights) for ``step`` without autograd, cached on the model while the
    weights hold.

    The cache is used only while every parameter it derives from is the same object, at the same data
    pointer, with the same version counter: in-place changes (optimizer steps, ``load_state_dict``,
    ``fit_normalization``, ``copy_`` under ``no_grad``) and ``.to()`` rebuild it. Like autograd, it
    cannot see writes through ``.data``; tensors without a version counter (made under
    ``inference_mode``) are compared by value instead.
    """
    rnn = model.rnn
    sources = [model.norm_mean, model.norm_std]
    for names in model._layer_weight_names:
        sources.extend(getattr(rnn, n) for n in names)
    try:
        stamp: list[object] = [(t._version, t.data_ptr()) for t in sources]
    except RuntimeError:  # inference tensors have no version counter: compare the folded ones by value
        stamp = [t.data_ptr() for t in sources]
        stamp.extend(sources[i].detach().clone() for i in _FOLDED_SOURCES)
    cache = model.__dict__.get(_CACHE)
    if cache is not None and all(a is b for a, b in zip(cache[0], sources, strict=True)):
        old = cache[1]
        if len(old) == len(stamp) and all(
            torch.equal(u, v) if isinstance(u, Tensor) else u == v for u, v in zip(old, stamp, strict=True)
        ):
            return cache[2], cache[3]
    weights: list[CellWeights] = [tuple(sources[2 + 4 * i : 6 + 4 * i]) for i in range(model.num_layers)]
    mean, std = sources[0].double(), sources[1].double()
    folded = bool(model.num_continuous) and bool(((mean.abs() / std) <= FOLD_MAX_OFFSET).all())
    if folded:
        w_ih, w_hh, b_ih, b_hh = weights[0]
        n = model.num_continuous
        w = w_ih.double()
        w_cont = w[:, :n] / std
        bias = b_ih.double() - w_cont @ mean
        w = torch.cat([w_cont, w[:, n:]], dim=1)
        weights[0] = (w.to(w_ih.dtype).contiguous(), w_hh, bias.to(b_ih.dtype), b_hh)
    model.__dict__[_CACHE] = (sources, stamp, folded, weights)
    return folded, weights
