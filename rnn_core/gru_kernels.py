"""A one-layer GRU's step as compiled loops (numba): gates, products, and the scorer's step into the slab.

On a CPU ``torch.gru_cell`` is two matrix products (the gate pre-activations of the input and of the state)
and then ~10 pointwise operations, each its own dispatch, pass over memory and temporary: at 1k rows and
64 units those cost as much as the two products. Here everything after the products is one loop over the
rows: gates, new state, and (for a scorer) the copy of that state and the event time into the key's slab
row while the row is in the L1 cache, and the binary head's score.

The products are torch's ``addmm`` into reused buffers (:func:`gru_gates`, :func:`gru_gates_scatter`), or,
where torch carries MKL (:mod:`.mkl_gemm`), MKL's own ``sgemm`` called from inside the loop
(:func:`matmul_into`), the biases then added in the gate pass: a 256-row chunk no longer pays two torch
dispatches (~15-30 µs each, as much as the product) and a Python round trip. With it:

- :func:`gru_chunk_into_slab`: one chunk of distinct keys whose cell inputs the caller made;
- :func:`gru_batch_into_slab`: a whole batch in one call, where the cell inputs are the event rows
  themselves (continuous features only, normalization folded into the weights, no time delta) and the head
  is binary: gather (:func:`gather_chunk`), products, gates, scatter and score of every chunk;
- :func:`gru_rows`: the same step on rows of states outside any store (the bare kernel the store is
  measured against, and the tests' check against ``torch.gru_cell``).

``sigmoid`` and ``tanh`` are computed without ``exp`` so that the loop vectorizes (numba has no vector
math library here; a scalar ``exp`` a gate would cost more than torch's whole step): ``tanh`` is the
rational approximation of Eigen and XLA (odd degree-13 over even degree-6 polynomial, inputs clamped to
+-7.9053, where float32 tanh is +-1), ``sigmoid(v) = 0.5 + 0.5 tanh(v / 2)``. Against torch's float32
``tanh``/``sigmoid`` they differ by at most a few float32 ulps (~3e-7, checked in the tests over the whole
range), far inside the 1e-5 to which a streamed step must equal the full-sequence forward.

Every loop these kernels call lives in this file: numba's on-disk cache is keyed on the file of the function
called, so a kernel calling into another file would not see that file change.
"""

from __future__ import annotations

import numpy as np

from rnnstream.rnn_core import mkl_gemm
from rnnstream.rnn_core.compiled_loop import compiled

_CLAMP = np.float32(7.90531110763549805)
_A1 = np.float32(4.89352455891786e-03)
_A3 = np.float32(6.37261928875436e-04)
_A5 = np.float32(1.48572235717979e-05)
_A7 = np.float32(5.12229709037114e-08)
_A9 = np.float32(-8.60467152213735e-11)
_A11 = np.float32(2.00018790482477e-13)
_A13 = np.float32(-2.76076847742355e-16)
_B0 = np.float32(4.89352518554385e-03)
_B2 = np.float32(2.26843463243900e-03)
_B4 = np.float32(1.18534705686654e-04)
_B6 = np.float32(1.19825839466702e-06)
_HALF = np.float32(0.5)
_NO_TRANSPOSE = np.uint8(ord("N"))


@compiled(inline="always", error_model="numpy")
def _tanh(v):
    """float32 tanh without branches (vectorizes): Eigen's rational approximation (NaN stays NaN)."""
    x = _CLAMP if v > _CLAMP else v
    x = -_CLAMP if x < -_CLAMP else x
    x2 = x * x
    p = x2 * _A13 + _A11
    p = x2 * p + _A9
    p = x2 * p + _A7
    p = x2 * p + _A5
    p = x2 * p + _A3
    p = x2 * p + _A1
    p = x * p
    q = x2 * _B6 + _B4
    q = x2 * q + _B2
    q = x2 * q + _B0
    return p / q


@compiled(inline="always", error_model="numpy")
def _sigmoid(v):
    return _HALF + _HALF * _tanh(_HALF * v)


@compiled(inline="always", error_model="numpy")
def gru_row(gi, gh, b_i, b_h, h_prev, h_out, i, hidden):
    """Row ``i``: gates (r, z, n: torch's order) from the pre-activations ``gi``/``gh`` [rows, 3H] plus the
    biases ``b_i``/``b_h`` [3H] (zeros where the products added them) and the new state
    ``h = n + z (h_prev - n)`` into ``h_out[i]`` (the same arithmetic as ``torch.gru_cell``)."""
    for k in range(hidden):
        r = _sigmoid((gh[i, k] + b_h[k]) + (gi[i, k] + b_i[k]))
        z = _sigmoid((gh[i, hidden + k] + b_h[hidden + k]) + (gi[i, hidden + k] + b_i[hidden + k]))
        n = _tanh(
            (gi[i, 2 * hidden + k] + b_i[2 * hidden + k]) + (gh[i, 2 * hidden + k] + b_h[2 * hidden + k]) * r
        )
        h_out[i, k] = (h_prev[i, k] - n) * z + n


