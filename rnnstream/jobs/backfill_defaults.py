"""Backfill's batching defaults, in a module without torch, so that ``rnnstream backfill --help`` is fast."""

DEFAULT_BATCH_EVENTS = 4096  # events per StreamScorer.score call: a serving-sized micro-batch
DEFAULT_WINDOW_EVENTS = 1_000_000  # consecutive days are read together up to this many events
