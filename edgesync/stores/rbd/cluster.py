"""One store's connection to its Ceph cluster and pool, and the thread pool
every blocking rados/rbd call runs in.

One connection per store, opened on first use with timeouts derived from
`connect_timeout_s`, so an unreachable cluster fails fast with the retryable
StoreUnavailable instead of hanging. Every rados/rbd error raised in the pool
is translated (`errors.translate`) on its way out.
"""

from __future__ import annotations

import asyncio
import functools
import math
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import rados
import rbd

from edgesync.errors import StoreError, StoreUnavailable
from edgesync.stores.ceph_conf import conf_fsid
from edgesync.stores.rbd.errors import translate

IO_THREADS = 8
# A single OSD op may legitimately take seconds on a busy cluster; a hung one
# must still fail eventually rather than stall a transfer forever.
MIN_OSD_OP_TIMEOUT_S = 30

T = TypeVar("T")


class Cluster:
    def __init__(
        self, store_name: str, *, ceph_conf: Path, pool: str, user: str, keyring: Path | None,
        connect_timeout_s: float, client_options: dict[str, str],
    ) -> None:
        self.store_name = store_name
        self.ceph_conf = ceph_conf
        self.pool = pool
        self.user = user
        self.keyring = keyring
        self.connect_timeout_s = connect_timeout_s
        self.client_options = client_options  # extra librados/librbd settings
        # Known without connecting (from the conf, without librados); the
        # cluster's own answer replaces it on connect.
        self.fsid: str | None = conf_fsid(ceph_conf)
        self._executor = ThreadPoolExecutor(IO_THREADS, thread_name_prefix=f"rbd-{store_name}")
        self._rados: rados.Rados | None = None
        self._ioctx: rados.Ioctx | None = None
        self._connecting = asyncio.Lock()
        self._closed = False

    async def run(self, fn: Callable[..., T], *args: Any, what: str) -> T:
        """`fn(ioctx, *args)` in the pool, with rados/rbd errors translated."""
        ioctx = await self._connected()
        try:
            return await asyncio.get_running_loop().run_in_executor(
                self._executor, functools.partial(fn, ioctx, *args)
            )
        except (rados.Error, rbd.Error) as exc:
            raise translate(exc, f"store {self.store_name}: {what}") from exc

    async def offload(self, fn: Callable[..., T], *args: Any) -> T:
        """CPU work (zero detection, copies) in the pool, off the event loop."""
        self._check_open()
        return await asyncio.get_running_loop().run_in_executor(self._executor, functools.partial(fn, *args))

    def own_addr(self) -> str:
        """This client's address, as lock owners name it (in the pool, once connected)."""
        assert self._rados is not None
        addr: str = self._rados.get_addrs()
        return addr

    def usage_sync(self, ioctx: rados.Ioctx) -> tuple[dict[str, int], dict[str, int]]:
        """The pool's and the cluster's stats (in the pool, once connected)."""
        assert self._rados is not None
        return ioctx.get_stats(), self._rados.get_cluster_stats()

    def _check_open(self) -> None:
        if self._closed:
            raise StoreError(f"store {self.store_name} is closed")

    async def _connected(self) -> rados.Ioctx:
        self._check_open()
        if self._ioctx is None:
            async with self._connecting:
                if self._ioctx is None:
                    loop = asyncio.get_running_loop()
                    self._rados, self._ioctx = await loop.run_in_executor(self._executor, self._connect_sync)
        return self._ioctx

    def _connect_sync(self) -> tuple[rados.Rados, rados.Ioctx]:
        t = max(1, math.ceil(self.connect_timeout_s))  # these options take whole seconds
        options = {
            "client_mount_timeout": str(t),
            "rados_mon_op_timeout": str(t),
            "rados_osd_op_timeout": str(max(MIN_OSD_OP_TIMEOUT_S, 3 * t)),
            # Whole-image streams gain nothing from librbd's cache: it costs a
            # copy and up to 32 MiB per open image, and reads go ~1.3x faster
            # without it.
            "rbd_cache": "false",
        }
        if self.keyring is not None:
            options["keyring"] = str(self.keyring)
        options.update(self.client_options)
        where = f"store {self.store_name}: Ceph cluster of {self.ceph_conf} as client.{self.user}"
        try:
            cluster = rados.Rados(conffile=str(self.ceph_conf), rados_id=self.user, conf=options)
        except rados.Error as exc:
            raise StoreError(f"{where}: cannot load the configuration ({exc})") from exc
        try:
            cluster.connect()
            fsid = cluster.get_fsid()
            ioctx = cluster.open_ioctx(self.pool)
        except rados.ObjectNotFound as exc:
            cluster.shutdown()
            raise StoreError(f"{where}: pool {self.pool!r} does not exist") from exc
        except (rados.TimedOut, rados.ConnectionShutdown) as exc:
            cluster.shutdown()
            raise StoreUnavailable(f"{where}: no answer from the monitors within {t:g}s") from exc
        except rados.Error as exc:
            cluster.shutdown()
            raise translate(exc, f"{where}: cannot connect") from exc
        self.fsid = fsid
        return cluster, ioctx

    async def close(self, *, drain: Callable[[], Awaitable[None]], release: Callable[[], None]) -> None:
        """Refuse new work, `drain()` what uses the cluster, wait for the pool,
        `release()` handles opened from it, then disconnect."""
        if self._closed:
            return
        self._closed = True
        await drain()
        await asyncio.to_thread(self._close_sync, release)

    def _close_sync(self, release: Callable[[], None]) -> None:
        self._executor.shutdown(wait=True)
        release()
        if self._ioctx is not None:
            self._ioctx.close()
        if self._rados is not None:
            self._rados.shutdown()
        self._ioctx = self._rados = None
