"""Durable per-site privacy ledger: the authority on how much epsilon a site has spent, across runs and restarts.

The ledger lives at the site and is written atomically after every round. The server keeps only a copy as a
report. A site refuses a round whose projected epsilon would pass its own budget.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedsynth.common.errors import CheckpointError, PrivacyBudgetExceeded
from fedsynth.common.io import atomic_write_json, read_json
from fedsynth.common.training import epsilon_from_state, projected_epsilon

LEDGER_VERSION = 1


@dataclass(frozen=True)
class LedgerEntry:
    """One recorded training round at a site."""

    round_key: str
    epsilon_after: float
    steps: int
    noise_multiplier: float
    sample_rate: float
    loss: float
    recorded_at: float

    def to_dict(self) -> dict[str, Any]:
        """JSON-compatible dict."""
        return dict(self.__dict__)


class PrivacyLedger:
    """Epsilon/delta spent by one site, persisted as JSON at ``path``.

    Args:
        path: the ledger file (created on first use).
        budget_epsilon: the site's own epsilon budget.
        delta: the delta at which epsilon is accounted.
        site_id: a name for messages.
        accountant: Opacus accountant mechanism.

    Raises:
        CheckpointError: the file exists but is corrupt, or was written with another delta or accountant.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        budget_epsilon: float,
        delta: float,
        site_id: str = "site",
        accountant: str = "rdp",
    ) -> None:
        self.path = Path(path)
        self.budget_epsilon = float(budget_epsilon)
        self.delta = float(delta)
        self.site_id = site_id
        self.accountant = accountant
        self.accountant_state: dict[str, Any] = {"history": [], "mechanism": accountant}
        self.entries: list[LedgerEntry] = []
        self.plans: dict[str, float] = {}
        if self.path.exists():
            self._load()

    def _load(self) -> None:
        data = read_json(self.path, what="privacy ledger")
        try:
            if data["version"] != LEDGER_VERSION:
                raise CheckpointError(f"privacy ledger {self.path}: unsupported version {data['version']}")
            if abs(float(data["delta"]) - self.delta) > 1e-15:
                raise CheckpointError(
                    f"privacy ledger {self.path} accounts at delta={data['delta']}, but this run asks for "
                    f"delta={self.delta}; epsilons at different deltas cannot be added. Keep target-delta fixed."
                )
            state = data["accountant"]
            if state.get("mechanism") != self.accountant:
                raise CheckpointError(
                    f"privacy ledger {self.path} uses accountant {state.get('mechanism')!r}, not {self.accountant!r}"
                )
            self.accountant_state = {"history": [list(h) for h in state["history"]], "mechanism": self.accountant}
            self.entries = [LedgerEntry(**e) for e in data.get("rounds", [])]
            self.plans = {str(k): float(v) for k, v in data.get("plans", {}).items()}
        except (KeyError, TypeError, ValueError) as exc:
            raise CheckpointError(f"privacy ledger {self.path} is malformed: {exc!r}") from exc

    @property
    def spent_epsilon(self) -> float:
        """Cumulative epsilon spent so far at ``self.delta``."""
        return epsilon_from_state(self.accountant_state, delta=self.delta, accountant=self.accountant)

    @property
    def remaining_epsilon(self) -> float:
        """Budget left (never negative)."""
        return max(0.0, self.budget_epsilon - self.spent_epsilon)

    def get_round(self, round_key: str) -> LedgerEntry | None:
        """The entry recorded for ``round_key``, if that round was already trained."""
        for e in self.entries:
            if e.round_key == round_key:
                return e
        return None

    def projected(self, *, noise_multiplier: float, sample_rate: float, steps: int) -> float:
        """Epsilon after a further round of ``steps`` steps."""
        return projected_epsilon(
            self.accountant_state, noise_multiplier=noise_multiplier, sample_rate=sample_rate, steps=steps,
            delta=self.delta, accountant=self.accountant,
        )

    def check_can_train(self, *, noise_multiplier: float, sample_rate: float, steps: int) -> float:
        """Return the projected epsilon, or refuse when it would pass the budget.

        Raises:
            PrivacyBudgetExceeded: the round would spend more than the site's remaining budget.
        """
        eps = self.projected(noise_multiplier=noise_multiplier, sample_rate=sample_rate, steps=steps)
        if eps > self.budget_epsilon + 1e-9:
            raise PrivacyBudgetExceeded(
                f"site '{self.site_id}' refuses to train: this round would bring epsilon to {eps:.3f} "
                f"(delta={self.delta:g}), over the site's budget of {self.budget_epsilon:.3f} "
                f"(already spent {self.spent_epsilon:.3f}). Raise the site's epsilon-budget or stop the run."
            )
        return eps

    def set_plan(self, run_key: str, noise_multiplier: float) -> None:
        """Remember the noise multiplier calibrated for a run, so restarts reuse it."""
        self.plans[run_key] = float(noise_multiplier)
        self.save()

    def record_round(
        self,
        round_key: str,
        *,
        accountant_state: Mapping[str, Any],
        steps: int,
        noise_multiplier: float,
        sample_rate: float,
        loss: float,
    ) -> LedgerEntry:
        """Record a finished round (atomically) and return its entry."""
        self.accountant_state = {
            "history": [list(h) for h in accountant_state["history"]],
            "mechanism": self.accountant,
        }
        entry = LedgerEntry(
            round_key=round_key,
            epsilon_after=self.spent_epsilon,
            steps=int(steps),
            noise_multiplier=float(noise_multiplier),
            sample_rate=float(sample_rate),
            loss=float(loss) if loss == loss else -1.0,
            recorded_at=time.time(),
        )
        self.entries.append(entry)
        self.save()
        return entry

    def to_dict(self) -> dict[str, Any]:
        """The ledger as written to disk."""
        return {
            "version": LEDGER_VERSION,
            "site_id": self.site_id,
            "budget_epsilon": self.budget_epsilon,
            "delta": self.delta,
            "spent_epsilon": self.spent_epsilon,
            "accountant": self.accountant_state,
            "rounds": [e.to_dict() for e in self.entries],
            "plans": self.plans,
        }

    def save(self) -> None:
        """Atomically write the ledger."""
        atomic_write_json(self.path, self.to_dict())
