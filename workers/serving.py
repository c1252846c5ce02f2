"""Serving glue: which model (a local folder or a registry version), a local or remote Ray, and the
coordinator of a pipeline started, found, scaled and stopped.

Models: a folder written by ``save_model`` (or a downloaded MLflow version with ``artifacts/weights``) serves
as version ``local:<folder name>@<content digest>`` (or the version its ``rnnstream_meta.json`` names);
``models:/name@alias`` and ``models:/name/3`` resolve through the MLflow registry
(:mod:`rnnstream.workers.model_registry`, imported only then: MLflow is slow to import and workers loading a
local folder should not pay for it). Workers
receive a pinned :class:`ModelHandle` (a version and a locator they load themselves).

Ray: ``init_ray`` connects to ``RAY_ADDRESS``/``address`` when given, else starts a local Ray without the
dashboard. Ray 2.60 turns token authentication on and keeps the token in ``~/.ray/auth_token``; a local
Ray writes it there and every later ``rnnstream`` command on this machine reads it, so nothing needs
configuring (a cluster passes it as ``RAY_AUTH_TOKEN``; see the chart). A process that *joins* a running
cluster must be told the cluster uses tokens (``RAY_AUTH_MODE=token``, else Ray 2.60 sends none and is
refused; Ray reads it at import): ``init_ray`` sets it before importing Ray when a token is at hand.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rnnstream.workers.coordinator import Coordinator, coordinator_name
from rnnstream.workers.model_loading import MODELS_URI
from rnnstream.workers.model_loading import load_model as load_model  # re-exported (its home)
from rnnstream.workers.worker_config import DEFAULT_DEPLOYMENT, ModelHandle, WorkerConfig
from rnnstream.workers.worker_slots import NAMESPACE


def _local_version(path: Path) -> str:
    from rnnstream.rnn_core.serialization import local_model_version, model_meta

    return local_model_version(path, model_meta(path).get("version"))


def resolve_model(source: str | os.PathLike[str], alias: str = "champion") -> ModelHandle:
    """Pin a model source to one version: a folder as it is, ``models:/name@alias`` to the version the alias
    points at now (``models:/name/3`` as given)."""
    path = Path(source)
    if path.is_dir():
        return ModelHandle(version=_local_version(path), locator=str(path.resolve()))
    text = str(source)
    from rnnstream.workers.model_registry import parse_model_uri, resolve_version
    from rnnstream.workers.tracking import resolve_store

    store = resolve_store()
    name, al, version = parse_model_uri(text, alias)
    mv = resolve_version(store, name, al, version)
    return ModelHandle(version=f"{name}/{mv.version}", locator=f"{MODELS_URI}{name}/{mv.version}")


@dataclass(frozen=True)
class AliasProbe:
    """What the coordinator polls for hot swaps: the version a registry alias (or a folder) names now."""

    source: str
    alias: str = "champion"

    def __call__(self) -> ModelHandle:
        return resolve_model(self.source, self.alias)


@dataclass(frozen=True)
class PointerFileProbe:
    """A file whose text names the champion (a model folder or a ``models:/`` URI): rewrite it to hot-swap.

    For setups without a registry (and for tests); :class:`AliasProbe` follows a registry alias instead.
    """

    path: str

    def __call__(self) -> ModelHandle:
        return resolve_model(Path(self.path).read_text().strip())


def init_ray(address: str | None = None, num_cpus: int | None = None, **kwargs: Any) -> None:
    """Connect to a Ray cluster (``address`` or ``RAY_ADDRESS``) or start a lean local one."""
    import sys

    address = address or os.environ.get("RAY_ADDRESS")
    if address and "ray" not in sys.modules:
        # A process that joins a cluster only sends its token when told the cluster uses tokens, and Ray
        # reads that setting when it is imported: so before the first ``import ray``.
        token_file = Path(os.environ.get("RAY_AUTH_TOKEN_PATH") or Path.home() / ".ray" / "auth_token")
        if os.environ.get("RAY_AUTH_TOKEN") or token_file.is_file():
            os.environ.setdefault("RAY_AUTH_MODE", "token")
    import ray

    if ray.is_initialized():
        return
    opts: dict[str, Any] = {"namespace": NAMESPACE, "log_to_driver": False, **kwargs}
    if address:
        ray.init(address=address, **opts)
    else:
        ray.init(num_cpus=num_cpus, include_dashboard=False, **opts)


def start_coordinator(
    config: WorkerConfig,
    model: ModelHandle,
    num_workers: int,
    num_partitions: int,
    *,
    model_probe: Callable[[], ModelHandle | None] | None = None,
    worker_options: dict[str, Any] | None = None,
    **kwargs: Any,
) -> Any:
    """Create the pipeline's named coordinator actor and start its workers; returns the actor handle."""
    import ray

    actor = (
        ray.remote(Coordinator)
        .options(
            name=coordinator_name(config.pipeline, config.deployment),
            namespace=NAMESPACE,
            max_concurrency=16,
            num_cpus=0,
            max_restarts=-1,  # it resumes from its control record (its workers keep scoring meanwhile)
            max_task_retries=0,
        )
        .remote(
            config,
            model,
            num_workers,
            num_partitions,
            model_probe=model_probe,
            worker_options=worker_options,
            **kwargs,
        )
    )
    ray.get(actor.start.remote())
    return actor


