"""MLflow model registry: a trained model round-trips (same outputs, nothing unpickled); aliases move.

Real MLflow on a sqlite store in a temp dir; no Ray here.
"""

from __future__ import annotations

import sys
from contextvars import ContextVar
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import torch

from rnnstream.data_dir import DataDir
from rnnstream.rnn_core.config import ModelConfig
from rnnstream.rnn_core.evaluation import replay
from rnnstream.rnn_core.event_schema import EventSchema
from rnnstream.rnn_core.model import StreamingModel
from rnnstream.rnn_core.training import fit, sequences_from_table
from rnnstream.workers import model_registry, tracking

SCHEMA = EventSchema(
    pipeline="toyreg",
    version=3,
    numeric=("amount",),
    vectors=(("emb", 2),),
    categorical=(("kind", ("a", "b", "c")),),
    has_label=True,
)

# Every unpickling of a class or function goes through pickle's find_class, which raises this audit event.
_watching: ContextVar[list[str] | None] = ContextVar("watching_pickle", default=None)


def _audit(event: str, args: tuple) -> None:
    seen = _watching.get()
    if seen is not None and event == "pickle.find_class":
        seen.append(f"{args[0]}.{args[1]}")


sys.addaudithook(_audit)


def toy_events(n_keys: int = 12, per_key: int = 30, seed: int = 0) -> pa.Table:
    rng = np.random.default_rng(seed)
    n = n_keys * per_key
    key_idx = np.tile(np.arange(n_keys), per_key)
    step = np.repeat(np.arange(per_key), n_keys)
    amount = rng.lognormal(3.0, 1.0, n)
    label = (amount > np.exp(4.0)).astype(np.int64)
    emb = rng.normal(size=(n, 2)).astype(np.float32)
    kinds = np.array(["a", "b", "c", "zzz"])[rng.integers(0, 4, n)]
    cols = [
        pa.array([f"k{i:02d}" for i in key_idx]),
        pa.array(1_767_225_600_000 + step * 60_000 + key_idx * 7, type=pa.timestamp("ms")),
        pa.array(amount),
        pa.FixedSizeListArray.from_arrays(pa.array(emb.reshape(-1)), 2),
        pa.array(kinds),
        pa.array(label),
    ]
    return pa.Table.from_arrays(cols, schema=SCHEMA.arrow_schema())


def trained_model(table: pa.Table, seed: int = 0, hidden: int = 8) -> StreamingModel:
    config = ModelConfig(features=SCHEMA.feature_spec(), cell="gru", head="binary", hidden_size=hidden)
    model = StreamingModel(config)
    fit(model, sequences_from_table(table, config.features, "label"), epochs=1, seed=seed, patience=None)
    return model.eval()


def log_version(
    store: tracking.TrackingStore, model: StreamingModel, metrics: dict[str, float] | None = None
) -> model_registry.LoggedVersion:
    with tracking.training_run(store, SCHEMA.pipeline, "test-run"):
        import mlflow

        mlflow.log_params({"model.hidden_size": model.config.hidden_size, "train.epochs": 1})
        if metrics:
            mlflow.log_metrics(metrics)
        return model_registry.log_model_version(model, SCHEMA, extra_meta={"data.start": "2026-01-01"})


@pytest.fixture
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tracking.TrackingStore:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return tracking.resolve_store(DataDir(tmp_path / "data"))


