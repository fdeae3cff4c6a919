"""`GET /v2/images` as SQL: the query the API validated, and its WHERE clauses."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


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
    properties: dict[str, str] = field(default_factory=dict)
    sort: list[tuple[str, str]] = field(default_factory=lambda: [("created_at", "desc")])

    def order_by(self) -> str:
        # The keys were checked against rows.SORTABLE by the API; id breaks ties.
        return ", ".join(f"{key} {direction.upper()}" for key, direction in self.sort) + ", id DESC"


def image_filters(q: ImageQuery) -> tuple[list[str], list[Any]]:
    where: list[str] = []
    args: list[Any] = []
    if not q.is_admin:
        # What a non-admin may see: public, their own, community, and shared
        # images they are an accepted member of.
        where.append(
            "(visibility IN ('public', 'community') OR owner = ? OR (visibility = 'shared' AND "
            "id IN (SELECT image_id FROM image_members WHERE member = ? AND status = 'accepted')))"
        )
        args += [q.viewer_project, q.viewer_project]
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
    for key, value in q.properties.items():
        where.append("id IN (SELECT image_id FROM image_properties WHERE key = ? AND value = ?)")
        args += [key, value]
    for tag in q.tags:
        where.append("id IN (SELECT image_id FROM image_tags WHERE tag = ?)")
        args.append(tag)
    return where, args
