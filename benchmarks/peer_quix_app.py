"""The peer of ``benchmarks/peer_quixstreams.py``: what a Python team would write instead of rnnstream.

A Quix Streams application (run in its own virtual environment, see the benchmark) that reads rnnstream's
JSON events, keeps each key's GRU hidden state and last event time in Quix's state store (RocksDB, changelog
topic on; one value a key, so one get and one set a message) and steps the same GRU once per message, as
Quix's docs show for stateful processing; it writes ``{"key", "time", "score"}`` per event. The features are
rnnstream's: the event's 31 values normalized with the model's buffers, then ``log1p`` of the seconds since
the key's previous event (0 for the first).

The step is the GRU cell's equations in numpy (``--step numpy``, the default): measured alone, about 50 us a
message against about 120 us for ``torch.gru_cell`` on one row (``--step torch``), whose per-call overhead
dominates at batch 1; the faster one is the peer a careful team would ship.

Configured as Quix's docs describe for throughput: the documented defaults, spelled out (a checkpoint every
``commit_interval`` = 5 s: "longer commit intervals ... flush state stores and changelogs less often, limiting
the IO", docs/advanced/checkpointing.md; librdkafka's batching producer and prefetching consumer, which Quix
leaves at their defaults apart from ``enable.idempotence`` and ``fetch.queue.backoff.ms`` = 100). rnnstream's
workers commit every 250 ms, so the peer's commit cadence is the easier one.

Prints one JSON line: the messages processed and, for the benchmark's window, the moment (``time.monotonic``,
one clock for every process of the machine) and this process's CPU seconds (``time.process_time``: every
thread, Python's and librdkafka's) when its last Kafka commit returned (the transaction's commit, or the
offsets' commit at-least-once: hooked on Quix's producer and consumer, nothing else changed), and when it
processed its first message. ``app.run`` stops after ``--count`` messages and commits at once, so the last
commit covers every message; the state store flush and the close that follow it are not counted.
"""

from __future__ import annotations

import argparse
import json
import math
import time

import numpy as np


def numpy_step(w: dict[str, np.ndarray]):
    """``step(x, h, dt) -> (h', score)``: one GRU cell step and the sigmoid head in float32 numpy."""
    w_ih, w_hh = w["w_ih"], w["w_hh"]
    b_ih, b_hh = w["b_ih"], w["b_hh"]
    head_w, head_b = w["head_w"][0], float(w["head_b"][0])
    mean, std = w["norm_mean"], w["norm_std"]
    n = w_hh.shape[1]
    z = np.empty(w_ih.shape[1], np.float32)

    def sigmoid(v):
        return np.float32(0.5) * (np.float32(1.0) + np.tanh(np.float32(0.5) * v))  # no overflow

    def step(x: list, h: np.ndarray, dt: float) -> tuple[np.ndarray, float]:
        z[:-1] = (np.asarray(x, np.float32) - mean) / std
        z[-1] = math.log1p(dt)
        gi, gh = w_ih @ z + b_ih, w_hh @ h + b_hh
        r = sigmoid(gi[:n] + gh[:n])
        u = sigmoid(gi[n : 2 * n] + gh[n : 2 * n])
        c = np.tanh(gi[2 * n :] + r * gh[2 * n :])
        h = (np.float32(1.0) - u) * c + u * h
        return h, 0.5 * (1.0 + math.tanh(0.5 * (float(head_w @ h) + head_b)))

    return step


def torch_step(w: dict[str, np.ndarray]):
    """The same step through ``torch.gru_cell`` (one row a call)."""
    import torch

    torch.set_num_threads(1)
    t = {k: torch.from_numpy(v) for k, v in w.items()}
    mean, std = t["norm_mean"], t["norm_std"]

    def step(x: list, h: np.ndarray, dt: float) -> tuple[np.ndarray, float]:
        xt = (torch.tensor(x, dtype=torch.float32) - mean) / std
        z = torch.cat([xt, torch.tensor([math.log1p(dt)], dtype=torch.float32)])
        with torch.inference_mode():
            ht = torch.gru_cell(
                z.unsqueeze(0), torch.from_numpy(h).unsqueeze(0), t["w_ih"], t["w_hh"], t["b_ih"], t["b_hh"]
            )[0]
            p = torch.sigmoid(t["head_w"] @ ht + t["head_b"])
        return ht.numpy(), float(p[0])

    return step


