"""A copy checked block by block against its manifest, taking what the site holds.

`CheckedSource` is the `DataSource` an agent copies from when the copy
command names a chunk manifest. For each range pump asks for, every 4 KiB
block comes from the cheapest place that has it:

1. the unpublished copy itself, for ranges an earlier attempt wrote
   (resume);
2. nowhere, for a block of zeros (written as a hole);
3. a copy the site already holds with a block of the same hash
   (`LocalBlocks`, from the manifests of the site's copies: a rebuilt OS
   image shares most of its blocks with last month's);
4. the hub, for the rest: all of a range's missing blocks in one request.

Then every block is checked against the manifest. A block that doesn't match
is fetched from the hub again (a local copy that doesn't hold what its
manifest said costs only a refetch); a block from the hub that still doesn't
match after `max_attempts` fails the copy (retryable). So the copy never
hashes the whole logical image: holes cost nothing and data is hashed once.

`AgentManifests` keeps the manifest of each copy the agent published, one
file per image in its state directory, written atomically.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from edgesync.errors import EdgesyncError
from edgesync.observer import NO_OBSERVER, CopyObserver
from edgesync.stores.base import Extent, ImageStore, ResumableWriter
from edgesync.transfer.http import ChunkDigestMismatch
from edgesync.transfer.manifest import BLOCK_BYTES, HASH_BYTES, InvalidManifest, Manifest, hash_blocks, zero_block_hash

log = logging.getLogger(__name__)

# Local reads of one range in flight at once (each is a store call off the loop).
LOCAL_READS = 8


class SpanSource(Protocol):
    """Where missing blocks come from: the hub (`HttpSource`)."""

    async def read_spans(self, spans: list[tuple[int, int]]) -> bytes: ...


class LocalBlocks:
    """hash → (image id, block number) of the blocks of the site's copies.

    About 100 bytes of memory per distinct 4 KiB block the site holds
    (25 MiB per GiB of data). Entries are hints: what is read through them
    is checked like anything else, so an entry of a copy deleted meanwhile
    only costs a refetch."""

    def __init__(self) -> None:
        self._where: dict[bytes, tuple[str, int]] = {}
        self._zero = zero_block_hash()

    def add(self, image_id: str, manifest: Manifest) -> None:
        hashes, where, zero = manifest.hashes, self._where, self._zero
        full_blocks = manifest.image_size // BLOCK_BYTES  # a short last block is never offered
        i = 0
        for start, count in manifest.runs:
            for block in range(start, start + count):
                digest = hashes[i:i + HASH_BYTES]
                i += HASH_BYTES
                if block < full_blocks and digest != zero:
                    where.setdefault(digest, (image_id, block))

    def forget(self, image_id: str) -> None:
        self._where = {h: w for h, w in self._where.items() if w[0] != image_id}

    def find(self, digest: bytes) -> tuple[str, int] | None:
        return self._where.get(digest)

    def __len__(self) -> int:
        return len(self._where)


class AgentManifests:
    """The manifests of the copies this agent published, as files."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def _path(self, image_id: str) -> Path:
        return self.directory / f"{image_id}.manifest"

    async def save(self, image_id: str, manifest: Manifest) -> None:
        await asyncio.to_thread(self._save, image_id, manifest.encode())

    def _save(self, image_id: str, body: bytes) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        temporary = self._path(image_id).with_suffix(".tmp")
        temporary.write_bytes(body)
        os.replace(temporary, self._path(image_id))

    async def remove(self, image_id: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            await asyncio.to_thread(self._path(image_id).unlink)

    async def load_all(self, image_ids: Iterable[str]) -> LocalBlocks:
        """The index of the blocks of these copies (those that have a manifest)."""
        blocks = LocalBlocks()
        for image_id in image_ids:
            try:
                body = await asyncio.to_thread(self._path(image_id).read_bytes)
                blocks.add(image_id, Manifest.decode(body))
            except FileNotFoundError:
                continue  # published before manifests, or by an older agent
            except InvalidManifest as exc:
                log.warning("the manifest of local copy %s is unusable (%s); its blocks are not reused",
                            image_id, exc.message)
        return blocks


@dataclass
class SiteCopies:
    """What an agent knows of its site's copies: their manifests (None: kept
    nowhere, as in tests of one copy) and the index of their blocks."""

    manifests: AgentManifests | None
    blocks: LocalBlocks = field(default_factory=LocalBlocks)

    @classmethod
    async def load(cls, manifests: AgentManifests, store: ImageStore) -> SiteCopies:
        return cls(manifests, await manifests.load_all(await store.image_ids()))

    async def keep(self, image_id: str, manifest: Manifest) -> None:
        """A copy was published: remember its manifest and blocks."""
        if self.manifests is not None:
            await self.manifests.save(image_id, manifest)
        self.blocks.add(image_id, manifest)

    async def forget(self, image_id: str) -> None:
        if self.manifests is not None:
            await self.manifests.remove(image_id)
        self.blocks.forget(image_id)


@dataclass
class Counts:
    """Where a copy's data bytes came from."""

    fetched: int = 0  # asked of the hub (refetches included)
    local: int = 0  # read from other copies at this site
    zero: int = 0  # zero blocks: neither fetched nor read
    read_back: int = 0  # from the unpublished copy itself (resume)
    refetched_blocks: int = 0


@dataclass(frozen=True)
class _Run:
    """Consecutive blocks of one range with the same origin."""

    kind: str  # "back", "zero", "local", "hub"
    first: int  # block number in the image being copied
    count: int
    image_id: str = ""  # local: the copy holding them
    source_block: int = 0  # local: their first block there


class CheckedSource:
    """The DataSource of a copy that has a manifest (see the module's docstring)."""

    def __init__(self, hub: SpanSource, manifest: Manifest, *, store: ImageStore, local: LocalBlocks,
                 writer: ResumableWriter, done: list[Extent], max_attempts: int = 3,
                 observer: CopyObserver = NO_OBSERVER) -> None:
        self._hub = hub
        self._manifest = manifest
        self._store = store
        self._local = local
        self._writer = writer
        self._done = done
        self._max_attempts = max_attempts
        self._observer = observer
        self._zero = zero_block_hash()
        self._last_block = max(-(-manifest.image_size // BLOCK_BYTES) - 1, 0)
        self._short_zero = zero_block_hash(manifest.block_length(self._last_block))
        self._local_reads = asyncio.Semaphore(LOCAL_READS)
        self.counts = Counts()
        self.data_bytes = sum(e.length for e in manifest.extents())

    async def size(self) -> int:
        return self._manifest.image_size

    async def extents(self) -> list[Extent]:
        return self._manifest.extents()

    async def read(self, offset: int, length: int) -> bytes:
        if offset % BLOCK_BYTES:
            raise ValueError(f"ranges of a manifest copy start on a block, not at {offset}")
        first, end_block = offset // BLOCK_BYTES, -(-(offset + length) // BLOCK_BYTES)
        expected = self._manifest.hashes_of(first, end_block)
        runs = self._plan(first, expected)
        if len(runs) == 1 and runs[0].kind == "hub":
            # The common case of a first copy: the whole range from the hub,
            # used as it came when it checks (no copy into a buffer and out).
            body = await self._hub.read_spans([(offset, length)])
            self.counts.fetched += len(body)
            bad = await self._mismatches(body, first, expected) if len(body) == length else \
                list(range(first, end_block))
            if not bad:
                return body
            out = bytearray(length)
            out[:min(len(body), length)] = body[:length]
        else:
            out = bytearray(length)
            await self._fill(out, offset, runs)
            bad = await self._mismatches(out, first, expected)
        attempts = 1
        while bad:
            if attempts >= self._max_attempts and any(self._origin(runs, b) == "hub" for b in bad):
                raise ChunkDigestMismatch(f"{len(bad)} blocks at {offset} of image {self._writer.image_id} "
                                          f"don't match the manifest after {attempts} attempts")
            log.warning("range %d+%d of image %s: %d blocks don't match the manifest; fetching them again",
                        offset, length, self._writer.image_id, len(bad))
            self.counts.refetched_blocks += len(bad)
            self._observer.digest_mismatch("chunk")
            runs = _runs_of(sorted(bad), "hub")
            await self._fill(out, offset, runs)
            bad = await self._mismatches(out, first, expected)
            attempts += 1
        return bytes(out)

    # --- planning ----------------------------------------------------------------

    def _plan(self, first: int, expected: list[bytes | None]) -> list[_Run]:
        # Per block, so kept lean: a GiB of data is 262,144 blocks, planned on the loop.
        resumed = _overlaps(self._done, first * BLOCK_BYTES, len(expected) * BLOCK_BYTES)
        runs: list[_Run] = []
        kind, start, count, image_id, source = "", 0, 0, "", 0
        for block, digest in enumerate(expected, first):
            k, img, src = self._origin_of(block, digest, resumed)
            if count and k == kind and (k != "local" or (img == image_id and src == source + count)):
                count += 1
                continue
            if count:
                runs.append(_Run(kind, start, count, image_id, source))
            kind, start, count, image_id, source = k, block, 1, img, src
        if count:
            runs.append(_Run(kind, start, count, image_id, source))
        return runs

    def _origin_of(self, block: int, digest: bytes | None, resumed: bool) -> tuple[str, str, int]:
        """(kind, local copy, its block) of one block."""
        if resumed and _covered(self._done, block * BLOCK_BYTES, self._manifest.block_length(block)):
            return "back", "", 0
        if digest is None or digest == self._zero or (block == self._last_block and digest == self._short_zero):
            return "zero", "", 0
        found = self._local.find(digest)
        if found is not None:
            return "local", found[0], found[1]
        return "hub", "", 0

    @staticmethod
    def _origin(runs: list[_Run], block: int) -> str:
        return next((r.kind for r in runs if r.first <= block < r.first + r.count), "hub")

    # --- reading -----------------------------------------------------------------

    async def _fill(self, out: bytearray, offset: int, runs: list[_Run]) -> None:
        """Put each run's bytes into `out` (which starts at `offset`)."""
        hub_runs = [r for r in runs if r.kind == "hub"]
        others = [self._fill_local(out, offset, r) for r in runs if r.kind in ("local", "back")]
        await asyncio.gather(self._fill_from_hub(out, offset, hub_runs), *others)
        for run in runs:
            if run.kind == "zero":
                start, length = self._span(run)
                out[start - offset:start - offset + length] = bytes(length)
                self.counts.zero += length

    async def _fill_from_hub(self, out: bytearray, offset: int, runs: list[_Run]) -> None:
        if not runs:
            return
        spans = [self._span(r) for r in runs]
        body = memoryview(await self._hub.read_spans(spans))
        at = 0
        for start, length in spans:
            out[start - offset:start - offset + length] = body[at:at + length]
            at += length
        self.counts.fetched += at

    async def _fill_local(self, out: bytearray, offset: int, run: _Run) -> None:
        start, length = self._span(run)
        async with self._local_reads:
            try:
                if run.kind == "back":
                    data = await self._writer.read_back(start, length)
                    self.counts.read_back += length
                else:
                    data = await self._store.read(run.image_id, run.source_block * BLOCK_BYTES, length)
                    self.counts.local += length
            except EdgesyncError as exc:  # gone, or unreadable: the check sends it to the hub
                log.info("blocks at %d: local read failed (%s); fetching them instead", start, exc.message)
                return
        out[start - offset:start - offset + len(data)] = data[:length]

    def _span(self, run: _Run) -> tuple[int, int]:
        start = run.first * BLOCK_BYTES
        end = min((run.first + run.count) * BLOCK_BYTES, self._manifest.image_size)
        return start, end - start

    # --- checking ----------------------------------------------------------------

    async def _mismatches(self, out: bytes | bytearray, first: int, expected: list[bytes | None]) -> list[int]:
        """Block numbers whose bytes don't hash to the manifest's (holes must be zeros)."""
        view = memoryview(out)
        hashes = await asyncio.to_thread(hash_blocks, view) if len(out) > 65536 else hash_blocks(view)
        bad = []
        for i, want in enumerate(expected):
            got = hashes[i * HASH_BYTES:(i + 1) * HASH_BYTES]
            if got != (want if want is not None else zero_block_hash(self._manifest.block_length(first + i))):
                bad.append(first + i)
        return bad


def _overlaps(done: list[Extent], offset: int, length: int) -> bool:
    """Whether any of `done` (sorted, merged) meets [offset, offset+length)."""
    i = bisect.bisect_right(done, Extent(offset, length)) - 1
    return any(e.offset < offset + length and offset < e.end for e in done[max(i, 0):i + 2])


def _runs_of(blocks: list[int], kind: str) -> list[_Run]:
    runs: list[_Run] = []
    for block in blocks:
        if runs and runs[-1].first + runs[-1].count == block:
            runs[-1] = _Run(kind, runs[-1].first, runs[-1].count + 1)
        else:
            runs.append(_Run(kind, block, 1))
    return runs


def _covered(done: list[Extent], offset: int, length: int) -> bool:
    """Whether [offset, offset+length) lies inside one of `done` (sorted, merged)."""
    i = bisect.bisect_right(done, Extent(offset, length)) - 1
    candidates = done[max(i, 0):i + 2]
    return any(e.offset <= offset and offset + length <= e.end for e in candidates)
