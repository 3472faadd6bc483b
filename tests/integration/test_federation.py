"""Real Flower processes on loopback: SuperLink + SuperNodes + ``flwr run`` (Deployment Engine, no Ray)."""

from __future__ import annotations

import json
import math
import os
import signal
import time
from pathlib import Path

import pytest
import torch

from fedsynth.cli.federation import Federation, run_federation
from fedsynth.common.artifact import load_generator
from fedsynth.common.training import epsilon_from_state

from .conftest import TINY_RUN_CONFIG, wait_for_round

pytestmark = pytest.mark.integration

POISONED_CLIENT = '''"""Test-only ClientApp: the real one, but site-b answers with NaN weights."""
import math
from flwr.app import ArrayRecord
from flwr.clientapp import ClientApp
from fedsynth.client.app import train as real_train

app = ClientApp()


@app.train()
def train(msg, context):
    reply = real_train(msg, context)
    if context.node_config.get("site-id") == "site-b" and not reply.has_error():
        state = reply.content["arrays"].to_torch_state_dict()
        reply.content["arrays"] = ArrayRecord({k: v * math.nan for k, v in state.items()})
    return reply
'''


def _ledger(path: Path) -> dict:
    return json.loads(path.read_text())


def _steps(ledger: dict) -> int:
    return sum(int(h[2]) for h in ledger["accountant"]["history"])


def test_two_rounds_with_tls_and_node_auth_export_a_sampleable_artifact(tmp_path, federation_data) -> None:
    # Arrange
    schema_path, sites = federation_data(2)
    lines: list[str] = []
    # Act
    result = run_federation(
        run_dir=tmp_path / "run", sites=sites, schema_path=schema_path,
        run_config={**TINY_RUN_CONFIG, "num-server-rounds": 2}, tls=True, node_auth=True, timeout=600,
        echo=lines.append,
    )
    # Assert
    assert result.status == "finished:completed"
    assert any(line.startswith("[fedsynth] round 2/2") and "site-a=" in line and "site-b=" in line
               for line in lines), lines
    generator = load_generator(result.artifact)
    rows = generator.sample(20, steps=10, seed=0)
    assert list(rows.columns) == ["age", "hr", "sex", "unit"] and len(rows) == 20
    report = json.loads((result.artifact / "privacy_ledger.json").read_text())
    for site in sites:
        ledger = _ledger(site.ledger_path)
        assert len(ledger["rounds"]) == 2
        assert report["sites"][site.site_id]["epsilon"] == pytest.approx(ledger["spent_epsilon"], rel=1e-6)
        assert ledger["spent_epsilon"] <= 3.0 + 1e-6


def test_unregistered_supernode_is_refused(tmp_path, federation_data) -> None:
    # Arrange
    _, sites = federation_data(1)
    with Federation(tmp_path / "run", tls=True, node_auth=True, echo=None) as fed:
        fed.start_superlink()
        # Act: a key pair that was never registered with `flwr supernode register`
        intruder = fed.start_supernode(sites[0], register=False, max_retries=1)
        code = intruder.popen.wait(timeout=120)
        listed = fed._flwr("supernode", "ls", "fedsynth", "--format", "json")
    # Assert
    assert code != 0
    assert "Failed to activate SuperNode" in intruder.log.read_text()
    assert json.loads(listed.stdout[listed.stdout.index("{"):]).get("nodes", []) == []


def test_update_with_nan_weights_is_rejected_and_the_run_completes(tmp_path, federation_data) -> None:
    # Arrange
    schema_path, sites = federation_data(2)
    out = tmp_path / "server"
    config = {**TINY_RUN_CONFIG, "num-server-rounds": 1, "output-dir": str(out), "schema-path": str(schema_path)}
    with Federation(tmp_path / "run", tls=False, node_auth=False, echo=None) as fed:
        fed.start(sites)
        # Act
        run_id = fed.submit(run_config=config, components={"clientapp": "poisoned_client:app"},
                            extra_files={"poisoned_client.py": POISONED_CLIENT})
        status = fed.wait(run_id, timeout=600)
    # Assert
    assert status == "finished:completed"
    state = json.loads((out / "checkpoint" / "state.json").read_text())
    sites_of_round = {s["site_id"]: s for s in state["rounds"][0]["sites"]}
    assert sites_of_round["site-a"]["accepted"] is True
    assert sites_of_round["site-b"]["accepted"] is False
    assert "non-finite" in sites_of_round["site-b"]["reason"]
    weights = torch.load(out / "checkpoint" / state["weights_file"], weights_only=True)
    assert all(torch.isfinite(t).all() for t in weights.values())
    assert "rejected update from node" in (tmp_path / "run" / "logs" / f"run-{run_id}.log").read_text()


