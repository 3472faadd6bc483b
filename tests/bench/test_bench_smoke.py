"""Smoke test of the bench (``python -m bench --quick``): it runs and prints its table; times are not asserted."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_quick_bench_runs_and_prints_ratios(tmp_path: Path) -> None:
    # Arrange
    out = tmp_path / "figures.json"

    # Act
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--sections", "sample,audit", "--sample-rows", "64",
         "--audit-rows", "500", "--json", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )

    # Assert
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "| section | figure |" in proc.stdout
    figures = json.loads(out.read_text())["figures"]
    assert {f["section"] for f in figures} == {"sample", "audit"}
    assert all(f["value"] > 0 for f in figures)
    assert any(f["ratio"] is not None for f in figures)


def test_unknown_section_is_a_usage_error() -> None:
    # Act
    proc = subprocess.run([sys.executable, "-m", "bench", "--sections", "nope"], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)

    # Assert
    assert proc.returncode == 2
    assert "unknown section" in proc.stderr
