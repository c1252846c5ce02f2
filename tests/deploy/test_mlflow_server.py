"""The chart's MLflow server command is one the installed MLflow accepts, its --allowed-hosts admits the
Service names (and nothing else) under MLflow's own host check, and, started as rendered, it wants a login.

The rendered arguments are parsed by MLflow's own `mlflow server` click command (an unknown or misspelled flag
fails here instead of in a pod), and the allowed-host list is run through MLflow's own Host-header check.
One real server is started from the rendered command, environment and basic-auth ini (20-60 s on a busy
machine): a request without the Secret's login gets 401, and a client with the rendered pods' credentials
creates an experiment, uploads artifacts and registers a model version.
"""

from __future__ import annotations

import base64
import os
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from secrets import token_hex

import pytest

from rnnstream.workers.embedded_broker import free_port
from tests.deploy.conftest import NAMESPACE, RELEASE
from tests.deploy.rendered import by_kind
from tests.deploy.stand_ins import _wait_http as wait_http
from tests.deploy.stand_ins import stop_process


@pytest.fixture(scope="module")
def mlflow_container(render) -> dict:
    (deployment,) = by_kind(render("default"), "Deployment")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return container


def test_installed_mlflow_accepts_the_rendered_server_arguments(mlflow_container):
    from mlflow.cli import server

    assert mlflow_container["command"] == ["mlflow", "server"]
    ctx = server.make_context("server", list(mlflow_container["args"]))
    params = ctx.params
    assert params["host"] == "0.0.0.0"
    assert params["port"] == 5000
    assert params["backend_store_uri"] == "sqlite:////mlflow/mlflow.db"
    assert params["serve_artifacts"] is True
    assert params["artifacts_destination"] == "/mlflow/artifacts"
    assert params["app_name"] == "basic-auth"
    # Nothing that needs an optional extra the image may lack (e.g. --expose-prometheus needs
    # prometheus-flask-exporter), and no switch that turns the security middleware off.
    assert not params.get("expose_prometheus")
    assert not params.get("disable_security_middleware")


def test_allowed_hosts_admit_the_service_names_only(mlflow_container):
    from mlflow.server.security_utils import is_allowed_host_header, is_health_endpoint

    (arg,) = [a for a in mlflow_container["args"] if a.startswith("--allowed-hosts=")]
    allowed = [h.strip() for h in arg.split("=", 1)[1].split(",")]
    service = f"{RELEASE}-rnnstream-mlflow"
    for host in (
        service,
        f"{service}:5000",
        f"{service}.{NAMESPACE}:5000",
        f"{service}.{NAMESPACE}.svc:5000",
        f"{service}.{NAMESPACE}.svc.cluster.local:5000",
        "localhost:5000",  # kubectl port-forward
    ):
        assert is_allowed_host_header(allowed, host), host
    for host in ("evil.example.com", "10.1.2.3:5000", f"{service}.evil.example.com:5000", ""):
        assert not is_allowed_host_header(allowed, host), host
    # Kubelet probes arrive with the pod IP as Host: the probe path must be exempt from the check.
    assert mlflow_container["readinessProbe"]["httpGet"]["path"] == "/health"
    assert is_health_endpoint("/health")


# --- the rendered server, started: a login is needed, and the pods' credentials work ------------------------


def _secret_env(container: dict, secrets: dict[str, dict[str, str]]) -> dict[str, str]:
    """The container's environment, each secretKeyRef read from ``secrets`` (name -> key -> value)."""
    env = {}
    for entry in container.get("env", []):
        if "value" in entry:
            env[entry["name"]] = str(entry["value"])
        else:
            ref = entry["valueFrom"]["secretKeyRef"]
            env[entry["name"]] = secrets[ref["name"]][ref["key"]]
    return env


