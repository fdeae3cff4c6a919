"""Metadata definitions (metadefs) in the catalog: namespaces, the objects,
properties and tags inside them (one table keyed by kind and name, the body
kept as Glance's JSON), resource types and their associations.

A namespace and everything created with it is written in one transaction,
so a refused create leaves nothing behind. Who may see or change what is
decided above (edgesync/hub/metadefs.py); this module is only the SQL.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from edgesync.errors import BadRequest, Conflict, NotFound
from edgesync.model import utcnow
from edgesync.sqlite import Row, Transaction

if TYPE_CHECKING:
    from edgesync.catalog import Catalog

KINDS = ("object", "property", "tag")
NAMESPACE_SORT_KEYS = ("created_at", "updated_at", "namespace", "display_name", "visibility", "owner")


@dataclass
class Namespace:
    namespace: str
    visibility: str = "private"
    protected: bool = False
    owner: str | None = None
    display_name: str | None = None
    description: str | None = None
    created_at: str = ""
    updated_at: str = ""
    id: int = 0


@dataclass(frozen=True)
class Item:
    """An object, property or tag: its name, Glance's JSON body, timestamps."""

    kind: str
    name: str
    body: dict[str, Any]
    created_at: str = ""
    updated_at: str = ""


@dataclass(frozen=True)
class Association:
    resource_type: str
    prefix: str | None = None
    properties_target: str | None = None
    created_at: str = ""
    updated_at: str = ""


@dataclass
class NamespaceQuery:
    viewer_project: str | None = None  # None: every namespace (an admin)
    visibility: str | None = None
    resource_types: list[str] = field(default_factory=list)
    sort_key: str = "created_at"
    sort_dir: str = "desc"
    marker: str | None = None
    limit: int = 25


