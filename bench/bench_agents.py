"""Agents benchmark: copy a 1 GiB RAW image (half zeros, 4 MiB data/hole
stripes) from central to dcn0 and dcn1 through the site agents, on a lab with
three real Ceph clusters, Mosquitto and one agent per edge
(`edgesync lab up --store rbd --agents`).

Each round imports a fresh image into central, then times, one after the
other (the order alternates between rounds):

* edgesync: `copy-image` to dcn0 and dcn1, from the request until the image
  is settled with both stores (each agent fetches the image's chunk manifest,
  pulls the data ranges from the hub over HTTP — zstd only on a link slower
  than the compressor —, checks every 4 KiB block against the manifest,
  writes into its pool, then snapshots and publishes);
* the reference: `rbd export | rbd import` from central to both edge clusters
  in parallel (no verification at all).

It prints both times and their ratio, the data bytes that crossed HTTP (the
hub's and the agents' transfer counters, from their /metrics) against the
image's allocated bytes, `rbd du` per site, the hub's and the agents' peak
RSS during the copy (VmHWM, reset before it), and user+sys CPU seconds per
process. Other work on the machine shows up in the wall times, not in the
CPU seconds: compare those when the machine is busy.

Goals (issues 4 and 12): ratio <= 0.8, bytes on the wire <= 1.05 x allocated.
For scale: Glance 33 took 18.9-22.9 s for this copy on this kind of machine.

    .venv/bin/python bench/bench_agents.py [--size-mib 1024] [--rounds 3] [--keep]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import aiohttp
from common import HubClient, MiB, lab_connector, make_half_zero_image, peak_rss_bytes, settled
from prometheus_client.parser import text_string_to_metric_families

from edgesync import lab

SITES = ["central", "dcn0", "dcn1"]
EDGES = SITES[1:]
TICK_S = 1 / os.sysconf("SC_CLK_TCK")
# How often the copy's end is looked for: each look costs the hub a catalog
# query, which would count in its CPU seconds; a copy's time is late by half
# of this on average.
POLL_S = 0.1


# --- the lab's processes -------------------------------------------------------------


def lab_processes(lab_dir: Path, info: dict[str, Any]) -> dict[str, int]:
    """name → pid of every long-running process of the lab."""
    procs = {"hub": info["hub_pid"]}
    procs |= {f"agent-{s}": info["sites"][s]["agent_pid"] for s in EDGES}
    for site in SITES:
        for pid_file in sorted((lab_dir / "ceph" / site / "run").glob("*.pid")):
            procs[f"{pid_file.stem.split('.')[0]}-{site}"] = int(pid_file.read_text())
    mosquitto = lab_dir / "mosquitto" / "mosquitto.pid"
    if mosquitto.exists():
        procs["mosquitto"] = int(mosquitto.read_text())
    return procs


def cpu_seconds(pid: int) -> float:
    """user + sys CPU of `pid` (all its threads) so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) * TICK_S  # utime, stime


def children_cpu_seconds() -> float:
    """user + sys of every child process waited for (the reference's rbd pipelines)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def reset_peak_rss(pid: int) -> None:
    """Start VmHWM afresh (writing 5 to clear_refs), so the peak is this phase's."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")


@dataclass
class CpuMeter:
    procs: dict[str, int]
    start: dict[str, float] = field(default_factory=dict)

    def __enter__(self) -> CpuMeter:
        self.start = {name: cpu_seconds(pid) for name, pid in self.procs.items()}
        self.start["rbd CLI"] = children_cpu_seconds()
        return self

    def __exit__(self, *exc: object) -> None:
        self.used = {name: cpu_seconds(pid) - self.start[name] for name, pid in self.procs.items()}
        self.used["rbd CLI"] = children_cpu_seconds() - self.start["rbd CLI"]


# --- Ceph and the hub --------------------------------------------------------------------


def rbd_du(conf: str, name: str, netns: str | None = None) -> tuple[int, int]:
    """(used, provisioned) bytes of `name` and its snapshots, as `rbd du` says;
    run in network namespace `netns` (a WAN lab's site) if given."""
    out = subprocess.run([*(["ip", "netns", "exec", netns] if netns else []),
                          "rbd", "-c", conf, "du", "--format", "json", f"images/{name}"],
                         capture_output=True, text=True, check=True, timeout=300)
    entries = json.loads(out.stdout)["images"]
    return sum(e["used_size"] for e in entries), entries[0]["provisioned_size"]


# What the hub served, and what each agent received, over the transfer protocol.
HUB_COUNTERS = ("edgesync_transfer_served_bytes_total", "edgesync_transfer_served_ranges_total",
                "edgesync_transfer_shared_ranges_total")
AGENT_RECEIVED = "edgesync_transfer_bytes_total"


