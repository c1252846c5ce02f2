"""The MLflow ``pyfunc`` face of a registered rnnstream model (logged as code, never as a pickle).

MLflow logs this file as the model's code ("models from code") next to two artifacts: ``weights`` (the
safetensors weights + config JSON written by :func:`rnnstream.rnn_core.serialization.save_model`) and
``meta`` (JSON: pipeline, event schema, output names). Loading it with ``mlflow.pyfunc.load_model`` reads
those files only, so no pickled object is ever loaded.

``predict`` takes a DataFrame of events in the pipeline's event schema (``key``, ``time`` and the fields) and
replays them, in the given order, through the same streaming code that serves (:class:`StreamScorer` over a
:class:`KeyedStateStore`), starting every call from empty states, with the key TTL the version was
registered with (``meta.key_ttl_ms``; none: keys never expire). It returns one row of outputs per event,
named as :meth:`StreamingModel.output_names` says.
"""

from __future__ import annotations

import os

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")  # before MLflow is imported (as in tracking.py)

import json
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
import pyarrow as pa

from rnnstream.rnn_core.event_schema import KEY_COLUMN, TIME_COLUMN, EventSchema
from rnnstream.rnn_core.features import features_from_arrow
from rnnstream.rnn_core.serialization import load_model
from rnnstream.rnn_core.state_store import KeyedStateStore
from rnnstream.rnn_core.stream_scorer import StreamScorer


class StreamingPyfunc(mlflow.pyfunc.PythonModel):
    """Replays a batch of events through a :class:`StreamingModel` loaded from safetensors weights."""

    def load_context(self, context: Any) -> None:
        self._model = load_model(Path(context.artifacts["weights"]))
        self._model.eval()
        meta = json.loads(Path(context.artifacts["meta"]).read_text())
        self._schema = EventSchema.from_dict(meta["event_schema"])
        ttl = meta.get("key_ttl_ms")  # the serving TTL the version was registered with, if any
        self._key_ttl_ms = None if ttl is None else int(ttl)

    def predict(
        self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None
    ) -> pd.DataFrame:
        arrow_schema = self._schema.arrow_schema()
        frame = model_input.copy()
        frame[TIME_COLUMN] = pd.to_datetime(frame[TIME_COLUMN]).astype("datetime64[ms]")
        columns = [f.name for f in arrow_schema if f.name in frame.columns]
        table = pa.Table.from_pandas(frame[columns], preserve_index=False)
        table = table.cast(pa.schema([arrow_schema.field(c) for c in columns]))
        x = features_from_arrow(table, self._model.config.features)
        keys = [str(k) for k in table.column(KEY_COLUMN).to_pylist()]
        times_ms = table.column(TIME_COLUMN).cast(pa.int64()).to_numpy().astype(np.int64)
        store = KeyedStateStore(self._model.state_shape, capacity=max(len(set(keys)), 1))
        outputs = StreamScorer(self._model, store, key_ttl_ms=self._key_ttl_ms).score(keys, times_ms, x)
        return pd.DataFrame(np.asarray(outputs, dtype=np.float64), columns=self._model.output_names())


mlflow.models.set_model(StreamingPyfunc())
