"""The Helm chart renders for every profile, validates offline, and keeps its security promises.

No cluster here: helm (real binary, fetched from a PyPI wheel) lints and renders; core objects are checked
with kubernetes-validate (strict: unknown fields are errors); KubeRay and Prometheus-operator objects against
JSON schemas we wrote from their API references; the pod templates inside RayClusters / RayJobs as core
PodTemplates.
"""

from __future__ import annotations

import json
import re
import subprocess

import jsonschema
import kubernetes_validate
import pytest
import yaml

from tests.deploy.conftest import (
    BAD_VALUES_DIR,
    CHART_DIR,
    PROFILES,
    RELEASE,
    SCHEMAS_DIR,
    run_helm,
    template_args,
)
from tests.deploy.rendered import by_kind, cluster_specs, env_of, labels_match, pod_templates

# A Kubernetes version kubernetes-validate ships schemas for (it has 1.25 ... 1.37); Chart.yaml asks >= 1.27.
K8S_VERSION = "1.33"
CRD_SCHEMAS = {
    ("ray.io/v1", "RayCluster"): "raycluster.schema.json",
    ("ray.io/v1", "RayJob"): "rayjob.schema.json",
    ("monitoring.coreos.com/v1", "ServiceMonitor"): "servicemonitor.schema.json",
}
PROFILE_NAMES = list(PROFILES)


def _crd_validator(api_version: str, kind: str) -> jsonschema.protocols.Validator:
    schema = json.loads((SCHEMAS_DIR / CRD_SCHEMAS[(api_version, kind)]).read_text())
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema)


# --- helm itself -----------------------------------------------------------------------------------------


def test_fetch_helm_is_idempotent_and_gives_the_pinned_version(fetch_helm_module, helm):
    again = fetch_helm_module.ensure_helm()
    assert again == helm
    out = subprocess.run([str(helm), "version", "--short"], capture_output=True, text=True, check=True)
    assert out.stdout.startswith("v3.17.2")


@pytest.mark.parametrize("profile", PROFILE_NAMES)
def test_helm_lint_strict(helm, profile):
    args = ["lint", "--strict", str(CHART_DIR), "--namespace", "streams"]
    if PROFILES[profile] is not None:
        args += ["-f", str(PROFILES[profile])]
    result = run_helm(helm, *args)
    assert result.returncode == 0, result.stdout + result.stderr


def test_helm_package(helm, tmp_path):
    result = run_helm(helm, "package", str(CHART_DIR), "--destination", str(tmp_path))
    assert result.returncode == 0, result.stderr
    assert list(tmp_path.glob("rnnstream-*.tgz"))


# --- schema validation of every rendered object ----------------------------------------------------------


@pytest.mark.parametrize("profile", PROFILE_NAMES)
def test_every_rendered_object_validates(render, profile):
    docs = render(profile)
    assert docs, "nothing rendered"
    for doc in docs:
        key = (doc["apiVersion"], doc["kind"])
        name = f"{doc['kind']}/{doc['metadata']['name']}"
        if key in CRD_SCHEMAS:
            errors = sorted(_crd_validator(*key).iter_errors(doc), key=lambda e: list(e.path))
            assert not errors, f"{name}: " + "; ".join(f"{list(e.path)}: {e.message}" for e in errors)
            # The pod templates inside are core objects: validate them as such, strictly.
            for ref in pod_templates(doc):
                pod_template = {
                    "apiVersion": "v1",
                    "kind": "PodTemplate",
                    "metadata": {"name": "check"},
                    "template": ref.template,
                }
                kubernetes_validate.validate(pod_template, K8S_VERSION, strict=True)
        else:
            # A custom resource without a schema of ours fails here too (SchemaNotFoundError).
            kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


@pytest.mark.parametrize("k8s_version", ["1.27", "1.37"])
def test_core_objects_validate_on_the_oldest_and_newest_supported_kubernetes(render, k8s_version):
    """Chart.yaml asks for Kubernetes >= 1.27; 1.37 is the newest schema kubernetes-validate ships."""
    for doc in render("sasl-kafka"):
        if (doc["apiVersion"], doc["kind"]) not in CRD_SCHEMAS:
            kubernetes_validate.validate(doc, k8s_version, strict=True)


