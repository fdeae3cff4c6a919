"""The agent's journal: every task it was given, in its own SQLite database (edgesync.sqlite).

The only module of the agent with SQL. What it is for:

- **Idempotency.** A command is recorded before anything else happens to it,
  keyed by task id; a command delivered again (QoS 1 may, and the hub's
  outbox resends) finds its task and is not run twice.
- **Resume.** A copy's done ranges are recorded as it goes, only once the
  bytes are durable in the store (the replicator flushes first). A restarted
  agent runs every unfinished task again and fetches only what is missing.
- **Results that outlive the process.** A task's Done/Failed event is stored
  with its final state in one transaction and marked reported once the
  broker acknowledged it; until then it is sent again after every connect,
  with the same message id, so the hub can drop the duplicate.

`synchronous=FULL`: a commit survives a power cut. Commits are few (one per
command, state change and checkpoint), so the fsyncs cost nothing that shows.
"""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass
from pathlib import Path

from edgesync.bus.messages import CopyCommand, DeleteCommand, DoneEvent, FailedEvent, decode, encode
from edgesync.sqlite import Database, DatabaseError, Row, Schema
from edgesync.stores.base import Extent

Command = CopyCommand | DeleteCommand
Result = DoneEvent | FailedEvent

# Done ranges wait in memory until this many are pending, or until flush_done().
DONE_BATCH = 256

MIGRATIONS: list[str] = [
    # 1: tasks and the done ranges of copies. In tasks, `command` is the
    # command's wire JSON, `result` the Done/Failed event's, and `reported`
    # says the broker acknowledged `result`. (Written compactly in a later
    # edit: the same tables, columns and constraints as first released.)
    """
    CREATE TABLE tasks (task_id TEXT PRIMARY KEY, kind TEXT NOT NULL CHECK (kind IN ('copy', 'delete')),
        image_id TEXT NOT NULL, state TEXT NOT NULL CHECK (state IN ('received', 'running', 'done', 'failed')),
        command TEXT NOT NULL, result TEXT, reported INTEGER NOT NULL DEFAULT 0,
        received_at REAL NOT NULL, updated_at REAL NOT NULL);
    CREATE INDEX tasks_state ON tasks(state);
    CREATE TABLE done_ranges (task_id TEXT NOT NULL REFERENCES tasks(task_id) ON DELETE CASCADE,
        offset INTEGER NOT NULL, length INTEGER NOT NULL, PRIMARY KEY (task_id, offset));
    """,
]


class JournalError(DatabaseError):
    """The journal database failed (disk, corruption, a newer schema)."""


# A commit survives a power cut (FULL): see the module docstring.
JOURNAL = Schema(name="the journal", migrations=MIGRATIONS, error=JournalError, synchronous="FULL")


class TaskKind(str, enum.Enum):
    COPY = "copy"
    DELETE = "delete"


class TaskState(str, enum.Enum):
    RECEIVED = "received"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"

    @property
    def finished(self) -> bool:
        return self in (TaskState.DONE, TaskState.FAILED)


@dataclass(frozen=True)
class TaskRecord:
    task_id: str
    kind: TaskKind
    image_id: str
    state: TaskState
    command: Command
    result: Result | None
    reported: bool
    updated_at: float


