"""Who may reach what: MLflow's login, who may connect to MLflow, and where the Ray pods may connect to.

Checked on the parsed objects helm renders for every profile (tests/deploy/test_mlflow_server.py starts the
rendered MLflow command and checks that it refuses a request without the Secret's credentials).
"""

from __future__ import annotations

import configparser

import pytest
import yaml

from tests.deploy.conftest import PROFILES, RELEASE, run_helm, template_args
from tests.deploy.rendered import by_kind, env_of, labels_match, pod_templates

PROFILE_NAMES = list(PROFILES)
AUTH_SECRET = f"{RELEASE}-rnnstream-mlflow-auth"  # the default name of the admin's Secret


def _render(helm, *sets: str) -> list[dict]:
    extra: list[str] = []
    for item in sets:
        extra += ["--set", item]
    result = run_helm(helm, *template_args(None, tuple(extra)))
    assert result.returncode == 0, result.stderr
    return [d for d in yaml.safe_load_all(result.stdout) if d]


def _rnnstream_containers(docs: list[dict]):
    """(where, container) of every container that runs rnnstream code: Ray heads and workers of every
    RayCluster / RayJob (submitters only run `ray job submit`)."""
    for doc in docs:
        if doc["kind"] not in ("RayCluster", "RayJob"):
            continue
        for ref in pod_templates(doc):
            if not ref.where.endswith("submitterPodTemplate"):
                for container in ref.spec["containers"]:
                    yield ref.where, container


def _policy(docs: list[dict], suffix: str) -> dict:
    (policy,) = [p for p in by_kind(docs, "NetworkPolicy") if p["metadata"]["name"].endswith(suffix)]
    return policy


def _ports(rule: dict) -> set[tuple[int, str]]:
    return {(p["port"], p.get("protocol", "TCP")) for p in rule.get("ports", [])}


# --- MLflow authentication --------------------------------------------------------------------------------


