"""A warm SuperExec for a site: each ClientApp process is forked from a parent that has already imported
torch, Opacus, pandas, Flower and fedsynth.

Flower 1.42's SuperNode hands every message to a SuperExec, whose stock executor starts a fresh
``flwr-clientapp`` process per message; that process pays the imports again (4–8 s on a busy 2-core host,
before any training). Here the SuperNode runs with ``--isolation process`` and this process is its SuperExec:
Flower's own task loop (:func:`flwr.supercore.superexec.run_superexec.run_superexec`: AcquireTask polling,
SuperExec auth, parent monitoring, signal handling) with an executor that ``fork()``\\ s instead of
``exec()``\\ ing. The child runs Flower's own ``flwr-clientapp`` main (:func:`run_clientapp`) with the task's
token, so every message still gets its own process (a crash or leak in one round cannot reach the next), the
FAB is installed and its ClientApp loaded exactly as ``flwr-clientapp`` does, and only the import cost is gone.

Usage (one per SuperNode, next to it; see ``deploy/README.md``)::

    flower-supernode --isolation process --host 127.0.0.1 --port 9094 ...
    fedsynth clientapp-executor --runtime-api-address 127.0.0.1:9094 --insecure --parent-pid <supernode pid>

The parent never runs torch code (so no OpenMP thread pool exists when it forks) and keeps a single thread
besides Flower's parent-pid monitor. What a round learns that the next one can reuse goes back to the parent:
each child sends the :class:`~fedsynth.client.warm.WarmHint`\\ s of its rounds (table path, schema, RDP terms;
no rows) through a pipe, and once it has exited the parent validates and encodes the site table and computes the
RDP terms itself (pandas, NumPy, SciPy), so later children find them in memory (:mod:`fedsynth.client.warm`).

The parent polls the SuperNode for the next task every 0.05 s right after a child has finished (the next round
usually follows within a second) and more slowly the longer nothing happens (3% of the time since, at most
``--poll-interval``). Each poll is an HTTP request to the SuperNode, a few ms of CPU in both processes that a
training child would otherwise have. While a child runs there is nothing to poll for (the SuperNode hands out
its next message only after this one's reply), so the parent waits for the child instead: it wakes when the child
closes its hint pipe on the way out, or after :data:`RUNNING_POLL_INTERVAL` at the latest.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import importlib
import os
import select
import signal
import sys
import time
import traceback
from collections.abc import Sequence
from typing import Any

__all__ = ["PRELOAD", "PULL_INITIAL_BACKOFF", "PULL_BACKOFF_CAP", "READY_MESSAGE", "ForkExecutor", "preload", "main",
           "DEFAULT_POLL_INTERVAL", "MIN_POLL_INTERVAL", "RUNNING_POLL_INTERVAL"]

#: Logged once the imports are done and the executor starts taking tasks (launchers wait for it).
READY_MESSAGE = "fedsynth clientapp-executor: preloaded"

#: Modules imported once in the parent, before any fork (what a ``flwr-clientapp`` would import per message).
PRELOAD = (
    "numpy",
    "pandas",
    "torch",
    "opacus",
    "flwr.app",
    "flwr.clientapp",
    "flwr.supernode.runtime.run_clientapp",
    "fedsynth.common.training",
    "fedsynth.common.validation",
    "fedsynth.client.site",
    "fedsynth.client.app",
    # imported lazily by the first DP-SGD round of a process (Opacus/functorch paths): without them each forked
    # ClientApp paid ~0.6 s more for its first round than a warm process does
    "torch._dynamo",
    "torch._inductor",
    "torch.onnx",
    "torch._numpy",
    "torch.utils.serialization",
)
#: First retry pause (s) of a ClientApp pulling its message from the SuperNode (Flower: 1 s). A forked ClientApp
#: starts within ~0.1 s of the task, usually before the SuperNode has all of the message's objects (it creates
#: the task first, then pulls the objects from the SuperLink: 0.2-1 s), and would then sleep a whole second;
#: retries are loopback requests to the SuperNode.
PULL_INITIAL_BACKOFF = 0.05
#: Longest retry pause (s) of that pull (Flower: 10 s, reached after 1+2+4+8 s). Flower's limit on the tries
#: per object is lifted with it; its limit on the total time (2 h) stays.
PULL_BACKOFF_CAP = 0.2
#: Longest pause (s) between AcquireTask polls of the SuperNode's Runtime API (Flower's default is 1 s).
DEFAULT_POLL_INTERVAL = 0.2
#: Pause (s) between AcquireTask polls right after a ClientApp started or finished (loopback requests).
MIN_POLL_INTERVAL = 0.05
#: Longest wait (s) between AcquireTask polls while a ClientApp runs (it usually ends the wait by finishing).
#: Polling every 0.2 s instead cost ~6 ms of CPU per poll across the executor and its SuperNode: 0.66 CPU-s per
#: 200-step round of two sites.
RUNNING_POLL_INTERVAL = 2.0
#: Pipe capacity asked for the children's warm hints (Linux; the default 64 kB holds a few hundred columns).
_HINT_PIPE_SIZE = 1 << 20
_POLL_ENV = "FLWR_SUPEREXEC_TASK_POLL_INTERVAL"


def preload(modules: Sequence[str] = PRELOAD) -> dict[str, float]:
    """Import ``modules`` and return the seconds each took (already-imported ones cost ~0).

    Handlers that an import adds to the root logger are removed again (Opacus calls ``logging.basicConfig`` at
    import, which would print every Flower log line twice in each forked ClientApp).
    """
    import logging

    root = logging.getLogger()
    before = list(root.handlers)
    took: dict[str, float] = {}
    for name in modules:
        start = time.perf_counter()
        importlib.import_module(name)
        took[name] = time.perf_counter() - start
    for handler in [h for h in root.handlers if h not in before]:
        root.removeHandler(handler)
    return took


class ForkExecutor:
    """A Flower SuperExec executor that forks ``flwr-clientapp`` children from this (warm) process.

    Implements ``flwr.supercore.superexec.executor.Executor``. Only ClientApp tasks are accepted: the
    SuperNode's Runtime API hands out nothing else.
    """

    def __init__(self, *, poll_interval: float = DEFAULT_POLL_INTERVAL) -> None:
        from fedsynth.common.polling import GrowingPause

        self.children: dict[int, int] = {}  # pid -> task id of the running children
        self.exit_codes: dict[int, int] = {}  # task id -> exit code of the finished ones (last 100)
        self.hint_pipes: dict[int, int] = {}  # pid -> read end of the child's warm-hint pipe
        self.poll = GrowingPause(floor=min(MIN_POLL_INTERVAL, poll_interval), cap=poll_interval)
        self.finishing: set[int] = set()  # pids of children that closed their hint pipe, not yet reaped

    def pause(self, seconds: float) -> float:
        """The pause Flower's task loop takes instead of its fixed ``seconds`` (see :class:`GrowingPause`)."""
        return min(seconds, self.poll.next())

    def wait(self, seconds: float) -> None:
        """Take a pause of ``seconds`` between polls; while every running child is still at work, wait for one to
        finish instead (its hint pipe turns readable when it closes it, right before it exits), for up to
        :data:`RUNNING_POLL_INTERVAL`."""
        running = {fd: pid for pid, fd in self.hint_pipes.items() if pid not in self.finishing}
        if not running or self.finishing:  # no child, or one about to be reaped: the usual short pause
            time.sleep(min(seconds, MIN_POLL_INTERVAL) if self.finishing else seconds)
            return
        ready, _, _ = select.select(list(running), [], [], max(seconds, RUNNING_POLL_INTERVAL))
        self.finishing.update(running[fd] for fd in ready)

    def get_eligible_capacity(self, supported_task_types: set[Any], *, insecure: bool = False,
                              root_certificates_path: str | None = None) -> tuple[set[Any], set[str]]:
        """Every supported task type can start right away (no capacity gate)."""
        return set(supported_task_types), set()

    def wait_for_capacity(self, task_type: Any = None, *, fab_hash: str | None = None, insecure: bool = False,
                          root_certificates_path: str | None = None) -> None:
        """Nothing to wait for."""

    def launch(self, spec: Any) -> Any:
        """Fork a child that runs ``flwr-clientapp`` for ``spec``'s token; return Flower's launch result."""
        from flwr.supercore.constant import TaskType
        from flwr.supercore.superexec.executor import LaunchResult

        if spec.task_type != TaskType.CLIENT_APP:
            return LaunchResult.failed(f"fedsynth clientapp-executor runs ClientApps only, not {spec.task_type}")
        sys.stdout.flush()
        sys.stderr.flush()
        read_end, write_end = os.pipe()
        with contextlib.suppress(AttributeError, OSError):
            fcntl.fcntl(write_end, fcntl.F_SETPIPE_SZ, _HINT_PIPE_SIZE)
        pid = os.fork()
        if pid == 0:  # child: never returns
            for fd in (read_end, *self.hint_pipes.values()):
                os.close(fd)
            _run_child(spec, hint_fd=write_end)
        os.close(write_end)
        self.children[pid] = int(spec.task_id)
        self.hint_pipes[pid] = read_end
        self.poll.reset()
        return LaunchResult.accepted()

    def reconcile(self) -> None:
        """Reap finished children (called by Flower's loop between polls)."""
        for pid in list(self.children):
            try:
                done, status = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                done, status = pid, 0
            if done:
                task_id = self.children.pop(pid)
                self.exit_codes[task_id] = os.waitstatus_to_exitcode(status)
                while len(self.exit_codes) > 100:
                    self.exit_codes.pop(next(iter(self.exit_codes)))
                self._warm_from(self.hint_pipes.pop(pid))
                self.finishing.discard(pid)
                self.poll.mark()

    @staticmethod
    def _warm_from(read_end: int) -> None:
        """Read a finished child's warm hints and fill this process' caches with them (never raises)."""
        from fedsynth.client.warm import WarmHint, warm

        chunks = []
        try:
            os.set_blocking(read_end, False)
            while chunk := os.read(read_end, 1 << 16):
                chunks.append(chunk)
        except OSError:
            pass  # nothing (more) to read
        finally:
            os.close(read_end)
        hints = []
        for line in b"".join(chunks).decode("utf-8", errors="replace").splitlines():
            with contextlib.suppress(ValueError):  # a line cut short by a full pipe
                hints.append(WarmHint.from_json(line))
        try:
            warm(hints)
        except Exception:  # noqa: BLE001 (a cache is an optimisation: the executor must keep running)
            traceback.print_exc()

    def close(self) -> None:
        """On shutdown, stop the children still running (each also watches this process and exits with it)."""
        for pid in list(self.children):
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                self.children.pop(pid, None)
        deadline = time.monotonic() + 5.0
        while self.children and time.monotonic() < deadline:
            self.reconcile()
            time.sleep(0.05)


