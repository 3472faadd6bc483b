"""``flower-supernode`` with a shorter idle poll (``python -m fedsynth.cli.supernode <flower-supernode args>``).

Flower 1.42's SuperNode asks the SuperLink for a new message, and when there is none sleeps a fixed 3 s
(``time.sleep(3)`` in :func:`flwr.supernode.start_client_internal.start_client_internal`); after handing a
message to its ClientApp it checks for the reply every 0.5 s. Between two rounds the next message therefore
waits 0–3 s at every site (1.5–3 s per round in practice, the last site to reply waits longest), 15–25 % of a
short round. This wrapper runs Flower's own ``flower-supernode`` entry point unchanged except for those two
pauses, taken from the environment, and the retry pause of its object pull (below):

* ``FEDSYNTH_SUPERNODE_POLL_INTERVAL`` (default 0.5 s): the longest idle poll of the SuperLink. Each poll is
  one small HTTPS request per site; ``3`` restores Flower's behaviour.
* ``FEDSYNTH_SUPERNODE_REPLY_POLL_INTERVAL`` (default 0.1 s): check of the SuperNode's own in-memory state for
  the ClientApp's reply (no network).

After a round's reply the next message usually follows within a second (the slowest site's reply, aggregation,
the push), so the idle poll is not fixed: it starts at the reply poll interval once a reply has been awaited and
grows by 3% of the time since, up to ``FEDSYNTH_SUPERNODE_POLL_INTERVAL``
(:class:`~fedsynth.common.polling.GrowingPause`). A site idle for longer than ~15 s polls every 0.5 s as before.

The object pull's retry pause: the SuperLink lists a message as soon as the ServerApp announces it, before the
ServerApp has uploaded its objects (~0.1 s later), and a SuperNode that polls in between finds an object missing
and retries after Flower's 1 s (doubling to 10 s). In a 10-round loopback run of two sites, 2 of the 20 message
pulls did so and took 0.96-1.05 s instead of 0.08-0.21 s. The wrapper's SuperNode retries after 0.05 s, doubling
to 1 s (:func:`shorten_object_pull_backoff`).

Everything else (flags, TLS, node authentication, isolation modes, exit codes) is Flower's.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable

from fedsynth.common.polling import GrowingPause, SleepOverride

__all__ = ["PollClock", "install", "main", "shorten_object_pull_backoff", "IDLE_POLL_ENV", "REPLY_POLL_ENV"]

IDLE_POLL_ENV = "FEDSYNTH_SUPERNODE_POLL_INTERVAL"
REPLY_POLL_ENV = "FEDSYNTH_SUPERNODE_REPLY_POLL_INTERVAL"
DEFAULT_IDLE_POLL = 0.5
DEFAULT_REPLY_POLL = 0.1
#: First and longest retry pause (s) of the SuperNode pulling a message's objects from the SuperLink (Flower: 1 s,
#: doubling to 10 s, at most 500 tries per object). The cap stays at 1 s: these requests cross the network. An
#: object that never comes (a ServerApp that died while pushing) costs one request a second per site until the
#: SuperLink marks the run finished (the ServerApp's heartbeats stop), which makes the pull fail; Flower's limit
#: on the total time (2 h) stays as the last resort.
OBJECT_PULL_INITIAL_BACKOFF = 0.05
OBJECT_PULL_BACKOFF_CAP = 1.0
#: The pauses hard-coded in flwr 1.42's SuperNode loop.
FLOWER_IDLE_POLL = 3.0
FLOWER_REPLY_POLL = 0.5


class PollClock(SleepOverride):
    """Stands in for the ``time`` module inside Flower's SuperNode loop: shortens its two fixed pauses.

    ``sleep(0.5)`` (reply wait) becomes ``sleep(reply)`` and marks activity; ``sleep(3)`` (idle poll) becomes a
    pause of ``reply`` + 3% of the seconds since that activity, at most ``idle`` (``idle`` before any round).
    Any other call goes to :mod:`time` unchanged.
    """

    def __init__(self, idle: float, reply: float, *, clock: Callable[[], float] = time.monotonic) -> None:
        if not (0 < idle <= 60 and 0 < reply <= 60):
            raise ValueError(f"poll intervals must be in (0, 60] s, got idle={idle}, reply={reply}")
        super().__init__(self._pause)
        self.idle, self.reply = idle, reply
        self.idle_pause = GrowingPause(floor=min(reply, idle), cap=idle, clock=clock)

    def _pause(self, seconds: float) -> float:
        """Flower's fixed pauses replaced by the configured ones; any other pause unchanged."""
        if seconds == FLOWER_IDLE_POLL:
            return self.idle_pause.next()
        if seconds == FLOWER_REPLY_POLL:
            self.idle_pause.mark()
            return self.reply
        return seconds


def _env_float(name: str, default: float) -> float:
    raw = os.environ.get(name)
    if raw is None or not raw.strip():
        return default
    try:
        return float(raw)
    except ValueError as exc:
        raise SystemExit(f"{name} must be a number of seconds, got {raw!r}") from exc


def shorten_object_pull_backoff(initial_backoff: float = OBJECT_PULL_INITIAL_BACKOFF,
                                backoff_cap: float = OBJECT_PULL_BACKOFF_CAP) -> None:
    """Make the SuperNode retry a message object that is not uploaded yet after ``initial_backoff`` s.

    Flower's SuperNode loop pulls a message's objects with ``pull_objects`` and its defaults; the same function
    with the shorter pauses and no limit on the tries per object is put in its place (Flower's limit on the
    total time, 2 h, stays).

    Raises:
        RuntimeError: the installed flwr's SuperNode loop no longer pulls objects with ``pull_objects``.
    """
    from flwr.supercore.inflatable import inflatable_utils
    from flwr.supernode import start_client_internal as loop

    from fedsynth.common.rebind import shorten_pull_retry

    shorten_pull_retry(
        loop, "pull_objects", inflatable_utils.pull_objects,
        changed="flwr's SuperNode loop no longer pulls message objects with pull_objects",
        initial_backoff=initial_backoff, backoff_cap=backoff_cap,
    )


def install(idle: float | None = None, reply: float | None = None) -> PollClock:
    """Put a :class:`PollClock` into Flower's SuperNode loop module and return it; shorten its object pull's
    retry pause (:func:`shorten_object_pull_backoff`).

    Raises:
        RuntimeError: the installed flwr has no module-level ``time`` in its SuperNode loop (another version).
    """
    from flwr.supernode import start_client_internal as loop

    if getattr(loop, "time", None) is not time and not isinstance(getattr(loop, "time", None), PollClock):
        raise RuntimeError("flwr.supernode.start_client_internal has no `time` module to patch (flwr version?)")
    clock = PollClock(idle if idle is not None else _env_float(IDLE_POLL_ENV, DEFAULT_IDLE_POLL),
                      reply if reply is not None else _env_float(REPLY_POLL_ENV, DEFAULT_REPLY_POLL))
    loop.time = clock  # type: ignore[assignment]
    shorten_object_pull_backoff()
    return clock


def main() -> None:
    """Run ``flower-supernode`` (arguments from ``sys.argv``) with the shorter pauses."""
    import sys

    install()
    from flwr.supernode.cli.flower_supernode import flower_supernode

    sys.argv[0] = "flower-supernode"

    flower_supernode()


if __name__ == "__main__":
    main()
