"""The lab's one error: what `lab up|down|…`, its Ceph clusters and its broker raise.

One class for the whole lab, so that `lab up` can stop everything it started
whichever part failed.
"""

from __future__ import annotations

from edgesync.errors import EdgesyncError


class LabError(EdgesyncError):
    """The lab (its daemons, Ceph clusters, broker or links) could not be brought up or down."""
