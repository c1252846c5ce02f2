"""A scorer's GRU step that writes each key's new state straight into the state store's slab.

For a plain single-layer GRU on the CPU (the case :func:`~rnnstream.rnn_core.inference_step.stepper`
shortcuts, one layer), a chunk of distinct keys is stepped as two ``addmm`` into reused buffers (the input's
and the state's gate pre-activations, the input normalization folded into the weights as in ``step``) and one
compiled pass (:func:`~rnnstream.rnn_core.gru_kernels.gru_gates_scatter`) that computes the gates, the new
states, and copies each new state and event time into its slab row. Compared with ``step`` then a scatter,
that saves ~10 pointwise torch operations with their temporaries and a second pass over the rows. The head
runs as in ``step`` (:mod:`.model_heads`) on the states before and after. Results equal ``step``'s to a few
float32 ulps (the gates' ``tanh``/``sigmoid``: see :mod:`.gru_kernels`).

Where torch carries MKL (:mod:`.mkl_gemm`), the products run inside the compiled pass instead
(:mod:`.gru_kernels`), without a torch dispatch a chunk; and where the cell inputs are the event rows
themselves and the head is binary, :meth:`SlabGruStep.batch` steps every chunk of a batch in one call.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch

from rnnstream.rnn_core import mkl_gemm
from rnnstream.rnn_core.gru_kernels import gru_batch_into_slab, gru_chunk_into_slab, gru_gates_scatter
from rnnstream.rnn_core.inference_step import is_plain

if TYPE_CHECKING:
    from rnnstream.rnn_core.model import StreamingModel

_NO_HEAD = np.zeros(0, np.float32)


class SlabGruStep:
    """Steps chunks of distinct keys with the weights read at construction (:func:`slab_stepper` makes
    one and reuses it while the weights hold)."""

    def __init__(
        self, model: StreamingModel, buffers: GateBuffers, folded: bool, weights: list,
        use_mkl: bool = mkl_gemm.AVAILABLE,
    ) -> None:  # fmt: skip
        self.model, self.weights, self.head_stamp = model, weights, _head_stamp(model)
        w_ih, w_hh, b_ih, b_hh = weights[0]
        self._w_ih_t, self._w_hh_t, self._b_ih, self._b_hh = w_ih.t(), w_hh.t(), b_ih, b_hh
        self._normalized = not folded
        self._rnn_inputs, self._outputs = model._rnn_inputs, model._outputs
        self._buf = buffers
        self._binary = model.head_kind == "binary"  # its score computed in the gates' pass
        self._head_w, self._head_b = _NO_HEAD, 0.0
        if self._binary:
            self._head_w = model.head.weight.detach().reshape(-1).contiguous().numpy()
            self._head_b = float(model.head.bias.detach()[0])
        self._mkl = use_mkl and mkl_gemm.AVAILABLE  # off: torch's addmm for the products
        if self._mkl:  # the products' operands as the compiled loop takes them: [in, 3H] row-major
            self._w_ih_np, self._w_hh_np, self._b_ih_np, self._b_hh_np = (
                w.detach().contiguous().numpy() for w in (self._w_ih_t, self._w_hh_t, b_ih, b_hh)
            )
        # the cell inputs are the event rows themselves: continuous features only, folded, no time delta
        direct = folded and model.num_categorical == 0 and model._dt is None
        self.whole_batch = self._mkl and self._binary and direct and model.num_continuous == model.input_size
        """Whether :meth:`batch` may be called (else :meth:`chunk`, chunk by chunk)."""

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
        w, b, scores = self._head_w, self._head_b, out[:, 0] if self._binary else _NO_HEAD
        if self._mkl:
            z_np = np.ascontiguousarray(z.numpy())
            w_ih, w_hh, b_ih, b_hh = self._w_ih_np, self._w_hh_np, self._b_ih_np, self._b_hh_np
            args = (rows, slots, slot_times, times, events, w, b, scores)
            gru_chunk_into_slab(z_np, h_prev, w_ih, w_hh, b_ih, b_hh, gi, gh, h_new, *args)
        else:
            torch.addmm(self._b_ih, z, self._w_ih_t, out=gi_t)
            torch.addmm(self._b_hh, h_prev_t, self._w_hh_t, out=gh_t)
            gru_gates_scatter(gi, gh, h_prev, h_new, rows, slots, slot_times, times, events, w, b, scores)
        if not self._binary:
            out[events] = self._outputs(x, h_prev_t, h_new_t).numpy()

    def batch(
        self, x: np.ndarray, order: np.ndarray, bounds: np.ndarray, slots: np.ndarray, times: np.ndarray,
        rows: np.ndarray, slot_times: np.ndarray, xb: np.ndarray, h_prev: np.ndarray, prev: np.ndarray,
        chunk_slots: np.ndarray, out: np.ndarray, done: np.ndarray,
    ) -> None:  # fmt: skip
        """Every chunk ``order[bounds[c]:bounds[c + 1]]`` of a batch in one compiled call (only where
        :attr:`whole_batch`): see :func:`.gru_kernels.gru_batch_into_slab`. ``xb``: a buffer of at
        least the largest chunk's rows; ``h_prev``, ``prev``, ``chunk_slots``: [N] rows the undo log keeps;
        ``done[0]``: the events stepped so far (also when this raises)."""
        most = int(np.max(np.diff(bounds))) if bounds.size > 1 else 0
        gi, gh, h_new = self._buf.views(most)[:3]
        weights = (self._w_ih_np, self._w_hh_np, self._b_ih_np, self._b_hh_np)
        gru_batch_into_slab(
            x, order, bounds, slots, times, rows, slot_times, xb, h_prev, prev, chunk_slots,
            *weights, gi, gh, h_new, self._head_w, self._head_b, out[:, 0], done,
        )  # fmt: skip


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
