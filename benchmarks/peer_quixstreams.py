"""rnnstream vs a Quix Streams application, side by side, on the same events, weights and broker (issue 15).

The peer is what a Python team picks instead: a Quix Streams (``quixstreams`` on PyPI, pinned below)
application that keeps each key's GRU hidden state in its own state store (RocksDB, changelog topics on)
and steps the model once per message (``benchmarks/peer_quix_app.py``: Quix's documented defaults, which its
docs give as the throughput end of the commit-interval trade-off, and the faster of two per-message steps).
It runs in its own virtual environment (``.venv-peer``, made on first use: its pins differ from Ray's and
MLflow's), over the same embedded broker, reading the same JSON events topic.

4 partitions, one seeded GRU(32->64) (31 float features + the time delta), 100,000 keys, ``--rounds`` rounds
(3), each running, back to back and in alternating order, rnnstream on JSON, the peer exactly-once, rnnstream
on Arrow and the peer at-least-once. A noisy shared machine slows whatever runs while it is busy; the
adjacent runs of a round share that, and the figures are the medians over rounds. Both sides run at nice 0
(``e2e.broker_and_ray`` sets Ray's worker niceness, 15 by default, to 0).

One window for both sides (``release_backlog``): each run gets an events topic, consumer group and output
topic of its own, and its consumers start on the empty topic. A warm-up message on each partition (keys of
their own) goes first, and the run waits until the group committed it: the consumers are assigned and have
fetched, scored, produced and committed once (model loaded, first transaction, compiled step, state store
open) -- start-up that a long-running service pays once, left out of both windows alike and printed
(``windows_s.*.warm_s``). Then the same messages (JSON, or the events as Arrow batches for rnnstream's Arrow
run) are sent in one transaction, and the window runs from the moment its commit returned (the whole backlog
visible at once) to the moment the committer's own last Kafka commit returned: each rnnstream worker reports
when its last commit returned (``WorkerMetrics.last_commit_monotonic_s``), the Quix app when its last
``commit_transaction`` (or, at-least-once, offsets commit) returned (``peer_quix_app.record_commits``); both
read ``time.monotonic``, one clock for every process of the machine. The poll that notices the commits
(``e2e.wait_committed``) only says when to ask; its delay is printed (``notice_s``), not counted.

- ``peer_eps_at_least_once`` / ``peer_eps_exactly_once``: the Quix application over that window;
- ``json_eps`` / ``arrow_eps``: rnnstream with 2 workers, exactly-once (scores written in Kafka transactions
  with the offsets, states checkpointed) over that window;
- ``peer_ratio_json`` / ``peer_ratio_arrow``: the median over rounds of that round's rnnstream events/s over
  the peer's exactly-once events/s (wall clock);
- ``*_eps_per_cpu_s`` and ``peer_ratio_*_per_cpu``: the same with events per CPU-second. rnnstream runs 2
  worker processes (2 cores here) and the peer one, so the wall-clock ratio credits rnnstream with a second
  core; per CPU-second it does not. rnnstream's CPU is every process of its Ray (workers, coordinator, raylet,
  GCS, dashboard) except the broker, from the release to the notice; the peer's is its process (all threads)
  over its window;
- ``windows_s``: per side, the medians of the window, warm-up, release commit call and notice delay;
- ``scores_equal``: every score of every run equals the offline full-sequence forward of the model over that
  key's events within 1e-5 (and each rnnstream run scored every event of its topic exactly once).

Goal (issue 15): peer_ratio_json >= 5, peer_ratio_arrow >= 20. ``--quick``: 100,000 events of the 100,000
keys (about 63,000 keys seen, 1.6 events each); without it 300,000 (about 95,000 keys seen).

Why the 300,000-event run used to fail in the peer ("Local: Bad message format" on its watermark and
metadata requests): the embedded broker (noida-db) answers a Fetch with every requested partition's whole
backlog, ignoring fetch.max.bytes, and librdkafka refuses a response over ``receive.message.max.bytes``
(100,000,000 bytes by default): "Receive failed: Invalid response size 101061653 (0..100000000)". It then
drops the connection, and the requests in flight on it fail with that error. So it happens as soon as the
backlog of the partitions one Quix consumer fetches passes 100 MB: here about 298,000 JSON events (~335 bytes
each) on the 4 partitions, whether they were in the topic before the app started or released to it later.
The peer raises ``receive.message.max.bytes`` (``peer_quix_app.py``); a real Kafka broker honours
fetch.max.bytes, where the default never binds. kafka-python (rnnstream's client) drops a response over
100 MB alike; each worker fetches 2 of the 4 partitions, and ``read_topic`` reads one partition at a time.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
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

import e2e_fixtures as e2e  # noqa: E402  (the shared event generator, producer and worker runner)
from release_window import (  # noqa: E402
    Run,
    after,
    one_per_partition,
    release_backlog,
    rnnstream_release,
    source_records,
    timed_run,
)


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


def run_peer(python: Path, settings, warm, records, weights: Path, guarantee: str, tmp: Path, tag: str):
    """(Run, output topic) of one Quix run over ``records`` (one JSON event a message): started on an
    events topic of its own, then ``release_backlog``;
    its window ends when its last Kafka commit returned (the peer reports it)."""
    import psutil

    from rnnstream.workers.kafka_io import TopicAdmin

    topic, out = f"peer-{tag}.events", f"peer-{tag}.scores"
    with TopicAdmin(settings) as admin:
        admin.create_topics([topic, out], e2e.PARTITIONS)
    cmd = [
        str(python), str(HERE / "peer_quix_app.py"), "--bootstrap", settings.bootstrap_servers,
        "--topic", topic, "--out", out, "--weights", str(weights), "--guarantee", guarantee,
        "--count", str(len(warm) + len(records)), "--group", f"peer-{tag}",
        "--state-dir", str(tmp / f"quix-state-{tag}"),
    ]  # fmt: skip
    stdout, stderr = tmp / f"peer-{tag}.out", tmp / f"peer-{tag}.err"
    with stdout.open("w") as so, stderr.open("w") as se:
        proc = subprocess.Popen(cmd, stdout=so, stderr=se)
        try:
            ps = psutil.Process(proc.pid)

            def cpu() -> float:
                t = ps.cpu_times()
                return t.user + t.system

            # not failed: it exits 0 after its last commit returned, maybe before a check sees that commit
            running = lambda: proc.poll() in (None, 0)  # noqa: E731
            load = f"load-{tag}"
            try:
                w = release_backlog(settings, f"peer-{tag}", topic, warm, records, load, cpu, running)
            except RuntimeError as exc:  # the peer failed: say why
                why = stderr.read_text()[-3000:]
                raise RuntimeError(f"the Quix peer failed ({guarantee}):\n{why}") from exc
            proc.wait(timeout=600)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    if proc.returncode != 0:
        raise RuntimeError(f"the Quix peer failed ({guarantee}):\n{stderr.read_text()[-3000:]}")
    report = json.loads(stdout.read_text().strip().splitlines()[-1])
    return timed_run(len(records), w, report["last_commit_s"], report["last_commit_cpu_s"]), out


def ray_cpu_seconds() -> float:
    """CPU seconds (user + system) of every process under this one but the broker (Ray: workers,
    coordinator, raylet, GCS, dashboard), summed; processes that ended are left out."""
    import psutil

    total = 0.0
    for proc in psutil.Process().children(recursive=True):
        try:
            if proc.name().startswith("noida"):  # the embedded broker: serves both sides, counted by neither
                continue
            t = proc.cpu_times()
            total += t.user + t.system
        except psutil.Error:
            continue
    return total


def peer_scores(settings, topic: str) -> dict[tuple[str, int], float]:
    from rnnstream.workers.score_verifier import read_topic

    out = {}
    for m in read_topic(settings, topic, read_committed=True, timeout_s=60):
        v = json.loads(m.value)
        out[(v["key"], int(v["time"]))] = float(v["score"])
    return out


def reference_by_event(settings, schema, model, topic: str | None = None):
    """(key, time ms) -> the offline forward's score over ``topic`` (``schema``'s events topic), the events
    and the reference."""
    from rnnstream.workers.score_verifier import offline_reference, read_events

    events = read_events(settings, topic or f"{schema.pipeline}.events", schema)
    ref = offline_reference(events, model)
    keys = events.batch.column("key").to_pylist()
    times = events.batch.column("time").cast("int64").to_pylist()
    by_pos = dict(zip(events.positions, zip(keys, times, strict=True), strict=True))
    score_col = ref.output_names.index("score")
    return {by_pos[p]: float(o[score_col]) for p, o in ref.outputs.items()}, events, ref


def rnnstream_error(settings, scores_topic: str, events, ref) -> tuple[float, int]:
    """(max |score - offline forward|, scores read) of rnnstream's committed scores in ``scores_topic``."""
    from rnnstream.workers.score_verifier import read_scores, verify

    verdict = verify(events, read_scores(settings, scores_topic), ref)
    if not verdict.ok:
        raise RuntimeError(f"rnnstream scores wrong ({scores_topic}): {verdict.line}")
    return float(verdict.max_score_error or 0.0), verdict.scored


