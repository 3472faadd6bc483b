"""fedsynth.audit: central privacy, fidelity and utility audit of a generator, and its release gate.

The auditor never needs a site's raw rows. It works from (1) canary records with known membership
that it hands to the sites, (2) an operator-provided reference (holdout) table, and (3) aggregates
returned by per-site audit jobs (:mod:`fedsynth.audit.site_stats`).
"""

from fedsynth.audit.gate import CheckResult, GateConfig, GateResult, evaluate_gate
from fedsynth.audit.index import (
    FaissFlatL2Index,
    NearestNeighborIndex,
    NumpyExactIndex,
    TorchExactIndex,
    make_index,
)

__all__ = [
    "CheckResult",
    "FaissFlatL2Index",
    "GateConfig",
    "GateResult",
    "NearestNeighborIndex",
    "NumpyExactIndex",
    "TorchExactIndex",
    "evaluate_gate",
    "make_index",
]
