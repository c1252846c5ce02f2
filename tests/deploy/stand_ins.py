"""Local stand-ins for what a rendered chart job talks to, and the jobs the chart renders, as commands.

A rendered job is its entrypoint, the environment of the Ray head pod it runs on (KubeRay runs a RayJob's
entrypoint on the head node of its cluster) and the ConfigMap mounted at ``/etc/rnnstream``. The stand-ins
are real servers started from registry packages: an S3-protocol server (moto) for ``s3://``, a
GCS-protocol server (gcp-storage-emulator) for ``gs://``, the embedded Kafka broker, a local sqlite MLflow
store and a local Ray cluster whose processes get the pod's environment, as the pod's Ray processes do.
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from rnnstream.workers.embedded_broker import free_port
from tests.deploy.rendered import by_kind, pod_templates


@contextlib.contextmanager
def environ_with(env: dict[str, str]) -> Iterator[None]:
    """``os.environ`` with ``env`` set for the block, each variable put back as it was afterwards."""
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


CONFIG_MOUNT = "/etc/rnnstream/config.yaml"
BIN = Path(sys.executable).parent
# Settings of the pod's environment that are not endpoints but must change for the stand-ins: the embedded
# broker speaks PLAINTEXT only.
NOT_STAND_IN = ("RNNSTREAM_KAFKA_SASL_", "RNNSTREAM_KAFKA_SSL_")
# The chart's Ray token Secret: the stand-in cluster and its jobs get one token, as the pods get the Secret's.
RAY_TOKEN_ENV = "RAY_AUTH_TOKEN"


@dataclass(frozen=True)
class RenderedJob:
    """One RayJob of a rendered profile: its name, role, pipeline, argv and head-pod environment.

    ``env`` holds literal values; ``secret_env`` the names whose value comes from a Secret.
    """

    name: str
    role: str
    pipeline: str
    argv: tuple[str, ...]
    env: dict[str, str]
    secret_env: tuple[str, ...]

    def flag(self, name: str) -> str | None:
        """The value of ``--name`` in the entrypoint, None when absent."""
        args = list(self.argv)
        return args[args.index(name) + 1] if name in args else None


def rendered_jobs(docs: list[dict]) -> list[RenderedJob]:
    """Every RayJob of ``docs`` with the environment of the head pod its entrypoint runs on."""
    clusters = {d["metadata"]["name"]: d["spec"] for d in by_kind(docs, "RayCluster")}
    jobs = []
    for doc in by_kind(docs, "RayJob"):
        spec = doc["spec"]
        if "rayClusterSpec" in spec:
            head = next(t for t in pod_templates(doc) if t.where.endswith("rayClusterSpec.headGroupSpec"))
            container = head.spec["containers"][0]
        else:
            cluster = clusters[spec["clusterSelector"]["ray.io/cluster"]]
            container = cluster["headGroupSpec"]["template"]["spec"]["containers"][0]
        env = {e["name"]: str(e["value"]) for e in container.get("env", []) if "value" in e}
        secret = tuple(e["name"] for e in container.get("env", []) if "value" not in e)
        jobs.append(
            RenderedJob(
                name=doc["metadata"]["name"],
                role=spec["metadata"]["role"],
                pipeline=spec["metadata"]["pipeline"],
                argv=tuple(shlex.split(spec["entrypoint"])),
                env=env,
                secret_env=secret,
            )
        )
    return jobs


def config_map_files(docs: list[dict]) -> dict[str, str]:
    """File name -> content of the chart's ConfigMap (what the pods see under /etc/rnnstream)."""
    (cm,) = [d for d in by_kind(docs, "ConfigMap") if d["metadata"]["name"].endswith("-config")]
    return dict(cm["data"])


def uris_of(text: str, scheme: str) -> set[str]:
    """Every ``scheme://...`` URI written in ``text`` (entrypoints, config files)."""
    return set(re.findall(rf"{scheme}://[A-Za-z0-9._/=-]+", text))


