"""`make demo`: a lab (hub, Mosquitto, one agent per edge site), a generated
qcow2 imported through the real `glance` client (converted to RAW on the
way), copied to the edges by their agents, and shown."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from edgesync import lab
from edgesync.tls import client_context

DEMO_IMAGE_MIB = 256
DATA_STRIPE_MIB = 4


def make_demo_qcow2(directory: Path) -> Path:
    """A 256 MiB disk, every other 4 MiB stripe data, as qcow2."""
    directory.mkdir(parents=True, exist_ok=True)
    raw, qcow2 = directory / "demo.raw", directory / "demo.qcow2"
    if qcow2.exists():
        return qcow2
    stripe = DATA_STRIPE_MIB * 1024 * 1024
    with raw.open("wb") as fh:
        fh.truncate(DEMO_IMAGE_MIB * 1024 * 1024)
        for offset in range(0, DEMO_IMAGE_MIB * 1024 * 1024, 2 * stripe):
            fh.seek(offset)
            fh.write(os.urandom(stripe))
    subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(raw), str(qcow2)], check=True)
    raw.unlink()
    return qcow2


def _glance(info: dict[str, Any], *args: str) -> str:
    glance = Path(sys.executable).with_name("glance")
    env = {**os.environ, "OS_IMAGE_URL": info["hub_url"], "OS_AUTH_TOKEN": info["admin_token"],
           **({"OS_CACERT": info["ca_file"]} if info.get("ca_file") else {})}
    print(f"\n$ glance {' '.join(args)}", flush=True)
    # glanceclient reads image data from any stdin that isn't a tty, so stdin
    # must be closed (`<&-`), not merely empty.
    out = subprocess.run(["sh", "-c", 'exec "$@" <&-', "glance", str(glance), *args], env=env,
                         capture_output=True, text=True, check=False)
    print(out.stdout + out.stderr, end="", flush=True)
    if out.returncode != 0:
        raise lab.LabError(f"glance {args[0]} failed (exit {out.returncode})")
    return out.stdout


def _image(info: dict[str, Any], image_id: str) -> dict[str, Any]:
    req = urllib.request.Request(f"{info['hub_url']}/v2/images/{image_id}",
                                 headers={"X-Auth-Token": info["admin_token"]})
    ca_file = info.get("ca_file")
    context = client_context(Path(ca_file)) if ca_file else None
    with urllib.request.urlopen(req, timeout=10, context=context) as resp:
        image: dict[str, Any] = json.loads(resp.read())
    return image


def _wait(info: dict[str, Any], image_id: str, done: Any, what: str, timeout_s: float = 300) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        image = _image(info, image_id)
        if done(image):
            return image
        time.sleep(0.5)
    raise lab.LabError(f"timed out waiting for {what}")


async def run_demo(directory: Path, *, store: str) -> int:
    print(f"== bringing up the lab in {directory} (store: {store}) ...", flush=True)
    started = time.monotonic()
    info = await lab.up(directory, store=store, sites=["central", "dcn0", "dcn1"])
    print(f"== lab ready in {time.monotonic() - started:.1f} s: hub {info['hub_url']}", flush=True)
    for name, site in info["sites"].items():
        agent = f"agent pid {site['agent_pid']}" if site.get("agent_pid") else "no agent"
        print(f"   {name:8} {site['role']:8} AZ {site['availability_zone']:8} fsid {site['fsid']}  {agent}")
    qcow2 = await asyncio.to_thread(make_demo_qcow2, directory / "demo")
    _glance(info, "stores-info")
    out = _glance(info, "image-create-via-import", "--disk-format", "qcow2", "--container-format", "bare",
                  "--name", f"demo-{int(time.time())}", "--file", str(qcow2), "--stores", "central")
    image_id = next(line.split("|")[2].strip() for line in out.splitlines() if line.startswith("| id "))
    started = time.monotonic()
    _wait(info, image_id, lambda i: i["status"] == "active", "the import")
    print(f"== imported (qcow2 → raw) into central in {time.monotonic() - started:.1f} s", flush=True)
    _glance(info, "image-import", image_id, "--stores", "dcn0,dcn1", "--import-method", "copy-image")
    started = time.monotonic()
    image = _wait(info, image_id, lambda i: not i.get("os_glance_importing_to_stores"), "the copies")
    print(f"== copied to dcn0 and dcn1 in {time.monotonic() - started:.1f} s", flush=True)
    _glance(info, "image-show", image_id)
    print("\n== stores:", image.get("stores"))
    for loc in image.get("locations", []):
        print(f"   {loc['metadata']['store']:8} {loc['url']}")
    if image.get("os_glance_failed_import"):
        print("== failed stores:", image["os_glance_failed_import"])
        return 1
    cacert = f" OS_CACERT={info['ca_file']}" if info.get("ca_file") else ""
    print(f"\nThe lab keeps running. Try: export OS_IMAGE_URL={info['hub_url']} "
          f"OS_AUTH_TOKEN={info['admin_token']}{cacert}; .venv/bin/glance image-list --include-stores")
    print(f"Stop it with: make lab-down   (or .venv/bin/edgesync lab down --dir {directory})")
    return 0
