"""A scorer's GRU step that writes each key's new state straight into the state store's slab.

For a plain single-layer GRU on the CPU (the case :func:`~rnnstream.rnn_core.inference_step.stepper`
shortcuts, one layer), a chunk of distinct keys is stepped as two ``addmm`` into reused buffers (the input's
and the state's gate pre-activations, the input normalization folded into the weights as in ``step``) and one
compiled pass (:func:`~rnnstream.rnn_core.gru_gates.gru_gates_scatter`) that computes the gates, the new
states, and copies each new state and event time into its slab row. Compared with ``step`` then a scatter,
that saves ~10 pointwise torch operations with their temporaries and a second pass over the rows. The head
runs as in ``step`` (:mod:`.model_heads`) on the states before and after. Results equal ``step``'s to a few
float32 ulps (the gates' ``tanh``/``sigmoid``: see :mod:`.gru_gates`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch

from rnnstream.rnn_core.gru_gates import gru_gates_scatter
from rnnstream.rnn_core.inference_step import is_plain

if TYPE_CHECKING:
    from rnnstream.rnn_core.model import StreamingModel

_NO_HEAD = np.zeros(0, np.float32)


class SlabGruStep:
    """Steps chunks of distinct keys with the weights read at construction (:func:`slab_stepper` makes
    one and reuses it while the weights hold)."""

    def __init__(self, model: StreamingModel, buffers: GateBuffers, folded: bool, weights: list) -> None:
        self.model, self.weights, self.head_stamp = model, weights, _head_stamp(model)
        w_ih, w_hh, b_ih, b_hh = weights[0]
        self._w_ih_t, self._w_hh_t, self._b_ih, self._b_hh = w_ih.t(), w_hh.t(), b_ih, b_hh
        self._normalized = not folded
        self._rnn_inputs, self._outputs = model._rnn_inputs, model._outputs
        self._buf = buffers
        self._binary = model.head_kind == "binary"  # its score computed in the gates' pass
        if self._binary:
            self._head_w = model.head.weight.detach().reshape(-1).contiguous().numpy()
            self._head_b = float(model.head.bias.detach()[0])

    def chunk(
        self, xb: np.ndarray, h_prev: np.ndarray, rows: np.ndarray, slot_times: np.ndarray, slots: np.ndarray,
        times: np.ndarray, events: np.ndarray, out: np.ndarray,
    ) -> None:  # fmt: skip
        """Step the batch's events ``events`` (inputs ``xb`` [m, D], their distinct ``slots`` and states
        ``h_prev`` float32 [m, H] gathered from the store): their new states and times (``times`` of the
        whole batch) go into the store's ``rows`` and ``slot_times`` (:meth:`.KeyedStateStore.slab`), their
        outputs into rows ``events`` of the batch's ``out`` [N, K]."""
        gi, gh, h_new, gi_t, gh_t, h_new_t = self._buf.views(slots.size)
        x, h_prev_t = torch.from_numpy(xb), torch.from_numpy(h_prev)
        z = self._rnn_inputs(x, normalized=self._normalized)
        torch.addmm(self._b_ih, z, self._w_ih_t, out=gi_t)
        torch.addmm(self._b_hh, h_prev_t, self._w_hh_t, out=gh_t)
        if self._binary:
            w, b, scores = self._head_w, self._head_b, out[:, 0]
        else:
            w, b, scores = _NO_HEAD, 0.0, _NO_HEAD
        gru_gates_scatter(gi, gh, h_prev, h_new, rows, slots, slot_times, times, events, w, b, scores)
        if not self._binary:
            out[events] = self._outputs(x, h_prev_t, h_new_t).numpy()


class GateBuffers:
    """The reused gate pre-activation and new-state buffers of one scorer."""

    def __init__(self, hidden: int) -> None:
        self.hidden = hidden
        self.step: SlabGruStep | None = None  # the last batch's step (see slab_stepper)
        self._views: dict[int, tuple] = {}  # rows -> the buffers' first rows (numpy, then torch views)
        self.gi = np.empty((0, 3 * hidden), np.float32)

    def views(self, m: int) -> tuple:
        """(gi, gh, h) [m, ...] as numpy arrays, then as tensors sharing them (made once for each m)."""
        found = self._views.get(m)
        if found is not None:
            return found
        if self.gi.shape[0] < m:  # grow: earlier views keep the old buffers, so drop them
            self.gi = np.empty((m, 3 * self.hidden), np.float32)
            self.gh = np.empty((m, 3 * self.hidden), np.float32)
            self.h = np.empty((m, self.hidden), np.float32)
            self._views.clear()
        arrays = (self.gi[:m], self.gh[:m], self.h[:m])
        self._views[m] = found = (*arrays, *(torch.from_numpy(a) for a in arrays))
        return found


def _head_stamp(model: StreamingModel) -> tuple[int, ...] | None:
    """What changes when the head's weights do (None: inference tensors, which have no version counter)."""
    try:
        return tuple(v for p in (model.head.weight, model.head.bias) for v in (p._version, p.data_ptr()))
    except RuntimeError:
        return None


def slab_stepper(model: StreamingModel, buffers: GateBuffers | None) -> SlabGruStep | None:
    """A :class:`SlabGruStep` for this batch where the model is a plain one-layer GRU on the CPU, or None.

    The step is kept in ``buffers`` and reused while the model's folded weights (:mod:`.folded_weights`,
    which checks them) are the same objects and the head's weights did not change."""
    if buffers is None or model.cell != "gru" or model.num_layers != 1 or not is_plain(model):
        return None
    folded, weights = model._inference_weights()
    last = buffers.step
    if last is not None and last.model is model and last.weights is weights:
        stamp = _head_stamp(model)
        if stamp is not None and stamp == last.head_stamp:
            return last
    if any(p.device.type != "cpu" or p.dtype != torch.float32 for p in model.rnn.parameters()):
        return None
    buffers.step = SlabGruStep(model, buffers, folded, weights)
    return buffers.step
