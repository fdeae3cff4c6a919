"""The WAN lab: every site in a network namespace of its own, joined through
a bridge by veth links shaped with tbf in both directions.

    switch namespace  <lab>-wan:  bridge br0, one port per site (s0, s1, …)
    site namespace    <lab>-<site>: lo, and wan0 with the site's address

Addresses are 10.77.x.y/16 and exist only inside these namespaces (each lab
has its own switch, so two labs' addresses never meet): nothing is routed
off the machine. A cut takes the switch's end of a site's link down, so the
site's own interface and routes stay as they were and its connections stall,
as across a real WAN cut, instead of failing at once. tbf, not netem: the
kernels here have no netem, so there is rate but no added latency or loss.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgesync.lab.errors import LabError

SUBNET = "10.77"
PREFIX_LEN = 16
SITE_DEV = "wan0"
BRIDGE = "br0"
TBF_LATENCY = "50ms"
MIN_BURST_BYTES = 256 * 1024
CLI_TIMEOUT_S = 30.0
_RATE = re.compile(r"^(\d+(?:\.\d+)?)(kbit|mbit|gbit)$")
_RATE_FACTOR = {"kbit": 1e3, "mbit": 1e6, "gbit": 1e9}


@dataclass(frozen=True)
class Link:
    """One site's place on the WAN: its namespace, address and link rate."""

    site: str
    netns: str
    address: str
    rate: str | None  # tbf rate ("200mbit"), None: not shaped
    switch_dev: str

    def to_json(self) -> dict[str, Any]:
        return {"netns": self.netns, "address": self.address, "rate": self.rate, "switch_dev": self.switch_dev}


def parse_rates(spec: str, sites: list[str]) -> dict[str, str | None]:
    """`--wan` → each site's rate. `RATE` shapes every edge's link (central's,
    the data centre's, stays unshaped); `SITE=RATE` items set one site's,
    central's too: `200mbit`, `200mbit,dcn1=50mbit`, `dcn0=100mbit,dcn1=20mbit`."""
    default: str | None = None
    rates: dict[str, str | None] = {}
    for item in filter(None, (part.strip() for part in spec.split(","))):
        site, _, rate = item.rpartition("=")
        _check_rate(rate, spec)
        if not site:
            default = rate
        elif site not in sites:
            raise LabError(f"--wan {spec!r}: no site {site!r} in this lab (sites: {', '.join(sites)})")
        else:
            rates[site] = rate
    return {site: rates.get(site, default if i else None) for i, site in enumerate(sites)}


def _check_rate(rate: str, spec: str) -> None:
    if not _RATE.fullmatch(rate):
        raise LabError(f"--wan {spec!r}: {rate!r} is not a rate; say e.g. 200mbit, 1gbit or 500kbit")


def plan(directory: Path, rates: dict[str, str | None]) -> dict[str, Link]:
    """Each site's namespace (named after the lab directory, so labs don't collide) and address."""
    lab_id = hashlib.sha1(str(directory).encode()).hexdigest()[:8]
    return {site: Link(site=site, netns=f"es{lab_id}-{site}", address=_address(i), rate=rate,
                       switch_dev=f"s{i}")
            for i, (site, rate) in enumerate(rates.items())}


def switch_netns(links: dict[str, Link]) -> str:
    any_link = next(iter(links.values()))
    return any_link.netns.rsplit("-", 1)[0] + "-wan"


def _address(index: int) -> str:
    return f"{SUBNET}.{index // 250}.{index % 250 + 1}"


async def create(links: dict[str, Link]) -> None:
    """The namespaces, the bridge and every shaped link. On failure, what was made is removed."""
    switch = switch_netns(links)
    try:
        await _ip("netns", "add", switch)
        await _ip("-n", switch, "link", "set", "lo", "up")
        await _ip("-n", switch, "link", "add", BRIDGE, "type", "bridge")
        await _ip("-n", switch, "link", "set", BRIDGE, "up")
        for link in links.values():
            await _add_site(switch, link)
    except BaseException:
        await remove(links)
        raise


