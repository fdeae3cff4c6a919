"""Update benchmark: the next build of an OS image, to edges that hold this one.

On a lab with three real Ceph clusters and one agent per edge
(`edgesync lab up --store rbd --agents`), by default a WAN lab with each
edge's link at 200 Mbit/s (`--wan 200mbit`; `--wan none` for loopback):

* v1: an ext4 image (`mke2fs -t ext4 -b 4096 -d TREE`, 2 GiB, about half
  allocated) of the machine's own files (/usr/share, /usr/lib);
* v2: the same tree with a few percent of its files changed (bytes inserted,
  shifting the rest of each file) and one file added, built again the same way.

v1 is imported into central and copied to dcn0 and dcn1; then v2 likewise.
It prints, for each copy, the bytes each agent received over HTTP (its
edgesync_transfer_bytes_total, zstd frames where compressed) and, on the WAN,
the bytes that crossed each edge's link towards it (the switch's counters:
HTTP, MQTT and TCP/IP overhead included), against the image's allocated
bytes, the data the hub served (before compression), and the copy's time.
The goal (issue 12): v2's wire bytes per edge <= 0.15 x v2's allocated bytes
(the link's bytes on the WAN, the agents' HTTP bytes on loopback).

    .venv/bin/python bench/bench_update.py [--size-mib 2048] [--data-mib 1024]
        [--changed 0.03] [--added-mib 20] [--wan 200mbit|none] [--keep]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench_agents import AGENT_RECEIVED, EDGES, SITES, all_counters, import_to_central, rbd_du
from common import HubClient, MiB, allocated_bytes, settled

from edgesync import lab
from tests.fixtures.ext4 import change_files, copy_files, mkfs

SOURCES = [Path("/usr/share"), Path("/usr/lib")]
SERVED = "edgesync_transfer_served_bytes_total"
SENT = "edgesync_transfer_sent_bytes_total"


def build_images(work: Path, size_mib: int, data_mib: int, changed: float, added_mib: int) -> tuple[Path, Path]:
    # Half of each source, so both text (/usr/share) and binaries (/usr/lib) are in it.
    tree = work / "tree"
    for source in SOURCES:
        copy_files(tree / source.name, [source], data_mib * MiB // len(SOURCES))
    v1 = mkfs(tree, work / "v1.img", size_mib * MiB)
    change_files(tree, changed_fraction=changed, added_bytes=added_mib * MiB)
    v2 = mkfs(tree, work / "v2.img", size_mib * MiB)
    shutil.rmtree(tree)
    return v1, v2


async def link_to_edges(info: dict[str, Any]) -> dict[str, int]:
    """Bytes sent down each edge's WAN link so far (none on loopback)."""
    if not info.get("wan"):
        return {}
    return {s: (await lab.link_bytes(Path(info["dir"]), s))["to_site"] for s in EDGES}


async def copy_to_edges(client: HubClient, info: dict[str, Any], image_id: str) -> dict[str, Any]:
    before = await all_counters(info)
    link_before = await link_to_edges(info)
    started = time.monotonic()
    await client.import_(image_id, "copy-image", EDGES)
    image = await client.wait(image_id, settled, poll_s=0.1)
    elapsed = time.monotonic() - started
    if set(image["stores"].split(",")) != set(SITES) or image.get("os_glance_failed_import"):
        raise RuntimeError(f"the copy did not reach every site: {image}")
    after = await all_counters(info)
    link_after = await link_to_edges(info)
    return {
        "seconds": elapsed,
        "link": {s: link_after[s] - link_before[s] for s in link_after},
        "wire": {s: int(after[s][AGENT_RECEIVED] - before[s][AGENT_RECEIVED]) for s in EDGES},
        "served": int(after["hub"].get(SERVED, 0) - before["hub"].get(SERVED, 0)),
        "sent": int(after["hub"].get(SENT, 0) - before["hub"].get(SENT, 0)),
    }


def report(name: str, allocated: int, copy: dict[str, Any]) -> float:
    """Prints one copy's bytes; returns its worst edge's wire bytes / allocated (link bytes on the WAN)."""
    def per_site(counts: dict[str, int]) -> str:
        return ", ".join(f"{s} {b / MiB:.1f} MiB ({b / allocated:.3f}x)" for s, b in counts.items())

    print(f"{name}: allocated {allocated / MiB:.0f} MiB; copy to {', '.join(EDGES)} in {copy['seconds']:.1f} s; "
          f"received over HTTP per edge: {per_site(copy['wire'])}; hub served {copy['served'] / MiB:.1f} MiB "
          f"of data as {copy['sent'] / MiB:.1f} MiB")
    if copy["link"]:
        print(f"  crossed each edge's link towards it: {per_site(copy['link'])}")
    return max((copy["link"] or copy["wire"]).values()) / allocated


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size-mib", type=int, default=2048)
    ap.add_argument("--data-mib", type=int, default=1024, help="bytes of files copied into the tree")
    ap.add_argument("--changed", type=float, default=0.03, help="fraction of files v2 changes")
    ap.add_argument("--added-mib", type=int, default=20, help="size of the file v2 adds")
    ap.add_argument("--wan", default="200mbit", help="each edge's link rate, or 'none' for a loopback lab")
    ap.add_argument("--keep", action="store_true", help="leave the lab running (and its directory)")
    args = ap.parse_args()
    wan = None if args.wan == "none" else args.wan
    work = Path(tempfile.mkdtemp(prefix="edgesync-bench-update-", dir=os.environ.get("BENCH_DIR")))
    v1, v2 = build_images(work, args.size_mib, args.data_mib, args.changed, args.added_mib)
    load_before = os.getloadavg()[0]
    info = await lab.up(work / "lab", store="rbd", sites=SITES, agents=True, wan=wan)
    client = HubClient(info["hub_url"], info["admin_token"], info.get("ca_file"))
    try:
        id1 = await import_to_central(client, v1, "bench-update-v1")
        first = await copy_to_edges(client, info, id1)
        id2 = await import_to_central(client, v2, "bench-update-v2")
        second = await copy_to_edges(client, info, id2)
        central = info["sites"]["central"]
        du = {name: rbd_du(central["ceph_conf"], i, central["netns"])[0] for name, i in (("v1", id1), ("v2", id2))}
    finally:
        await client.close()
        if not args.keep:
            await lab.down(work / "lab")
    print(f"v1, v2: ext4 of {args.size_mib} MiB from {args.data_mib} MiB of {', '.join(map(str, SOURCES))}; "
          f"v2 changes {args.changed:.0%} of the files and adds {args.added_mib} MiB; "
          + (f"each edge's link at {wan}" if wan else "loopback (no WAN)"))
    print(f"load average before {load_before:.2f}, after {os.getloadavg()[0]:.2f} (2 cores shared with other work)")
    report("v1 (nothing at the edges)", allocated_bytes(v1), first)
    worst = report("v2 (edges hold v1)", allocated_bytes(v2), second)
    print(f"rbd du in central: v1 {du['v1'] / MiB:.0f} MiB, v2 {du['v2'] / MiB:.0f} MiB")
    print(f"goal: v2 wire bytes per edge ({'link' if wan else 'HTTP'}) <= 0.15 x v2 allocated: "
          f"{'met' if worst <= 0.15 else 'NOT met'} (worst edge {worst:.3f}x)")
    if not args.keep:
        shutil.rmtree(work)


if __name__ == "__main__":
    asyncio.run(main())
