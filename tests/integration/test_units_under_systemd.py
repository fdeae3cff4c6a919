"""The units in systemd/ under a real systemd: PID 1 of its own namespaces
(tests/fixtures/systemd.py), booted once per session, with edgesync installed
the way README.md tells an operator (tests/fixtures/systemd_site.py): a hub
on the lab's central Ceph cluster and the agent of dcn0 on dcn0's, both on
the session's broker. Everything is driven with `systemctl` and read with
`journalctl`, `systemctl show`, the hub's API, the agent's /metrics and the
clusters themselves.

Hardening: a probe runs as each unit's ExecStartPre= (so under the unit's
own sandbox) and once outside any sandbox as the same user; an option is
shown to work where the two differ. Where they can't differ on this machine,
the test is skipped and says why.
"""

from __future__ import annotations

import configparser
import json
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.test_rbd_lab import exported_sha512
from tests.fixtures.lab import ImageFile, api, get_image, make_striped_raw, stores_of, wait_import_done
from tests.fixtures.metrics_text import Scrape
from tests.fixtures.systemd import SystemdNamespace, journal_json
from tests.fixtures.systemd_site import (
    AGENT,
    EDGE,
    HUB,
    PROBE,
    TEST_LIB,
    UNITS,
    VENV,
    Site,
)

pytestmark = pytest.mark.ceph

WAIT_S = 60.0
MiB = 1 << 20


def unit_settings(unit_file: str) -> configparser.SectionProxy:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string((UNITS / unit_file).read_text())
    return parser["Service"]


def seconds(value: str) -> float:
    return float(value.rstrip("s"))


def unit_file(unit: str) -> str:
    return "edgesync-agent@.service" if unit.startswith("edgesync-agent@") else unit


def get(url: str, timeout: float = 10.0) -> int:
    """One request, no retry: the status."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as answer:
            return int(answer.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


def agent_metrics(site: Site) -> Scrape:
    with urllib.request.urlopen(f"{site.agent_url}/metrics", timeout=10) as answer:
        return Scrape.parse(answer.read().decode())


def main_pid(ns: SystemdNamespace, unit: str) -> int:
    return int(ns.show(unit, "MainPID")["MainPID"])


def proc_status(ns: SystemdNamespace, pid: int) -> dict[str, str]:
    text = ns.run("cat", f"/proc/{pid}/status").stdout
    return dict(line.split(":\t", 1) for line in text.splitlines() if ":\t" in line)


def edgesync_ids(ns: SystemdNamespace) -> tuple[int, int]:
    fields = ns.run("getent", "passwd", "edgesync").stdout.split(":")
    return int(fields[2]), int(fields[3])


def ensure_running(ns: SystemdNamespace, unit: str) -> None:
    if ns.show(unit, "ActiveState")["ActiveState"] != "active":
        ns.systemctl("start", unit)


# --- images ----------------------------------------------------------------------------------


def central_image(site: Site, source: ImageFile) -> str:
    """An active image in central, uploaded and imported through the hub's API."""
    image_id = str(uuid.uuid4())
    status, body = api(site.lab, "POST", "/v2/images", body={
        "id": image_id, "name": f"systemd-{image_id[:8]}", "disk_format": "raw", "container_format": "bare"})
    assert status == 201, body
    with source.path.open("rb") as data:
        stage = urllib.request.Request(f"{site.hub_url}/v2/images/{image_id}/stage", data=data, method="PUT",
                                       headers={"X-Auth-Token": site.admin_token,
                                                "Content-Type": "application/octet-stream",
                                                "Content-Length": str(source.size)})
        with urllib.request.urlopen(stage, timeout=WAIT_S) as answer:
            assert answer.status == 204
    status, body = api(site.lab, "POST", f"/v2/images/{image_id}/import",
                       body={"method": {"name": "glance-direct"}, "stores": ["central"]})
    assert status == 202, body
    image = wait_import_done(site.lab, image_id, timeout=WAIT_S)  # type: ignore[arg-type]
    assert image["status"] == "active", image
    return image_id


