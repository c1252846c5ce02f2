"""The local services the demo runs on, started once and always stopped: broker, Ray, MLflow store.

- an embedded Kafka-protocol broker on a free port, its data in ``<data>/demo/broker`` (recreated on every
  run: the demo's streams are scratch; what it keeps is in MLflow);
- a local Ray without the dashboard, whose processes get ``RNNSTREAM_HOME`` so workers find the same MLflow
  store as this process (the sqlite store under the data dir, or ``$MLFLOW_TRACKING_URI``);
- the MLflow tracking store (no server: the sqlite file is opened in-process).

:func:`demo_services` is a context manager: everything it started is stopped when the block ends, also on
Ctrl-C or SIGTERM (:func:`interrupt_on_signals` turns both into ``KeyboardInterrupt`` so ``finally``
blocks run).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

from rnnstream.data_dir import DataDir
from rnnstream.workers.embedded_broker import EmbeddedBroker, free_port
from rnnstream.workers.kafka_settings import KafkaSettings

DEMO_FOLDER = "demo"


@dataclass(frozen=True)
class DemoPaths:
    """Where the demo keeps things: scratch (recreated each run) under ``<data>/demo``, the rest in <data>."""

    data_dir: DataDir

    @property
    def root(self) -> Path:
        return self.data_dir.root / DEMO_FOLDER

    @property
    def scratch(self) -> DataDir:
        """The scratch laid out as a data dir of its own: ``broker/``, ``archive/``, ``checkpoints/``."""
        return DataDir(self.root)

    @property
    def broker(self) -> Path:
        return self.scratch.broker

    @property
    def archive(self) -> Path:
        return self.scratch.archive

    @property
    def checkpoints(self) -> Path:
        return self.scratch.checkpoints

    @property
    def models(self) -> Path:
        """Champion weights pinned for the workers (one folder per registered version)."""
        return self.root / "models"

    @property
    def baselines(self) -> Path:
        """Stateless baselines kept across runs (seeded and cheap, but why train them twice)."""
        return self.root / "baselines"

    @property
    def reports(self) -> Path:
        return self.data_dir.reports

    def reset_scratch(self) -> None:
        """Empty the broker data, archive and checkpoints of an earlier demo run."""
        for path in (self.broker, self.archive, self.checkpoints):
            if path.exists():
                shutil.rmtree(path)
            path.mkdir(parents=True, exist_ok=True)


@dataclass(frozen=True)
class DemoServices:
    """What is running for the demo."""

    paths: DemoPaths
    kafka: KafkaSettings
    tracking_uri: str
    broker_pid: int | None


@contextlib.contextmanager
def interrupt_on_signals() -> Iterator[None]:
    """For the block, SIGINT and SIGTERM raise KeyboardInterrupt (so cleanup runs as for Ctrl-C)."""

    def handler(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


@contextlib.contextmanager
def keep_own_sigint() -> Iterator[None]:
    """Ray Train's ``fit`` installs its own SIGINT handler (a graceful abort that exits the process) and
    leaves it installed; put ours back afterwards so a later Ctrl-C stops the demo the usual way."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    ours = signal.getsignal(signal.SIGINT)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, ours)


@contextlib.contextmanager
def demo_services(data_dir: DataDir, say: Callable[[str], None] = print) -> Iterator[DemoServices]:
    """Start the broker, Ray and the MLflow store; stop what was started when the block ends."""
    from rnnstream.workers.tracking import resolve_store

    paths = DemoPaths(data_dir)
    paths.reset_scratch()
    store = resolve_store(data_dir)
    with contextlib.ExitStack() as stack:
        broker = EmbeddedBroker(data_dir=paths.broker, port=free_port(), die_with_parent=True)
        info = broker.start()
        stack.callback(_stop_broker, broker, say)
        say(f"started the embedded Kafka broker on {broker.bootstrap_servers} (pid {info.pid})")
        kafka = KafkaSettings(bootstrap_servers=broker.bootstrap_servers)

        started_ray = _start_ray(data_dir, store.uri)
        if started_ray:
            stack.callback(_stop_ray, say)
        say(f"MLflow store: {store.uri}")
        yield DemoServices(paths=paths, kafka=kafka, tracking_uri=store.uri, broker_pid=info.pid)


def _start_ray(data_dir: DataDir, tracking_uri: str) -> bool:
    """A local Ray (no dashboard) whose workers see this data dir; False when one was already connected."""
    import ray

    from rnnstream.workers.serving import init_ray

    if ray.is_initialized():
        return False
    env = {"RNNSTREAM_HOME": str(data_dir.root), "MLFLOW_DISABLE_TELEMETRY": "true"}
    if os.environ.get("MLFLOW_TRACKING_URI"):
        env["MLFLOW_TRACKING_URI"] = tracking_uri
    init_ray(runtime_env={"env_vars": env})
    return True


def _stop_ray(say: Callable[[str], None]) -> None:
    import ray

    ray.shutdown()
    say("stopped Ray")


def _stop_broker(broker: EmbeddedBroker, say: Callable[[str], None]) -> None:
    broker.stop()
    say("stopped the embedded Kafka broker")
