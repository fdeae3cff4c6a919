"""Catalog schema, as an ordered list of migrations (run by edgesync.sqlite).

`MIGRATIONS[i]` takes the database from version i to i + 1. A released
migration is never edited: changes go in a new entry at the end.

The version is kept in `PRAGMA user_version`, as the agent's journal keeps
its own. Catalogs written before edgesync.sqlite kept it in a one-row table
`schema_version`; opening one moves that number to `user_version` and drops
the table (`adopt_schema_version_table`), then migrates on from there.
"""

from __future__ import annotations

from edgesync.sqlite import DatabaseError, Schema, Transaction

MIGRATIONS: list[str] = [
    # 1: images, their properties, tags, members, locations, tasks, locks, outbox
    """
    CREATE TABLE images (
        id               TEXT PRIMARY KEY,
        name             TEXT,
        status           TEXT NOT NULL,
        disk_format      TEXT,
        container_format TEXT,
        visibility       TEXT NOT NULL,
        size             INTEGER,
        virtual_size     INTEGER,
        checksum         TEXT,
        os_hash_algo     TEXT,
        os_hash_value    TEXT,
        protected        INTEGER NOT NULL DEFAULT 0,
        os_hidden        INTEGER NOT NULL DEFAULT 0,
        owner            TEXT,
        min_ram          INTEGER NOT NULL DEFAULT 0,
        min_disk         INTEGER NOT NULL DEFAULT 0,
        created_at       TEXT NOT NULL,
        updated_at       TEXT NOT NULL
    );
    CREATE INDEX images_owner ON images(owner);
    CREATE TABLE image_properties (
        image_id TEXT NOT NULL REFERENCES images(id) ON DELETE CASCADE,
        key      TEXT NOT NULL,
        value    TEXT NOT NULL,
        PRIMARY KEY (image_id, key)
    );
    CREATE TABLE image_tags (
        image_id TEXT NOT NULL REFERENCES images(id) ON DELETE CASCADE,
        tag      TEXT NOT NULL,
        PRIMARY KEY (image_id, tag)
    );
    CREATE TABLE image_members (
        image_id TEXT NOT NULL REFERENCES images(id) ON DELETE CASCADE,
        member   TEXT NOT NULL,
        status   TEXT NOT NULL DEFAULT 'pending',
        PRIMARY KEY (image_id, member)
    );
    -- one location per store: the (image_id, store) key enforces it
    CREATE TABLE locations (
        image_id   TEXT NOT NULL REFERENCES images(id) ON DELETE CASCADE,
        store      TEXT NOT NULL,
        url        TEXT NOT NULL,
        created_at TEXT NOT NULL,
        PRIMARY KEY (image_id, store)
    );
    CREATE TABLE tasks (
        id                      TEXT PRIMARY KEY,
        image_id                TEXT NOT NULL,
        owner                   TEXT,
        user_id                 TEXT,
        method                  TEXT NOT NULL,
        stores                  TEXT NOT NULL,
        all_stores_must_succeed INTEGER NOT NULL,
        status                  TEXT NOT NULL,
        message                 TEXT NOT NULL DEFAULT '',
        input                   TEXT NOT NULL DEFAULT '{}',
        created_at              TEXT NOT NULL,
        updated_at              TEXT NOT NULL
    );
    CREATE INDEX tasks_image ON tasks(image_id);
    CREATE INDEX tasks_status ON tasks(status);
    CREATE TABLE store_jobs (
        task_id     TEXT NOT NULL REFERENCES tasks(id) ON DELETE CASCADE,
        store       TEXT NOT NULL,
        state       TEXT NOT NULL,
        reason      TEXT NOT NULL DEFAULT '',
        bytes_done  INTEGER NOT NULL DEFAULT 0,
        bytes_total INTEGER NOT NULL DEFAULT 0,
        updated_at  TEXT NOT NULL,
        PRIMARY KEY (task_id, store)
    );
    -- the per-image import lock; expires_at lets a dead holder's lock lapse
    CREATE TABLE import_locks (
        image_id   TEXT PRIMARY KEY,
        task_id    TEXT NOT NULL,
        expires_at REAL NOT NULL
    );
    -- transactional outbox: rows written in the same transaction as the task
    -- state they announce; a publisher drains them (at-least-once)
    CREATE TABLE outbox (
        id           INTEGER PRIMARY KEY AUTOINCREMENT,
        topic        TEXT NOT NULL,
        payload      TEXT NOT NULL,
        created_at   REAL NOT NULL,
        published_at REAL
    );
    CREATE INDEX outbox_unpublished ON outbox(published_at) WHERE published_at IS NULL;
    """,
    # 2: deletes sent to a site's agent and not confirmed yet (the site may be
    # offline). No reference to images: an image delete outlives the image.
    """
    CREATE TABLE pending_deletes (
        task_id    TEXT PRIMARY KEY,
        image_id   TEXT NOT NULL,
        site       TEXT NOT NULL,
        created_at REAL NOT NULL,
        last_error TEXT
    );
    CREATE INDEX pending_deletes_site ON pending_deletes(site, created_at);
    """,
    # 3: the x-openstack-request-id of the request that started a task (Glance's request_id)
    """
    ALTER TABLE tasks ADD COLUMN request_id TEXT;
    """,
    # 4: tasks created through Glance's tasks API (POST /v2/tasks): their type
    # and input as the client sent them (catalog/glance_tasks.py)
    """
    CREATE TABLE glance_tasks (
        task_id TEXT PRIMARY KEY REFERENCES tasks(id) ON DELETE CASCADE,
        type    TEXT NOT NULL,
        input   TEXT NOT NULL
    );
    """,
    # 5: metadata definitions (catalog/metadefs.py): namespaces; their objects,
    # properties and tags (one table, by kind; the body as Glance's JSON);
    # resource types and their associations with namespaces
    """
    CREATE TABLE metadef_namespaces (
        id           INTEGER PRIMARY KEY AUTOINCREMENT,
        namespace    TEXT NOT NULL UNIQUE,
        display_name TEXT,
        description  TEXT,
        visibility   TEXT NOT NULL,
        protected    INTEGER NOT NULL DEFAULT 0,
        owner        TEXT,
        created_at   TEXT NOT NULL,
        updated_at   TEXT NOT NULL
    );
    CREATE TABLE metadef_items (
        namespace_id INTEGER NOT NULL REFERENCES metadef_namespaces(id) ON DELETE CASCADE,
        kind         TEXT NOT NULL,
        name         TEXT NOT NULL,
        body         TEXT NOT NULL,
        created_at   TEXT NOT NULL,
        updated_at   TEXT NOT NULL,
        PRIMARY KEY (namespace_id, kind, name)
    );
    CREATE TABLE metadef_resource_types (
        name       TEXT PRIMARY KEY,
        created_at TEXT NOT NULL,
        updated_at TEXT NOT NULL
    );
    CREATE TABLE metadef_associations (
        namespace_id      INTEGER NOT NULL REFERENCES metadef_namespaces(id) ON DELETE CASCADE,
        resource_type     TEXT NOT NULL REFERENCES metadef_resource_types(name),
        prefix            TEXT,
        properties_target TEXT,
        created_at        TEXT NOT NULL,
        updated_at        TEXT NOT NULL,
        PRIMARY KEY (namespace_id, resource_type)
    );
    """,
    # 6: each image's chunk manifest (edgesync.transfer.manifest), named by its
    # digest; it names the os_hash_value it was made for, so a stale one is
    # told apart (edgesync.catalog.manifests).
    """
    CREATE TABLE image_manifests (
        image_id   TEXT PRIMARY KEY REFERENCES images(id) ON DELETE CASCADE,
        digest     TEXT NOT NULL,
        body       BLOB NOT NULL,
        created_at TEXT NOT NULL
    );
    """,
    # 7: when an image member was added and last answered (catalog/members.py;
    # Glance shows both); rows from before get '' (no image had members then
    # but through tests)
    """
    ALTER TABLE image_members ADD COLUMN created_at TEXT NOT NULL DEFAULT '';
    ALTER TABLE image_members ADD COLUMN updated_at TEXT NOT NULL DEFAULT '';
    """,
    # 8: images adopted from another image service (catalog/adoptions.py): where
    # from and as of which of its updated_at; and each copy adopted in place,
    # with how it was checked ('full': every byte hashed; 'none': published and
    # the right size), so a later run re-checks only what changed or was missed.
    """
    CREATE TABLE adoptions (
        image_id          TEXT PRIMARY KEY REFERENCES images(id) ON DELETE CASCADE,
        source            TEXT NOT NULL,
        source_updated_at TEXT NOT NULL,
        adopted_at        TEXT NOT NULL
    );
    CREATE TABLE adopted_copies (
        image_id   TEXT NOT NULL REFERENCES images(id) ON DELETE CASCADE,
        store      TEXT NOT NULL,
        url        TEXT NOT NULL,
        verified   TEXT NOT NULL,
        checked_at TEXT NOT NULL,
        PRIMARY KEY (image_id, store)
    );
    """,
]

LATEST_VERSION = len(MIGRATIONS)


class CatalogError(DatabaseError):
    """The catalog database failed (disk, corruption, lock timeout)."""


async def adopt_schema_version_table(tx: Transaction) -> None:
    """An older catalog's version, from its `schema_version` table, into user_version."""
    if await tx.row("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'schema_version'") is None:
        return  # a new database, or one already on user_version
    row = await tx.row("SELECT version FROM schema_version")
    version = int(row["version"]) if row is not None else 0  # created, then stopped before migration 1
    await tx.execute(f"PRAGMA user_version = {version:d}")
    await tx.execute("DROP TABLE schema_version")


CATALOG = Schema(name="catalog", migrations=MIGRATIONS, error=CatalogError, adopt=adopt_schema_version_table)
