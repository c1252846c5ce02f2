"""Hot swap of the serving model while the stream runs (DESIGN.md "Models in MLflow", issue 5).

The coordinator polls a champion pointer; when it names a new version, every worker warms that version's own
states on live traffic (shadow scoring into ``<pipeline>.scores.shadow``) while the old version serves, then
all switch at a commit boundary. Checked from the broker: every offset scored exactly once; per partition the
version changes at exactly one offset (the recorded switch offset); old-version scores equal the old model's
offline forward, new-version scores and the final checkpoint states equal the new model's offline forward over
the warm-up window onwards (a from-scratch replay of that window). Before the promotion B runs in shadow
mode (its own states, scores only into the shadow topic)."""

from __future__ import annotations

import threading
from collections import defaultdict
from functools import partial

import ray as _ray

from rnnstream.workers.score_verifier import (
    checkpoint_states,
    offline_reference,
    read_events,
    read_scores,
    read_topic,
    verify,
)
from rnnstream.workers.serving import start_coordinator, stop_coordinator
from rnnstream.workers.worker_config import committed_all
from tests.workers.worker_harness import (
    answered_status,
    coordinator_state,
    make_events,
    make_model,
    produce_paced,
    produce_until,
    scored_total,
    scoring_stream,
    start_following_pointer,
    wait_for,
    worker_config,
)

PARTITIONS = 4


def test_hot_swap_exactly_once_with_warm_states(kafka_settings, ray_local, tmp_path):
    settings, pipeline, schema, model_a, handle_a = scoring_stream(
        kafka_settings, "swap", PARTITIONS, tmp_path / "model-a", seed=0
    )
    model_b, handle_b = make_model(schema, tmp_path / "model-b", seed=1)
    pointer = tmp_path / "champion.txt"
    pointer.write_text(str(tmp_path / "model-a"))
    events = make_events(schema, 40_000, 300, seed=7)
    config = worker_config(settings, schema, tmp_path / "ckpt")
    coord = start_following_pointer(config, handle_a, pointer, PARTITIONS, warmup_events=1000, shadow=True)
    why = partial(coordinator_state, coord)  # what the coordinator says, on a timeout

    # a live stream (at most 2000 events ahead of the scoring) until the swap is recorded, then 2000 events
    # more: B warms up on live traffic. (A fixed 12,000 paced by the clock became a backlog while the workers
    # were slow to start, drained in a burst before B was prepared: one worker's challenger then saw no event
    # and the swap waited for traffic that never came, or switched partitions it never saw.)
    swapped = threading.Event()
    t = threading.Thread(
        target=produce_until, args=(settings, schema, events, 400, swapped, 2000, lambda: scored_total(coord))
    )
    t.start()
    try:
        wait_for(lambda: scored_total(coord) >= 1500, 60, "scoring under way", explain=why)
        _ray.get(coord.shadow_model.remote(handle_b))  # watch B live first (shadow only)
        wait_for(lambda: scored_total(coord) >= 3000, 60, "shadow scoring", explain=why)
        pointer.write_text(str(tmp_path / "model-b"))  # promote B
        # the swap's record, not the model version: the coordinator serves B (status) before every worker
        # switched and the record is written
        wait_for(lambda: _swaps_to(coord, handle_b.version), 60, "the swap to B recorded", explain=why)
        swapped.set()
        t.join()
        wait_for(lambda: committed_all(settings, config), 120, "all events committed", explain=why)
        swap = _swaps_to(coord, handle_b.version)[0]
    finally:
        swapped.set()
        t.join()
        stop_coordinator(coord)
    print("swap:", swap)
    assert swap["from"] == handle_a.version and swap["to"] == handle_b.version

    events_log = read_events(settings, config.events_topic, schema)
    scores = read_scores(settings, config.scores_topic)
    # exactly once, and A's scores equal A's offline forward
    ref_a = offline_reference(events_log, model_a)
    verdict_a = verify(events_log, scores, ref_a, version_filter=handle_a.version)
    print(verdict_a.line)
    assert verdict_a.ok, verdict_a.line
    # B's scores and final states equal B's forward from the warm-up start (a from-scratch replay)
    ref_b = offline_reference(events_log, model_b, start_offsets=swap["warm_from_offsets"])
    states_b = checkpoint_states(
        config.checkpoint_uri, pipeline, list(range(PARTITIONS)), model_b, handle_b.version
    )
    verdict_b = verify(events_log, scores, ref_b, states_b, version_filter=handle_b.version)
    print(verdict_b.line)
    assert verdict_b.max_score_error <= 1e-5 and verdict_b.max_state_error <= 1e-5, verdict_b.line
    # the version changes at exactly one offset per partition: the recorded switch offset
    by_partition: dict[int, list[tuple[int, str]]] = defaultdict(list)
    for (p, off, _), v in zip(scores.positions, scores.versions, strict=True):
        by_partition[p].append((off, v))
    for p, rows in by_partition.items():
        rows.sort()
        changes = [i for i in range(1, len(rows)) if rows[i][1] != rows[i - 1][1]]
        assert len(changes) == 1, f"partition {p}: version changes at {len(changes)} places"
        assert rows[changes[0]][0] >= swap["switch_offsets"][p] > rows[changes[0] - 1][0]
        assert rows[0][1] == handle_a.version and rows[-1][1] == handle_b.version
    # B shadow-scored (before its promotion, and during the warm-up), never into the scores topic
    shadow = read_topic(settings, config.shadow_topic)
    assert len(shadow) >= 1000
    assert all(f'"model_version":"{handle_b.version}"'.encode() in m.value for m in shadow)


