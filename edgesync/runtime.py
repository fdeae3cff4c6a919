"""Process-wide settings for the daemons."""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import resource

log = logging.getLogger(__name__)

M_ARENA_MAX = -8  # glibc's mallopt parameter number


def limit_malloc_arenas(count: int = 2) -> None:
    """Cap glibc's malloc arenas.

    librbd and librados run dozens of threads, and glibc gives threads their
    own arenas, up to 8 per core, each keeping freed buffers: with two copies
    in flight the hub peaked ~90 MiB higher than with two arenas, for no speed
    gain. Same effect as MALLOC_ARENA_MAX=2, without needing the environment.
    """
    libc_name = ctypes.util.find_library("c")
    if libc_name is None:
        return
    try:
        libc = ctypes.CDLL(libc_name)
        if libc.mallopt(M_ARENA_MAX, count) != 1:
            log.debug("mallopt(M_ARENA_MAX) refused")
    except (OSError, AttributeError):  # not glibc
        log.debug("cannot cap malloc arenas on this libc")


def raise_open_files_limit() -> int:
    """Raise the soft limit on open files to the hard one; returns the soft limit now.

    Every site holds connections to the hub (its agent's pulls, up to
    `per_site_concurrency` each) and one to the broker; at the usual soft
    limit of 1024 a hub of a thousand sites — and the lab's Mosquitto, which
    inherits the lab's limits — would start refusing them (EMFILE), while the
    hard limit is usually far higher. Raising the soft limit up to the hard
    one needs no privilege.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft == resource.RLIM_INFINITY or soft >= hard:
        return soft
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (ValueError, OSError) as exc:
        log.debug("cannot raise the open files limit from %d to %d: %s", soft, hard, exc)
        return soft
    return hard