def test_crd_schemas_reject_wrong_fields():
    """Our KubeRay schemas are not vacuous: a typo, a wrong type and a job with two clusters all fail."""
    cluster = {
        "apiVersion": "ray.io/v1",
        "kind": "RayCluster",
        "metadata": {"name": "c"},
        "spec": {
            "headGroupSpec": {"rayStartParams": {}, "template": {"spec": {"containers": [{"name": "h"}]}}},
            "workerGroupSpecs": [
                {
                    "groupName": "cpu",
                    "replicas": 1,
                    "minReplicas": 0,
                    "maxReplicas": 2,
                    "rayStartParams": {},
                    "template": {"spec": {"containers": [{"name": "w"}]}},
                }
            ],
        },
    }
    validator = _crd_validator("ray.io/v1", "RayCluster")
    assert not list(validator.iter_errors(cluster))
    typo = json.loads(json.dumps(cluster))
    typo["spec"]["workerGroupSpecs"][0]["maxReplica"] = 3
    wrong_type = json.loads(json.dumps(cluster))
    wrong_type["spec"]["workerGroupSpecs"][0]["replicas"] = "one"
    number_param = json.loads(json.dumps(cluster))
    number_param["spec"]["headGroupSpec"]["rayStartParams"]["num-cpus"] = 0
    for bad in (typo, wrong_type, number_param):
        assert list(validator.iter_errors(bad))
    job_validator = _crd_validator("ray.io/v1", "RayJob")
    both = {
        "apiVersion": "ray.io/v1",
        "kind": "RayJob",
        "metadata": {"name": "j"},
        "spec": {
            "entrypoint": "x",
            "rayClusterSpec": cluster["spec"],
            "clusterSelector": {"ray.io/cluster": "c"},
        },
    }
    assert list(job_validator.iter_errors(both))


# --- security properties ---------------------------------------------------------------------------------


@pytest.mark.parametrize("profile", PROFILE_NAMES)
def test_pods_run_non_root_with_limits_and_locked_down_containers(render, profile):
    refs = [ref for doc in render(profile) for ref in pod_templates(doc)]
    assert refs
    for ref in refs:
        pod_sc = ref.spec.get("securityContext", {})
        assert pod_sc.get("runAsNonRoot") is True, f"{ref.where}: pod must set runAsNonRoot"
        assert pod_sc.get("runAsUser", 1) != 0, f"{ref.where}: runAsUser 0"
        assert ref.spec.get("hostNetwork") is not True and ref.spec.get("hostPID") is not True
        for container in ref.containers():
            where = f"{ref.where}/{container['name']}"
            sc = container.get("securityContext", {})
            assert sc.get("allowPrivilegeEscalation") is False, where
            assert sc.get("privileged") is not True, where
            assert sc.get("readOnlyRootFilesystem") is True, where
            assert "ALL" in sc.get("capabilities", {}).get("drop", []), where
            resources = container.get("resources", {})
            for part in ("requests", "limits"):
                for res in ("cpu", "memory"):
                    assert res in resources.get(part, {}), f"{where}: no {part}.{res}"
        mounts = {m["mountPath"] for c in ref.containers() for m in c.get("volumeMounts", [])}
        assert "/tmp" in mounts, f"{ref.where}: read-only root needs a writable /tmp"


@pytest.mark.parametrize("profile", PROFILE_NAMES)
def test_service_account_has_no_rights_and_no_token(render, profile):
    docs = render(profile)
    assert not [d for d in docs if d["kind"] in ("Role", "ClusterRole", "RoleBinding", "ClusterRoleBinding")]
    (account,) = by_kind(docs, "ServiceAccount")
    assert account["automountServiceAccountToken"] is False
    for doc in docs:
        for ref in pod_templates(doc):
            if ref.operator_account:
                # The autoscaling head: KubeRay creates its ServiceAccount and the narrow Role the autoscaler
                # needs; the chart must not override it with an account that lacks those rights.
                assert "serviceAccountName" not in ref.spec, ref.where
                continue
            assert ref.spec.get("serviceAccountName") == account["metadata"]["name"], ref.where
            assert ref.spec.get("automountServiceAccountToken") is False, ref.where


