"""Imports point one way: the layers the README's architecture section names."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "edgesync"


def imported_modules(path: Path) -> set[str]:
    """Every module `path` imports, at the top or inside functions (TYPE_CHECKING too)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return found


def importers(of: tuple[str, ...], under: Path = PACKAGE) -> set[str]:
    """The modules under `under` that import one of `of` (or a submodule of one)."""
    return {
        str(path.relative_to(PACKAGE))
        for path in under.rglob("*.py")
        if any(m == name or m.startswith(name + ".") for m in imported_modules(path) for name in of)
    }


def test_the_transfer_layer_imports_neither_metrics_nor_the_bus() -> None:
    assert importers(("edgesync.metrics", "edgesync.bus"), PACKAGE / "transfer") == set()
    # the check itself sees such imports: the hub does import both
    assert {"hub/app.py"} <= importers(("edgesync.metrics",)) and "hub/remote.py" in importers(("edgesync.bus",))


def test_leaf_modules_import_no_other_edgesync_module() -> None:
    for leaf in ("errors.py", "observer.py", "backoff.py"):
        assert not {m for m in imported_modules(PACKAGE / leaf) if m.startswith("edgesync")}, leaf


def test_only_the_rbd_package_imports_the_ceph_bindings() -> None:
    found = importers(("rados", "rbd"))
    assert found and all(path.startswith("stores/rbd/") for path in found), found


def test_reading_a_ceph_conf_and_describing_sites_load_no_ceph_binding(tmp_path: Path) -> None:
    conf = tmp_path / "ceph.conf"
    conf.write_text("[global]\nfsid = 1234\n")
    probe = (
        "import sys\n"
        "from edgesync.stores.ceph_conf import conf_fsid\n"
        "import edgesync.hub.remote\n"
        f"assert conf_fsid({str(conf)!r}) == '1234'\n"
        "print(sorted(m for m in ('rados', 'rbd') if m in sys.modules))\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
