"""Session-wide fixtures. One lab (Ceph clusters, later the broker) per test session."""

from tests.fixtures.broker import broker, tls_broker  # noqa: F401  (session fixtures)
from tests.fixtures.ceph import ceph_clusters  # noqa: F401  (session fixture)
from tests.fixtures.glance_source import glance_source  # noqa: F401  (session fixture)
from tests.fixtures.keystone_lab import keystone_lab  # noqa: F401  (session fixture)
from tests.fixtures.lab import file_lab, rbd_agents_lab, rbd_lab  # noqa: F401  (session fixtures)
from tests.fixtures.openstack_lab import openstack_lab  # noqa: F401  (session fixture)
from tests.fixtures.systemd import systemd_ns  # noqa: F401  (session fixture)
from tests.fixtures.systemd_site import edgesync_site  # noqa: F401  (session fixture)
from tests.fixtures.wan import wan_lab  # noqa: F401  (session fixture)