# ------------------------------------------------------------------------------------------------- servers
def _wait_http(url: str, proc: subprocess.Popen, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        if proc.poll() is not None:
            raise AssertionError(f"{proc.args} exited with {proc.returncode} before answering {url}")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except urllib.error.HTTPError:
            return  # it answers (an error status is still an answer)
        except OSError:
            if time.monotonic() > deadline:
                raise AssertionError(f"{proc.args} did not answer {url} within {timeout_s:.0f} s") from None
            time.sleep(0.2)


@dataclass
class ObjectStores:
    """An S3-protocol and a GCS-protocol server on local ports, and the env that points clients at them."""

    log_dir: Path
    procs: list[subprocess.Popen] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)

    def start(self, gcs: bool = True) -> ObjectStores:
        """Start the S3 server, and the GCS one when ``gcs`` (a profile that names no ``gs://`` URI needs
        none)."""
        s3_port = free_port()
        self._spawn([str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(s3_port)], "s3")
        _wait_http(f"http://127.0.0.1:{s3_port}/", self.procs[-1])
        self.env = {
            "AWS_ENDPOINT_URL": f"http://127.0.0.1:{s3_port}",
            "AWS_ACCESS_KEY_ID": "stand-in",
            "AWS_SECRET_ACCESS_KEY": "stand-in",
            "AWS_EC2_METADATA_DISABLED": "true",
        }
        if gcs:
            gcs_port = free_port()
            argv = [str(BIN / "gcp-storage-emulator"), "start", "-H", "127.0.0.1", "--port", str(gcs_port)]
            self._spawn([*argv, "-M"], "gcs")
            _wait_http(f"http://127.0.0.1:{gcs_port}/", self.procs[-1])
            self.env["STORAGE_EMULATOR_HOST"] = f"http://127.0.0.1:{gcs_port}"
            self.env["GOOGLE_CLOUD_PROJECT"] = "rnnstream-tests"
        return self

    def _spawn(self, argv: list[str], name: str) -> None:
        log = open(self.log_dir / f"{name}.log", "wb")  # noqa: SIM115 - closed with the process
        self.procs.append(
            subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        )

    def create_buckets(self, uris: set[str]) -> None:
        """Create the bucket of every ``s3://`` / ``gs://`` URI (a cluster's buckets exist before install)."""
        from rnnstream.rnn_core.storage import resolve_filesystem

        with environ_with(self.env):
            for uri in sorted(uris):
                scheme, rest = uri.split("://", 1)
                bucket = rest.split("/", 1)[0]
                if scheme == "s3":
                    import pyarrow.fs as pafs

                    fs = pafs.S3FileSystem(
                        endpoint_override=self.env["AWS_ENDPOINT_URL"],
                        access_key="stand-in",
                        secret_key="stand-in",
                        allow_bucket_creation=True,
                    )
                    fs.create_dir(bucket)
                else:
                    fs, _ = resolve_filesystem(f"{scheme}://{bucket}")
                    fs.create_dir(bucket)

    def stop(self) -> None:
        for proc in self.procs:
            stop_process(proc)


@dataclass
class RayHead:
    """A local Ray cluster started by a process with the pod's environment (so every worker has it too)."""

    env: dict[str, str]
    log: Path
    proc: subprocess.Popen | None = None
    address: str = ""

    def start(self, num_cpus: int = 8) -> RayHead:
        code = (
            "import sys, ray\n"
            f"ray.init(num_cpus={num_cpus}, include_dashboard=False, namespace='rnnstream')\n"
            "print('ADDRESS', ray.get_runtime_context().gcs_address, flush=True)\n"
            "sys.stdin.read()\n"
        )
        self.proc = subprocess.Popen(
            [sys.executable, "-c", code],
            env=self.env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=open(self.log, "wb"),  # noqa: SIM115 - closed with the process
            text=True,
            start_new_session=True,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        assert line.startswith("ADDRESS "), f"the Ray head did not start: {line!r}\n{self.log.read_text()}"
        self.address = line.split()[1]
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            assert self.proc.stdin is not None
            self.proc.stdin.close()  # the head process ends, and ray.shutdown stops its cluster
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                stop_process(self.proc)


def stop_process(proc: subprocess.Popen, timeout_s: float = 30.0) -> int:
    """SIGTERM the process's group, then SIGKILL it after ``timeout_s``; its exit code."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
    return int(proc.returncode)
