"""The lab's TLS files: its CA, the hub's and each agent's HTTPS certificate.

`lab up` (unless `--plaintext`) makes a fresh CA in `<lab>/tls/` and issues
from it, beside the broker's identities (lab/mosquitto.py):

    tls/ca.pem              the bundle every client verifies against (lab.json's ca_file)
    tls/https-hub.crt|key   the hub's API, for every address it listens on
    tls/https-agent-<site>.crt|key  each edge agent's data endpoint, for its address

Each daemon's config names its own certificate and the CA, as an operator's
would (README "Security").
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgesync.lab.certs import Issued, LabCA

DIR = "tls"
# Clients on the machine may say localhost as well as the address.
LOCAL_NAMES = ("localhost",)


@dataclass(frozen=True)
class TlsFiles:
    """A daemon's certificate and key, and the CA bundle it verifies peers with."""

    ca_file: Path
    cert_file: Path
    key_file: Path

    def table(self) -> dict[str, Any]:
        """As a config's [tls] (or TLS [broker]/[bus]) keys."""
        return {"ca_file": str(self.ca_file), "cert_file": str(self.cert_file), "key_file": str(self.key_file)}


@dataclass(frozen=True)
class LabTls:
    ca: LabCA
    hub: TlsFiles
    agents: dict[str, TlsFiles]

    @property
    def ca_file(self) -> Path:
        return self.ca.ca_file

    def identity(self, cert_and_key: tuple[Path, Path]) -> TlsFiles:
        """A broker identity (client certificate and key) with this CA."""
        return TlsFiles(self.ca.ca_file, *cert_and_key)


def make(directory: Path, hub_hosts: list[str], agent_hosts: dict[str, str]) -> LabTls:
    """A new CA under `directory`/tls and the HTTPS certificates of the hub
    (for `hub_hosts`) and of each edge's agent (site → its host)."""
    ca = LabCA.create(directory / DIR)

    def server(name: str, hosts: list[str]) -> TlsFiles:
        issued: Issued = ca.issue(f"https-{name}", hosts=tuple(dict.fromkeys([*hosts, *LOCAL_NAMES])))
        return TlsFiles(ca.ca_file, issued.cert_file, issued.key_file)

    agents = {site: server(f"agent-{site}", [host]) for site, host in agent_hosts.items()}
    return LabTls(ca, server("hub", hub_hosts), agents)
