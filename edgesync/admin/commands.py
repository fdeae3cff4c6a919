"""What each admin command asks the hub and prints.

Every command takes the open `HubClient`, its parsed options and where to
print; it returns the process's exit code. API errors are raised (the CLI
prints the hub's message and exits 2).
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from argparse import Namespace
from collections.abc import Awaitable, Callable
from typing import Any, TextIO

from edgesync.admin.client import AdminError, HubClient
from edgesync.admin.progress import CopyTracker, outcome
from edgesync.admin.render import ProgressDisplay, human_age, human_bytes, table
from edgesync.errors import EdgesyncError

POLL_INTERVAL_S = 0.5
SITES_EVERY_S = 5.0
# Exit codes of `image copy` (2 is any refused request or bad option, as elsewhere).
EXIT = {"success": 0, "started": 0, "nothing to copy": 0, "failed": 1, "partial": 3}
_UUID = re.compile(r"^[0-9a-fA-F]{8}-(?:[0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12}$")
_UNFINISHED_TASK = ("pending", "processing")


def _print_json(out: TextIO, value: Any) -> None:
    out.write(json.dumps(value, indent=2) + "\n")


def _split(csv: str | None) -> list[str]:
    return [s for s in (csv or "").split(",") if s]


# --- finding things ---------------------------------------------------------------


async def find_image(hub: HubClient, ref: str) -> dict[str, Any]:
    """An image by id, or by name when exactly one image has it."""
    if _UUID.match(ref):
        image: dict[str, Any] = await hub.get(f"/v2/images/{ref}")
        return image
    found = (await hub.get("/v2/images", name=ref, limit="2"))["images"]
    if not found:
        raise AdminError(f"No image named {ref!r} (give its id, or check the name with `glance image-list`)")
    if len(found) > 1:
        raise AdminError(f"More than one image is named {ref!r}; give the id instead")
    only: dict[str, Any] = found[0]
    return only


async def image_tasks(hub: HubClient, image_id: str) -> list[dict[str, Any]]:
    """The image's tasks, newest first."""
    tasks: list[dict[str, Any]] = (await hub.get(f"/v2/images/{image_id}/tasks"))["tasks"]
    return tasks


def _label(image: dict[str, Any]) -> str:
    return f"{image['name']} ({image['id']})" if image.get("name") else image["id"]


# --- image copy ---------------------------------------------------------------------


async def image_copy(hub: HubClient, args: Namespace, out: TextIO) -> int:
    image = await find_image(hub, args.image)
    image_id = image["id"]
    before = {t["id"] for t in await image_tasks(hub, image_id)}
    body: dict[str, Any] = {"method": {"name": "copy-image"}, "all_stores_must_succeed": not args.allow_failure}
    if args.all_stores:
        body["all_stores"] = True
    else:
        body["stores"] = args.stores
    await hub.post(f"/v2/images/{image_id}/import", body)
    # The hub records the task before it answers 202: the new one is listed now.
    task = next((t for t in await image_tasks(hub, image_id) if t["id"] not in before), None)
    if task is None:  # --all-stores and every store has it: Glance starts nothing
        return _report_start(out, args, image, None)
    if not args.wait:
        return _report_start(out, args, image, task)
    if not args.json:
        rule = "failures allowed" if args.allow_failure else "every store must succeed"
        out.write(f"copying {_label(image)} to {', '.join(task['input']['import_req']['stores'])} "
                  f"(task {task['id']}; {rule})\n")
    display = None if args.json else ProgressDisplay(out, tty=out.isatty())
    tracker, down = CopyTracker(time.monotonic), DownSites(hub)

    async def show(polled: dict[str, Any]) -> None:
        if display is not None:
            display.show(tracker.update(polled, await down.sites()))

    task = await follow_task(hub, image_id, task["id"], show)
    return _report_end(out, args, await hub.get(f"/v2/images/{image_id}"), task)


async def follow_task(hub: HubClient, image_id: str, task_id: str,
                      on_poll: Callable[[dict[str, Any]], Awaitable[None]],
                      interval_s: float = POLL_INTERVAL_S) -> dict[str, Any]:
    """Poll the task until it ends; `on_poll` sees every state of it."""
    while True:
        task = next((t for t in await image_tasks(hub, image_id) if t["id"] == task_id), None)
        if task is None:
            raise AdminError(f"Task {task_id} is no longer listed for image {image_id}")
        await on_poll(task)
        if task["status"] not in _UNFINISHED_TASK:
            return task
        await asyncio.sleep(interval_s)


