"""rnnstream: score event streams with recurrent models that remember each stream key."""

__version__ = "0.1.0"
