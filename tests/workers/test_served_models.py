"""ServedModels as other threads see it: the worker's status is read without a lock while the loop thread
prepares a challenger, so what it shows must never pair the new challenger with the old one's numbers."""

from __future__ import annotations

from types import SimpleNamespace

from rnnstream.workers.kafka_settings import KafkaSettings
from rnnstream.workers.model_loading import load_model
from rnnstream.workers.served_models import ServedModels
from tests.workers.worker_harness import make_model, make_schema, worker_config


def test_a_new_challenger_shows_with_its_own_event_count(tmp_path) -> None:
    schema = make_schema("served")
    _, handle = make_model(schema, tmp_path / "model", seed=3)
    config = worker_config(KafkaSettings(bootstrap_servers="127.0.0.1:9"), schema, tmp_path / "ckpt")
    models = ServedModels(config, load_model)
    models.challenger_events = 5000  # what the previous challenger scored (a switch keeps the count)
    seen = []

    class StatusReadingPartition:
        """Reads the status as another thread may, while the challenger is being attached."""

        offsets = SimpleNamespace(next_offset=7)

        def attach_challenger(self, challenger) -> None:
            seen.append(models.status())

    start = models.prepare(models.load(handle), shadow=False, parts={0: StatusReadingPartition()})
    assert start == {0: 7}
    assert seen == [{"model_version": None, "challenger_version": handle.version, "challenger_events": 0}]