@pytest.mark.parametrize("profile", PROFILE_NAMES)
def test_dashboard_and_services_stay_inside_the_cluster(render, profile):
    docs = render(profile)
    for svc in by_kind(docs, "Service"):
        assert svc["spec"].get("type", "ClusterIP") == "ClusterIP", svc["metadata"]["name"]
    assert not by_kind(docs, "Ingress")
    for name, spec in (item for doc in docs for item in cluster_specs(doc)):
        head = spec["headGroupSpec"]
        assert head.get("serviceType") == "ClusterIP", name
        assert head.get("enableIngress") is not True, name
        head_service = head.get("headService", {}).get("spec", {})
        assert head_service.get("type", "ClusterIP") == "ClusterIP", name


SECRET_TEXT = re.compile(r"password|passwd|secret_access|token|://[^/\s:@]+:[^/\s@]+@", re.IGNORECASE)
SECRET_ENV_NAME = re.compile(r"PASSWORD|TOKEN|SECRET|BACKEND_STORE_URI|ACCESS_KEY")


@pytest.mark.parametrize("profile", PROFILE_NAMES)
def test_no_secret_values_in_configmaps_or_plain_env(render, profile):
    docs = render(profile)
    configmaps = by_kind(docs, "ConfigMap")
    assert configmaps
    for cm in configmaps:
        for key, text in cm.get("data", {}).items():
            assert not SECRET_TEXT.search(text), f"ConfigMap {cm['metadata']['name']}[{key}] holds a secret"
    for doc in docs:
        for ref in pod_templates(doc):
            for container in ref.containers():
                for name, entry in env_of(container).items():
                    if SECRET_ENV_NAME.search(name) and name != "RAY_AUTH_MODE":
                        assert "value" not in entry, f"{ref.where}: {name} must come from a Secret"
                        assert "secretKeyRef" in entry.get("valueFrom", {}), f"{ref.where}: {name}"
                for arg in container.get("args", []) + container.get("command", []):
                    assert not SECRET_TEXT.search(arg), f"{ref.where}: secret on the command line: {arg}"
    assert not by_kind(docs, "Secret"), "the chart must not render Secrets (they are created by the user)"


@pytest.mark.parametrize("profile", PROFILE_NAMES)
def test_network_policies_cover_every_pod(render, profile):
    docs = render(profile)
    policies = by_kind(docs, "NetworkPolicy")
    assert policies
    for policy in policies:
        assert "Ingress" in policy["spec"]["policyTypes"]
        for rule in policy["spec"]["ingress"]:
            assert rule.get("from"), (
                f"{policy['metadata']['name']}: an ingress rule without `from` admits all"
            )
    for doc in docs:
        for ref in pod_templates(doc):
            labels = ref.template["metadata"]["labels"]
            assert any(labels_match(p["spec"]["podSelector"], labels) for p in policies), ref.where
    (ray_policy,) = [p for p in policies if p["metadata"]["name"].endswith("-ray")]
    operator_rules = [r for r in ray_policy["spec"]["ingress"] if "namespaceSelector" in r["from"][0]]
    ports = {p["port"] for r in operator_rules for p in r.get("ports", [])}
    assert ports <= {8265, 8080, _values(profile)["serving"]["metricsPort"]}, ports


@pytest.mark.parametrize("profile", PROFILE_NAMES)
def test_ray_token_reaches_every_ray_process(render, profile):
    """KubeRay gets the token Secret (for its own dashboard calls and to inject it); every container the chart
    writes, the autoscaler included, reads the same Secret."""
    secret = _values(profile)["ray"]["auth"]["existingSecret"] or f"{RELEASE}-rnnstream-ray-auth"
    token_ref = {"name": secret, "key": "auth_token"}
    checked = 0
    for doc in render(profile):
        if doc["kind"] not in ("RayCluster", "RayJob"):
            continue
        for name, spec in cluster_specs(doc):
            assert spec["authOptions"] == {"mode": "token", "secretName": secret}, name
            if spec.get("enableInTreeAutoscaling"):
                env = env_of(spec["autoscalerOptions"])
                assert env["RAY_AUTH_TOKEN"]["valueFrom"]["secretKeyRef"] == token_ref, name
        for ref in pod_templates(doc):
            for container in ref.spec["containers"]:
                env = env_of(container)
                assert env["RAY_AUTH_MODE"]["value"] == "token", ref.where
                assert env["RAY_AUTH_TOKEN"]["valueFrom"]["secretKeyRef"] == token_ref, ref.where
                checked += 1
    assert checked >= 3


