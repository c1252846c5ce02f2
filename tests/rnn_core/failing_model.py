"""A real model that raises on one input value (holds no tests): stands for a model that breaks on some event.

Its step raises when any input equals :data:`POISON`; otherwise it is the wrapped model, unchanged. The
streaming scorer, the partition's poison isolation and the chaos tests use it.
"""

from __future__ import annotations

from typing import Any

import torch

POISON = 1234.5


class FailingStep(torch.nn.Module):
    """``model`` whose step raises ``RuntimeError("poison row")`` on an input row holding :data:`POISON`."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.inner = model
        self.config = model.config

    @property
    def state_shape(self) -> tuple[int, int, int]:
        return tuple(self.inner.state_shape)

    def output_names(self) -> list[str]:
        return self.inner.output_names()

    def step(self, x: torch.Tensor, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if bool((x == POISON).any()):
            raise RuntimeError("poison row")
        return self.inner.step(x, state)


def load_failing(locator: str) -> Any:
    """A worker's model loader: the saved model at ``locator``, wrapped in :class:`FailingStep`."""
    from rnnstream.workers.serving import load_model

    return FailingStep(load_model(locator))
