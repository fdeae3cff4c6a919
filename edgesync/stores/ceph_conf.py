"""What edgesync reads from a ceph.conf itself, without librados.

The hub shows each site's cluster fsid (in `/v2/info/stores/detail`) and an
rbd store names it in its locations before it has connected; neither needs
the Ceph bindings loaded for that. Ceph's ini dialect: sections in brackets,
`key = value` lines, comments from `#` or `;` to the end of a line, and
spaces and underscores in a key meaning the same (`mon host` = `mon_host`).
"""

from __future__ import annotations

import re
from pathlib import Path


def conf_fsid(conf: Path | None) -> str | None:
    """The `fsid` in a ceph.conf's [global] section, if it names one."""
    if conf is None:
        return None
    try:
        text = Path(conf).read_text()
    except OSError:
        return None
    section = "global"
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].split(";", 1)[0].strip()
        if line.startswith("["):
            section = line.strip("[]").strip()
        elif section == "global" and "=" in line:
            key, value = (part.strip() for part in line.split("=", 1))
            if _normal_key(key) == "fsid":
                return value
    return None


def _normal_key(key: str) -> str:
    return re.sub(r"[ _]+", "_", key)
