"""``StreamingModel.step`` for a run of inference calls, with what each call would look up resolved once.

A scorer steps a micro-batch in chunks of a few hundred rows; each ``step`` call checks the mode and the
model's options, validates the folded weights' cache (:mod:`.folded_weights`) and walks the layer list, ~15-30
µs of Python a call next to a ~0.1-0.5 ms cell. :func:`stepper` does that once (a scorer asks for one per
batch) and returns a function of ``(x, state)`` that runs the same tensor operations in the same order as
``step``, so its results are bit for bit those of ``step``. Where there is nothing to save or the model is not
a plain one (training or autograd on, a subclass with its own ``step``, per-key input normalization, the
adaptive likelihood, the stateless baseline, a CUDA model that needs :func:`exact_numerics`), it is ``step``
itself.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
from torch import Tensor

if TYPE_CHECKING:
    from rnnstream.rnn_core.model import StreamingModel

StepFn = Callable[[Tensor, Tensor], tuple[Tensor, Tensor]]


def is_plain(model: StreamingModel) -> bool:
    """True where :func:`stepper` may take its shortcut (see the module doc)."""
    from rnnstream.rnn_core.model import StreamingModel

    return (
        type(model).step is StreamingModel.step
        and not (model.training or torch.is_grad_enabled())
        and not (model.drift_inputs or model.adaptive or model.stateless)
        and not model.norm_mean.is_cuda
    )


def stepper(model: StreamingModel) -> StepFn:
    """A function equal to ``model.step`` for the calls made before the weights or the mode change."""
    if not is_plain(model):
        return model.step
    folded, weights = model._inference_weights()
    normalized = not folded
    top = model.num_layers - 1
    single_gru = model.cell == "gru" and model.num_layers == 1
    w_ih, w_hh, b_ih, b_hh = weights[0]
    hidden = model.hidden_size
    outputs, rnn_inputs, cell_step = model._outputs, model._rnn_inputs, model._cell_step

    def step(x: Tensor, state: Tensor) -> tuple[Tensor, Tensor]:
        z = rnn_inputs(x, normalized=normalized)
        if single_gru:  # _cell_step's operations for one GRU layer, without its loop
            h = torch.gru_cell(z, state.select(1, 0).select(1, 0), w_ih, w_hh, b_ih, b_hh)
            new_state = h.view(h.shape[0], 1, 1, hidden)
            return outputs(x, state.select(1, 0).select(1, 0), h), new_state
        new_state = cell_step(z, state, weights)
        return outputs(x, state.select(1, 0).select(1, top), new_state.select(1, 0).select(1, top)), new_state

    return step
