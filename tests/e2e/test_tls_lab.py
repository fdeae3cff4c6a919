"""The lab on TLS by default: its CA in lab.json, HTTPS hub and agents, MQTT over
TLS with a certificate per site; the real glance and openstack clients with
`--os-cacert` (never `--insecure`), and refused without it; plaintext only
when `lab up --plaintext` says so, and then the daemons warn."""

from __future__ import annotations

import json
import ssl
import urllib.error
import urllib.request
from pathlib import Path

import certifi
import pytest

from tests.fixtures.lab import Lab, _edgesync, _lab_down, check, glance, openstack, urlopen

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]


def test_the_lab_serves_tls_with_its_own_ca_and_no_broker_password(file_lab: Lab) -> None:
    ca_file = Path(file_lab["ca_file"])
    assert ca_file.exists() and file_lab["plaintext"] is False
    agents = [s["agent_url"] for s in file_lab["sites"].values() if s.get("agent_url")]
    assert file_lab["hub_url"].startswith("https://") and all(url.startswith("https://") for url in agents)
    for url in [file_lab["hub_url"], *agents]:
        with urlopen(file_lab, f"{url}/healthz", 10) as answer:  # verified against the lab's CA
            assert answer.status == 200
    lab_dir = Path(file_lab["lab_dir"])
    if file_lab.get("broker"):
        conf = (lab_dir / "mosquitto" / "mosquitto.conf").read_text()
        assert "require_certificate true" in conf and "use_username_as_clientid true" in conf
        assert "password_file" not in conf and not list((lab_dir / "secrets").glob("*.mqtt"))
    for log in (lab_dir / "logs").glob("*.log"):
        assert "PLAINTEXT" not in log.read_text(), log


def test_an_https_client_without_the_labs_ca_is_refused(file_lab: Lab) -> None:
    with pytest.raises(urllib.error.URLError) as refused:
        urllib.request.urlopen(f"{file_lab['hub_url']}/healthz", timeout=10,
                               context=ssl.create_default_context())  # the system's CAs only
    assert isinstance(refused.value.reason, ssl.SSLCertVerificationError)


def test_glance_and_openstack_verify_the_hub_with_os_cacert_and_fail_without(file_lab: Lab) -> None:
    check(glance(file_lab, "image-list"))
    check(openstack(file_lab, "image", "list"))
    # glanceclient with an image URL and a token verifies nothing when it has
    # no CA at all (it hands requests verify=None): it needs --os-cacert or
    # $REQUESTS_CA_BUNDLE. Here it has the system's bundle, as a shell would.
    system = {"REQUESTS_CA_BUNDLE": certifi.where()}
    without_ca = [glance(file_lab, "image-list", cacert=False, env=system),
                  openstack(file_lab, "image", "list", cacert=False)]
    for proc in without_ca:
        assert proc.returncode != 0 and "CERTIFICATE_VERIFY_FAILED" in proc.stderr, proc.stderr[-2000:]


def test_no_client_in_the_repository_turns_verification_off() -> None:
    sources = [*REPO.glob("edgesync/**/*.py"), *REPO.glob("tests/**/*.py"), *REPO.glob("bench/**/*.py"),
               REPO / "Makefile", REPO / "README.md"]
    # Spelled apart so that this file doesn't find itself.
    forbidden = ['"--' + 'insecure"', "'--" + "insecure'", "verify" + "=False", "CERT" + "_NONE",
                 "check_hostname" + " = False"]
    found = [(str(path.relative_to(REPO)), word) for path in sources if path.exists()
             for word in forbidden if word in path.read_text()]
    assert found == []


def test_plaintext_only_when_asked_and_then_every_daemon_warns(tmp_path: Path) -> None:
    lab_dir = tmp_path / "plain-lab"
    try:
        up = _edgesync("lab", "up", "--dir", str(lab_dir), "--store", "file", "--sites", "central,dcn0",
                       "--plaintext")
        assert up.returncode == 0, up.stderr
        info = json.loads((lab_dir / "lab.json").read_text())
        assert info["plaintext"] is True and info["ca_file"] is None and info["hub_url"].startswith("http://")
        hub_log = (lab_dir / "logs" / "hub.log").read_text()
        agent_log = (lab_dir / "logs" / "agent-dcn0.log").read_text()
    finally:
        _lab_down(lab_dir)
    assert "serves PLAINTEXT HTTP" in hub_log and "MQTT connection" in hub_log and "PLAINTEXT" in hub_log
    assert "serves PLAINTEXT HTTP" in agent_log and "broker connection" in agent_log
