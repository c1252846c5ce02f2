"""Loading the model a :class:`ModelHandle` locator names, as a worker does: a folder written by
``save_model`` or a registry version ``models:/name/<version>`` (MLflow is imported only then: it is slow to
import and a worker loading a local folder should not pay for it). Kept apart from :mod:`serving` (which
starts coordinators) so that a worker loads models without importing the control plane above it."""

from __future__ import annotations

from typing import Any

MODELS_URI = "models:/"


def load_model(locator: str) -> Any:
    """Load the model a locator names (a folder, or ``models:/name/<version>``), in eval mode, no pickles."""
    if locator.startswith(MODELS_URI):
        from rnnstream.workers.model_registry import load_model_version

        model, _ = load_model_version(locator)
        return model
    from rnnstream.rnn_core.serialization import load_model as load_folder
    from rnnstream.rnn_core.serialization import model_folder

    model = load_folder(model_folder(locator))
    model.eval()
    return model