def copy_to_edge(site: Site, image_id: str) -> None:
    status, body = api(site.lab, "POST", f"/v2/images/{image_id}/import",
                       body={"method": {"name": "copy-image"}, "stores": [EDGE], "all_stores_must_succeed": True})
    assert status == 202, body


def wait_copied(site: Site, image_id: str, timeout_s: float = WAIT_S) -> dict[str, Any]:
    image = wait_import_done(site.lab, image_id, timeout=timeout_s)  # type: ignore[arg-type]
    assert stores_of(image) == {"central", EDGE} and image["os_glance_failed_import"] == "", image
    return image


def written_to_edge(site: Site) -> float:
    try:
        return agent_metrics(site).total("edgesync_replicated_bytes_total", site=EDGE)
    except OSError:
        return 0.0


def fetched_by_agent(site: Site) -> float:
    return agent_metrics(site).total("edgesync_transfer_bytes_total", site=EDGE)


def wait_written(site: Site, at_least: float, timeout_s: float = WAIT_S) -> float:
    """Wait until the running agent has written `at_least` bytes of copies (mid-copy)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        written = written_to_edge(site)
        if written >= at_least:
            return written
        time.sleep(0.05)
    raise AssertionError(f"the agent wrote only {written_to_edge(site)} bytes in {timeout_s:.0f} s")


def edge_copy_identical(site: Site, image_id: str, source: ImageFile) -> bool:
    return exported_sha512(site.lab, EDGE, image_id) == source.sha512  # type: ignore[arg-type]


@pytest.fixture(scope="module", autouse=True)
def units_stopped_afterwards(edgesync_site: Site) -> Iterator[None]:
    """The broker is the session's: no agent of dcn0 may outlive this module."""
    yield
    edgesync_site.ns.systemctl("stop", AGENT, HUB, check=False)


@pytest.fixture
def image_file(tmp_path: Path) -> ImageFile:
    """32 MiB of data in 64 MiB: about 4 s through the agent's 64 Mbit/s."""
    return make_striped_raw(tmp_path / "image.raw", stripes=16)


# --- the machine is left alone -------------------------------------------------------------------


def test_the_namespace_has_a_tmp_of_its_own_and_the_machines_is_intact(systemd_ns: SystemdNamespace) -> None:
    canaries = systemd_ns.canaries  # type: ignore[attr-defined]
    for path in canaries.files:
        assert path.exists(), f"{path} vanished while the namespace runs"
        assert systemd_ns.run("test", "-e", str(path), check=False).returncode == 1  # not shared
    for place in ("/tmp", "/var/tmp", "/run", "/etc/systemd/system"):
        assert systemd_ns.run("findmnt", "-n", "-o", "FSTYPE", "--mountpoint", place).stdout.split()[-1] == "tmpfs"
    assert systemd_ns.run("systemctl", "is-enabled", "systemd-tmpfiles-clean.timer",
                          check=False).stdout.strip() == "masked-runtime"
    assert canaries.missing() == []


# --- start: Type=notify -------------------------------------------------------------------------


def test_systemctl_start_of_the_hub_returns_once_its_api_answers(edgesync_site: Site) -> None:
    ns = edgesync_site.ns
    ns.systemctl("stop", HUB)
    started = time.monotonic()
    ns.systemctl("start", HUB, timeout=seconds(unit_settings(HUB)["TimeoutStartSec"]) + 10)
    took_s = time.monotonic() - started
    assert get(f"{edgesync_site.hub_url}/") == 300  # the versions document, at the first try
    shown = ns.show(HUB, "ActiveState", "SubState", "Type", "StatusText", "User")
    assert shown["ActiveState"] == "active" and shown["SubState"] == "running" and shown["Type"] == "notify"
    assert shown["StatusText"].startswith("hub: serving on 127.0.0.1:"), shown
    ready = [line for line in journal_json(ns.journal(HUB)) if str(line.get("msg", "")).startswith("hub ready")]
    assert ready, "the hub logged no 'hub ready' line (JSON, to the journal)"
    print(f"systemctl start {HUB}: {took_s:.2f} s")


