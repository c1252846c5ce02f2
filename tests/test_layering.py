"""The layering rules, checked on the installed package: what each room may import."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_rnn_core_loads_no_ray_kafka_or_mlflow() -> None:
    """A notebook that imports the core gets torch, numpy and pyarrow, nothing of the serving stack."""
    code = (
        "import sys, rnnstream.rnn_core, rnnstream.rnn_core.stream_scorer, rnnstream.rnn_core.training, "
        "rnnstream.rnn_core.evaluation, rnnstream.rnn_core.state_store\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('ray', 'kafka', 'mlflow'))\n"
        "print(','.join(bad))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"rnnstream.rnn_core loaded {out.stdout.strip()}"


def imports_of(folder: Path) -> dict[str, set[str]]:
    """Module file -> every rnnstream module it imports (at any depth: inside functions too)."""
    found: dict[str, set[str]] = {}
    for path in sorted(folder.rglob("*.py")):
        names: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                names.add(node.module)
            elif isinstance(node, ast.Import):
                names.update(a.name for a in node.names)
        found[str(path.relative_to(ROOT))] = {n for n in names if n.startswith("rnnstream")}
    return found


@pytest.mark.parametrize(
    ("folder", "forbidden"),
    [
        ("rnn_core", ("rnnstream.workers", "rnnstream.pipelines", "rnnstream.cli", "rnnstream.jobs")),
        ("workers", ("rnnstream.pipelines", "rnnstream.cli", "rnnstream.demo", "rnnstream.jobs")),
        ("pipelines", ("rnnstream.cli", "rnnstream.demo", "rnnstream.jobs", "rnnstream.files")),
    ],
)
def test_rooms_import_only_downwards(folder: str, forbidden: tuple[str, ...]) -> None:
    offenders = {
        module: sorted(n for n in names if n.startswith(forbidden))
        for module, names in imports_of(ROOT / folder).items()
        if any(n.startswith(forbidden) for n in names)
    }
    assert offenders == {}, f"{folder}/ imports what it may not: {offenders}"


def test_the_card_folders_are_the_installed_packages() -> None:
    """``rnnstream.rnn_core`` etc. are the root folders (editable or wheel, they are what tests import)."""
    import rnnstream.pipelines
    import rnnstream.rnn_core
    import rnnstream.workers

    for pkg, folder in (
        (rnnstream.rnn_core, "rnn_core"),
        (rnnstream.workers, "workers"),
        (rnnstream.pipelines, "pipelines"),
    ):
        assert Path(pkg.__file__).resolve().parent.name == folder
    assert Path(rnnstream.__file__).resolve().parent.name == "rnnstream"
