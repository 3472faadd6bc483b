"""Per-process warm state of a site: its validated, encoded table and the RDP terms of its rounds.

A site trains on the same table round after round. Validating it against the schema and encoding it costs
0.2-0.4 s per round on the bench table (reading the CSV is ~0.02 s of that), and the accountant's RDP term of a
new ``(sigma, q)`` pair another 0.1-0.2 s. Both are kept for the life of the process:

* :func:`encoded_table` returns the encoded rows of ``(path, schema)``. Every call hashes the file (SHA-256 of
  its bytes, ~1 ms per MB) and reuses the rows only when size, mtime and hash are what they were when the table
  was last validated with that schema; otherwise it reads and validates again. The site therefore always trains
  on rows that passed validation against the schema of the round, from the file as it is now.
* The RDP terms are cached by :func:`fedsynth.common.training.warm_rdp` (one per ``(q, sigma)``).

A ClientApp forked by the warm executor (:mod:`fedsynth.cli.executor`) loses what it computed when it exits.
:func:`train_round <fedsynth.client.site.train_round>` therefore records a :class:`WarmHint` (table path,
schema, the ``(q, sigma)`` pairs of the ledger); the child hands it to the executor, which calls :func:`warm`
in the parent, and the next children start from the parent's memory with both caches filled. Nothing is
written to disk: the encoded rows live only in the site's own processes.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fedsynth.common.encoding import TabularTransform
from fedsynth.common.schema import Schema
from fedsynth.common.validation import load_table

__all__ = ["WarmHint", "encoded_table", "record_hint", "take_hints", "warm", "clear"]

#: Tables kept per process (least recently used ones are dropped).
MAX_TABLES = 4

_FileIdentity = tuple[int, int, str]  # size, mtime_ns, sha256


@dataclass(frozen=True)
class _Entry:
    identity: _FileIdentity
    rows: np.ndarray


_tables: OrderedDict[tuple[str, str], _Entry] = OrderedDict()
_hints: OrderedDict[str, WarmHint] = OrderedDict()  # latest hint per (table, schema), at most MAX_TABLES


@dataclass(frozen=True)
class WarmHint:
    """What a finished round lets a parent process prepare for the next one (no rows, no weights).

    Args:
        data_path: the site table the round trained on.
        schema: the round's schema (``Schema.to_dict()``).
        rdp_terms: ``(sample_rate, noise_multiplier)`` pairs whose RDP the next round will need (rdp accountant).
    """

    data_path: str
    schema: dict[str, Any]
    rdp_terms: tuple[tuple[float, float], ...] = ()

    def to_json(self) -> str:
        """One-line JSON form."""
        return json.dumps({"data_path": self.data_path, "schema": self.schema,
                           "rdp_terms": [list(t) for t in self.rdp_terms]}, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> WarmHint:
        """Inverse of :meth:`to_json`.

        Raises:
            ValueError: not a hint.
        """
        try:
            raw = json.loads(text)
            return cls(data_path=str(raw["data_path"]), schema=dict(raw["schema"]),
                       rdp_terms=tuple((float(q), float(s)) for q, s in raw["rdp_terms"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"not a warm hint: {text[:80]!r}") from exc


def _schema_key(schema: Schema) -> str:
    return hashlib.sha256(json.dumps(schema.to_dict(), sort_keys=True).encode()).hexdigest()


def _identity(path: Path) -> _FileIdentity:
    stat = path.stat()
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return stat.st_size, stat.st_mtime_ns, digest.hexdigest()


def encoded_table(path: str | os.PathLike[str], schema: Schema) -> np.ndarray:
    """The site table at ``path``, validated against ``schema`` and encoded (``float32``, one row per record).

    Returns a fresh copy each call; the cached rows are reused only while the file is byte-for-byte the one that
    was validated (size, mtime and SHA-256 are checked on every call).

    Raises:
        DataValidationError: the file is missing or unreadable, or breaks the schema (see
            :func:`~fedsynth.common.validation.load_table`).
    """
    p = Path(path)
    key = (str(p.resolve()), _schema_key(schema))
    try:
        before = _identity(p)
    except OSError:
        before = None  # load_table names the problem
    entry = _tables.get(key)
    if entry is not None and before is not None and entry.identity == before:
        _tables.move_to_end(key)
        return entry.rows.copy()
    rows = np.ascontiguousarray(TabularTransform(schema).transform(load_table(p, schema)), dtype=np.float32)
    if before is not None and _identity(p) == before:  # unchanged while it was read: safe to reuse
        _tables[key] = _Entry(before, rows.copy())
        _tables.move_to_end(key)
        while len(_tables) > MAX_TABLES:
            _tables.popitem(last=False)
    return rows


def record_hint(hint: WarmHint) -> None:
    """Remember ``hint`` for :func:`take_hints` (called once per trained round; replaces an earlier hint for the
    same table and schema, so a long-lived process keeps at most :data:`MAX_TABLES`)."""
    key = json.dumps([hint.data_path, hint.schema], sort_keys=True)
    _hints.pop(key, None)
    _hints[key] = hint
    while len(_hints) > MAX_TABLES:
        _hints.popitem(last=False)


def take_hints() -> list[WarmHint]:
    """Return and forget the hints recorded in this process."""
    out = list(_hints.values())
    _hints.clear()
    return out


def warm(hints: Iterable[WarmHint]) -> None:
    """Fill this process' caches for ``hints``: validate and encode the tables, compute the RDP terms.

    Runs no torch operation (a forking parent must not start torch's thread pools). A table that fails
    validation is not cached; the round that reads it reports the problem.
    """
    from fedsynth.common.errors import FedsynthError
    from fedsynth.common.training import warm_rdp

    for hint in hints:
        for sample_rate, noise_multiplier in hint.rdp_terms:
            warm_rdp(sample_rate=sample_rate, noise_multiplier=noise_multiplier)
        try:
            encoded_table(hint.data_path, Schema.from_dict(hint.schema))
        except FedsynthError:
            continue


def clear() -> None:
    """Drop the cached tables and the recorded hints."""
    _tables.clear()
    _hints.clear()