def test_systemctl_start_of_the_agent_returns_once_it_serves_and_it_copies_an_image(
        edgesync_site: Site, image_file: ImageFile) -> None:
    ns = edgesync_site.ns
    ensure_running(ns, HUB)
    ns.systemctl("stop", AGENT)
    started = time.monotonic()
    ns.systemctl("start", AGENT, timeout=seconds(unit_settings("edgesync-agent@.service")["TimeoutStartSec"]) + 10)
    took_s = time.monotonic() - started
    assert get(f"{edgesync_site.agent_url}/healthz") == 200  # at the first try
    shown = ns.show(AGENT, "ActiveState", "Type", "StatusText")
    assert shown["ActiveState"] == "active" and shown["Type"] == "notify", shown
    assert shown["StatusText"].startswith(f"agent of site {EDGE}"), shown

    image_id = central_image(edgesync_site, image_file)
    copy_to_edge(edgesync_site, image_id)
    wait_copied(edgesync_site, image_id)
    assert edge_copy_identical(edgesync_site, image_id, image_file)
    print(f"systemctl start {AGENT}: {took_s:.2f} s")


# --- who runs them --------------------------------------------------------------------------------


@pytest.mark.parametrize("unit", [HUB, AGENT])
def test_the_daemons_run_as_the_edgesync_user_inside_the_sandbox(edgesync_site: Site, unit: str) -> None:
    ns = edgesync_site.ns
    ensure_running(ns, HUB)
    ensure_running(ns, unit)
    uid, gid = edgesync_ids(ns)
    cgroup = ns.show(unit, "ControlGroup")["ControlGroup"]
    pids = [int(p) for p in ns.run("cat", f"/sys/fs/cgroup{cgroup}/cgroup.procs").stdout.split()]
    assert main_pid(ns, unit) in pids
    for pid in pids:  # the daemon and any child (qemu-img)
        status = proc_status(ns, pid)
        assert status["Uid"].split() == [str(uid)] * 4 and status["Gid"].split() == [str(gid)] * 4, status
        assert status["NoNewPrivs"] == "1" and status["Seccomp"] == "2", status  # the daemon itself is filtered
        assert int(status["CapBnd"], 16) == 0 and int(status["CapEff"], 16) == 0, status


# --- the hardening, option by option ---------------------------------------------------------------


def probe_outputs(lines: list[str]) -> list[dict[str, Any]]:
    return [json.loads(line.split(" ", 1)[1]) for line in lines if line.startswith("edgesync-probe ")]


@pytest.fixture(scope="module")
def probes(edgesync_site: Site) -> dict[str, tuple[dict[str, Any], dict[str, Any]]]:
    """Per unit: (what the probe could do under the unit's sandbox, and outside it as edgesync)."""
    ns = edgesync_site.ns
    found = {}
    for unit, writable, keyring in ((HUB, "/var/lib/edgesync", edgesync_site.keyring("central")),
                                    (AGENT, f"/var/lib/edgesync/{EDGE}", edgesync_site.keyring(EDGE))):
        cursor = ns.cursor()
        ns.systemctl("restart", unit)
        sandboxed = probe_outputs(ns.journal(unit, cursor=cursor))
        assert len(sandboxed) == 1, ns.journal(unit, cursor=cursor)
        outside = ns.run("setpriv", "--reuid=edgesync", "--regid=edgesync", "--init-groups",
                         f"{VENV}/bin/python", PROBE, writable, keyring).stdout.splitlines()
        found[unit] = (sandboxed[0], probe_outputs(outside)[0])
        assert "error" not in found[unit][0] and "error" not in found[unit][1], found[unit]
    return found


def differs(s: Any, c: Any, expected_inside: Any, expected_outside: Any, why_same: str = "") -> None:
    """The sandboxed value is `expected_inside` where outside it is `expected_outside`."""
    if c != expected_outside and why_same:
        pytest.skip(why_same + f" (outside the sandbox: {c!r})")
    assert (s, c) == (expected_inside, expected_outside)


ZERO_CAPS = "0000000000000000"