@pytest.fixture(scope="module")
def auth_server(render, tmp_path_factory):
    """The default profile's MLflow Deployment, run as rendered: its command and arguments, its environment
    (admin login from a stand-in of the Secret the user creates), the basic-auth ini of its ConfigMap. Only
    paths and the port change: /mlflow (the PVC) is a temporary folder, the ini is written where
    MLFLOW_AUTH_CONFIG_PATH points to, one worker instead of two (a busy test machine)."""
    docs = render("default")
    (deployment,) = by_kind(docs, "Deployment")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    root = tmp_path_factory.mktemp("mlflow-auth")
    data = root / "mlflow"
    data.mkdir()
    secrets = {
        f"{RELEASE}-rnnstream-mlflow-auth": {
            "username": "rnnstream-admin",
            "password": token_hex(16),
            "flask-secret-key": token_hex(16),
        }
    }
    env = _secret_env(container, secrets)
    (auth_map,) = [c for c in by_kind(docs, "ConfigMap") if c["metadata"]["name"].endswith("-mlflow-auth")]
    ini_path = Path(env["MLFLOW_AUTH_CONFIG_PATH"])
    ini_text = auth_map["data"][ini_path.name].replace("/mlflow/", f"{data}/")
    local_ini = root / ini_path.name
    local_ini.write_text(ini_text)
    env.update({"MLFLOW_AUTH_CONFIG_PATH": str(local_ini), "HOME": str(root), "PATH": os.environ["PATH"]})
    port = free_port()
    args = []
    for arg in container["args"]:
        arg = arg.replace("/mlflow/", f"{data}/")
        if arg.startswith("--port="):
            arg = f"--port={port}"
        elif arg.startswith("--host="):
            arg = "--host=127.0.0.1"
        elif arg.startswith("--workers="):
            arg = "--workers=1"
        elif arg.startswith("--allowed-hosts="):
            arg += f",127.0.0.1:{port}"
        args.append(arg)
    command = [str(Path(sys.executable).parent / container["command"][0]), *container["command"][1:]]
    log = root / "server.log"
    proc = subprocess.Popen(
        [*command, *args],
        env=env,
        cwd=root,
        stdout=open(log, "wb"),  # noqa: SIM115 - closed with the process
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{url}/health", proc, timeout_s=180)
        yield url, secrets, docs
    finally:
        stop_process(proc, timeout_s=5)


def _status(url: str, auth: tuple[str, str] | None = None) -> int:
    request = urllib.request.Request(f"{url}/api/2.0/mlflow/experiments/search?max_results=1")
    if auth is not None:
        token = base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


def test_the_rendered_server_refuses_requests_without_the_secrets_login(auth_server):
    url, secrets, _ = auth_server
    (login,) = secrets.values()
    assert _status(url) == 401
    assert _status(url, (login["username"], "wrong")) == 401
    assert _status(url, (login["username"], login["password"])) == 200


def test_a_pod_with_the_charts_credentials_creates_experiments_and_registers_models(
    auth_server, monkeypatch, tmp_path
):
    """A Ray pod's environment, its Secret references read from the same stand-in Secret, is all a client
    needs: MLflow's client logs in with MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD."""
    import mlflow
    from mlflow import MlflowClient

    url, secrets, docs = auth_server
    (cluster,) = by_kind(docs, "RayCluster")
    (head,) = cluster["spec"]["headGroupSpec"]["template"]["spec"]["containers"]
    pod_env = _secret_env(head, {**secrets, f"{RELEASE}-rnnstream-ray-auth": {"auth_token": "t"}})
    for name in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
        monkeypatch.setenv(name, pod_env[name])
    client = MlflowClient(tracking_uri=url, registry_uri=url)
    experiment = client.create_experiment("rnnstream-fraud")
    run = client.create_run(experiment)
    weights = tmp_path / "weights"
    weights.mkdir()
    (weights / "meta.json").write_text('{"pipeline": "fraud"}')
    client.log_artifacts(run.info.run_id, str(weights), "weights")  # through the server's artifact proxy
    client.set_terminated(run.info.run_id)
    client.create_registered_model("rnnstream-fraud")
    version = client.create_model_version(
        "rnnstream-fraud", f"runs:/{run.info.run_id}/weights", run.info.run_id
    )
    client.set_registered_model_alias("rnnstream-fraud", "champion", version.version)
    assert client.get_model_version_by_alias("rnnstream-fraud", "champion").version == version.version
    # The same credentials in the environment do not disturb a local sqlite store (the tests' stand-in).
    local = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'local.db'}")
    assert local.get_experiment(local.create_experiment("local")).name == "local"
    assert mlflow.get_tracking_uri()  # the client module works with the login variables set
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "wrong")
    with pytest.raises(Exception, match=r"401|not authenticated|Unauthorized"):
        MlflowClient(tracking_uri=url).search_experiments()
