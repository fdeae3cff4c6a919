"""The daemons raise their soft limit on open files to the hard one (a hub of
a thousand sites holds more than 1024 connections)."""

from __future__ import annotations

import resource
import subprocess
import sys

import pytest

PROBE = """
import resource
from edgesync.runtime import raise_open_files_limit
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))
print(raise_open_files_limit(), *resource.getrlimit(resource.RLIMIT_NOFILE))
"""


def test_the_soft_open_files_limit_is_raised_to_the_hard_one() -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard <= 256:
        pytest.skip(f"the hard limit ({hard}) leaves nothing to raise")
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, check=True).stdout
    assert [int(n) for n in out.split()] == [hard, hard, hard]