def check_option(option: str, s: dict[str, Any], c: dict[str, Any], state_dir: str) -> None:
    """Assert `option`'s effect: `s` the sandboxed probe, `c` the one outside."""
    if option == "User":
        assert s["uid"] == c["uid"] != 0
    elif option == "Group":
        assert s["gid"] == c["gid"] != 0
    elif option == "ProtectSystem":  # strict: all read-only but the API file systems and the StateDirectory
        differs(s["create"]["/srv/edgesync-elsewhere"], c["create"]["/srv/edgesync-elsewhere"], "EROFS", "ok")
        differs(s["read_only"]["/"], c["read_only"]["/"], True, False)
        assert {s["create"][d] for d in ("/etc", "/usr", "/opt/edgesync", "/var/lib", "/var/log")} == {"EROFS"}
    elif option in ("StateDirectory", "ReadWritePaths"):
        assert s["create"][state_dir] == "ok" and s["read_only"][state_dir] is False
    elif option == "StateDirectoryMode":
        pass  # checked on the directory itself: test_the_state_directory_is_the_services_own
    elif option == "UMask":
        differs(s["umask"], c["umask"], "0o27", "0o22")
    elif option == "PrivateTmp":
        differs(s["tmp_marker"], c["tmp_marker"], False, True)
        differs(s["var_tmp_marker"], c["var_tmp_marker"], False, True)
    elif option == "ProtectHome":
        differs(s["mode"]["/home"], c["mode"]["/home"], "0o0", "0o755")
        assert s["mode"]["/root"] == "0o0"
    elif option == "InaccessiblePaths":
        differs(s["mode"]["/var/lib/ceph"], c["mode"]["/var/lib/ceph"], "0o0", "0o750")
    elif option == "PrivateDevices":
        differs(s["dev"]["/dev/net/tun"], c["dev"]["/dev/net/tun"], False, True)
        assert s["dev"]["/dev/null"] and s["dev"]["/dev/urandom"]
    elif option == "NoNewPrivileges":
        differs(s["status"]["NoNewPrivs"], c["status"]["NoNewPrivs"], "1", "0")
    elif option == "CapabilityBoundingSet":
        assert s["status"]["CapBnd"] == ZERO_CAPS and c["status"]["CapBnd"] != ZERO_CAPS
    elif option == "AmbientCapabilities":
        differs(s["status"]["CapAmb"], c["status"]["CapAmb"], ZERO_CAPS, "nonzero",
                "no ambient capabilities is also what any unprivileged process has")
    elif option == "ProtectKernelTunables":
        differs(s["read_only"]["/proc/sys"], c["read_only"]["/proc/sys"], True, False)
    elif option == "ProtectKernelModules":
        differs(s["mode"]["/usr/lib/modules"], c["mode"]["/usr/lib/modules"], "0o0", "0o755",
                "this machine's kernel has no /usr/lib/modules to hide (its drivers are built in); "
                "loading modules needs CAP_SYS_MODULE, outside the bounding set (CapabilityBoundingSet)")
    elif option == "ProtectKernelLogs":
        differs(s["mode"]["/proc/kmsg"], c["mode"]["/proc/kmsg"], "0o0", "0o400")
    elif option == "ProtectControlGroups":
        differs(s["read_only"]["/sys/fs/cgroup"], c["read_only"]["/sys/fs/cgroup"], True, False)
    elif option == "ProtectClock":
        differs(s["adjtimex_read"], c["adjtimex_read"], "EPERM", "ok")
    elif option == "ProtectHostname":
        assert s["uts_ns"] != c["uts_ns"]  # a UTS namespace of its own: sethostname can't reach the host's
    elif option == "ProtectProc":
        differs(s["proc_1_visible"], c["proc_1_visible"], False, True)
    elif option == "RestrictAddressFamilies":
        differs(s["netlink_socket"], c["netlink_socket"], "EAFNOSUPPORT", "ok")
        assert s["inet_socket"] == "ok"
    elif option == "RestrictNamespaces":
        differs(s["user_namespace"], c["user_namespace"], "EPERM", "ok")
    elif option == "RestrictRealtime":
        differs(s["realtime"], c["realtime"], "EPERM", "ok",
                "an unprivileged process gets no realtime scheduling here anyway: the hard RLIMIT_RTPRIO is 0 "
                "and can't be raised (this machine's root lacks CAP_SYS_RESOURCE)")
    elif option == "RestrictSUIDSGID":
        differs(s["setuid_bit"], c["setuid_bit"], "EPERM", "ok")
    elif option == "LockPersonality":
        differs(s["personality_linux32"], c["personality_linux32"], "EPERM", "ok")
    elif option in ("SystemCallFilter", "SystemCallErrorNumber"):
        differs(s["status"]["Seccomp"], c["status"]["Seccomp"], "2", "0")
        differs(s["ptrace_peek"], c["ptrace_peek"], "EPERM", "ESRCH")  # @debug is not in @system-service
    elif option == "SystemCallArchitectures":
        if c["i386_syscall"] != "ok":
            pytest.skip("this kernel runs no i386 system calls at all (no IA32 emulation), so refusing them "
                        f"can't be shown (outside the sandbox: {c['i386_syscall']!r})")
        assert s["i386_syscall"] != "ok", s["i386_syscall"]  # killed (SIGSYS) or refused
    elif option == "RemoveIPC":
        pass  # it acts when the user's last unit stops: test_remove_ipc_removes_the_users_ipc_objects…
    else:
        raise AssertionError(f"no check of {option}: add one")


