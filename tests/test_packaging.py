"""The wheel (what ``pip install .`` installs) holds every module of the rooms, importable by the names
the code uses: ``rnn_core/``, ``workers/`` and ``pipelines/`` at the repository root become
``rnnstream.rnn_core``, ``rnnstream.workers`` and ``rnnstream.pipelines`` through setuptools'
``package-dir``. A new sub-package that ``[tool.setuptools] packages`` does not list would be left out of
the wheel while the editable install (which the other tests use) still finds it; this test sees that."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def package_folders() -> dict[str, str]:
    """Import path prefix in the wheel (``rnnstream/rnn_core``) -> folder in the repository (``rnn_core``)."""
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    return {name.replace(".", "/"): folder for name, folder in setuptools["package-dir"].items()}


def build_wheel(tmp_path: Path) -> Path:
    """Build the wheel from a copy of the sources (the build writes build/ and egg-info beside them)."""
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    for folder in set(package_folders().values()):
        shutil.copytree(ROOT / folder, src / folder, ignore=shutil.ignore_patterns("__pycache__"))
    out = tmp_path / "wheel"
    cmd = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out)]
    done = subprocess.run([*cmd, str(src)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    (wheel,) = out.glob("rnnstream-*.whl")
    return wheel


def test_wheel_holds_every_module_under_its_import_name(tmp_path: Path) -> None:
    wheel = build_wheel(tmp_path)
    names = set(zipfile.ZipFile(wheel).namelist())
    folders = package_folders()
    expected = {
        f"{prefix}/{path.relative_to(ROOT / folder).as_posix()}"
        for prefix, folder in folders.items()
        for path in (ROOT / folder).rglob("*.py")
        if "__pycache__" not in path.parts
    }
    assert len(expected) > 100  # the rooms were found
    missing = sorted(expected - names)
    assert missing == [], f"modules left out of the wheel (list their package in pyproject.toml): {missing}"
    top_level = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert top_level == {"rnnstream"}, f"the wheel installs other top-level names: {top_level}"

    # Unpacked ahead of the editable install on sys.path, the wheel's own files are what gets imported.
    unpacked = tmp_path / "unpacked"
    zipfile.ZipFile(wheel).extractall(unpacked)
    code = (
        f"import sys; sys.path.insert(0, {str(unpacked)!r})\n"
        "import rnnstream.rnn_core.model, rnnstream.workers.coordinator, rnnstream.pipelines.spec\n"
        "for m in (rnnstream.rnn_core.model, rnnstream.workers.coordinator, rnnstream.pipelines.spec):\n"
        "    print(m.__file__)"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=300
    )
    assert done.returncode == 0, done.stderr[-2000:]
    files = [Path(line) for line in done.stdout.split()]
    assert [f.relative_to(unpacked).as_posix() for f in files] == [
        "rnnstream/rnn_core/model.py",
        "rnnstream/workers/coordinator.py",
        "rnnstream/pipelines/spec.py",
    ]
