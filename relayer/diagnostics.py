"""Operator diagnostics for a running worker: where its memory grows.

Send the worker SIGUSR2: the first signal takes a baseline, each later one logs what grew since the baseline —
live objects by type (from the garbage collector: cheap, always available) and, when the worker was started with
PYTHONTRACEMALLOC=N, the allocation sites (N frames deep) that grew most. Nothing is traced unless
PYTHONTRACEMALLOC is set, so the probe costs nothing until it is used.
"""

from __future__ import annotations

import asyncio
import gc
import signal
import sys
import tracemalloc
from collections import Counter
from typing import Any

import structlog

_baseline: dict[str, Any] = {}


def _rss_mb() -> float:
    try:
        with open("/proc/self/status") as f:
            kb = next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
        return round(kb / 1024, 1)
    except (OSError, StopIteration):  # not Linux
        return float("nan")


def _types() -> Counter[str]:
    return Counter(type(o).__qualname__ for o in gc.get_objects())


def _dump(log: Any, top: int = 25) -> None:
    gc.collect()
    types = _types()
    snap = (tracemalloc.take_snapshot().filter_traces([tracemalloc.Filter(False, tracemalloc.__file__)])
            if tracemalloc.is_tracing() else None)
    if not _baseline:
        _baseline.update(types=types, snap=snap)
        log.warning("heap_baseline", objects=sum(types.values()), pymalloc_blocks=sys.getallocatedblocks(),
                    rss_mb=_rss_mb())
        return
    grown = Counter(types)
    grown.subtract(_baseline["types"])
    log.warning("heap_growth_by_type", objects=sum(types.values()), pymalloc_blocks=sys.getallocatedblocks(),
                rss_mb=_rss_mb(),
             grew={name: n for name, n in grown.most_common(top) if n > 0})
    if snap is not None and _baseline["snap"] is not None:
        for stat in snap.compare_to(_baseline["snap"], "traceback")[:top]:
            log.warning("heap_growth", kib=round(stat.size_diff / 1024, 1), blocks=stat.count_diff,
                     where=[f"{f.filename}:{f.lineno}" for f in stat.traceback])


def install_heap_probe(loop: asyncio.AbstractEventLoop) -> None:
    """SIGUSR2 -> the heap report above (logged at WARNING: an operator asked for it)."""
    loop.add_signal_handler(signal.SIGUSR2, _dump, structlog.get_logger("relayer.diagnostics"))