# What the units' [Service] sets that is not about the sandbox.
NOT_HARDENING = {"Type", "NotifyAccess", "ExecStart", "TimeoutStartSec", "TimeoutStopSec", "WatchdogSec",
                 "Restart", "RestartSec", "DynamicUser", "ConfigurationDirectory"}
HARDENING = [key for key in unit_settings(HUB) if key not in NOT_HARDENING]


def test_both_units_have_the_same_sandbox() -> None:
    agent = unit_settings("edgesync-agent@.service")
    assert [k for k in agent if k not in NOT_HARDENING] == HARDENING
    assert {k: v for k, v in agent.items() if k in HARDENING and not k.startswith("State")} == \
        {k: v for k, v in unit_settings(HUB).items() if k in HARDENING and not k.startswith("State")}


@pytest.mark.parametrize("unit", [HUB, AGENT])
@pytest.mark.parametrize("option", HARDENING)
def test_the_hardening_option_takes_effect(probes: dict[str, Any], unit: str, option: str) -> None:
    sandboxed, outside = probes[unit]
    assert option in unit_settings(unit_file(unit)), f"{unit} does not set {option}"
    state_dir = "/var/lib/edgesync" if unit == HUB else f"/var/lib/edgesync/{EDGE}"
    check_option(option, sandboxed, outside, state_dir)


def test_the_keyring_is_readable_and_ceph_works_under_the_sandbox(
        edgesync_site: Site, probes: dict[str, Any]) -> None:
    for unit in (HUB, AGENT):
        assert probes[unit][0]["keyring_bytes"] > 0
    # …and both daemons opened their cluster: their health says so.
    assert get(f"{edgesync_site.agent_url}/healthz") == 200
    status, body = api(edgesync_site.lab, "GET", "/v2/info/stores")
    assert status == 200 and {s["id"] for s in body["stores"]} >= {"central", EDGE}, body


@pytest.mark.parametrize("unit, state_dir", [(HUB, "/var/lib/edgesync"), (AGENT, f"/var/lib/edgesync/{EDGE}")])
def test_the_state_directory_is_the_services_own(edgesync_site: Site, unit: str, state_dir: str) -> None:
    ns = edgesync_site.ns
    ensure_running(ns, unit)
    settings = unit_settings(unit_file(unit))
    shown = ns.run("stat", "-c", "%a %U %G", state_dir).stdout.split()
    assert shown == [settings["StateDirectoryMode"].lstrip("0"), "edgesync", "edgesync"]
    files = ns.run("find", state_dir, "-maxdepth", "1", "-type", "f", "-printf", "%m %p\n").stdout.splitlines()
    assert files, f"{unit} wrote nothing in {state_dir}"
    for line in files:  # UMask=0027: nothing the daemon makes is readable by others
        assert int(line.split()[0], 8) & 0o007 == 0, line


# --- watchdog, crash, stop ------------------------------------------------------------------------

