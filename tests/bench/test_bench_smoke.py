"""Smoke test of the bench (``python -m bench --quick``): it runs and prints its table; times are not asserted."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
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


@pytest.mark.slow
def test_quick_flower_bench_with_one_site_runs_a_real_federation(tmp_path: Path) -> None:
    # Arrange
    out = tmp_path / "figures.json"

    # Act: SuperLink, one site agent and the local baseline, 3 rounds of 5 steps
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--sections", "flower", "--flower-sites", "1", "--json", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )

    # Assert
    assert proc.returncode == 0, proc.stderr[-2000:]
    listed = json.loads(out.read_text())["figures"]
    figures = {f["name"]: f for f in listed}
    local = figures["local round, 1 site at the same time (no Flower)"]
    assert local["value"] > 0 and "1 site x 5 DP steps" in local["note"]
    rounds = [f for f in listed if f["name"] == "round, fedsynth site-agent"]
    assert rounds and all(f["ratio"] > 0 for f in rounds)
    assert figures["SuperLink + 1 site agent start-up"]["value"] > 0


def test_unknown_section_is_a_usage_error() -> None:
    # Act
    proc = subprocess.run([sys.executable, "-m", "bench", "--sections", "nope"], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)

    # Assert
    assert proc.returncode == 2
    assert "unknown section" in proc.stderr


def test_no_flower_sites_is_a_usage_error() -> None:
    # Act
    proc = subprocess.run([sys.executable, "-m", "bench", "--sections", "flower", "--flower-sites", "0"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)

    # Assert
    assert proc.returncode == 2
    assert "--flower-sites must be >= 1" in proc.stderr


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc (Linux)")
def test_process_cpu_sums_a_descendants_cpu_by_role() -> None:
    # Arrange: a child that burns 0.3 s of CPU, then waits; its command line names it a SuperLink
    from bench.flower import cpu_per_round, process_cpu

    burn = "import time\nt = time.process_time()\nwhile time.process_time() - t < 0.3: pass\ntime.sleep(60)"
    before = process_cpu(os.getpid())
    child = subprocess.Popen([sys.executable, "-c", burn, "flower-superlink"])
    try:
        # Act
        deadline = time.monotonic() + 60
        after = process_cpu(os.getpid()) or {}
        while after.get("SuperLink", (0.0, 0.0))[0] < 0.3:
            assert time.monotonic() < deadline, "the child never burnt its CPU"
            time.sleep(0.05)
            after = process_cpu(os.getpid()) or {}
        per_round = cpu_per_round(before, after, 2)
    finally:
        child.kill()
        child.wait()

    # Assert
    assert "SuperLink" not in (before or {})
    assert 0.3 <= after["SuperLink"][0] < 5
    assert per_round["SuperLink"][0] == pytest.approx(after["SuperLink"][0] / 2)
    assert cpu_per_round(None, after, 2) == {}
