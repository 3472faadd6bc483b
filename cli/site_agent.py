"""``fedsynth site-agent``: one site's Flower SuperNode plus its warm ClientApp executor, supervised together.

``fedsynth site-agent <flower-supernode options>`` starts

1. ``flower-supernode <options> --isolation process`` (through :mod:`fedsynth.cli.supernode`, which shortens
   Flower's fixed 3 s idle poll), and
2. ``fedsynth clientapp-executor`` (:mod:`fedsynth.cli.executor`) on the SuperNode's Runtime API, which forks
   every ``flwr-clientapp`` from a process that has already imported torch, Opacus and fedsynth.

The two share a fresh SuperExec secret (``--superexec-auth-secret-file``, a 0600 file in a private temporary
folder) unless one is given, so only this executor can take the SuperNode's tasks. The agent exits with the
SuperNode's exit code when the SuperNode exits (e.g. 305, not registered: systemd/compose restart it), restarts
the executor if it dies (at most 5 times a minute), and on SIGTERM/SIGINT stops both.

Used by the loopback launcher (:class:`fedsynth.cli.federation.Federation`), the site-agent image and the
systemd unit (``deploy/``).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = ["AgentPlan", "plan", "run_site_agent"]

DEFAULT_RUNTIME_HOST = "127.0.0.1"  # flwr 1.42: UVICORN_DEFAULT_HOST
DEFAULT_RUNTIME_PORT = 9094  # flwr 1.42: SUPERNODE_UVICORN_DEFAULT_PORT
MAX_EXECUTOR_RESTARTS_PER_MINUTE = 5


@dataclass(frozen=True)
class AgentPlan:
    """The two command lines of a site agent (the executor's without ``--parent-pid``)."""

    supernode: list[str]
    executor: list[str]
    runtime_api_address: str


def _dial_host(host: str) -> str:
    if host in ("0.0.0.0", ""):
        return "127.0.0.1"
    if host == "::":
        return "[::1]"
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


def plan(supernode_args: Sequence[str], *, secret_file: Path | None = None,
         python: str = sys.executable) -> AgentPlan:
    """Build the SuperNode and executor command lines from the ``flower-supernode`` options.

    Args:
        supernode_args: ``flower-supernode`` options (``--isolation`` is set here and may not be given).
        secret_file: SuperExec secret to add when the options carry no ``--superexec-auth-secret-file``.
        python: the interpreter for both processes.

    Raises:
        ValueError: ``--isolation`` given, or a Runtime API certificate without its CA.
    """
    parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    parser.add_argument("--isolation")
    parser.add_argument("--host", default=DEFAULT_RUNTIME_HOST)
    parser.add_argument("--port", type=int, default=DEFAULT_RUNTIME_PORT)
    parser.add_argument("--ssl-certfile")
    parser.add_argument("--ssl-ca-certfile")
    parser.add_argument("--superexec-auth-secret-file")
    known, _ = parser.parse_known_args(list(supernode_args))
    if known.isolation is not None:
        raise ValueError("fedsynth site-agent sets --isolation process itself; leave --isolation out")
    args = list(supernode_args)
    secret = known.superexec_auth_secret_file
    if secret is None and secret_file is not None:
        secret = str(secret_file)
        args += ["--superexec-auth-secret-file", secret]
    address = f"{_dial_host(known.host)}:{known.port}"
    executor = [python, "-m", "fedsynth.cli.executor", "--runtime-api-address", address]
    if known.ssl_certfile:
        if not known.ssl_ca_certfile:
            raise ValueError("--ssl-certfile needs --ssl-ca-certfile (the executor verifies the Runtime API with it)")
        executor += ["--root-certificates", known.ssl_ca_certfile]
    else:
        executor += ["--insecure"]
    if secret is not None:
        executor += ["--superexec-auth-secret-file", secret]
    supernode = [python, "-m", "fedsynth.cli.supernode", *args, "--isolation", "process"]
    return AgentPlan(supernode=supernode, executor=executor, runtime_api_address=address)


def _say(message: str) -> None:
    print(f"[fedsynth] site-agent: {message}", file=sys.stderr, flush=True)


def _stop(proc: subprocess.Popen[bytes] | None, timeout: float = 20.0) -> None:
    if proc is None or proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        proc.terminate()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        proc.wait(timeout=5)


def run_site_agent(supernode_args: Sequence[str], *, poll: float = 0.5,
                   popen: Callable[..., subprocess.Popen[bytes]] = subprocess.Popen) -> int:
    """Run the SuperNode and the warm executor until the SuperNode exits or a signal arrives.

    Returns:
        The SuperNode's exit code (1 when the executor keeps dying; 0 after SIGTERM/SIGINT).
    """
    private = Path(tempfile.mkdtemp(prefix="fedsynth-site-agent-"))
    stopping = False

    def on_signal(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    supernode: subprocess.Popen[bytes] | None = None
    executor: subprocess.Popen[bytes] | None = None
    try:
        secret = private / "superexec-secret"
        fd = os.open(secret, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(secrets.token_bytes(32))
        agent = plan(supernode_args, secret_file=secret)
        supernode = popen(agent.supernode)
        _say(f"SuperNode pid {supernode.pid} (--isolation process), Runtime API {agent.runtime_api_address}")

        def start_executor() -> subprocess.Popen[bytes]:
            proc = popen([*agent.executor, "--parent-pid", str(supernode.pid)])
            _say(f"clientapp executor pid {proc.pid}")
            return proc

        executor = start_executor()
        restarts: list[float] = []
        while not stopping:
            code = supernode.poll()
            if code is not None:
                _say(f"SuperNode exited with code {code}")
                return code if code >= 0 else 128 - code  # killed by a signal: the shell's convention
            if executor.poll() is not None:
                now = time.monotonic()
                restarts = [t for t in restarts if now - t < 60.0] + [now]
                if len(restarts) > MAX_EXECUTOR_RESTARTS_PER_MINUTE:
                    _say(f"clientapp executor exited {len(restarts)} times within a minute; giving up")
                    return 1
                _say(f"clientapp executor exited with code {executor.returncode}; restarting it")
                executor = start_executor()
            time.sleep(poll)
        _say("stopping")
        return 0
    finally:
        _stop(executor)
        _stop(supernode)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        shutil.rmtree(private, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(run_site_agent(sys.argv[1:]))