WATCHDOG_DROPIN = f"/etc/systemd/system/{AGENT}.d/60-test-watchdog.conf"
TEST_WATCHDOG_S = 4


def test_an_agent_whose_event_loop_is_blocked_stops_pinging_and_is_restarted(edgesync_site: Site) -> None:
    """The test's drop-in puts a hook on PYTHONPATH (SIGUSR1 makes the event
    loop's thread sleep) and shortens WatchdogSec to 4 s to keep the test
    short; the mechanism is the unit's 30 s one."""
    ns = edgesync_site.ns
    ns.write(WATCHDOG_DROPIN, f"[Service]\nEnvironment=PYTHONPATH={TEST_LIB}\nWatchdogSec={TEST_WATCHDOG_S}s\n")
    try:
        ns.systemctl("daemon-reload")
        ns.systemctl("restart", AGENT)
        before = ns.show(AGENT, "MainPID", "NRestarts", "WatchdogUSec")
        assert before["WatchdogUSec"] == f"{TEST_WATCHDOG_S}s", before
        cursor = ns.cursor()
        ns.systemctl("kill", "--kill-whom=main", "--signal=SIGUSR1", AGENT)
        blocked_at = time.monotonic()
        time.sleep(TEST_WATCHDOG_S / 2)
        assert main_pid(ns, AGENT) == int(before["MainPID"])  # alive, blocked, not pinging
        restarted = ns.wait_for(AGENT, "a restart", lambda s: s["NRestarts"] == str(int(before["NRestarts"]) + 1)
                                and s["ActiveState"] == "active" and s["SubState"] == "running",
                                WAIT_S, "MainPID", "NRestarts", "ActiveState", "SubState")
        took_s = time.monotonic() - blocked_at
        assert restarted["MainPID"] != before["MainPID"]
        lines = ns.journal(AGENT, cursor=cursor)
        assert any("Watchdog timeout" in line for line in lines), lines[-30:]
        assert get(f"{edgesync_site.agent_url}/healthz") == 200
        print(f"blocked loop → restarted in {took_s:.1f} s")
    finally:
        ns.run("rm", "-f", WATCHDOG_DROPIN)
        ns.systemctl("daemon-reload")
        ns.systemctl("restart", AGENT)


def test_an_agent_killed_mid_copy_is_restarted_and_resumes_the_copy(
        edgesync_site: Site, image_file: ImageFile) -> None:
    ns = edgesync_site.ns
    ensure_running(ns, HUB)
    ensure_running(ns, AGENT)
    image_id = central_image(edgesync_site, image_file)
    before = ns.show(AGENT, "MainPID", "NRestarts")
    already = written_to_edge(edgesync_site)
    copy_to_edge(edgesync_site, image_id)
    written = wait_written(edgesync_site, already + image_file.data_bytes * 0.4) - already  # past a checkpoint (1 s)
    cursor = ns.cursor()
    ns.run("kill", "-9", before["MainPID"])
    ns.wait_for(AGENT, "a restart", lambda s: s["NRestarts"] == str(int(before["NRestarts"]) + 1)
                and s["ActiveState"] == "active", WAIT_S, "NRestarts", "ActiveState")
    wait_copied(edgesync_site, image_id)
    fetched_after = fetched_by_agent(edgesync_site)  # the new process's counter
    assert fetched_after < image_file.data_bytes, (fetched_after, written)  # resumed, not started over
    assert edge_copy_identical(edgesync_site, image_id, image_file)
    lines = ns.journal(AGENT, cursor=cursor)
    assert any("status=9/KILL" in line for line in lines), lines[-20:]
    print(f"killed after {written / MiB:.1f} MiB; the restart fetched {fetched_after / MiB:.1f} "
          f"of {image_file.data_bytes / MiB:.0f} MiB")