def find_coordinator(pipeline: str, deployment: str = DEFAULT_DEPLOYMENT) -> Any:
    """The running coordinator of release ``deployment`` of ``pipeline`` (ValueError when none runs in this
    Ray)."""
    import ray

    try:
        return ray.get_actor(coordinator_name(pipeline, deployment), namespace=NAMESPACE)
    except ValueError as exc:
        raise ValueError(
            f"no scoring of release {deployment!r} is running for pipeline {pipeline!r} (start it with "
            f"`rnnstream serve --deployment-name {deployment}`)"
        ) from exc


def stop_coordinator(actor: Any, timeout_s: float = 300.0) -> dict[int, int]:
    """Stop the workers cleanly (final checkpoints) and the coordinator; returns next offsets."""
    import ray

    try:
        return ray.get(actor.stop.remote(), timeout=timeout_s)
    finally:
        ray.kill(actor, no_restart=True)


def status_line(status: dict[str, Any]) -> str:
    """A one-line summary of a coordinator status for a live display."""
    ws = status.get("workers", [])
    scored = sum(int(w.get("scored", 0)) for w in ws)
    dlq = sum(int(w.get("dead_lettered", 0)) for w in ws)
    lag: int | str = sum(int(w.get("lag_total", 0)) for w in ws)
    if any(w.get("lag_error") for w in ws):  # the broker did not answer: no number rather than a stale one
        lag = "?"
    keys = sum(int(w.get("keys", 0)) for w in ws)
    restarts = sum(int(w.get("restarts", 0)) for w in ws)
    errors = sum(int(w.get("kafka_errors", 0)) + int(w.get("scoring_errors", 0)) for w in ws)
    resets = sum(int(w.get("resets", 0)) for w in ws)
    p99 = [w.get("latency_append_p99_ms") for w in ws if w.get("latency_append_p99_ms") is not None]
    p99s = f"{max(p99):.0f}ms" if p99 else "-"
    line = (
        f"{status.get('pipeline')} model={status.get('model_version')} workers={len(ws)} scored={scored} "
        f"dlq={dlq} lag={lag} keys={keys} p99={p99s} restarts={restarts} errors={errors} resets={resets} "
        f"gen={status.get('generation', 0)} coordinator_resumes={status.get('coordinator_resumes', 0)}"
    )
    if status.get("swap_in_progress"):
        line += f" swapping_to={status['swap_in_progress']}"
    last = (status.get("swaps") or [None])[-1]
    if last and last.get("error"):  # a failed swap says why until the next one
        line += f" | swap to {last.get('to')} FAILED: {last['error']}"
    elif last and "keys_warmed" in last:
        line += f" | last swap to {last['to']}: keys warmed {last['keys_warmed']}, cold {last['keys_cold']}"
    for w in ws:
        if w.get("lag_error"):
            line += f" | worker {w.get('slot')}: {w['lag_error']}"
        if w.get("stalled"):  # behind and not moving: polling without reading anything, or stuck
            parts = ", ".join(f"{p} for {s:.0f}s" for p, s in sorted(w["stalled"].items()))
            line += f" | worker {w.get('slot')} STALLED behind with no progress: partitions {parts}"
    if status.get("ownership_conflicts"):
        line += f" | OWNERSHIP CONFLICTS seen {status['ownership_conflicts']} times"
    failing = [w for w in ws if w.get("error") or w.get("failing_for_s") is not None or w.get("fenced")]
    for w in failing:  # a worker that keeps failing says so, with its last error
        why = w.get("error") or w.get("last_error") or ("fenced" if w.get("fenced") else "?")
        line += f" | worker {w.get('slot')} FAILING: {why}"
    return line


def status_table(status: dict[str, Any]) -> str:
    """Per-worker metrics as a text table (``rnnstream status``)."""
    cols = [
        ("slot", "slot", "{}"),
        ("partitions", "assigned", "{}"),
        ("events", "events", "{}"),
        ("scored", "scored", "{}"),
        ("dlq", "dead_lettered", "{}"),
        ("replayed", "replayed", "{}"),
        ("lag", "lag_total", "{}"),
        ("keys", "keys", "{:.0f}"),
        ("state MB", "state_bytes", "{:.1f}"),
        ("batch", "mean_batch", "{:.0f}"),
        ("p50 ms", "latency_append_p50_ms", "{:.1f}"),
        ("p99 ms", "latency_append_p99_ms", "{:.1f}"),
        ("ckpt ms", "last_checkpoint_ms", "{:.1f}"),
        ("restores", "restores", "{}"),
        ("ckpt fallbacks", "checkpoint_fallbacks", "{}"),
        ("evicted", "evicted", "{}"),
        ("restarts", "restarts", "{}"),
        ("errors", "kafka_errors", "{}"),
        ("resets", "resets", "{}"),
        ("version", "model_version", "{}"),
        ("last error", "last_error", "{:.60}"),
    ]
    rows = [[c[0] for c in cols]]
    for w in status.get("workers", []):
        row = []
        for _, key, fmt in cols:
            v = w.get(key)
            if key == "state_bytes" and v is not None:
                v = v / 1e6
            row.append(
                "-" if v is None else (fmt.format(v) if not isinstance(v, list) else ",".join(map(str, v)))
            )
        rows.append(row)
    widths = [max(len(r[i]) for r in rows) for i in range(len(cols))]
    lines = ["  ".join(cell.rjust(widths[i]) for i, cell in enumerate(r)) for r in rows]
    head = (
        f"pipeline {status.get('pipeline')}  model {status.get('model_version')}  workers {len(rows) - 1}  "
        f"generation {status.get('generation', 0)}  "
        f"coordinator resumes {status.get('coordinator_resumes', 0)}"
    )
    return "\n".join([head, *lines])
