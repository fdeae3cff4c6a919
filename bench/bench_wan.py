"""WAN copy benchmark (issue 12 item 7): central to both edges across shaped links.

On a WAN lab (`edgesync lab up --store rbd --agents --wan 200mbit`): three
real Ceph clusters, every site in its own network namespace, each edge behind
a link shaped to RATE in both directions (central's, the data centre's, is
not shaped). The image is an ext4 filesystem (`mke2fs -t ext4 -b 4096 -d
TREE`, 2 GiB, about half allocated) of the machine's own files, half from
/usr/share (text) and half from /usr/lib (binaries), imported into central.

Timed one after the other, each to both edges at once:

* edgesync: `copy-image` to dcn0 and dcn1, from the request until the image
  is settled with both stores (agents pull ranges from the hub, zstd on the
  wire, blocks checked against the manifest);
* `rbd export-diff | rbd import-diff` run in each edge's namespace, so librbd
  at the edge reads central's OSDs across the edge's link (what rbd-mirror's
  snapshot mode sends: the image's allocated extents);
* `rbd export | rbd import` likewise.

It prints each one's time, edgesync's ratio to each reference, and the bytes
that crossed each edge's link (the switch's counters, both directions: data,
protocol and TCP/IP overhead). Goal (issue 12): edgesync <= 0.35 x the
export-diff time.

    .venv/bin/python bench/bench_wan.py [--size-mib 2048] [--data-mib 1024] [--rate 200mbit] [--keep]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shlex
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench_agents import EDGES, SITES, import_to_central, rbd_du, run_shell
from common import HubClient, MiB, allocated_bytes, settled

from edgesync import lab
from tests.fixtures.ext4 import copy_files, mkfs

SOURCES = [Path("/usr/share"), Path("/usr/lib")]
POLL_S = 0.1
GOAL = 0.35


@dataclass
class Method:
    name: str
    seconds: float = 0.0
    link: dict[str, dict[str, int]] = field(default_factory=dict)  # edge -> to_site / from_site bytes


def build_image(work: Path, size_mib: int, data_mib: int) -> Path:
    """An ext4 image of `size_mib` holding `data_mib` of files, half from each source."""
    tree = work / "tree"
    for source in SOURCES:
        copy_files(tree / source.name, [source], data_mib * MiB // len(SOURCES))
    image = mkfs(tree, work / "fs.img", size_mib * MiB)
    shutil.rmtree(tree)
    return image


async def link_counters(lab_dir: Path) -> dict[str, dict[str, int]]:
    return {site: await lab.link_bytes(lab_dir, site) for site in EDGES}


async def measured(lab_dir: Path, method: Method, run: Any) -> Method:
    before = await link_counters(lab_dir)
    started = time.monotonic()
    await run
    method.seconds = time.monotonic() - started
    after = await link_counters(lab_dir)
    method.link = {s: {k: after[s][k] - before[s][k] for k in after[s]} for s in EDGES}
    return method


async def edgesync_copy(client: HubClient, image_id: str) -> None:
    await client.import_(image_id, "copy-image", EDGES)
    image = await client.wait(image_id, settled, timeout_s=3600, poll_s=POLL_S)
    if set(image["stores"].split(",")) != set(SITES) or image.get("os_glance_failed_import"):
        raise RuntimeError(f"the copy did not reach every site: {image}")


def at_edge(info: dict[str, Any], site: str, pipeline: str) -> str:
    """`pipeline` run in `site`'s namespace: its traffic to central crosses the site's link."""
    return f"ip netns exec {shlex.quote(info['sites'][site]['netns'])} sh -c {shlex.quote(pipeline)}"


def export_diff_pipelines(info: dict[str, Any], image_id: str, size: int) -> list[str]:
    central = info["sites"]["central"]["ceph_conf"]
    out = []
    for site in EDGES:
        conf, target = info["sites"][site]["ceph_conf"], f"images/ref-diff-{image_id[:8]}"
        out.append(at_edge(info, site, f"rbd -c {conf} create --size {size // MiB}M {target} && "
                                       f"rbd -c {central} export-diff --no-progress images/{image_id}@snap - | "
                                       f"rbd -c {conf} import-diff --no-progress - {target}"))
    return out


def export_pipelines(info: dict[str, Any], image_id: str) -> list[str]:
    central = info["sites"]["central"]["ceph_conf"]
    return [at_edge(info, site, f"rbd -c {central} export --no-progress images/{image_id}@snap - | "
                                f"rbd -c {info['sites'][site]['ceph_conf']} import --no-progress - "
                                f"images/ref-full-{image_id[:8]}")
            for site in EDGES]


def report(args: argparse.Namespace, allocated: int, du: int, methods: list[Method],
           load: tuple[float, float]) -> None:
    ours, diff, full = methods
    print(f"image: ext4 of {args.size_mib} MiB (mke2fs -d) from {args.data_mib} MiB of "
          f"{', '.join(map(str, SOURCES))}; allocated {allocated / MiB:.0f} MiB in the file, "
          f"{du / MiB:.0f} MiB in central (rbd du)")
    print(f"links: each edge at {args.rate} both ways; central unshaped")
    print(f"load average before {load[0]:.2f}, after {load[1]:.2f} (2 cores shared with other work)")
    print(f"{'method':34} {'time':>8}   {'link bytes to/from each edge (MiB; to / allocated)':52}")
    for m in methods:
        per_edge = ", ".join(f"{s} {b['to_site'] / MiB:.0f}/{b['from_site'] / MiB:.1f} "
                             f"({b['to_site'] / allocated:.2f}x)" for s, b in m.link.items())
        print(f"{m.name:34} {m.seconds:6.1f} s   {per_edge}")
    print(f"ratio edgesync / export-diff|import-diff   {ours.seconds / diff.seconds:.3f}")
    print(f"ratio edgesync / export|import             {ours.seconds / full.seconds:.3f}")
    ratio = ours.seconds / diff.seconds
    print(f"goal edgesync <= {GOAL} x export-diff: {'met' if ratio <= GOAL else 'NOT met'} ({ratio:.3f})")


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size-mib", type=int, default=2048)
    ap.add_argument("--data-mib", type=int, default=1024, help="bytes of files copied into the tree")
    ap.add_argument("--rate", default="200mbit", help="each edge's link (tbf), both directions")
    ap.add_argument("--keep", action="store_true", help="leave the lab running (and its directory)")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="edgesync-bench-wan-", dir=os.environ.get("BENCH_DIR")))
    image = build_image(work, args.size_mib, args.data_mib)
    load_before = os.getloadavg()[0]
    lab_dir = work / "lab"
    info = await lab.up(lab_dir, store="rbd", sites=SITES, agents=True, wan=args.rate)
    client = HubClient(info["hub_url"], info["admin_token"], info.get("ca_file"))
    try:
        image_id = await import_to_central(client, image, "bench-wan")
        central = info["sites"]["central"]
        du, size = rbd_du(central["ceph_conf"], image_id, central["netns"])
        methods = [
            await measured(lab_dir, Method("edgesync copy-image"), edgesync_copy(client, image_id)),
            await measured(lab_dir, Method("rbd export-diff | import-diff"),
                           run_shell(*export_diff_pipelines(info, image_id, size))),
            await measured(lab_dir, Method("rbd export | import"), run_shell(*export_pipelines(info, image_id))),
        ]
    finally:
        await client.close()
        if not args.keep:
            await lab.down(lab_dir)
    report(args, allocated_bytes(image), du, methods, (load_before, os.getloadavg()[0]))
    if not args.keep:
        shutil.rmtree(work)


if __name__ == "__main__":
    asyncio.run(main())