class DownSites:
    """The sites the hub says are down, asked again every `every_s`: a copy
    to a site whose agent is away waits, and the display says why."""

    def __init__(self, hub: HubClient, every_s: float = SITES_EVERY_S) -> None:
        self._hub = hub
        self._every_s = every_s
        self._asked_at: float | None = None
        self._down: frozenset[str] = frozenset()

    async def sites(self) -> frozenset[str]:
        now = time.monotonic()
        if self._asked_at is None or now - self._asked_at >= self._every_s:
            self._asked_at = now
            try:
                listed = (await self._hub.get("/edgesync/v1/sites"))["sites"]
            except EdgesyncError:  # only a hint for the display: the copy is followed all the same
                return self._down
            self._down = frozenset(s["name"] for s in listed if s.get("up") is False)
        return self._down


def _report_start(out: TextIO, args: Namespace, image: dict[str, Any], task: dict[str, Any] | None) -> int:
    result = "nothing to copy" if task is None else "started"
    if args.json:
        _print_json(out, {"image_id": image["id"], "task_id": task and task["id"], "outcome": result,
                          "stores": task["input"]["import_req"]["stores"] if task else []})
    elif task is None:
        out.write(f"nothing to copy: every store already holds {_label(image)}\n")
    else:
        out.write(f"copy of {_label(image)} to {', '.join(task['input']['import_req']['stores'])} "
                  f"started: task {task['id']}\nfollow it with: edgesync image show {image['id']}\n")
    return EXIT[result]


def _report_end(out: TextIO, args: Namespace, image: dict[str, Any], task: dict[str, Any]) -> int:
    result = outcome(task)
    jobs = task["result"]["stores"]
    if args.json:
        _print_json(out, {"image_id": image["id"], "task_id": task["id"], "outcome": result,
                          "image_stores": _split(image.get("stores")), "task": task})
        return EXIT[result]
    done = [s for s, j in jobs.items() if j["state"] == "done"]
    failed = [s for s, j in jobs.items() if j["state"] == "failed"]
    if result == "success":
        out.write(f"copied {_label(image)} to {', '.join(done)}\n")
    elif result == "partial":
        out.write(f"copy of {_label(image)} partly failed: {', '.join(failed)} failed, "
                  f"{', '.join(done) or 'no store'} kept\n")
    else:
        out.write(f"copy of {_label(image)} {_failure_text(task['message'])}\n")
    out.write(f"image stores now: {', '.join(_split(image.get('stores'))) or 'none'}\n")
    return EXIT[result]


def _failure_text(message: str) -> str:
    """The hub's task message says "failed (rule): store: reason"; say "failed" once."""
    rest = message.removeprefix("failed").lstrip(":").strip()
    return f"failed {rest}" if rest.startswith("(") else f"failed: {rest or 'no reason given'}"


# --- image delete-from-store ----------------------------------------------------------


async def image_delete_from_store(hub: HubClient, args: Namespace, out: TextIO) -> int:
    image = await find_image(hub, args.image)
    await hub.delete(f"/v2/stores/{args.store}/{image['id']}")
    after = await hub.get(f"/v2/images/{image['id']}")
    stores = _split(after.get("stores"))
    if args.json:
        _print_json(out, {"image_id": image["id"], "store": args.store, "deleted": True, "image_stores": stores})
    else:
        out.write(f"deleted the copy of {_label(image)} in {args.store}; "
                  f"image stores now: {', '.join(stores) or 'none'}\n")
    return 0


# --- image show --------------------------------------------------------------------------


async def image_show(hub: HubClient, args: Namespace, out: TextIO) -> int:
    image = await find_image(hub, args.image)
    store_ids = [s["id"] for s in (await hub.get("/v2/info/stores"))["stores"]]
    tasks = await image_tasks(hub, image["id"])
    rows = store_states(image, store_ids, tasks)
    if args.json:
        _print_json(out, {"image": image, "stores": rows, "tasks": tasks})
        return 0
    facts = [
        ("id", image["id"]), ("name", image.get("name") or ""), ("status", image["status"]),
        ("size", f"{human_bytes(image.get('size'))} (disk {image.get('disk_format')}, "
                 f"container {image.get('container_format')})"),
        ("stores", ", ".join(_split(image.get("stores"))) or "none"),
    ]
    if image.get("os_glance_import_task"):
        facts.append(("task", f"{image['os_glance_import_task']} running"))
    width = max(len(k) for k, _ in facts)
    out.write("".join(f"{k.ljust(width)}  {v}\n" for k, v in facts) + "\n")
    out.write(table(["STORE", "STATE", "DETAIL"], [(r["store"], r["state"], _detail(r)) for r in rows]) + "\n")
    return 0


