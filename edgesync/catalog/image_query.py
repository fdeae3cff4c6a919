"""`GET /v2/images` as SQL: the query the API validated, its WHERE clauses,
its order and the page after a marker (keyset paging: the page is found by
the marker's sort values, so no row before it is read)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# Sort and compare NULLs as the smallest value, so a keyset comparison never meets a NULL.
_INTEGER_COLUMNS = frozenset({"size", "virtual_size", "min_ram", "min_disk", "protected", "os_hidden"})
SQL_OPERATORS = {"eq": "=", "neq": "!=", "gt": ">", "gte": ">=", "lt": "<", "lte": "<="}


@dataclass
class ImageQuery:
    """What `GET /v2/images` asks for, already validated by the API."""

    viewer_project: str | None = None
    is_admin: bool = False
    name: str | None = None
    status: str | None = None
    visibility: str | None = None
    owner: str | None = None
    tags: list[str] = field(default_factory=list)
    protected: bool | None = None
    os_hidden: bool = False
    include_community: bool = False
    # A non-admin's shared images it is a member of, by its answer (Glance's
    # `member_status`: pending, accepted, rejected or all).
    member_status: str = "accepted"
    properties: dict[str, str] = field(default_factory=dict)
    # column → the values it may have (`name=a`, `disk_format=in:raw,qcow2`)
    match: dict[str, list[Any]] = field(default_factory=dict)
    # (column, operator of SQL_OPERATORS, value): `size_min`, `created_at=gte:…`
    compare: list[tuple[str, str, Any]] = field(default_factory=list)
    sort: list[tuple[str, str]] = field(default_factory=lambda: [("created_at", "desc")])
    marker: str | None = None  # the page starts after this image
    limit: int | None = None  # rows to return (the API asks one more, to know if there is a next page)

    def order_by(self) -> str:
        # The keys were checked against rows.SORTABLE by the API; id breaks ties.
        return ", ".join(f"{sort_expr(key)} {direction.upper()}" for key, direction in self.sort) + ", id DESC"

    def sort_values_sql(self) -> str:
        """The marker's sort values, as `after_marker` compares them."""
        return ", ".join(sort_expr(key) for key, _ in self.sort)

    def after_marker(self, values: list[Any], marker_id: str) -> tuple[str, list[Any]]:
        """Rows after the marker's (values…, id) in this order: a lexicographic
        comparison with each key's own direction, id DESC last."""
        keys = [(sort_expr(key), ">" if direction == "asc" else "<") for key, direction in self.sort]
        keys.append(("id", "<"))
        values = [*values, marker_id]
        clauses, args = [], []
        for i, (expr, op) in enumerate(keys):
            equal = [f"{keys[j][0]} = ?" for j in range(i)]
            clauses.append("(" + " AND ".join([*equal, f"{expr} {op} ?"]) + ")")
            args += [*values[:i], values[i]]
        return "(" + " OR ".join(clauses) + ")", args


def sort_expr(column: str) -> str:
    return f"COALESCE({column}, {-1 if column in _INTEGER_COLUMNS else repr('')})"


def image_filters(q: ImageQuery) -> tuple[list[str], list[Any]]:
    where: list[str] = []
    args: list[Any] = []
    if not q.is_admin:
        # What a non-admin may see: public, their own, community, and shared
        # images they are an accepted member of.
        status = "" if q.member_status == "all" else " AND status = ?"
        where.append(
            "(visibility IN ('public', 'community') OR owner = ? OR (visibility = 'shared' AND "
            f"id IN (SELECT image_id FROM image_members WHERE member = ?{status})))"
        )
        args += [q.viewer_project, q.viewer_project]
        if status:
            args.append(q.member_status)
    if q.visibility is None:
        if not q.include_community:
            # Glance leaves community images out of the default listing.
            where.append("(visibility != 'community' OR owner = ?)")
            args.append(q.viewer_project)
    else:
        where.append("visibility = ?")
        args.append(q.visibility)
    for column in ("name", "status", "owner"):
        value = getattr(q, column)
        if value is not None:
            where.append(f"{column} = ?")
            args.append(value)
    if q.protected is not None:
        where.append("protected = ?")
        args.append(int(q.protected))
    where.append("os_hidden = ?")
    args.append(int(q.os_hidden))
    for column, values in q.match.items():
        where.append(f"{column} IN ({', '.join('?' * len(values))})")
        args += values
    for column, op, value in q.compare:
        where.append(f"{column} {SQL_OPERATORS[op]} ?")
        args.append(value)
    for key, value in q.properties.items():
        where.append("id IN (SELECT image_id FROM image_properties WHERE key = ? AND value = ?)")
        args += [key, value]
    for tag in q.tags:
        where.append("id IN (SELECT image_id FROM image_tags WHERE tag = ?)")
        args.append(tag)
    return where, args
