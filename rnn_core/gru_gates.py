"""A GRU step's gate arithmetic in one compiled pass, writing the new state straight into the state slab.

On a CPU ``torch.gru_cell`` is two matrix products (the gate pre-activations of the input and of the state)
and then ~10 pointwise operations, each its own dispatch, pass over memory and temporary: at 1k rows and
64 units those cost as much as the two products. Here the products stay in torch (``addmm`` into reused
buffers) and everything after them is one loop over the rows: gates, new state, and (for a scorer) the
copy of that state and the event time into the key's slab row, while the row is in the L1 cache.

``sigmoid`` and ``tanh`` are computed without ``exp`` so that the loop vectorizes (numba has no vector
math library here; a scalar ``exp`` a gate would cost more than torch's whole step): ``tanh`` is the
rational approximation of Eigen and XLA (odd degree-13 over even degree-6 polynomial, inputs clamped to
+-7.9053, where float32 tanh is +-1), ``sigmoid(v) = 0.5 + 0.5 tanh(v / 2)``. Against torch's float32
``tanh``/``sigmoid`` they differ by at most a few float32 ulps (~3e-7, checked in the tests over the whole
range), far inside the 1e-5 to which a streamed step must equal the full-sequence forward.
"""

from __future__ import annotations

import numpy as np

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
def _row(gi, gh, h_prev, h_out, i, hidden):
    """Row ``i``: gates (r, z, n: torch's order) from the pre-activations ``gi``/``gh`` [rows, 3H] and the
    new state ``h = n + z (h_prev - n)`` into ``h_out[i]`` (the same arithmetic as ``torch.gru_cell``)."""
    for k in range(hidden):
        r = _sigmoid(gh[i, k] + gi[i, k])
        z = _sigmoid(gh[i, hidden + k] + gi[i, hidden + k])
        n = _tanh(gi[i, 2 * hidden + k] + gh[i, 2 * hidden + k] * r)
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
    """``h_out`` [rows, H] = the GRU step's new state from the gate pre-activations. ``h_out`` may be
    ``h_prev`` itself, but then the loop does not vectorize (~6x slower): pass another buffer."""
    hidden = h_prev.shape[1]
    for i in range(h_prev.shape[0]):
        _row(gi, gh, h_prev, h_out, i, hidden)


@compiled(error_model="numpy")
def gru_gates_scatter(gi, gh, h_prev, h_out, rows, slots, slot_times, times, events, head_w, head_b, out):
    """:func:`gru_gates` for a scorer's chunk: row ``i`` is the batch's event ``events[i]`` of slot
    ``slots[i]``; its new state is also written into slab row ``slots[i]`` of ``rows`` [capacity, H] and its
    event time ``times[events[i]]`` into ``slot_times`` (an IndexError for a slot outside the slab). With a
    binary head (``head_w`` float32 [H], not empty), ``out[events[i]] = sigmoid(h_out[i] . head_w + head_b)``
    too (float64 exp, so small probabilities keep their relative precision), in a second loop over the
    chunk's new states (still in the L1/L2 cache): inside the gate loop it slows that loop by more than the
    head's own cost (~5 µs a 256-row chunk, GRU-64)."""
    hidden = h_prev.shape[1]
    n = rows.shape[0]
    for i in range(h_prev.shape[0]):
        s = slots[i]
        if s < 0 or s >= n:
            raise IndexError("slot outside the state slab")
        _row(gi, gh, h_prev, h_out, i, hidden)
        for k in range(hidden):
            rows[s, k] = h_out[i, k]
        slot_times[s] = times[events[i]]
    if head_w.size > 0:
        for i in range(h_prev.shape[0]):
            v = -np.float64(_dot(h_out, i, head_w) + head_b)
            out[events[i]] = np.float32(1.0 / (1.0 + np.exp(v)))


@compiled(error_model="numpy")
def tanh_sigmoid(x, tanh_out, sigmoid_out):
    """The loop's ``tanh`` and ``sigmoid`` of every element of a float32 vector (for the tests)."""
    for i in range(x.size):
        tanh_out[i] = _tanh(x[i])
        sigmoid_out[i] = _sigmoid(x[i])
