"""``fedsynth site-agent``: command lines of the SuperNode and its executor, and their supervision."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from fedsynth.cli.site_agent import plan, run_site_agent

BASE = ["--superlink", "link.example.org:8000", "--root-certificates", "/certs/ca.crt",
        "--auth-supernode-private-key", "/certs/auth-key", "--node-config", "/etc/fedsynth/site.toml"]


def test_plan_runs_the_supernode_in_process_isolation_with_a_shared_secret() -> None:
    # Act
    agent = plan([*BASE, "--port", "9100"], secret_file=Path("/tmp/s"), python="py")
    # Assert
    assert agent.supernode == ["py", "-m", "fedsynth.cli.supernode", *BASE, "--port", "9100",
                               "--superexec-auth-secret-file", "/tmp/s", "--isolation", "process"]
    assert agent.executor == ["py", "-m", "fedsynth.cli.executor", "--runtime-api-address", "127.0.0.1:9100",
                              "--insecure", "--superexec-auth-secret-file", "/tmp/s"]


def test_plan_dials_loopback_for_a_wildcard_host_and_verifies_a_tls_runtime_api() -> None:
    agent = plan([*BASE, "--host", "0.0.0.0", "--ssl-certfile", "rt.pem", "--ssl-keyfile", "rt.key",
                  "--ssl-ca-certfile", "rt-ca.pem", "--superexec-auth-secret-file", "mine"],
                 secret_file=Path("/tmp/unused"), python="py")

    assert agent.runtime_api_address == "127.0.0.1:9094"
    assert agent.executor[agent.executor.index("--root-certificates") + 1] == "rt-ca.pem"
    assert "--insecure" not in agent.executor
    assert agent.supernode.count("--superexec-auth-secret-file") == 1 and "mine" in agent.executor


@pytest.mark.parametrize("extra", [["--isolation", "subprocess"], ["--ssl-certfile", "rt.pem"]])
def test_plan_refuses_options_it_cannot_honour(extra: list[str]) -> None:
    with pytest.raises(ValueError):
        plan([*BASE, *extra])


def _fake_popen(script_for: dict[str, list[str]], started: list[list[str]]):
    """Run tiny Python scripts in place of the SuperNode/executor; remember the real command lines."""

    def popen(cmd: list[str]) -> subprocess.Popen[bytes]:
        started.append(cmd)
        role = "supernode" if "fedsynth.cli.supernode" in cmd else "executor"
        script = script_for[role].pop(0) if len(script_for[role]) > 1 else script_for[role][0]
        return subprocess.Popen([sys.executable, "-c", script])

    return popen


def test_agent_exits_with_the_supernodes_code_and_restarts_a_dead_executor(tmp_path: Path) -> None:
    # Arrange: the executor dies at once the first time, then stays; the SuperNode exits with 305 after 2.5 s
    started: list[list[str]] = []
    popen = _fake_popen({"supernode": ["import time; time.sleep(2.5); raise SystemExit(305 % 256)"],
                         "executor": ["raise SystemExit(9)", "import time; time.sleep(60)"]}, started)
    # Act
    code = run_site_agent(BASE, poll=0.1, popen=popen)
    # Assert
    assert code == 305 % 256
    executors = [c for c in started if "fedsynth.cli.executor" in c]
    assert len(executors) == 2
    supernode_pid_arg = executors[0][executors[0].index("--parent-pid") + 1]
    assert supernode_pid_arg.isdigit()
    secret = Path(started[0][started[0].index("--superexec-auth-secret-file") + 1])
    assert not secret.exists(), "the agent's private secret folder is removed on exit"


def test_agent_gives_up_when_the_executor_keeps_dying() -> None:
    started: list[list[str]] = []
    popen = _fake_popen({"supernode": ["import time; time.sleep(60)"], "executor": ["raise SystemExit(1)"]},
                        started)

    code = run_site_agent(BASE, poll=0.05, popen=popen)

    assert code == 1 and len([c for c in started if "fedsynth.cli.executor" in c]) == 6


def test_sigterm_stops_the_supernode_and_the_executor(tmp_path: Path) -> None:
    # Arrange: both children write their pid and sleep
    started: list[list[str]] = []
    procs: list[subprocess.Popen[bytes]] = []
    script = "import time; time.sleep(60)"
    base = _fake_popen({"supernode": [script], "executor": [script]}, started)

    def popen(cmd: list[str]) -> subprocess.Popen[bytes]:
        proc = base(cmd)
        procs.append(proc)
        return proc

    timer = threading.Timer(1.5, os.kill, args=(os.getpid(), signal.SIGTERM))
    timer.start()
    secret_mode = []

    def check_secret() -> None:
        path = Path(started[0][started[0].index("--superexec-auth-secret-file") + 1])
        secret_mode.append(stat.S_IMODE(path.stat().st_mode))

    threading.Timer(1.0, check_secret).start()
    # Act
    code = run_site_agent(BASE, poll=0.05, popen=popen)
    # Assert
    assert code == 0
    assert all(p.poll() is not None for p in procs) and len(procs) == 2
    assert secret_mode == [0o600]
