"""Parse Kubernetes resource quantities (the subset storage sizes use)."""

from __future__ import annotations

import re
from decimal import Decimal

_SUFFIXES = {
    "": 1,
    "k": 10**3,
    "M": 10**6,
    "G": 10**9,
    "T": 10**12,
    "P": 10**15,
    "E": 10**18,
    "Ki": 2**10,
    "Mi": 2**20,
    "Gi": 2**30,
    "Ti": 2**40,
    "Pi": 2**50,
    "Ei": 2**60,
}
_PATTERN = re.compile(r"^([+]?[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(Ki|Mi|Gi|Ti|Pi|Ei|k|M|G|T|P|E|)$")


def to_bytes(quantity: str) -> int:
    """``"150Gi"`` -> 161061273600. Raises ValueError for anything else."""
    match = _PATTERN.match(quantity.strip())
    if not match:
        raise ValueError(f"not a storage quantity: {quantity!r}")
    number, suffix = match.groups()
    return int(Decimal(number) * _SUFFIXES[suffix])
