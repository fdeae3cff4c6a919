"""Many edge sites: `edgesync lab up --store file` with N edges (an agent
instance each, `--agents-per-process` of them sharing a process so that what
is measured is the hub), then one image copied from central to all of them.

Prints how long `lab up` took, the import into central, the copy to every
edge, the hub's CPU time and peak RSS over the copy, the API's latency while
the copy runs (GET /v2/images/{id} and GET /v2/images, p50/p99/max, against
the same calls on the idle hub just before), and a reference measured in the
same run: `cp --sparse=always` of the image to N directories, all at once
(+ sync) — what the copy would cost without any protocol at all.

    .venv/bin/python bench/bench_lab_sites.py [--edges 200] [--agents-per-process 25] [--size-mib 64] [--keep]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from common import HubClient, MiB, allocated_bytes, make_half_zero_image, peak_rss_bytes, settled, timed
from latency import ApiProbe

from edgesync import lab

CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_s(pid: int) -> float:
    """User + system CPU seconds the process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def lab_up(directory: Path, sites: list[str], per_process: int) -> float:
    """`edgesync lab up` as a user runs it; its wall time."""
    start = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "edgesync", "lab", "up", "--dir", str(directory),
                           "--store", "file", "--sites", ",".join(sites),
                           "--agents-per-process", str(per_process)],
                          stdin=subprocess.DEVNULL, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"lab up failed:\n{done.stderr[-3000:]}")
    return time.monotonic() - start


async def copy(client: HubClient, image_id: str, edges: list[str]) -> dict[str, Any]:
    await client.import_(image_id, "copy-image", edges)
    return await client.wait(image_id, settled, timeout_s=3600, poll_s=0.5)


def agent_pids(info: dict[str, Any]) -> set[int]:
    return {entry["agent_pid"] for entry in info["sites"].values() if entry.get("agent_pid")}


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


async def reference_cp(src: Path, work: Path, count: int) -> float:
    targets = [work / "ref" / f"e{i}" for i in range(count)]
    for t in targets:
        t.parent.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    procs = [await asyncio.create_subprocess_exec("cp", "--sparse=always", str(src), str(t)) for t in targets]
    codes = [await p.wait() for p in procs]
    await (await asyncio.create_subprocess_exec("sync")).wait()
    elapsed = time.monotonic() - start
    shutil.rmtree(work / "ref")
    if any(codes):
        raise RuntimeError(f"cp failed: {codes}")
    return elapsed


def check_copies(lab_dir: Path, edges: list[str], image_id: str, size: int) -> int:
    """Every edge's store holds the image at full size; returns the bytes allocated there."""
    total = 0
    for site in edges:
        path = lab_dir / "stores" / site / image_id
        if path.stat().st_size != size:
            raise RuntimeError(f"{path}: {path.stat().st_size} bytes, expected {size}")
        total += allocated_bytes(path)
    return total


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--edges", type=int, default=200)
    ap.add_argument("--agents-per-process", type=int, default=25)
    ap.add_argument("--size-mib", type=int, default=64, help="image size (half of it data)")
    ap.add_argument("--keep", action="store_true", help="leave the lab running")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="edgesync-bench-sites-", dir=os.environ.get("BENCH_DIR")))
    lab_dir = work / "lab"
    edges = [f"dcn{i}" for i in range(args.edges)]
    src = make_half_zero_image(work / "half-zeros.raw", args.size_mib * MiB)
    t: dict[str, float] = {}
    try:
        t["up"] = lab_up(lab_dir, ["central", *edges], args.agents_per_process)
        info = lab.read_info(lab_dir)
        hub = info["hub_pid"]
        client = HubClient(info["hub_url"], info["admin_token"], info.get("ca_file"))
        try:
            image_id = await client.create("bench-sites")
            await client.stage_file(image_id, src)
            with timed(t, "import"):
                await client.import_(image_id, "glance-direct", ["central"])
                await client.wait(image_id, settled)
            idle = ApiProbe(info["hub_url"], info["admin_token"], image_id, info.get("ca_file"))
            await idle.during(asyncio.sleep(3))
            cpu_before = cpu_s(hub)
            with timed(t, "copy"):
                busy_probe = ApiProbe(info["hub_url"], info["admin_token"], image_id, info.get("ca_file"))
                image = await busy_probe.during(copy(client, image_id, edges))
                subprocess.run(["sync"], check=True)
            hub_cpu = cpu_s(hub) - cpu_before
            rss = peak_rss_bytes(hub)
            agents_rss = sum(rss_bytes(pid) for pid in agent_pids(lab.read_info(lab_dir)))
        finally:
            await client.close()
        stores = set(image["stores"].split(","))
        if stores != {"central", *edges} or image.get("os_glance_failed_import"):
            raise RuntimeError(f"not every edge holds the image: failed {image.get('os_glance_failed_import')!r}, "
                               f"missing {sorted({'central', *edges} - stores)}")
        allocated = check_copies(lab_dir, edges, image_id, src.stat().st_size)
    finally:
        if not args.keep:
            await lab.down(lab_dir)
    ref = await reference_cp(src, work, args.edges)
    data = allocated_bytes(src)
    processes = -(-args.edges // args.agents_per_process)
    print(f"{args.edges} edge sites (file stores, one agent instance each, {processes} agent processes); "
          f"image {args.size_mib} MiB RAW, {data / MiB:.0f} MiB of data; {os.cpu_count()} cores")
    print(f"lab up (hub, Mosquitto, {args.edges} agents)   {t['up']:7.1f} s")
    print(f"import into central                {t['import']:7.1f} s")
    print(f"copy to all {args.edges} edges              {t['copy']:7.1f} s   "
          f"({args.edges * data / MiB / t['copy']:.0f} MiB/s of data in all)")
    print(f"reference: {args.edges} x cp --sparse + sync  {ref:7.1f} s   "
          f"ratio copy/reference = {t['copy'] / ref:.2f}")
    print(f"allocated at the edges             {allocated / MiB:7.0f} MiB "
          f"({allocated / args.edges / MiB:.0f} per edge)")
    print(f"hub during the copy: {hub_cpu:.1f} CPU s, peak RSS {rss / MiB:.0f} MiB; "
          f"the agent processes' RSS at the end: {agents_rss / MiB:.0f} MiB in all")
    for name in ApiProbe.CALLS:
        print(f"API {name:22s} idle {idle.summary(name)}")
        print(f"{'':26s} during the copy {busy_probe.summary(name)}")
        print(f"{'':26s} the hub's own timing during the copy: {busy_probe.hub_summary(name)}")
    if not args.keep:
        shutil.rmtree(work)


if __name__ == "__main__":
    asyncio.run(main())
