"""Load the compiled kernels of the state store and the scorer in the background as a worker process starts.

numba loads a compiled loop from its on-disk cache on the loop's first call, and its first use in a process
also sets numba itself up (its numpy support pulls in SciPy's BLAS bindings): over a second of wall time on a
busy machine. A restarted worker's first call was the restore of its partitions' checkpoints, so all of it
landed between the coordinator's ``set_partitions`` and the first scored batch. Started from the actor's
constructor, this thread does it while the worker connects to Kafka and waits for its partitions.

It scores a few events through a throwaway store and a tiny GRU model (the kernels' compiled signatures
depend on array types, not sizes), snapshots and restores that store and forgets its keys. Nothing of the
real partitions is touched; the compiler lock makes a real first call wait for a load in progress instead of
repeating it. A failure here only costs the time it would have saved, so it is logged, never raised.
"""

from __future__ import annotations

import logging
import threading

import numpy as np
import pyarrow as pa

log = logging.getLogger(__name__)


def warm_kernels() -> None:
    """Run the store's and a GRU scorer's compiled loops once on throwaway objects."""
    import torch

    from rnnstream.rnn_core.config import FeatureSpec, ModelConfig
    from rnnstream.rnn_core.model import StreamingModel
    from rnnstream.rnn_core.state_store import KeyedStateStore
    from rnnstream.rnn_core.stream_scorer import StreamScorer

    # without a time delta the scorer steps a whole batch in one call, with one chunk by chunk: load both
    with torch.random.fork_rng(devices=[]):  # the process's random state is left as it was
        torch.manual_seed(0)
        specs = [FeatureSpec(numeric=("x",), use_time_delta=dt) for dt in (False, True)]
        models = [StreamingModel(ModelConfig(features=spec, hidden_size=4)).eval() for spec in specs]
    keys = pa.array(["a", "b", "a"])
    for model in models:
        scorer = StreamScorer(model, KeyedStateStore(tuple(model.state_shape), capacity=4, hash_seed=0))
        scorer.score(keys, np.array([0, 1, 2], np.int64), np.zeros((3, scorer.input_size), np.float32))
    store = scorer.store
    restored = KeyedStateStore(tuple(model.state_shape), capacity=4, hash_seed=1)
    restored.restore_table(store.snapshot_table(None))
    store.clear()
    restored.clear()


def _warm_logged() -> None:
    try:
        warm_kernels()
    except Exception:  # an optimisation only: the first real call loads what is missing
        log.warning("loading the compiled kernels in the background failed", exc_info=True)


def start_kernel_warmup() -> threading.Thread:
    """:func:`warm_kernels` on a daemon thread, started now."""
    thread = threading.Thread(target=_warm_logged, name="rnnstream-kernel-warmup", daemon=True)
    thread.start()
    return thread
