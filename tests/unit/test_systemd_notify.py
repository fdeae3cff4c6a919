"""sd_notify over a real unix datagram socket, and the service lifecycle around it."""

from __future__ import annotations

import asyncio
import os
import socket
import tempfile
import time
import uuid
from collections.abc import Iterator

import pytest

from edgesync.service import Service
from edgesync.systemd_notify import Notifier, socket_address, watchdog_interval_s


class Receiver:
    """What systemd does: a bound datagram socket, read without blocking."""

    def __init__(self, address: str | bytes) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(address)
        self.sock.setblocking(False)
        self.seen: list[dict[str, str]] = []

    def messages(self) -> list[dict[str, str]]:
        """Every message received so far, oldest first."""
        while True:
            try:
                data = self.sock.recv(4096)
            except BlockingIOError:
                return self.seen
            self.seen.append(dict(line.split("=", 1) for line in data.decode().split("\n")))

    def close(self) -> None:
        self.sock.close()

    def count(self, key: str, value: str | None = None) -> int:
        return sum(1 for m in self.messages() if key in m and (value is None or m[key] == value))


@pytest.fixture
def socket_path() -> Iterator[str]:
    # Not tmp_path: a unix socket's path must fit in 108 bytes.
    with tempfile.TemporaryDirectory(prefix="sdn-") as directory:
        yield os.path.join(directory, "notify")


@pytest.fixture
def receiver(socket_path: str) -> Iterator[Receiver]:
    bound = Receiver(socket_path)
    try:
        yield bound
    finally:
        bound.close()


def test_ready_status_and_stopping_arrive_as_key_value_lines(socket_path: str, receiver: Receiver) -> None:
    env = {"NOTIFY_SOCKET": socket_path, "OTHER": "kept"}
    notifier = Notifier.from_environment(env)
    assert notifier.enabled and env == {"OTHER": "kept"}  # children don't inherit it
    assert notifier.ready("serving on 0.0.0.0:9292\nand more")
    assert notifier.watchdog() and notifier.stopping("stopping (SIGTERM)")
    notifier.close()
    assert receiver.messages() == [
        {"READY": "1", "STATUS": "serving on 0.0.0.0:9292 and more"},  # one line: the protocol is line-based
        {"WATCHDOG": "1"},
        {"STOPPING": "1", "STATUS": "stopping (SIGTERM)"},
    ]


def test_an_abstract_socket_is_named_with_an_at_sign() -> None:
    name = f"edgesync-test-{uuid.uuid4().hex}"
    assert socket_address(f"@{name}") == b"\0" + name.encode()
    receiver = Receiver(b"\0" + name.encode())
    notifier = Notifier.from_environment({"NOTIFY_SOCKET": f"@{name}"})
    try:
        notifier.ready("up")
        assert receiver.messages() == [{"READY": "1", "STATUS": "up"}]
    finally:
        notifier.close()
        receiver.close()


def test_without_systemd_nothing_is_sent_and_nothing_fails() -> None:
    notifier = Notifier.from_environment({})
    assert not notifier.enabled and notifier.ready("up") and notifier.watchdog_interval_s is None


def test_a_vanished_socket_does_not_fail_the_daemon(socket_path: str) -> None:
    notifier = Notifier(socket_path)  # nobody bound it
    assert notifier.ready("up") is False
    notifier.close()


@pytest.mark.parametrize("env, interval", [
    ({"WATCHDOG_USEC": "30000000"}, 15.0),
    ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "4242"}, 15.0),
    ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "4243"}, None),  # another process is meant
    ({"WATCHDOG_USEC": "0"}, None),
    ({"WATCHDOG_USEC": "soon"}, None),
    ({}, None),
])
def test_the_watchdog_interval_is_half_the_timeout_for_the_right_pid(env: dict[str, str],
                                                                      interval: float | None) -> None:
    assert watchdog_interval_s(env, pid=4242) == interval


async def test_the_service_pings_reports_status_and_stops_once(socket_path: str, receiver: Receiver) -> None:
    state = {"text": "broker disconnected"}
    stopped: list[str] = []
    notifier = Notifier(socket_path, watchdog_interval_s=0.02)
    async with Service("agent", notifier=notifier, describe=lambda: state["text"]) as service:
        service.on_stop(lambda: stopped.append("agent"))
        service.ready("broker disconnected")
        await wait_until(lambda: receiver.count("WATCHDOG") >= 3)
        state["text"] = "broker connected"
        await wait_until(lambda: receiver.count("STATUS", "agent: broker connected") == 1)
        service.request_stop("SIGTERM")
        service.request_stop("SIGINT")  # a second signal changes nothing
        await service.stop_requested()
        service.ready("too late")  # READY after STOPPING would be a lie: not sent
    seen = receiver.messages()
    assert seen[0] == {"STATUS": "agent: starting"}
    kinds = [next(iter(m)) for m in seen]
    assert kinds.count("READY") == 1 and kinds.count("STOPPING") == 1 and stopped == ["agent"]
    assert kinds.index("READY") < kinds.index("STOPPING")
    assert {"STOPPING": "1", "STATUS": "agent: stopping (SIGTERM)"} in seen


async def test_a_failing_status_line_does_not_stop_the_watchdog(socket_path: str, receiver: Receiver,
                                                                 caplog: pytest.LogCaptureFixture) -> None:

    def broken() -> str:
        raise RuntimeError("no status today")

    async with Service("hub", notifier=Notifier(socket_path, watchdog_interval_s=0.02), describe=broken) as service:
        service.ready("serving")
        await wait_until(lambda: receiver.count("WATCHDOG") >= 3)
    assert "describing hub for systemd failed" in caplog.text


async def test_a_blocked_event_loop_stops_the_pings(socket_path: str, receiver: Receiver) -> None:
    """Pings come from the loop, not a thread: a loop stuck in a synchronous
    call sends none, so systemd's watchdog fires."""
    async with Service("hub", notifier=Notifier(socket_path, watchdog_interval_s=0.01)) as service:
        service.ready("serving")
        await wait_until(lambda: receiver.count("WATCHDOG") >= 2)
        before = receiver.count("WATCHDOG")
        time.sleep(0.2)  # the loop is blocked: twenty intervals pass
        assert receiver.count("WATCHDOG") == before
        await wait_until(lambda: receiver.count("WATCHDOG") > before)  # unblocked, they resume


async def wait_until(predicate, timeout_s: float = 10.0) -> None:  # type: ignore[no-untyped-def]
    async with asyncio.timeout(timeout_s):
        while not predicate():
            await asyncio.sleep(0.01)
