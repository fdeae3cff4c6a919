"""Running the hub's commands: intake, concurrency, retries, results.

`accept()` journals a command before anything else happens to it (paho has
already acknowledged it to the broker): a new task is started, unless the
agent is stopping, in which case the next start resumes it; a task id seen
before is a redelivery, and a finished task's result is sent again while a
running one is left alone.

A probe (`CheckDeletableCommand`: could this copy be deleted now?) is not a
task: it changes nothing, so it is neither journaled nor queued behind the
image's tasks; it is answered at once and the answer is not kept. Nor is a
verify (`VerifyCommand`: check and hash a copy someone else made here), but
it takes as long as hashing the image, so it is listed in flight meanwhile
(the hub would otherwise send it again) and waits for its image's turn.

Tasks run in the daemon's TaskGroup. Copies are bounded by
`max_concurrent_copies`; tasks on one image run one at a time, in arrival
order (asyncio locks are FIFO), so a delete never races the copy before it.
A retryable failure is retried with capped, jittered backoff for
`retry_window_s`; a copy keeps its partial copy and journal between attempts,
so it resumes by range. Every outcome becomes a Done or Failed event.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable

from edgesync.agent import replicator, verify
from edgesync.agent.dedup import SiteCopies
from edgesync.agent.events import EventOutbox
from edgesync.agent.journal import Command, Journal, Result, TaskState
from edgesync.backoff import Backoff
from edgesync.bus import CheckDeletableCommand, CopyCommand, DeleteCommand, DoneEvent, FailedEvent, VerifyCommand
from edgesync.errors import EdgesyncError
from edgesync.logs import log_context, task_context
from edgesync.observer import NO_OBSERVER, CopyObserver
from edgesync.stores.base import ResumableStore
from edgesync.transfer.pipeline import DataSource

log = logging.getLogger(__name__)

SourceFactory = Callable[[CopyCommand], DataSource]

RETRY_BACKOFF = (1.0, 60.0)  # initial and max delay between attempts of one task


class _ImageLocks:
    def __init__(self) -> None:
        self._locks: dict[str, asyncio.Lock] = {}

    @contextlib.asynccontextmanager
    async def hold(self, image_id: str) -> AsyncIterator[None]:
        lock = self._locks.setdefault(image_id, asyncio.Lock())
        try:
            async with lock:
                yield
        finally:
            if not lock.locked() and self._locks.get(image_id) is lock:
                del self._locks[image_id]


class TaskRunner:
    def __init__(self, store: ResumableStore, journal: Journal, events: EventOutbox, sources: SourceFactory, *,
                 max_concurrent_copies: int, retry_window_s: float,
                 observer: CopyObserver = NO_OBSERVER, site_copies: SiteCopies | None = None) -> None:
        """`observer` is told what copies write (the agent's metrics);
        `site_copies`: the manifests of the site's copies (dedup)."""
        self.store = store
        self.journal = journal
        self.events = events
        self.sources = sources
        self.retry_window_s = retry_window_s
        self.observer = observer
        self.site_copies = site_copies if site_copies is not None else SiteCopies(None)
        self.draining = False
        self._copy_slots = asyncio.Semaphore(max_concurrent_copies)
        self._images = _ImageLocks()
        self._group: asyncio.TaskGroup | None = None
        self._tasks: dict[str, asyncio.Task[None]] = {}  # task id → its runner
        self._in_flight: set[str] = set()  # task ids doing work now

    @property
    def in_flight(self) -> tuple[str, ...]:
        return tuple(sorted(self._in_flight))

    @property
    def queued(self) -> tuple[str, ...]:
        """Tasks accepted and started, waiting for a copy slot or their image's
        turn (the hub reads in_flight + queued as "the agent has it")."""
        return tuple(sorted(t for t, run in self._tasks.items() if not run.done() and t not in self._in_flight))

    # --- starting and stopping ---------------------------------------------------------

    async def start(self, group: asyncio.TaskGroup) -> None:
        """Run tasks in `group` from now on, starting with the journal's unfinished ones."""
        self._group = group
        for record in await self.journal.unfinished():
            log.info("resuming task %s (%s of image %s)", record.task_id, record.kind.value, record.image_id,
                     extra={"task_id": record.task_id, "image_id": record.image_id})
            self._spawn(record.command)

    async def drain(self, grace_s: float) -> None:
        """Start nothing more; give running tasks `grace_s`, then cancel them
        (a cancelled copy checkpoints; the next start resumes it)."""
        self.draining = True
        running = [t for t in self._tasks.values() if not t.done()]
        if not running:
            return
        log.info("stopping: %d task(s) running; waiting up to %.0f s", len(running), grace_s)
        _, late = await asyncio.wait(running, timeout=grace_s)
        for task in late:
            task.cancel()

    # --- intake ----------------------------------------------------------------------------

    async def accept(self, command: Command) -> None:
        """Journal first: the broker already counts the command as delivered."""
        with log_context(task_id=command.task_id, image_id=command.image_id):
            await self._accept(command)

    async def _accept(self, command: Command) -> None:
        if await self.journal.record(command):
            log.info("task %s: %s image %s", command.task_id, command.TYPE, command.image_id)
            if not self.draining:
                self._spawn(command)
            return
        record = await self.journal.get(command.task_id)
        if record is not None and record.result is not None:
            log.info("task %s delivered again; it is %s: answering again", command.task_id, record.state.value)
            self.events.resend(record.result)
        else:
            log.info("task %s delivered again; it is under way", command.task_id)

    def probe(self, command: CheckDeletableCommand) -> None:
        """Answer whether the copy could be deleted now (no clones depend on it)."""
        if self._group is None or self.draining:
            return  # stopping: the hub sees the site go offline and stops waiting
        self._group.create_task(self._probe(command), name=f"probe-{command.task_id}",
                                context=task_context(task_id=command.task_id, image_id=command.image_id))

    async def _probe(self, command: CheckDeletableCommand) -> None:
        result: DoneEvent | FailedEvent
        try:
            await self.store.ensure_deletable(command.image_id)
            result = DoneEvent(task_id=command.task_id, image_id=command.image_id)
        except Exception as exc:
            if not isinstance(exc, EdgesyncError):
                log.exception("probe %s failed", command.task_id)
            result = replicator.failure_event(command.task_id, exc)
        log.info("probe %s: image %s %s", command.task_id, command.image_id,
                 "can be deleted" if isinstance(result, DoneEvent) else f"can't be deleted: {result.reason}")
        self.events.reply(result)

    def verify(self, command: VerifyCommand) -> None:
        """Check and hash a published copy someone else made here; a resend
        while the check runs is left to it."""
        if self._group is None or self.draining or command.task_id in self._in_flight:
            return  # stopping: the hub sees the site go offline and stops waiting
        self._in_flight.add(command.task_id)
        self._group.create_task(self._verify(command), name=f"verify-{command.task_id}",
                                context=task_context(task_id=command.task_id, image_id=command.image_id))

    async def _verify(self, command: VerifyCommand) -> None:
        result: DoneEvent | FailedEvent
        try:
            async with self._images.hold(command.image_id):
                result = await verify.verify(command, self.store, self.site_copies)
        except Exception as exc:
            if not isinstance(exc, EdgesyncError):
                log.exception("verify %s failed", command.task_id)
            result = replicator.failure_event(command.task_id, exc)
            log.warning("verify %s: image %s: %s", command.task_id, command.image_id, result.reason)
        finally:
            self._in_flight.discard(command.task_id)
        self.events.reply(result)

    def _spawn(self, command: Command) -> None:
        if self._group is None:
            return  # not running yet (or any more): the journal keeps it for the next start
        running = self._tasks.get(command.task_id)
        if running is not None and not running.done():
            return
        task = self._group.create_task(self._run(command), name=f"task-{command.task_id}",
                                       context=task_context(task_id=command.task_id, image_id=command.image_id))
        self._tasks[command.task_id] = task
        task.add_done_callback(lambda t: self._forget(command.task_id, t))

    def _forget(self, task_id: str, task: asyncio.Task[None]) -> None:
        if self._tasks.get(task_id) is task:
            del self._tasks[task_id]

    # --- one task ----------------------------------------------------------------------------

    async def _run(self, command: Command) -> None:
        """One task, start to result. Cancelled (shutdown), it stays unfinished
        in the journal and the next start resumes it."""
        slots = self._copy_slots if isinstance(command, CopyCommand) else contextlib.nullcontext()
        try:
            async with self._images.hold(command.image_id), slots:
                await self.journal.set_state(command.task_id, TaskState.RUNNING)
                self._in_flight.add(command.task_id)
                try:
                    result = await self._attempts(command)
                finally:
                    self._in_flight.discard(command.task_id)
                await self.events.finish(command.task_id, result)
        except EdgesyncError as exc:  # the journal failed: the task stays unfinished
            log.error("task %s: %s; it will be resumed at the next start", command.task_id, exc.message)
            return
        if isinstance(result, DoneEvent):
            self.events.inventory_changed()

    async def _attempts(self, command: Command) -> Result:
        """Run the task, retrying retryable failures with backoff within the retry window."""
        backoff = Backoff(*RETRY_BACKOFF)
        give_up_at = time.monotonic() + self.retry_window_s
        while True:
            try:
                return await self._execute(command)
            except Exception as exc:
                failed = replicator.failure_event(command.task_id, exc)
                if not isinstance(exc, EdgesyncError):
                    log.exception("task %s failed", command.task_id)
                delay_s = backoff.next_delay_s()
                if not failed.retryable or time.monotonic() + delay_s > give_up_at:
                    log.warning("task %s failed: %s", command.task_id, failed.reason)
                    await self._discard_partial(command)
                    return failed
                log.warning("task %s: %s; trying again in %.1f s", command.task_id, failed.reason, delay_s)
                await asyncio.sleep(delay_s)

    async def _execute(self, command: Command) -> DoneEvent:
        if isinstance(command, DeleteCommand):
            await replicator.delete(command, self.store, self.site_copies)
            self.events.inventory_changed()
            return DoneEvent(task_id=command.task_id, image_id=command.image_id)
        location = await replicator.copy(
            command, self.store, self.journal, self.sources(command),
            lambda done, total: self.events.progress(command.task_id, done, total), observer=self.observer,
            site=self.site_copies)
        return DoneEvent(task_id=command.task_id, image_id=command.image_id, location_url=location.url)

    async def _discard_partial(self, command: Command) -> None:
        """A copy given up on kept its partial copy for a retry that won't come."""
        if not isinstance(command, CopyCommand):
            return
        try:
            await self.store.discard_unpublished(command.image_id)
        except EdgesyncError as exc:  # the next copy of this image discards it anyway
            log.warning("task %s: could not remove the partial copy: %s", command.task_id, exc.message)
