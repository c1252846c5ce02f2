"""The compiled per-event recursion of the adaptive anomaly score.

Part of :mod:`~rnnstream.rnn_core.anomaly_likelihood`. Why compiled: the recursion is sequential in time,
so a long single series (one key, 300k events) cannot be vectorized over keys; as NumPy row operations it
cost ~60 us an event (a dozen array calls each), and ``score-file`` on one long series ran at ~7k events/s.
Here each key's events run in one scalar float32 loop (the same operations, in the same order and precision,
as the NumPy form it replaced: bit for bit equal), so stepping one event at a time and running the whole
sequence stay equal (the step == forward law).
"""

from __future__ import annotations

import numpy as np

from rnnstream.rnn_core.compiled_loop import compiled


@compiled()
def _log(x: np.float32) -> np.float32:
    """float32 ``log`` through float64 (the compiled and the Python forms round it the same way)."""
    return np.float32(np.log(np.float64(x)))


@compiled()
def likelihood_recursion(
    e_all: np.ndarray,  # [B, T] float32 standardized errors
    stats: np.ndarray,  # [B, 6] float32 count, short, long, var, frozen, quiet_var; updated in place
    zs: np.ndarray,  # [B, T] float32 out: the score's z
    scored: np.ndarray,  # [B, T] bool out: the key was warm (scored and learned from)
    params: np.ndarray,  # float32 constants, in the order of anomaly_likelihood._recursion_params
) -> None:
    """Run every key's events in order, writing ``zs``/``scored`` and leaving the final stats in ``stats``."""
    short_w, min_long, prior_n, min_var = params[0], params[1], params[2], params[3]
    max_count, clip, warmup, ref_mean = params[4], params[5], params[6], params[7]
    ref_inv_sd, freeze, max_frozen, ref_quiet_var = params[8], params[9], params[10], params[11]
    quiet_sigmas, floor, spike_sigmas = params[12], params[13], params[14]
    spikes = not np.isnan(spike_sigmas)
    one, zero = np.float32(1.0), np.float32(0.0)
    two_sided = not np.isnan(ref_quiet_var)  # models fitted before it was stored score one-sided, as then
    ref_quiet_inv_sd = one / np.float32(np.sqrt(max(ref_quiet_var, min_var))) if two_sided else zero
    log_ref = _log(max(ref_mean, floor))
    full = warmup + short_w  # from here on the short mean is a full window's (EWMA) mean
    b, t = e_all.shape
    for k in range(b):
        count, short, long, var, frozen = stats[k, 0], stats[k, 1], stats[k, 2], stats[k, 3], stats[k, 4]
        quiet_var = stats[k, 5]
        for i in range(t):
            e = e_all[k, i]
            warm = count >= warmup  # a warming key is neither scored nor learned from
            n = max(count - warmup + one, one)  # events in the short mean, this one included
            short = short + max(one / n, one / short_w) * (e - short) if warm else e
            inv_sd = one / np.float32(np.sqrt(max(var, min_var)))
            z_i = (short - long) * inv_sd  # against the key's own history
            z_up = min(z_i, (short - ref_mean) * ref_inv_sd)  # ... and against the training errors
            if spikes:  # the event alone, from spike_sigmas of a single event's spread on
                z_up = max(z_up, min((e - long) * inv_sd, (e - ref_mean) * ref_inv_sd) - spike_sigmas)
            # the other side: log(history / short mean) against its own spread, from quiet_sigmas of it on
            settled = two_sided and count >= full
            log_short = _log(max(short, floor))
            log_ratio = _log(max(long, floor)) - log_short
            quiet_sd = np.float32(np.sqrt(max(quiet_var, min_var)))
            z_quiet = min(log_ratio / quiet_sd, (log_ref - log_short) * ref_quiet_inv_sd) - quiet_sigmas
            zs[k, i] = max(z_up, z_quiet) if settled else z_up
            scored[k, i] = warm
            a_long = max(one / (count - warmup + one + prior_n), min_long)
            # an episode starts when z passes freeze_z and lasts while recent errors stay above the history
            going = warm and (z_i > freeze or (frozen > zero and z_i > zero))
            frozen = min(frozen + one, max_count) if going else zero
            # a flagged stretch is not learned as normal, unless it lasts: then it is the new normal
            if (frozen > zero and frozen <= max_frozen) or not warm:
                a_long = zero
            spread = clip * np.float32(np.sqrt(max(var, min_var)))
            d = min(max(e - long, -spread), spread)  # an outlier moves the history by at most `clip` sigmas
            if settled:  # the log ratio's spread learns when the history does, from the first full window
                ds = min(max(-log_ratio, -clip * quiet_sd), clip * quiet_sd)
                a_quiet = max(one / (count - full + one + prior_n), min_long) if a_long > zero else zero
                quiet_var = (one - a_quiet) * (quiet_var + a_quiet * ds * ds)
            long = long + a_long * d
            var = (one - a_long) * (var + a_long * d * d)
            count = min(count + one, max_count)
        stats[k, 0], stats[k, 1], stats[k, 2], stats[k, 3], stats[k, 4] = count, short, long, var, frozen
        stats[k, 5] = quiet_var
