"""dslth-edge: personalized structured-sparse models for edge fleets, learned as masks."""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
