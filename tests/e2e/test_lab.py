"""`edgesync lab up` itself: many edge sites come up together and take a copy;
a failing later step leaves nothing running; a port someone else took is
reported, not raced for.

The 200-site run is `bench/bench_lab_sites.py` (a minute or more of both
cores, too much for every `make test`); here MANY_EDGES agents take the same
paths: all started at once on handed-over sockets, one readiness wait for
all, PER_PROCESS agent instances sharing each process as the bench's do.
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from edgesync import lab as lab_module
from edgesync.lab import ceph, mosquitto
from edgesync.lab.errors import LabError
from tests.fixtures.lab import (
    Lab,
    _edgesync,
    _lab_down,
    api,
    check,
    file_sha512,
    glance,
    lab_cli,
    make_striped_raw,
    parse_dict_table,
    stores_of,
    wait_import_done,
)

pytestmark = pytest.mark.e2e

MANY_EDGES = [f"dcn{i}" for i in range(12)]
PER_PROCESS = 4


def processes_of(lab_dir: Path) -> list[str]:
    """The command lines of every live process started for the lab in `lab_dir`
    (hub, agents, Mosquitto, Ceph daemons all name a file under it)."""
    found = []
    marker = os.fsencode(str(lab_dir))
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes()
            state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if marker in cmdline and state != "Z":
            found.append(cmdline.replace(b"\0", b" ").decode(errors="replace"))
    return found


@pytest.fixture(scope="module")
def many_sites_lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    lab_dir = tmp_path_factory.mktemp("many-sites-lab")
    try:
        up = _edgesync("lab", "up", "--dir", str(lab_dir), "--store", "file",
                       "--sites", ",".join(["central", *MANY_EDGES]),
                       "--agents-per-process", str(PER_PROCESS), timeout=180)
        assert up.returncode == 0, f"lab up failed:\n{up.stdout}\n{up.stderr}"
        info: Lab = json.loads((lab_dir / "lab.json").read_text())
        info.update(lab_dir=lab_dir)
        yield info
    finally:
        _lab_down(lab_dir)
    assert processes_of(lab_dir) == []


def test_many_edge_sites_come_up_and_all_take_a_copy(many_sites_lab: Lab, tmp_path: Path) -> None:
    lab = many_sites_lab
    status, body = api(lab, "GET", "/edgesync/v1/sites")
    assert status == 200 and {s["name"] for s in body["sites"] if s["up"]} == {"central", *MANY_EDGES}
    image = make_striped_raw(tmp_path / "small.raw", stripes=4, stripe=256 * 1024)
    out = check(glance(lab, "image-create-via-import", "--disk-format", "raw", "--container-format", "bare",
                       "--name", "many-sites", "--file", str(image.path), "--stores", "central"))
    image_id = parse_dict_table(out.stdout)["id"]
    assert wait_import_done(lab, image_id)["status"] == "active"

    check(glance(lab, "image-import", image_id, "--stores", ",".join(MANY_EDGES), "--import-method", "copy-image"))
    done = wait_import_done(lab, image_id, timeout=120)

    assert done["os_glance_failed_import"] == "" and stores_of(done) == {"central", *MANY_EDGES}, done
    for site in MANY_EDGES:
        assert file_sha512(Path(lab["lab_dir"]) / "stores" / site / image_id) == image.sha512, site


def agent_pids(lab: Lab) -> dict[str, int | None]:
    info = json.loads((Path(lab["lab_dir"]) / "lab.json").read_text())
    return {site: entry["agent_pid"] for site, entry in info["sites"].items() if site != "central"}


def test_agents_share_processes_and_a_site_stops_and_starts_with_its_process(many_sites_lab: Lab) -> None:
    lab = many_sites_lab
    pids = agent_pids(lab)
    groups = [MANY_EDGES[i:i + PER_PROCESS] for i in range(0, len(MANY_EDGES), PER_PROCESS)]
    assert [{pids[site] for site in group} for group in groups] == [{pids[group[0]]} for group in groups]
    assert len(set(pids.values())) == len(groups)
    agents = [cmd for cmd in processes_of(Path(lab["lab_dir"])) if " agent " in cmd]
    assert len(agents) == len(groups) and all(cmd.count("--config") == PER_PROCESS for cmd in agents), agents

    site, sharing = groups[1][0], groups[1]
    lab_cli(lab, "agent", "stop", site)
    assert [p for s, p in agent_pids(lab).items() if s in sharing] == [None] * len(sharing)
    _, body = api(lab, "GET", "/edgesync/v1/sites")
    assert {s["name"] for s in body["sites"] if s["up"]} >= {*MANY_EDGES} - {*sharing}  # the others untouched
    lab_cli(lab, "agent", "start", site)
    after = agent_pids(lab)
    assert len({after[s] for s in sharing}) == 1 and after[site] not in (None, pids[site])
    _, body = api(lab, "GET", "/edgesync/v1/sites")
    assert {s["name"] for s in body["sites"] if s["up"]} == {"central", *MANY_EDGES}
    log = (Path(lab["lab_dir"]) / "logs" / f"agent-{sharing[-1]}.log").read_text()
    assert f"[site={sharing[-1]}]" in log  # one log per process, each line naming its site


def test_an_agent_whose_port_was_taken_says_so_and_starts_once_it_is_free(many_sites_lab: Lab) -> None:
    lab, site = many_sites_lab, MANY_EDGES[-1]
    port = int(lab["sites"][site]["agent_url"].rsplit(":", 1)[1])
    lab_cli(lab, "agent", "stop", site)
    thief = socket.socket()
    thief.bind(("127.0.0.1", port))
    thief.listen()
    try:
        refused = _edgesync("lab", "agent", "start", site, "--dir", str(lab["lab_dir"]))
        assert refused.returncode != 0 and f"port 127.0.0.1:{port} is taken" in refused.stderr, refused
        assert json.loads((Path(lab["lab_dir"]) / "lab.json").read_text())["sites"][site]["agent_pid"] is None
    finally:
        thief.close()
    lab_cli(lab, "agent", "start", site)
    _, body = api(lab, "GET", "/edgesync/v1/sites")
    assert next(s for s in body["sites"] if s["name"] == site)["up"]


async def test_an_agent_failing_at_start_stops_the_agents_hub_and_broker_started_before(tmp_path: Path) -> None:
    lab_dir = tmp_path / "lab"
    (lab_dir / "stores").mkdir(parents=True)
    (lab_dir / "stores" / "dcn1").write_text("not a directory\n")  # dcn1's agent can't open its store

    with pytest.raises(LabError, match="agent-dcn1 exited during start-up") as failed:
        await lab_module.up(lab_dir, store="file", sites=["central", "dcn0", "dcn1"])

    assert "opening store dcn1" in failed.value.message
    assert processes_of(lab_dir) == []
    info = lab_module.read_info(lab_dir)
    assert info["hub_pid"] is None and all(s["agent_pid"] is None for s in info["sites"].values())
    assert (lab_dir / "logs" / "agent-dcn0.log").exists()  # it had been started, and was stopped
    assert not mosquitto.is_running(lab_dir / "mosquitto")


@pytest.mark.ceph
async def test_a_broker_that_cannot_bind_stops_the_ceph_clusters_started_before(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    lab_dir = tmp_path / "lab"
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    port = taken.getsockname()[1]
    monkeypatch.setattr(mosquitto, "_pick_port", lambda: port)  # every port it tries is this one
    started: dict[str, Any] = {}
    real_up = ceph.up

    async def ceph_up(base_dir: Path, sites: list[str], **options: Any) -> Any:
        started.update(await real_up(base_dir, sites, **options))
        assert len(processes_of(lab_dir)) == 2 * len(sites)  # a mon and an OSD each, running
        return started

    monkeypatch.setattr(ceph, "up", ceph_up)
    try:
        with pytest.raises(LabError, match=f"port {port} is taken"):
            await lab_module.up(lab_dir, store="rbd", sites=["central", "dcn0"])
    finally:
        taken.close()
    assert set(started) == {"central", "dcn0"}
    assert processes_of(lab_dir) == []
