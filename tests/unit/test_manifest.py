"""The chunk manifest: built in the import's hashing pass, encoded, bound to its image."""

from __future__ import annotations

import os
import random

import blake3
import pytest

from edgesync.importer.hashing import ImageDigest
from edgesync.transfer.manifest import BLOCK_BYTES, InvalidManifest, Manifest, ManifestBuilder


def _image(size: int, extents: list[tuple[int, int]]) -> bytearray:
    image = bytearray(size)
    for offset, length in extents:
        image[offset:offset + length] = os.urandom(length)
    return image


def _expected_blocks(image: bytearray, extents: list[tuple[int, int]]) -> list[tuple[int, bytes]]:
    """What the manifest must say, computed the slow, obvious way."""
    touched = sorted({b for off, ln in extents for b in range(off // BLOCK_BYTES, (off + ln - 1) // BLOCK_BYTES + 1)})
    return [(b, blake3.blake3(bytes(image[b * BLOCK_BYTES:(b + 1) * BLOCK_BYTES])).digest(length=16)) for b in touched]


async def _digest(image: bytearray, extents: list[tuple[int, int]], piece: int) -> ImageDigest:
    """Feed `image` as a copy does: data extents in pieces, holes as zeros."""
    digest = ImageDigest(with_manifest=True)
    for offset, length in extents:
        await digest.update_zeros(offset - digest.size)
        for at in range(offset, offset + length, piece):
            await digest.update(image[at:min(at + piece, offset + length)])
    await digest.update_zeros(len(image) - digest.size)
    return digest


@pytest.mark.parametrize("extents, size, piece", [
    ([(0, 1 << 20)], 4 << 20, 1 << 20),  # aligned, big pieces (threads)
    ([(100, 5000), (20_000, 3), (20_004, 9000)], 64 * 1024 + 17, 1000),  # unaligned, data and holes mid-block
    ([(8192, 4096 * 300 + 5)], 4096 * 400, 256 * 1024),  # ends mid-block, next block a hole
    ([(0, 10_001)], 10_001, 4096),  # the last block is short
    ([], 1 << 20, 4096),  # nothing but a hole
])
async def test_manifest_lists_every_block_holding_data_and_nothing_else(extents, size, piece):
    image = _image(size, extents)
    digest = await _digest(image, extents, piece)
    manifest = digest.manifest()
    assert manifest.blocks() == _expected_blocks(image, extents)
    assert manifest.image_size == size and manifest.os_hash_value == digest.os_hash_value
    covered = {b for e in manifest.extents() for b in range(e.offset // BLOCK_BYTES, -(-e.end // BLOCK_BYTES))}
    assert covered == {b for b, _ in manifest.blocks()}
    assert all(e.end <= size for e in manifest.extents())


async def test_random_layouts_agree_with_the_slow_computation():
    rng = random.Random(7)
    for _ in range(20):
        size = rng.randrange(1, 200_000)
        extents, pos = [], 0
        while pos < size:
            pos += rng.randrange(0, 9000)
            length = min(rng.randrange(1, 12_000), size - pos)
            if length > 0:
                extents.append((pos, length))
            pos += length + 1
        image = _image(size, extents)
        digest = await _digest(image, extents, rng.choice([1, 999, 4096, 70_000]))
        assert digest.manifest().blocks() == _expected_blocks(image, extents)


async def test_encoding_round_trips_and_the_digest_names_the_encoding():
    image = _image(1 << 20, [(4096, 50_000)])
    manifest = (await _digest(image, [(4096, 50_000)], 8192)).manifest()
    again = Manifest.decode(manifest.encode())
    assert again == manifest and again.digest == manifest.digest
    assert manifest.digest == blake3.blake3(manifest.encode()).hexdigest()
    manifest.belongs_to(digest=manifest.digest, size=1 << 20, os_hash_value=manifest.os_hash_value)
    with pytest.raises(InvalidManifest):
        manifest.belongs_to(digest="0" * 64, size=1 << 20, os_hash_value=manifest.os_hash_value)
    with pytest.raises(InvalidManifest):
        manifest.belongs_to(digest=manifest.digest, size=1 << 20, os_hash_value="f" * 128)


def test_hash_of_answers_data_blocks_and_none_for_holes():
    builder = ManifestBuilder()
    builder.hole(BLOCK_BYTES * 3)
    builder.data(memoryview(b"x" * BLOCK_BYTES * 2))
    builder.hole(BLOCK_BYTES)
    manifest = builder.finish(image_size=BLOCK_BYTES * 6, os_hash_value="h")
    assert [manifest.hash_of(b) is not None for b in range(6)] == [False, False, False, True, True, False]
    assert manifest.hash_of(3) == blake3.blake3(b"x" * BLOCK_BYTES).digest(length=16)


def test_hashes_of_a_block_range_agrees_with_hash_of_each_block():
    rng = random.Random(7)
    builder = ManifestBuilder()
    for _ in range(40):  # runs of data and holes of random lengths, distinct data blocks
        if rng.random() < 0.5:
            builder.hole(BLOCK_BYTES * rng.randint(1, 9))
        else:
            builder.data(memoryview(rng.randbytes(BLOCK_BYTES * rng.randint(1, 9))))
    size = builder.position
    manifest = builder.finish(image_size=size, os_hash_value="h")
    blocks = size // BLOCK_BYTES
    for first, end in [(0, blocks), *((a, a + rng.randint(0, 50)) for a in rng.sample(range(blocks), 30))]:
        end = min(end, blocks)
        assert manifest.hashes_of(first, end) == [manifest.hash_of(b) for b in range(first, end)]


@pytest.mark.parametrize("damage", [
    lambda body: b"not a manifest" + body,
    lambda body: body[:-1],  # a hash cut short
    lambda body: body.replace(b'"runs":[[1,2]]', b'"runs":[[1,2],[2,1]]'),  # overlapping runs
    lambda body: body.replace(b'"block_bytes":4096', b'"block_bytes":65536'),
])
def test_a_damaged_manifest_is_refused(damage):
    builder = ManifestBuilder()
    builder.hole(BLOCK_BYTES)
    builder.data(memoryview(os.urandom(BLOCK_BYTES * 2)))
    builder.hole(BLOCK_BYTES)
    body = builder.finish(image_size=BLOCK_BYTES * 4, os_hash_value="h").encode()
    assert b'"runs":[[1,2]]' in body
    with pytest.raises(InvalidManifest):
        Manifest.decode(damage(body))


def test_a_digest_without_manifest_says_so():
    with pytest.raises(RuntimeError, match="without a manifest"):
        ImageDigest().manifest()
