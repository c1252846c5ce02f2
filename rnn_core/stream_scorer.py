"""The one streaming code path: score a micro-batch of keyed events against each key's stored state.

Workers, evaluation, backtests and ``score-file`` all call :meth:`StreamScorer.score`, so what is measured
offline is what serves. For each event, in the order given: look up the key's state and last event time,
fill the time-delta input (seconds since the key's previous event, 0 for its first), run one recurrent step,
store the new state and time, return the model's outputs.

A micro-batch may hold one key several times. The batch is stepped in chunks in which each key appears once
(:mod:`~rnnstream.rnn_core.chunk_plan`): a key's later event goes to a later chunk, so each key sees its
events in order, none is merged or skipped, and the result equals feeding the events one at a time.

Expiry (``key_ttl_ms``) is part of this path too, so every caller applies the same rule: an event starts its
key from a zero state when the key's previous event is more than the TTL behind the event-time watermark (the
newest event time the store has seen, this event included). The rule is a function of the events in their
order alone, so a replay after a crash expires exactly the same events; and because the watermark only
grows, freeing expired keys' memory at any moment (:meth:`StreamScorer.evict_expired`) changes no score.

A call to :meth:`StreamScorer.score` is all or nothing: when it raises (a model that fails on some input),
every key's state and last time are put back as they were, so a caller may retry parts of the batch (a
worker isolating a poison message does). Keys first seen in the failed call may stay as empty entries, which
behave exactly as unknown keys.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import pairwise

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

from rnnstream.rnn_core.chunk_plan import ChunkPlanner
from rnnstream.rnn_core.gru_kernels import gather_chunk
from rnnstream.rnn_core.inference_step import StepFn
from rnnstream.rnn_core.key_kernels import gather_rows
from rnnstream.rnn_core.slab_step import GateBuffers, SlabGruStep, slab_stepper
from rnnstream.rnn_core.state_store import KeyBatch, KeyedStateStore, as_string_array
from rnnstream.rnn_core.state_undo import StateUndoLog

DEFAULT_STEP_ROWS = 256  # on the CPU: a chunk's gate buffers (~0.4 MB) stay in a core's L2 cache
ACCELERATOR_STEP_ROWS = 1024  # on a GPU: fewer, larger launches
SEQUENCE_MIN_EVENTS = 32  # a key this much deeper than the wide waves runs through forward() at once
WIDE_WAVE_ROWS = 64  # a wave (one event of each of its keys) of at least this many rows steps efficiently


def _seconds_since(times: np.ndarray, prev: np.ndarray) -> np.ndarray:
    """The time-delta input: float32 seconds since each key's previous event (0 for none, never negative)."""
    dt = (times - prev).astype(np.float32)
    dt *= np.float32(1e-3)
    dt[(prev < 0) | (dt < 0)] = 0.0
    return dt


