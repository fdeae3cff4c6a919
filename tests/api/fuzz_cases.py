"""A seeded generator of hostile requests for every route of an aiohttp app.

Each case is a method, a path (route placeholders filled with ids good and
bad), a query string, headers and a body drawn from the input classes that
once gave 500s: malformed and deeply nested JSON, huge integers, arrays or
objects where strings go, lone surrogates, non-ASCII and very long numbers,
zero and negative limits, empty sort keys, over-long ids.
"""

from __future__ import annotations

import json
import random
import re
import uuid
from dataclasses import dataclass, field

from aiohttp import web

HUGE = "9" * 5000
IDS = ["{image}", str(uuid.uuid4()), "x" * 300, "not-a-uuid", "%00", "..", "\u0661\u0662", "A" * 40,
       "{image}".upper(), "{image}".replace("-", ""), "{{image}}", "'", "\U0001f600", "0" * 36, "_"]
NUMBERS = ["0", "-1", "1", "\u0661\u0662\u0663", "\uff11", HUGE, str(2**63), str(2**64 + 5), "1e9", " 1", "0x10",
           "", "nan", "1.5", "-0"]
WORDS = ["", "name", "name:asc", ",", "::", "created_at:sideways", "x" * 5000, "\u00e9", "in:", "in:a,\"b",
         "gt:", "gte:nope", "\ud800".encode("utf-8", "surrogatepass").decode("latin-1"), "true", "null", "[]"]
QUERY_KEYS = ["limit", "marker", "sort", "sort_key", "sort_dir", "offset", "length", "name", "status",
              "visibility", "size_min", "size_max", "created_at", "tag", "image_id", "availability_zone",
              "copy", "unfinished", "site", "type", "member_status", "os_hidden", "protected", "next"]
HEADERS = ["x-openstack-image-size", "Content-Length-Hint", "X-OpenStack-Request-ID", "Content-Type",
           "x-image-meta-size", "Range", "X-Service-Token", "Accept"]
CONTENT_TYPES = ["application/json", "application/openstack-images-v2.1-json-patch",
                 "application/openstack-images-v2.0-json-patch", "application/octet-stream", "text/plain", ""]


def _nested(depth: int) -> str:
    return "[" * depth + "]" * depth


def _json_bodies(rng: random.Random) -> list[bytes]:
    scalars: list[object] = [HUGE, 0, None, True, [], {}, "x" * 3000, -1, 2**70,
                             1.5e308, ["a"], {"a": "b"}]
    value = rng.choice(scalars)
    key = rng.choice(["name", "id", "visibility", "disk_format", "tags", "owner", "min_ram", "stores",
                      "method", "size", "checksum", "os_hash_value", "location_url", "op", "path", "value",
                      "type", "input", "namespace", "properties", "all_stores", "import_from"])
    return [
        b"{", b"[", b"", b"null", b"\xff\xfe", b'"string"', b"123", ("9" * 5000).encode(),
        _nested(rng.choice([50, 1200, 100000])).encode(),
        b'{"name": "\\ud800"}', b'{"a": 1e99999}', b'{"name": ' + b"9" * 4400 + b"}",
        json.dumps({key: value}).encode(), json.dumps([{key: value}]).encode(),
        json.dumps([{"op": "replace", "path": "/" + key, "value": value}]).encode(),
        json.dumps({"method": {"name": rng.choice(["web-download", "copy-image", "glance-direct", 5]),
                               "uri": value}, "stores": value}).encode(),
        json.dumps({"type": "import", "input": {"import_from": value, "import_from_format": value}}).encode(),
        b'{"name": "\\u0000"}', json.dumps({"id": "{image}".upper()}).encode(),
    ]


@dataclass
class Case:
    method: str
    path: str
    query: list[tuple[str, str]] = field(default_factory=list)
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes | None = None

    def __str__(self) -> str:
        body = self.body[:80] if self.body is not None else None
        return f"{self.method} {self.path} q={self.query[:4]} h={list(self.headers)} body={body!r}"


def routes_of(app: web.Application) -> list[tuple[str, str]]:
    """(method, path template) of every route, HEAD and wildcard routes left out."""
    found = []
    for route in app.router.routes():
        info = route.resource.get_info() if route.resource is not None else {}
        template = info.get("formatter") or info.get("path")
        if template and route.method not in ("HEAD", "*"):
            found.append((route.method, template))
    return sorted(set(found))


def cases(app: web.Application, image_id: str, count: int, seed: int) -> list[Case]:
    rng = random.Random(seed)
    templates = routes_of(app)
    out = []
    for i in range(count):
        method, template = templates[i % len(templates)]
        path = re.sub(r"\{[^}]+\}", lambda _m: rng.choice(IDS), template).replace("{image}", image_id)
        case = Case(method, path)
        for _ in range(rng.randrange(4)):
            case.query.append((rng.choice(QUERY_KEYS), rng.choice(NUMBERS + WORDS).replace("{image}", image_id)))
        for _ in range(rng.randrange(3)):
            case.headers[rng.choice(HEADERS)] = rng.choice(NUMBERS + WORDS[:-4])
        if rng.random() < 0.3:
            case.headers["Content-Type"] = rng.choice(CONTENT_TYPES)
        if method in ("POST", "PUT", "PATCH") or rng.random() < 0.1:
            case.body = rng.choice(_json_bodies(rng)).replace(b"{image}", image_id.encode())
        out.append(case)
    return out
