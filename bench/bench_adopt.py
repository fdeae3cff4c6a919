"""Adoption benchmark: `edgesync adopt --from-glance` over a Glance catalog of N images.

A lab with three real Ceph clusters, agents and Keystone (`lab up --store rbd
--auth keystone`) and a real Glance 33 on those clusters (edgesync/lab/glance.py,
one RBD store per site) hold N images (default 500) of `--size-mib` MiB each,
half data and half holes by MiB, each with a copy at every site:

* the central copy uploaded through Glance (Glance wrote it, thin);
* the edge copies written into dcn0's and dcn1's `images` pools in Glance's
  layout (`<uuid>` with protected snapshot `snap`, by edgesync's RBD driver:
  a thousand Glance copy-image runs would take most of an hour here) and
  registered in Glance as its locations (`PATCH add /locations/-`: Glance
  checks them against its stores itself).

Then three runs of the same command, timed:

1. `--verify none`: every image adopted, each copy checked published at the
   right size — the metadata rate (images/s);
2. `--verify full`: every copy's bytes hashed where it lies (the hub for
   central, each edge's agent) — GiB verified per second per site;
3. `--verify full` again: nothing changed, nothing is re-read — the rate of a
   re-run (the cut-over's second pass over an unchanged catalog).

The reference, in the same run: `rbd export POOL/UUID@snap - | sha512sum` of
a sample of the images at one edge, as GiB/s.

    .venv/bin/python bench/bench_adopt.py [--images 500] [--size-mib 4] [--parallel 8] [--keep]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import aiohttp

from edgesync import lab
from edgesync.config import StoreConfig
from edgesync.lab import glance as glance_lab
from edgesync.stores.rbd import RbdStore

MiB = 1 << 20
GiB = 1 << 30
SITES = ["central", "dcn0", "dcn1"]
EDGES = SITES[1:]
# Glance on SQLite (as the lab runs it) answers 500 to concurrent writes: one image at a time.
BUILD_PARALLEL = 1
REFERENCE_SAMPLE = 40


def image_bytes(index: int, size_mib: int) -> bytes:
    """Data in the even MiB, holes in the odd ones; every image's bytes its own."""
    seed = index.to_bytes(4, "big")
    block = (seed * (MiB // 4))[:MiB]
    return b"".join(block if i % 2 == 0 else bytes(MiB) for i in range(size_mib))


class Glance:
    def __init__(self, url: str, token: str) -> None:
        self.url = url
        self.session = aiohttp.ClientSession(headers={"X-Auth-Token": token},
                                             timeout=aiohttp.ClientTimeout(total=600))

    async def call(self, method: str, path: str, **kw: Any) -> Any:
        async with self.session.request(method, self.url + path, **kw) as r:
            text = await r.text()
            if r.status >= 400:
                raise RuntimeError(f"Glance {method} {path}: {r.status} {text[:500]}")
            return json.loads(text) if text else None

    async def close(self) -> None:
        await self.session.close()


async def build_catalog(glance: Glance, info: dict[str, Any], count: int, size_mib: int) -> list[str]:
    """N images in Glance, each with its copies at every site; their ids."""
    stores = {site: RbdStore.from_config(site, _store_config(info["sites"][site])) for site in EDGES}
    slots = asyncio.Semaphore(BUILD_PARALLEL)
    ids: list[str] = []

    async def one(index: int) -> None:
        async with slots:
            data = image_bytes(index, size_mib)
            image = await glance.call("POST", "/v2/images", json={
                "name": f"bench-{index:04d}", "disk_format": "raw", "container_format": "bare",
                "visibility": "public", "os_distro": "cirros", "tags": ["bench"]})
            await glance.call("PUT", f"/v2/images/{image['id']}/file", data=data,
                              headers={"Content-Type": "application/octet-stream"})
            patch = []
            for site, store in stores.items():
                await _write_copy(store, image["id"], data)
                url = f"rbd://{info['sites'][site]['fsid']}/{info['sites'][site]['pool']}/{image['id']}/snap"
                patch.append({"op": "add", "path": "/locations/-", "value": {"url": url, "metadata": {"store": site}}})
            await glance.call("PATCH", f"/v2/images/{image['id']}", json=patch,
                              headers={"Content-Type": "application/openstack-images-v2.1-json-patch"})
            ids.append(image["id"])
            if len(ids) % 50 == 0:
                print(f"  catalog: {len(ids)}/{count} images", flush=True)

    try:
        await asyncio.gather(*(one(i) for i in range(count)))
    finally:
        for store in stores.values():
            await store.close()
    return ids


def _store_config(site: dict[str, Any]) -> StoreConfig:
    return StoreConfig(type="rbd", description="bench", ceph_conf=Path(site["ceph_conf"]), pool=site["pool"],
                       user=site["ceph_user"], keyring=Path(site["keyring"]))


async def _write_copy(store: RbdStore, image_id: str, data: bytes) -> None:
    async with await store.open_writer(image_id, len(data)) as writer:
        await writer.write(0, data)
        await writer.publish()


def adopt(info: dict[str, Any], url: str, *args: str) -> tuple[float, dict[str, Any]]:
    env = {**os.environ, "OS_CLIENT_CONFIG_FILE": info["keystone"]["clouds_yaml"]}
    argv = [sys.executable, "-m", "edgesync", "adopt", "--from-glance", url, "--os-cloud",
            info["keystone"]["clouds"]["admin"], "--lab-dir", info["dir"], "--json", *args]
    started = time.monotonic()
    done = subprocess.run(argv, capture_output=True, text=True, env=env, stdin=subprocess.DEVNULL)
    elapsed = time.monotonic() - started
    if not done.stdout:
        raise RuntimeError(f"adopt failed ({done.returncode}): {done.stderr[-2000:]}")
    return elapsed, json.loads(done.stdout)


def reference(info: dict[str, Any], ids: list[str], site: str) -> float:
    """Seconds for `rbd export … - | sha512sum` of a sample of a site's copies, one after the other."""
    conf, pool = info["sites"][site]["ceph_conf"], info["sites"][site]["pool"]
    started = time.monotonic()
    for image_id in ids[:REFERENCE_SAMPLE]:
        export = subprocess.Popen(["rbd", "-c", conf, "export", f"{pool}/{image_id}@snap", "-"],
                                  stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        subprocess.run(["sha512sum"], stdin=export.stdout, capture_output=True, check=True)
        if export.wait() != 0:
            raise RuntimeError(f"rbd export of {image_id} at {site} failed")
    return time.monotonic() - started


def report(name: str, elapsed: float, summary: dict[str, Any]) -> None:
    images = summary["images"]
    print(f"{name}: {images} images in {elapsed:.1f} s = {images / elapsed:.1f} images/s; "
          f"actions {summary['actions']}; copies {summary['copies']}")
    for site, verified in sorted(summary["verified_bytes"].items()):
        print(f"  {site}: {verified / GiB:.2f} GiB verified = {verified / GiB / elapsed:.3f} GiB/s")
    if summary["discrepancies"] or summary["errors"]:
        print(f"  discrepancies {len(summary['discrepancies'])}, errors {len(summary['errors'])}: "
              f"{(summary['discrepancies'] + summary['errors'])[:3]}")


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=500)
    parser.add_argument("--size-mib", type=int, default=4)
    parser.add_argument("--parallel", type=int, default=8, help="adopt --parallel")
    parser.add_argument("--dir", type=Path, help="lab directory (default: a temporary one)")
    parser.add_argument("--keep", action="store_true", help="leave the lab and Glance running")
    args = parser.parse_args()
    lab_dir = (args.dir or Path(tempfile.mkdtemp(prefix="bench-adopt-"))).resolve()
    info = await lab.up(lab_dir, store="rbd", sites=SITES, auth="keystone")
    clouds = json.loads(Path(info["keystone"]["clouds_yaml"]).read_text())["clouds"]
    admin = clouds[info["keystone"]["clouds"]["admin"]]["auth"]
    source = await glance_lab.up(lab_dir / "glance", glance_lab.sites_of(info),
                                 auth_url=info["keystone"]["auth_url"], admin_auth=admin,
                                 ca_file=Path(info["ca_file"]) if info.get("ca_file") else None)
    glance = Glance(source.url, info["admin_token"])
    try:
        started = time.monotonic()
        ids = await build_catalog(glance, info, args.images, args.size_mib)
        print(f"catalog: {len(ids)} images of {args.size_mib} MiB ({args.size_mib // 2} MiB data) at "
              f"{len(SITES)} sites, built in {time.monotonic() - started:.0f} s")
        par = ["--parallel", str(args.parallel)]
        for name, extra in (("verify none", ["--verify", "none"]), ("verify full", ["--verify", "full"]),
                            ("re-run", ["--verify", "full"])):
            elapsed, summary = adopt(info, source.url, *par, *extra)
            report(name, elapsed, summary)
        ref_s = reference(info, ids, "dcn0")
        sample = min(len(ids), REFERENCE_SAMPLE)
        ref_gib = sample * args.size_mib * MiB / GiB
        print(f"reference: rbd export | sha512sum of {sample} copies at dcn0, one at a time: {ref_s:.1f} s = "
              f"{ref_gib / ref_s:.3f} GiB/s")
    finally:
        await glance.close()
        if not args.keep:
            await glance_lab.stop(source)
            await lab.down(lab_dir)
            if args.dir is None:
                shutil.rmtree(lab_dir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