class StreamScorer:
    """Streams events through a :class:`StreamingModel`, keeping per-key state in a :class:`KeyedStateStore`.

    The model is put in eval mode (no dropout: serving is deterministic). ``store`` defaults to a new
    empty store shaped for the model. A batch is stepped ``step_rows`` events at a time (default 256 on the
    CPU, 1,024 on a GPU): gather, step and scatter of a few hundred rows stay in the CPU's L2 cache, which
    makes a 4k batch ~1.3x faster than 1k-row chunks and ~2x faster than one big step (GRU-64, measured
    with ``benchmarks/step_throughput.py``).
    """

    def __init__(
        self,
        model: torch.nn.Module,
        store: KeyedStateStore | None = None,
        step_rows: int | None = None,
        key_ttl_ms: int | None = None,
    ) -> None:
        if step_rows is not None and step_rows <= 0:
            raise ValueError(f"step_rows must be positive, got {step_rows}")
        if key_ttl_ms is not None and key_ttl_ms <= 0:
            raise ValueError(f"key_ttl_ms must be positive (or None: keys never expire), got {key_ttl_ms}")
        self.key_ttl_ms = None if key_ttl_ms is None else int(key_ttl_ms)
        self.last_expired = np.zeros(0, np.bool_)  # which events of the last score() call expired their key
        self._undo = StateUndoLog(model.config.state_shape)  # makes each score() call all or nothing
        config = model.config
        if store is None:
            store = KeyedStateStore(config.state_shape)
        if tuple(store.state_shape) != tuple(config.state_shape):
            raise ValueError(
                f"store holds states of shape {store.state_shape}, the model needs {config.state_shape}"
            )
        model.eval()
        self.model = model
        self._device = next(iter(model.buffers()), torch.zeros(0)).device
        if step_rows is None:
            step_rows = DEFAULT_STEP_ROWS if self._device.type == "cpu" else ACCELERATOR_STEP_ROWS
        self.step_rows = int(step_rows)
        self.store = store
        self.input_size = config.features.input_size
        self._dt_col = self.input_size - 1 if config.features.use_time_delta else None
        self._output_names = list(model.output_names())
        self._xbuf = np.zeros((0, self.input_size), np.float32)  # one chunk's inputs (dt filled in)
        self._planner = ChunkPlanner()
        one_layer = tuple(config.state_shape[:2]) == (1, 1)
        self._gates = GateBuffers(config.hidden_size) if one_layer and self._device.type == "cpu" else None

    @property
    def output_names(self) -> list[str]:
        """Names of the ``K`` columns returned by :meth:`score`."""
        return list(self._output_names)

    def score(
        self, keys: KeyBatch, times_ms: np.ndarray | Sequence[int] | pa.Array, x: np.ndarray
    ) -> np.ndarray:
        """Outputs ``float32 [N, K]`` for events ``x[N, D]`` of ``keys`` at ``times_ms`` (int64 ms), in order.

        Updates each key's state and last event time, and the store's watermark. When the model uses the
        time delta, the last column of ``x`` is ignored and replaced by the seconds since the key's previous
        event (0 for a new key, never negative); ``x`` itself is not modified. With ``key_ttl_ms``, events
        that expire their key (see the module doc) start from a zero state; :attr:`last_expired` says which.
        """
        keys = as_string_array(keys)
        n = len(keys)
        times = _as_int64_ms(times_ms)
        x = np.asarray(x)
        if x.ndim != 2 or x.shape[1] != self.input_size:
            raise ValueError(f"x must be [N, {self.input_size}] (the model input width), got {x.shape}")
        if times.shape != (n,) or x.shape[0] != n:
            raise ValueError(f"keys ({n}), times_ms ({times.size}) and x ({x.shape[0]}) differ in length")
        if n == 0:
            self.last_expired = np.zeros(0, np.bool_)
            return np.zeros((0, len(self._output_names)), np.float32)
        self._undo.begin()
        try:
            if self.key_ttl_ms is None:
                out = self._score(keys, times, x)
            else:
                out = self._score_expiring(keys, times, x)
        except BaseException:
            self._undo.roll_back(self.store)
            raise
        finally:
            self._undo.end()
        self.store.watermark_ms = max(self.store.watermark_ms, int(times.max()))
        return out

    def _remember(self, slots: np.ndarray, rows: torch.Tensor | None = None, by_key: bool = False) -> None:
        """Log the state and time ``slots`` hold now, to put back if this call raises."""
        self._undo.remember(self.store, slots, rows, by_key)

    def _score_expiring(self, keys: pa.Array, times: np.ndarray, x: np.ndarray) -> np.ndarray:
        """:meth:`_score` with expiry: expired keys are forgotten just before their expiring event.

        An expiring event that is its key's first in the batch (the common case) is handled by forgetting
        those keys before one call; only a key that expires twice within the batch cuts the batch there.
        """
        n = len(keys)
        ttl = self.key_ttl_ms
        codes = pc.dictionary_encode(keys).indices.to_numpy(zero_copy_only=False)
        order = np.argsort(codes, kind="stable")
        same = codes[order][1:] == codes[order][:-1]
        prev = np.full(n, -1, np.int64)
        prev[order[1:][same]] = times[order[:-1][same]]
        first = np.ones(n, np.bool_)
        first[order[1:][same]] = False
        first_idx = np.flatnonzero(first)
        prev[first_idx] = self.store.last_times(keys.take(pa.array(first_idx)))
        watermark = np.maximum.accumulate(np.maximum(times, self.store.watermark_ms))
        expired = (prev >= 0) & (watermark - prev > ttl)
        self.last_expired = expired
        if not expired.any():
            return self._score(keys, times, x)
        at_first = expired & first
        if at_first.any():
            gone = keys.filter(pa.array(at_first))
            self._remember(self.store.lookup(gone, create=False), by_key=True)
            self.store.remove(gone)
        cuts = np.flatnonzero(expired & ~first)
        if cuts.size == 0:
            return self._score(keys, times, x)
        out = np.empty((n, len(self._output_names)), np.float32)
        start = 0
        self._undo.by_key = True  # slots freed at a cut may be reused by later segments
        for c in [*cuts.tolist(), n]:
            if c > start:
                out[start:c] = self._score(keys.slice(start, c - start), times[start:c], x[start:c])
            if c < n:
                self._remember(self.store.lookup(keys.slice(c, 1), create=False), by_key=True)
                self.store.remove(keys.slice(c, 1))
            start = c
        return out

    def _score(
        self, keys: pa.Array, times: np.ndarray, x: np.ndarray, runs_allowed: bool = True
    ) -> np.ndarray:
        """Step the events in order through the store (no expiry), chunk by chunk (:mod:`.chunk_plan`);
        keys far deeper than the batch's wide waves run whole (:meth:`_score_runs`) unless ``runs_allowed``
        is off (the rest of such a batch)."""
        n = len(keys)
        slots, prev = self.store.lookup_linked(keys, create=True)
        plan = self._planner.plan_linked(prev, self.step_rows)
        if plan.most >= SEQUENCE_MIN_EVENTS and runs_allowed:
            runs = _long_run_slots(slots)
            if runs.size:
                return self._score_runs(keys, slots, runs, times, x)
        out = np.empty((n, len(self._output_names)), np.float32)
        order, bounds = plan.order, plan.bounds.tolist()
        if self._xbuf.shape[0] < min(n, self.step_rows):
            self._xbuf = np.zeros((min(n, self.step_rows), self.input_size), np.float32)
        # the caller's rows are stepped as they are when nothing is filled in or reordered (never written)
        direct = (
            order is None
            and self._dt_col is None
            and x.dtype == np.float32
            and x.flags.c_contiguous
            and x.flags.writeable
        )
        with torch.inference_mode():
            stepper = getattr(self.model, "stepper", None)  # None: not a StreamingModel (a stand-in)
            # once a batch: a one-layer GRU steps straight into the slab (slab_step), else see inference_step
            slab = None if stepper is None else slab_stepper(self.model, self._gates)
            if slab is not None:
                self._score_slab(slab, slots, times, x, order, bounds, out)
                return out
            step = self.model.step if stepper is None else stepper()
            for lo, hi in pairwise(bounds):
                if order is None:
                    if direct:
                        out[lo:hi] = self._step_rows(step, slots[lo:hi], times[lo:hi], x[lo:hi])
                    else:
                        xb = self._xbuf[: hi - lo]
                        np.copyto(xb, x[lo:hi], casting="same_kind")
                        out[lo:hi] = self._step_rows(step, slots[lo:hi], times[lo:hi], xb)
                    continue
                idx = order[lo:hi]
                xb = self._xbuf[: hi - lo]
                if x.dtype == np.float32:
                    gather_rows(x, idx, xb)
                else:
                    np.copyto(xb, x[idx], casting="same_kind")
                out[idx] = self._step_rows(step, slots[idx], times[idx], xb)
        return out

    def _score_slab(
        self, step: SlabGruStep, slots: np.ndarray, times: np.ndarray, x: np.ndarray,
        order: np.ndarray | None, bounds: list[int], out: np.ndarray,
    ) -> None:  # fmt: skip
        """:meth:`_score`'s chunks for a one-layer GRU stepping into the slab: per chunk one compiled gather
        (inputs, time deltas, states and times, logged for undo) and one step (:mod:`.slab_step`)."""
        if order is None:
            order = np.arange(slots.size)
        if x.dtype != np.float32 or not x.flags.c_contiguous:
            x = np.ascontiguousarray(x, np.float32)
        dt_col = -1 if self._dt_col is None else self._dt_col
        store, undo, xbuf = self.store, self._undo, self._xbuf
        rows, slot_times = store.slab()  # no lookup until the batch is done: the arrays stay
        # each chunk's slots and previous times: slices of one array a batch (the undo log keeps them)
        chunk_slots, prev = np.empty(slots.size, np.int64), np.empty(slots.size, np.int64)
        # the undo log's rows for the whole batch at once: reserved chunk by chunk, a batch of many chunks
        # grew the buffer (and copied what it held) at every doubling, fresh memory each time (stop 30)
        start, h_all = undo.reserve(slots.size)
        if step.whole_batch and dt_col < 0:
            done = np.zeros(1, np.int64)
            try:
                cuts = np.asarray(bounds, np.int64)
                step.batch(
                    x, order, cuts, slots, times, rows, slot_times, xbuf, h_all, prev, chunk_slots, out, done
                )
            finally:  # log the chunks now in the slab, also when the call raised part way
                undo.log_chunks(store, start, chunk_slots, prev, bounds, int(done[0]))
            return
        for lo, hi in pairwise(bounds):
            idx, xb, c_slots, h_prev = order[lo:hi], xbuf[: hi - lo], chunk_slots[lo:hi], h_all[lo:hi]
            gather_chunk(x, idx, slots, times, rows, slot_times, xb, h_prev, prev[lo:hi], c_slots, dt_col)
            undo.log_chunks(store, start, chunk_slots, prev, [lo, hi], hi)
            step.chunk(xb, h_prev, rows, slot_times, c_slots, times, idx, out)

    def _score_runs(
        self, keys: pa.Array, slots: np.ndarray, runs: np.ndarray, times: np.ndarray, x: np.ndarray
    ) -> np.ndarray:
        """A batch where the keys ``runs`` (slots, from :func:`_long_run_slots`) have far more events than
        the batch's wide waves: each of them runs through the model's full-sequence ``forward`` at once (a
        long series stops costing a narrow step per event; the step == forward law makes the results the
        same), the other events through the stepping path. Keys are independent, so doing one key's run
        before or after the others keeps every key's order."""
        out = np.empty((slots.size, len(self._output_names)), np.float32)
        in_run = np.isin(slots, runs)
        rest = np.flatnonzero(~in_run)
        if rest.size:
            idx = pa.array(rest)
            out[rest] = self._score(keys.take(idx), times[rest], x[rest], runs_allowed=False)
        run_rows = np.flatnonzero(in_run)
        grouped = run_rows[np.argsort(slots[run_rows], kind="stable")]  # each key's rows, in order
        cuts = np.flatnonzero(np.diff(slots[grouped])) + 1
        store = self.store
        with torch.inference_mode():
            for rows in np.split(grouped, cuts):
                one = slots[rows[:1]]
                xs = np.array(x[rows], dtype=np.float32)
                t = times[rows]
                if self._dt_col is not None:
                    xs[:, self._dt_col] = _seconds_since(t, np.r_[store.slot_times(one), t[:-1]])
                state = store.gather_slots(one)
                self._remember(one, state)
                o, final = self.model(
                    torch.from_numpy(xs).unsqueeze(0).to(self._device), state.to(self._device)
                )
                out[rows] = o[0].cpu().numpy()
                store.scatter_slots(one, final.cpu(), t[-1:])
        return out

    def _step_rows(self, step: StepFn, slots: np.ndarray, times: np.ndarray, xb: np.ndarray) -> np.ndarray:
        """One chunk (distinct slots): gather the states and times (logged for undo in the same pass), fill
        dt, step, scatter the new states and times; returns the outputs."""
        store = self.store
        state, prev = self._undo.take(store, slots)
        if self._dt_col is not None:
            xb[:, self._dt_col] = _seconds_since(times, prev)
        xt, st = torch.from_numpy(xb), torch.from_numpy(state)
        if self._device.type != "cpu":
            xt, st = xt.to(self._device), st.to(self._device)
        out, new_state = step(xt, st)
        store.scatter_slots(slots, new_state, times)
        return out.cpu().numpy()

    def remove_keys(self, keys: KeyBatch) -> int:
        """Forget keys (their next event starts from a zero state); returns how many were known."""
        return self.store.remove(keys)

    def evict_expired(self) -> int:
        """Free the memory of every expired key (previous event more than the TTL behind the watermark).

        Their next event would start from a zero state anyway, so this changes no score; returns how many
        keys were freed (0 without a TTL).
        """
        if self.key_ttl_ms is None or self.store.watermark_ms < 0:
            return 0
        return self.store.evict_idle(self.store.watermark_ms, self.key_ttl_ms)


