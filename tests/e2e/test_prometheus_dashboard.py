"""The Grafana dashboard, proven against the real Prometheus scraping a real lab.

Debian's `prometheus` runs on a free port with a temporary TSDB, configured
from the example scrape config in grafana/prometheus.yml (its targets
pointed at the lab's hub and agents, scraping every second). Once every
target has been scraped, the real `glance` CLI imports an image to central,
dcn0 and dcn1 while dcn1's store really fails, so the agents make one copy
and one failure, and an image written straight into dcn0's store (as a Nova
snapshot would be) is registered, so the hub pulls it from dcn0's agent to
central. When Prometheus has scraped what followed, every query of
every panel in grafana/edgesync-dashboard.json is evaluated through its HTTP
API, with the dashboard's variables substituted as Grafana would, and each
must return data.
"""

from __future__ import annotations

import json
import math
import re
import socket
import subprocess
import time
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.fixtures.lab import (
    ImageFile,
    Lab,
    _edgesync,
    _lab_down,
    api,
    broken_store,
    check,
    glance,
    make_striped_raw,
    parse_dict_table,
    store_dir,
    stores_of,
    wait_for_image,
    wait_import_done,
)

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
DASHBOARD = REPO / "grafana" / "edgesync-dashboard.json"
SCRAPE_CONFIG = REPO / "grafana" / "prometheus.yml"
PROMETHEUS = "/usr/bin/prometheus"
WAIT_S = 60.0  # generous: the machine is shared
# What Grafana substitutes: $__rate_interval for the provisioned 15 s scrape
# interval, $__range for the dashboard's default hour, and the site
# variable as "All" (its allValue) and as a multi-value regex of two sites
# (which a misspelt label would not match).
RANGE_VARIABLES = {"__rate_interval": "1m", "__range": "1h", "__interval": "15s"}
SITE_CHOICES = (".*", "(dcn0|dcn1)")


# --- the lab: agents needed -------------------------------------------------------------


def has_agents(lab: Lab) -> bool:
    return all(s["role"] == "central" or s.get("metrics_url") for s in lab["sites"].values())


