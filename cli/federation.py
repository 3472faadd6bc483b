"""Flower process orchestration: a SuperLink and one SuperNode per site on loopback, then ``flwr run``.

Library code (no CLI framework). Typical use::

    result = run_federation(run_dir=Path("runs/demo"), sites=[SiteSpec("a", Path("a.csv"), 3.0), ...],
                            schema_path=Path("schema.json"), run_config={"num-server-rounds": 3})
    print(result.artifact)

or step by step (tests, resume)::

    with Federation(run_dir, tls=True, node_auth=True) as fed:
        fed.start(sites)
        run_id = fed.submit(run_config=..., schema_path=...)
        status = fed.wait(run_id)

Each site runs as ``fedsynth site-agent`` (:mod:`fedsynth.cli.site_agent`): its SuperNode with
``--isolation process`` and a 0.5 s idle poll, plus a warm ClientApp executor (:mod:`fedsynth.cli.executor`) that
forks every ``flwr-clientapp`` from a process that has already imported torch, Opacus and fedsynth;
``warm_clientapps=False`` gives plain ``flower-supernode`` with Flower's stock SuperExec (a fresh
``flwr-clientapp`` process, imports included, per message, and a 3 s idle poll). Each process runs in its own
session with its own ``FLWR_HOME`` under ``<run_dir>/flwr/``; logs go to ``<run_dir>/logs/``.
:meth:`Federation.close` (also on Ctrl-C and exceptions via the context manager) sends SIGTERM to every process
group it started, then SIGKILL to those still alive. See ``docs/flower-notes.md``.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from fedsynth.cli.certs import NodeKeyPair, TlsFiles, generate_node_keys, generate_tls
from fedsynth.common.config import RunConfig

__all__ = [
    "SiteSpec",
    "FederationError",
    "FederationResult",
    "Federation",
    "run_federation",
    "write_flower_app",
    "free_port",
]

CONNECTION = "fedsynth"
LOOPBACK = "127.0.0.1"
_RUN_STARTED = re.compile(r"Successfully started run (\d+)")
COMPONENTS = {"serverapp": "fedsynth.server.app:app", "clientapp": "fedsynth.client.app:app"}


class FederationError(RuntimeError):
    """A Flower process failed to start, the run failed, or it timed out (the message points at the logs)."""


@dataclass(frozen=True)
class SiteSpec:
    """One hospital site run as a SuperNode.

    Args:
        site_id: name of the site (``site-id`` node config, used in reports).
        data_path: the site's CSV/Parquet table.
        epsilon_budget: the site's own total epsilon budget.
        ledger_path: its durable privacy ledger (default: next to the table).
        extra_node_config: further ``--node-config`` entries.
    """

    site_id: str
    data_path: Path
    epsilon_budget: float
    ledger_path: Path | None = None
    extra_node_config: Mapping[str, str | int | float | bool] = field(default_factory=dict)

    def node_config(self) -> str:
        """The ``--node-config`` string."""
        items: dict[str, Any] = {
            "site-id": self.site_id,
            "data-path": str(Path(self.data_path).resolve()),
            "epsilon-budget": float(self.epsilon_budget),
            **dict(self.extra_node_config),
        }
        if self.ledger_path is not None:
            items["ledger-path"] = str(Path(self.ledger_path).resolve())
        return " ".join(f"{k}={_toml_value(v)}" for k, v in items.items())


@dataclass(frozen=True)
class FederationResult:
    """Outcome of a finished run."""

    run_id: int
    status: str
    artifact: Path
    output_dir: Path
    run_dir: Path


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    return json.dumps(str(value))


def free_port(host: str = LOOPBACK) -> int:
    """A TCP port that is free on ``host`` right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _wait_port(host: str, port: int, *, timeout: float, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise FederationError(f"process exited with code {proc.returncode} while starting; see {log}")
        with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.5):
            return
        time.sleep(0.2)
    raise FederationError(f"nothing listens on {host}:{port} after {timeout:.0f}s; see {log}")