async def all_counters(info: dict[str, Any]) -> dict[str, dict[str, float]]:
    """The transfer counters of the hub and of each agent, from their /metrics."""
    targets = {"hub": (info["hub_url"], None)} | {
        s: (info["sites"][s]["agent_url"], info["sites"][s].get("netns")) for s in EDGES}
    counters = {}
    for name, (url, netns) in targets.items():
        async with (aiohttp.ClientSession(connector=lab_connector(info.get("ca_file"), netns)) as session,
                    session.get(f"{url}/metrics") as resp):
            resp.raise_for_status()
            counters[name] = sample_sums(await resp.text())
    return counters


def sample_sums(exposition: str) -> dict[str, float]:
    """Each sample name's value, summed over its labels."""
    sums: dict[str, float] = {}
    for family in text_string_to_metric_families(exposition):
        for sample in family.samples:
            sums[sample.name] = sums.get(sample.name, 0.0) + sample.value
    return sums


async def run_shell(*commands: str) -> None:
    procs = [await asyncio.create_subprocess_shell(c) for c in commands]
    codes = [await p.wait() for p in procs]
    if any(codes):
        raise RuntimeError(f"reference command failed: {commands} -> {codes}")


# --- one round ------------------------------------------------------------------------------


@dataclass
class Round:
    copy_s: float = 0.0
    reference_s: float = 0.0
    allocated: int = 0
    size: int = 0
    fetched: dict[str, int] = field(default_factory=dict)  # per edge site, agents' counters
    served: int = 0  # the hub's counter
    ranges: int = 0  # data responses the hub sent
    shared: int = 0  # of those, answered from another agent's read
    du: dict[str, tuple[int, int]] = field(default_factory=dict)
    copy_cpu: dict[str, float] = field(default_factory=dict)
    reference_cpu: dict[str, float] = field(default_factory=dict)
    peak_rss: dict[str, int] = field(default_factory=dict)


async def import_to_central(client: HubClient, src: Path, name: str) -> str:
    image_id = await client.create(name)
    await client.stage_file(image_id, src)
    await client.import_(image_id, "glance-direct", ["central"])
    await client.wait(image_id, settled)
    return image_id


async def timed_copy(client: HubClient, info: dict[str, Any], procs: dict[str, int],
                     image_id: str, result: Round) -> None:
    watched = ["hub", *(f"agent-{s}" for s in EDGES)]
    for name in watched:
        reset_peak_rss(procs[name])
    before = await all_counters(info)
    with CpuMeter(procs) as cpu:
        started = time.monotonic()
        await client.import_(image_id, "copy-image", EDGES)
        image = await client.wait(image_id, settled, poll_s=POLL_S)
        result.copy_s = time.monotonic() - started
    after = await all_counters(info)
    if set(image["stores"].split(",")) != set(SITES) or image.get("os_glance_failed_import"):
        raise RuntimeError(f"the copy did not reach every site: {image}")
    result.copy_cpu = cpu.used
    result.peak_rss = {name: peak_rss_bytes(procs[name]) for name in watched}
    # .get: a hub from before these counters (to bench an older build) shows 0.
    served, ranges, shared = (int(after["hub"].get(k, 0) - before["hub"].get(k, 0)) for k in HUB_COUNTERS)
    result.served, result.ranges, result.shared = served, ranges, shared
    result.fetched = {s: int(after[s][AGENT_RECEIVED] - before[s][AGENT_RECEIVED]) for s in EDGES}


async def timed_reference(info: dict[str, Any], procs: dict[str, int], image_id: str, result: Round) -> None:
    """Parallel `rbd export | rbd import` from central to both edges."""
    conf = {s: info["sites"][s]["ceph_conf"] for s in SITES}
    ref = f"ref-{image_id[:8]}"
    with CpuMeter(procs) as cpu:
        started = time.monotonic()
        await run_shell(*(f"rbd -c {conf['central']} export --no-progress images/{image_id}@snap - | "
                          f"rbd -c {conf[s]} import --no-progress - images/{ref}" for s in EDGES))
        result.reference_s = time.monotonic() - started
    result.reference_cpu = cpu.used
    for site in EDGES:
        result.du[f"{site} (rbd import)"] = rbd_du(conf[site], ref)
        subprocess.run(["rbd", "-c", conf[site], "rm", "--no-progress", f"images/{ref}"], check=True)


async def one_round(client: HubClient, info: dict[str, Any], procs: dict[str, int], src: Path,
                    number: int) -> Round:
    result = Round()
    image_id = await import_to_central(client, src, f"bench-agents-{number}")
    central_conf = info["sites"]["central"]["ceph_conf"]
    result.allocated, result.size = rbd_du(central_conf, image_id)
    # Alternate the order, so neither side always runs on a warmer (or
    # busier) machine.
    if number % 2:
        await timed_reference(info, procs, image_id, result)
        await timed_copy(client, info, procs, image_id, result)
    else:
        await timed_copy(client, info, procs, image_id, result)
        await timed_reference(info, procs, image_id, result)
    for site in SITES:
        result.du[site] = rbd_du(info["sites"][site]["ceph_conf"], image_id)
    await client.call("DELETE", f"/v2/images/{image_id}")  # keeps the lab's OSDs small
    return result


