"""The chart's MLflow server command is one the installed MLflow accepts, and its --allowed-hosts admits the
Service names (and nothing else) under MLflow's own host check.

The rendered arguments are parsed by MLflow's own `mlflow server` click command (an unknown or misspelled flag
fails here instead of in a pod), and the allowed-host list is run through MLflow's own Host-header check.
Starting a real server takes 20-40 s on a busy machine, so this stays in-process (a real server started
with these arguments answered 200 for the Service names and 403 for another Host when this was written).
"""

from __future__ import annotations

import pytest

from tests.deploy.conftest import NAMESPACE, RELEASE
from tests.deploy.rendered import by_kind


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