def _swaps_to(coord, version: str) -> list[dict]:
    """The coordinator's records of finished swaps to ``version`` (none while the swap is under way)."""
    return [s for s in _ray.get(coord.status.remote(), timeout=30)["swaps"] if s["to"] == version]


def test_failed_swaps_drop_every_challenger_and_say_why(kafka_settings, ray_local, tmp_path):
    """A challenger reading features the events lack is refused in one line naming them; a challenger that
    never warms up is abandoned at the timeout. Either way every worker drops its challenger, the champion
    keeps scoring (exactly once), and the coordinator takes other calls while the warm-up runs."""
    from rnnstream.rnn_core.config import FeatureSpec, ModelConfig
    from rnnstream.rnn_core.model import StreamingModel
    from rnnstream.rnn_core.serialization import save_model
    from rnnstream.workers.serving import resolve_model

    settings, _, schema, model_a, handle_a = scoring_stream(kafka_settings, "swapfail", 2, tmp_path / "a")
    video_like = StreamingModel(ModelConfig(features=FeatureSpec(numeric=("amount", "frame")), hidden_size=8))
    save_model(video_like, tmp_path / "video-like")
    _, handle_b = make_model(schema, tmp_path / "b", seed=1)
    events = make_events(schema, 6000, 200, seed=2)
    config = worker_config(settings, schema, tmp_path / "ckpt")
    coord = start_coordinator(config, handle_a, 2, 2)
    why = partial(coordinator_state, coord)  # what the coordinator says, on a timeout
    try:
        produce_paced(settings, schema, events.slice(0, 2000), 500, 0.05)
        wait_for(lambda: scored_total(coord) >= 2000, 60, "the champion scoring", explain=why)
        try:
            _ray.get(coord.swap_model.remote(resolve_model(tmp_path / "video-like")), timeout=120)
            raise AssertionError("an incompatible challenger was accepted")
        except _ray.exceptions.RayTaskError as exc:
            assert "cannot serve" in str(exc) and "'frame'" in str(exc)
        refused = answered_status(coord)
        assert "'frame'" in refused["swaps"][-1]["error"] and "\n" not in refused["swaps"][-1]["error"]
        assert refused["swaps"][-1]["refused"] is True  # the probe does not try this version again
        assert {w["challenger_version"] for w in refused["workers"]} == {None}

        never_warm = coord.swap_model.remote(handle_b, warmup_events=10**9, timeout_s=5.0)

        def warming_or_given_up() -> bool:
            # the warm-up lasts the 5 s timeout; one status call on a loaded machine can take as long (up to
            # 5 s a worker), so a poll may miss it and see the swap already given up instead
            st = _ray.get(coord.status.remote(), timeout=30)
            given_up = any(s["to"] == handle_b.version and "error" in s for s in st["swaps"])
            return st["swap_in_progress"] == handle_b.version or given_up

        wait_for(warming_or_given_up, 30, "the warm-up")
        assert set(_ray.get(coord.final_checkpoint.remote(), timeout=30)) == {0, 1}  # not locked out
        produce_paced(settings, schema, events.slice(2000, 2000), 500, 0.05)
        try:
            _ray.get(never_warm, timeout=120)
            raise AssertionError("a swap that never warmed up switched")
        except _ray.exceptions.RayTaskError as exc:
            assert "not warm after 5 s" in str(exc) and f"{handle_a.version} serves on" in str(exc)
        gave_up = answered_status(coord)
        assert gave_up["model_version"] == handle_a.version and gave_up["swap_in_progress"] is None
        assert "not warm" in gave_up["swaps"][-1]["error"] and gave_up["swaps"][-1]["refused"] is False
        assert {w["challenger_version"] for w in gave_up["workers"]} == {None}
        produce_paced(settings, schema, events.slice(4000, 2000), 500, 0.05)
        wait_for(lambda: committed_all(settings, config), 60, "all events committed", explain=why)
    finally:
        stop_coordinator(coord)
    scores = read_scores(settings, config.scores_topic)
    events_log = read_events(settings, config.events_topic, schema)
    verdict = verify(events_log, scores, offline_reference(events_log, model_a))
    assert verdict.expected == 6000 and verdict.versions == {handle_a.version: 6000}
    assert verdict.ok, verdict.line


