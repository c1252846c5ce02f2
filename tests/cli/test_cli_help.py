"""``rnnstream --help`` and every ``rnnstream COMMAND --help`` answer without loading torch, Ray or MLflow.

Those imports take seconds; each command imports what it needs when it runs. Checked by the modules a fresh
interpreter has loaded after building the whole parser and printing every command's help (not by a clock).
"""

from __future__ import annotations

import json
import subprocess
import sys

HEAVY = ("torch", "ray", "mlflow", "pandas", "kafka", "sklearn", "matplotlib")

PROBE = """
import contextlib, io, json, sys
from rnnstream.cli.main import build_parser, COMMAND_MODULES
parser = build_parser()
commands = sorted(parser._subparsers._group_actions[0].choices)
for argv in [["--help"], *[[c, "--help"] for c in commands]]:
    with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):
        parser.parse_args(argv)
print(json.dumps({"commands": commands, "loaded": sorted({m.split(".")[0] for m in sys.modules})}))
"""


def test_help_of_every_command_loads_no_heavy_library() -> None:
    out = subprocess.run(
        [sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=120, check=True
    )
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert {"serve", "train", "fit-file", "backfill", "archive"} <= set(report["commands"])
    loaded = [m for m in HEAVY if m in report["loaded"]]
    assert loaded == [], f"`rnnstream ... --help` imports {loaded}; import them inside the command instead"
