"""Running a task: in the background or awaited, holding the image's import
lock (renewed while the work runs, so it lapses only if the hub dies), with
the task's ids on every log line, and a crash that can't leave the image
locked."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from edgesync.catalog import Catalog
from edgesync.logs import log_context
from edgesync.model import Task

log = logging.getLogger(__name__)

CrashHandler = Callable[[Task, Exception], Awaitable[None]]


class TaskRunner:
    def __init__(self, catalog: Catalog, *, lock_ttl_s: float, on_crash: CrashHandler) -> None:
        """`on_crash(task, exc)` ends a task whose work raised (a bug): it
        must fail the task's jobs and finish it."""
        self.catalog = catalog
        self.lock_ttl_s = lock_ttl_s
        self._on_crash = on_crash
        self.running: dict[str, asyncio.Task[None]] = {}

    def spawn(self, task: Task, work: Awaitable[None]) -> None:
        """Run `work` for `task` in the background."""
        runner = asyncio.create_task(self.run(task, work), name=f"task-{task.id}")
        self.running[task.id] = runner
        runner.add_done_callback(lambda _: self.running.pop(task.id, None))

    async def run(self, task: Task, work: Awaitable[None]) -> None:
        """Run `work` for `task` here, renewing its lock meanwhile."""
        with log_context(task_id=task.id, image_id=task.image_id):
            await self._run_renewing(task, work)

    async def _run_renewing(self, task: Task, work: Awaitable[None]) -> None:
        renewer = asyncio.create_task(self._renew_lock(task), name=f"lock-{task.id}")
        try:
            await work
        except asyncio.CancelledError:
            raise  # shutdown: the next start's recovery finishes this task
        except Exception as exc:  # a bug must not leave the image locked
            log.exception("task %s crashed", task.id)
            await self._on_crash(task, exc)
        finally:
            renewer.cancel()

    async def _renew_lock(self, task: Task) -> None:
        while True:
            await asyncio.sleep(self.lock_ttl_s / 3)
            if not await self.catalog.renew_lock(task.image_id, task.id, self.lock_ttl_s):
                log.warning("task %s lost the lock on image %s", task.id, task.image_id)
                return

    async def shutdown(self, grace_s: float = 5.0) -> None:
        """Give running tasks `grace_s`, then cancel them (recovery finishes them)."""
        tasks = list(self.running.values())
        if tasks:
            await asyncio.wait(tasks, timeout=grace_s)
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def wait_idle(self) -> None:
        """Tests and benchmarks: wait until no task is running."""
        while self.running:
            await asyncio.gather(*list(self.running.values()), return_exceptions=True)