def store_states(image: dict[str, Any], store_ids: list[str], tasks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each store's state for one image: present (with its location), copying
    or pending (with the running task's bytes), or absent (with why the last
    copy there failed, if it did). `tasks` newest first."""
    locations = {loc["metadata"].get("store"): loc["url"] for loc in image.get("locations", [])}
    present = _split(image.get("stores"))
    rows = []
    for store in store_ids + [s for s in present if s not in store_ids]:
        task, job = _latest_job(tasks, store)
        row: dict[str, Any] = {"store": store, "state": "absent", "location": locations.get(store),
                               "task_id": task["id"] if task else None, "bytes_done": None,
                               "bytes_total": None, "reason": None}
        if store in present:
            row["state"] = "present"
        elif task is not None and job is not None and task["status"] in _UNFINISHED_TASK \
                and job["state"] in ("pending", "running"):
            row.update(state="copying" if job["state"] == "running" else "pending",
                       bytes_done=job["bytes_done"], bytes_total=job["bytes_total"])
        elif job is not None and job["state"] in ("failed", "rolled_back"):
            row["reason"] = _last_failure(job)
        rows.append(row)
    return rows


def _last_failure(job: dict[str, Any]) -> str:
    state, reason = job["state"].replace("_", " "), job["reason"]
    return f"last copy {reason}" if reason.startswith(state) else f"last copy {state}: {reason}"


def _latest_job(tasks: list[dict[str, Any]], store: str) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    for task in tasks:
        job = task.get("result", {}).get("stores", {}).get(store)
        if job is not None:
            return task, job
    return None, None


def _detail(row: dict[str, Any]) -> str:
    if row["state"] == "present":
        return row["location"] or ""
    if row["state"] in ("copying", "pending"):
        amount = (f"{human_bytes(row['bytes_done'])} / {human_bytes(row['bytes_total'])} of data "
                  if row["bytes_total"] else "")
        return f"{amount}(task {row['task_id']})"
    return row["reason"] or ""


# --- sites ------------------------------------------------------------------------------


async def sites(hub: HubClient, args: Namespace, out: TextIO) -> int:
    listed = (await hub.get("/edgesync/v1/sites"))["sites"]
    if args.json:
        _print_json(out, {"sites": listed})
        return 0
    rows = [
        (s["name"], s["role"], s["availability_zone"], s["store_type"], "agent" if s["agent"] else "hub",
         _site_state(s), human_age(s.get("heartbeat_age_s")), str(len(s.get("in_flight") or [])),
         human_bytes(s.get("free_bytes")))
        for s in listed
    ]
    out.write(table(["SITE", "ROLE", "AZ", "STORE", "RUN BY", "STATE", "HEARTBEAT", "IN FLIGHT", "FREE"], rows) + "\n")
    for s in listed:
        if s.get("problem"):
            out.write(f"{s['name']}: {s['problem']}\n")
    return 0


def _site_state(site: dict[str, Any]) -> str:
    if "up" not in site:
        return "?"
    return "up" if site["up"] else "down"


# --- tasks ------------------------------------------------------------------------------


async def tasks(hub: HubClient, args: Namespace, out: TextIO) -> int:
    if args.image:
        image = await find_image(hub, args.image)
        listed = await image_tasks(hub, image["id"])
        if args.unfinished:
            listed = [t for t in listed if t["status"] in _UNFINISHED_TASK]
        listed = listed[: args.limit]
    else:
        listed = (await hub.get("/edgesync/v1/tasks", limit=str(args.limit),
                                unfinished=str(args.unfinished).lower()))["tasks"]
    if args.json:
        _print_json(out, {"tasks": listed})
        return 0
    rows = [(t["created_at"], t["id"], t["image_id"], t["input"]["import_req"]["method"]["name"],
             t["status"], task_stores(t)) for t in listed]
    out.write(table(["CREATED", "TASK", "IMAGE", "METHOD", "STATUS", "STORES"], rows) + "\n")
    return 0


def task_stores(task: dict[str, Any]) -> str:
    """`dcn0 done, dcn1 running 40%`: each store's state in one cell."""
    cells = []
    for store, job in task.get("result", {}).get("stores", {}).items():
        cell = f"{store} {job['state'].replace('_', ' ')}"
        if job["state"] == "running" and job.get("bytes_total"):
            cell += f" {job['bytes_done'] / job['bytes_total']:.0%}"
        cells.append(cell)
    return ", ".join(cells)
