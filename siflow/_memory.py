"""Memory available to a new allocation, and byte counts for messages (one home for both)."""

from __future__ import annotations

import contextlib
import os

__all__ = ["available_memory", "format_bytes"]


def available_memory() -> int | None:
    """Bytes the system can give a new allocation (Linux ``MemAvailable``), None if unknown."""
    with contextlib.suppress(OSError, ValueError, IndexError):
        with open("/proc/meminfo", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    with contextlib.suppress(AttributeError, ValueError, OSError):  # non-Linux POSIX
        return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    return None  # pragma: no cover - neither source


def format_bytes(n: float) -> str:
    """``n`` bytes in decimal units for a message: ``"512 B"``, ``"1.5 kB"``, ``"3.2 GB"``."""
    for unit, scale in (("PB", 1e15), ("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.3g} {unit}"
    return f"{n:.0f} B"
