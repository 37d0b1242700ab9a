"""Embedding vectors as both API families return them: optionally shortened, unit length."""

from __future__ import annotations

import math


def unit_vector(vector: list[float], dimensions: int | None = None) -> list[float]:
    """The first ``dimensions`` values (all when unset), scaled to length 1 again, so a
    shortened embedding still compares by dot product as the full one does."""
    if dimensions:
        vector = vector[:dimensions]
    norm = math.sqrt(sum(x * x for x in vector)) or 1.0
    return [x / norm for x in vector]