def test_systemctl_stop_mid_copy_exits_cleanly_in_bound_and_the_next_start_resumes(
        edgesync_site: Site, image_file: ImageFile) -> None:
    ns = edgesync_site.ns
    ensure_running(ns, HUB)
    ensure_running(ns, AGENT)
    image_id = central_image(edgesync_site, image_file)
    already = written_to_edge(edgesync_site)
    copy_to_edge(edgesync_site, image_id)
    written = wait_written(edgesync_site, already + image_file.data_bytes * 0.25) - already
    bound_s = seconds(unit_settings("edgesync-agent@.service")["TimeoutStopSec"])
    started = time.monotonic()
    ns.systemctl("stop", AGENT, timeout=bound_s + 30)
    took_s = time.monotonic() - started
    shown = ns.show(AGENT, "ActiveState", "Result", "ExecMainCode", "ExecMainStatus")
    assert shown == {"ActiveState": "inactive", "Result": "success", "ExecMainCode": "1", "ExecMainStatus": "0"}
    assert took_s < bound_s
    image = get_image(edgesync_site.lab, image_id)  # type: ignore[arg-type]
    assert image is not None and EDGE not in stores_of(image)  # not finished: the stop cut it off

    ns.systemctl("start", AGENT)
    wait_copied(edgesync_site, image_id)
    fetched_after = fetched_by_agent(edgesync_site)
    assert fetched_after <= image_file.data_bytes - written, (fetched_after, written)  # only what it lacked
    assert edge_copy_identical(edgesync_site, image_id, image_file)
    print(f"stopped mid-copy in {took_s:.2f} s (bound {bound_s:.0f} s) after {written / MiB:.1f} MiB; "
          f"the next start fetched {fetched_after / MiB:.1f} MiB")


def test_the_hub_converts_a_qcow2_upload_with_qemu_img_under_the_sandbox(
        edgesync_site: Site, tmp_path: Path) -> None:
    """qemu-img (info, then convert into the staging area) runs as the hub's
    child, so under the hub's sandbox: read-only system, private /tmp, no
    capabilities, the hub's system call filter."""
    ensure_running(edgesync_site.ns, HUB)
    raw = make_striped_raw(tmp_path / "image.raw", stripes=4)
    qcow2 = tmp_path / "image.qcow2"
    subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(raw.path), str(qcow2)], check=True)
    image_id = str(uuid.uuid4())
    status, body = api(edgesync_site.lab, "POST", "/v2/images", body={
        "id": image_id, "name": "systemd-qcow2", "disk_format": "qcow2", "container_format": "bare"})
    assert status == 201, body
    with qcow2.open("rb") as data:
        stage = urllib.request.Request(
            f"{edgesync_site.hub_url}/v2/images/{image_id}/stage", data=data, method="PUT",
            headers={"X-Auth-Token": edgesync_site.admin_token, "Content-Type": "application/octet-stream",
                     "Content-Length": str(qcow2.stat().st_size)})
        with urllib.request.urlopen(stage, timeout=WAIT_S) as answer:
            assert answer.status == 204
    status, body = api(edgesync_site.lab, "POST", f"/v2/images/{image_id}/import",
                       body={"method": {"name": "glance-direct"}, "stores": ["central"]})
    assert status == 202, body
    image = wait_import_done(edgesync_site.lab, image_id, timeout=WAIT_S)  # type: ignore[arg-type]
    assert image["status"] == "active" and image["disk_format"] == "raw", image
    assert exported_sha512(edgesync_site.lab, "central", image_id) == raw.sha512  # type: ignore[arg-type]


def test_remove_ipc_removes_the_users_ipc_objects_when_its_last_unit_stops(edgesync_site: Site) -> None:
    ns = edgesync_site.ns
    ns.systemctl("stop", AGENT, HUB)
    queue = ns.run("setpriv", "--reuid=edgesync", "--regid=edgesync", "--init-groups",
                   "ipcmk", "--queue").stdout.split()[-1]  # "Message queue id: N"

    def queues() -> list[str]:
        return [line.split()[1] for line in ns.run("ipcs", "-q").stdout.splitlines()
                if len(line.split()) > 2 and line.split()[2] == "edgesync"]

    try:
        assert queue in queues()  # nothing removes it while no unit of the user runs
        ns.systemctl("start", HUB)
        assert queue in queues()
        ns.systemctl("stop", HUB)
        assert queue not in queues()
    finally:
        ns.run("ipcrm", "-q", queue, check=False)
        ns.systemctl("start", HUB, AGENT)
