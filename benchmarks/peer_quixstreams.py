"""rnnstream vs a Quix Streams application, side by side, on the same events, weights and broker (issue 15).

The peer is what a Python team picks instead: a Quix Streams (``quixstreams`` on PyPI, pinned below)
application that keeps each key's GRU hidden state in its own state store (RocksDB, changelog topics on)
and steps the model once per message (``benchmarks/peer_quix_app.py``). It runs in its own virtual
environment (``.venv-peer``, made on first use: its pins differ from Ray's and MLflow's), over the same
embedded broker, reading the same JSON events topic.

One run, 4 partitions, one seeded GRU(32->64) (31 float features + the time delta), events of many keys:

- ``peer_eps_at_least_once`` / ``peer_eps_exactly_once``: the Quix application, from its first processed
  message until every output is produced (and, exactly-once, committed);
- ``json_eps`` / ``arrow_eps``: rnnstream with 2 workers, exactly-once (scores written in Kafka transactions
  with the offsets, states checkpointed), over the same events as JSON messages and as Arrow batches;
- ``peer_ratio_json`` = json_eps / peer_eps_exactly_once, ``peer_ratio_arrow`` = arrow_eps /
  peer_eps_exactly_once (both exactly-once);
- ``scores_equal``: every score of both (each peer run and rnnstream's JSON and Arrow runs) equals the
  offline full-sequence forward of the model over that key's events within 1e-5.

Goal (issue 15): peer_ratio_json >= 5, peer_ratio_arrow >= 20. ``--quick``: fewer events and keys.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
PEER_VENV = ROOT / ".venv-peer"
PEER_PIN = "quixstreams==3.28.1"
sys.path.insert(0, str(HERE))

import e2e_throughput as e2e  # noqa: E402  (the shared event generator, producer and worker runner)


def peer_python() -> Path:
    """The peer's interpreter: ``.venv-peer`` with quixstreams, seeing this project's packages (torch, numpy)
    after its own through a ``.pth`` file; made on first use."""
    python = PEER_VENV / "bin" / "python"
    if python.exists():
        return python
    print(f"making {PEER_VENV} with {PEER_PIN} (once) ...", file=sys.stderr, flush=True)
    subprocess.run([sys.executable, "-m", "venv", str(PEER_VENV)], check=True)
    site = subprocess.run(
        [str(python), "-c", "import site; print(site.getsitepackages()[0])"],
        check=True, capture_output=True, text=True,
    ).stdout.strip()  # fmt: skip
    ours = subprocess.run(
        [sys.executable, "-c", "import site; print(site.getsitepackages()[0])"],
        check=True, capture_output=True, text=True,
    ).stdout.strip()  # fmt: skip
    Path(site, "zz_rnnstream_project.pth").write_text(ours + "\n")
    subprocess.run([str(python), "-m", "pip", "install", "-q", PEER_PIN], check=True)
    return python


def export_weights(model, path: Path) -> None:
    """The GRU, head and normalization tensors as a plain npz (read back with allow_pickle=False)."""
    sd = {k: v.detach().cpu().numpy() for k, v in model.state_dict().items()}
    np.savez(
        path,
        w_ih=sd["rnn.weight_ih_l0"], w_hh=sd["rnn.weight_hh_l0"],
        b_ih=sd["rnn.bias_ih_l0"], b_hh=sd["rnn.bias_hh_l0"],
        head_w=sd["head.weight"], head_b=sd["head.bias"],
        norm_mean=sd["norm_mean"], norm_std=sd["norm_std"],
    )  # fmt: skip


def run_peer(python: Path, bootstrap: str, topic: str, weights: Path, guarantee: str, n: int, tmp: Path):
    """(events/s, output topic) of one Quix run over ``topic``."""
    out = f"{topic}.peer-{guarantee}"
    cmd = [
        str(python), str(HERE / "peer_quix_app.py"), "--bootstrap", bootstrap, "--topic", topic, "--out", out,
        "--weights", str(weights), "--guarantee", guarantee, "--count", str(n),
        "--group", f"peer-{guarantee}", "--state-dir", str(tmp / f"quix-state-{guarantee}"),
    ]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=3600)
    if done.returncode != 0:
        raise RuntimeError(f"the Quix peer failed ({guarantee}):\n{done.stderr[-3000:]}")
    report = json.loads(done.stdout.strip().splitlines()[-1])
    return report["events"] / report["seconds"], out


def peer_scores(settings, topic: str) -> dict[tuple[str, int], float]:
    from rnnstream.workers.score_verifier import read_topic

    out = {}
    for m in read_topic(settings, topic, read_committed=True, timeout_s=60):
        v = json.loads(m.value)
        out[(v["key"], int(v["time"]))] = float(v["score"])
    return out


def reference_by_event(settings, schema, model):
    """(key, time ms) -> the offline forward's score, and (partition, offset, index) -> (key, time)."""
    from rnnstream.workers.score_verifier import offline_reference, read_events

    events = read_events(settings, f"{schema.pipeline}.events", schema)
    ref = offline_reference(events, model)
    keys = events.batch.column("key").to_pylist()
    times = events.batch.column("time").cast("int64").to_pylist()
    by_pos = dict(zip(events.positions, zip(keys, times, strict=True), strict=True))
    score_col = ref.output_names.index("score")
    return {by_pos[p]: float(o[score_col]) for p, o in ref.outputs.items()}, events, ref


