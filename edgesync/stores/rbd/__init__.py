"""The `rbd` store: one RBD image per image id in one pool of one Ceph cluster.

A published copy is the RBD image `<id>` with a protected snapshot `snap`;
Nova and Cinder COW-clone that snapshot, and its location is
`rbd://<fsid>/<pool>/<id>/snap`, the form Glance's rbd store uses.

Writing and publishing. A copy is written into `<id>.partial`. `publish()`
waits for the writes in flight, flushes, creates `snap`, protects it, and only
then renames `<id>.partial` to `<id>`. Readers look for `<id>` with a
protected `snap`, so a crash at any step leaves either nothing they accept or
a complete, protected copy; a stale `.partial` is discarded by the next writer
(or reopened with `resume=True`). Any failure while writing or publishing, and
`abort()`, remove the partial image and its snapshots.

This package is the only one that imports the rados/rbd bindings, one module
per concern:

- `errors`: librados/librbd errors into the store taxonomy, by errno;
- `cluster`: the store's one connection and the thread pool that every
  blocking call runs in, never the event loop;
- `images`: how copies are named in the pool and the blocking steps on them;
- `writer`: `RbdWriter`, the aio write window and the publish;
- `handles`: the cache of read-only snapshot handles that reads share;
- `store`: `RbdStore`, the store interface on top of them.

Reading a ceph.conf's fsid needs none of them: `edgesync.stores.ceph_conf`.
"""

from edgesync.stores.rbd.store import RbdStore

__all__ = ["RbdStore"]
