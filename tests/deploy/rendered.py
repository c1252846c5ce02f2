"""Walk rendered chart objects: find every pod template (also those nested in KubeRay resources)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

RAY_KINDS = ("RayCluster", "RayJob", "RayService")


@dataclass(frozen=True)
class PodTemplateRef:
    """One pod template found in a rendered object, with a path that says where it is."""

    where: str
    template: dict
    # True for the head of a RayCluster whose autoscaler is on: KubeRay gives that pod its own ServiceAccount.
    operator_account: bool = False

    @property
    def spec(self) -> dict:
        return self.template["spec"]

    def containers(self) -> list[dict]:
        return list(self.spec.get("initContainers", [])) + list(self.spec["containers"])


def _cluster_templates(where: str, cluster_spec: dict) -> Iterator[PodTemplateRef]:
    autoscaling = bool(cluster_spec.get("enableInTreeAutoscaling"))
    yield PodTemplateRef(f"{where}.headGroupSpec", cluster_spec["headGroupSpec"]["template"], autoscaling)
    for group in cluster_spec.get("workerGroupSpecs", []):
        yield PodTemplateRef(f"{where}.workerGroupSpecs[{group['groupName']}]", group["template"])


def pod_templates(doc: dict) -> Iterator[PodTemplateRef]:
    """Every pod template in one rendered object (Deployments, Jobs, RayClusters, RayJobs)."""
    kind, name = doc["kind"], doc["metadata"]["name"]
    where = f"{kind}/{name}"
    if kind in ("Deployment", "StatefulSet", "DaemonSet", "Job"):
        yield PodTemplateRef(where, doc["spec"]["template"])
    elif kind == "Pod":
        yield PodTemplateRef(where, {"metadata": doc["metadata"], "spec": doc["spec"]})
    elif kind == "RayCluster":
        yield from _cluster_templates(where, doc["spec"])
    elif kind == "RayJob":
        if "rayClusterSpec" in doc["spec"]:
            yield from _cluster_templates(f"{where}.rayClusterSpec", doc["spec"]["rayClusterSpec"])
        if "submitterPodTemplate" in doc["spec"]:
            yield PodTemplateRef(f"{where}.submitterPodTemplate", doc["spec"]["submitterPodTemplate"])
    elif kind == "RayService":
        yield from _cluster_templates(f"{where}.rayClusterConfig", doc["spec"]["rayClusterConfig"])


def cluster_specs(doc: dict) -> Iterator[tuple[str, dict]]:
    """Every RayCluster spec in a rendered object: the RayCluster itself or the one a RayJob brings."""
    name = f"{doc['kind']}/{doc['metadata']['name']}"
    if doc["kind"] == "RayCluster":
        yield name, doc["spec"]
    elif doc["kind"] == "RayJob" and "rayClusterSpec" in doc["spec"]:
        yield name, doc["spec"]["rayClusterSpec"]
    elif doc["kind"] == "RayService":
        yield name, doc["spec"]["rayClusterConfig"]


def by_kind(docs: list[dict], kind: str) -> list[dict]:
    return [d for d in docs if d["kind"] == kind]


def env_of(container: dict) -> dict[str, dict]:
    """name -> env entry of a container."""
    return {e["name"]: e for e in container.get("env", [])}


def labels_match(selector: dict, labels: dict) -> bool:
    """Whether a matchLabels-only selector selects these labels."""
    return all(labels.get(k) == v for k, v in selector.get("matchLabels", {}).items())
