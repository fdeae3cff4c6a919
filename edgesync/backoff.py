"""Capped, jittered exponential backoff for reconnect and retry loops.

A leaf module: the bus's reconnect loop, the agent's task retries and the
transfer client's range retries all use it.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass
class Backoff:
    """Delays that double from `initial_s` up to `max_s`, each jittered.

    The jitter keeps the delay between half and all of the current ceiling,
    so a fleet of agents that lost the broker together doesn't come back in
    lock-step, while no delay collapses to nothing.
    """

    initial_s: float = 0.5
    max_s: float = 30.0
    multiplier: float = 2.0
    random: Callable[[], float] = field(default=random.random, repr=False)
    _ceiling_s: float = field(default=0.0, init=False, repr=False)

    def __post_init__(self) -> None:
        if not 0 < self.initial_s <= self.max_s or self.multiplier < 1:
            raise ValueError("backoff needs 0 < initial_s <= max_s and multiplier >= 1")
        self.reset()

    def next_delay_s(self) -> float:
        """The delay before the next attempt; each call raises the ceiling."""
        ceiling = self._ceiling_s
        self._ceiling_s = min(self.max_s, ceiling * self.multiplier)
        return ceiling * (0.5 + 0.5 * self.random())

    def reset(self) -> None:
        """Start again from `initial_s` (call it once an attempt succeeded)."""
        self._ceiling_s = self.initial_s