def _send_hints(hint_fd: int) -> None:
    """Write the warm hints recorded by this child's rounds to the parent (never blocks, never raises)."""
    try:
        from fedsynth.client.warm import take_hints

        view = memoryview("".join(h.to_json() + "\n" for h in take_hints()).encode())
        os.set_blocking(hint_fd, False)
        while view:
            view = view[os.write(hint_fd, view):]
    except Exception:  # noqa: BLE001, S110 (a full pipe or a bad hint only costs the next round's warm start)
        pass
    finally:
        with contextlib.suppress(OSError):
            os.close(hint_fd)


def _run_child(spec: Any, *, hint_fd: int) -> None:
    """Body of a forked child: Flower's ``flwr-clientapp`` for one task, hints to the parent, ``os._exit``."""
    code = 1
    try:
        from flwr.supercore.exit import exit_handler

        # The parent's exit handlers (close its Runtime client, SIGTERM its other children) are not ours, and
        # run_clientapp installs its own signal handlers on top of the defaults.
        exit_handler.registered_exit_handlers.clear()
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT):
            signal.signal(sig, signal.SIG_DFL)
        import numpy as np

        np.random.seed()  # a fresh process would draw a new global NumPy seed; so does every child
        from fedsynth.client.warm import take_hints

        take_hints()  # the parent's own hints (if any) are not this child's to send
        from flwr.supercore import log
        from flwr.supercore.tls import validate_and_resolve_root_certificates
        from flwr.supernode.runtime.run_clientapp import run_clientapp

        sys.argv = ["flwr-clientapp", "--runtime-api-address", spec.runtime_api_address]
        from logging import INFO

        log(INFO, "Start `flwr-clientapp` process (forked by fedsynth clientapp-executor, task %s)", spec.task_id)
        run_clientapp(
            runtime_api_address=spec.runtime_api_address,
            token=spec.token,
            insecure=spec.insecure,
            certificates=validate_and_resolve_root_certificates(spec.root_certificates_path, spec.insecure),
            parent_pid=spec.parent_pid,
            runtime_dependency_install=spec.runtime_dependency_install,
        )
        code = 0
    except SystemExit as exc:  # flwr_exit() ends every run_clientapp with sys.exit(code)
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except BaseException:  # noqa: BLE001 (a child must never return into the parent's loop)
        traceback.print_exc()
    finally:
        try:
            _send_hints(hint_fd)
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)


