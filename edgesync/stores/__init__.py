"""Stores: the interface (`base`), its drivers (`file`, `rbd`) and their construction."""

from __future__ import annotations

from edgesync.config import SiteConfig
from edgesync.stores.base import (
    Extent,
    ImageStore,
    ImageWriter,
    Location,
    ResumableStore,
    ResumableWriter,
    StoreCapacity,
)

__all__ = [
    "Extent", "ImageStore", "ImageWriter", "Location", "ResumableStore", "ResumableWriter", "StoreCapacity",
    "open_store",
]


def open_store(site: SiteConfig) -> ResumableStore:
    """Build the store a site's config describes (the one place that knows the
    drivers). Both drivers can resume copies; the hub uses them as ImageStores."""
    cfg = site.store
    if cfg.type == "file":
        from edgesync.stores.file import FileStore

        assert cfg.path is not None
        return FileStore(site.name, cfg.path, description=cfg.description, read_only=cfg.read_only)
    # Imported lazily: only hosts with an rbd store need the Ceph bindings.
    from edgesync.stores.rbd import RbdStore

    return RbdStore.from_config(site.name, cfg)
