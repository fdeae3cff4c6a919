"""What a copy reports as it runs, for whoever counts it.

A leaf module: the transfer layer and the replicators report into a
`CopyObserver`; `metrics` implements one per site. Neither has to know the
other.
"""

from __future__ import annotations


class CopyObserver:
    """Told what a copy does as it runs. This base ignores it all (tools, tests)."""

    def written(self, nbytes: int) -> None:
        """`nbytes` of data were written into the destination store."""

    def received(self, nbytes: int) -> None:
        """`nbytes` arrived over HTTP."""

    def digest_mismatch(self, kind: str) -> None:
        """A range (`chunk`) or a whole copy (`image`) failed verification."""

    def resumed(self) -> None:
        """A copy went on from its checkpoint."""


NO_OBSERVER = CopyObserver()
