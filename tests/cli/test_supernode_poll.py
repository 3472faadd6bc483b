"""The SuperNode wrapper shortens exactly Flower's two fixed pauses; a canary catches a changed flwr."""

from __future__ import annotations

import inspect
import time

import pytest

from fedsynth.cli import supernode


def test_poll_clock_replaces_flowers_pauses_and_passes_others_through(monkeypatch: pytest.MonkeyPatch) -> None:
    # Arrange
    slept: list[float] = []
    monkeypatch.setattr(time, "sleep", slept.append)
    clock = supernode.PollClock(idle=0.4, reply=0.05)
    # Act
    for seconds in (3, 0.5, 0.2, 7):
        clock.sleep(seconds)
    # Assert
    assert slept == [0.4, 0.05, 0.2, 7]
    assert clock.monotonic is time.monotonic


def test_idle_poll_is_short_right_after_a_reply_and_grows_back_to_the_interval(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # Arrange
    slept: list[float] = []
    monkeypatch.setattr(time, "sleep", slept.append)
    now = [0.0]
    clock = supernode.PollClock(idle=0.5, reply=0.1, clock=lambda: now[0])
    # Act: a round's reply is awaited, then the node is idle 1 s and 60 s later
    clock.sleep(supernode.FLOWER_REPLY_POLL)
    now[0] = 1.0
    clock.sleep(supernode.FLOWER_IDLE_POLL)
    now[0] = 60.0
    clock.sleep(supernode.FLOWER_IDLE_POLL)
    # Assert
    assert slept == [0.1, pytest.approx(0.13), 0.5]


def test_install_patches_the_supernode_loop_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    from flwr.supercore.inflatable import inflatable_utils
    from flwr.supernode import start_client_internal as loop

    monkeypatch.setattr(loop, "time", time)
    monkeypatch.setattr(loop, "pull_objects", inflatable_utils.pull_objects)
    monkeypatch.setenv(supernode.IDLE_POLL_ENV, "0.25")
    monkeypatch.delenv(supernode.REPLY_POLL_ENV, raising=False)

    clock = supernode.install()

    assert loop.time is clock and (clock.idle, clock.reply) == (0.25, supernode.DEFAULT_REPLY_POLL)
    assert loop.pull_objects.keywords["initial_backoff"] == supernode.OBJECT_PULL_INITIAL_BACKOFF


def test_the_supernode_retries_a_message_object_that_is_not_uploaded_yet_soon(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # Arrange: the first pull of one object finds it missing (the ServerApp has not pushed it yet)
    import functools

    from flwr.supercore.inflatable import inflatable_utils
    from flwr.supernode import start_client_internal as loop

    monkeypatch.setattr(loop, "pull_objects", inflatable_utils.pull_objects)
    tries: dict[str, int] = {}

    def pull_object(object_id: str) -> bytes:
        tries[object_id] = tries.get(object_id, 0) + 1
        if object_id == "late" and tries[object_id] == 1:
            raise inflatable_utils.ObjectUnavailableError(object_id)
        return object_id.encode()

    # Act
    supernode.shorten_object_pull_backoff(0.1, 2.0)
    supernode.shorten_object_pull_backoff(0.001)  # idempotent: the last pauses win
    got = loop.pull_objects(["early", "late"], pull_object_fn=pull_object)

    # Assert
    patched = loop.pull_objects
    assert isinstance(patched, functools.partial) and patched.func is inflatable_utils.pull_objects
    assert patched.keywords == {"initial_backoff": 0.001, "backoff_cap": supernode.OBJECT_PULL_BACKOFF_CAP,
                                "max_tries_per_object": None}
    assert got == {"early": b"early", "late": b"late"} and tries == {"early": 1, "late": 2}


def test_flower_supernode_loop_still_pulls_message_objects_with_pull_objects() -> None:
    # a canary: a flwr that pulls differently must fail loudly rather than keep Flower's 1 s retry
    from flwr.supercore.inflatable import inflatable_utils
    from flwr.supernode import start_client_internal as loop

    assert getattr(loop.pull_objects, "func", loop.pull_objects) is inflatable_utils.pull_objects
    assert "pull_objects(" in inspect.getsource(loop._pull_and_store_message)


def test_flower_supernode_loop_still_has_the_pauses_the_wrapper_replaces() -> None:
    # a canary: if a flwr upgrade changes these, the wrapper silently stops helping (or must be dropped)
    from flwr.supernode import start_client_internal as loop

    source = inspect.getsource(loop)
    assert f"time.sleep({int(supernode.FLOWER_IDLE_POLL)})" in source
    assert f"time.sleep({supernode.FLOWER_REPLY_POLL})" in source


@pytest.mark.parametrize("bad", [0.0, -1.0, 61.0])
def test_poll_intervals_must_be_positive_and_bounded(bad: float) -> None:
    with pytest.raises(ValueError):
        supernode.PollClock(idle=bad, reply=0.1)
