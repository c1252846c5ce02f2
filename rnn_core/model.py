"""StreamingModel: a recurrent model (RNN/LSTM/GRU + a head) with a streaming ``step`` for serving.

One set of weights, two ways to run it:

- ``forward(x[B, T, D], state)`` runs whole sequences through ``torch.nn.RNN/LSTM/GRU`` (training, replays);
- ``step(x[B, D], state[B, S, L, H])`` advances one event per key with ``torch.gru_cell`` (and friends) on
  the same parameters (serving: gather the keys' states, step, scatter them back).

The law: stepping a key's events one at a time gives the same outputs and final state as ``forward`` on the
whole sequence (float32, abs tol 1e-5). The per-key state is ``[S, L, H]``: ``S`` = 2 for LSTM (h, c), else 1.

Input row layout (see :class:`FeatureSpec`): continuous columns (normalized with buffers fitted on training
data), categorical codes (embedded; code 0 and any out-of-range code mean "unknown"), and last, when the spec
uses it, the seconds since the key's previous event (fed as ``log1p(max(dt, 0))``).

Heads and their output columns: see :mod:`~rnnstream.rnn_core.model_heads`.

``stateless=True`` gives the same-size baseline that forgets: the state is zeroed before every event.

On CUDA, cuDNN runs ``forward``'s RNN in TF32 by default while ``step``'s cell matmuls run in full
float32, which breaks the law (TF32 keeps 10 mantissa bits: errors up to ~1e-3). In eval mode on CUDA both
therefore run under :func:`exact_numerics`; a serving or evaluation process may call
:func:`set_exact_numerics` once at start instead (process-wide).
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rnnstream.rnn_core import forecast_rollout, inference_step, model_heads
from rnnstream.rnn_core.adaptive_state import KeyInputs, drift_slice, extra_row, key_inputs, with_extra_row
from rnnstream.rnn_core.anomaly_likelihood import LikelihoodWindows
from rnnstream.rnn_core.config import ModelConfig
from rnnstream.rnn_core.features import feature_slices
from rnnstream.rnn_core.folded_weights import CellWeights, inference_weights
from rnnstream.rnn_core.input_drift import DriftWindow
from rnnstream.rnn_core.numerics import exact_numerics, set_exact_numerics
from rnnstream.rnn_core.score_buffers import fit_score_buffers, register_score_buffers
from rnnstream.rnn_core.score_calibration import DEFAULT_CALIBRATION_POINTS, calibrated_score_with_tails
from rnnstream.rnn_core.sequence_loss import sequence_loss

__all__ = ["StreamingModel", "exact_numerics", "set_exact_numerics"]

_RNN_CLASSES: dict[str, type[nn.RNNBase]] = {"rnn": nn.RNN, "lstm": nn.LSTM, "gru": nn.GRU}


class StreamingModel(nn.Module):
    """Recurrent model with a per-key state, a streaming ``step`` and a training ``forward``/``loss``."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        spec = config.features
        self.cell = config.cell
        self.head_kind = config.head
        self.num_layers = config.num_layers
        self.hidden_size = config.hidden_size
        self.num_state = config.state_tensors  # recurrent state tensors; state_shape adds the score's slab
        self.stateless = config.stateless
        self.adaptive = config.adaptive_likelihood
        self.windows = LikelihoodWindows()
        self.drift_inputs = config.adaptive_drift
        self.drift = DriftWindow()
        self.num_continuous = spec.num_continuous
        self.input_size = spec.input_size
        self._cont, self._cat, self._dt = feature_slices(spec)
        cards = spec.cardinalities
        self.num_categorical = len(cards)

        self.register_buffer("norm_mean", torch.zeros(self.num_continuous))
        self.register_buffer("norm_std", torch.ones(self.num_continuous))
        if cards:
            self.embedding = nn.Embedding(sum(cards), config.embedding_dim)
            offsets = np.concatenate([[0], np.cumsum(cards)[:-1]]).astype(np.int64)
            self.register_buffer("cat_offsets", torch.from_numpy(offsets), persistent=False)
            self.register_buffer("cat_cards", torch.tensor(cards, dtype=torch.int64), persistent=False)
        rnn_input = self.num_continuous + len(cards) * config.embedding_dim + int(spec.use_time_delta)
        self.rnn = _RNN_CLASSES[config.cell](
            rnn_input,
            config.hidden_size,
            num_layers=config.num_layers,
            batch_first=True,
            dropout=config.dropout if config.num_layers > 1 else 0.0,
        )
        self._layer_weight_names = [
            (f"weight_ih_l{i}", f"weight_hh_l{i}", f"bias_ih_l{i}", f"bias_hh_l{i}")
            for i in range(self.num_layers)
        ]

        self.head = nn.Linear(config.hidden_size, model_heads.head_width(config))
        if config.head == "forecast":
            register_score_buffers(self)  # the fitted score statistics: see :mod:`.score_buffers`

    # ----------------------------------------------------------------------------------------------- shapes
    @property
    def state_shape(self) -> tuple[int, int, int]:
        """Per-key state shape ``(S, L, H)`` (see :attr:`ModelConfig.state_shape`)."""
        return self.config.state_shape

    def output_names(self) -> list[str]:
        """Names of the ``K`` output columns of ``forward``/``step`` (see :mod:`.model_heads`)."""
        return model_heads.output_names(self.config)

    @property
    def output_size(self) -> int:
        return len(self.output_names())

    def init_state(self, n: int) -> Tensor:
        """Zero states for ``n`` keys: ``float32 [n, S, L, H]`` on the model's device."""
        return torch.zeros((n, *self.state_shape), dtype=torch.float32, device=self.norm_mean.device)

    # ----------------------------------------------------------------------------------------------- inputs
    def _normalized(self, x: Tensor) -> Tensor:
        return (x[..., self._cont] - self.norm_mean) / self.norm_std

    def _codes(self, x: Tensor) -> Tensor:
        """Categorical codes as int64 ``[..., C]``; anything outside ``[0, cardinality)`` becomes 0."""
        codes = x[..., self._cat].round().long()
        return torch.where((codes >= 0) & (codes < self.cat_cards), codes, 0)

    def _rnn_inputs(self, x: Tensor, normalized: bool = True, cont: Tensor | None = None) -> Tensor:
        """Model input rows ``[..., D]`` -> recurrent cell inputs ``[..., I]`` (continuous columns left
        unnormalized when ``normalized`` is False: weights with the normalization folded in take them;
        ``cont``: the continuous columns already normalized, by each key's own statistics)."""
        parts = []
        if self.num_continuous:
            if cont is not None:
                parts.append(cont)
            elif normalized:
                parts.append(self._normalized(x))
            elif self.num_continuous == x.shape[-1]:
                parts.append(x)
            else:
                parts.append(x[..., self._cont])
        if self.num_categorical:
            emb = self.embedding(self._codes(x) + self.cat_offsets)
            parts.append(emb.flatten(-2))
        if self._dt is not None:
            parts.append(torch.log1p(x[..., self._dt : self._dt + 1].clamp_min(0.0)))
        return parts[0] if len(parts) == 1 else torch.cat(parts, dim=-1)

    # ------------------------------------------------------------------------------------------ recurrence
    def _cell_step(self, z: Tensor, state: Tensor, weights: Sequence[CellWeights] | None = None) -> Tensor:
        """One event per key through every layer: ``z[B, I]``, ``state[B, S, L, H]`` -> new state.

        ``weights`` (per layer ``w_ih, w_hh, b_ih, b_hh``) defaults to the recurrent module's parameters.
        """
        hs: list[Tensor] = []
        cs: list[Tensor] = []
        inp = z
        last = self.num_layers - 1
        if weights is None:
            weights = [tuple(getattr(self.rnn, n) for n in names) for names in self._layer_weight_names]
        for layer, (w_ih, w_hh, b_ih, b_hh) in enumerate(weights):
            if self.cell == "gru":
                h = torch.gru_cell(inp, state.select(1, 0).select(1, layer), w_ih, w_hh, b_ih, b_hh)
            elif self.cell == "lstm":
                hc = (state.select(1, 0).select(1, layer), state.select(1, 1).select(1, layer))
                h, c = torch.lstm_cell(inp, hc, w_ih, w_hh, b_ih, b_hh)
                cs.append(c)
            else:
                h = torch.rnn_tanh_cell(inp, state.select(1, 0).select(1, layer), w_ih, w_hh, b_ih, b_hh)
            hs.append(h)
            inp = h
            if self.training and layer < last and self.rnn.dropout > 0:
                inp = F.dropout(h, self.rnn.dropout, training=True)
        b = z.shape[0]
        if len(hs) == 1 and not cs:
            return hs[0].view(b, 1, 1, self.hidden_size)
        return torch.stack(hs + cs, dim=1).view(b, self.num_state, self.num_layers, self.hidden_size)

    def _run(self, x: Tensor, state: Tensor | None) -> tuple[Tensor, Tensor, Tensor, KeyInputs | None]:
        """Whole sequences -> (top hidden after each event [B,T,H], top hidden before each, final state,
        the keys' drift-following inputs when the model has them). The final state's statistics slabs carry
        the input statistics forward and the error statistics as they came (see :meth:`_adaptive_score`)."""
        b = x.shape[0]
        if state is None or self.stateless:
            state = self.init_state(b)
        if not self.drift_inputs:
            top_after, top_before, final = self._recur(self._rnn_inputs(x), state)
            if self.adaptive:
                final = with_extra_row(self, final, extra_row(self, state))
            return top_after, top_before, final, None
        inputs = key_inputs(self, x, state)
        top_after, top_before, final = self._recur(self._rnn_inputs(x, cont=inputs.normalized), state)
        return top_after, top_before, self._with_input_stats(final, state, inputs.stats), inputs

    def _with_input_stats(self, rnn: Tensor, state: Tensor, stats: Tensor) -> Tensor:
        """The recurrent state ``rnn`` with ``state``'s statistics, the input statistics set to ``stats``."""
        row = extra_row(self, state).clone()
        row[:, drift_slice(self)] = stats
        return with_extra_row(self, rnn, row)

    def _recur(self, z: Tensor, state: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Cell inputs ``z[B, T, I]`` from ``state`` -> (top after, top before, final recurrent state)."""
        b, t = z.shape[:2]
        if self.stateless:
            # Each event alone from a zero state: one batch of B*T one-step sequences.
            z1 = z.reshape(b * t, 1, z.shape[-1])
            zeros = self.init_state(b * t)
            seq, hn = self.rnn(z1, self._to_rnn_state(zeros))
            top_after = seq.view(b, t, self.hidden_size)
            top_before = torch.zeros_like(top_after)
            final = self._from_rnn_state(hn)
            final = final.view(b, t, *self.state_shape)[:, -1] if t else state
            return top_after, top_before, final
        if t == 0:
            empty = z.new_zeros((b, 0, self.hidden_size))
            return empty, empty, state[:, : self.num_state]
        top_after, hn = self.rnn(z, self._to_rnn_state(state))
        top_before = torch.cat([state[:, 0, -1].unsqueeze(1), top_after[:, :-1]], dim=1)
        return top_after, top_before, self._from_rnn_state(hn)

    def _to_rnn_state(self, state: Tensor) -> Tensor | tuple[Tensor, Tensor]:
        h = state[:, 0].transpose(0, 1).contiguous()
        if self.cell == "lstm":
            return h, state[:, 1].transpose(0, 1).contiguous()
        return h

    def _from_rnn_state(self, hn: Tensor | tuple[Tensor, Tensor]) -> Tensor:
        if self.cell == "lstm":
            return torch.stack([hn[0].transpose(0, 1), hn[1].transpose(0, 1)], dim=1)
        return hn.transpose(0, 1).unsqueeze(1).contiguous()

    # ------------------------------------------------------------------------------------------------ heads
    def _outputs(
        self, x: Tensor, top_before: Tensor, top_after: Tensor, inputs: KeyInputs | None = None
    ) -> Tensor:
        """Head outputs ``[..., K]`` for events ``x[..., D]`` given the top hidden state before and after."""
        return model_heads.head_outputs(self, x, top_before, top_after, inputs)

    def _error_z(self, actual: Tensor, predicted: Tensor) -> Tensor:
        return model_heads.forecast_error_z(self, actual, predicted)

    def _calibrated(self, error_z: Tensor) -> Tensor:
        """Strictly increasing map of ``error_z`` into [0, 1) through the stored quantile knots."""
        return calibrated_score_with_tails(error_z, self.score_knots, self.score_tails)

    # -------------------------------------------------------------------------------------------- public API
    def forward(self, x: Tensor, state: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Sequences ``x[B, T, D]`` from ``state[B, S, L, H]`` (zeros when None) -> (out[B, T, K], state)."""
        with self._numerics(x):
            top_after, top_before, final, inputs = self._run(x, state)
            out = self._outputs(x, top_before, top_after, inputs)
            if self.adaptive:
                return self._adaptive_score(out, state, final)
            return out, final

    def step(self, x: Tensor, state: Tensor) -> tuple[Tensor, Tensor]:
        """One event per key: ``x[B, D]``, ``state[B, S, L, H]`` -> (out[B, K], new state[B, S, L, H]).

        The serving hot path; wrap calls in ``torch.inference_mode()`` when no gradient is needed.
        """
        if self.stateless:
            state = torch.zeros_like(state)
        with self._numerics(x):
            if self.drift_inputs:  # each key's own input normalization: nothing to fold into the weights
                seq = key_inputs(self, x.unsqueeze(1), state)
                inputs = KeyInputs(seq.normalized[:, 0], seq.level[:, 0], seq.scale[:, 0], seq.stats)
                rnn = self._cell_step(self._rnn_inputs(x, cont=inputs.normalized), state)
                top = self.num_layers - 1
                out = self._outputs(x, state[:, 0, top], rnn[:, 0, top], inputs)
                return self._adaptive_score(out, state, self._with_input_stats(rnn, state, inputs.stats))
            if self.training or torch.is_grad_enabled():
                new_state = self._cell_step(self._rnn_inputs(x), state)
            else:  # inference: the first layer's weights have the input normalization folded in (cached)
                folded, weights = self._inference_weights()
                z = self._rnn_inputs(x, normalized=not folded)
                new_state = self._cell_step(z, state, weights)
            top = self.num_layers - 1
            top_before = state.select(1, 0).select(1, top)
            out = self._outputs(x, top_before, new_state.select(1, 0).select(1, top))
            if self.adaptive:
                return self._adaptive_score(
                    out, state, with_extra_row(self, new_state, extra_row(self, state))
                )
            return out, new_state

    def stepper(self) -> inference_step.StepFn:
        """:meth:`step` for a run of inference calls, its lookups done once: see :mod:`.inference_step`."""
        return inference_step.stepper(self)

    def _adaptive_score(self, out: Tensor, state: Tensor | None, full: Tensor) -> tuple[Tensor, Tensor]:
        """The key's own anomaly likelihood as ``score``: see :func:`.model_heads.adaptive_score`."""
        return model_heads.adaptive_score(self, out, state, full)

    def _inference_weights(self) -> tuple[bool, list[CellWeights]]:
        """(folded, per-layer cell weights) for ``step`` without autograd: see :mod:`.folded_weights`."""
        return inference_weights(self)

    def _numerics(self, x: Tensor) -> contextlib.AbstractContextManager[None]:
        """:func:`exact_numerics` in eval mode on CUDA (the law), nothing otherwise (training keeps TF32)."""
        if x.is_cuda and not self.training:
            return exact_numerics()
        return contextlib.nullcontext()

    def loss(
        self,
        x: Tensor,
        y: Tensor | None = None,
        state: Tensor | None = None,
        mask: Tensor | None = None,
    ) -> tuple[Tensor, Tensor]:
        """Mean loss over the valid events of ``x[B, T, D]`` and the final state, per head: see
        :func:`~rnnstream.rnn_core.sequence_loss.sequence_loss`."""
        return sequence_loss(self, x, y, state, mask)

    @torch.no_grad()
    def fit_normalization(self, x: np.ndarray) -> None:
        """Store mean/std of the continuous columns of ``x[N, D]`` (model input rows) as buffers."""
        x = np.asarray(x)
        cont = x.reshape(-1, x.shape[-1])[:, self._cont].astype(np.float64)
        if cont.shape[1] == 0:
            return
        if cont.shape[0] == 0:
            raise ValueError("fit_normalization needs at least one row")
        mean = np.nanmean(cont, axis=0)
        std = np.nanstd(cont, axis=0)
        std = np.where(np.isfinite(std) & (std > 1e-6), std, 1.0)
        self.norm_mean.copy_(torch.from_numpy(np.nan_to_num(mean)).to(self.norm_mean))
        self.norm_std.copy_(torch.from_numpy(std).to(self.norm_std))

    def rollout(
        self, state: Tensor, steps: int, step_seconds: float = 1.0, x_last: Tensor | None = None
    ) -> Tensor:
        """Forecast heads: ``steps`` future events from ``state`` -> ``[B, steps, n]`` (each forecast fed back
        as the next input): see :func:`~rnnstream.rnn_core.forecast_rollout.rollout`."""
        return forecast_rollout.rollout(self, state, steps, step_seconds, x_last)

    @torch.no_grad()
    def fit_score_calibration(
        self,
        x: Tensor | np.ndarray | Sequence[np.ndarray],
        mask: Tensor | np.ndarray | None = None,
        state: Tensor | None = None,
        num_points: int = DEFAULT_CALIBRATION_POINTS,
    ) -> None:
        """Forecast heads: fit the error scale and the ``error_z`` -> score quantile map on training events.

        ``x`` is ``[B, T, D]`` (with optional ``mask[B, T]`` and start ``state``) or a list of per-key arrays
        ``[T_i, D]`` each run from a zero state. Afterwards ``score`` is about the fraction of training events
        whose ``error_z`` was lower (interpolated; see :func:`.score_calibration.calibrated_score`), so it
        reads as a calibrated anomaly probability, and above the largest training error it still rises with
        ``error_z``. The buffers it fits: see :mod:`.score_buffers`.
        """
        fit_score_buffers(self, x, mask, state, num_points)
