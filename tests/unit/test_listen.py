"""A daemon serves on the listening socket it was handed, and only on one
bound where its config says; the lab's ports are held, not just found free."""

from __future__ import annotations

import os
import socket
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web

from edgesync.errors import ConfigError
from edgesync.lab.errors import LabError
from edgesync.lab.ports import listening_socket
from edgesync.listen import LISTEN_FD_ENV, start_site

HOST = "127.0.0.1"


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"ok": True})


@pytest.fixture
async def runner() -> AsyncIterator[web.AppRunner]:
    app = web.Application()
    app.router.add_get("/healthz", healthz)
    runner = web.AppRunner(app)
    await runner.setup()
    yield runner
    await runner.cleanup()


def hand_over(sock: socket.socket, monkeypatch: pytest.MonkeyPatch) -> int:
    """As the lab does: the daemon gets its own descriptor of the socket; returns the port."""
    with sock:
        monkeypatch.setenv(LISTEN_FD_ENV, str(os.dup(sock.fileno())))
        return int(sock.getsockname()[1])


async def test_the_daemon_serves_on_the_socket_it_was_handed(runner: web.AppRunner,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    port = hand_over(listening_socket(HOST), monkeypatch)

    await start_site(runner, HOST, port)

    async with aiohttp.ClientSession() as session, session.get(f"http://{HOST}:{port}/healthz") as r:
        assert r.status == 200
    assert runner.addresses[0][1] == port
    assert LISTEN_FD_ENV not in os.environ  # not passed on to what the daemon starts


async def test_every_handed_socket_is_served_when_one_is_where_the_config_says(
        runner: web.AppRunner, monkeypatch: pytest.MonkeyPatch) -> None:
    configured, extra = listening_socket(HOST), listening_socket(HOST)
    ports = [s.getsockname()[1] for s in (configured, extra)]
    with configured, extra:
        monkeypatch.setenv(LISTEN_FD_ENV, ",".join(str(os.dup(s.fileno())) for s in (configured, extra)))

    await start_site(runner, HOST, ports[0])

    async with aiohttp.ClientSession() as session:
        for port in ports:
            async with session.get(f"http://{HOST}:{port}/healthz") as r:
                assert r.status == 200


async def test_a_socket_bound_elsewhere_than_the_config_says_is_refused(runner: web.AppRunner,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    port = hand_over(listening_socket(HOST), monkeypatch)

    with pytest.raises(ConfigError, match=f"bound to {HOST}:{port}, but the config says to listen on {HOST}:1"):
        await start_site(runner, HOST, 1)


async def test_without_a_handed_socket_it_binds_its_config_address(runner: web.AppRunner,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(LISTEN_FD_ENV, raising=False)
    await start_site(runner, HOST, 0)
    assert runner.addresses[0][0] == HOST and runner.addresses[0][1] > 0


def test_a_port_the_lab_holds_cannot_be_taken_in_the_meantime() -> None:
    held = listening_socket(HOST)
    port = held.getsockname()[1]
    try:
        thief = socket.socket()
        thief.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as daemons bind
        with thief, pytest.raises(OSError):
            thief.bind((HOST, port))
        with pytest.raises(LabError, match=f"port {HOST}:{port} is taken"):
            listening_socket(HOST, port)
    finally:
        held.close()
    listening_socket(HOST, port).close()  # free again once the holder let go


async def test_daemons_sharing_a_process_each_take_the_group_bound_where_their_config_says(
        monkeypatch: pytest.MonkeyPatch) -> None:
    socks = [listening_socket(HOST) for _ in range(3)]
    ports = [s.getsockname()[1] for s in socks]
    with socks[0], socks[1], socks[2]:
        monkeypatch.setenv(LISTEN_FD_ENV, ";".join(str(os.dup(s.fileno())) for s in socks))
    runners = []
    try:
        for port in reversed(ports):  # in any order: each finds its own
            app = web.Application()
            app.router.add_get("/healthz", healthz)
            runner = web.AppRunner(app)
            await runner.setup()
            runners.append(runner)
            await start_site(runner, HOST, port)
            assert [a[1] for a in runner.addresses] == [port]
    finally:
        for runner in runners:
            await runner.cleanup()