def median(xs: list[float], digits: int = 1) -> float:
    return round(statistics.median(xs), digits)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="100,000 events of 100,000 keys (else 300,000)")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds; medians reported (3)")
    ap.add_argument("--events", type=int, help="events (overrides --quick; a smoke run)")
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    args = ap.parse_args(argv)

    n, n_keys = args.events or (100_000 if args.quick else 300_000), 100_000
    log = (lambda *a: None) if args.json else (lambda *a: print(*a, file=sys.stderr, flush=True))
    python = peer_python()
    load_start = os.getloadavg()
    runs: dict[str, list[Run]] = {"json": [], "arrow": [], "exactly-once": [], "at-least-once": []}
    with e2e.broker_and_ray("rnnstream-peer-") as (tmp, settings):
        model, handle = e2e.seeded_model(tmp)
        export_weights(model, tmp / "weights.npz")
        start = int(time.time() * 1000) - 3_600_000
        peer_schema = e2e.make_schema("peer-json")
        table = e2e.make_events(peer_schema, n, n_keys, seed=1, start_ms=start)
        schemas = {"json": peer_schema, "arrow": e2e.make_schema("peer-arrow")}
        warm_table = e2e.make_events(peer_schema, 64, 64, seed=2, start_ms=start - 60_000, key_prefix="warm")
        records, warm = {}, {}
        for encoding, source in schemas.items():
            log(f"producing {n} events of {n_keys} keys (and a warm-up) as {encoding} ...")
            e2e.create_topics(settings, source.pipeline)
            e2e.produce(settings, source, warm_table, encoding)  # first: a small topic to read back
            warm_all = source_records(settings, f"{source.pipeline}.events")
            e2e.produce(settings, source, table, encoding)
            records[encoding] = after(warm_all, source_records(settings, f"{source.pipeline}.events"))
            warm[encoding] = one_per_partition(warm_all)
        errors: dict[str, float] = {}
        complete = True

        def rnnstream(encoding: str, r: int) -> None:
            nonlocal complete
            log(f"round {r}: rnnstream, {encoding}, exactly-once ...")
            schema = schemas[encoding]
            run, events_topic, scores_topic = rnnstream_release(
                settings, schema, handle, warm[encoding], records[encoding], n, f"r{r}", tmp, ray_cpu_seconds
            )
            runs[encoding].append(run)
            _, events, ref = reference_by_event(settings, schema, model, events_topic)
            err, scored = rnnstream_error(settings, scores_topic, events, ref)
            errors[f"rnnstream_{encoding}"] = max(err, errors.get(f"rnnstream_{encoding}", 0.0))
            complete &= scored == events.batch.num_rows  # the warm-up's events too
            e2e.drop_topics(settings, f"{schema.pipeline}.r{r}.")  # checked: keep the broker small

        want, _, _ = reference_by_event(settings, peer_schema, model)
        want = {k: v for k, v in want.items() if not k[0].startswith("warm")}  # the peer saw 4 of those

        def peer(guarantee: str, r: int) -> None:
            log(f"round {r}: Quix Streams peer, {guarantee}, the same JSON events ...")
            tag = f"{guarantee}-r{r}"
            run, out_topic = run_peer(
                python, settings, warm["json"], records["json"], tmp / "weights.npz", guarantee, tmp, tag
            )
            runs[guarantee].append(run)
            got = peer_scores(settings, out_topic)
            missing = len(set(want) - set(got))
            if missing:
                raise RuntimeError(f"the Quix peer ({tag}) left {missing} events without a score")
            name = f"peer_{guarantee}"
            errors[name] = max(max(abs(got[k] - v) for k, v in want.items()), errors.get(name, 0.0))
            # its topics: events, scores, and Quix's changelog topics (named after its group, peer-<tag>)
            e2e.drop_topics(settings, f"peer-{tag}.", f"changelog__peer-{tag}--")

        for r in range(args.rounds):
            pairs = (
                [(rnnstream, "json"), (peer, "exactly-once")],
                [(rnnstream, "arrow"), (peer, "at-least-once")],
            )
            if r % 2:  # odd rounds: each pair the other way round
                pairs = pairs[0][::-1], pairs[1][::-1]
            for run_one, what in pairs[0] + pairs[1]:
                run_one(what, r)

    from importlib.metadata import version

    def ratios(side: str, per_cpu: bool) -> list[float]:
        pick = (lambda run: run.eps_per_cpu_s) if per_cpu else (lambda run: run.eps)
        return [round(pick(a) / pick(b), 2) for a, b in zip(runs[side], runs["exactly-once"], strict=True)]

    result = {
        "peer": f"quixstreams {PEER_PIN.split('==')[1]} (RocksDB state, changelog on, commit_interval 5 s, "
        "a numpy GRU step a message, 1 process)",
        "rnnstream": "2 workers, exactly-once, commit every 250 ms; events released in one transaction",
        "events": n,
        "keys": n_keys,
        "keys_seen": len(set(table.column("key").to_pylist())),
        "partitions": e2e.PARTITIONS,
        "rounds": args.rounds,
        "json_eps": median([x.eps for x in runs["json"]]),
        "arrow_eps": median([x.eps for x in runs["arrow"]]),
        "peer_eps_exactly_once": median([x.eps for x in runs["exactly-once"]]),
        "peer_eps_at_least_once": median([x.eps for x in runs["at-least-once"]]),
        "peer_ratio_json": median(ratios("json", False), 2),
        "peer_ratio_arrow": median(ratios("arrow", False), 2),
        "json_eps_per_cpu_s": median([x.eps_per_cpu_s for x in runs["json"]]),
        "arrow_eps_per_cpu_s": median([x.eps_per_cpu_s for x in runs["arrow"]]),
        "peer_eps_per_cpu_s_exactly_once": median([x.eps_per_cpu_s for x in runs["exactly-once"]]),
        "peer_eps_per_cpu_s_at_least_once": median([x.eps_per_cpu_s for x in runs["at-least-once"]]),
        "peer_ratio_json_per_cpu": median(ratios("json", True), 2),
        "peer_ratio_arrow_per_cpu": median(ratios("arrow", True), 2),
        "windows_s": {  # medians over rounds, seconds (see Run)
            side: {
                f: median([getattr(x, f) for x in runs[side]], 3)
                for f in ("window_s", "warm_s", "release_s", "notice_s")
            }
            for side in runs
        },
        "per_round": {
            "peer_ratio_json": ratios("json", False),
            "peer_ratio_arrow": ratios("arrow", False),
            "peer_ratio_json_per_cpu": ratios("json", True),
            "peer_ratio_arrow_per_cpu": ratios("arrow", True),
            "peer_eps_exactly_once": [round(x.eps) for x in runs["exactly-once"]],
            "peer_eps_at_least_once": [round(x.eps) for x in runs["at-least-once"]],
            "window_s": {side: [round(x.window_s, 3) for x in runs[side]] for side in runs},
        },
        "scores_equal": max(errors.values()) <= 1e-5 and complete,
        "max_score_error": errors,
        "targets": {"peer_ratio_json": ">= 5", "peer_ratio_arrow": ">= 20"},
        "load_avg_1m_start_end": [round(load_start[0], 2), round(os.getloadavg()[0], 2)],
        "cpus": os.cpu_count(),
        "torch": version("torch"),
    }
    e2e.print_result(result, args.json, width=32)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