def _shorten_message_pull_backoff(initial_backoff: float = PULL_INITIAL_BACKOFF) -> None:
    """Make the forked ClientApps retry a not-yet-available message object after ``initial_backoff`` s.

    ``flwr-clientapp``'s :func:`pull_task_input` calls ``pull_and_inflate_object_from_tree`` with Flower's
    defaults (first retry after 1 s, doubling to 10 s); the same function with a first pause of
    ``initial_backoff`` and a cap of :data:`PULL_BACKOFF_CAP` is put in its place (no limit on the tries per
    object; Flower's limit on the total time stays).
    """
    from flwr.supercore.inflatable import inflatable_utils
    from flwr.supernode.runtime import run_clientapp as clientapp_main

    from fedsynth.common.rebind import shorten_pull_retry

    shorten_pull_retry(
        clientapp_main, "pull_and_inflate_object_from_tree", inflatable_utils.pull_and_inflate_object_from_tree,
        changed="flwr-clientapp no longer pulls its message with pull_and_inflate_object_from_tree",
        initial_backoff=initial_backoff, backoff_cap=PULL_BACKOFF_CAP,
    )


def build_parser() -> argparse.ArgumentParser:
    """Command-line options (the same names as ``flower-superexec``'s)."""
    parser = argparse.ArgumentParser(
        prog="fedsynth clientapp-executor",
        description="Warm SuperExec for a SuperNode started with --isolation process: forks each flwr-clientapp "
                    "from a process that has already imported torch, Opacus and fedsynth.",
    )
    parser.add_argument("--runtime-api-address", required=True,
                        help="The SuperNode's Runtime API, host:port (its --host/--port).")
    parser.add_argument("--insecure", action="store_true",
                        help="Plain HTTP to the Runtime API (the SuperNode was started without --ssl-certfile).")
    parser.add_argument("--root-certificates", default=None,
                        help="CA that signed the SuperNode's Runtime API certificate (its --ssl-ca-certfile).")
    parser.add_argument("--parent-pid", type=int, default=None,
                        help="Exit when this process (e.g. the SuperNode) exits.")
    parser.add_argument("--superexec-auth-secret-file", default=None,
                        help="Shared secret file, when the SuperNode was given one (Flower SuperExec auth).")
    parser.add_argument("--poll-interval", type=float, default=None,
                        help=f"Seconds between task polls (default: ${_POLL_ENV} or {DEFAULT_POLL_INTERVAL}).")
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    """Run the warm executor until the SuperNode (``--parent-pid``) exits or a signal stops it."""
    args = build_parser().parse_args(argv)
    if args.insecure == bool(args.root_certificates):
        raise SystemExit("fedsynth clientapp-executor: give exactly one of --insecure and --root-certificates")
    interval = args.poll_interval if args.poll_interval is not None else float(
        os.environ.get(_POLL_ENV, DEFAULT_POLL_INTERVAL))
    os.environ[_POLL_ENV] = repr(interval)  # read by Flower's loop

    took = preload()
    import logging
    from logging import INFO

    logging.getLogger("flwr").propagate = False  # Flower prints its own lines; a root handler would repeat them

    from flwr.supercore import log
    from flwr.supercore.auth import load_superexec_auth_secret
    from flwr.supercore.superexec import run_superexec as superexec_module

    from fedsynth.common.polling import SleepOverride

    _shorten_message_pull_backoff()

    log(INFO, "%s %d modules in %.1fs; polling %s every %.2fs", READY_MESSAGE, len(took), sum(took.values()),
        args.runtime_api_address, interval)
    secret = None
    if args.superexec_auth_secret_file is not None:
        secret = load_superexec_auth_secret(secret_file=args.superexec_auth_secret_file)
    executor = ForkExecutor(poll_interval=interval)
    # Flower's loop builds its executor with get_executor(); hand it ours (Flower has no plugin point for it).
    if not callable(getattr(superexec_module, "get_executor", None)):
        raise SystemExit("fedsynth clientapp-executor: this flwr version has no SuperExec get_executor hook")
    if getattr(superexec_module, "time", None) is not time:
        raise SystemExit("fedsynth clientapp-executor: this flwr version's SuperExec loop has no `time` to patch")
    superexec_module.get_executor = lambda *a, **k: executor  # type: ignore[assignment]
    superexec_module.time = SleepOverride(executor.pause, wait=executor.wait)  # type: ignore[assignment]
    superexec_module.run_superexec(
        runtime_api_address=args.runtime_api_address,
        insecure=args.insecure,
        root_certificates_path=args.root_certificates,
        superexec_auth_secret=secret,
        parent_pid=args.parent_pid,
    )


if __name__ == "__main__":
    main()