# --- the report ---------------------------------------------------------------------------------


def spread(values: list[float], fmt: str = "{:.2f}") -> str:
    text = fmt.format(statistics.median(values))
    if len(values) > 1:
        text += f" (min {fmt.format(min(values))}, max {fmt.format(max(values))})"
    return text


def report(rounds: list[Round], size_mib: int, load: tuple[list[float], list[float]]) -> None:
    first = rounds[0]
    print(f"image: {size_mib} MiB RAW, half zeros in 4 MiB stripes; "
          f"allocated in central {first.allocated / MiB:.0f} MiB (rbd du)")
    print(f"load average before {load[0][0]:.2f}, after {load[1][0]:.2f} (2 cores shared with other work)")
    print("round  edgesync  reference  ratio   HTTP bytes / allocated (dcn0, dcn1; hub served)")
    for n, r in enumerate(rounds, 1):
        per_site = ", ".join(f"{r.fetched[s] / r.allocated:.3f}" for s in EDGES)
        print(f"{n:5}  {r.copy_s:6.2f} s  {r.reference_s:7.2f} s  {r.copy_s / r.reference_s:5.2f}   "
              f"{per_site}; {r.served / (len(EDGES) * r.allocated):.3f}")
    ratios = [r.copy_s / r.reference_s for r in rounds]
    print(f"edgesync copy to dcn0 + dcn1     {spread([r.copy_s for r in rounds])} s")
    print(f"rbd export|import x2 (reference) {spread([r.reference_s for r in rounds])} s")
    print(f"ratio edgesync / reference       {spread(ratios)}")
    print(f"ranges the hub answered from the other agent's read (at most half): "
          f"{', '.join(f'{r.shared} of {r.ranges}' for r in rounds)}")
    cpu_table(rounds)
    print("rbd du (last round), used of provisioned:")
    for where, (used, provisioned) in rounds[-1].du.items():
        print(f"  {where:22} {used / MiB:6.0f} MiB of {provisioned / MiB:.0f} MiB")
    print("peak RSS during the copy (VmHWM): " + ", ".join(
        f"{name} {spread([r.peak_rss[name] / MiB for r in rounds], '{:.0f}')} MiB" for name in first.peak_rss))
    wire = max(max(r.fetched.values()) / r.allocated for r in rounds)
    print(f"goal ratio <= 0.8: {'met' if statistics.median(ratios) <= 0.8 else 'NOT met'} "
          f"(median {statistics.median(ratios):.2f}); goal wire <= 1.05 x allocated: "
          f"{'met' if wire <= 1.05 else 'NOT met'} (worst {wire:.3f})")
    print("for scale (not run here): Glance 33, the same copy on three Ceph clusters, 18.9-22.9 s")


def cpu_table(rounds: list[Round]) -> None:
    """user+sys CPU seconds per process, median over rounds (min-max)."""
    print("CPU seconds (user+sys) per process, median over rounds (min, max):")
    names = [n for n in rounds[0].copy_cpu if any(r.copy_cpu[n] + r.reference_cpu[n] > 0.005 for r in rounds)]
    print(f"  {'process':16} {'edgesync copy':>24}   {'reference':>24}")
    for name in names:
        print(f"  {name:16} {spread([r.copy_cpu[name] for r in rounds]):>24}   "
              f"{spread([r.reference_cpu[name] for r in rounds]):>24}")
    print(f"  {'all':16} {spread([sum(r.copy_cpu.values()) for r in rounds]):>24}   "
          f"{spread([sum(r.reference_cpu.values()) for r in rounds]):>24}")


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size-mib", type=int, default=1024)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--keep", action="store_true", help="leave the lab running (and its directory)")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="edgesync-bench-agents-", dir=os.environ.get("BENCH_DIR")))
    src = make_half_zero_image(work / "half-zeros.raw", args.size_mib * MiB)
    load_before = list(os.getloadavg())
    info = await lab.up(work / "lab", store="rbd", sites=SITES, agents=True)
    client = HubClient(info["hub_url"], info["admin_token"], info.get("ca_file"))
    try:
        procs = lab_processes(work / "lab", info)
        rounds = [await one_round(client, info, procs, src, n) for n in range(args.rounds)]
    finally:
        await client.close()
        if not args.keep:
            await lab.down(work / "lab")
    report(rounds, args.size_mib, (load_before, list(os.getloadavg())))
    if not args.keep:
        shutil.rmtree(work)


if __name__ == "__main__":
    asyncio.run(main())
