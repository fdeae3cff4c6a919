"""What the agent owes the hub, sent whenever the broker is reachable.

Work goes on while the broker is away; what it produces waits here:

- **Results** (Done/Failed) are durable: `finish()` stores a task's result
  with its final state in the journal before queueing it, a result leaves the
  queue only once the broker acknowledged it (then the journal marks it
  reported), and a restarted agent loads what is still owed. Delivery is
  at-least-once; a resend keeps its message id, so the hub drops duplicates.
- **Progress** is a hint: only the latest per task is kept, at most one per
  `progress_interval_s` per task is accepted, and it is sent before the
  results of the same pass, so the hub never sees progress after a Done.
- **Inventory** is a snapshot: marked due after every change and every
  (re)connect, read from the store when it is sent.

`publish_once()` sends what is due; `run()` repeats it whenever something is
added. A BusError propagates (the connection is gone) and what wasn't
acknowledged stays queued for the next connection.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from edgesync.agent.journal import Journal, Result, TaskState
from edgesync.bus import BusClient, DoneEvent, Inventory, ProgressEvent, topics

log = logging.getLogger(__name__)

PROGRESS_INTERVAL_S = 1.0


class EventOutbox:
    def __init__(self, site: str, journal: Journal, image_ids: Callable[[], Awaitable[list[str]]], *,
                 progress_interval_s: float = PROGRESS_INTERVAL_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.site = site
        self._journal = journal
        self._image_ids = image_ids
        self._progress_interval_s = progress_interval_s
        self._clock = clock
        self._results: dict[str, Result] = {}  # task id → result, oldest first
        self._unjournaled: set[str] = set()  # task ids of results the journal doesn't hold
        self._progress: dict[str, ProgressEvent] = {}
        self._progress_accepted_at: dict[str, float] = {}
        self._inventory_due = True  # an agent that starts announces what it holds
        self._wake = asyncio.Event()

    async def load(self) -> None:
        """Queue the results a previous run finished but never got acknowledged."""
        for result in await self._journal.unreported():
            self._results[result.task_id] = result
        if self._results:
            self._wake.set()

    # --- what the agent's work reports ---------------------------------------------

    def progress(self, task_id: str, bytes_done: int, bytes_total: int) -> None:
        now = self._clock()
        last = self._progress_accepted_at.get(task_id)
        if last is not None and now - last < self._progress_interval_s:
            return
        self._progress_accepted_at[task_id] = now
        self._progress[task_id] = ProgressEvent(task_id=task_id, bytes_done=bytes_done, bytes_total=bytes_total)
        self._wake.set()

    async def finish(self, task_id: str, result: Result) -> None:
        """Journal the task's final state with its result, then queue the result.
        Shielded: a shutdown must not lose a result the work already produced."""
        state = TaskState.DONE if isinstance(result, DoneEvent) else TaskState.FAILED
        await asyncio.shield(self._journal.set_state(task_id, state, result=result))
        self._progress_accepted_at.pop(task_id, None)
        self.resend(result)

    def resend(self, result: Result) -> None:
        """Queue a result again (its command was delivered again)."""
        self._results[result.task_id] = result
        self._wake.set()

    def reply(self, result: Result) -> None:
        """Queue the answer to a question that was never journaled (a probe):
        it changes nothing, so losing it in a crash costs only the hub's wait."""
        self._unjournaled.add(result.task_id)
        self.resend(result)

    def inventory_changed(self) -> None:
        self._inventory_due = True
        self._wake.set()

    def connected(self) -> None:
        """A new connection: the hub may have missed the inventory meanwhile."""
        self.inventory_changed()

    @property
    def owed_results(self) -> int:
        return len(self._results)

    # --- sending -------------------------------------------------------------------

    async def publish_once(self, bus: BusClient) -> int:
        """Publish everything due; how many messages went out."""
        self._wake.clear()
        sent = await self._publish_progress(bus)
        sent += await self._publish_results(bus)
        if self._inventory_due:
            self._inventory_due = False
            try:
                await bus.publish(topics.event(self.site), await self._inventory())
            except BaseException:
                self._inventory_due = True
                raise
            sent += 1
        return sent

    async def _publish_progress(self, bus: BusClient) -> int:
        sent = 0
        for task_id, event in list(self._progress.items()):
            await bus.publish(topics.event(self.site), event)
            if self._progress.get(task_id) is event:  # not replaced by a newer one meanwhile
                del self._progress[task_id]
            sent += 1
        return sent

    async def _publish_results(self, bus: BusClient) -> int:
        sent = 0
        for task_id, result in list(self._results.items()):
            await bus.publish(topics.event(self.site), result)
            if task_id in self._unjournaled:
                self._unjournaled.discard(task_id)
            else:
                await self._journal.mark_reported(task_id)
            if self._results.get(task_id) is result:
                del self._results[task_id]
            sent += 1
        return sent

    async def _inventory(self) -> Inventory:
        return Inventory(site=self.site, image_ids=tuple(await self._image_ids()))

    async def run(self, bus: BusClient) -> None:
        """Publish whatever becomes due, until the connection fails (BusError)."""
        while True:
            await self.publish_once(bus)
            await self._wake.wait()
