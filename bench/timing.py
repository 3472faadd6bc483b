"""Timing helpers: interleaved repeats (robust to a loaded machine) and the result row type."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class Figure:
    """One line of the bench table.

    Args:
        section: ``train``, ``sample``, ``audit`` or ``flower``.
        name: what was measured.
        value: the measured figure.
        unit: its unit (``rows/s``, ``s``).
        ratio: ``value`` against the section's baseline measured in the same run (``None`` for baselines).
        baseline: the name of that baseline.
        goal: the issue's goal for this figure, in words.
        note: how the figure was obtained (projection, sizes).
    """

    section: str
    name: str
    value: float
    unit: str
    ratio: float | None = None
    baseline: str = ""
    goal: str = ""
    note: str = ""


def interleaved(fns: Mapping[str, Callable[[], float]], *, repeats: int, warmup: int = 1) -> dict[str, float]:
    """Run every ``fn`` once per round, ``repeats`` rounds, and return each one's median.

    Each ``fn`` returns its own figure (e.g. seconds or rows/s). Interleaving means a burst of load from
    other processes hits all candidates alike, so ratios stay meaningful on a shared machine.
    """
    for _ in range(warmup):  # lazy imports, allocator and oneDNN primitive caches
        for fn in fns.values():
            fn()
    runs: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            runs[name].append(fn())
    return {k: statistics.median(v) for k, v in runs.items()}


def seconds(fn: Callable[[], object]) -> float:
    """Wall seconds of one call."""
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start
