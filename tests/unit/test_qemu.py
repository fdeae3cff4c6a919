"""qemu-img wrappers against the real qemu-img, on small images made per test."""

from __future__ import annotations

import asyncio
import os
import subprocess
from pathlib import Path

import pytest

from edgesync.errors import EdgesyncError, InvalidImageData
from edgesync.importer import qemu
from edgesync.importer.qemu import ImageInfo, check_safe, convert_to_raw, inspect

MiB = 1 << 20
ALL_FORMATS = ("raw", "qcow2", "vmdk", "vdi", "vhd", "vhdx", "iso")


def qemu_img(*args: str | Path) -> None:
    subprocess.run(["qemu-img", *map(str, args)], check=True, capture_output=True)


def make_raw_with_data(path: Path, size: int) -> bytes:
    """A raw image with data at a few places and holes between; returns its bytes."""
    content = bytearray(size)
    for offset in (0, size // 3, size - 4096):
        chunk = os.urandom(4096)
        content[offset:offset + 4096] = chunk
    with path.open("wb") as fh:
        fh.truncate(size)
        for offset in (0, size // 3, size - 4096):
            fh.seek(offset)
            fh.write(content[offset:offset + 4096])
    return bytes(content)


def safe(info: ImageInfo, declared: str, *, allowed=ALL_FORMATS, max_size: int = 1 << 40) -> None:
    check_safe(info, declared_format=declared, allowed_formats=allowed, max_virtual_size=max_size)


def refused(info: ImageInfo, declared: str, **kw) -> str:
    with pytest.raises(InvalidImageData) as err:
        safe(info, declared, **kw)
    return err.value.message


# --- inspect + check_safe ------------------------------------------------------


async def test_raw_is_detected_with_its_size(tmp_path: Path) -> None:
    img = tmp_path / "disk.raw"
    make_raw_with_data(img, 3 * MiB)
    info = await inspect(img)
    assert (info.format, info.virtual_size) == ("raw", 3 * MiB)
    assert info.backing_file is None and info.data_file is None and info.extra_files == []
    safe(info, "raw")


async def test_qcow2_is_detected_with_its_virtual_size(tmp_path: Path) -> None:
    img = tmp_path / "disk.qcow2"
    qemu_img("create", "-f", "qcow2", img, "5M")
    info = await inspect(img)
    assert (info.format, info.virtual_size) == ("qcow2", 5 * MiB)
    assert info.actual_size is not None and info.actual_size < 5 * MiB
    assert info.raw["format"] == "qcow2"
    safe(info, "qcow2")


async def test_qcow2_with_backing_file_is_refused(tmp_path: Path) -> None:
    base = tmp_path / "base.qcow2"
    qemu_img("create", "-f", "qcow2", base, "1M")
    top = tmp_path / "top.qcow2"
    qemu_img("create", "-f", "qcow2", "-b", base, "-F", "qcow2", top)
    info = await inspect(top)
    assert info.backing_file is not None and info.backing_file.endswith("base.qcow2")
    message = refused(info, "qcow2")
    assert "backing file" in message and "base.qcow2" in message


async def test_qcow2_with_external_data_file_is_refused(tmp_path: Path) -> None:
    img = tmp_path / "meta.qcow2"
    qemu_img("create", "-f", "qcow2", "-o", f"data_file={tmp_path / 'secret.raw'}", img, "1M")
    info = await inspect(img)
    assert info.data_file is not None and info.data_file.endswith("secret.raw")
    assert "external file" in refused(info, "qcow2")


async def test_qcow2_whose_data_file_is_elsewhere_on_the_host_is_refused(tmp_path: Path) -> None:
    # The CVE-2024-32498 shape: the "image data" is some other file on the host.
    # (Never point `qemu-img create -o data_file=` at a real file: it truncates it.)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    img = tmp_path / "evil.qcow2"
    qemu_img("create", "-f", "qcow2", "-o", f"data_file={elsewhere / 'secret'},data_file_raw=on", img, "1M")
    info = await inspect(img)
    assert str(elsewhere / "secret") in refused(info, "qcow2")


async def test_vmdk_with_extent_in_another_file_is_refused(tmp_path: Path) -> None:
    img = tmp_path / "flat.vmdk"
    qemu_img("create", "-f", "vmdk", "-o", "subformat=monolithicFlat", img, "1M")
    info = await inspect(img)
    assert any(f.endswith("flat-flat.vmdk") for f in info.extra_files)
    assert "refers to other files" in refused(info, "vmdk")


async def test_single_file_vmdk_is_accepted(tmp_path: Path) -> None:
    img = tmp_path / "sparse.vmdk"
    qemu_img("create", "-f", "vmdk", img, "2M")
    info = await inspect(img)
    assert info.extra_files == []
    safe(info, "vmdk")


async def test_vmdk_multi_file_subformat_is_refused_even_without_listed_extents() -> None:
    info = ImageInfo("vmdk", MiB, None, None, None, [], {
        "format": "vmdk", "format-specific": {"type": "vmdk", "data": {"create-type": "vmfs", "extents": []}}})
    assert "VMDK subformat 'vmfs'" in refused(info, "vmdk")


async def test_raw_declared_but_qcow2_content_is_refused(tmp_path: Path) -> None:
    img = tmp_path / "looks-raw.img"
    qemu_img("create", "-f", "qcow2", img, "1M")
    info = await inspect(img)
    message = refused(info, "raw")
    assert "disk_format 'raw'" in message and "qcow2" in message


async def test_qcow2_declared_but_raw_content_is_refused(tmp_path: Path) -> None:
    img = tmp_path / "disk.img"
    make_raw_with_data(img, MiB)
    assert "disk_format 'qcow2' but its data is raw" in refused(await inspect(img), "qcow2")


async def test_iso_is_raw_to_qemu_and_accepted_when_declared_iso(tmp_path: Path) -> None:
    img = tmp_path / "cd.iso"
    content = bytearray(64 * 1024)
    content[0x8000:0x8006] = b"\x01CD001"  # ISO 9660 primary volume descriptor
    img.write_bytes(content)
    info = await inspect(img)
    assert info.format == "raw"
    safe(info, "iso", allowed=("iso",))
    assert "disk_format 'qcow2'" in refused(info, "qcow2")


async def test_vhd_is_named_vhd_not_vpc(tmp_path: Path) -> None:
    img = tmp_path / "disk.vhd"
    qemu_img("create", "-f", "vpc", img, "1M")
    info = await inspect(img)
    assert info.format == "vpc"
    safe(info, "vhd")


async def test_convert_takes_glance_format_names(tmp_path: Path) -> None:
    original = tmp_path / "orig.raw"
    content = make_raw_with_data(original, 2 * MiB)
    img = tmp_path / "disk.vhd"
    qemu_img("convert", "-f", "raw", "-O", "vpc", "-o", "force_size=on", original, img)
    out = tmp_path / "out.raw"
    await convert_to_raw(img, "vhd", str(out))
    assert out.read_bytes() == content


async def test_format_not_allowed_is_refused(tmp_path: Path) -> None:
    img = tmp_path / "disk.qcow2"
    qemu_img("create", "-f", "qcow2", img, "1M")
    message = refused(await inspect(img), "qcow2", allowed=("raw", "iso"))
    assert "qcow2 format" in message and "accepted disk formats: raw, iso" in message


async def test_too_large_is_refused(tmp_path: Path) -> None:
    img = tmp_path / "big.qcow2"
    qemu_img("create", "-f", "qcow2", img, "10G")  # virtual: the file stays tiny
    info = await inspect(img)
    assert "exceeds this hub's maximum of 1073741824 bytes" in refused(info, "qcow2", max_size=1 << 30)
    safe(info, "qcow2", max_size=10 << 30)


async def test_garbage_with_a_qcow2_magic_fails_inspection_cleanly(tmp_path: Path) -> None:
    img = tmp_path / "broken.qcow2"
    img.write_bytes(b"QFI\xfb\x00\x00\x00\x03" + bytes(504))
    with pytest.raises(InvalidImageData) as err:
        await inspect(img)
    assert "could not be read as a disk image" in err.value.message
    assert "cluster size" in err.value.message  # qemu-img's own reason, summarised


async def test_inspect_of_a_missing_file_is_our_error_not_the_users(tmp_path: Path) -> None:
    with pytest.raises(EdgesyncError) as err:
        await inspect(tmp_path / "nope")
    assert not isinstance(err.value, InvalidImageData)


async def test_inspect_runs_under_glance_limits(monkeypatch: pytest.MonkeyPatch) -> None:
    # Both ways of applying the limits: util-linux prlimit, and setrlimit in the child.
    probe = ["sh", "-c", "ulimit -v; ulimit -t"]
    expected = f"{qemu.INFO_ADDRESS_SPACE_BYTES // 1024}\n{qemu.INFO_CPU_SECONDS}"
    rc, out, _ = await qemu._run(probe, timeout_s=10, what="probe", limited=True)
    assert (rc, out.decode().strip()) == (0, expected)
    monkeypatch.setattr(qemu.shutil, "which", lambda name: None)
    rc, out, _ = await qemu._run(probe, timeout_s=10, what="probe", limited=True)
    assert (rc, out.decode().strip()) == (0, expected)


async def test_inspect_that_hangs_is_killed_at_the_timeout(tmp_path: Path, monkeypatch) -> None:
    procs = record_processes(monkeypatch)
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    # is_file() is False for a FIFO: go straight to the runner, as inspect would.
    with pytest.raises(EdgesyncError, match="timed out"):
        await qemu._run(["qemu-img", "info", str(fifo)], timeout_s=0.3, what="inspecting fifo", limited=True)
    assert procs and procs[0].returncode is not None  # killed and reaped


# --- convert_to_raw ------------------------------------------------------------


async def test_convert_qcow2_to_sparse_byte_identical_raw(tmp_path: Path) -> None:
    original = tmp_path / "orig.raw"
    content = make_raw_with_data(original, 8 * MiB)
    img = tmp_path / "disk.qcow2"
    qemu_img("convert", "-f", "raw", "-O", "qcow2", original, img)
    out = tmp_path / "out.raw"
    await convert_to_raw(img, "qcow2", str(out))
    assert out.read_bytes() == content
    # Three 4 KiB data blocks in 8 MiB: the holes stayed holes.
    assert out.stat().st_blocks * 512 <= 256 * 1024


async def test_convert_into_a_preallocated_target(tmp_path: Path) -> None:
    original = tmp_path / "orig.raw"
    content = make_raw_with_data(original, 4 * MiB)
    img = tmp_path / "disk.qcow2"
    qemu_img("convert", "-f", "raw", "-O", "qcow2", original, img)
    target = tmp_path / "target"
    with target.open("wb") as fh:
        fh.truncate(4 * MiB)  # stands in for a freshly created RBD image
    await convert_to_raw(img, "qcow2", str(target), preallocated=True)
    assert target.read_bytes() == content
    assert target.stat().st_blocks * 512 <= 256 * 1024


async def test_convert_of_garbage_fails_cleanly(tmp_path: Path) -> None:
    junk = tmp_path / "junk.qcow2"
    junk.write_bytes(os.urandom(64 * 1024))
    out = tmp_path / "out.raw"
    with pytest.raises(InvalidImageData) as err:
        await convert_to_raw(junk, "qcow2", str(out))
    assert "not in qcow2 format" in err.value.message
    assert not out.exists()


async def test_convert_never_probes_the_source_format(tmp_path: Path) -> None:
    # A qcow2 converted "as raw" is copied byte for byte, header and all: the
    # format given is the format used, whatever the bytes look like.
    img = tmp_path / "disk.qcow2"
    qemu_img("create", "-f", "qcow2", img, "4M")
    out = tmp_path / "out.raw"
    await convert_to_raw(img, "raw", str(out))
    source = img.read_bytes()
    converted = out.read_bytes()
    # qemu-img rounds a raw file's size up to whole 512-byte sectors.
    assert converted[:len(source)] == source
    assert converted[len(source):] == bytes(len(converted) - len(source))


async def test_cancelled_convert_kills_qemu_img_and_removes_output(tmp_path: Path, monkeypatch) -> None:
    procs = record_processes(monkeypatch)
    fifo = tmp_path / "never-written"
    os.mkfifo(fifo)  # qemu-img blocks opening it: a conversion that never ends
    out = tmp_path / "out.raw"
    out.write_bytes(b"partial")
    task = asyncio.create_task(convert_to_raw(fifo, "raw", str(out)))
    while not procs:
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.1)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert procs[0].returncode == -9
    assert not out.exists()


def record_processes(monkeypatch: pytest.MonkeyPatch) -> list[asyncio.subprocess.Process]:
    procs: list[asyncio.subprocess.Process] = []
    real = asyncio.create_subprocess_exec

    async def spawn(*args, **kwargs):
        proc = await real(*args, **kwargs)
        procs.append(proc)
        return proc

    monkeypatch.setattr(qemu.asyncio, "create_subprocess_exec", spawn)
    return procs
