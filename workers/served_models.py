"""ServedModels: the champion a scoring worker serves and the challenger of a hot swap, on its partitions.

A hot swap in three calls, each run on the worker's loop thread at a commit boundary:
:meth:`ServedModels.prepare` attaches a challenger that scores the same events with its own states (warmed
from the archive when one is configured; shadow scores into ``<pipeline>.scores.shadow`` when asked),
:meth:`ServedModels.switch` makes it the champion and checkpoints its states there, :meth:`ServedModels.drop`
detaches it (a failed swap, or a challenger that raised on some partition). Every model is checked on load:
a model reading features the pipeline's events do not carry is refused in one line.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict
from typing import Any

from rnnstream.workers.archive_warmup import ArchiveWarmup
from rnnstream.workers.owned_partitions import OwnedPartitions
from rnnstream.workers.scoring_partition import LoadedModel, feature_mismatch
from rnnstream.workers.worker_config import ModelHandle, WorkerConfig


class ModelIncompatible(ValueError):
    """The model reads features the pipeline's events do not carry (one line says which)."""


class ServedModels:
    """Champion, challenger and the swap's bookkeeping of one worker."""

    def __init__(self, config: WorkerConfig, load_model: Callable[[str], Any]) -> None:
        self.config = config
        self._load_model = load_model
        self.champion: LoadedModel | None = None
        self.challenger: LoadedModel | None = None
        self.shadow_emit = False
        self.challenger_events = 0
        self.challenger_warmup = ArchiveWarmup()

    def load(self, handle: ModelHandle) -> LoadedModel:
        """Load ``handle`` and check that the pipeline's events carry every feature it reads."""
        run = LoadedModel.of(handle, self._load_model(handle.locator))
        problem = feature_mismatch(run.model.config.features, self.config.schema)
        if problem:
            raise ModelIncompatible(f"model {handle.version} cannot serve {self.config.pipeline}: {problem}")
        return run

    def ensure_champion(self, handle: ModelHandle, parts: OwnedPartitions) -> None:
        """Serve ``handle`` (only while nothing is owned: a model change with partitions is a hot swap)."""
        if self.champion is not None and self.champion.handle == handle:
            return
        if parts:
            raise RuntimeError("release all partitions before changing the model without a hot swap")
        self.champion = self.load(handle)

    def prepare(self, challenger: LoadedModel, shadow: bool, parts: OwnedPartitions) -> dict[int, int]:
        """Attach a loaded ``challenger`` to every partition; returns each one's warm-up start offset."""
        cfg = self.config
        # the count is reset before the new challenger shows in the status (read from other threads without
        # a lock): a status never pairs the new version with the events the previous challenger scored
        self.challenger_events = 0
        self.shadow_emit = shadow
        self.challenger_warmup = ArchiveWarmup()
        self.challenger = challenger
        for part in parts.values():
            part.attach_challenger(challenger)
            if cfg.warmup_archive_uri:
                self.challenger_warmup += part.warm_challenger_from_archive(
                    cfg.warmup_archive_uri, cfg.pipeline, cfg.warmup_archive_events
                )
        return {p: part.offsets.next_offset for p, part in parts.items()}

    def switch(self, parts: OwnedPartitions) -> dict[str, Any]:
        """The challenger becomes champion on every partition, each checkpointed at this boundary. Returns
        the switch offsets and how many of the champion's keys the challenger had states of
        (``keys_warmed``) or not (``keys_cold``: they start empty under the new model)."""
        if self.challenger is None:
            raise RuntimeError("no challenger prepared")
        self.champion, self.challenger = self.challenger, None
        self.shadow_emit = False
        offsets, warmed, cold = {}, 0, 0
        for p in sorted(parts):
            part = parts[p]
            served, learned = part.key_counts()
            warmed += learned
            cold += max(0, served - learned)
            part.promote_challenger()
            parts.checkpoint(part)
            offsets[p] = part.offsets.next_offset
        warmup = asdict(self.challenger_warmup)
        return {"offsets": offsets, "keys_warmed": warmed, "keys_cold": cold, **warmup}

    def drop(self, parts: OwnedPartitions) -> None:
        self.challenger = None
        self.shadow_emit = False
        self.challenger_events = 0
        for part in parts.values():
            part.drop_challenger()

    def status(self) -> dict[str, Any]:
        return {
            "model_version": self.champion.version if self.champion else None,
            "challenger_version": self.challenger.version if self.challenger else None,
            "challenger_events": self.challenger_events,
        }