def test_ray_auth_opt_out_is_explicit(helm):
    result = run_helm(helm, *template_args(None, ("--set", "ray.auth.mode=disabled")))
    assert result.returncode == 0, result.stderr
    docs = [d for d in yaml.safe_load_all(result.stdout) if d]
    for doc in docs:
        for name, spec in cluster_specs(doc):
            assert spec["authOptions"] == {"mode": "disabled"}, name
        for ref in pod_templates(doc):
            if doc["kind"] in ("RayCluster", "RayJob"):
                for container in ref.spec["containers"]:
                    env = env_of(container)
                    assert env["RAY_AUTH_MODE"]["value"] == "disabled", ref.where
                    assert "RAY_AUTH_TOKEN" not in env, ref.where


@pytest.mark.parametrize("profile", PROFILE_NAMES)
def test_prometheus_can_scrape_ray_pods(render, profile):
    for doc in render(profile):
        if doc["kind"] not in ("RayCluster", "RayJob"):
            continue
        for ref in pod_templates(doc):
            if ref.where.endswith("submitterPodTemplate"):
                continue
            annotations = ref.template["metadata"]["annotations"]
            assert annotations["prometheus.io/scrape"] == "true", ref.where
            ports = {p["containerPort"] for c in ref.spec["containers"] for p in c.get("ports", [])}
            assert int(annotations["prometheus.io/port"]) in ports, ref.where


def _prometheus_ports(policy: dict) -> set[int]:
    """Every port the Ray pods' NetworkPolicy opens to the Prometheus namespace (port .. endPort)."""
    (rule,) = [
        r
        for r in policy["spec"]["ingress"]
        if r["from"][0].get("namespaceSelector", {}).get("matchLabels", {}).get("kubernetes.io/metadata.name")
        == "monitoring"
    ]
    return {n for p in rule["ports"] for n in range(p["port"], p.get("endPort", p["port"]) + 1)}


def test_scoring_workers_partition_metrics_ports_are_declared_scraped_and_admitted(render):
    """Worker slot i of a pipeline serves its per-partition series on serving.metricsPort + i on whichever
    scoring pod Ray put it: every scoring pod declares the range (the most workers a pipeline has: 4 here),
    the metrics Service and ServiceMonitor scrape each slot's named port, Prometheus may reach the range,
    and the run config tells the workers the same port."""
    docs = render("gpu-training", extra=("--set", "metrics.serviceMonitor.enabled=true"))
    for doc in docs:
        if (doc["apiVersion"], doc["kind"]) not in CRD_SCHEMAS:
            kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    assert _config(docs)["serving"]["metrics_port"] == 9464
    assert _config(docs)["serving"]["max_record_bytes"] == 1_000_000
    expected = {f"wmetrics-{slot}": 9464 + slot for slot in range(4)}
    (cluster,) = [c for c in by_kind(docs, "RayCluster") if c["metadata"]["name"].endswith("-scoring")]
    scoring_pods = list(pod_templates(cluster))
    assert len(scoring_pods) == 3  # head, cpu and gpu groups: an actor may land on any of them
    for ref in scoring_pods:
        (container,) = ref.spec["containers"]
        declared = {p["name"]: p["containerPort"] for p in container["ports"]}
        assert {n: v for n, v in declared.items() if n.startswith("wmetrics-")} == expected, ref.where
    for job in by_kind(docs, "RayJob"):  # training / serve-driver clusters run no scoring worker
        for ref in pod_templates(job):
            names = {p["name"] for c in ref.spec["containers"] for p in c.get("ports", [])}
            assert not [n for n in names if n.startswith("wmetrics-")], ref.where
    (svc,) = [s for s in by_kind(docs, "Service") if s["spec"].get("clusterIP") == "None"]
    svc_ports = {p["name"]: p for p in svc["spec"]["ports"]}
    for name, port in expected.items():
        assert (svc_ports[name]["port"], svc_ports[name]["targetPort"]) == (port, name)
    (monitor,) = by_kind(docs, "ServiceMonitor")
    scraped = {e["port"] for e in monitor["spec"]["endpoints"]}
    assert scraped == {"metrics", *expected} and scraped <= set(svc_ports)
    assert all(e["path"] == "/metrics" for e in monitor["spec"]["endpoints"])
    assert labels_match(monitor["spec"]["selector"], svc["metadata"]["labels"])
    for ref in scoring_pods:
        assert labels_match({"matchLabels": svc["spec"]["selector"]}, ref.template["metadata"]["labels"])
    (ray_policy,) = [p for p in by_kind(docs, "NetworkPolicy") if p["metadata"]["name"].endswith("-ray")]
    assert _prometheus_ports(ray_policy) == {8080, *expected.values()}