@compiled(inline="always", error_model="numpy")
def _dot(h, i, w):
    """``h[i] . w`` in float32 over four partial sums (independent add chains, not one long one)."""
    hidden = w.size
    p0 = p1 = p2 = p3 = np.float32(0.0)
    k = 0
    while k + 4 <= hidden:
        p0 += h[i, k] * w[k]
        p1 += h[i, k + 1] * w[k + 1]
        p2 += h[i, k + 2] * w[k + 2]
        p3 += h[i, k + 3] * w[k + 3]
        k += 4
    while k < hidden:
        p0 += h[i, k] * w[k]
        k += 1
    return (p0 + p1) + (p2 + p3)


@compiled(error_model="numpy")
def gru_gates(gi, gh, h_prev, h_out):
    """``h_out`` [rows, H] = the GRU step's new state from the gate pre-activations (biases included).
    ``h_out`` may be ``h_prev`` itself, but then the loop does not vectorize (~6x slower): pass another
    buffer."""
    hidden = h_prev.shape[1]
    none = np.zeros(3 * hidden, np.float32)
    for i in range(h_prev.shape[0]):
        gru_row(gi, gh, none, none, h_prev, h_out, i, hidden)


@compiled(inline="always", error_model="numpy")
def gates_into_slab(
    gi, gh, b_i, b_h, h_prev, h_out, rows, slots, slot_times, times, events, head_w, head_b, out
):
    """:func:`gru_gates_scatter`'s loop, with the biases ``b_i``/``b_h`` still to add."""
    hidden = h_prev.shape[1]
    n = rows.shape[0]
    for i in range(h_prev.shape[0]):
        s = slots[i]
        if s < 0 or s >= n:
            raise IndexError("slot outside the state slab")
        gru_row(gi, gh, b_i, b_h, h_prev, h_out, i, hidden)
        for k in range(hidden):
            rows[s, k] = h_out[i, k]
        slot_times[s] = times[events[i]]
    if head_w.size > 0:
        for i in range(h_prev.shape[0]):
            v = -np.float64(_dot(h_out, i, head_w) + head_b)
            out[events[i]] = np.float32(1.0 / (1.0 + np.exp(v)))


@compiled(error_model="numpy")
def gru_gates_scatter(gi, gh, h_prev, h_out, rows, slots, slot_times, times, events, head_w, head_b, out):
    """:func:`gru_gates` for a scorer's chunk: row ``i`` is the batch's event ``events[i]`` of slot
    ``slots[i]``; its new state is also written into slab row ``slots[i]`` of ``rows`` [capacity, H] and its
    event time ``times[events[i]]`` into ``slot_times`` (an IndexError for a slot outside the slab). With a
    binary head (``head_w`` float32 [H], not empty), ``out[events[i]] = sigmoid(h_out[i] . head_w + head_b)``
    too (float64 exp, so small probabilities keep their relative precision), in a second loop over the
    chunk's new states (still in the L1/L2 cache): inside the gate loop it slows that loop by more than the
    head's own cost (~5 µs a 256-row chunk, GRU-64)."""
    none = np.zeros(gi.shape[1], np.float32)
    gates_into_slab(
        gi, gh, none, none, h_prev, h_out, rows, slots, slot_times, times, events, head_w, head_b, out
    )


@compiled(error_model="numpy")
def tanh_sigmoid(x, tanh_out, sigmoid_out):
    """The loop's ``tanh`` and ``sigmoid`` of every element of a float32 vector (for the tests)."""
    for i in range(x.size):
        tanh_out[i] = _tanh(x[i])
        sigmoid_out[i] = _sigmoid(x[i])


@compiled(inline="always")
def matmul_into(a, b, c):
    """``c = a @ b`` for C-contiguous float32 ``a`` [m, k], ``b`` [k, n] and ``c`` [m, n] (only where
    :data:`.mkl_gemm.AVAILABLE`). Row-major ``c`` is column-major ``c.T = b.T @ a.T``: the call made."""
    m, k = a.shape
    n = b.shape[1]
    if m == 0:
        return
    dims = np.empty(3, np.int32)
    dims[0], dims[1], dims[2] = m, n, k
    scale = np.empty(2, np.float32)
    scale[0], scale[1] = 1.0, 0.0
    op = np.empty(1, np.uint8)
    op[0] = _NO_TRANSPOSE
    n_, m_, k_ = dims[1:].ctypes, dims[0:].ctypes, dims[2:].ctypes
    one, zero = scale[0:].ctypes, scale[1:].ctypes
    mkl_gemm.sgemm(op.ctypes, op.ctypes, n_, m_, k_, one, b.ctypes, n_, a.ctypes, k_, zero, c.ctypes, n_)