def test_run_completes_when_a_supernode_drops_out(tmp_path, federation_data) -> None:
    # Arrange
    schema_path, sites = federation_data(2)
    out = tmp_path / "server"
    config = {**TINY_RUN_CONFIG, "num-server-rounds": 2, "min-available-nodes": 1, "min-train-nodes": 1,
              "output-dir": str(out), "schema-path": str(schema_path)}
    with Federation(tmp_path / "run", tls=False, node_auth=False, echo=None) as fed:
        fed.start(sites)
        run_id = fed.submit(run_config=config)
        wait_for_round(out / "checkpoint" / "state.json", 1)
        # Act: site-b's SuperNode crashes after round 1
        fed.kill_supernode("site-b")
        status = fed.wait(run_id, timeout=600)
    # Assert
    assert status == "finished:completed"
    result = json.loads((out / "result.json").read_text())
    assert Path(result["artifact"]).is_dir()
    state = json.loads((out / "checkpoint" / "state.json").read_text())
    round2 = {s["site_id"]: s for s in state["rounds"][1]["sites"]}
    assert round2["site-a"]["accepted"] is True
    assert "site-b" not in round2 or round2["site-b"]["accepted"] is False
    assert state["sites"]["site-a"]["rounds"] == 2 and state["sites"]["site-b"]["rounds"] == 1


def test_killed_serverapp_resumes_from_checkpoint_without_double_counting(tmp_path, federation_data) -> None:
    # Arrange
    schema_path, sites = federation_data(2)
    out = tmp_path / "server"
    rounds = 3
    config = {**TINY_RUN_CONFIG, "num-server-rounds": rounds, "output-dir": str(out),
              "schema-path": str(schema_path)}
    with Federation(tmp_path / "run", tls=False, node_auth=False, echo=None) as fed:
        fed.start(sites)
        first = fed.submit(run_config=config)
        state1 = wait_for_round(out / "checkpoint" / "state.json", 1)
        # Act: kill the ServerApp process mid-run, then start the run again with the same output dir
        os.kill(int((out / "serverapp.pid").read_text()), signal.SIGKILL)
        time.sleep(1.0)
        second = fed.submit(run_config=config)
        status = fed.wait(second, timeout=600)
    # Assert
    assert first != second and status == "finished:completed"
    state = json.loads((out / "checkpoint" / "state.json").read_text())
    assert state["completed_round"] == rounds and state["run_key"] == state1["run_key"]
    assert [r["server_round"] for r in state["rounds"]] == list(range(1, rounds + 1))
    for site in sites:
        ledger = _ledger(site.ledger_path)
        assert [e["round_key"] for e in ledger["rounds"]] == [f"{state['run_key']}:{r}" for r in range(1, rounds + 1)]
        assert _steps(ledger) == rounds * TINY_RUN_CONFIG["local-steps"]
        expected = epsilon_from_state(ledger["accountant"], delta=ledger["delta"])
        assert ledger["spent_epsilon"] == pytest.approx(expected)
        assert state["sites"][site.site_id]["rounds"] == rounds
        assert state["sites"][site.site_id]["epsilon"] == pytest.approx(ledger["spent_epsilon"], rel=1e-6)
        assert math.isfinite(state["sites"][site.site_id]["loss"])


PROBE_CLIENT = '''"""Test-only ClientApp: the real one, reporting its process and what was imported before it loaded."""
import os
import sys

PRELOADED = {m: m in sys.modules for m in ("torch", "opacus", "fedsynth.client.site")}

from flwr.clientapp import ClientApp  # noqa: E402
from fedsynth.client.app import train as real_train  # noqa: E402

app = ClientApp()


@app.train()
def train(msg, context):
    print(f"[probe] pid={os.getpid()} ppid={os.getppid()} preloaded={all(PRELOADED.values())}", flush=True)
    return real_train(msg, context)
'''


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return False
    return state != "Z"


def _group_pids(pgid: int) -> list[int]:
    pids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError, IndexError):
            continue
        if int(fields[2]) == pgid:
            pids.append(int(stat.parent.name))
    return pids


def test_site_agents_fork_every_clientapp_from_one_warm_executor_and_close_stops_them(
        tmp_path, federation_data) -> None:
    # Arrange
    schema_path, sites = federation_data(2)
    out = tmp_path / "server"
    config = {**TINY_RUN_CONFIG, "num-server-rounds": 2, "output-dir": str(out), "schema-path": str(schema_path)}
    with Federation(tmp_path / "run", tls=True, node_auth=True, echo=None) as fed:
        fed.start(sites)  # returns once both executors have done their imports
        agent = fed.supernodes["site-a"]
        log_text = agent.log.read_text()
        executor_pid = int(log_text.split("clientapp executor pid ")[1].split()[0])
        assert "--isolation process" in log_text and "fedsynth clientapp-executor: preloaded" in log_text
        # Act
        run_id = fed.submit(run_config=config, components={"clientapp": "probe_client:app"},
                            extra_files={"probe_client.py": PROBE_CLIENT})
        status = fed.wait(run_id, timeout=600)
        group = _group_pids(agent.popen.pid)
    # Assert: both rounds ran in fresh processes forked from the same executor, imports already done
    assert status == "finished:completed"
    probes = [line for line in agent.log.read_text().splitlines() if line.startswith("[probe]")]
    assert len(probes) == 2, probes
    fields = [dict(kv.split("=") for kv in line.split()[1:]) for line in probes]
    assert {f["ppid"] for f in fields} == {str(executor_pid)}
    assert fields[0]["pid"] != fields[1]["pid"] and str(executor_pid) not in {f["pid"] for f in fields}
    assert all(f["preloaded"] == "True" for f in fields)
    # ... and closing the federation stopped the agent, its SuperNode and its executor
    assert executor_pid in group and len(group) >= 3
    deadline = time.monotonic() + 15
    while any(_alive(p) for p in group) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not [p for p in group if _alive(p)]
