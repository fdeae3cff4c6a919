"""`edgesync adopt --from-glance URL`: every image of the source, through the hub.

For each image the source shows (with its members, for a shared one), one
`POST /edgesync/v1/adopt/images` to the hub, several at once: the hub checks
the image's copies at every site in parallel, so images in flight times sites is
the parallelism. Each image is adopted whole or not at all, and a copy
adopted before is not checked again, so an interrupted run is resumed by
running it again, and a run after changes in the source picks up just those.

`--verify full` (default) hashes every copy where it lies; `sample` hashes a
fixed share of the images (the same ones on every run; the rest only checked
published at the right size); `none` trusts the bytes.
"""

from __future__ import annotations

import asyncio
import hashlib
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, TextIO

from edgesync.admin.client import HubClient
from edgesync.adopt.source import GlanceSource
from edgesync.errors import EdgesyncError

GIB = 1 << 30
PROGRESS_EVERY_S = 2.0


@dataclass(frozen=True)
class RunOptions:
    verify: str  # full | sample | none
    sample_percent: float
    copy_missing: bool
    dry_run: bool
    parallel: int
    json: bool = False


@dataclass
class Tally:
    started: float = field(default_factory=time.monotonic)
    total: int = 0
    done: int = 0
    actions: Counter[str] = field(default_factory=Counter)
    copies: Counter[str] = field(default_factory=Counter)
    verified_bytes: Counter[str] = field(default_factory=Counter)  # per site
    read_bytes: int = 0
    discrepancies: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    reports: list[dict[str, Any]] = field(default_factory=list)

    def add(self, report: dict[str, Any]) -> None:
        self.done += 1
        self.reports.append(report)
        self.actions[report["action"]] += 1
        for copy in report["copies"]:
            self.copies[copy["state"]] += 1
            if copy["verified_bytes"]:
                self.verified_bytes[copy["store"]] += copy["verified_bytes"]
            self.read_bytes += copy["read_bytes"]
        label = f"{report['image_id']} ({report['name'] or 'no name'})"
        self.discrepancies += [f"{label}: {d}" for d in report["discrepancies"]]

    def line(self) -> str:
        elapsed = max(time.monotonic() - self.started, 1e-9)
        verified = sum(self.verified_bytes.values())
        acts = ", ".join(f"{n} {a}" for a, n in sorted(self.actions.items()))
        return (f"adopt: {self.done}/{self.total} images ({acts or 'none yet'}); "
                f"{verified / GIB:.2f} GiB verified, {self.done / elapsed:.1f} images/s")

    def as_json(self) -> dict[str, Any]:
        elapsed = time.monotonic() - self.started
        return {"images": self.total, "actions": dict(self.actions), "copies": dict(self.copies),
                "verified_bytes": dict(self.verified_bytes), "read_bytes": self.read_bytes,
                "elapsed_s": round(elapsed, 3), "discrepancies": self.discrepancies, "errors": self.errors,
                "reports": self.reports}


def sampled(image_id: str, percent: float) -> bool:
    """Whether `--verify sample` hashes this image: the same images every run."""
    bucket = int.from_bytes(hashlib.sha256(image_id.encode()).digest()[:4], "big") % 10_000
    return bucket < percent * 100


async def adopt_all(glance: GlanceSource, hub: HubClient, opts: RunOptions, out: TextIO,
                    err: TextIO = sys.stderr) -> int:
    """Adopt every image of `glance` through `hub`; the exit status (0 clean,
    3 with discrepancies, 1 if some image could not be sent)."""
    tally = Tally()
    images = [image async for image in glance.images()]
    tally.total = len(images)
    queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    for image in images:
        queue.put_nowait(image)
    workers = [asyncio.create_task(_worker(glance, hub, opts, queue, tally, out))
               for _ in range(max(1, min(opts.parallel, len(images))))]
    ticker = asyncio.create_task(_progress(tally, err))
    try:
        await asyncio.gather(*workers)
    finally:
        ticker.cancel()
        for worker in workers:
            worker.cancel()
    print(tally.line(), file=err)
    _summary(tally, opts, out)
    if tally.errors:
        return 1
    return 3 if tally.discrepancies else 0


async def _worker(glance: GlanceSource, hub: HubClient, opts: RunOptions, queue: asyncio.Queue[dict[str, Any]],
                  tally: Tally, out: TextIO) -> None:
    while not queue.empty():
        image = queue.get_nowait()
        try:
            report = await _adopt_one(glance, hub, opts, image)
        except EdgesyncError as exc:
            tally.done += 1
            tally.errors.append(f"{image.get('id')}: {exc.message}")
            continue
        tally.add(report)
        if opts.dry_run and not opts.json:
            print(_describe(report), file=out)


async def _adopt_one(glance: GlanceSource, hub: HubClient, opts: RunOptions, image: dict[str, Any]) -> Any:
    members = await glance.members(image["id"]) if image.get("visibility") == "shared" else []
    verify = opts.verify
    if verify == "sample":
        verify = "full" if sampled(image["id"], opts.sample_percent) else "none"
    body = {"image": image, "members": members, "source": glance.url, "verify": verify,
            "copy_missing": opts.copy_missing, "dry_run": opts.dry_run}
    return await hub.post("/edgesync/v1/adopt/images", body)


async def _progress(tally: Tally, err: TextIO) -> None:
    while True:
        await asyncio.sleep(PROGRESS_EVERY_S)
        print(tally.line(), file=err, flush=True)


def _describe(report: dict[str, Any]) -> str:
    """One image of a dry run: what would happen and why."""
    parts = [f"{c['store'] or c['source_store'] or '?'} {c['state'].replace('_', ' ')}"
             + (f" ({c['reason']})" if c["reason"] else "") for c in report["copies"]]
    parts += [f"copy to {', '.join(t['stores'])} ({t['why']})" for t in report["copy_tasks"]]
    why = f" — {report['reason']}" if report["reason"] else ""
    return f"{report['action']:<13} {report['image_id']} {report['name'] or ''}{why}: {'; '.join(parts) or '-'}"


def _summary(tally: Tally, opts: RunOptions, out: TextIO) -> None:
    if opts.json:
        import json

        json.dump(tally.as_json(), out, indent=2)
        out.write("\n")
        return
    elapsed = max(time.monotonic() - tally.started, 1e-9)
    print(f"{'dry run: ' if opts.dry_run else ''}{tally.total} images in {elapsed:.1f} s "
          f"({tally.total / elapsed:.1f} images/s)", file=out)
    for action, count in sorted(tally.actions.items()):
        print(f"  {action}: {count}", file=out)
    for state, count in sorted(tally.copies.items()):
        print(f"  copies {state.replace('_', ' ')}: {count}", file=out)
    for site, verified in sorted(tally.verified_bytes.items()):
        print(f"  {site}: {verified / GIB:.2f} GiB verified ({verified / GIB / elapsed:.2f} GiB/s)", file=out)
    copies = [t for r in tally.reports for t in r["copy_tasks"]]
    for task in copies:
        print(f"  copy started to {', '.join(task['stores'])}: {task['why']} (task {task['task_id']})", file=out)
    if tally.discrepancies:
        print(f"{len(tally.discrepancies)} discrepancies:", file=out)
        for line in tally.discrepancies:
            print(f"  {line}", file=out)
    for line in tally.errors:
        print(f"  error: {line}", file=out)
