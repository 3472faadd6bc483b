"""Growing poll pauses: short right after activity, longer with the time since, capped; sleeps pass through."""

from __future__ import annotations

import time

import pytest

from fedsynth.common.polling import GrowingPause, SleepOverride


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_pause_starts_at_the_floor_after_activity_and_grows_to_the_cap() -> None:
    # Arrange
    clock = FakeClock()
    pause = GrowingPause(floor=0.05, cap=0.2, growth=0.03, clock=clock)
    # Act
    before_any = pause.next()
    pause.mark()
    right_after = pause.next()
    clock.now += 2.0
    two_seconds_later = pause.next()
    clock.now += 60.0
    long_after = pause.next()
    pause.reset()
    clock.now += 0.1
    after_reset = pause.next()
    # Assert
    assert before_any == 0.2 and right_after == 0.05
    assert two_seconds_later == pytest.approx(0.11)
    assert long_after == 0.2 and after_reset == 0.2


@pytest.mark.parametrize(("floor", "cap", "growth"), [(0.0, 1.0, 0.03), (0.5, 0.1, 0.03), (0.1, 61.0, 0.03),
                                                      (0.1, 1.0, -0.1)])
def test_bad_pause_settings_are_refused(floor: float, cap: float, growth: float) -> None:
    with pytest.raises(ValueError):
        GrowingPause(floor=floor, cap=cap, growth=growth)


def test_sleep_override_maps_sleeps_and_passes_the_rest_to_time(monkeypatch: pytest.MonkeyPatch) -> None:
    # Arrange
    slept: list[float] = []
    monkeypatch.setattr(time, "sleep", slept.append)
    clock = SleepOverride(lambda seconds: seconds / 10)
    # Act
    clock.sleep(2.0)
    # Assert
    assert slept == [0.2] and clock.monotonic is time.monotonic