async def _add_site(switch: str, link: Link) -> None:
    ns = link.netns
    await _ip("netns", "add", ns)
    await _ip("-n", ns, "link", "set", "lo", "up")
    await _ip("link", "add", SITE_DEV, "netns", ns, "type", "veth", "peer", "name", link.switch_dev, "netns", switch)
    await _ip("-n", switch, "link", "set", link.switch_dev, "master", BRIDGE, "up")
    await _ip("-n", ns, "addr", "add", f"{link.address}/{PREFIX_LEN}", "dev", SITE_DEV)
    await _ip("-n", ns, "link", "set", SITE_DEV, "up")
    if link.rate:  # both directions: what the site sends, and what the switch sends it
        await _tbf(ns, SITE_DEV, link.rate)
        await _tbf(switch, link.switch_dev, link.rate)


async def _tbf(netns: str, dev: str, rate: str) -> None:
    match = _RATE.fullmatch(rate)
    assert match is not None
    bits_per_s = float(match.group(1)) * _RATE_FACTOR[match.group(2)]
    # At least 10 ms of the rate: a smaller bucket can't keep a fast link busy.
    burst = max(MIN_BURST_BYTES, int(bits_per_s / 8 / 100))
    await _run(["tc", "-n", netns, "qdisc", "replace", "dev", dev, "root", "tbf", "rate", rate,
                "burst", str(burst), "latency", TBF_LATENCY])


async def remove(links: dict[str, Link]) -> None:
    """Delete the lab's namespaces (their links and addresses go with them). Idempotent."""
    if not links:
        return
    existing = set(await list_netns())
    for ns in [switch_netns(links), *(link.netns for link in links.values())]:
        if ns in existing:
            await _ip("netns", "delete", ns)


async def list_netns() -> list[str]:
    out = await _run(["ip", "-j", "netns", "list"])
    return [entry["name"] for entry in json.loads(out or "[]")]


async def set_link(links: dict[str, Link], site: str, *, up: bool) -> None:
    """Cut (`up=False`) or heal one site's link, at the switch's end."""
    link = links.get(site)
    if link is None:
        raise LabError(f"no site {site!r} on this lab's WAN (sites: {', '.join(links)})")
    await _ip("-n", switch_netns(links), "link", "set", link.switch_dev, "up" if up else "down")


async def link_bytes(links: dict[str, Link], site: str) -> dict[str, int]:
    """Bytes that crossed a site's link so far: `to_site` and `from_site`."""
    link = links[site]
    out = await _run(["ip", "-n", switch_netns(links), "-s", "-j", "link", "show", link.switch_dev])
    stats = json.loads(out)[0]["stats64"]
    return {"to_site": int(stats["tx"]["bytes"]), "from_site": int(stats["rx"]["bytes"])}


WAN_FILE = "wan.json"


def save(directory: Path, links: dict[str, Link]) -> None:
    """Written before anything is made, so `down` finds what to remove even if `up` failed half-way."""
    (directory / WAN_FILE).write_text(json.dumps({s: link.to_json() for s, link in links.items()}, indent=2))


def load(directory: Path) -> dict[str, Link]:
    """The links of the lab in `directory` (none outside a WAN lab)."""
    path = directory / WAN_FILE
    if not path.exists():
        return {}
    return {site: Link(site=site, **entry) for site, entry in json.loads(path.read_text()).items()}


async def _ip(*args: str) -> None:
    await _run(["ip", *args])


async def _run(argv: list[str]) -> str:
    try:
        proc = await asyncio.create_subprocess_exec(*argv, stdin=asyncio.subprocess.DEVNULL,
                                                    stdout=asyncio.subprocess.PIPE,
                                                    stderr=asyncio.subprocess.PIPE)
    except FileNotFoundError:
        raise LabError(f"{argv[0]} is not installed (iproute2)") from None
    try:
        out, err = await asyncio.wait_for(proc.communicate(), CLI_TIMEOUT_S)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise LabError(f"`{' '.join(argv)}` timed out") from None
    if proc.returncode != 0:
        hint = " (the WAN lab needs root)" if b"Operation not permitted" in err else ""
        raise LabError(f"`{' '.join(argv)}` failed{hint}: {err.decode(errors='replace').strip()}")
    return out.decode()