@compiled()
def gather_chunk(x, idx, slots, times, rows, slot_times, xb, h_prev, prev_times, chunk_slots, dt_col):
    """One scorer chunk, events ``idx`` of a batch, in one pass: their input rows ``x[idx]`` into ``xb``,
    their slots ``slots[idx]`` into ``chunk_slots``, the slots' states and last event times into ``h_prev``
    and ``prev_times``; with ``dt_col >= 0``, ``xb[:, dt_col]`` = float32 seconds since the key's previous
    event (0 for none, never negative; the scorer's time-delta input). An IndexError for a slot outside
    the slab."""
    n, w = rows.shape
    for i in range(idx.size):
        e = idx[i]
        s = slots[e]
        if s < 0 or s >= n:
            raise IndexError("slot outside the state slab")
        chunk_slots[i] = s
        for k in range(x.shape[1]):
            xb[i, k] = x[e, k]
        for k in range(w):
            h_prev[i, k] = rows[s, k]
        prev = slot_times[s]
        prev_times[i] = prev
        if dt_col >= 0:
            dt = np.float32(times[e] - prev) * np.float32(1e-3)
            xb[i, dt_col] = 0.0 if prev < 0 or dt < 0 else dt


@compiled(error_model="numpy")
def gru_chunk_into_slab(
    z, h_prev, w_ih_t, w_hh_t, b_ih, b_hh, gi, gh, h_out, rows, slots, slot_times, times, events, head_w,
    head_b, out,
):  # fmt: skip
    """One chunk of distinct ``slots``: gate pre-activations ``gi = z @ w_ih_t``, ``gh = h_prev @ w_hh_t``
    (float32, C-contiguous; ``w_*_t`` [in, 3H]), then :func:`gru_gates_scatter`'s pass with the
    biases ``b_ih``/``b_hh`` [3H] added there. ``gi``/``gh``/``h_out``: reused buffers of at least as many
    rows as the chunk."""
    m = h_prev.shape[0]
    matmul_into(z, w_ih_t, gi[:m])
    matmul_into(h_prev, w_hh_t, gh[:m])
    gates_into_slab(
        gi, gh, b_ih, b_hh, h_prev, h_out, rows, slots, slot_times, times, events, head_w, head_b, out
    )


@compiled(error_model="numpy")
def gru_batch_into_slab(
    x, order, bounds, slots, times, rows, slot_times, xb, h_prev, prev, chunk_slots,
    w_ih_t, w_hh_t, b_ih, b_hh, gi, gh, h_out, head_w, head_b, out, done,
):  # fmt: skip
    """Every chunk ``order[bounds[c]:bounds[c + 1]]`` of a batch (events ``x`` [N, D] float32 that are the
    cell inputs, their ``slots`` and ``times``) in turn: gather the chunk's rows into ``xb``, its states
    into ``h_prev[lo:hi]``, last times into ``prev[lo:hi]`` and slots into ``chunk_slots[lo:hi]`` (the
    caller's undo log keeps those three), step, write the new states and times into the slab (``rows``,
    ``slot_times``) and the binary head's score into ``out`` [N]. ``done[0]`` counts the events whose new
    state is in the slab, so a caller that sees this raise knows which chunks to undo."""
    done[0] = 0
    for c in range(bounds.size - 1):
        lo, hi = bounds[c], bounds[c + 1]
        m = hi - lo
        idx = order[lo:hi]
        h = h_prev[lo:hi]
        c_slots = chunk_slots[lo:hi]
        gather_chunk(x, idx, slots, times, rows, slot_times, xb[:m], h, prev[lo:hi], c_slots, -1)
        gru_chunk_into_slab(
            xb[:m], h, w_ih_t, w_hh_t, b_ih, b_hh, gi, gh, h_out, rows, c_slots, slot_times, times, idx,
            head_w, head_b, out,
        )  # fmt: skip
        done[0] = hi


@compiled(error_model="numpy")
def gru_rows(z, h_prev, w_ih_t, w_hh_t, b_ih, b_hh, gi, gh, h_out):
    """``h_out`` [m, H] = the GRU step of states ``h_prev`` [m, H] on cell inputs ``z`` [m, I] (operands
    as :func:`gru_chunk_into_slab`'s), with no slab, no keys and no head."""
    m, hidden = h_prev.shape
    matmul_into(z, w_ih_t, gi[:m])
    matmul_into(h_prev, w_hh_t, gh[:m])
    for i in range(m):
        gru_row(gi, gh, b_ih, b_hh, h_prev, h_out, i, hidden)