def write_flower_app(app_dir: Path, *, run_config: Mapping[str, Any], name: str = "fedsynth-app",
                     version: str = "1.0.0", components: Mapping[str, str] | None = None,
                     extra_files: Mapping[str, str] | None = None) -> Path:
    """Write a one-file Flower app (``pyproject.toml``) whose components are the installed fedsynth apps.

    The FAB built from it is a few hundred bytes; ``[tool.flwr.app.config]`` holds the full run config.

    Args:
        app_dir: destination folder.
        run_config: the run config written to ``[tool.flwr.app.config]``.
        name: the app (FAB) name.
        version: the app version.
        components: override ``serverapp``/``clientapp`` import strings (tests use wrapped apps).
        extra_files: further files (relative path -> text) to put in the app dir, e.g. a wrapper module.
    """
    app_dir.mkdir(parents=True, exist_ok=True)
    comps = {**COMPONENTS, **dict(components or {})}
    for rel, text in (extra_files or {}).items():
        (app_dir / rel).parent.mkdir(parents=True, exist_ok=True)
        (app_dir / rel).write_text(text, encoding="utf-8")
    lines = [
        "[build-system]", 'requires = ["hatchling"]', 'build-backend = "hatchling.build"', "",
        "[project]", f'name = "{name}"', f'version = "{version}"', "dependencies = []", "",
        "[tool.hatch.build.targets.wheel]", 'packages = ["."]', "",
        "[tool.flwr.app]", 'publisher = "fedsynth"', "",
        "[tool.flwr.app.components]",
        *(f'{k} = "{v}"' for k, v in comps.items()), "",
        "[tool.flwr.app.config]",
        *(f'{k} = {_toml_value(v)}' for k, v in run_config.items()), "",
    ]
    (app_dir / "pyproject.toml").write_text("\n".join(lines), encoding="utf-8")
    return app_dir


@dataclass
class _Proc:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path
    handle: IO[bytes]


