"""Kubernetes resource quantities, as much of them as environment variables need."""

from __future__ import annotations

import math
from decimal import Decimal

_SUFFIX: dict[str, int | Decimal] = {
    "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60,
    "n": Decimal("1e-9"), "u": Decimal("1e-6"), "m": Decimal("1e-3"),
    "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "P": 10**15, "E": 10**18,
}  # fmt: skip


def parse(q: str) -> Decimal:
    """Parse a quantity such as '500m', '2Gi' or '1e3'."""
    for suffix in sorted(_SUFFIX, key=len, reverse=True):
        if q.endswith(suffix):
            return Decimal(q[: -len(suffix)]) * Decimal(_SUFFIX[suffix])
    return Decimal(q)


def divide_up(q: str, divisor: str | None) -> str:
    """The quantity over the divisor, rounded up, as the kubelet writes resourceFieldRef."""
    return str(math.ceil(parse(q) / parse(divisor or "1")))