def test_swap_warms_every_key_from_the_archive(kafka_settings, ray_local, tmp_path):
    """With the archive caught up, a challenger warmed from each key's archived history switches with every
    key warm, and the new model's live scores equal its offline run over the whole history: a key that
    sends nothing during the warm-up does not start cold."""
    from rnnstream.workers.archive_sink import ArchiveSink

    settings, _, schema, model_a, handle_a = scoring_stream(kafka_settings, "swaparch", 2, tmp_path / "a")
    model_b, handle_b = make_model(schema, tmp_path / "b", seed=1)
    events = make_events(schema, 6000, 300, seed=4)
    config = worker_config(
        settings,
        schema,
        tmp_path / "ckpt",
        warmup_archive_uri=str(tmp_path / "archive"),
        warmup_archive_events=10**6,
    )
    coord = start_coordinator(config, handle_a, 2, 2)
    why = partial(coordinator_state, coord)  # what the coordinator says, on a timeout
    try:
        produce_paced(settings, schema, events.slice(0, 4000), 1000, 0.05)
        wait_for(lambda: committed_all(settings, config), 60, "the first events committed", explain=why)
        with ArchiveSink(settings, schema, str(tmp_path / "archive"), flush_events=500) as sink:
            sink.run(until_caught_up=True)
        swap = _ray.get(coord.swap_model.remote(handle_b, warmup_events=0), timeout=120)
        produce_paced(settings, schema, events.slice(4000, 2000), 500, 0.05)
        wait_for(lambda: committed_all(settings, config), 60, "all events committed", explain=why)
    finally:
        stop_coordinator(coord)
    print("swap:", swap)
    assert swap["keys_cold"] == 0 and swap["keys_warmed"] == swap["archive_keys"] == 300
    assert swap["archive_events"] == 4000 and swap["archive_gap_messages"] == 0
    events_log = read_events(settings, config.events_topic, schema)
    scores = read_scores(settings, config.scores_topic)
    assert verify(
        events_log, scores, offline_reference(events_log, model_a), version_filter=handle_a.version
    ).ok
    whole_b = offline_reference(events_log, model_b)  # the new model over the whole history
    verdict = verify(events_log, scores, whole_b, version_filter=handle_b.version)
    print(verdict.line)
    assert verdict.versions == {handle_a.version: 4000, handle_b.version: 2000}
    assert verdict.ok, verdict.line