class Federation:
    """A SuperLink plus SuperNodes on loopback, owned by this object (use as a context manager).

    Args:
        run_dir: folder for logs, certificates, per-process ``FLWR_HOME`` and the generated Flower app.
        tls: serve the SuperLink over TLS with a freshly generated CA (``cli.certs``).
        node_auth: require SuperNode authentication (needs ``tls``); each site's key is registered first.
        echo: receives progress lines (``[fedsynth] round ...``); ``None`` to stay quiet.
        startup_timeout: seconds to wait for each process to come up.
        warm_clientapps: run each site as ``fedsynth site-agent`` (SuperNode with ``--isolation process`` plus
            a warm ClientApp executor); ``False``: plain ``flower-supernode``, one cold ``flwr-clientapp``
            process per message.
    """

    def __init__(self, run_dir: str | os.PathLike[str], *, tls: bool = True, node_auth: bool = True,
                 echo: Callable[[str], None] | None = print, startup_timeout: float = 60.0,
                 warm_clientapps: bool = True) -> None:
        if node_auth and not tls:
            raise ValueError("SuperNode authentication requires TLS (Flower refuses it otherwise)")
        self.run_dir = Path(run_dir).resolve()
        self.tls, self.node_auth, self.echo = tls, node_auth, echo
        self.startup_timeout = startup_timeout
        self.warm_clientapps = warm_clientapps
        self.logs = self.run_dir / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.port = 0
        self.certs: TlsFiles | None = None
        self.procs: list[_Proc] = []
        self.supernodes: dict[str, _Proc] = {}
        self.node_keys: dict[str, NodeKeyPair] = {}
        self._streams: list[subprocess.Popen[str]] = []
        self._followers: dict[int, tuple[subprocess.Popen[str], threading.Thread]] = {}
        bin_dir = str(Path(sys.executable).parent)
        self.env = {
            **os.environ,
            "PATH": bin_dir + os.pathsep + os.environ.get("PATH", ""),
            "FLWR_TELEMETRY_ENABLED": "0",
            "FLWR_DISABLE_UPDATE_CHECK": "1",
            "PYTHONUNBUFFERED": "1",
            "NO_COLOR": "1",
            "TERM": "dumb",
            "COLUMNS": "200",
            # several SuperNodes share this machine's cores in a loopback federation: one thread each
            # avoids oversubscription (a real site runs alone and may raise it)
            "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"),
        }
        self.cli_home = self.run_dir / "flwr" / "cli"

    # -- context manager -------------------------------------------------------------------------
    def __enter__(self) -> Federation:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- processes -------------------------------------------------------------------------------
    def _spawn(self, name: str, args: Sequence[str], *, home: Path) -> _Proc:
        home.mkdir(parents=True, exist_ok=True)
        log = self.logs / f"{name}.log"
        handle = open(log, "ab")  # noqa: SIM115 (closed in close())
        popen = subprocess.Popen(
            list(args), stdout=handle, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env={**self.env, "FLWR_HOME": str(home)}, cwd=str(home), start_new_session=True,
        )
        proc = _Proc(name, popen, log, handle)
        self.procs.append(proc)
        return proc

    def _flwr(self, *args: str, timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["flwr", *args], capture_output=True, text=True, timeout=timeout,
            env={**self.env, "FLWR_HOME": str(self.cli_home)}, cwd=str(self.run_dir), check=False,
        )

    def start_superlink(self) -> int:
        """Start the SuperLink on a free loopback port, write the CLI connection, return the port."""
        self.port = free_port()
        args = ["flower-superlink", "--host", LOOPBACK, "--port", str(self.port),
                "--disable-runtime-dependency-installation",
                "--database", str(self.run_dir / "flwr" / "superlink.db")]
        if self.tls:
            self.certs = generate_tls(self.run_dir / "certs")
            args += ["--ssl-ca-certfile", str(self.certs.ca_cert), "--ssl-certfile", str(self.certs.server_cert),
                     "--ssl-keyfile", str(self.certs.server_key)]
            if self.node_auth:
                args.append("--enable-supernode-auth")
        else:
            args.append("--insecure")
        proc = self._spawn("superlink", args, home=self.run_dir / "flwr" / "superlink")
        _wait_port(LOOPBACK, self.port, timeout=self.startup_timeout, proc=proc.popen, log=proc.log)
        self.cli_home.mkdir(parents=True, exist_ok=True)
        conn = [f"[superlink]\ndefault = \"{CONNECTION}\"\n", f"[superlink.{CONNECTION}]",
                f'address = "{LOOPBACK}:{self.port}"']
        conn.append(f'root-certificates = "{self.certs.ca_cert}"' if self.certs else "insecure = true")
        (self.cli_home / "config.toml").write_text("\n".join(conn) + "\n", encoding="utf-8")
        return self.port

    def register(self, site_id: str) -> NodeKeyPair:
        """Create ``site_id``'s authentication key pair and register its public key with the SuperLink."""
        keys = generate_node_keys(self.run_dir / "node-keys", name=site_id)
        res = self._flwr("supernode", "register", str(keys.public_key), CONNECTION, "--name", site_id)
        if res.returncode != 0:
            raise FederationError(f"flwr supernode register failed for {site_id}: {res.stdout}{res.stderr}")
        self.node_keys[site_id] = keys
        return keys

    def start_supernode(self, site: SiteSpec, *, keys: NodeKeyPair | None = None, register: bool = True,
                        max_retries: int | None = None) -> _Proc:
        """Start one SuperNode for ``site`` (registering its key first when node auth is on).

        Args:
            site: the site.
            keys: an existing key pair to use (e.g. an unregistered one, in tests).
            register: register the key pair with the SuperLink before starting.
            max_retries: ``--max-retries`` for the connection (``None``: Flower's default, unlimited).
        """
        if self.node_auth and keys is None:
            keys = self.register(site.site_id) if register else generate_node_keys(
                self.run_dir / "node-keys", name=site.site_id)
        port = free_port()
        args = ["flower-supernode", "--superlink", f"{LOOPBACK}:{self.port}", "--host", LOOPBACK,
                "--port", str(port), "--node-config", site.node_config()]
        args += ["--root-certificates", str(self.certs.ca_cert)] if self.certs else ["--insecure"]
        if keys is not None:
            args += ["--auth-supernode-private-key", str(keys.private_key)]
        if max_retries is not None:
            args += ["--max-retries", str(max_retries)]
        if self.warm_clientapps:
            # fedsynth site-agent: this SuperNode with --isolation process and a short idle poll, plus the warm
            # ClientApp executor, in one process group (what a real site runs, see deploy/)
            args = [sys.executable, "-m", "fedsynth.cli.site_agent", *args[1:]]
        proc = self._spawn(f"supernode-{site.site_id}", args, home=self.run_dir / "flwr" / f"node-{site.site_id}")
        _wait_port(LOOPBACK, port, timeout=self.startup_timeout, proc=proc.popen, log=proc.log)
        self.supernodes[site.site_id] = proc
        return proc

    def start(self, sites: Sequence[SiteSpec], *, wait_ready: bool = True) -> None:
        """Start the SuperLink and one SuperNode per site (then, by default, wait until they are warm)."""
        self.start_superlink()
        for site in sites:
            self.start_supernode(site)
        if wait_ready:
            self.wait_ready()

    def wait_ready(self, site_ids: Sequence[str] | None = None, *, timeout: float | None = None) -> None:
        """Wait until each site's warm ClientApp executor has finished its imports (no-op without warm mode).

        Raises:
            FederationError: a site agent exited, or an executor was not ready within ``timeout`` seconds
                (default: ``startup_timeout``).
        """
        if not self.warm_clientapps:
            return
        from fedsynth.cli.executor import READY_MESSAGE

        deadline = time.monotonic() + (self.startup_timeout if timeout is None else timeout)
        pending = list(self.supernodes if site_ids is None else site_ids)
        while pending:
            site_id = pending[0]
            proc = self.supernodes[site_id]
            if READY_MESSAGE in proc.log.read_text(encoding="utf-8", errors="replace"):
                pending.pop(0)
                continue
            if proc.popen.poll() is not None:
                raise FederationError(f"site agent of {site_id} exited with code {proc.popen.returncode}; "
                                      f"see {proc.log}")
            if time.monotonic() >= deadline:
                raise FederationError(f"the ClientApp executor of {site_id} is not ready; see {proc.log}")
            time.sleep(0.2)

    def kill_supernode(self, site_id: str) -> None:
        """SIGKILL a site's SuperNode process group (a crash/dropout)."""
        proc = self.supernodes.pop(site_id)
        _signal_group(proc.popen, signal.SIGKILL)
        proc.popen.wait(timeout=10)

    # -- runs ------------------------------------------------------------------------------------
    def submit(self, *, run_config: Mapping[str, Any], app_dir: Path | None = None,
               components: Mapping[str, str] | None = None, extra_files: Mapping[str, str] | None = None) -> int:
        """Write the Flower app with ``run_config``, start a run and follow its logs; return the run id.

        The run is started with ``flwr run <app> <connection> --stream``; that process keeps streaming the
        ServerApp's logs into ``logs/run-<id>.log`` until the run ends, and ``[fedsynth]`` lines go to ``echo``.
        """
        app = write_flower_app(app_dir or self.run_dir / "flwr-app", run_config=run_config, components=components,
                               extra_files=extra_files)
        proc = subprocess.Popen(
            ["flwr", "run", str(app), CONNECTION, "--stream"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, text=True, env={**self.env, "FLWR_HOME": str(self.cli_home)},
            cwd=str(self.run_dir), start_new_session=True,
        )
        self._streams.append(proc)
        assert proc.stdout is not None
        head: list[str] = []
        run_id = None
        for line in proc.stdout:
            head.append(line)
            match = _RUN_STARTED.search(line)
            if match:
                run_id = int(match.group(1))
                break
        if run_id is None:
            proc.wait(timeout=30)
            raise FederationError(f"flwr run failed (code {proc.returncode}): {''.join(head)[-3000:]}")
        log = self.logs / f"run-{run_id}.log"

        def follow() -> None:
            with open(log, "a", encoding="utf-8") as out:
                out.writelines(head)
                for line in proc.stdout:  # type: ignore[union-attr]
                    out.write(line)
                    out.flush()
                    if self.echo is not None and "[fedsynth]" in line:
                        self.echo(line[line.index("[fedsynth]"):].rstrip())

        thread = threading.Thread(target=follow, name=f"flwr-run-{run_id}", daemon=True)
        thread.start()
        self._followers[run_id] = (proc, thread)
        return run_id

    def status(self, run_id: int) -> str:
        """The run's status as ``flwr ls`` reports it (e.g. ``running``, ``finished:completed``)."""
        res = self._flwr("ls", CONNECTION, "--run-id", str(run_id), "--format", "json", timeout=60)
        try:
            payload = json.loads(res.stdout[res.stdout.index("{"):])
            return str(payload["runs"][0]["status"])
        except (ValueError, KeyError, IndexError, TypeError):
            return "unknown"

    def wait(self, run_id: int, *, timeout: float = 600.0, poll_every: float = 60.0) -> str:
        """Block until the run finishes and return its final status.

        Waits for the log stream of the run to end (it ends with the run); asks ``flwr ls`` only then and,
        as a safety net, every ``poll_every`` seconds (each ``flwr`` call costs a Python start-up).

        Raises:
            FederationError: the run did not finish within ``timeout`` seconds.
        """
        deadline = time.monotonic() + timeout
        follower = self._followers.get(run_id)
        next_poll = time.monotonic() + poll_every
        while time.monotonic() < deadline:
            stream_done = follower is None or follower[0].poll() is not None
            if stream_done or time.monotonic() >= next_poll:
                if follower is not None and stream_done:
                    follower[1].join(timeout=5)
                status = self.status(run_id)
                if status.startswith("finished"):
                    return status
                next_poll = time.monotonic() + (2.0 if stream_done else poll_every)
            time.sleep(0.5)
        raise FederationError(f"run {run_id} did not finish within {timeout:.0f}s; see {self.logs}")

    def close(self) -> None:
        """Stop every process started here: SIGTERM, then SIGKILL after a grace period."""
        for proc in self._streams:
            with contextlib.suppress(ProcessLookupError, OSError):
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in reversed(self.procs):
            _signal_group(proc.popen, signal.SIGTERM)
        deadline = time.monotonic() + 10
        for proc in reversed(self.procs):
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.popen.wait(timeout=max(0.1, deadline - time.monotonic()))
            _signal_group(proc.popen, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.popen.wait(timeout=5)
            proc.handle.close()
        self.procs.clear()
        self.supernodes.clear()


def _signal_group(popen: subprocess.Popen[Any], sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError, OSError):
        os.killpg(popen.pid, sig)


def run_federation(
    *,
    run_dir: str | os.PathLike[str],
    sites: Sequence[SiteSpec],
    schema_path: str | os.PathLike[str],
    run_config: Mapping[str, Any] | None = None,
    output_dir: str | os.PathLike[str] | None = None,
    tls: bool = True,
    node_auth: bool = True,
    timeout: float = 3600.0,
    echo: Callable[[str], None] | None = print,
) -> FederationResult:
    """Start a loopback federation, run fedsynth to completion, shut everything down, return the artifact.

    Args:
        run_dir: folder for logs, certificates and Flower state.
        sites: one SuperNode per site.
        schema_path: the declared schema JSON.
        run_config: :class:`~fedsynth.common.config.RunConfig` keys (kebab-case) to override.
        output_dir: server checkpoint/artifact folder (default ``<run_dir>/server``). Re-using it resumes.
        tls: TLS on the SuperLink.
        node_auth: SuperNode authentication (requires ``tls``).
        timeout: seconds to wait for the run to finish.
        echo: progress line sink.

    Raises:
        FederationError: a process failed, the run failed or timed out.
    """
    run_path = Path(run_dir).resolve()
    out = Path(output_dir).resolve() if output_dir is not None else run_path / "server"
    config = {**RunConfig().to_user_config(), **dict(run_config or {}), "output-dir": str(out),
              "schema-path": str(Path(schema_path).resolve())}
    with Federation(run_path, tls=tls, node_auth=node_auth, echo=echo) as fed, _interrupt_guard():
        fed.start(sites)
        run_id = fed.submit(run_config=config)
        if echo is not None:
            echo(f"[fedsynth] run {run_id} started with {len(sites)} sites; logs in {fed.logs}")
        status = fed.wait(run_id, timeout=timeout)
    result_file = out / "result.json"
    if status != "finished:completed" or not result_file.exists():
        raise FederationError(f"run {run_id} ended with status {status}; see {run_path / 'logs'}")
    artifact = Path(json.loads(result_file.read_text())["artifact"])
    return FederationResult(run_id=run_id, status=status, artifact=artifact, output_dir=out, run_dir=run_path)


@contextlib.contextmanager
def _interrupt_guard() -> Iterator[None]:
    """Turn SIGTERM into KeyboardInterrupt so the ``with Federation`` block still cleans up."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
