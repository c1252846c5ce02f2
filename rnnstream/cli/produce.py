"""``rnnstream produce``: write generated events of a pipeline to its events topic (JSON or Arrow).

A registered pipeline (``rnnstream.pipelines.spec.get_pipeline``) brings its own schema and generator; any
other name gets the built-in test schema and a simple seeded generator (:func:`sample_events`).
"""

from __future__ import annotations

import argparse
import inspect
import time
from typing import Any

import numpy as np
import pyarrow as pa

from rnnstream.cli.topics import add_kafka_args, settings_from_args
from rnnstream.rnn_core.event_schema import EventSchema

TEST_BASE_TIME_MS = 1_767_225_600_000  # 2026-01-01T00:00:00Z


def sample_schema(pipeline: str, version: int = 1) -> EventSchema:
    """The built-in schema for pipelines without a registered spec: two numbers, a 4-vector, a category."""
    return EventSchema(
        pipeline=pipeline,
        version=version,
        numeric=("value", "amount"),
        vectors=(("emb", 4),),
        categorical=(("kind", ("a", "b", "c")),),
        has_label=True,
    )


def sample_events(
    schema: EventSchema, n: int, keys: int, seed: int = 0, start_ms: int = TEST_BASE_TIME_MS
) -> pa.Table:
    """``n`` seeded events of ``keys`` keys, interleaved, in event-time order, in ``schema``'s arrow schema.

    Fills any schema (numbers normal, vectors normal float32, categories from the vocabulary plus an
    unknown value now and then, label 0/1).
    """
    rng = np.random.default_rng(seed)
    key_ids = rng.integers(0, max(1, keys), size=n)
    cols: dict[str, Any] = {
        "key": pa.array([f"k{int(i):05d}" for i in key_ids], pa.string()),
        "time": pa.array(start_ms + np.cumsum(rng.integers(1, 50, size=n)), pa.timestamp("ms")),
    }
    for name in schema.numeric:
        cols[name] = pa.array(rng.normal(size=n))
    for name, size in schema.vectors:
        values = pa.array(rng.normal(size=n * size).astype(np.float32))
        cols[name] = pa.FixedSizeListArray.from_arrays(values, size)
    for name, vocab in schema.categorical:
        choices = np.array([*vocab, "unknown-value"], dtype=object)
        cols[name] = pa.array(choices[rng.integers(0, len(choices), size=n)].tolist(), pa.string())
    if schema.has_label:
        cols["label"] = pa.array(rng.integers(0, 2, size=n), pa.int64())
    return pa.table(cols).cast(schema.arrow_schema())


def _registered(pipeline: str) -> Any | None:
    try:
        from rnnstream.pipelines import spec as spec_module
    except ImportError:
        return None
    get = getattr(spec_module, "get_pipeline", None)
    names = getattr(spec_module, "PIPELINE_NAMES", None)
    if get is None or (names is not None and pipeline not in names):
        return None
    try:
        return get(pipeline)
    except (KeyError, ValueError):
        return None


def _spec_schema(spec: Any) -> EventSchema | None:
    for attr in ("schema", "event_schema", "events"):
        v = getattr(spec, attr, None)
        if isinstance(v, EventSchema):
            return v
    return None


def resolve_schema(pipeline: str) -> EventSchema:
    """The registered pipeline's event schema, else the built-in test schema named ``pipeline``."""
    spec = _registered(pipeline)
    schema = _spec_schema(spec) if spec is not None else None
    return schema or sample_schema(pipeline)


def generate_events(pipeline: str, n: int, keys: int, seed: int = 0) -> pa.Table:
    """Events from the registered pipeline's generator when there is one, else :func:`sample_events`."""
    spec = _registered(pipeline)
    schema = _spec_schema(spec) if spec is not None else None
    gen = None
    if spec is not None:
        gen = getattr(spec, "generator", None) or getattr(spec, "generate", None)
    if schema is None or gen is None or not callable(gen):
        return sample_events(schema or sample_schema(pipeline), n, keys, seed)
    wanted = {
        "n_events": n, "events": n, "num_events": n, "n": n,
        "n_keys": keys, "keys": keys, "num_keys": keys, "seed": seed,
    }  # fmt: skip
    try:
        params = inspect.signature(gen).parameters
        kwargs = {k: v for k, v in wanted.items() if k in params}
    except (TypeError, ValueError):
        kwargs = {}
    out = gen(**kwargs)
    if isinstance(out, tuple):
        table = out[0]
    else:
        table = next((getattr(out, a) for a in ("table", "events") if hasattr(out, a)), out)
    if isinstance(table, pa.RecordBatch):
        table = pa.Table.from_batches([table])
    target = schema.arrow_schema()
    return table.select(target.names).cast(target).slice(0, n)


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("produce", help="write generated events of a pipeline to <pipeline>.events")
    p.add_argument("--pipeline", required=True)
    p.add_argument("--events", type=int, default=10_000, help="how many events (default %(default)s)")
    p.add_argument("--keys", type=int, default=100, help="how many stream keys (default %(default)s)")
    p.add_argument(
        "--rate", type=float, default=None, help="events per second (default: as fast as possible)"
    )
    p.add_argument("--encoding", choices=("json", "arrow"), default="json")
    p.add_argument("--events-per-message", type=int, default=1000, help="Arrow events per message")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--partitions", type=int, default=None, help="create missing topics with N partitions")
    add_kafka_args(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from rnnstream.errors import UsageError
    from rnnstream.workers.event_producer import EventProducer
    from rnnstream.workers.kafka_io import TopicAdmin, topic_names

    if args.events < 0 or args.keys < 1:
        raise UsageError("--events must be >= 0 and --keys >= 1")
    if args.rate is not None and args.rate <= 0:
        raise UsageError("--rate must be positive")
    settings = settings_from_args(args)
    schema = resolve_schema(args.pipeline)
    topic = topic_names(args.pipeline).events
    with TopicAdmin(settings, check=False) as admin:
        if args.partitions:
            admin.create_pipeline_topics(args.pipeline, args.partitions)
        elif admin.partitions(topic) is None:
            raise UsageError(
                f"topic {topic} does not exist: run `rnnstream topics create --pipeline {args.pipeline} "
                "--partitions N` (or pass --partitions N)"
            )
    table = generate_events(args.pipeline, args.events, args.keys, args.seed)
    chunk = max(1, min(table.num_rows, int(args.rate) if args.rate else 10_000, 10_000))
    started = time.monotonic()
    sent = 0
    with EventProducer(
        settings, schema, topic, events_per_message=args.events_per_message, check=False
    ) as prod:
        for start in range(0, table.num_rows, chunk):
            part = table.slice(start, chunk)
            if args.encoding == "json":
                prod.send_json(part)
            else:
                prod.send_arrow(part)
            sent += part.num_rows
            if args.rate:
                ahead = sent / args.rate - (time.monotonic() - started)
                if ahead > 0:
                    prod.flush()
                    time.sleep(ahead)  # pacing to the requested rate, not waiting for a condition
        prod.flush()
    took = time.monotonic() - started
    print(f"produced {sent} events ({args.encoding}) of {args.keys} keys to {topic} in {took:.2f} s")
    return 0
