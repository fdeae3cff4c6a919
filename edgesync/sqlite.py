"""The one SQLite layer: every database edgesync keeps (the hub's catalog, an
agent's journal) is opened, migrated, read and written through here, and this
is the only module that imports sqlite3 or aiosqlite.

- **Opening** sets the pragmas every database wants (WAL, foreign keys, a busy
  timeout) and the durability its `Schema` asks for (`synchronous`).
- **Two connections per database**, each shared by every coroutine: the
  writer's, for transactions (an asyncio lock keeps them from interleaving on
  it), and a reader's (query_only) for reads outside transactions. Under WAL
  the reader sees only committed transactions, so a read never sees another
  coroutine's transaction half done and needs no lock. With one connection
  for both, reads took the lock and queued behind every transaction and
  every other read: during a copy to hundreds of sites, seconds.
- **One trip to the connection's thread per statement** (a read's execute,
  fetch and cursor close in one call): the lock is held for as many event
  loop turns as its holder makes trips, and with a copy to hundreds of sites
  a turn took up to half a second, so every trip was time every other
  catalog user (the API's reads among them) queued for the lock.
- **`transaction()`** is BEGIN IMMEDIATE … COMMIT, safe against cancellation:
  a BEGIN cancelled in flight still runs on the connection's thread, so it is
  rolled back; COMMIT and ROLLBACK are shielded, so a cancelled caller never
  leaves a transaction open for the next one to trip on.
- **Errors**: every sqlite3 error (and a directory that can't be made) becomes
  the schema's own `DatabaseError` subclass, naming the database and its path.
- **Migrations** live in `PRAGMA user_version`: `migrations[i]` takes the
  database from version i to i + 1 in one transaction, the version bump
  included, so a crash leaves either version. A database newer than the code
  is refused. A released migration is never edited; changes are new entries.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiosqlite

from edgesync.errors import EdgesyncError

Row = sqlite3.Row


class DatabaseError(EdgesyncError):
    """A database failed (disk, corruption, lock timeout, a newer schema)."""


class Transaction:
    """The statements of one open transaction (only inside `Database.transaction()`)."""

    def __init__(self, conn: aiosqlite.Connection) -> None:
        self._conn = conn

    async def execute(self, sql: str, args: Sequence[Any] = ()) -> int:
        """Run one statement; how many rows it changed."""
        cursor = await self._conn.execute(sql, args)
        return cursor.rowcount

    async def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        await self._conn.executemany(sql, rows)

    async def rows(self, sql: str, args: Sequence[Any] = ()) -> list[Row]:
        return list(await self._conn.execute_fetchall(sql, args))

    async def row(self, sql: str, args: Sequence[Any] = ()) -> Row | None:
        rows = await self.rows(sql, args)
        return rows[0] if rows else None


# Run once, before the migrations, in its own transaction: lets a database
# kept under an older versioning scheme say which version it is at.
Adopter = Callable[[Transaction], Awaitable[None]]


@dataclass(frozen=True)
class Schema:
    """What kind of database a file is: its name in messages, its migrations,
    the error class it raises, and how durable a commit must be."""

    name: str  # "catalog", "the journal": as messages say "cannot open {name} {path}"
    migrations: Sequence[str]
    error: type[DatabaseError] = DatabaseError
    synchronous: str = "NORMAL"  # FULL: a commit survives a power cut, not only a crash
    adopt: Adopter | None = None

    @property
    def latest_version(self) -> int:
        return len(self.migrations)


class Database:
    def __init__(self, conn: aiosqlite.Connection, path: Path, schema: Schema) -> None:
        self._conn = conn
        self.path = path
        self.schema = schema
        # One connection serves every coroutine: transactions must not interleave.
        self._lock = asyncio.Lock()
        self._reader: aiosqlite.Connection | None = None  # reads outside transactions, once migrated

    @classmethod
    async def open(cls, path: Path, schema: Schema) -> Database:
        """Open (creating it and its directory if need be) and migrate to the latest version."""
        path = Path(path)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            _create_private(path)
            conn = await aiosqlite.connect(str(path), isolation_level=None)
        except (OSError, sqlite3.Error) as exc:
            raise schema.error(f"cannot open {schema.name} {path}: {exc}") from exc
        conn.row_factory = sqlite3.Row
        database = cls(conn, path, schema)
        try:
            for pragma in ("journal_mode=WAL", f"synchronous={schema.synchronous}",
                           "foreign_keys=ON", "busy_timeout=5000"):
                await conn.execute(f"PRAGMA {pragma}")
            await database._migrate()
            database._reader = await _open_reader(path)
        except BaseException as exc:
            # Close it, or its thread keeps a process that failed to start from exiting.
            await asyncio.shield(conn.close())
            if isinstance(exc, sqlite3.Error):
                raise schema.error(f"cannot open {schema.name} {path}: {exc}") from exc
            raise
        return database

    async def close(self) -> None:
        if self._reader is not None:
            await self._reader.close()
        await self._conn.close()

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[Transaction]:
        """BEGIN IMMEDIATE … COMMIT; rolled back if the body raises or is cancelled."""
        async with self._lock:
            try:
                await self._conn.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as exc:
                raise self._error("busy", exc) from exc
            except asyncio.CancelledError:
                # The BEGIN still runs on the connection's thread (statements
                # run there in order): end what it opens, or every later BEGIN fails.
                await self._rollback()
                raise
            try:
                yield Transaction(self._conn)
            except BaseException as exc:
                await self._rollback()
                if isinstance(exc, sqlite3.Error):
                    raise self._error("write failed", exc) from exc
                raise
            try:
                # Shielded: a cancelled caller must not leave the transaction open.
                await asyncio.shield(self._conn.execute("COMMIT"))
            except sqlite3.Error as exc:
                raise self._error("commit failed", exc) from exc

    async def rows(self, sql: str, args: Sequence[Any] = ()) -> list[Row]:
        """A read outside any transaction: on the reader, without the lock (see the module docstring)."""
        try:
            if self._reader is not None:
                return list(await self._reader.execute_fetchall(sql, args))
            async with self._lock:  # migrating: no reader yet
                return list(await self._conn.execute_fetchall(sql, args))
        except sqlite3.Error as exc:
            raise self._error("query failed", exc) from exc

    async def row(self, sql: str, args: Sequence[Any] = ()) -> Row | None:
        rows = await self.rows(sql, args)
        return rows[0] if rows else None

    async def version(self) -> int:
        row = await self.row("PRAGMA user_version")
        return int(row[0]) if row is not None else 0

    async def _rollback(self) -> None:
        with contextlib.suppress(sqlite3.Error):  # no transaction to end (the BEGIN failed)
            await asyncio.shield(self._conn.execute("ROLLBACK"))

    def _error(self, what: str, exc: sqlite3.Error) -> DatabaseError:
        return self.schema.error(f"{self.schema.name} {self.path} {what}: {exc}")

    async def _migrate(self) -> None:
        if self.schema.adopt is not None and await self.version() == 0:
            async with self.transaction() as tx:
                await self.schema.adopt(tx)
        current, latest = await self.version(), self.schema.latest_version
        if current > latest:
            raise self.schema.error(
                f"{self.schema.name} {self.path} has schema {current}, newer than this edgesync "
                f"understands ({latest}); upgrade edgesync")
        for number in range(current + 1, latest + 1):
            try:
                async with self.transaction() as tx:
                    for statement in statements(self.schema.migrations[number - 1]):
                        await tx.execute(statement)
                    await tx.execute(f"PRAGMA user_version = {number:d}")
            except DatabaseError as exc:
                raise self.schema.error(
                    f"cannot open {self.schema.name} {self.path}: migration {number} failed: {exc.__cause__}"
                ) from exc.__cause__


def statements(script: str) -> list[str]:
    """Split a migration script into its statements (semicolons inside
    literals and comments are not statement ends: sqlite3 says where one is)."""
    found: list[str] = []
    pending = ""
    for piece in script.split(";"):
        pending += piece + ";"
        if sqlite3.complete_statement(pending):
            if pending.strip(" \t\n;"):
                found.append(pending.strip())
            pending = ""
    if pending.strip(" \t\n;"):
        found.append(pending.strip().rstrip(";"))
    return found


async def _open_reader(path: Path) -> aiosqlite.Connection:
    """A second connection for reads outside transactions: under WAL it sees
    only committed transactions, so it needs no lock, and reads don't queue
    behind writers' trips (or each other's) for the writer's connection."""
    reader = await aiosqlite.connect(str(path), isolation_level=None)
    reader.row_factory = sqlite3.Row
    try:
        for pragma in ("query_only=ON", "foreign_keys=ON", "busy_timeout=5000"):
            await reader.execute(f"PRAGMA {pragma}")
    except BaseException:
        await asyncio.shield(reader.close())
        raise
    return reader


def _create_private(path: Path) -> None:
    """Create the database file 0600 if it is new: it holds what callers sent
    (SQLite creates the -wal and -shm files with the database's mode)."""
    with contextlib.suppress(FileExistsError):
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
