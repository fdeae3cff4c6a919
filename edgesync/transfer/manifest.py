"""An image's chunk manifest: the BLAKE3 of every 4 KiB block that holds data.

Made once, at import, in the same pass that computes md5 and sha512
(`ManifestBuilder`, fed by `ImageDigest`), stored with the image and named by
its own digest (`Manifest.digest`, BLAKE3 of its encoding), which the copy
command carries. An agent checks every block it writes against it, so it
never hashes the whole logical image again, and it finds blocks its site
already holds by their hash (dedup).

Why 4 KiB blocks: a filesystem rebuilt from a slightly changed tree keeps
file contents aligned to its 4 KiB blocks but shifts them. Measured on an
ext4 update (../shared/docs/wan-lab-notes.md), 91.5 % of the new image's
4 KiB blocks were among the old one's; at 64 KiB almost none were. So the
manifest *matches* at 4 KiB while transfers still *move* ranges of up to
4 MiB (pipeline.CHUNK_BYTES). 16 bytes (128 bits) of BLAKE3 per block keep
accidental collisions out of reach (2^64 blocks for an even chance) at
1/256 of the image's data bytes.

Blocks are aligned to `BLOCK_BYTES`; a block is in the manifest when any of
its bytes lies in a data extent (its hole bytes hashed as zeros); the last
block of an image whose size is no multiple of 4 KiB is hashed short.
Holes (blocks with no data) are absent.

This module alone imports `blake3`.
"""

from __future__ import annotations

import bisect
import itertools
import json
from dataclasses import dataclass, field
from functools import cached_property

import blake3

from edgesync.errors import InvalidManifest
from edgesync.stores.base import Extent

BLOCK_BYTES = 4096
HASH_BYTES = 16
_MAGIC = b"edgesync-manifest-1\n"
_ALGORITHM = "blake3-128"
# A manifest is at most 1/256 of its image's data (plus its runs): refuse
# what no image of a sane size can have.
MAX_MANIFEST_BYTES = 1 << 30

__all__ = ["BLOCK_BYTES", "HASH_BYTES", "InvalidManifest", "Manifest", "ManifestBuilder", "block_hash",
           "hash_blocks", "zero_block_hash"]


def block_hash(data: bytes | memoryview) -> bytes:
    return blake3.blake3(data).digest(length=HASH_BYTES)


def hash_blocks(view: memoryview) -> bytes:
    """The hashes of consecutive `BLOCK_BYTES` blocks of `view` (the last may be short)."""
    return b"".join(block_hash(view[i:i + BLOCK_BYTES]) for i in range(0, len(view), BLOCK_BYTES))


def zero_block_hash(length: int = BLOCK_BYTES) -> bytes:
    return _ZERO_HASHES.get(length) or block_hash(bytes(length))


_ZERO_HASHES = {BLOCK_BYTES: block_hash(bytes(BLOCK_BYTES))}


