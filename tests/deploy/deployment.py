"""One rendered chart profile run against local stand-ins: its ConfigMap written where the entrypoints read
it, its RayJobs' entrypoints run as subprocesses with the environment of the Ray head pod they run on, only
the endpoints pointed at the stand-ins (embedded broker, sqlite MLflow, moto for ``s3://``,
gcp-storage-emulator for ``gs://``, a local Ray whose processes get the pod environment).

Two releases of the chart share one Kafka, one MLflow and one object store (``Deployment(..., share=other)``)
but each brings its own Ray cluster, as each release's RayCluster does.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import torch

from rnnstream.workers.embedded_broker import EmbeddedBroker, free_port
from rnnstream.workers.kafka_settings import KafkaSettings
from rnnstream.workers.worker_config import DEFAULT_DEPLOYMENT
from tests.deploy.stand_ins import (
    CONFIG_MOUNT,
    NOT_STAND_IN,
    RAY_TOKEN_ENV,
    ObjectStores,
    RayHead,
    RenderedJob,
    config_map_files,
    environ_with,
    rendered_jobs,
    stop_process,
    uris_of,
)

EVENTS = 2000
EVENT_KEYS = 40
EVENTS_START_MS = 1_793_491_200_000  # 2026-11-01T00:00:00Z: the day the external-mlflow backfill scores
RNNSTREAM = Path(sys.executable).parent / "rnnstream"
ORDER = {"archive": 0, "train": 1, "backfill": 2, "serve": 3}  # each job reads what the one before wrote


class Deployment:
    """One release's rendered jobs, run against stand-ins under ``root``: fresh ones, or those of ``share``
    (another release on the same Kafka, MLflow and object store; its own Ray, as its own RayCluster)."""

    def __init__(self, docs: list[dict], root: Path, share: Deployment | None = None) -> None:
        self.root = root
        self.jobs = sorted(rendered_jobs(docs), key=lambda j: ORDER[j.role])
        etc = root / "etc-rnnstream"
        etc.mkdir(parents=True)
        for name, text in config_map_files(docs).items():
            (etc / name).write_text(text)
        self.config_path = etc / "config.yaml"
        self.config_text = self.config_path.read_text()
        self.owns_stand_ins = share is None
        if share is None:
            self.broker = EmbeddedBroker(data_dir=root / "broker", port=free_port(), die_with_parent=True)
            self.stores = ObjectStores(root)
            self.mlflow_uri = f"sqlite:///{root / 'mlflow.db'}"
            self.produced: set[str] = set()
        else:
            self.broker, self.stores, self.mlflow_uri = share.broker, share.stores, share.mlflow_uri
            self.produced = share.produced
        self.ray: RayHead | None = None
        self.ray_token = uuid.uuid4().hex

    # ---------------------------------------------------------------------------------------- stand-ins
    def start(self) -> None:
        text = self.config_text + "\n".join(" ".join(j.argv) for j in self.jobs)
        if self.owns_stand_ins:
            self.broker.start()
            self.stores.start(gcs=bool(uris_of(text, "gs")))
        self.stores.create_buckets(uris_of(text, "s3") | uris_of(text, "gs"))
        self.ray = RayHead(self.job_env(self.jobs[0]), self.root / "ray-head.log").start()

    def stop(self) -> None:
        if self.ray is not None:
            self.ray.stop()
        if self.owns_stand_ins:
            self.stores.stop()
            self.broker.stop()

    def job(self, role: str, pipeline: str = "fraud") -> RenderedJob:
        """The one rendered job of ``role`` for ``pipeline``."""
        (found,) = [j for j in self.jobs if j.role == role and j.pipeline == pipeline]
        return found

    def job_env(self, job: RenderedJob) -> dict[str, str]:
        """The pod's environment with its endpoints pointed at the stand-ins."""
        env = {k: v for k, v in job.env.items() if not k.startswith(NOT_STAND_IN)}
        if RAY_TOKEN_ENV in job.secret_env:
            env[RAY_TOKEN_ENV] = self.ray_token
        env.update(
            {
                "RNNSTREAM_KAFKA_BOOTSTRAP_SERVERS": self.broker.bootstrap_servers,
                "RNNSTREAM_KAFKA_SECURITY_PROTOCOL": "PLAINTEXT",
                "MLFLOW_TRACKING_URI": self.mlflow_uri,
                "RNNSTREAM_HOME": str(self.root / "pod-data"),
                "HOME": str(self.root / "home"),
                "PATH": os.environ["PATH"],
                "RNNSTREAM_GPU_WAIT_S": "0",  # the stand-in cluster never gains a GPU: do not wait for one
                **self.stores.env,
            }
        )
        if env.get("RNNSTREAM_CONFIG") == CONFIG_MOUNT:
            env["RNNSTREAM_CONFIG"] = str(self.config_path)
        if self.ray is not None:
            env["RAY_ADDRESS"] = self.ray.address
        return env

    def argv(self, job: RenderedJob, drop: tuple[str, ...] = ()) -> list[str]:
        args = [str(self.config_path) if a == CONFIG_MOUNT else a for a in job.argv[1:] if a not in drop]
        return [str(RNNSTREAM), *args]

    def start_job(self, job: RenderedJob, drop: tuple[str, ...] = ()) -> tuple[subprocess.Popen, Path]:
        log = self.root / (f"{job.name}-without{'_'.join(drop)}.log" if drop else f"{job.name}.log")
        proc = subprocess.Popen(
            self.argv(job, drop),
            env=self.job_env(job),
            cwd=self.root,
            stdout=open(log, "wb"),  # noqa: SIM115 - closed with the process
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        return proc, log

    def run_job(self, job: RenderedJob, timeout_s: float, drop: tuple[str, ...] = ()) -> tuple[int, str]:
        proc, log = self.start_job(job, drop)
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            stop_process(proc)
            raise AssertionError(
                f"{job.name} still runs after {timeout_s:.0f} s:\n{log.read_text()}"
            ) from None
        return proc.returncode, log.read_text()

    # ------------------------------------------------------------------------------------------ the world
    @property
    def settings(self) -> KafkaSettings:
        return KafkaSettings(bootstrap_servers=self.broker.bootstrap_servers)

    def run_config(self):
        from rnnstream.run_config import load_run_config

        return load_run_config(self.config_path, env={})

    def partitions(self, pipeline: str) -> int:
        deployed = self.run_config().pipelines.get(
            pipeline.replace("-", "_")
        ) or self.run_config().pipelines.get(pipeline)
        return deployed.partitions if deployed is not None else 4

    def produce(self, pipeline: str) -> None:
        """The pipeline's topics (as an operator creates them) and EVENTS generated events, once."""
        from rnnstream.pipelines.spec import get_pipeline

        if pipeline in self.produced:
            return
        self.produced.add(pipeline)
        self.create_topics(pipeline)
        self.send(
            pipeline,
            get_pipeline(pipeline).generate(EVENTS, EVENT_KEYS, seed=7, start_ms=EVENTS_START_MS).table,
        )

    def create_topics(self, pipeline: str) -> None:
        """``<pipeline>.events`` (and the default scores/DLQ topics) with the config's partitions."""
        from rnnstream.workers.kafka_io import TopicAdmin

        with TopicAdmin(self.settings) as admin:
            admin.create_pipeline_topics(pipeline, self.partitions(pipeline))

    def send(self, pipeline: str, table) -> None:
        """Produce the rows of ``table`` (generated events of ``pipeline``) as JSON events, flushed."""
        from rnnstream.pipelines.spec import get_pipeline
        from rnnstream.workers.event_producer import EventProducer
        from rnnstream.workers.kafka_io import topic_names

        schema = get_pipeline(pipeline).schema
        with EventProducer(self.settings, schema, topic_names(pipeline).events) as producer:
            producer.send_json(table.select(schema.arrow_schema().names))
            producer.flush()

    def seed_models(self) -> None:
        """Register what the chart's model URIs name: versions up to the one named, aliases set."""
        from rnnstream.pipelines.spec import get_pipeline
        from rnnstream.rnn_core.model import StreamingModel
        from rnnstream.workers import model_registry, tracking

        store = self.tracking_store()
        wanted: dict[str, int] = {}
        for job in self.jobs:
            uri = job.flag("--model")
            if uri is None or not uri.startswith("models:/"):
                continue
            name, _alias, version = model_registry.parse_model_uri(uri)
            assert name == model_registry.registered_model_name(get_pipeline(job.pipeline).name), (
                f"{job.name}: {uri} names a model `train --pipeline {job.pipeline}` never registers"
            )
            wanted[job.pipeline] = max(wanted.get(job.pipeline, 1), int(version or 1))
        for pipeline, count in wanted.items():
            spec = get_pipeline(pipeline)
            torch.manual_seed(0)
            model = StreamingModel(spec.model_config).eval()
            with tracking.training_run(store, spec.name, "chart-seed"):
                first = model_registry.log_model_version(model, spec.schema)
            client = store.client()
            source = client.get_model_version(first.name, first.version).source
            for _ in range(count - 1):  # more versions of the same weights, as retraining would add
                client.create_model_version(first.name, source, run_id=first.run_id)
            model_registry.promote(store, spec.name, "1")

    def registered_versions(self, pipeline: str) -> int:
        from rnnstream.pipelines.spec import get_pipeline
        from rnnstream.workers import model_registry

        return len(model_registry.list_versions(self.tracking_store(), get_pipeline(pipeline).name))

    def tracking_store(self):
        """The stand-in MLflow store (what ``MLFLOW_TRACKING_URI`` names in the pods)."""
        from rnnstream.workers import tracking

        return tracking.TrackingStore(uri=self.mlflow_uri, artifact_root=self.root / "mlflow-artifacts")

    def scores_topic(self, job: RenderedJob) -> str:
        """The scores topic the serve ``job`` writes (its pipeline's, of its release)."""
        from rnnstream.workers.kafka_io import topic_names

        return topic_names(job.pipeline, job.flag("--deployment-name") or DEFAULT_DEPLOYMENT).scores

    def scores(self, job: RenderedJob):
        """The committed scores (read_committed) the serve ``job`` wrote so far; none before it made its
        topic (asking a broker for a topic's partitions may create it, with the wrong partition count)."""
        from rnnstream.workers.kafka_io import TopicAdmin
        from rnnstream.workers.score_verifier import ScoreLog, read_scores

        topic = self.scores_topic(job)
        with TopicAdmin(self.settings, check=False) as admin:
            if admin.partitions(topic) is None:
                return ScoreLog([], [], [], {})
        return read_scores(self.settings, topic, timeout_s=30)

    def wait_scored(
        self, job: RenderedJob, proc: subprocess.Popen, log: Path, count: int, timeout_s: float = 300
    ):
        """Wait until the running serve ``job`` committed at least ``count`` scores; the scores read."""
        deadline = time.monotonic() + timeout_s
        while True:
            assert proc.poll() is None, f"{job.name} exited with {proc.returncode}:\n{log.read_text()}"
            scores = self.scores(job)
            scored = len(scores.positions)
            if scored >= count:
                return scores
            assert time.monotonic() < deadline, f"{job.name} scored {scored} of {count}:\n{log.read_text()}"
            time.sleep(1.0)


@contextlib.contextmanager
def object_store_env(deployment: Deployment) -> Iterator[None]:
    """The test process reads the stand-in object stores too (to check what the jobs wrote)."""
    with environ_with(deployment.stores.env):
        yield


@contextlib.contextmanager
def running(*deployments: Deployment) -> Iterator[None]:
    """Start the stand-ins of each deployment (in order), give the test process their object stores, and
    stop everything (in reverse order) at the end."""
    started: list[Deployment] = []
    try:
        for dep in deployments:
            started.append(dep)
            dep.start()
        with object_store_env(deployments[0]):
            yield
    finally:
        for dep in reversed(started):
            dep.stop()
