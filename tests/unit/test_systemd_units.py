"""The systemd units in systemd/, checked by systemd's own tools.

`systemd-analyze verify` works on unit files without systemd as PID 1, but
insists that ExecStart's program exists: the test installs copies of the
units with the installed path (/opt/edgesync/bin/edgesync) replaced by this
environment's `edgesync`, and nothing else changed. verify exits 0 even for
unknown keys or bad values (it only warns), so any output fails the test,
and a known-bad copy proves the warnings are seen. (`make setup` installs
Debian's systemd package, which brings systemd-analyze and systemd-sysusers.)
"""

from __future__ import annotations

import configparser
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from edgesync.cli import build_parser

REPO = Path(__file__).resolve().parents[2]
UNITS = REPO / "systemd"
INSTALLED_COMMAND = "/opt/edgesync/bin/edgesync"
THIS_COMMAND = Path(sys.executable).parent / "edgesync"
HUB = "edgesync-hub.service"
AGENT = "edgesync-agent@.service"
# systemd-analyze security: 0 (locked down) … 10 (unprotected); the units score 1.7 today.
MAX_EXPOSURE = 2.5

def install(tmp_path: Path, unit: str, as_name: str | None = None, edit: tuple[str, str] | None = None) -> Path:
    text = (UNITS / unit).read_text()
    assert INSTALLED_COMMAND in text
    text = text.replace(INSTALLED_COMMAND, str(THIS_COMMAND))
    if edit is not None:
        assert edit[0] in text
        text = text.replace(*edit)
    path = tmp_path / (as_name or unit)
    path.write_text(text)
    return path


def verify(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["systemd-analyze", "verify", "--man=no", str(path)],
                          capture_output=True, text=True, timeout=60, cwd=path.parent)


def settings(unit: str) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]  # keys are case-sensitive
    parser.read_string((UNITS / unit).read_text())
    return parser


@pytest.mark.parametrize("unit, as_name", [(HUB, None), (AGENT, "edgesync-agent@dcn0.service")])
def test_the_units_pass_systemd_analyze_verify(tmp_path: Path, unit: str, as_name: str | None) -> None:
    assert THIS_COMMAND.exists()
    checked = verify(install(tmp_path, unit, as_name))
    assert (checked.returncode, checked.stdout + checked.stderr) == (0, "")


def test_verify_would_see_a_broken_unit(tmp_path: Path) -> None:
    checked = verify(install(tmp_path, HUB, edit=("Type=notify", "Type=notfy")))
    assert "Failed to parse service type" in checked.stderr


@pytest.mark.parametrize("unit, as_name", [(HUB, HUB), (AGENT, "edgesync-agent@dcn0.service")])
def test_the_units_are_hardened(tmp_path: Path, unit: str, as_name: str) -> None:
    checked = subprocess.run(
        ["systemd-analyze", "security", "--offline=yes", f"--threshold={int(MAX_EXPOSURE * 10)}",
         str(install(tmp_path, unit, as_name))],
        capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert checked.returncode == 0, checked.stdout[-2000:] + checked.stderr
    service = settings(unit)["Service"]
    assert service["User"] == "edgesync" and service["DynamicUser"] == "no"
    assert service["ProtectSystem"] == "strict" and service["NoNewPrivileges"] == "yes"
    assert "ReadWritePaths" not in service  # writable: the state directory only


@pytest.mark.parametrize("unit", [HUB, AGENT])
def test_the_units_are_notify_services_with_a_watchdog_after_the_broker(unit: str) -> None:
    parsed = settings(unit)
    service, unit_section = parsed["Service"], parsed["Unit"]
    assert service["Type"] == "notify" and service["Restart"] == "on-failure"
    assert int(service["WatchdogSec"].rstrip("s")) > 0
    assert "network-online.target" in unit_section["Wants"]
    assert {"network-online.target", "mosquitto.service"} <= set(unit_section["After"].split())


@pytest.mark.parametrize("unit, state", [(HUB, "edgesync"), (AGENT, "edgesync/%i")])
def test_exec_start_is_a_command_edgesync_accepts(unit: str, state: str) -> None:
    service = settings(unit)["Service"]
    assert service["StateDirectory"] == state
    argv = shlex.split(service["ExecStart"].replace("%i", "dcn0"))
    assert argv[0] == INSTALLED_COMMAND
    args = build_parser().parse_args(argv[1:])  # exits (SystemExit) on an option edgesync lacks
    configs = [args.config] if isinstance(args.config, str) else args.config  # the agent's --config repeats
    assert len(configs) == 1 and configs[0].startswith("/etc/edgesync/") and args.log_format == "json"


def test_the_sysusers_file_creates_the_service_user(tmp_path: Path) -> None:
    root = tmp_path / "root"  # systemd-sysusers writes only below --root
    (root / "etc").mkdir(parents=True)
    (root / "usr/lib/sysusers.d").mkdir(parents=True)
    shutil.copy(UNITS / "edgesync.sysusers.conf", root / "usr/lib/sysusers.d/edgesync.conf")
    created = subprocess.run(["systemd-sysusers", f"--root={root}"], capture_output=True, text=True, timeout=60)
    assert created.returncode == 0 and "edgesync.conf" not in created.stderr, created.stderr
    user = next(line for line in (root / "etc/passwd").read_text().splitlines() if line.startswith("edgesync:"))
    assert user.split(":")[5:] == ["/var/lib/edgesync", "/usr/sbin/nologin"]
    assert any(line.startswith("edgesync:") for line in (root / "etc/group").read_text().splitlines())
