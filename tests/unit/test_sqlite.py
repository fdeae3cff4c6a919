"""The SQLite layer on real files: user_version migrations (atomic, in order,
refused when newer, an older scheme adopted once), sqlite errors as the
schema's own error, transactions that roll back on errors and cancellation."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiosqlite
import pytest

from edgesync.errors import EdgesyncError
from edgesync.sqlite import Database, DatabaseError, Schema, Transaction, statements


class ThingsError(DatabaseError):
    pass


THINGS = Schema(name="the things", error=ThingsError, migrations=[
    "CREATE TABLE things (id TEXT PRIMARY KEY, n INTEGER NOT NULL); -- the first; with a semicolon",
    "ALTER TABLE things ADD COLUMN note TEXT DEFAULT 'a;b';\nCREATE INDEX things_n ON things(n);",
])


@pytest.fixture
async def db(tmp_path: Path) -> AsyncIterator[Database]:
    database = await Database.open(tmp_path / "sub" / "things.sqlite3", THINGS)
    try:
        yield database
    finally:
        await database.close()


def test_statements_end_only_at_semicolons_outside_literals_and_comments() -> None:
    assert statements(THINGS.migrations[1]) == [
        "ALTER TABLE things ADD COLUMN note TEXT DEFAULT 'a;b';", "CREATE INDEX things_n ON things(n);"]
    assert statements("-- a comment; still one\nCREATE TABLE x (y);\n  ") == [
        "-- a comment; still one\nCREATE TABLE x (y);"]


async def test_a_new_database_has_every_migration_and_the_pragmas(db: Database) -> None:
    assert await db.version() == 2
    async with db.transaction() as tx:
        await tx.execute("INSERT INTO things (id, n) VALUES ('a', 1)")
    assert [tuple(r) for r in await db.rows("SELECT id, n, note FROM things")] == [("a", 1, "a;b")]
    with sqlite3.connect(db.path) as raw:
        assert raw.execute("PRAGMA journal_mode").fetchone() == ("wal",)


async def test_migrations_run_on_from_the_version_a_file_is_at(tmp_path: Path) -> None:
    path = tmp_path / "things.sqlite3"
    first = Schema(name="the things", migrations=THINGS.migrations[:1])
    await (await Database.open(path, first)).close()
    database = await Database.open(path, THINGS)
    try:
        assert await database.version() == 2
        assert await database.row("SELECT name FROM sqlite_master WHERE name = 'things_n'") is not None
    finally:
        await database.close()


async def test_a_failing_migration_leaves_the_version_before_it(tmp_path: Path) -> None:
    path = tmp_path / "things.sqlite3"
    broken = Schema(name="the things", error=ThingsError,
                    migrations=[*THINGS.migrations, "CREATE TABLE more (x); CREATE TABLE things (x)"])
    with pytest.raises(ThingsError, match=r"cannot open the things .*: migration 3 failed: table things already exists"):
        await Database.open(path, broken)
    with sqlite3.connect(path) as raw:
        assert raw.execute("PRAGMA user_version").fetchone() == (2,)
        assert raw.execute("SELECT name FROM sqlite_master WHERE name = 'more'").fetchone() is None


async def test_a_newer_database_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "things.sqlite3"
    await (await Database.open(path, THINGS)).close()
    with sqlite3.connect(path) as raw:
        raw.execute("PRAGMA user_version = 7")
    with pytest.raises(ThingsError, match=r"has schema 7, newer than this edgesync understands \(2\)"):
        await Database.open(path, THINGS)


async def test_an_adopter_runs_only_on_a_database_at_version_zero(tmp_path: Path) -> None:
    path = tmp_path / "things.sqlite3"
    calls: list[int] = []

    async def adopt(tx: Transaction) -> None:
        calls.append(1)
        if await tx.row("SELECT 1 FROM sqlite_master WHERE name = 'old_version'") is not None:
            await tx.execute("PRAGMA user_version = 1")  # as if migration 1 had run
            await tx.execute("DROP TABLE old_version")

    with sqlite3.connect(path) as raw:
        raw.executescript(f"CREATE TABLE old_version (v); {THINGS.migrations[0]}")
    adopting = Schema(name="the things", migrations=THINGS.migrations, adopt=adopt)
    await (await Database.open(path, adopting)).close()
    await (await Database.open(path, adopting)).close()
    assert calls == [1]
    with sqlite3.connect(path) as raw:
        assert raw.execute("PRAGMA user_version").fetchone() == (2,)


async def test_sqlite_errors_become_the_schemas_error_and_roll_back(db: Database) -> None:
    with pytest.raises(ThingsError, match=r"the things .* write failed: UNIQUE constraint") as raised:
        async with db.transaction() as tx:
            await tx.execute("INSERT INTO things (id, n) VALUES ('a', 1)")
            await tx.execute("INSERT INTO things (id, n) VALUES ('a', 2)")
    assert isinstance(raised.value, EdgesyncError) and isinstance(raised.value.__cause__, sqlite3.IntegrityError)
    assert await db.rows("SELECT * FROM things") == []
    with pytest.raises(ThingsError, match="query failed: no such table"):
        await db.rows("SELECT * FROM missing")


async def test_a_file_that_is_not_a_database_or_a_path_that_cant_be_made_is_the_schemas_error(
        tmp_path: Path) -> None:
    (tmp_path / "junk").write_bytes(b"not a database" * 100)
    with pytest.raises(ThingsError, match=r"cannot open the things .*junk: file is not a database"):
        await Database.open(tmp_path / "junk", THINGS)
    with pytest.raises(ThingsError, match="cannot open the things"):
        await Database.open(tmp_path / "junk" / "below-a-file.sqlite3", THINGS)


async def test_a_body_that_raises_or_is_cancelled_rolls_back_and_the_next_transaction_works(
        db: Database) -> None:
    with pytest.raises(ValueError):
        async with db.transaction() as tx:
            await tx.execute("INSERT INTO things (id, n) VALUES ('a', 1)")
            raise ValueError("the caller's own error passes through")
    started = asyncio.Event()

    async def slow_writer() -> None:
        async with db.transaction() as tx:
            await tx.execute("INSERT INTO things (id, n) VALUES ('b', 1)")
            started.set()
            await asyncio.Event().wait()

    writer = asyncio.create_task(slow_writer())
    await started.wait()
    writer.cancel()
    await asyncio.gather(writer, return_exceptions=True)
    async with db.transaction() as tx:
        assert await tx.execute("INSERT INTO things (id, n) VALUES ('c', 1)") == 1
    assert [r["id"] for r in await db.rows("SELECT id FROM things")] == ["c"]


async def test_transactions_of_concurrent_coroutines_do_not_interleave(db: Database) -> None:
    async def add(n: int) -> None:
        async with db.transaction() as tx:
            row = await tx.row("SELECT COUNT(*) AS count FROM things")
            assert row is not None
            await asyncio.sleep(0)  # another coroutine's statements would land here
            await tx.execute("INSERT INTO things (id, n) VALUES (?, ?)", (f"t{n}", row["count"]))

    await asyncio.gather(*(add(n) for n in range(20)))
    assert sorted(r["n"] for r in await db.rows("SELECT n FROM things")) == list(range(20))


async def test_a_new_database_file_is_readable_by_its_owner_only(db: Database) -> None:
    async with db.transaction() as tx:
        await tx.execute("INSERT INTO things (id, n) VALUES ('a', 1)")
    files = list(db.path.parent.iterdir())
    assert db.path in files
    for path in files:  # the database, its -wal and -shm
        assert path.stat().st_mode & 0o777 == 0o600, path


class TripCounter:
    """Counts calls run on aiosqlite's connection thread (each a trip there
    and back: one event loop turn at least, with the database's lock held)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.trips = 0
        original = aiosqlite.Connection._execute

        async def counted(conn: aiosqlite.Connection, fn: Any, *args: Any, **kwargs: Any) -> Any:
            self.trips += 1
            return await original(conn, fn, *args, **kwargs)

        monkeypatch.setattr(aiosqlite.Connection, "_execute", counted)


