"""Byte sizes as people write them (``2GB``, ``512MiB``, ``1.5e9``) and as they read them back."""

from __future__ import annotations

import re

_UNITS = {
    "": 1, "b": 1,
    "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
    "k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40,
    "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40,
}  # fmt: skip
_SIZE = re.compile(r"^\s*(\d+(?:\.\d*)?(?:e\d+)?)\s*([a-z]*)\s*$", re.IGNORECASE)


def parse_size(raw: str | int) -> int:
    """Bytes from ``"2GB"`` (10^9), ``"2GiB"``/``"2G"`` (2^30), ``"750MB"`` or a plain number of bytes.

    Raises ``ValueError`` with the accepted forms, so argparse and pydantic both report it well.
    """
    if isinstance(raw, int):
        value, unit = float(raw), ""
    else:
        match = _SIZE.match(raw)
        if not match or match.group(2).lower() not in _UNITS:
            raise ValueError(f"not a size: {raw!r}; write bytes or e.g. 512MB, 2GB, 1.5GiB")
        value, unit = float(match.group(1)), match.group(2).lower()
    size = int(value * _UNITS[unit])
    if size < 1:
        raise ValueError(f"size must be at least 1 byte, got {raw!r}")
    return size


def format_size(n: int | None) -> str:
    """``1.5 GB``-style text (decimal units, as ``parse_size`` reads them back); ``-`` for None."""
    if n is None:
        return "-"
    for unit, factor in (("GB", 10**9), ("MB", 10**6), ("kB", 10**3)):
        if n >= factor:
            return f"{n / factor:.1f} {unit}"
    return f"{n} B"
