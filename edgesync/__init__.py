"""edgesync: VM image replication from a central site to DCN edge sites."""

__version__ = "0.1.0"