async def test_a_read_is_one_trip_to_the_connections_thread(db: Database, monkeypatch: pytest.MonkeyPatch) -> None:
    """The lock is held for every trip its holder makes: a read that was
    execute + fetch + cursor close (three turns of a loop that, with a copy
    to hundreds of sites, took up to half a second each) kept the API's reads
    queued behind it."""
    async with db.transaction() as tx:
        await tx.executemany("INSERT INTO things (id, n) VALUES (?, ?)", [("a", 1), ("b", 2)])
    counter = TripCounter(monkeypatch)
    assert [r["id"] for r in await db.rows("SELECT id FROM things ORDER BY id")] == ["a", "b"]
    assert counter.trips == 1
    assert (await db.row("SELECT n FROM things WHERE id = ?", ("b",)))["n"] == 2  # type: ignore[index]
    assert await db.row("SELECT n FROM things WHERE id = ?", ("zz",)) is None
    assert counter.trips == 3
    async with db.transaction() as tx:
        before = counter.trips
        assert (await tx.row("SELECT n FROM things WHERE id = ?", ("a",)))["n"] == 1  # type: ignore[index]
        assert [r["n"] for r in await tx.rows("SELECT n FROM things ORDER BY n")] == [1, 2]
        assert counter.trips - before == 2


async def test_a_read_does_not_wait_for_an_open_transaction_and_sees_only_committed_rows(db: Database) -> None:
    """Reads outside transactions go to their own connection: they queued for
    the writer's lock behind every transaction (seconds for the API during a
    copy to hundreds of sites), and they must still never see one half done."""
    async with db.transaction() as tx:
        await tx.execute("INSERT INTO things (id, n) VALUES ('committed', 1)")
    async with db.transaction() as tx:
        await tx.execute("INSERT INTO things (id, n) VALUES ('pending', 2)")
        async with asyncio.timeout(5):
            seen = await asyncio.create_task(db.rows("SELECT id FROM things ORDER BY id"))
        assert [r["id"] for r in seen] == ["committed"]
    assert [r["id"] for r in await db.rows("SELECT id FROM things ORDER BY id")] == ["committed", "pending"]
    with pytest.raises(ThingsError, match="readonly"):
        await db.rows("DELETE FROM things")  # the reader writes nothing, even by mistake