@dataclass(frozen=True)
class Manifest:
    """`runs`: (first block, block count), sorted and disjoint; `hashes`:
    `HASH_BYTES` per block, in the order of the runs."""

    image_size: int
    os_hash_value: str
    runs: tuple[tuple[int, int], ...]
    hashes: bytes = field(repr=False)

    # --- encoding --------------------------------------------------------------

    def encode(self) -> bytes:
        header = {"image_size": self.image_size, "os_hash_value": self.os_hash_value,
                  "block_bytes": BLOCK_BYTES, "hash": _ALGORITHM, "runs": [list(r) for r in self.runs]}
        return _MAGIC + json.dumps(header, separators=(",", ":")).encode() + b"\n" + self.hashes

    @cached_property
    def digest(self) -> str:
        """What binds this manifest to its image: BLAKE3 (hex) of its encoding."""
        return blake3.blake3(self.encode()).hexdigest()

    @classmethod
    def decode(cls, body: bytes) -> Manifest:
        if not body.startswith(_MAGIC):
            raise InvalidManifest("not an edgesync manifest (bad magic)")
        header_end = body.find(b"\n", len(_MAGIC))
        try:
            header = json.loads(body[len(_MAGIC):header_end])
            runs = tuple((int(s), int(c)) for s, c in header["runs"])
            manifest = cls(int(header["image_size"]), str(header["os_hash_value"]), runs, body[header_end + 1:])
            known = header["block_bytes"] == BLOCK_BYTES and header["hash"] == _ALGORITHM
        except (ValueError, KeyError, TypeError) as exc:
            raise InvalidManifest(f"the manifest's header is not of the expected shape: {exc}") from exc
        if header_end < 0 or not known:
            raise InvalidManifest(f"a manifest of another kind ({body[len(_MAGIC):len(_MAGIC) + 80]!r})")
        manifest.check_shape()
        return manifest

    def check_shape(self) -> None:
        blocks_in_image = -(-self.image_size // BLOCK_BYTES)
        previous_end = 0
        for start, count in self.runs:
            if start < previous_end or count <= 0 or start + count > blocks_in_image:
                raise InvalidManifest(f"the manifest's block runs are inconsistent (image of {self.image_size} bytes)")
            previous_end = start + count
        if len(self.hashes) != HASH_BYTES * self.block_count:
            raise InvalidManifest(f"the manifest has {len(self.hashes)} bytes of hashes for {self.block_count} blocks")

    def belongs_to(self, *, digest: str, size: int, os_hash_value: str) -> None:
        """Raise InvalidManifest unless this is the manifest named `digest`, of that image."""
        if self.digest != digest:
            raise InvalidManifest(f"the manifest's digest is {self.digest[:16]}…, the command names {digest[:16]}…")
        if self.image_size != size or self.os_hash_value != os_hash_value:
            raise InvalidManifest("the manifest is of another image (size or os_hash_value differ)")

    # --- queries ---------------------------------------------------------------

    @property
    def block_count(self) -> int:
        return sum(count for _, count in self.runs)

    @cached_property
    def _run_starts(self) -> list[int]:
        return [start for start, _ in self.runs]

    @cached_property
    def _hash_index(self) -> list[int]:
        """Index (in blocks) into `hashes` of each run's first block."""
        return [0, *itertools.accumulate(count for _, count in self.runs)][:-1]

    def hash_of(self, block: int) -> bytes | None:
        """The hash of block number `block`, None if the block is a hole."""
        i = bisect.bisect_right(self._run_starts, block) - 1
        if i < 0:
            return None
        start, count = self.runs[i]
        if block >= start + count:
            return None
        at = (self._hash_index[i] + block - start) * HASH_BYTES
        return self.hashes[at:at + HASH_BYTES]

    def hashes_of(self, first: int, end: int) -> list[bytes | None]:
        """`hash_of` of blocks first..end-1, in one pass over the runs."""
        out: list[bytes | None] = [None] * (end - first)
        i = max(bisect.bisect_right(self._run_starts, first) - 1, 0)
        for (start, count), index in zip(self.runs[i:], self._hash_index[i:], strict=True):
            if start >= end:
                break
            lo, hi = max(start, first), min(start + count, end)
            for block in range(lo, hi):
                at = (index + block - start) * HASH_BYTES
                out[block - first] = self.hashes[at:at + HASH_BYTES]
        return out

    def block_length(self, block: int) -> int:
        return min(BLOCK_BYTES, self.image_size - block * BLOCK_BYTES)

    def extents(self) -> list[Extent]:
        """The byte ranges the manifest covers (what a copy must move), adjacent runs merged."""
        extents: list[Extent] = []
        for start, count in self.runs:
            offset = start * BLOCK_BYTES
            end = min((start + count) * BLOCK_BYTES, self.image_size)
            if extents and extents[-1].end == offset:
                offset = extents.pop().offset
            extents.append(Extent(offset, end - offset))
        return extents

    def blocks(self) -> list[tuple[int, bytes]]:
        """(block number, hash) of every block, in order."""
        numbers = itertools.chain.from_iterable(range(s, s + c) for s, c in self.runs)
        return [(n, self.hashes[i * HASH_BYTES:(i + 1) * HASH_BYTES]) for i, n in enumerate(numbers)]


class ManifestBuilder:
    """Builds a manifest from an image's bytes fed in order: `data()` for
    bytes that were read, `hole()` for a run of zeros that wasn't."""

    def __init__(self) -> None:
        self.position = 0
        self._runs: list[list[int]] = []
        self._hashes = bytearray()
        self._partial = bytearray()  # the bytes of the current block seen so far (data, or zeros)
        self._partial_has_data = False

    def data(self, view: memoryview) -> None:
        if self.position % BLOCK_BYTES or self._partial:
            view = self._fill_partial(view, data=True)
        whole = len(view) - len(view) % BLOCK_BYTES
        if whole:
            first = self.position // BLOCK_BYTES
            self._add(first, whole // BLOCK_BYTES, hash_blocks(view[:whole]))
            self.position += whole
        if whole < len(view):
            self._partial += view[whole:]
            self._partial_has_data = True
            self.position += len(view) - whole

    def hole(self, count: int) -> None:
        if self._partial:
            take = min(count, BLOCK_BYTES - len(self._partial))
            self._fill_partial(memoryview(bytes(take)), data=False)
            count -= take
            if self._partial:
                return  # the hole ended inside the block
        # A hole ending mid-block: `data()` starts that block with zeros.
        self.position += count

    def finish(self, *, image_size: int, os_hash_value: str) -> Manifest:
        if self.position != image_size:
            raise ValueError(f"fed {self.position} bytes of an image of {image_size}")
        if self._partial and self._partial_has_data:
            self._add(self.position // BLOCK_BYTES, 1, block_hash(bytes(self._partial)))
        return Manifest(image_size, os_hash_value, tuple((s, c) for s, c in self._runs), bytes(self._hashes))

    def _fill_partial(self, view: memoryview, *, data: bool) -> memoryview:
        if not self._partial:
            self._partial = bytearray(self.position % BLOCK_BYTES)
        take = min(len(view), BLOCK_BYTES - len(self._partial))
        self._partial += view[:take]
        self._partial_has_data |= data and take > 0
        self.position += take
        if len(self._partial) == BLOCK_BYTES:
            if self._partial_has_data:
                self._add(self.position // BLOCK_BYTES - 1, 1, block_hash(bytes(self._partial)))
            self._partial = bytearray()
            self._partial_has_data = False
        return view[take:]

    def _add(self, first: int, count: int, hashes: bytes) -> None:
        if self._runs and self._runs[-1][0] + self._runs[-1][1] == first:
            self._runs[-1][1] += count
        else:
            self._runs.append([first, count])
        self._hashes += hashes
