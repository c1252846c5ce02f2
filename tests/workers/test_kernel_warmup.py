"""The background kernel warm-up of a starting worker loads every compiled loop that restoring a partition's
checkpoint and scoring with a GRU model (with and without the time delta) then call: afterwards no compiled
function gains a signature (none is loaded or compiled on the restart path any more)."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pyarrow as pa
import torch

from rnnstream.rnn_core.state_store import KeyedStateStore

CODE = """
import json, sys
import numpy as np, pyarrow as pa
from numba.core.registry import CPUDispatcher
from rnnstream.workers.kernel_warmup import warm_kernels
from rnnstream.rnn_core.config import FeatureSpec, ModelConfig
from rnnstream.rnn_core.model import StreamingModel
from rnnstream.rnn_core.state_store import KeyedStateStore
from rnnstream.rnn_core.stream_scorer import StreamScorer
from rnnstream.workers.scoring_partition import load_kernels_once

def loaded():
    out = {}
    for name, mod in list(sys.modules.items()):
        if name.startswith("rnnstream.rnn_core."):
            for attr, obj in vars(mod).items():
                if isinstance(obj, CPUDispatcher):
                    out[f"{name}.{attr}"] = sorted(str(s) for s in obj.signatures)
    return out

warm_kernels()
before = loaded()
model = StreamingModel(ModelConfig(features=FeatureSpec(numeric=("a", "b")), hidden_size=16)).eval()
load_kernels_once(model)
store = KeyedStateStore(tuple(model.state_shape))
store.restore(sys.argv[1])
scorer = StreamScorer(model, store)
keys = pa.array(["k1", "new", "k1", "k2"])
scorer.score(keys, np.array([5, 6, 7, 8], np.int64), np.ones((4, scorer.input_size), np.float32))
# a model with the time delta is stepped chunk by chunk (the one above: a whole batch in one call)
spec = FeatureSpec(numeric=("a", "b"), use_time_delta=True)
timed = StreamScorer(StreamingModel(ModelConfig(features=spec, hidden_size=16)).eval())
timed.score(keys, np.array([5, 6, 7, 8], np.int64), np.ones((4, timed.input_size), np.float32))
after = loaded()
gained = {k: sorted(set(v) - set(before.get(k, []))) for k, v in after.items()}
report = {"gained": {k: v for k, v in gained.items() if v}, "warmed": sum(map(len, before.values()))}
print(json.dumps(report))
"""


def test_warmup_leaves_nothing_to_load_on_the_restart_path(tmp_path):
    store = KeyedStateStore((1, 1, 16), hash_seed=0)
    slots = store.lookup(pa.array([f"k{i}" for i in range(100)]))
    states = torch.from_numpy(np.random.default_rng(0).standard_normal((100, 1, 1, 16), dtype=np.float32))
    store.scatter_slots(slots, states, np.arange(100))
    path = str(tmp_path / "ckpt.arrow")
    store.snapshot(None, path)
    run = subprocess.run([sys.executable, "-c", CODE, path], capture_output=True, text=True, check=True)
    report = json.loads(run.stdout.strip().splitlines()[-1])
    assert report["warmed"] >= 5  # the store's and the scorer's loops were loaded by the warm-up
    assert report["gained"] == {}, report["gained"]


def test_warmup_leaves_the_random_state_as_it_was():
    from rnnstream.workers.kernel_warmup import warm_kernels

    torch.manual_seed(5)
    expected = torch.rand(4)
    torch.manual_seed(5)
    warm_kernels()
    assert torch.equal(torch.rand(4), expected)