@pytest.mark.parametrize("profile", ["default", "gpu-training", "sasl-kafka"])
def test_mlflow_runs_the_basic_auth_app_with_the_admin_from_a_secret(render, profile):
    docs = render(profile)
    (deployment,) = by_kind(docs, "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert "--app-name=basic-auth" in container["args"]
    env = env_of(container)
    secret = "rnnstream-mlflow-admin" if profile == "sasl-kafka" else AUTH_SECRET
    for name, key in (
        ("MLFLOW_AUTH_ADMIN_USERNAME", "username"),
        ("MLFLOW_AUTH_ADMIN_PASSWORD", "password"),
        ("MLFLOW_FLASK_SERVER_SECRET_KEY", "flask-secret-key"),
    ):
        assert env[name]["valueFrom"]["secretKeyRef"] == {"name": secret, "key": key}, name
    # The ini MLflow reads is the mounted file: the chart's ConfigMap, or the user's Secret (sasl-kafka).
    ini_path = env["MLFLOW_AUTH_CONFIG_PATH"]["value"]
    folder, file_name = ini_path.rsplit("/", 1)
    (mount,) = [m for m in container["volumeMounts"] if m["mountPath"] == folder]
    volume = {v["name"]: v for v in pod["volumes"]}[mount["name"]]
    if profile == "sasl-kafka":
        assert volume["secret"]["secretName"] == "rnnstream-mlflow-auth-config"
        assert volume["secret"]["items"] == [{"key": file_name, "path": file_name}]
        assert not by_kind(docs, "PersistentVolumeClaim")  # users live in PostgreSQL, not on a volume
        return
    (config_map,) = [
        c for c in by_kind(docs, "ConfigMap") if c["metadata"]["name"] == volume["configMap"]["name"]
    ]
    ini = configparser.ConfigParser()
    ini.read_string(config_map["data"][file_name])
    assert ini["mlflow"]["default_permission"] == "NO_PERMISSIONS"
    assert ini["mlflow"]["authorization_function"] == "mlflow.server.auth:authenticate_request_basic_auth"
    assert "admin_password" not in ini["mlflow"]  # only in the Secret
    assert (
        ini["mlflow"].getint("auth_cache_ttl_seconds") == 60
    )  # a login is hashed once a minute, not per call
    # The user store is sqlite on the PVC the server mounts (the root filesystem is read-only).
    database = ini["mlflow"]["database_uri"]
    assert database.startswith("sqlite:////mlflow/")
    assert {m["mountPath"] for m in container["volumeMounts"]} >= {"/mlflow"}
    assert by_kind(docs, "PersistentVolumeClaim")


@pytest.mark.parametrize("profile", ["default", "gpu-training", "sasl-kafka"])
def test_every_rnnstream_pod_logs_in_to_mlflow_with_the_secret(render, profile):
    docs = render(profile)
    secret = "rnnstream-mlflow-admin" if profile == "sasl-kafka" else AUTH_SECRET
    checked = 0
    for where, container in _rnnstream_containers(docs):
        env = env_of(container)
        assert env["MLFLOW_TRACKING_USERNAME"]["valueFrom"]["secretKeyRef"] == {
            "name": secret,
            "key": "username",
        }, where
        assert env["MLFLOW_TRACKING_PASSWORD"]["valueFrom"]["secretKeyRef"] == {
            "name": secret,
            "key": "password",
        }, where
        checked += 1
    assert checked >= 3


def test_external_mlflow_gets_credentials_only_when_a_secret_is_named(render, helm):
    for _, container in _rnnstream_containers(render("external-mlflow")):
        assert "MLFLOW_TRACKING_USERNAME" not in env_of(container)
    docs = _render(
        helm, "mlflow.enabled=false", "mlflow.external.uri=https://mlflow.example.com",
        "mlflow.auth.existingSecret=mlflow-login",
    )  # fmt: skip
    for where, container in _rnnstream_containers(docs):
        ref = env_of(container)["MLFLOW_TRACKING_PASSWORD"]["valueFrom"]["secretKeyRef"]
        assert ref == {"name": "mlflow-login", "key": "password"}, where


def test_auth_off_is_explicit_and_leaves_no_login_behind(helm):
    docs = _render(helm, "mlflow.auth.enabled=false")
    (deployment,) = by_kind(docs, "Deployment")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert not [a for a in container["args"] if a.startswith("--app-name")]
    assert not [n for n in env_of(container) if n.startswith("MLFLOW_AUTH")]
    assert not [c for c in by_kind(docs, "ConfigMap") if c["metadata"]["name"].endswith("-mlflow-auth")]
    for _, container in _rnnstream_containers(docs):
        assert "MLFLOW_TRACKING_PASSWORD" not in env_of(container)


# --- NetworkPolicy: who reaches MLflow ---------------------------------------------------------------------


@pytest.mark.parametrize("profile", ["default", "gpu-training", "sasl-kafka"])
def test_only_rnnstream_pods_and_named_clients_reach_mlflow_on_its_port(render, profile):
    docs = render(profile)
    policy = _policy(docs, "-mlflow")
    (deployment,) = by_kind(docs, "Deployment")
    assert labels_match(policy["spec"]["podSelector"], deployment["spec"]["template"]["metadata"]["labels"])
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    (rule,) = policy["spec"]["ingress"]
    assert _ports(rule) == {(5000, "TCP")}
    ray_pods = [
        r
        for r in (t for d in docs for t in pod_templates(d))
        if "rnnstream.io/ray" in r.template["metadata"]["labels"]
    ]
    assert ray_pods
    peers = rule["from"]
    for peer in peers:
        assert set(peer) <= {"podSelector", "namespaceSelector", "ipBlock"}
        namespaces = peer.get("namespaceSelector", {}).get("matchLabels", {}).values()
        assert "monitoring" not in namespaces, "Prometheus has no business with MLflow"
    (own,) = [p for p in peers if "podSelector" in p and "namespaceSelector" not in p]
    for ref in ray_pods:
        assert labels_match(own["podSelector"], ref.template["metadata"]["labels"]), ref.where
    assert own["podSelector"]["matchLabels"]["rnnstream.io/ray"] == "true"  # not every pod of the release
    expected_extra = 1 if profile == "sasl-kafka" else 0  # the ml-review namespace named in that profile
    assert len(peers) == 1 + expected_extra


# --- NetworkPolicy: where the Ray pods connect to ----------------------------------------------------------


@pytest.mark.parametrize("profile", PROFILE_NAMES)
def test_ray_pods_connect_only_to_dns_kafka_mlflow_object_storage_and_each_other(render, profile):
    docs = render(profile)
    policy = _policy(docs, "-ray")
    assert policy["spec"]["policyTypes"] == ["Ingress", "Egress"]
    rules = policy["spec"]["egress"]
    for rule in rules:
        assert rule.get("to"), f"an egress rule without `to` allows every destination: {rule}"
    own_pods = policy["spec"]["podSelector"]
    assert [r for r in rules if r["to"] == [{"podSelector": own_pods}] and "ports" not in r]
    dns = [r for r in rules if _ports(r) == {(53, "UDP"), (53, "TCP")}]
    assert dns and dns[0]["to"][0]["namespaceSelector"]["matchLabels"] == {
        "kubernetes.io/metadata.name": "kube-system"
    }
    assert [r for r in rules if (9092, "TCP") in _ports(r)], "no rule for the Kafka brokers"
    assert [r for r in rules if (443, "TCP") in _ports(r)], "no rule for the object store"
    mlflow_rules = [r for r in rules if "app.kubernetes.io/component" in
                    r["to"][0].get("podSelector", {}).get("matchLabels", {})]  # fmt: skip
    if profile == "external-mlflow":
        assert not mlflow_rules
    else:
        (rule,) = mlflow_rules
        (deployment,) = by_kind(docs, "Deployment")
        assert labels_match(
            rule["to"][0]["podSelector"], deployment["spec"]["template"]["metadata"]["labels"]
        )
        assert _ports(rule) == {(5000, "TCP")}
    autoscaling = any(c["spec"].get("enableInTreeAutoscaling") for c in by_kind(docs, "RayCluster"))
    assert bool([r for r in rules if (6443, "TCP") in _ports(r)]) == autoscaling


def test_egress_rules_come_from_values(helm):
    docs = _render(
        helm,
        "networkPolicy.egress.kafka.to[0].ipBlock.cidr=10.20.0.0/16",
        "networkPolicy.egress.kafka.ports[0].port=9096",
    )
    rules = _policy(docs, "-ray")["spec"]["egress"]
    (kafka,) = [r for r in rules if r["to"] == [{"ipBlock": {"cidr": "10.20.0.0/16"}}]]
    assert (9096, "TCP") in _ports(kafka)
    off = _policy(_render(helm, "networkPolicy.egress.enabled=false"), "-ray")
    assert off["spec"]["policyTypes"] == ["Ingress"] and "egress" not in off["spec"]
