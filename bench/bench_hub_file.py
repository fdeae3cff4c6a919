"""Issue 2 benchmark: import a 1 GiB RAW image (half zeros) into central and
copy it to two file stores, on a lab with file stores.

Prints the wall times, the space each copy allocates, the hub's peak RSS, and
the same copy done by `cp --sparse=always` to two directories in parallel
(+ sync) measured in the same run, with the ratio. For scale: Glance 33 took
28.5 s for this copy on this kind of machine, allocating the full 1 GiB per
copy (thin provisioning off by default).

    .venv/bin/python bench/bench_hub_file.py [--size-mib 1024] [--keep]
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from common import MiB, HubClient, allocated_bytes, make_half_zero_image, peak_rss_bytes, settled, timed  # noqa: E402

from edgesync import lab  # noqa: E402


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
    ap.add_argument("--keep", action="store_true", help="leave the lab running")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="edgesync-bench-"))
    src = make_half_zero_image(work / "half-zeros.raw", args.size_mib * MiB)
    subprocess.run(["sync"], check=True)
    info = await lab.up(work / "lab", store="file", sites=["central", "dcn0", "dcn1"])
    client = HubClient(info["hub_url"], info["admin_token"])
    t: dict[str, float] = {}
    try:
        image_id = await client.create("bench")
        with timed(t, "stage"):
            await client.stage_file(image_id, src)
        with timed(t, "import"):
            await client.import_(image_id, "glance-direct", ["central"])
            await client.wait(image_id, settled)
        with timed(t, "copy"):
            await client.import_(image_id, "copy-image", ["dcn0", "dcn1"])
            image = await client.wait(image_id, settled)
            subprocess.run(["sync"], check=True)
        ref = await reference_cp(src, work)
        rss = peak_rss_bytes(info["hub_pid"])
    finally:
        await client.close()
        if not args.keep:
            await lab.down(work / "lab")
    assert set(image["stores"].split(",")) == {"central", "dcn0", "dcn1"}, image
    print(f"image: {args.size_mib} MiB RAW, half zeros in 4 MiB stripes; data {allocated_bytes(src) / MiB:.0f} MiB")
    print(f"stage (upload to hub)        {t['stage']:6.2f} s")
    print(f"import into central          {t['import']:6.2f} s")
    print(f"copy to dcn0 + dcn1          {t['copy']:6.2f} s")
    print(f"reference cp --sparse x2     {ref:6.2f} s   ratio copy/reference = {t['copy'] / ref:.2f}")
    for store in ("central", "dcn0", "dcn1"):
        path = work / "lab" / "stores" / store / image_id
        print(f"allocated in {store:8}        {allocated_bytes(path) / MiB:6.0f} MiB of {path.stat().st_size / MiB:.0f} MiB")
    print(f"hub peak RSS                 {rss / MiB:6.0f} MiB")
    print("reference (not run here): Glance 33, same copy, 28.5 s, 1 GiB allocated per copy")
    if not args.keep:
        shutil.rmtree(work)


if __name__ == "__main__":
    asyncio.run(main())