def test_metrics_port_zero_declares_and_scrapes_no_worker_port(render):
    """serving.metricsPort 0: each worker takes any free port, so nothing is declared, scraped or admitted."""
    docs = render("sasl-kafka", extra=("--set", "serving.metricsPort=0"))
    assert _config(docs)["serving"]["metrics_port"] == 0
    for doc in by_kind(docs, "RayCluster"):
        for ref in pod_templates(doc):
            names = {p["name"] for c in ref.spec["containers"] for p in c.get("ports", [])}
            assert names and not [n for n in names if n.startswith("wmetrics-")], ref.where
    (monitor,) = by_kind(docs, "ServiceMonitor")
    assert [e["port"] for e in monitor["spec"]["endpoints"]] == ["metrics"]
    (ray_policy,) = [p for p in by_kind(docs, "NetworkPolicy") if p["metadata"]["name"].endswith("-ray")]
    assert _prometheus_ports(ray_policy) == {8080}


# --- what each profile renders ---------------------------------------------------------------------------


def _values(profile: str) -> dict:
    values = yaml.safe_load((CHART_DIR / "values.yaml").read_text())
    if PROFILES[profile] is not None:
        _merge(values, yaml.safe_load(PROFILES[profile].read_text()))
    return values


def _merge(base: dict, override: dict) -> None:
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _merge(base[key], value)
        else:
            base[key] = value


def _config(docs: list[dict]) -> dict:
    (cm,) = [c for c in by_kind(docs, "ConfigMap") if c["metadata"]["name"].endswith("-config")]
    return yaml.safe_load(cm["data"]["config.yaml"])


def test_default_profile_scoring_cluster_groups(render):
    docs = render("default")
    (cluster,) = by_kind(docs, "RayCluster")
    spec = cluster["spec"]
    assert spec["rayVersion"] == "2.60.0"
    assert spec["enableInTreeAutoscaling"] is True
    groups = {g["groupName"]: g for g in spec["workerGroupSpecs"]}
    assert set(groups) == {"cpu", "gpu"}
    assert (groups["cpu"]["minReplicas"], groups["cpu"]["replicas"], groups["cpu"]["maxReplicas"]) == (
        1,
        2,
        8,
    )
    gpu = groups["gpu"]["template"]["spec"]
    (gpu_container,) = gpu["containers"]
    assert gpu_container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert gpu_container["image"].endswith("-cu128")
    assert any(t["key"] == "nvidia.com/gpu" for t in gpu["tolerations"])
    (serve,) = [
        j
        for j in by_kind(docs, "RayJob")
        if j["metadata"]["labels"]["app.kubernetes.io/component"] == "serve"
    ]
    assert serve["spec"]["clusterSelector"] == {"ray.io/cluster": cluster["metadata"]["name"]}
    assert serve["spec"]["entrypoint"].split()[:2] == ["rnnstream", "serve"]
    assert "--model models:/rnnstream-fraud@champion --workers 2" in serve["spec"]["entrypoint"]
    assert "--config /etc/rnnstream/config.yaml" in serve["spec"]["entrypoint"]


