"""The scoring worker sits below the control plane: loading it loads no coordinator or serving module (they
import the worker; the worker importing them back, even lazily, was an import circle)."""

from __future__ import annotations

import subprocess
import sys

ABOVE = ("coordinator", "serving", "worker_slots", "health_round", "coordinator_resume", "model_swap")


def test_the_worker_loads_nothing_of_the_control_plane(tmp_path):
    code = (  # a worker made and running (its Kafka unreachable: it only backs off), then the modules loaded
        "import os, sys\n"
        "import rnnstream.workers.scoring_worker_actor\n"
        "from rnnstream.workers.scoring_worker import ScoringWorker\n"
        "from rnnstream.workers.kafka_settings import KafkaSettings\n"
        "from tests.workers.worker_harness import make_schema, worker_config\n"
        "kafka = KafkaSettings(bootstrap_servers='127.0.0.1:9')\n"
        "config = worker_config(kafka, make_schema('imp'), sys.argv[1])\n"
        "ScoringWorker(0, config, export_metrics=False)\n"
        "print(' '.join(m.rsplit('.', 1)[1] for m in sys.modules if m.startswith('rnnstream.workers.')))\n"
        "sys.stdout.flush()\n"
        "os._exit(0)\n"
    )
    run = [sys.executable, "-c", code, str(tmp_path / "ckpt")]
    out = subprocess.run(run, capture_output=True, text=True, check=True).stdout
    loaded = set(out.split())
    assert "scoring_worker" in loaded and "model_loading" in loaded
    assert not loaded & set(ABOVE), sorted(loaded & set(ABOVE))
