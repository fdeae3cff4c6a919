"""grafana/: the dashboard's structure (what current Grafana needs to load it
anywhere), that it only uses metrics edgesync exposes, and the provisioning
files and example scrape config (checked by Prometheus's own promtool).

That every panel returns data is proven against real Prometheus in
tests/e2e/test_prometheus_dashboard.py.
"""

from __future__ import annotations

import json
import re
import subprocess
from itertools import combinations
from pathlib import Path
from typing import Any

import pytest
import yaml

from edgesync import metrics

GRAFANA = Path(__file__).resolve().parents[2] / "grafana"
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
BUILTIN_VARIABLES = {"__rate_interval", "__range", "__interval"}
CURRENT_SCHEMA_VERSION = 41  # Grafana 12's classic dashboard model


@pytest.fixture(scope="module")
def board() -> dict[str, Any]:
    return json.loads((GRAFANA / "edgesync-dashboard.json").read_text())


def panels(board: dict[str, Any]) -> list[dict[str, Any]]:
    return list(board["panels"])


def exprs(board: dict[str, Any]) -> list[str]:
    return [t["expr"] for p in panels(board) for t in p["targets"]]


def uids(node: Any) -> list[str]:
    """Every `uid` below `node`, at any depth."""
    if isinstance(node, dict):
        return [v for k, v in node.items() if k == "uid"] + [u for v in node.values() for u in uids(v)]
    if isinstance(node, list):
        return [u for v in node for u in uids(v)]
    return []


def test_the_datasource_is_a_prometheus_variable(board: dict[str, Any]) -> None:
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    assert variables["site"]["datasource"] == DATASOURCE
    assert variables["site"]["includeAll"] and variables["site"]["allValue"] == ".*"


def test_no_datasource_uid_is_hard_coded(board: dict[str, Any]) -> None:
    # The dashboard's own uid names it (stable links, provisioning); every
    # other uid is a datasource reference and must be the variable.
    inner = {k: v for k, v in board.items() if k != "uid"}
    assert set(uids(inner)) == {"${datasource}"}


def test_every_panel_queries_the_variable_datasource(board: dict[str, Any]) -> None:
    for panel in panels(board):
        assert panel["datasource"] == DATASOURCE, panel["title"]
        assert panel["targets"], f"{panel['title']} has no query"
        refs = [t["refId"] for t in panel["targets"]]
        assert len(refs) == len(set(refs)), f"{panel['title']}: refIds {refs}"
        for target in panel["targets"]:
            assert target["datasource"] == DATASOURCE, (panel["title"], target["refId"])
            assert isinstance(target["expr"], str) and target["expr"].strip(), (panel["title"], target["refId"])


def test_panel_ids_are_unique_and_panels_do_not_overlap(board: dict[str, Any]) -> None:
    ids = [p["id"] for p in panels(board)]
    assert len(ids) == len(set(ids)), ids
    boxes = [(p["title"], p["gridPos"]) for p in panels(board)]
    for (a, ga), (b, gb) in combinations(boxes, 2):
        apart = (ga["x"] + ga["w"] <= gb["x"] or gb["x"] + gb["w"] <= ga["x"]
                 or ga["y"] + ga["h"] <= gb["y"] or gb["y"] + gb["h"] <= ga["y"])
        assert apart, f"panels {a!r} and {b!r} overlap"
    assert all(g["x"] + g["w"] <= 24 for _, g in boxes)  # Grafana's grid is 24 wide


def test_the_dashboard_is_current_grafana(board: dict[str, Any]) -> None:
    assert board["schemaVersion"] == CURRENT_SCHEMA_VERSION
    assert "rows" not in board and "__inputs" not in board  # pre-5.0 rows; UI-import-only inputs
    assert {p["type"] for p in panels(board)} <= {"timeseries", "stat", "table", "bargauge"}  # no Angular "graph"


def test_it_covers_what_operators_watch(board: dict[str, Any]) -> None:
    titles = " | ".join(p["title"].lower() for p in panels(board))
    for topic in ("replication status per site", "throughput", "failures", "queue depth", "sites up",
                  "in-flight copies", "api latency"):
        assert topic in titles, f"no panel about {topic}: {titles}"


def test_every_metric_it_uses_exists(board: dict[str, Any]) -> None:
    used = {name for expr in exprs(board) for name in re.findall(r"\bedgesync_\w+", expr)}
    assert used, "no edgesync metric in the dashboard"
    unknown = used - metrics.series_names()
    assert not unknown, f"the dashboard queries metrics edgesync doesn't expose: {sorted(unknown)}"


def test_every_variable_it_uses_is_defined(board: dict[str, Any]) -> None:
    defined = {v["name"] for v in board["templating"]["list"]} | BUILTIN_VARIABLES
    used = {m.group(1) or m.group(2) for expr in exprs(board)
            for m in re.finditer(r"\$\{(\w+)\}|\$([A-Za-z_]\w*)", expr)}
    assert used <= defined, sorted(used - defined)
    assert "site" in used


def test_the_provisioning_files_point_at_the_dashboard_and_prometheus() -> None:
    dashboards = yaml.safe_load((GRAFANA / "provisioning" / "dashboards" / "edgesync.yaml").read_text())
    (provider,) = dashboards["providers"]
    assert dashboards["apiVersion"] == 1 and provider["type"] == "file" and provider["options"]["path"]
    datasources = yaml.safe_load((GRAFANA / "provisioning" / "datasources" / "prometheus.yaml").read_text())
    (source,) = datasources["datasources"]
    assert datasources["apiVersion"] == 1 and source["type"] == "prometheus" and source["url"].startswith("http")


def test_the_example_scrape_config_is_valid_for_prometheus() -> None:
    check = subprocess.run(["promtool", "check", "config", str(GRAFANA / "prometheus.yml")],
                           capture_output=True, text=True, timeout=30)
    assert check.returncode == 0, check.stdout + check.stderr
    jobs = {job["job_name"] for job in yaml.safe_load((GRAFANA / "prometheus.yml").read_text())["scrape_configs"]}
    assert jobs == {"edgesync-hub", "edgesync-agent"}