def test_model_round_trips_through_registry_without_unpickling(store: tracking.TrackingStore) -> None:
    table = toy_events()
    model = trained_model(table)
    logged = log_version(store, model)
    assert logged.name == "rnnstream-toyreg" and logged.version == "1"
    model_registry.promote(store, SCHEMA.pipeline, logged.version)

    seen: list[str] = []
    token = _watching.set(seen)
    try:
        loaded, version = model_registry.load_model_version("models:/rnnstream-toyreg@champion", store=store)
        by_name, _ = model_registry.load_model_version("toyreg", store=store)
    finally:
        _watching.reset(token)
    assert seen == [], f"loading unpickled {seen}"
    assert version == "1"
    expected = replay(model, table)
    np.testing.assert_allclose(replay(loaded, table), expected, atol=1e-6)
    np.testing.assert_allclose(replay(by_name, table), expected, atol=1e-6)
    for name, tensor in model.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[name], tensor)

    info = model_registry.load_version("models:/rnnstream-toyreg/1", store=store)
    assert info.event_schema == SCHEMA and info.meta["event_schema_version"] == 3
    assert info.meta["output_names"] == ["score"]

    # The MLflow pyfunc face (models from code + safetensors) gives the same streaming outputs.
    import mlflow

    model_info = mlflow.models.get_model_info(logged.model_uri)
    assert model_info.metadata["rnnstream_event_schema_version"] == 3
    assert model_info.signature.inputs.input_names()[:3] == ["key", "time", "amount"]
    assert model_info.signature.outputs.input_names() == ["score"]

    token = _watching.set(seen)
    try:
        pyfunc = mlflow.pyfunc.load_model(logged.model_uri)
    finally:
        _watching.reset(token)
    assert seen == [], f"pyfunc loading unpickled {seen}"
    frame = table.to_pandas()
    frame["emb"] = frame["emb"].map(list)
    out = pyfunc.predict(frame)
    np.testing.assert_allclose(out["score"].to_numpy(), expected[:, 0], atol=1e-5)


def test_local_folder_loads_with_a_local_version(tmp_path: Path) -> None:
    from rnnstream.rnn_core.serialization import save_model

    model = trained_model(toy_events(n_keys=4, per_key=10))
    save_model(model, tmp_path / "m")
    loaded, version = model_registry.load_model_version(tmp_path / "m")
    name, digest = version.split("@")
    assert name == "local:m" and len(digest) == 16
    assert loaded.output_names() == model.output_names()
    # the identity is the content: the same model elsewhere has the same version, a retrained one another
    save_model(model, tmp_path / "elsewhere" / "m")
    assert model_registry.load_model_version(tmp_path / "elsewhere" / "m")[1] == version
    with torch.no_grad():
        next(model.parameters()).add_(0.01)
    save_model(model, tmp_path / "m")
    assert model_registry.load_model_version(tmp_path / "m")[1] not in (version, "local:m")


def test_promote_and_rollback_move_the_alias(store: tracking.TrackingStore) -> None:
    table = toy_events(n_keys=4, per_key=10)
    v1 = log_version(store, trained_model(table, seed=1)).version
    v2 = log_version(store, trained_model(table, seed=2)).version
    p = SCHEMA.pipeline
    with pytest.raises(model_registry.RegistryError, match="no alias @champion"):
        model_registry.load_model_version(p, store=store)
    assert model_registry.promote(store, p, v1) is None
    assert model_registry.promote(store, p, v2) == v1
    assert model_registry.alias_version(store, p) == v2
    listed = {v.version: v.aliases for v in model_registry.list_versions(store, p)}
    assert listed == {v1: (), v2: ("champion",)}
    assert model_registry.rollback(store, p) == (v2, v1)
    assert model_registry.alias_version(store, p) == v1
    assert model_registry.load_model_version(p, store=store)[1] == v1
    with pytest.raises(model_registry.RegistryError, match="no earlier version"):
        model_registry.rollback(store, p)
    model_registry.promote(store, p, v2, alias="challenger")
    assert model_registry.alias_version(store, p, "challenger") == v2
    assert model_registry.alias_version(store, p) == v1
    with pytest.raises(model_registry.RegistryError, match="version 9"):
        model_registry.promote(store, p, "9")

    # Live (shadow) metrics and the swap land on the version's run and tags.
    model_registry.log_version_metrics(store, p, v2, {"pr_auc": 0.5}, step=3)
    run_id = store.client().get_model_version("rnnstream-toyreg", v2).run_id
    assert store.client().get_run(run_id).data.metrics["live.pr_auc"] == 0.5
    model_registry.record_swap(store, p, v1, v2, {"offsets": {"0": 120}})
    tag = store.client().get_model_version("rnnstream-toyreg", v2).tags["rnnstream.swapped_in"]
    assert '"from": "1"' in tag and '"0": 120' in tag
