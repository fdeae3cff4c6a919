"""`GET /v2/images`' query string, read as Glance reads it.

- Core fields are filters on the image, every other key a custom property
  (exact match): `name`, `id`, `status`, `container_format`, `disk_format`
  take `in:a,b,"c,d"` lists (and `eq:`); `created_at` and `updated_at` take
  `gt:`, `gte:`, `lt:`, `lte:`, `eq:`, `neq:` with an ISO 8601 time;
  `size_min`/`size_max` (and `virtual_size_*`) bound sizes; `owner`,
  `checksum`, `os_hash_value`, `min_ram`, `min_disk` match exactly;
  `visibility`, `protected`, `os_hidden`, `tag` (repeatable) as before.
- Sorting: `sort_key`/`sort_dir` (repeatable, one dir for all or one each)
  or `sort=k1:asc,k2` — not both.
- A value like `name=a:b` is read as operator `a`, as Glance does; write
  `name=eq:a:b` for a name with a colon.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from edgesync.catalog import ImageQuery
from edgesync.errors import BadRequest

LIST_FIELDS = ("name", "id", "status", "container_format", "disk_format")
EXACT_FIELDS = ("owner", "checksum", "os_hash_value")
INTEGER_FIELDS = ("min_ram", "min_disk")
TIME_FIELDS = ("created_at", "updated_at")
RANGE_FIELDS = {"size_min": ("size", "gte"), "size_max": ("size", "lte"),
                "virtual_size_min": ("virtual_size", "gte"), "virtual_size_max": ("virtual_size", "lte")}
COMPARISONS = ("eq", "neq", "gt", "gte", "lt", "lte")
# Read elsewhere (paging, sorting) or flags handled below; not properties.
_RESERVED = {"limit", "marker", "sort_key", "sort_dir", "sort", "visibility", "tag", "protected", "os_hidden",
             "member_status"}
_QUOTED_OR_PLAIN = re.compile(r'"((?:[^"\\]|\\.)*)",?|([^,]+),?|,')


def query_from(request: web.Request) -> ImageQuery:
    q = request.query
    if "changes-since" in q:
        raise BadRequest('The "changes-since" filter is no longer available on v2.')
    query = ImageQuery(tags=q.getall("tag", []), protected=_bool(q.get("protected"), "protected"),
                       os_hidden=bool(_bool(q.get("os_hidden"), "os_hidden")), sort=_sort(q))
    _visibility(query, q.get("visibility"))
    query.member_status = _member_status(q.get("member_status", "accepted"))
    for key, raw in q.items():
        if key in _RESERVED:
            continue
        if key in LIST_FIELDS:
            query.match[key] = _listed(key, raw)
        elif key in EXACT_FIELDS:
            query.match[key] = [raw]
        elif key in INTEGER_FIELDS:
            query.match[key] = [_integer(raw, f"{key} must be an integer, got {raw!r}")]
        elif key in TIME_FIELDS:
            query.compare.append((key, *_time_comparison(key, raw)))
        elif key in RANGE_FIELDS:
            column, op = RANGE_FIELDS[key]
            query.compare.append((column, op, _integer(raw, "Unable to filter on a range with a non-numeric value.")))
        else:
            query.properties[key] = raw
    return query


def split_operator(raw: str) -> tuple[str, str]:
    """Glance's split_filter_op: `op:value`, `eq` when there is no colon or
    the whole value is an ISO 8601 time."""
    left, sep, right = raw.partition(":")
    if not sep or _iso_time(raw) is not None:
        return "eq", raw
    return left, right


def split_list(raw: str) -> list[str]:
    """`a,b,"c,d"` → ["a", "b", "c,d"] (the API working group's quoting)."""
    if raw.count('"') - raw.count('\\"') & 1:
        raise BadRequest(f"Invalid filter value {raw}. The quote is not closed.")
    return [quoted.replace('\\"', '"') if quoted else plain
            for quoted, plain in _QUOTED_OR_PLAIN.findall(raw)]


def _listed(key: str, raw: str) -> list[str]:
    op, value = split_operator(raw)
    if op == "in":
        return split_list(value)
    if op == "eq":
        return [value]
    raise BadRequest(f"Unable to filter by unknown operator '{op}'.")


def _time_comparison(key: str, raw: str) -> tuple[str, str]:
    op, value = split_operator(raw)
    if op not in COMPARISONS:
        raise BadRequest(f"Unable to filter on a unknown operator ({op!r}); use one of {', '.join(COMPARISONS)}.")
    moment = _iso_time(value)
    if moment is None:
        raise BadRequest(f'Bad "{key}" query filter format. Use ISO 8601 DateTime notation.')
    # Stored as "YYYY-MM-DDTHH:MM:SSZ" in UTC: compared as text in the same form.
    return op, moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def _iso_time(value: str) -> datetime | None:
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        return None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def _integer(raw: str, message: str) -> int:
    """ASCII digits (int() takes '١٢' too), and what SQLite's INTEGER holds."""
    try:
        if not raw.isascii() or len(raw) > 20:
            raise ValueError(raw)
        value = int(raw)
    except ValueError as exc:
        raise BadRequest(message) from exc
    if not -(1 << 63) <= value < 1 << 63:
        raise BadRequest(f"{message} (a value must be within ±2^63)")
    return value


def _bool(raw: str | None, name: str) -> bool | None:
    if raw is None:
        return None
    if raw.lower() in ("true", "1", "yes"):
        return True
    if raw.lower() in ("false", "0", "no"):
        return False
    raise BadRequest(f"Invalid value '{raw}' for '{name}' filter. Valid values are 'true' or 'false'.")


def _visibility(query: ImageQuery, visibility: str | None) -> None:
    if visibility is None:
        return
    if visibility not in ("public", "private", "shared", "community", "all"):
        raise BadRequest(f"Invalid visibility value: {visibility}")
    if visibility == "all":
        query.include_community = True
    else:
        query.visibility = visibility


def _member_status(raw: str) -> str:
    if raw not in ("pending", "accepted", "rejected", "all"):
        raise BadRequest(f"Invalid status: {raw[:40]}; member_status is one of pending, accepted, rejected, all")
    return raw


def _sort(q: Any) -> list[tuple[str, str]]:
    if "sort" in q:
        if "sort_key" in q or "sort_dir" in q:
            raise BadRequest("Old and new sorting syntax cannot be combined")
        pairs = [p.partition(":") for p in q["sort"].split(",") if p.strip()]
        sort = [(k.strip(), (d.strip() or "desc")) for k, _, d in pairs] or [("created_at", "desc")]
    else:
        keys = [k.strip() for raw in q.getall("sort_key", []) for k in raw.split(",") if k.strip()]
        dirs = [d.strip() for raw in q.getall("sort_dir", []) for d in raw.split(",") if d.strip()]
        if len(dirs) > 1 and len(dirs) != len(keys):
            raise BadRequest("Number of sort dirs does not match the number of sort keys")
        keys = keys or ["created_at"]
        sort = [(k, dirs[i] if len(dirs) > 1 else (dirs[0] if dirs else "desc")) for i, k in enumerate(keys)]
    for _, direction in sort:
        if direction not in ("asc", "desc"):
            raise BadRequest(f"Invalid sort direction: {direction}; use asc or desc")
    return sort