def _long_run_slots(slots: np.ndarray) -> np.ndarray:
    """The slots of a batch that step faster through ``forward`` than through waves.

    Stepping a batch with repeated keys goes in waves: wave ``w`` holds the ``w``-th event of every key with
    more than ``w`` events. A wave of ``WIDE_WAVE_ROWS`` rows or more batches well; narrower ones cost a
    near-fixed step each. So a key is run whole only when its events reach ``SEQUENCE_MIN_EVENTS`` or more
    past the depth where the waves turn narrow: many keys with tens of events each (a replayed backlog)
    stay in wide waves, one hot key among thousands, or a few keys with long series, run whole. At most
    ``WIDE_WAVE_ROWS - 1`` keys can qualify, so the per-key calls stay few."""
    uniq, counts = np.unique(slots, return_counts=True)
    wide_depth = (
        int(np.partition(counts, -WIDE_WAVE_ROWS)[-WIDE_WAVE_ROWS]) if counts.size >= WIDE_WAVE_ROWS else 0
    )
    return uniq[counts >= wide_depth + SEQUENCE_MIN_EVENTS]


def _as_int64_ms(times_ms: np.ndarray | Sequence[int] | pa.Array | pa.ChunkedArray) -> np.ndarray:
    """Event times as int64 milliseconds (accepts Arrow timestamp/int arrays and numpy datetime64)."""
    if isinstance(times_ms, (pa.Array, pa.ChunkedArray)):
        if pa.types.is_timestamp(times_ms.type):
            times_ms = times_ms.cast(pa.timestamp("ms")).cast(pa.int64())
        return np.asarray(times_ms.to_numpy(zero_copy_only=False), dtype=np.int64)
    arr = np.asarray(times_ms)
    if np.issubdtype(arr.dtype, np.datetime64):
        return arr.astype("datetime64[ms]").astype(np.int64)
    return arr.astype(np.int64, copy=False)