@pytest.fixture(scope="module")
def agents_lab(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    """The session's file lab if it runs agents; until agents are the lab's
    default, a file lab of this module's own with `--agents`."""
    shared: Lab = request.getfixturevalue("file_lab")
    if has_agents(shared):
        yield shared
        return
    lab_dir = tmp_path_factory.mktemp("agents-lab")
    try:
        up = _edgesync("lab", "up", "--dir", str(lab_dir), "--store", "file", "--agents")
        if up.returncode != 0:
            pytest.fail(f"`edgesync lab up --agents` failed ({up.returncode}):\n{up.stdout}\n{up.stderr}")
        info: Lab = json.loads((lab_dir / "lab.json").read_text())
        info.update(lab_dir=lab_dir, hub_log=lab_dir / "logs" / "hub.log")
        yield info
    finally:
        _lab_down(lab_dir)


# --- real Prometheus -------------------------------------------------------------------------


@dataclass
class Prometheus:
    url: str
    tsdb: Path
    log: Path

    def get(self, path: str, **params: str) -> Any:
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        with urllib.request.urlopen(f"{self.url}{path}{query}", timeout=10) as resp:
            body = json.loads(resp.read())
        assert body["status"] == "success", body
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        data = self.get("/api/v1/query", query=expr)
        assert data["resultType"] == "vector", (expr, data)
        return data["result"]  # type: ignore[no-any-return]

    def value(self, expr: str) -> float:
        """The single value of `expr` (0 when it has no result)."""
        result = self.query(expr)
        assert len(result) <= 1, (expr, result)
        return float(result[0]["value"][1]) if result else 0.0

    def wait_for(self, what: str, condition: Callable[[], bool]) -> None:
        deadline = time.monotonic() + WAIT_S
        while time.monotonic() < deadline:
            if condition():
                return
            time.sleep(0.2)
        raise AssertionError(f"Prometheus: {what} not within {WAIT_S:.0f} s; its log:\n{self.log.read_text()[-3000:]}")


def host_port(url: str) -> str:
    return urllib.parse.urlsplit(url).netloc


def scrape_config(lab: Lab) -> dict[str, Any]:
    """The example config, its targets pointed at the lab, scraping every second."""
    config = yaml.safe_load(SCRAPE_CONFIG.read_text())
    config["global"].update(scrape_interval="1s", scrape_timeout="1s", evaluation_interval="1s")
    targets = {
        "edgesync-hub": [host_port(lab["hub_url"])],
        "edgesync-agent": [host_port(s["agent_url"]) for s in lab["sites"].values() if s.get("agent_url")],
    }
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert set(jobs) == set(targets), f"the example scrape config's jobs changed: {sorted(jobs)}"
    for name, job in jobs.items():
        job["static_configs"] = [{"targets": targets[name]}]
        assert job["scheme"] == "https" and "ca_file" in job["tls_config"], job
        if lab.get("ca_file"):
            job["tls_config"]["ca_file"] = lab["ca_file"]
        else:  # a plaintext lab (lab up --plaintext)
            job["scheme"] = "http"
            del job["tls_config"]
    return config


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def prometheus(agents_lab: Lab, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Prometheus]:
    if not Path(PROMETHEUS).exists():
        pytest.fail(f"{PROMETHEUS} is missing: `make setup` installs Debian's prometheus package")
    work = tmp_path_factory.mktemp("prometheus")
    config = work / "prometheus.yml"
    config.write_text(yaml.safe_dump(scrape_config(agents_lab)))
    port, log = free_port(), work / "prometheus.log"
    server = Prometheus(f"http://127.0.0.1:{port}", work / "tsdb", log)
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [PROMETHEUS, f"--config.file={config}", f"--storage.tsdb.path={server.tsdb}",
             f"--web.listen-address=127.0.0.1:{port}", "--storage.tsdb.retention.time=1h"],
            stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        server.wait_for("ready", lambda: proc.poll() is None and _ready(server))
        yield server
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _ready(server: Prometheus) -> bool:
    try:
        with urllib.request.urlopen(f"{server.url}/-/ready", timeout=2) as resp:
            return resp.status == 200
    except OSError:
        return False


def all_targets_up(server: Prometheus, count: int) -> bool:
    targets = server.get("/api/v1/targets")["activeTargets"]
    return len(targets) == count and all(t["health"] == "up" for t in targets)


# --- the dashboard's queries -------------------------------------------------------------------


def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def panel_queries(board: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(panel title, refId, expr) of every target of every panel."""
    return [(panel["title"], target["refId"], target["expr"])
            for panel in board["panels"] for target in panel.get("targets", [])]


def substitute(expr: str, site: str) -> str:
    values = {**RANGE_VARIABLES, "site": site}

    def value(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        assert name in values, f"unknown dashboard variable ${name} in {expr}"
        return values[name]

    return re.sub(r"\$\{(\w+)\}|\$([A-Za-z_]\w*)", value, expr)


def register_edge_image(lab: Lab, tmp_path: Path) -> ImageFile:
    """An image written into dcn0's store, registered: the hub copies it to central."""
    image_id = str(uuid.uuid4())
    path = store_dir(lab, "dcn0").resolve() / image_id
    image = make_striped_raw(path, stripes=2)  # a data stripe, a hole
    status, body = api(lab, "POST", "/edgesync/v1/sites/dcn0/images", body={
        "id": image_id, "name": "metrics-edge-snapshot", "size": image.size, "checksum": image.md5,
        "os_hash_value": image.sha512, "location_url": f"file://{path}"})  # what dcn0's agent would say
    assert status == 201, body
    wait_for_image(lab, image_id, lambda i: stores_of(i) == {"central", "dcn0"}, what="its copy to central",
                   timeout=WAIT_S)
    return image


def has_data(result: list[dict[str, Any]]) -> bool:
    """Some series, and at least one real number (a quantile of nothing is NaN)."""
    return any(math.isfinite(float(sample["value"][1])) for sample in result)


# --- the test ------------------------------------------------------------------------------------------


def test_every_panel_returns_data_after_a_copy(agents_lab: Lab, prometheus: Prometheus, tmp_path: Path) -> None:
    lab, prom = agents_lab, prometheus
    targets = 1 + sum(1 for s in lab["sites"].values() if s.get("agent_url"))
    prom.wait_for(f"all {targets} targets scraped", lambda: all_targets_up(prom, targets))
    written_before = prom.value('sum(edgesync_replicated_bytes_total{site="dcn0"})')
    failures_before = prom.value('sum(edgesync_copy_failures_total{site="dcn1", reason="store_error"})')
    copies_before = prom.value('sum(edgesync_copy_duration_seconds_count{site="dcn0", outcome="success"})')
    pulled_before = prom.value('sum(edgesync_transfer_bytes_total{site="central"})')

    image = make_striped_raw(tmp_path / "metrics.raw", stripes=4)  # 16 MiB, 8 MiB of data
    with broken_store(lab, "dcn1"):
        created = parse_dict_table(check(glance(
            lab, "image-create-via-import", "--disk-format", "raw", "--container-format", "bare",
            "--name", "metrics-e2e", "--file", str(image.path),
            "--stores", "central,dcn0,dcn1", "--allow-failure", "True")).stdout)
        done = wait_import_done(lab, created["id"], timeout=WAIT_S)
    assert stores_of(done) == {"central", "dcn0"} and done["os_glance_failed_import"] == "dcn1", done
    snapshot = register_edge_image(lab, tmp_path)

    # Prometheus has scraped the copy and the failure; the agent counted every data byte once.
    prom.wait_for("the copy to dcn0 scraped", lambda: prom.value(
        'sum(edgesync_copy_duration_seconds_count{site="dcn0", outcome="success"})') == copies_before + 1)
    prom.wait_for("the failure at dcn1 scraped", lambda: prom.value(
        'sum(edgesync_copy_failures_total{site="dcn1", reason="store_error"})') == failures_before + 1)
    prom.wait_for("dcn0's written bytes scraped", lambda: prom.value(
        'sum(edgesync_replicated_bytes_total{site="dcn0"})') == written_before + image.data_bytes)
    prom.wait_for("the bytes the hub pulled from dcn0 scraped", lambda: prom.value(
        'sum(edgesync_transfer_bytes_total{site="central"})') == pulled_before + snapshot.data_bytes)
    assert prom.value('min(edgesync_site_up{site=~"dcn0|dcn1"})') == 1

    board = dashboard()
    site_values = prom.get("/api/v1/label/site/values", **{"match[]": "edgesync_copies_in_flight"})
    assert set(site_values) >= {"central", "dcn0", "dcn1"}  # the $site variable's query
    empty = []
    for title, ref, expr in panel_queries(board):
        for site in SITE_CHOICES:
            query = substitute(expr, site)
            if not has_data(prom.query(query)):
                empty.append(f"{title} [{ref}] site={site}: {query}")
    assert not empty, "panels without data:\n" + "\n".join(empty)


def test_prometheus_stays_small(prometheus: Prometheus) -> None:
    """A test Prometheus keeps its WAL small (no preallocated segments)."""
    used = sum(p.stat().st_size for p in prometheus.tsdb.rglob("*") if p.is_file())
    assert used < 32 << 20, f"the test Prometheus holds {used} bytes in {prometheus.tsdb}"
