"""Hub benchmark: import a RAW image (half zeros, 4 MiB stripes) into central
through the API and copy it to two edge stores, on a lab.

Prints the wall times, the space each copy allocates, the hub's peak RSS, and
a reference copy measured in the same run, with the ratio:

* `--store file`: `cp --sparse=always` to two directories in parallel (+ sync).
  For scale: Glance 33 took 28.5 s for this 1 GiB copy to two file stores on
  this kind of machine, allocating the full 1 GiB per copy.
* `--store rbd`: `rbd export | rbd import` from central to both edge clusters
  in parallel. For scale: Glance 33 took 18.9-22.9 s on three real clusters.

    .venv/bin/python bench/bench_hub.py [--store file|rbd] [--size-mib 1024] [--keep]
    .venv/bin/python bench/bench_hub.py --store rbd --size-mib 4096   # peak RSS goal: < 200 MB
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from common import HubClient, MiB, allocated_bytes, make_half_zero_image, peak_rss_bytes, settled, timed

from edgesync import lab


async def run_all(*commands: list[str], shell: bool = False) -> None:
    if shell:
        procs = [await asyncio.create_subprocess_shell(c[0]) for c in commands]
    else:
        procs = [await asyncio.create_subprocess_exec(*c) for c in commands]
    codes = [await p.wait() for p in procs]
    if any(codes):
        raise RuntimeError(f"reference command failed: {commands} -> {codes}")


async def reference_rbd(info: dict, image_id: str) -> float:
    """Parallel `rbd export | rbd import` from central to both edges."""
    src = info["sites"]["central"]["ceph_conf"]
    results: dict[str, float] = {}
    cmds = [[f"rbd -c {src} export images/{image_id}@snap - 2>/dev/null | "
             f"rbd -c {info['sites'][s]['ceph_conf']} import - images/ref-{image_id[:8]} 2>/dev/null"]
            for s in ("dcn0", "dcn1")]
    with timed(results, "rbd"):
        await run_all(*cmds, shell=True)
    await run_all(*(["rbd", "-c", info["sites"][s]["ceph_conf"], "rm", "--no-progress",
                     f"images/ref-{image_id[:8]}"] for s in ("dcn0", "dcn1")))
    return results["rbd"]


def rbd_used(conf: str, image_id: str) -> tuple[int, int]:
    out = subprocess.run(["rbd", "-c", conf, "du", "--format", "json", f"images/{image_id}"],
                         capture_output=True, text=True, check=True)
    entries = json.loads(out.stdout)["images"]
    return sum(e["used_size"] for e in entries), entries[0]["provisioned_size"]


def allocation(info: dict, work: Path, store: str, image_id: str) -> tuple[int, int]:
    if info["store"] == "rbd":
        return rbd_used(info["sites"][store]["ceph_conf"], image_id)
    path = work / "lab" / "stores" / store / image_id
    return allocated_bytes(path), path.stat().st_size


async def reference_cp(src: Path, work: Path) -> float:
    results: dict[str, float] = {}
    targets = [work / "ref-a", work / "ref-b"]
    with timed(results, "cp"):
        procs = [await asyncio.create_subprocess_exec("cp", "--sparse=always", str(src), str(t)) for t in targets]
        for p in procs:
            await p.wait()
        await (await asyncio.create_subprocess_exec("sync")).wait()
    for t in targets:
        t.unlink()
    return results["cp"]


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size-mib", type=int, default=1024)
    ap.add_argument("--store", choices=["file", "rbd"], default="file")
    ap.add_argument("--keep", action="store_true", help="leave the lab running")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="edgesync-bench-"))
    src = make_half_zero_image(work / "half-zeros.raw", args.size_mib * MiB)
    subprocess.run(["sync"], check=True)
    info = await lab.up(work / "lab", store=args.store, sites=["central", "dcn0", "dcn1"])
    client = HubClient(info["hub_url"], info["admin_token"], info.get("ca_file"))
    t: dict[str, float] = {}
    try:
        image_id = await client.create("bench")
        rss_after: dict[str, int] = {}
        with timed(t, "stage"):
            await client.stage_file(image_id, src)
        rss_after["stage"] = peak_rss_bytes(info["hub_pid"])
        with timed(t, "import"):
            await client.import_(image_id, "glance-direct", ["central"])
            await client.wait(image_id, settled)
        rss_after["import"] = peak_rss_bytes(info["hub_pid"])
        with timed(t, "copy"):
            await client.import_(image_id, "copy-image", ["dcn0", "dcn1"])
            image = await client.wait(image_id, settled)
            subprocess.run(["sync"], check=True)
        rss = peak_rss_bytes(info["hub_pid"])
        if args.store == "rbd":
            ref, ref_name = await reference_rbd(info, image_id), "rbd export|import x2"
        else:
            ref, ref_name = await reference_cp(src, work), "cp --sparse x2"
        used = {s: allocation(info, work, s, image_id) for s in ("central", "dcn0", "dcn1")}
    finally:
        await client.close()
        if not args.keep:
            await lab.down(work / "lab")
    assert set(image["stores"].split(",")) == {"central", "dcn0", "dcn1"}, image
    print(f"image: {args.size_mib} MiB RAW, half zeros in 4 MiB stripes; data {allocated_bytes(src) / MiB:.0f} MiB")
    print(f"stage (upload to hub)        {t['stage']:6.2f} s")
    print(f"import into central          {t['import']:6.2f} s")
    print(f"copy to dcn0 + dcn1          {t['copy']:6.2f} s")
    print(f"reference {ref_name:20} {ref:6.2f} s   ratio copy/reference = {t['copy'] / ref:.2f}")
    for store, (alloc, size) in used.items():
        print(f"allocated in {store:8}        {alloc / MiB:6.0f} MiB of {size / MiB:.0f} MiB")
    print(f"hub peak RSS                 {rss / MiB:6.0f} MiB (peak after stage "
          f"{rss_after['stage'] / MiB:.0f}, after import {rss_after['import'] / MiB:.0f})")
    glance = "28.5 s (file stores)" if args.store == "file" else "18.9-22.9 s (three Ceph clusters)"
    print(f"for scale (not run here): Glance 33, 1 GiB copy to two stores, {glance}")
    if not args.keep:
        shutil.rmtree(work)


if __name__ == "__main__":
    asyncio.run(main())