class Metadefs:
    def __init__(self, catalog: Catalog) -> None:
        self._catalog = catalog

    async def _rows(self, sql: str, args: Iterable[Any] = ()) -> list[Row]:
        return await self._catalog.database.rows(sql, tuple(args))

    @asynccontextmanager
    async def _tx(self) -> AsyncIterator[Transaction]:
        async with self._catalog.database.transaction() as tx:
            yield tx

    # --- namespaces -------------------------------------------------------------

    async def create_namespace(self, ns: Namespace, items: Iterable[Item] = (),
                               associations: Iterable[Association] = ()) -> Namespace:
        now = utcnow()
        async with self._tx() as tx:
            if await tx.row("SELECT 1 FROM metadef_namespaces WHERE namespace = ?", (ns.namespace,)):
                raise Conflict(f"Namespace {ns.namespace} already exists")
            await tx.execute(
                "INSERT INTO metadef_namespaces (namespace, display_name, description, visibility, protected, "
                "owner, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (ns.namespace, ns.display_name, ns.description, ns.visibility, int(ns.protected), ns.owner,
                 now, now))
            row = await tx.row("SELECT id FROM metadef_namespaces WHERE namespace = ?", (ns.namespace,))
            assert row is not None
            for item in items:
                await _insert_item(tx, row["id"], item, now)
            for association in associations:
                await _insert_association(tx, row["id"], association, now)
        return await self.require_namespace(ns.namespace)

    async def get_namespace(self, name: str) -> Namespace | None:
        rows = await self._rows("SELECT * FROM metadef_namespaces WHERE namespace = ?", (name,))
        return _namespace(rows[0]) if rows else None

    async def require_namespace(self, name: str) -> Namespace:
        ns = await self.get_namespace(name)
        if ns is None:
            raise NotFound(f"Metadata definition namespace={name} was not found.")
        return ns

    async def list_namespaces(self, query: NamespaceQuery) -> list[Namespace]:
        """One page plus one row (so the caller knows if there is a next)."""
        if query.sort_key not in NAMESPACE_SORT_KEYS:
            raise BadRequest(f"Invalid sort key: {query.sort_key}; one of {', '.join(NAMESPACE_SORT_KEYS)}")
        where, args = _namespace_filters(query)
        direction = "DESC" if query.sort_dir == "desc" else "ASC"
        if query.marker is not None:
            marker = await self.get_namespace(query.marker)
            if marker is None:
                raise BadRequest(f"marker {query.marker} is not a namespace in this listing")
            where.append(f"({query.sort_key}, id) {'<' if direction == 'DESC' else '>'} (?, ?)")
            args += [getattr(marker, query.sort_key), marker.id]
        rows = await self._rows(
            f"SELECT * FROM metadef_namespaces WHERE {' AND '.join(where) or '1'} "
            f"ORDER BY {query.sort_key} {direction}, id {direction} LIMIT ?", (*args, query.limit + 1))
        return [_namespace(r) for r in rows]

    async def update_namespace(self, name: str, fields: dict[str, Any]) -> Namespace:
        async with self._tx() as tx:
            new_name = fields.get("namespace", name)
            if new_name != name and await tx.row("SELECT 1 FROM metadef_namespaces WHERE namespace = ?",
                                                 (new_name,)):
                raise Conflict(f"Namespace {new_name} already exists")
            values = {**fields, "updated_at": utcnow()}
            if "protected" in values:
                values["protected"] = int(values["protected"])
            sets = ", ".join(f"{key} = ?" for key in values)
            if not await tx.execute(f"UPDATE metadef_namespaces SET {sets} WHERE namespace = ?",
                                    (*values.values(), name)):
                raise NotFound(f"Metadata definition namespace={name} was not found.")
        return await self.require_namespace(new_name)

    async def delete_namespace(self, ns: Namespace) -> None:
        async with self._tx() as tx:
            await tx.execute("DELETE FROM metadef_namespaces WHERE id = ?", (ns.id,))

    # --- objects, properties, tags ----------------------------------------------

    async def items(self, ns: Namespace, kind: str) -> list[Item]:
        rows = await self._rows("SELECT * FROM metadef_items WHERE namespace_id = ? AND kind = ? "
                                "ORDER BY created_at, rowid", (ns.id, kind))
        return [_item(r) for r in rows]

    async def item(self, ns: Namespace, kind: str, name: str) -> Item:
        rows = await self._rows("SELECT * FROM metadef_items WHERE namespace_id = ? AND kind = ? AND name = ?",
                                (ns.id, kind, name))
        if not rows:
            raise NotFound(f"Metadata definition {kind} not found for namespace={ns.namespace} and {kind}={name}.")
        return _item(rows[0])

    async def add_items(self, ns: Namespace, items: Iterable[Item], *, replace_kind: str | None = None) -> None:
        """Add items in one transaction; with `replace_kind`, every item of
        that kind already there goes first (the multi-tag create without append)."""
        now = utcnow()
        async with self._tx() as tx:
            if replace_kind is not None:
                await tx.execute("DELETE FROM metadef_items WHERE namespace_id = ? AND kind = ?",
                                 (ns.id, replace_kind))
            for item in items:
                await _insert_item(tx, ns.id, item, now)

    async def update_item(self, ns: Namespace, kind: str, name: str, new: Item) -> Item:
        async with self._tx() as tx:
            if new.name != name and await tx.row(
                    "SELECT 1 FROM metadef_items WHERE namespace_id = ? AND kind = ? AND name = ?",
                    (ns.id, kind, new.name)):
                raise Conflict(f"A metadata definition {kind} with name={new.name} already exists in "
                               f"namespace={ns.namespace}.")
            changed = await tx.execute(
                "UPDATE metadef_items SET name = ?, body = ?, updated_at = ? "
                "WHERE namespace_id = ? AND kind = ? AND name = ?",
                (new.name, json.dumps(new.body), utcnow(), ns.id, kind, name))
            if not changed:
                raise NotFound(f"Metadata definition {kind} not found for namespace={ns.namespace} "
                               f"and {kind}={name}.")
        return await self.item(ns, kind, new.name)

    async def delete_items(self, ns: Namespace, kind: str, name: str | None = None) -> None:
        """One item, or (name None) every item of that kind."""
        async with self._tx() as tx:
            if name is None:
                await tx.execute("DELETE FROM metadef_items WHERE namespace_id = ? AND kind = ?", (ns.id, kind))
                return
            if not await tx.execute("DELETE FROM metadef_items WHERE namespace_id = ? AND kind = ? AND name = ?",
                                    (ns.id, kind, name)):
                raise NotFound(f"Metadata definition {kind} not found for namespace={ns.namespace} "
                               f"and {kind}={name}.")

    # --- resource types and associations ----------------------------------------

    async def resource_types(self) -> list[Row]:
        return await self._rows("SELECT * FROM metadef_resource_types ORDER BY name")

    async def associations(self, ns: Namespace) -> list[Association]:
        rows = await self._rows("SELECT * FROM metadef_associations WHERE namespace_id = ? "
                                "ORDER BY created_at, rowid", (ns.id,))
        return [Association(r["resource_type"], r["prefix"], r["properties_target"], r["created_at"],
                            r["updated_at"]) for r in rows]

    async def associate(self, ns: Namespace, association: Association) -> None:
        async with self._tx() as tx:
            await _insert_association(tx, ns.id, association, utcnow())

    async def dissociate(self, ns: Namespace, resource_type: str) -> None:
        async with self._tx() as tx:
            if not await tx.execute("DELETE FROM metadef_associations WHERE namespace_id = ? AND resource_type = ?",
                                    (ns.id, resource_type)):
                raise NotFound(f"Failed to find resource type {resource_type} associated with namespace "
                               f"{ns.namespace}")


