"""Poll pauses that start short after activity and grow with the time since (Flower's loops sleep fixed times).

A site's loops poll for work: the SuperNode asks the SuperLink for the next message, the warm executor asks the
SuperNode for the next ClientApp task. Right after a site has answered a round, the next message follows within
a second or so (the slowest site's reply, aggregation, the push); a site idle for long needs no fast poll. A
:class:`GrowingPause` gives ``floor + growth * (seconds since the last activity)``, at most ``cap``: the next
round is seen within about ``floor`` while an idle site polls every ``cap`` seconds. The ServerApp's reply poll
(:func:`fedsynth.server.app.send_and_receive`) uses the same pauses, counted from the push of a round. The
module is Flower-free, so the site agent (``cli``) and the ServerApp (``server``) share it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

__all__ = ["GrowingPause", "SleepOverride"]


class GrowingPause:
    """Pause lengths that grow from ``floor`` with the time since :meth:`mark`, capped at ``cap``.

    Args:
        floor: pause right after activity (s, > 0).
        cap: longest pause, also used before any activity (s, >= floor).
        growth: seconds of pause added per second since the last activity.
        clock: monotonic clock (tests pass a fake one).

    >>> now = [0.0]
    >>> pause = GrowingPause(floor=0.1, cap=0.5, clock=lambda: now[0])
    >>> pause.next(), (pause.mark(), pause.next())[1]
    (0.5, 0.1)
    >>> now[0] = 10.0
    >>> round(pause.next(), 3), (now.__setitem__(0, 100.0), pause.next())[1]
    (0.4, 0.5)
    """

    def __init__(self, *, floor: float, cap: float, growth: float = 0.03,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if not (0 < floor <= cap <= 60 and growth >= 0):
            raise ValueError(f"need 0 < floor <= cap <= 60 s and growth >= 0, got {floor}, {cap}, {growth}")
        self.floor, self.cap, self.growth = floor, cap, growth
        self._clock = clock
        self._since: float | None = None

    def mark(self) -> None:
        """Record activity now: the next pauses start again from ``floor``."""
        self._since = self._clock()

    def reset(self) -> None:
        """Forget the last activity: pauses are ``cap`` until the next :meth:`mark`."""
        self._since = None

    def next(self) -> float:
        """The pause to take now."""
        if self._since is None:
            return self.cap
        return min(self.cap, self.floor + self.growth * (self._clock() - self._since))


class SleepOverride:
    """Stands in for the ``time`` module inside a Flower loop: ``sleep`` goes through ``pause``, the rest to ``time``.

    Args:
        pause: maps the seconds Flower asked for to the seconds to sleep.
        wait: how to take that pause (default :func:`time.sleep`; a caller's own may end it early).
    """

    def __init__(self, pause: Callable[[float], float], *, wait: Callable[[float], None] | None = None) -> None:
        self._pause = pause
        self._wait = wait

    def sleep(self, seconds: float) -> None:
        """Sleep ``pause(seconds)``."""
        (self._wait or time.sleep)(self._pause(seconds))

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)