def record_commits(commits: list[tuple[float, float]]) -> None:
    """Append ``(monotonic, process_time)`` to ``commits`` each time Quix's Kafka commit returns."""
    from quixstreams.internal_producer import InternalProducer
    from quixstreams.kafka.consumer import BaseConsumer

    def timed(fn):
        def wrapper(*args, **kwargs):
            out = fn(*args, **kwargs)
            commits.append((time.monotonic(), time.process_time()))
            return out

        return wrapper

    InternalProducer.commit_transaction = timed(InternalProducer.commit_transaction)
    BaseConsumer.commit = timed(BaseConsumer.commit)


def main() -> int:
    from quixstreams import Application  # in the peer's own environment only

    ap = argparse.ArgumentParser()
    ap.add_argument("--bootstrap", required=True)
    ap.add_argument("--topic", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--weights", required=True, help="npz of the GRU, head and normalization tensors")
    ap.add_argument("--guarantee", choices=("at-least-once", "exactly-once"), required=True)
    ap.add_argument("--count", type=int, required=True)
    ap.add_argument("--group", required=True)
    ap.add_argument("--state-dir", required=True)
    ap.add_argument("--step", choices=("numpy", "torch"), default="numpy")
    args = ap.parse_args()

    with np.load(args.weights, allow_pickle=False) as npz:
        w = {k: npz[k].astype(np.float32) for k in npz.files}
    step = numpy_step(w) if args.step == "numpy" else torch_step(w)
    h0 = np.zeros(w["w_hh"].shape[1], np.float32)

    app = Application(
        broker_address=args.bootstrap,
        consumer_group=args.group,
        auto_offset_reset="earliest",
        processing_guarantee=args.guarantee,
        state_dir=args.state_dir,
        use_changelog_topics=True,
        commit_interval=5.0,  # the documented default: the fewest checkpoints the docs suggest
        loglevel="WARNING",
        # Not a tuning: the embedded broker answers a fetch with the requested partitions' whole backlog,
        # whatever fetch.max.bytes asks, and librdkafka refuses a response over receive.message.max.bytes
        # (100,000,000 by default; about 298,000 of these JSON events in one consumer's 4 partitions): it
        # drops the connection and fails the requests in flight on it with "Local: Bad message format".
        # A real Kafka broker honours fetch.max.bytes (50 MB by default), so this limit never binds there.
        consumer_extra_config={"receive.message.max.bytes": 1_000_000_000},
    )
    events = app.topic(args.topic, value_deserializer="json")
    out = app.topic(args.out, value_serializer="json")
    started: list[tuple[float, float]] = []
    commits: list[tuple[float, float]] = []
    processed = [0]
    record_commits(commits)

    def score(event: dict, state) -> dict:
        if not started:
            started.append((time.monotonic(), time.process_time()))
        processed[0] += 1
        t = int(event["time"])
        prev = state.get("s")  # {"t": last event time ms, "h": hidden state} or None
        if prev is None:
            h, dt = h0, 0.0
        else:
            h = np.asarray(prev["h"], np.float32)
            dt = 0.0 if t < prev["t"] else float(np.float32(t - prev["t"]) * np.float32(1e-3))
        h, p = step(event["x"], h, dt)
        state.set("s", {"t": t, "h": h.tolist()})
        return {"key": event["key"], "time": t, "score": p}

    sdf = app.dataframe(events)
    sdf = sdf.apply(score, stateful=True)
    sdf.to_topic(out)
    app.run(count=args.count, timeout=120)
    if processed[0] < args.count or not commits:  # app.run also stops after 120 s without a message
        raise SystemExit(f"the Quix peer stopped after {processed[0]} of {args.count} messages")
    (first_s, first_cpu_s), (commit_s, commit_cpu_s) = started[0], commits[-1]
    report = {"events": args.count, "first_message_s": first_s, "first_message_cpu_s": first_cpu_s}
    print(json.dumps({**report, "last_commit_s": commit_s, "last_commit_cpu_s": commit_cpu_s}), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
