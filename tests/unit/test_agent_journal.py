"""The agent's journal on a real SQLite file: idempotency, states, results owed
to the hub, done ranges for resume, and what survives a reopen."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from edgesync.agent import journal as journal_module
from edgesync.agent.journal import Journal, JournalError, TaskKind, TaskState
from edgesync.bus import CopyCommand, DeleteCommand, DoneEvent, FailedEvent
from edgesync.bus.messages import encode
from edgesync.stores.base import Extent

MiB = 1 << 20


def copy(task_id: str = "t1", image_id: str = "img-1") -> CopyCommand:
    return CopyCommand(task_id=task_id, image_id=image_id, size_bytes=64 * MiB,
                       os_hash_value="ab" * 64, source_url="http://hub:9292")


@pytest.fixture
async def journal(tmp_path: Path) -> AsyncIterator[Journal]:
    j = await Journal.open(tmp_path / "state" / "journal.sqlite3")
    try:
        yield j
    finally:
        await j.close()


async def reopen(j: Journal) -> Journal:
    await j.close()
    return await Journal.open(j.path)


async def test_a_command_is_recorded_once(journal: Journal) -> None:
    command = copy()
    assert await journal.record(command) is True
    assert await journal.record(command) is False  # redelivered: a duplicate
    record = await journal.get("t1")
    assert record is not None
    assert (record.kind, record.image_id, record.state) == (TaskKind.COPY, "img-1", TaskState.RECEIVED)
    assert record.command == command and record.result is None
    assert await journal.get("nope") is None


async def test_a_resend_with_another_message_id_is_still_a_duplicate(journal: Journal) -> None:
    assert await journal.record(DeleteCommand(task_id="d1", image_id="img-1"))
    assert not await journal.record(DeleteCommand(task_id="d1", image_id="img-1"))


async def test_unfinished_tasks_survive_a_reopen_in_arrival_order(journal: Journal) -> None:
    for n in (3, 1, 2):
        await journal.record(copy(f"t{n}", f"img-{n}"))
    await journal.record(DeleteCommand(task_id="d1", image_id="img-9"))
    await journal.set_state("t1", TaskState.RUNNING)
    await journal.set_state("t2", TaskState.DONE, result=DoneEvent(task_id="t2", image_id="img-2"))
    journal = await reopen(journal)
    try:
        unfinished = await journal.unfinished()
        assert [t.task_id for t in unfinished] == ["t3", "t1", "d1"]
        assert [t.state for t in unfinished] == [TaskState.RECEIVED, TaskState.RUNNING, TaskState.RECEIVED]
        assert unfinished[2].kind is TaskKind.DELETE
    finally:
        await journal.close()


async def test_results_are_owed_until_reported(journal: Journal) -> None:
    await journal.record(copy("t1"))
    await journal.record(copy("t2", "img-2"))
    done = DoneEvent(task_id="t1", image_id="img-1", location_url="file:///s/img-1")
    failed = FailedEvent(task_id="t2", reason="store full", retryable=False, code="store_full")
    await journal.set_state("t1", TaskState.DONE, result=done)
    await journal.set_state("t2", TaskState.FAILED, result=failed)
    assert await journal.unreported() == [done, failed]  # same message ids: resends are duplicates
    assert await journal.result("t1") == done and await journal.result("t2") == failed

    await journal.mark_reported("t1")
    journal = await reopen(journal)
    try:
        assert await journal.unreported() == [failed]
        record = await journal.get("t1")
        assert record is not None and record.reported and record.state is TaskState.DONE
        assert await journal.unfinished() == []
    finally:
        await journal.close()


async def test_a_finished_state_needs_a_result_and_a_running_one_refuses_one(journal: Journal) -> None:
    await journal.record(copy())
    with pytest.raises(ValueError):
        await journal.set_state("t1", TaskState.DONE)
    with pytest.raises(ValueError):
        await journal.set_state("t1", TaskState.RUNNING, result=DoneEvent(task_id="t1", image_id="img-1"))
    with pytest.raises(JournalError, match="no task nope"):
        await journal.set_state("nope", TaskState.RUNNING)


async def test_done_ranges_merge_and_survive_a_reopen(journal: Journal) -> None:
    await journal.record(copy())
    # Written out of order, as concurrent writes complete; one overlap, one gap.
    for offset in (8, 0, 4, 20, 6):
        await journal.add_done("t1", offset * MiB, 4 * MiB if offset != 6 else MiB)
    assert await journal.done_ranges("t1") == [Extent(0, 12 * MiB), Extent(20 * MiB, 4 * MiB)]
    journal = await reopen(journal)
    try:
        assert await journal.done_ranges("t1") == [Extent(0, 12 * MiB), Extent(20 * MiB, 4 * MiB)]
        await journal.add_done("t1", 12 * MiB, 8 * MiB)  # fills the gap, across two batches
        assert await journal.done_ranges("t1") == [Extent(0, 24 * MiB)]
    finally:
        await journal.close()


async def test_done_ranges_are_batched(journal: Journal, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(journal_module, "DONE_BATCH", 3)
    await journal.record(copy())
    await journal.add_done("t1", 0, MiB)
    await journal.add_done("t1", 2 * MiB, MiB)
    assert _rows(journal, "SELECT count(*) FROM done_ranges") == 0  # cheap: nothing written yet
    await journal.add_done("t1", MiB, MiB)
    assert _rows(journal, "SELECT count(*) FROM done_ranges") == 1  # one batch, merged into one row


async def test_pending_ranges_are_written_on_close(journal: Journal) -> None:
    await journal.record(copy())
    await journal.add_done("t1", 0, MiB)
    journal = await reopen(journal)
    try:
        assert await journal.done_ranges("t1") == [Extent(0, MiB)]
    finally:
        await journal.close()


async def test_finishing_or_clearing_forgets_the_ranges(journal: Journal) -> None:
    await journal.record(copy("t1"))
    await journal.record(copy("t2", "img-2"))
    await journal.add_done("t1", 0, MiB)
    await journal.add_done("t2", 0, MiB)
    await journal.flush_done()
    await journal.add_done("t1", MiB, MiB)  # still pending in memory
    await journal.set_state("t1", TaskState.DONE, result=DoneEvent(task_id="t1", image_id="img-1"))
    await journal.clear_done("t2")
    assert await journal.done_ranges("t1") == [] and await journal.done_ranges("t2") == []


async def test_prune_forgets_only_old_reported_results(journal: Journal) -> None:
    for n in (1, 2, 3):
        await journal.record(copy(f"t{n}", f"img-{n}"))
    for n in (1, 2):
        await journal.set_state(f"t{n}", TaskState.DONE, result=DoneEvent(task_id=f"t{n}", image_id=f"img-{n}"))
    await journal.mark_reported("t1")
    assert await journal.prune(finished_before=0) == 0
    assert await journal.prune(finished_before=float("inf")) == 1  # t2 is still owed, t3 unfinished
    assert await journal.get("t1") is None
    assert await journal.get("t2") is not None and await journal.get("t3") is not None


async def test_a_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "journal.sqlite3"
    await (await Journal.open(path)).close()  # creates it
    with sqlite3.connect(path) as db:
        db.execute("PRAGMA user_version = 99")
    with pytest.raises(JournalError, match="schema 99, newer than this edgesync"):
        await Journal.open(path)


async def test_a_journal_written_before_edgesync_sqlite_opens_with_its_tasks(tmp_path: Path) -> None:
    path, command = tmp_path / "journal.sqlite3", copy()
    with sqlite3.connect(path, isolation_level=None) as db:  # as that code wrote it: the version in user_version
        db.execute("PRAGMA journal_mode=WAL")
        db.executescript(f"BEGIN IMMEDIATE; {journal_module.MIGRATIONS[0]}; PRAGMA user_version = 1; COMMIT;")
        db.execute("INSERT INTO tasks (task_id, kind, image_id, state, command, received_at, updated_at) "
                   "VALUES ('t1', 'copy', 'img-1', 'running', ?, 1.0, 1.0)", (encode(command).decode(),))
        db.execute("INSERT INTO done_ranges VALUES ('t1', 0, ?)", (MiB,))
    journal = await Journal.open(path)
    try:
        [task] = await journal.unfinished()
        assert (task.task_id, task.state, task.command) == ("t1", TaskState.RUNNING, command)
        assert await journal.done_ranges("t1") == [Extent(0, MiB)]
    finally:
        await journal.close()
    assert _rows(journal, "PRAGMA user_version") == len(journal_module.MIGRATIONS)


async def test_a_file_that_is_not_a_database_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "journal.sqlite3"
    path.write_bytes(b"not sqlite at all" * 100)
    with pytest.raises(JournalError, match="cannot open the journal"):
        await Journal.open(path)


def _rows(journal: Journal, sql: str) -> int:
    with sqlite3.connect(journal.path) as db:
        return db.execute(sql).fetchone()[0]
