"""What Nova's and Cinder's API processes do before their code calls the image
service, shared by the drivers in this directory (which run in .venv-openstack,
never in the project's venv: they import only the standard library and what
Nova and Cinder bring).

A driver reads one JSON request on stdin and writes one JSON answer as the last
line of stdout, prefixed with RESULT_PREFIX (their libraries may print). An
exception from their code is an answer too: {"error": {"type", "message"}},
so a test can assert the exact failure Nova or Cinder would report.

The request's "caller" is a Keystone token: keystonemiddleware validates it as
the service's own user and hands the service the token's user, project, roles
and catalog (X-Service-Catalog, in the v2 format keystonemiddleware converts
it to). `caller()` does the same with keystoneauth1.
"""

from __future__ import annotations

import json
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

RESULT_PREFIX = "EDGESYNC-DRIVER-RESULT "


def run(handlers: dict[str, Callable[[dict[str, Any]], Any]]) -> None:
    request = json.load(sys.stdin)
    try:
        answer = {"result": handlers[request["action"]](request)}
    except Exception as exc:  # noqa: BLE001 — Nova's/Cinder's failure is the answer the test asserts on
        answer = {"error": {"type": type(exc).__name__, "message": str(exc),
                            "traceback": traceback.format_exc()[-4000:]}}
    sys.stdout.write("\n" + RESULT_PREFIX + json.dumps(answer, default=str) + "\n")
    sys.stdout.flush()


def caller(deployment: dict[str, Any], service: dict[str, str], token: str) -> dict[str, Any]:
    """keystonemiddleware's view of `token`: validated as the service user."""
    from keystoneauth1 import session
    from keystoneauth1.identity import v3

    auth = v3.Password(auth_url=deployment["auth_url"], username=service["username"],
                       password=service["password"], project_name=service["project_name"],
                       user_domain_name="Default", project_domain_name="Default")
    resp = session.Session(auth=auth, verify=deployment.get("cafile") or True).get(f"{deployment['auth_url']}/auth/tokens",
                                          headers={"X-Subject-Token": token}, authenticated=True)
    body = resp.json()["token"]
    return {"user_id": body["user"]["id"], "project_id": body["project"]["id"],
            "roles": [r["name"] for r in body["roles"]], "catalog": v2_catalog(body.get("catalog", []))}


def v2_catalog(catalog: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A v3 catalog as keystonemiddleware passes it on (one endpoint entry per region, URLs per interface)."""
    services = []
    for service in catalog:
        regions: dict[str, dict[str, str]] = {}
        for endpoint in service.get("endpoints", []):
            entry = regions.setdefault(endpoint.get("region_id") or endpoint.get("region"), {})
            entry["region"] = endpoint.get("region_id") or endpoint.get("region")
            entry[f"{endpoint['interface']}URL"] = endpoint["url"]
        services.append({"type": service["type"], "name": service.get("name"), "endpoints": list(regions.values())})
    return services


def write_conf(path: Path, sections: dict[str, dict[str, Any]]) -> Path:
    """An INI file for oslo.config, as a deployment tool writes nova.conf/cinder.conf."""
    lines = []
    for section, options in sections.items():
        lines.append(f"[{section}]")
        lines += [f"{key} = {_ini(value)}" for key, value in options.items() if value is not None]
        lines.append("")
    path.write_text("\n".join(lines))
    return path


def _ini(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return ",".join(str(v) for v in value)
    return str(value)
