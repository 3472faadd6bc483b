"""Tests for fedsynth.common.rebind: new defaults for a function another module imported by name."""

from __future__ import annotations

import functools
import types

import pytest

from fedsynth.common.rebind import rebind_with_defaults, shorten_pull_retry


def pull(*, backoff: float = 1.0, cap: float = 10.0) -> tuple[float, float]:
    return backoff, cap


def test_rebinds_and_a_second_call_replaces_the_first() -> None:
    # Arrange: a module that imported ``pull`` by name
    mod = types.ModuleType("client")
    mod.pull = pull  # type: ignore[attr-defined]
    # Act / Assert
    rebind_with_defaults(mod, "pull", pull, changed="moved", backoff=0.1)
    assert mod.pull() == (0.1, 10.0)
    rebind_with_defaults(mod, "pull", pull, changed="moved", cap=0.5)
    assert mod.pull() == (1.0, 0.5)  # not stacked on the first call's arguments
    assert isinstance(mod.pull, functools.partial) and mod.pull.func is pull


@pytest.mark.parametrize("current", [None, print], ids=["missing", "another-function"])
def test_refuses_when_the_module_no_longer_uses_the_function(current: object) -> None:
    mod = types.ModuleType("client")
    if current is not None:
        mod.pull = current  # type: ignore[attr-defined]
    with pytest.raises(RuntimeError, match="flwr moved it"):
        rebind_with_defaults(mod, "pull", pull, changed="flwr moved it", backoff=0.1)


def test_shorten_pull_retry_sets_the_pauses_lifts_the_tries_and_keeps_the_cap_above_the_first_pause() -> None:
    # Arrange: a stand-in with Flower's pull keywords
    def pull_objects(*, initial_backoff: float = 1.0, backoff_cap: float = 10.0,
                     max_tries_per_object: int | None = 500) -> tuple[float, float, int | None]:
        return initial_backoff, backoff_cap, max_tries_per_object

    mod = types.ModuleType("supernode")
    mod.pull_objects = pull_objects  # type: ignore[attr-defined]
    # Act / Assert
    shorten_pull_retry(mod, "pull_objects", pull_objects, changed="moved", initial_backoff=0.05, backoff_cap=0.2)
    assert mod.pull_objects() == (0.05, 0.2, None)
    shorten_pull_retry(mod, "pull_objects", pull_objects, changed="moved", initial_backoff=0.5, backoff_cap=0.2)
    assert mod.pull_objects() == (0.5, 0.5, None)