def test_default_profile_configmap_holds_the_serving_settings(render):
    config = _config(render("default"))
    assert config["pipelines"]["fraud"] == {
        "partitions": 12,
        "workers": 2,
        "model_alias": "champion",
        "model_uri": "models:/rnnstream-fraud@champion",
    }
    serving = config["serving"]
    assert serving["checkpoint_uri"].startswith("s3://")
    for key in ("key_ttl_seconds", "max_batch_events", "batch_linger_ms", "checkpoint_interval_events"):
        assert isinstance(serving[key], int) and serving[key] > 0, key
    assert config["kafka"] == {
        "bootstrap_servers": "kafka-bootstrap.kafka.svc:9092",
        "security_protocol": "PLAINTEXT",
    }
    assert config["mlflow"]["tracking_uri"] == f"http://{RELEASE}-rnnstream-mlflow:5000"


def test_default_profile_mlflow_sqlite_on_a_volume(render):
    docs = render("default")
    (deployment,) = by_kind(docs, "Deployment")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    args = container["args"]
    assert "--backend-store-uri=sqlite:////mlflow/mlflow.db" in args
    (allowed,) = [a for a in args if a.startswith("--allowed-hosts=")]
    hosts = allowed.split("=", 1)[1].split(",")
    service = by_kind(docs, "Service")[0]["metadata"]["name"]
    assert {service, f"{service}:5000", f"{service}.streams.svc.cluster.local:5000"} <= set(hosts)
    assert "*" not in hosts
    assert deployment["spec"]["strategy"]["type"] == "Recreate"
    assert by_kind(docs, "PersistentVolumeClaim")
    assert container["readinessProbe"]["httpGet"]["path"] == "/health"