async def _insert_item(tx: Transaction, namespace_id: int, item: Item, now: str) -> None:
    if await tx.row("SELECT 1 FROM metadef_items WHERE namespace_id = ? AND kind = ? AND name = ?",
                    (namespace_id, item.kind, item.name)):
        raise Conflict(f"A metadata definition {item.kind} with name={item.name} already exists in this namespace.")
    await tx.execute("INSERT INTO metadef_items (namespace_id, kind, name, body, created_at, updated_at) "
                     "VALUES (?, ?, ?, ?, ?, ?)", (namespace_id, item.kind, item.name, json.dumps(item.body), now, now))


async def _insert_association(tx: Transaction, namespace_id: int, association: Association, now: str) -> None:
    await tx.execute("INSERT OR IGNORE INTO metadef_resource_types (name, created_at, updated_at) VALUES (?, ?, ?)",
                     (association.resource_type, now, now))
    if await tx.row("SELECT 1 FROM metadef_associations WHERE namespace_id = ? AND resource_type = ?",
                    (namespace_id, association.resource_type)):
        raise Conflict(f"The metadata definition resource-type association of resource-type="
                       f"{association.resource_type} to namespace is already there.")
    await tx.execute(
        "INSERT INTO metadef_associations (namespace_id, resource_type, prefix, properties_target, created_at, "
        "updated_at) VALUES (?, ?, ?, ?, ?, ?)",
        (namespace_id, association.resource_type, association.prefix, association.properties_target, now, now))


def _namespace_filters(query: NamespaceQuery) -> tuple[list[str], list[Any]]:
    where: list[str] = []
    args: list[Any] = []
    if query.viewer_project is not None:
        where.append("(visibility = 'public' OR owner = ?)")
        args.append(query.viewer_project)
    if query.visibility is not None:
        where.append("visibility = ?")
        args.append(query.visibility)
    if query.resource_types:
        marks = ", ".join("?" * len(query.resource_types))
        where.append(f"id IN (SELECT namespace_id FROM metadef_associations WHERE resource_type IN ({marks}))")
        args += query.resource_types
    return where, args


def _namespace(row: Row) -> Namespace:
    return Namespace(namespace=row["namespace"], visibility=row["visibility"], protected=bool(row["protected"]),
                     owner=row["owner"], display_name=row["display_name"], description=row["description"],
                     created_at=row["created_at"], updated_at=row["updated_at"], id=row["id"])


def _item(row: Row) -> Item:
    return Item(row["kind"], row["name"], json.loads(row["body"]), row["created_at"], row["updated_at"])
