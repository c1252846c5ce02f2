"""The peer of ``benchmarks/peer_quixstreams.py``: what a Python team would write instead of rnnstream.

A Quix Streams application (run in its own virtual environment, see the benchmark) that reads rnnstream's
JSON events, keeps each key's GRU hidden state and last event time in Quix's state store (RocksDB, changelog
topic on) and steps the same GRU once per message, as Quix's docs show for stateful processing; it writes
``{"key", "time", "score"}`` per event. The features are rnnstream's: the event's 31 values normalized with
the model's buffers, then ``log1p`` of the seconds since the key's previous event (0 for the first).

Prints one JSON line: events processed and seconds from the first processed message until ``app.run``
returned (every output produced and, with exactly-once, committed).
"""

from __future__ import annotations

import argparse
import json
import math
import time

import numpy as np
import torch
from quixstreams import Application


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--bootstrap", required=True)
    ap.add_argument("--topic", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--weights", required=True, help="npz of the GRU, head and normalization tensors")
    ap.add_argument("--guarantee", choices=("at-least-once", "exactly-once"), required=True)
    ap.add_argument("--count", type=int, required=True)
    ap.add_argument("--group", required=True)
    ap.add_argument("--state-dir", required=True)
    args = ap.parse_args()

    torch.set_num_threads(1)
    with np.load(args.weights, allow_pickle=False) as npz:
        w = {k: torch.from_numpy(npz[k]) for k in npz.files}
    w_ih, w_hh, b_ih, b_hh = w["w_ih"], w["w_hh"], w["b_ih"], w["b_hh"]
    head_w, head_b, mean, std = w["head_w"], w["head_b"], w["norm_mean"], w["norm_std"]
    hidden = w_hh.shape[1]

    app = Application(
        broker_address=args.bootstrap,
        consumer_group=args.group,
        auto_offset_reset="earliest",
        processing_guarantee=args.guarantee,
        state_dir=args.state_dir,
        use_changelog_topics=True,
        loglevel="WARNING",
    )
    events = app.topic(args.topic, value_deserializer="json")
    out = app.topic(args.out, value_serializer="json")
    started: list[float] = []

    def score(event: dict, state) -> dict:
        if not started:
            started.append(time.monotonic())
        t = int(event["time"])
        h_prev = state.get("h")
        t_prev = state.get("t")
        h = torch.tensor(h_prev, dtype=torch.float32) if h_prev is not None else torch.zeros(hidden)
        dt = 0.0 if t_prev is None or t < t_prev else float(np.float32(t - t_prev) * np.float32(1e-3))
        x = (torch.tensor(event["x"], dtype=torch.float32) - mean) / std
        z = torch.cat([x, torch.tensor([math.log1p(dt)], dtype=torch.float32)])
        with torch.inference_mode():
            h = torch.gru_cell(z.unsqueeze(0), h.unsqueeze(0), w_ih, w_hh, b_ih, b_hh)[0]
            p = torch.sigmoid(head_w @ h + head_b)
        state.set("h", h.tolist())
        state.set("t", t)
        return {"key": event["key"], "time": t, "score": float(p[0])}

    sdf = app.dataframe(events)
    sdf = sdf.apply(score, stateful=True)
    sdf.to_topic(out)
    app.run(count=args.count, timeout=120)
    seconds = time.monotonic() - started[0] if started else float("nan")
    print(json.dumps({"events": args.count, "seconds": seconds}), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
