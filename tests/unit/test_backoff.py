"""Reconnect backoff: doubles, is capped, is jittered within [ceiling/2, ceiling], resets."""

from __future__ import annotations

import pytest

from edgesync.backoff import Backoff


def delays(backoff: Backoff, n: int) -> list[float]:
    return [backoff.next_delay_s() for _ in range(n)]


def test_without_jitter_delays_double_up_to_the_cap() -> None:
    top = Backoff(initial_s=0.5, max_s=4.0, random=lambda: 1.0)
    assert delays(top, 6) == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]


def test_jitter_keeps_each_delay_between_half_and_all_of_its_ceiling() -> None:
    bottom = Backoff(initial_s=0.5, max_s=4.0, random=lambda: 0.0)
    assert delays(bottom, 5) == [0.25, 0.5, 1.0, 2.0, 2.0]
    real = Backoff(initial_s=1.0, max_s=8.0)
    for ceiling, delay in zip([1, 2, 4, 8, 8, 8], delays(real, 6), strict=True):
        assert ceiling / 2 <= delay <= ceiling


def test_reset_starts_again_from_the_initial_delay() -> None:
    backoff = Backoff(initial_s=1.0, max_s=60.0, random=lambda: 1.0)
    delays(backoff, 5)
    backoff.reset()
    assert backoff.next_delay_s() == 1.0


def test_many_failures_never_overflow() -> None:
    backoff = Backoff(initial_s=0.1, max_s=30.0, random=lambda: 1.0)
    assert delays(backoff, 5000)[-1] == 30.0


@pytest.mark.parametrize("kwargs", [{"initial_s": 0}, {"initial_s": 5, "max_s": 1}, {"multiplier": 0.5}])
def test_nonsense_settings_are_refused(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        Backoff(**kwargs)
