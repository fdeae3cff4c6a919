"""A ceph.conf's fsid, read without librados (Ceph's ini dialect)."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgesync.stores.ceph_conf import conf_fsid

FSID = "6f1c4f0e-4c1e-4d43-9e0b-3c1a2b3c4d5e"


@pytest.mark.parametrize("text", [
    f"[global]\nfsid = {FSID}\n",
    f"[global]\n  fsid={FSID}   # the cluster's id\n",
    f"; written by hand\n[ global ]\nmon host = [v2:127.0.0.1:3300]\nfsid = {FSID} ; trailing\n",
    f"[client]\nfsid = not-this-one\n[global]\nmon_initial_members = a\nfsid = {FSID}\n",
    f"[mon]\nlog file = /x\n[global]\n#fsid = commented-out\nfsid = {FSID}\n[osd]\nfsid = an-osd-uuid\n",
])
def test_the_fsid_of_the_global_section(tmp_path: Path, text: str) -> None:
    conf = tmp_path / "ceph.conf"
    conf.write_text(text)
    assert conf_fsid(conf) == FSID


@pytest.mark.parametrize("text", ["[global]\nmon host = 127.0.0.1\n", "[client]\nfsid = x\n", ""])
def test_no_fsid_in_global_is_none(tmp_path: Path, text: str) -> None:
    conf = tmp_path / "ceph.conf"
    conf.write_text(text)
    assert conf_fsid(conf) is None


def test_a_missing_conf_is_none(tmp_path: Path) -> None:
    assert conf_fsid(tmp_path / "nope.conf") is None
    assert conf_fsid(None) is None
