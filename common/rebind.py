"""Give a function that another module imported by name new default arguments (used to shorten Flower's retry
pauses from the outside, without patching Flower's files)."""

from __future__ import annotations

import functools
from collections.abc import Callable
from types import ModuleType
from typing import Any

__all__ = ["rebind_with_defaults", "shorten_pull_retry"]


def rebind_with_defaults(module: ModuleType, name: str, original: Callable[..., Any], *, changed: str,
                         **kwargs: Any) -> None:
    """Set ``module.name`` to ``functools.partial(original, **kwargs)``.

    ``module.name`` must be ``original`` itself, or a partial of it that an earlier call put there (which is
    replaced, so calling again with other arguments takes the new ones, not both).

    Raises:
        RuntimeError: ``module.name`` is something else (``changed`` says what, e.g. after a Flower upgrade).
    """
    current = getattr(module, name, None)
    if isinstance(current, functools.partial) and current.func is original:
        current = original
    if current is not original:
        raise RuntimeError(changed)
    setattr(module, name, functools.partial(original, **kwargs))


def shorten_pull_retry(module: ModuleType, name: str, original: Callable[..., Any], *, changed: str,
                       initial_backoff: float, backoff_cap: float) -> None:
    """Rebind Flower's object-pull function ``original`` (imported by ``module`` as ``name``) with a first retry
    after ``initial_backoff`` s, doubling to ``backoff_cap`` (at least ``initial_backoff``), and no limit on the
    tries per object: Flower's defaults are 1 s doubling to 10 s and 500 tries; its limit on the total time (2 h)
    stays. See :func:`rebind_with_defaults` for ``changed`` and repeated calls."""
    rebind_with_defaults(module, name, original, changed=changed, initial_backoff=initial_backoff,
                         backoff_cap=max(initial_backoff, backoff_cap), max_tries_per_object=None)
