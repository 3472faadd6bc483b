"""Canary records: in-domain, out-of-distribution rows with known membership, inserted at sites.

The auditor makes canaries from the public schema, keeps ``membership.json`` to itself and sends
only ``insert.csv`` (the member half) to the participating sites, which add those rows to their
training data. After training, a canary that the generator memorised sits unusually close to (or in
a dense region of) the synthetic sample; comparing members with the held-out half is a
membership-inference test whose ground truth the auditor knows without ever seeing a site's own
rows.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from fedsynth.audit.distance import dcr
from fedsynth.audit.index import Backend
from fedsynth.audit.mia import MiaResult, evaluate_attack
from fedsynth.common.encoding import TabularTransform
from fedsynth.common.io import atomic_write_json, atomic_write_text, read_json
from fedsynth.common.schema import Schema

ID_COLUMN = "canary_id"
CANARIES_FILE = "canaries.csv"
MEMBERSHIP_FILE = "membership.json"
INSERT_FILE = "insert.csv"


@dataclass(frozen=True)
class CanarySet:
    """Canary rows with their secret membership.

    Args:
        records: canary rows in the schema's columns (plus nothing else), index = canary id.
        member: ``member[i]`` is True when row ``i`` is to be inserted into the sites' training
            data.
        seed: the seed that made the set.
    """

    records: pd.DataFrame
    member: tuple[bool, ...]
    seed: int

    def __post_init__(self) -> None:
        if len(self.records) != len(self.member):
            raise ValueError(
                f"{len(self.records)} canaries but {len(self.member)} membership flags"
            )

    @property
    def members(self) -> pd.DataFrame:
        """The rows the sites must insert."""
        return self.records[np.asarray(self.member, dtype=bool)]

    @property
    def labels(self) -> np.ndarray:
        """Membership as a 0/1 array."""
        return np.asarray(self.member, dtype=int)

    def members_for_site(self, site: int, n_sites: int) -> pd.DataFrame:
        """Round-robin share of the member canaries for site ``site`` of ``n_sites``."""
        m = self.members
        return m.iloc[site::n_sites]

    def save(self, directory: str | os.PathLike[str]) -> Path:
        """Write ``canaries.csv`` + ``membership.json`` (auditor-private) and ``insert.csv`` (for
        sites)."""
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out / CANARIES_FILE, self.records.to_csv(index_label=ID_COLUMN))
        atomic_write_text(out / INSERT_FILE, self.members.to_csv(index=False))
        atomic_write_json(
            out / MEMBERSHIP_FILE,
            {
                "seed": self.seed,
                "member": {
                    str(i): bool(m) for i, m in zip(self.records.index, self.member, strict=True)
                },
            },
        )
        return out

    @classmethod
    def load(cls, directory: str | os.PathLike[str]) -> CanarySet:
        """Read a set written by :meth:`save`."""
        d = Path(directory)
        records = pd.read_csv(d / CANARIES_FILE, index_col=ID_COLUMN)
        meta = read_json(d / MEMBERSHIP_FILE, what="canary membership")
        member = tuple(bool(meta["member"][str(i)]) for i in records.index)
        return cls(records=records, member=member, seed=int(meta["seed"]))


def _random_rows(schema: Schema, n: int, rng: np.random.Generator) -> pd.DataFrame:
    data: dict[str, object] = {}
    for col in schema.columns:
        if col.kind == "numeric":
            assert col.lower is not None and col.upper is not None
            v = rng.uniform(col.lower, col.upper, n)
            data[col.name] = (
                np.clip(np.round(v), np.ceil(col.lower), np.floor(col.upper)).astype(np.int64)
                if col.integer
                else v
            )
        else:
            cats = list(col.categories)
            data[col.name] = pd.Series(
                [cats[i] for i in rng.integers(0, len(cats), n)], dtype=object
            )
    return pd.DataFrame(data, columns=list(schema.names))


def make_canaries(
    schema: Schema,
    *,
    n: int = 100,
    reference: pd.DataFrame | None = None,
    oversample: int = 20,
    seed: int = 0,
    backend: Backend = "auto",
) -> CanarySet:
    """Draw ``n`` in-domain canaries, far from the reference data, half members and half not.

    Candidates are drawn uniformly over the declared domain; when a reference table is given, the
    ``n`` candidates farthest (in encoded space) from every reference row are kept, so that canaries
    do not collide with real patients and a generator reproduces them only by memorising them.

    Args:
        schema: the public schema.
        n: number of canaries (even; half become members).
        reference: optional table of real rows the canaries should stay away from.
        oversample: candidates drawn per kept canary.
        seed: random seed (drawing and the member split).
        backend: nearest-neighbour backend.

    Returns:
        The canary set.
    """
    if n < 2 or n % 2:
        raise ValueError(f"n must be an even number >= 2, got {n}")
    rng = np.random.default_rng(seed)
    cand = _random_rows(schema, n * oversample if reference is not None else n, rng)
    if reference is not None and len(reference):
        t = TabularTransform(schema)
        d = dcr(t.transform(cand), t.transform(reference[list(schema.names)]), backend=backend)
        cand = cand.iloc[np.argsort(-d)[:n]]
    cand = cand.reset_index(drop=True)
    cand.index = pd.Index([f"canary-{i:04d}" for i in range(n)], name=ID_COLUMN)
    member = np.zeros(n, dtype=bool)
    member[rng.permutation(n)[: n // 2]] = True
    return CanarySet(records=cand, member=tuple(bool(m) for m in member), seed=seed)


def canary_scores(
    canaries: CanarySet,
    synthetic: np.ndarray,
    transform: TabularTransform,
    *,
    backend: Backend = "auto",
) -> np.ndarray:
    """Distance attack score of each canary: minus its distance to the closest synthetic row."""
    enc = transform.transform(canaries.records[list(transform.schema.names)])
    return -dcr(enc, synthetic, backend=backend)


def canary_test(
    canaries: CanarySet,
    synthetic: np.ndarray,
    transform: TabularTransform,
    *,
    delta: float = 0.0,
    backend: Backend = "auto",
    seed: int = 0,
) -> MiaResult:
    """Membership test on canaries: can the synthetic sample tell inserted from held-out canaries?

    Args:
        canaries: the canary set used in training.
        synthetic: encoded synthetic sample, shape ``(n, F)``.
        transform: the schema's transform.
        delta: delta for the empirical epsilon bound.
        backend: nearest-neighbour backend.
        seed: bootstrap seed.
    """
    scores = canary_scores(canaries, synthetic, transform, backend=backend)
    return evaluate_attack("canary", scores, canaries.labels, delta=delta, seed=seed)
