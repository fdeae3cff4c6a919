"""Small asyncio helpers shared by the hub and the agents."""

from __future__ import annotations

import asyncio
from typing import Any

RECANCEL_AFTER_S = 0.1


async def cancel_and_wait(tasks: list[asyncio.Task[Any]]) -> None:
    """Cancel `tasks` and wait until they have really stopped, cancelling
    again any that carry on.

    Python 3.11's asyncio.wait_for (which aiomqtt's publish uses) swallows a
    cancellation that arrives as its inner future completes (gh-86296): a
    loop cancelled mid-publish then simply went on. If the caller itself is
    cancelled meanwhile, it still waits for its tasks to stop (they would
    otherwise outlive it, unowned), then raises CancelledError.
    """
    for task in tasks:
        task.cancel()
    pending = {t for t in tasks if not t.done()}
    interrupted = False
    while pending:
        try:
            _, pending = await asyncio.wait(pending, timeout=RECANCEL_AFTER_S)
        except asyncio.CancelledError:
            interrupted = True
            pending = {t for t in pending if not t.done()}
        for task in pending:
            task.cancel()
    for task in tasks:
        if not task.cancelled():
            task.exception()  # retrieved: whoever needed it looked before cancelling
    if interrupted:
        raise asyncio.CancelledError
