"""`edgesync metadefs load DIR`: bring the metadata definitions an operator
already has, in Glance's own metadef JSON format (one namespace per file, as
Glance's etc/metadefs/*.json and `glance-manage db export_metadefs` write
them), into the hub through its API — so the hub's policy applies as to any
client.

Each file is created whole (the namespace with its properties, objects,
tags and resource-type associations, in one request: all or nothing). A
namespace the hub already has is skipped, or with `--replace` deleted
(unprotected first) and created again from the file.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from pathlib import Path
from typing import Any, TextIO
from urllib.parse import quote

from edgesync.admin.client import AdminError, ApiError, HubClient

NAMESPACES = "/v2/metadefs/namespaces"


def read_namespace_file(path: Path) -> dict[str, Any]:
    try:
        body = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise AdminError(f"{path}: not a metadef JSON file: {exc}") from exc
    if not isinstance(body, dict) or not isinstance(body.get("namespace"), str):
        raise AdminError(f"{path}: a metadef file is a JSON object with a \"namespace\" name")
    return body


def read_directory(directory: Path) -> list[tuple[str, dict[str, Any] | AdminError]]:
    """Every *.json file of `directory`, by name: its namespace, or why it isn't one."""
    files = sorted(directory.glob("*.json"))
    if not files:
        raise AdminError(f"{directory}: no *.json metadef files there")
    found: list[tuple[str, dict[str, Any] | AdminError]] = []
    for path in files:
        try:
            found.append((path.name, read_namespace_file(path)))
        except AdminError as exc:
            found.append((path.name, exc))
    return found


async def load(hub: HubClient, args: argparse.Namespace, out: TextIO) -> int:
    files = await asyncio.to_thread(read_directory, Path(args.dir))
    failed = 0
    for name, body in files:
        try:
            if isinstance(body, AdminError):
                raise body
            outcome = await _load_one(hub, body, replace=args.replace)
        except (AdminError, ApiError) as exc:
            failed += 1
            print(f"{name}: refused: {exc.message}", file=out)
            continue
        print(f"{name}: {outcome}", file=out)
    print(f"{len(files) - failed} of {len(files)} files loaded or already there", file=out)
    return 2 if failed else 0


async def _load_one(hub: HubClient, body: dict[str, Any], *, replace: bool) -> str:
    name = body["namespace"]
    try:
        await hub.post(NAMESPACES, body)
        return f"namespace {name} created"
    except ApiError as exc:
        if exc.http_status != 409:
            raise
    if not replace:
        return f"namespace {name} already there, skipped (--replace loads it again)"
    path = f"{NAMESPACES}/{quote(name, safe=':')}"
    await hub.put(path, {"namespace": name, "protected": False})
    await hub.delete(path)
    await hub.post(NAMESPACES, body)
    return f"namespace {name} replaced"
