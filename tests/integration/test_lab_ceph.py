"""The lab's Ceph bootstrap when a mon's port is taken between being picked
and being bound (the mon can't take a handed-over socket): bootstrapped again
on other ports, not left retrying its bind for ever."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from edgesync.lab import ceph, ports

pytestmark = pytest.mark.ceph


async def test_a_mon_port_taken_before_the_mon_binds_it_is_replaced(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    thief = socket.socket()
    thief.bind((ceph.HOST, 0))
    thief.listen()  # it even accepts the readiness probe, as a stranger's daemon would
    taken = thief.getsockname()[1]
    real_pick = ports.pick_free
    picks: list[int] = []

    def first_pick_is_taken(host: str, count: int) -> list[int]:
        picks.append(count)
        fresh = real_pick(host, count)
        return [taken, *fresh[1:]] if len(picks) == 1 else fresh

    monkeypatch.setattr(ports, "pick_free", first_pick_is_taken)
    try:
        clusters = await ceph.up(tmp_path, ["solo"])
        cluster = clusters["solo"]
        assert taken not in {int(cluster.mon_addr.rsplit(":", 1)[1]), int(cluster.mon_addr_v1.rsplit(":", 1)[1])}
        assert len(picks) == 2 and ceph.is_running(cluster.dir)
    finally:
        thief.close()
        await ceph.down(tmp_path)
    assert not ceph.is_running(tmp_path / "solo")