def rnnstream_error(settings, schema, events, ref) -> tuple[float, int]:
    """(max |score - offline forward|, scores read) of rnnstream's committed scores of ``schema``'s topic."""
    from rnnstream.workers.score_verifier import read_scores, verify

    scores = read_scores(settings, f"{schema.pipeline}.scores")
    verdict = verify(events, scores, ref)
    if not verdict.ok:
        raise RuntimeError(f"rnnstream scores wrong: {verdict.line}")
    return float(verdict.max_score_error or 0.0), verdict.scored


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--quick", action="store_true", help="50,000 events of 10,000 keys (else 100,000 / 100,000)"
    )
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    args = ap.parse_args(argv)

    n, n_keys = (50_000, 10_000) if args.quick else (100_000, 100_000)
    log = (lambda *a: None) if args.json else (lambda *a: print(*a, file=sys.stderr, flush=True))
    python = peer_python()
    with e2e.broker_and_ray("rnnstream-peer-") as (tmp, settings):
        model, handle = e2e.seeded_model(tmp)
        export_weights(model, tmp / "weights.npz")
        start = int(time.time() * 1000) - 3_600_000

        json_schema, arrow_schema = e2e.make_schema("peer-json"), e2e.make_schema("peer-arrow")
        table = e2e.make_events(json_schema, n, n_keys, seed=1, start_ms=start)
        log(f"rnnstream, JSON, exactly-once: {n} events of {n_keys} keys ...")
        json_eps = e2e.end_to_end_eps(settings, json_schema, handle, table, "json", tmp)
        log(f"rnnstream, Arrow, exactly-once: {n} events ...")
        arrow_eps = e2e.end_to_end_eps(settings, arrow_schema, handle, table, "arrow", tmp)

        peer = {}
        for guarantee in ("at-least-once", "exactly-once"):
            log(f"Quix Streams peer, {guarantee}, same JSON topic ...")
            eps, out_topic = run_peer(
                python,
                settings.bootstrap_servers,
                "peer-json.events",
                tmp / "weights.npz",
                guarantee,
                n,
                tmp,
            )
            peer[guarantee] = (eps, out_topic)

        log("checking every score against the offline forward ...")
        want, events_json, ref_json = reference_by_event(settings, json_schema, model)
        err_json, scored_json = rnnstream_error(settings, json_schema, events_json, ref_json)
        _, events_arrow, ref_arrow = reference_by_event(settings, arrow_schema, model)
        err_arrow, scored_arrow = rnnstream_error(settings, arrow_schema, events_arrow, ref_arrow)
        peer_err = {}
        for guarantee, (_, out_topic) in peer.items():
            got = peer_scores(settings, out_topic)
            missing = len(set(want) - set(got))
            if missing:
                raise RuntimeError(f"the Quix peer ({guarantee}) left {missing} events without a score")
            peer_err[guarantee] = max(abs(got[k] - v) for k, v in want.items())

    from importlib.metadata import version

    peer_eos = peer["exactly-once"][0]
    result = {
        "peer": f"quixstreams {PEER_PIN.split('==')[1]} (RocksDB state, changelog on, a GRU step a message)",
        "events": n,
        "keys": n_keys,
        "partitions": e2e.PARTITIONS,
        "json_eps": round(json_eps, 1),
        "arrow_eps": round(arrow_eps, 1),
        "peer_eps_at_least_once": round(peer["at-least-once"][0], 1),
        "peer_eps_exactly_once": round(peer_eos, 1),
        "peer_ratio_json": round(json_eps / peer_eos, 2),
        "peer_ratio_arrow": round(arrow_eps / peer_eos, 2),
        "scores_equal": max(err_json, err_arrow, *peer_err.values()) <= 1e-5
        and scored_json == n
        and scored_arrow == n,
        "max_score_error": {
            "rnnstream_json": err_json,
            "rnnstream_arrow": err_arrow,
            **{f"peer_{g}": e for g, e in peer_err.items()},
        },
        "torch": version("torch"),
    }
    e2e.print_result(result, args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