def test_gpu_training_profile_rayjob(render):
    docs = render("gpu-training")
    (train,) = [
        j
        for j in by_kind(docs, "RayJob")
        if j["metadata"]["labels"]["app.kubernetes.io/component"] == "train"
    ]
    spec = train["spec"]
    entry = spec["entrypoint"].split()
    assert entry[:2] == ["rnnstream", "train"]
    assert "--use-gpu" in entry
    assert entry[entry.index("--workers") + 1] == "4"
    assert entry[entry.index("--epochs") + 1] == "20"
    assert spec["shutdownAfterJobFinishes"] is True
    (group,) = spec["rayClusterSpec"]["workerGroupSpecs"]
    assert group["replicas"] == group["minReplicas"] == group["maxReplicas"] == 4
    (worker,) = group["template"]["spec"]["containers"]
    assert worker["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert worker["resources"]["requests"]["nvidia.com/gpu"] == 1
    assert worker["image"].endswith("-cu128")
    assert group["template"]["spec"]["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    env = env_of(worker)
    assert env["MLFLOW_TRACKING_URI"]["value"].startswith("http://")
    serve_jobs = [
        j
        for j in by_kind(docs, "RayJob")
        if j["metadata"]["labels"]["app.kubernetes.io/component"] == "serve"
    ]
    assert len(serve_jobs) == 2
    assert {j["metadata"]["name"] for j in serve_jobs} == {
        "rs-rnnstream-serve-fraud",
        "rs-rnnstream-serve-monitoring-metrics",
    }


def test_external_mlflow_profile_deploys_no_mlflow(render):
    docs = render("external-mlflow")
    assert not by_kind(docs, "Deployment")
    assert not by_kind(docs, "PersistentVolumeClaim")
    assert not [s for s in by_kind(docs, "Service") if "mlflow" in s["metadata"]["name"]]
    assert _config(docs)["mlflow"]["tracking_uri"] == "https://mlflow.example.com"
    for doc in by_kind(docs, "RayCluster") + by_kind(docs, "RayJob"):
        for ref in pod_templates(doc):
            if ref.where.endswith("submitterPodTemplate"):
                continue
            (container,) = ref.spec["containers"]
            assert env_of(container)["MLFLOW_TRACKING_URI"]["value"] == "https://mlflow.example.com"
    components = sorted(
        j["metadata"]["labels"]["app.kubernetes.io/component"] for j in by_kind(docs, "RayJob")
    )
    assert components == ["archive", "backfill", "serve"]
    (backfill,) = [j for j in by_kind(docs, "RayJob") if j["metadata"]["name"].endswith("backfill-fraud")]
    assert backfill["spec"]["entrypoint"].startswith(
        "rnnstream backfill --pipeline fraud --model models:/rnnstream-fraud/7"
    )


def test_sasl_kafka_profile_takes_credentials_from_secrets(render):
    docs = render("sasl-kafka")
    config = _config(docs)
    assert config["kafka"]["security_protocol"] == "SASL_SSL"
    assert config["kafka"]["sasl_mechanism"] == "SCRAM-SHA-512"
    (cluster,) = by_kind(docs, "RayCluster")
    for ref in pod_templates(cluster):
        (container,) = ref.spec["containers"]
        env = env_of(container)
        assert env["RNNSTREAM_KAFKA_SECURITY_PROTOCOL"]["value"] == "SASL_SSL"
        assert env["RNNSTREAM_KAFKA_BOOTSTRAP_SERVERS"]["value"].startswith("b-1.kafka.example.com:9096")
        for name, key in (
            ("RNNSTREAM_KAFKA_SASL_PLAIN_USERNAME", "username"),
            ("RNNSTREAM_KAFKA_SASL_PLAIN_PASSWORD", "password"),
        ):
            assert env[name]["valueFrom"]["secretKeyRef"] == {
                "name": "rnnstream-kafka-credentials",
                "key": key,
            }
        ca_path = env["RNNSTREAM_KAFKA_SSL_CAFILE"]["value"]
        mount = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}["kafka-ca"]
        assert ca_path == f"{mount}/ca.crt"
        volume = {v["name"]: v for v in ref.spec["volumes"]}["kafka-ca"]
        assert volume["secret"]["secretName"] == "rnnstream-kafka-ca"
        assert container["envFrom"] == [{"secretRef": {"name": "rnnstream-s3-credentials"}}]
    (mlflow,) = by_kind(docs, "Deployment")
    (container,) = mlflow["spec"]["template"]["spec"]["containers"]
    assert not [a for a in container["args"] if a.startswith("--backend-store-uri")]
    assert (
        env_of(container)["MLFLOW_BACKEND_STORE_URI"]["valueFrom"]["secretKeyRef"]["name"]
        == "rnnstream-mlflow-db"
    )
    assert "--artifacts-destination=s3://rnnstream-mlflow/artifacts" in container["args"]
    assert not by_kind(docs, "PersistentVolumeClaim")
    (monitor,) = by_kind(docs, "ServiceMonitor")
    (metrics_svc,) = [s for s in by_kind(docs, "Service") if s["spec"].get("clusterIP") == "None"]
    assert labels_match(monitor["spec"]["selector"], metrics_svc["metadata"]["labels"])


# --- values.schema.json and template checks reject bad values ---------------------------------------------

BAD_VALUES = sorted(BAD_VALUES_DIR.glob("*.yaml"))


def test_there_are_bad_values_files():
    assert len(BAD_VALUES) >= 6


@pytest.mark.parametrize("values_file", BAD_VALUES, ids=[p.stem for p in BAD_VALUES])
def test_bad_values_are_rejected(helm, values_file):
    first_line = values_file.read_text().splitlines()[0]
    assert first_line.startswith("# expect: "), f"{values_file.name}: first line must be '# expect: <text>'"
    expected = first_line.removeprefix("# expect: ").strip()
    result = run_helm(helm, *template_args(values_file))
    assert result.returncode != 0, f"{values_file.name} rendered, but must be rejected"
    assert expected in result.stderr, result.stderr


def test_long_release_names_stay_within_kuberay_name_limits(helm):
    """Helm allows 53-character releases; KubeRay allows 53 for RayClusters and 47 for RayJobs."""
    release = "r" + "x" * 52
    args = ["template", release, str(CHART_DIR), "-f", str(PROFILES["gpu-training"])]
    args += ["--set", "backfill.enabled=true", "--set", "archive.enabled=true"]
    result = run_helm(helm, *args)
    assert result.returncode == 0, result.stderr
    docs = [d for d in yaml.safe_load_all(result.stdout) if d]
    ray_docs = [d for d in docs if d["apiVersion"] == "ray.io/v1"]
    assert len(ray_docs) == 7  # scoring cluster, 2 serve, 2 archive, train, backfill
    for doc in ray_docs:
        errors = list(_crd_validator(doc["apiVersion"], doc["kind"]).iter_errors(doc))
        assert not errors, f"{doc['kind']}/{doc['metadata']['name']}: {errors[0].message}"
    names = [(d["kind"], d["metadata"]["name"]) for d in docs]
    assert len(names) == len(set(names)), "two objects got the same name"