class Journal:
    def __init__(self, db: Database) -> None:
        self._db = db
        self.path = db.path
        self._pending_done: dict[str, list[tuple[int, int]]] = {}
        self._pending_count = 0

    @classmethod
    async def open(cls, path: Path) -> Journal:
        return cls(await Database.open(path, JOURNAL))

    async def close(self) -> None:
        """Write pending done ranges, then close. Unusable afterwards."""
        try:
            await self.flush_done()
        finally:
            await self._db.close()

    # --- tasks -----------------------------------------------------------------

    async def record(self, command: Command) -> bool:
        """Record a newly arrived command; False if its task id is already known."""
        now = time.time()
        kind = TaskKind.COPY if isinstance(command, CopyCommand) else TaskKind.DELETE
        async with self._db.transaction() as tx:
            changed = await tx.execute(
                "INSERT INTO tasks (task_id, kind, image_id, state, command, received_at, updated_at) "
                "VALUES (?, ?, ?, 'received', ?, ?, ?) ON CONFLICT (task_id) DO NOTHING",
                (command.task_id, kind.value, command.image_id, encode(command).decode(), now, now))
            return changed == 1

    async def get(self, task_id: str) -> TaskRecord | None:
        rows = await self._db.rows("SELECT * FROM tasks WHERE task_id = ?", (task_id,))
        return _task(rows[0]) if rows else None

    async def set_state(self, task_id: str, state: TaskState, *, result: Result | None = None) -> None:
        """Move a task on. A finished state needs its result, which is stored
        unreported in the same transaction; the done ranges go with it."""
        if state.finished != (result is not None):
            raise ValueError(f"state {state.value} {'needs' if state.finished else 'takes no'} result")
        if state.finished:
            self._drop_pending(task_id)
        async with self._db.transaction() as tx:
            changed = await tx.execute(
                "UPDATE tasks SET state = ?, result = ?, reported = 0, updated_at = ? WHERE task_id = ?",
                (state.value, encode(result).decode() if result else None, time.time(), task_id))
            if changed != 1:
                raise JournalError(f"no task {task_id} in the journal")
            if state.finished:
                await tx.execute("DELETE FROM done_ranges WHERE task_id = ?", (task_id,))

    async def result(self, task_id: str) -> Result | None:
        rows = await self._db.rows("SELECT result FROM tasks WHERE task_id = ?", (task_id,))
        return _result(rows[0]["result"]) if rows else None

    async def mark_reported(self, task_id: str) -> None:
        """The broker acknowledged the task's result."""
        async with self._db.transaction() as tx:
            await tx.execute("UPDATE tasks SET reported = 1 WHERE task_id = ? AND result IS NOT NULL",
                             (task_id,))

    async def unreported(self) -> list[Result]:
        """Results the broker has not acknowledged yet, oldest first."""
        rows = await self._db.rows(
            "SELECT result FROM tasks WHERE result IS NOT NULL AND reported = 0 ORDER BY updated_at")
        return [r for r in (_result(row["result"]) for row in rows) if r is not None]

    async def unfinished(self) -> list[TaskRecord]:
        """Tasks received or running when the last run stopped, in arrival order."""
        rows = await self._db.rows(
            "SELECT * FROM tasks WHERE state IN ('received', 'running') ORDER BY received_at, task_id")
        return [_task(row) for row in rows]

    async def prune(self, finished_before: float) -> int:
        """Forget reported tasks finished before that time. Their task ids stop
        being duplicates: keep them longer than the hub can resend a command."""
        async with self._db.transaction() as tx:
            changed = await tx.execute(
                "DELETE FROM tasks WHERE state IN ('done', 'failed') AND reported = 1 AND updated_at < ?",
                (finished_before,))
            return changed

    # --- done ranges -------------------------------------------------------------

    async def add_done(self, task_id: str, offset: int, length: int) -> None:
        """Note `length` bytes at `offset` as durably written. Kept in memory
        and written in batches: a range lost in a crash is merely fetched again."""
        self._pending_done.setdefault(task_id, []).append((offset, length))
        self._pending_count += 1
        if self._pending_count >= DONE_BATCH:
            await self.flush_done()

    async def flush_done(self) -> None:
        """Write every pending done range, in one transaction."""
        pending, self._pending_done, self._pending_count = self._pending_done, {}, 0
        rows = [(task_id, start, end - start)
                for task_id, ranges in pending.items() for start, end in _merge(ranges)]
        if not rows:
            return
        try:
            async with self._db.transaction() as tx:
                await tx.executemany(
                    "INSERT INTO done_ranges (task_id, offset, length) VALUES (?, ?, ?) "
                    "ON CONFLICT (task_id, offset) DO UPDATE SET length = max(length, excluded.length)",
                    rows)
        except BaseException:
            for task_id, ranges in pending.items():  # not written: keep them for the next try
                self._pending_done.setdefault(task_id, []).extend(ranges)
                self._pending_count += len(ranges)
            raise

    async def done_ranges(self, task_id: str) -> list[Extent]:
        """The task's durably written ranges, merged and sorted."""
        await self.flush_done()
        rows = await self._db.rows("SELECT offset, length FROM done_ranges WHERE task_id = ?", (task_id,))
        return [Extent(start, end - start) for start, end in _merge([(r[0], r[1]) for r in rows])]

    async def clear_done(self, task_id: str) -> None:
        """Forget the task's done ranges (its partial copy is being discarded)."""
        self._drop_pending(task_id)
        async with self._db.transaction() as tx:
            await tx.execute("DELETE FROM done_ranges WHERE task_id = ?", (task_id,))

    def _drop_pending(self, task_id: str) -> None:
        self._pending_count -= len(self._pending_done.pop(task_id, []))

def _merge(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """(offset, length) pairs → sorted, merged (start, end) pairs."""
    merged: list[list[int]] = []
    for start, length in sorted(ranges):
        end = start + length
        if merged and start <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    return [(start, end) for start, end in merged]


def _task(row: Row) -> TaskRecord:
    command = decode(row["command"])
    assert isinstance(command, (CopyCommand, DeleteCommand)), "the journal only records commands"
    return TaskRecord(
        task_id=row["task_id"], kind=TaskKind(row["kind"]), image_id=row["image_id"],
        state=TaskState(row["state"]), command=command, result=_result(row["result"]),
        reported=bool(row["reported"]), updated_at=row["updated_at"],
    )


def _result(text: str | None) -> Result | None:
    if text is None:
        return None
    message = decode(text)
    assert isinstance(message, (DoneEvent, FailedEvent)), "the journal only records results"
    return message
