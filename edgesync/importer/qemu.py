"""`qemu-img` as a tool for untrusted images: inspect, vet, convert to raw.

Three rules, all learnt from Glance's and Nova's security history:

* `qemu-img info` on hostile input runs under resource limits (address space
  1 GiB, CPU 30 s, as Glance does since CVE-2015-5162: a crafted header can
  make qemu-img allocate or loop without end) and with a wall-clock timeout.
* An image that refers to any other file (a backing file, a qcow2 external
  data file, VMDK extents in other files) is refused before anything reads
  its data: converting it would copy that other file, e.g. /etc/shadow, into
  the image (CVE-2024-32498 and its predecessors).
* The format qemu-img detects must be the declared `disk_format`, and
  `convert` is always told the source format: a "raw" image that is really a
  qcow2 would otherwise be interpreted as qcow2 (with its references) by
  whatever reads it next.

Call `inspect`, then `check_safe`, then `convert_to_raw` with the format
`check_safe` accepted; `convert_to_raw` trusts that the source was vetted.
"""

from __future__ import annotations

import asyncio
import json
import os
import resource
import shutil
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgesync.errors import EdgesyncError, InvalidImageData

QEMU_IMG = "qemu-img"

# Glance's limits for `qemu-img info` (glance/async_/flows/_internal_plugins).
INFO_ADDRESS_SPACE_BYTES = 1 << 30
INFO_CPU_SECONDS = 30
INFO_TIMEOUT_S = 60.0
CONVERT_TIMEOUT_S = 3600.0

# qemu-img's name for a format -> the Glance disk_format with that content.
_QEMU_TO_GLANCE = {"vpc": "vhd", "parallels": "ploop"}
_GLANCE_TO_QEMU = {glance: qemu for qemu, glance in _QEMU_TO_GLANCE.items()}
# Declared formats whose bytes qemu-img can only call "raw": an ISO 9660 image
# and the AMI kernel/ramdisk/machine images have no header qemu recognises.
_RAW_CONTENT_FORMATS = frozenset({"iso", "aki", "ari", "ami"})
# The VMDK subformats that keep everything in one file (Glance's default
# `vmdk_allowed_types`); the others (monolithicFlat, twoGbMaxExtent*, vmfs...)
# are a descriptor pointing at extent files elsewhere.
SINGLE_FILE_VMDK_TYPES = frozenset({"monolithicSparse", "streamOptimized"})

_STDERR_SUMMARY_CHARS = 400


@dataclass
class ImageInfo:
    """What `qemu-img info` says about an image, with the safety-relevant parts pulled out."""

    format: str
    virtual_size: int
    actual_size: int | None
    backing_file: str | None
    data_file: str | None
    extra_files: list[str] = field(default_factory=list)
    raw: dict[str, Any] = field(default_factory=dict)


# --- inspect -----------------------------------------------------------------


async def inspect(path: Path, *, timeout_s: float = INFO_TIMEOUT_S) -> ImageInfo:
    """Run `qemu-img info` on `path` under resource limits; InvalidImageData if it can't."""
    path = Path(path)
    if not await asyncio.to_thread(path.is_file):
        raise EdgesyncError(f"cannot inspect {path}: no such file")
    args = [QEMU_IMG, "info", "--output=json", _qemu_path(path)]
    rc, out, err = await _run(args, timeout_s=timeout_s, what=f"inspecting {path.name}", limited=True)
    if rc != 0:
        raise InvalidImageData(f"image data could not be read as a disk image: {_summarise(err, rc)}")
    try:
        raw = json.loads(out)
        return _image_info(raw, path)
    except (ValueError, KeyError, TypeError) as exc:
        raise InvalidImageData(f"qemu-img info gave an unusable answer for {path.name}: {exc}") from exc


def _image_info(raw: dict[str, Any], path: Path) -> ImageInfo:
    specific = raw.get("format-specific", {}).get("data", {})
    own_names = {str(path), _qemu_path(path), raw.get("filename")}
    return ImageInfo(
        format=raw["format"],
        virtual_size=int(raw["virtual-size"]),
        actual_size=raw.get("actual-size"),
        backing_file=raw.get("full-backing-filename") or raw.get("backing-filename"),
        data_file=specific.get("data-file"),
        extra_files=sorted({f for f in _filenames(specific) if f not in own_names}),
        raw=raw,
    )


def _filenames(node: Any) -> Iterator[str]:
    """Every "filename" anywhere in qemu-img's format-specific data (VMDK extents, ...)."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "filename" and isinstance(value, str):
                yield value
            else:
                yield from _filenames(value)
    elif isinstance(node, list):
        for item in node:
            yield from _filenames(item)


# --- check_safe --------------------------------------------------------------


def check_safe(
    info: ImageInfo,
    *,
    declared_format: str,
    allowed_formats: Sequence[str],
    max_virtual_size: int,
) -> None:
    """Refuse (InvalidImageData) an image that is unsafe or not what was declared."""
    _check_self_contained(info)
    _check_sound(info)
    content = content_format(info.format, declared_format)
    if content not in allowed_formats:
        raise InvalidImageData(
            f"image data is in {content} format, which this hub does not accept; "
            f"accepted disk formats: {', '.join(allowed_formats)}"
        )
    if content != declared_format:
        raise InvalidImageData(
            f"image was declared with disk_format '{declared_format}' but its data is "
            f"{content}; create the image with disk_format '{content}' or upload "
            f"{declared_format} data"
        )
    if info.virtual_size > max_virtual_size:
        raise InvalidImageData(
            f"image virtual size {info.virtual_size} bytes exceeds this hub's maximum "
            f"of {max_virtual_size} bytes; upload a smaller disk"
        )


def content_format(detected: str, declared: str) -> str:
    """The Glance disk_format name for what qemu-img detected, given what was declared."""
    glance_name = _QEMU_TO_GLANCE.get(detected, detected)
    if glance_name == "raw" and declared in _RAW_CONTENT_FORMATS:
        return declared
    return glance_name


def qemu_format(disk_format: str) -> str:
    """qemu-img's name for a Glance disk_format ("vhd" -> "vpc", "iso" -> "raw")."""
    if disk_format in _RAW_CONTENT_FORMATS:
        return "raw"
    return _GLANCE_TO_QEMU.get(disk_format, disk_format)


def _check_self_contained(info: ImageInfo) -> None:
    flatten = "make it self-contained first (e.g. `qemu-img convert -O qcow2 in out`)"
    if info.backing_file:
        raise InvalidImageData(
            f"image has a backing file ({info.backing_file!r}); only standalone images "
            f"are accepted: {flatten}"
        )
    if info.data_file:
        raise InvalidImageData(
            f"qcow2 image keeps its data in an external file ({info.data_file!r}); "
            f"only standalone images are accepted: {flatten}"
        )
    if info.extra_files:
        raise InvalidImageData(
            f"image refers to other files ({', '.join(info.extra_files)}); only "
            f"single-file images are accepted: {flatten}"
        )
    vmdk_type = _specific(info).get("create-type")
    if info.format == "vmdk" and vmdk_type not in SINGLE_FILE_VMDK_TYPES:
        raise InvalidImageData(
            f"VMDK subformat {vmdk_type!r} is not accepted; use one of "
            f"{', '.join(sorted(SINGLE_FILE_VMDK_TYPES))}"
        )


def _check_sound(info: ImageInfo) -> None:
    if info.raw.get("encrypted"):
        raise InvalidImageData("image is encrypted; upload it decrypted")
    if _specific(info).get("corrupt"):
        raise InvalidImageData("qcow2 image is marked corrupt; repair it with `qemu-img check -r all`")


def _specific(info: ImageInfo) -> dict[str, Any]:
    specific: dict[str, Any] = info.raw.get("format-specific", {}).get("data", {})
    return specific


# --- convert -----------------------------------------------------------------


async def convert_to_raw(
    src: Path,
    src_format: str,
    dest: str,
    *,
    preallocated: bool = False,
    timeout_s: float = CONVERT_TIMEOUT_S,
) -> None:
    """Convert the vetted image `src` (in `src_format`) to raw at `dest`.

    `src_format` is a Glance disk_format ("vhd") or a qemu-img format ("vpc").

    `dest` is a file path, written sparse (zero runs of 4 KiB or more are left
    as holes); or, with `preallocated`, an existing target such as an `rbd:`
    URI, zero-filled and at least the image's size, written in place
    (`-n --target-is-zero`: no create, and zeros are not written at all).
    A failed or cancelled conversion into a file removes the file.
    """
    src = Path(src)
    args = [QEMU_IMG, "convert", "-f", qemu_format(src_format), "-O", "raw"]
    if preallocated:
        args += ["-n", "--target-is-zero"]
    args += [_qemu_path(src), dest]
    what = f"converting {src.name} from {src_format} to raw"
    try:
        rc, _out, err = await _run(args, timeout_s=timeout_s, what=what, limited=False)
        if rc != 0:
            raise _convert_error(what, src, err, rc)
    except BaseException:
        if not preallocated:
            await asyncio.to_thread(_remove_quietly, Path(dest))
        raise


def _convert_error(what: str, src: Path, stderr: bytes, rc: int) -> EdgesyncError:
    summary = _summarise(stderr, rc)
    # Reading or opening the source failed: the image's bytes are at fault.
    # Anything else (the target is full, RBD is down) is ours.
    source_at_fault = f"Could not open '{_qemu_path(src)}'" in summary or "error while reading" in summary
    if source_at_fault:
        return InvalidImageData(f"{what} failed, the image data is unusable: {summary}")
    return EdgesyncError(f"{what} failed: {summary}")


def _remove_quietly(path: Path) -> None:
    try:
        path.unlink(missing_ok=True)
    except OSError:
        pass


# --- running qemu-img --------------------------------------------------------


def _qemu_path(path: Path) -> str:
    # qemu-img reads "proto:rest" as a protocol when the colon precedes any
    # slash; an absolute path starts with a slash, so it is always a plain file.
    return os.path.abspath(path)


async def _run(args: list[str], *, timeout_s: float, what: str, limited: bool) -> tuple[int, bytes, bytes]:
    """Run a command; (returncode, stdout, stderr). Timeout or cancellation kills it."""
    if limited:
        args, preexec = _with_limits(args)
    else:
        preexec = None
    try:
        proc = await asyncio.create_subprocess_exec(
            *args,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env={**os.environ, "LC_ALL": "C"},
            preexec_fn=preexec,
        )
    except OSError as exc:
        raise EdgesyncError(f"{what}: cannot run {args[0]}: {exc.strerror or exc}") from exc
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout_s)
    except TimeoutError as exc:
        await _kill(proc)
        raise EdgesyncError(f"{what} timed out after {timeout_s:g} s") from exc
    except BaseException:
        await _kill(proc)
        raise
    assert proc.returncode is not None
    return proc.returncode, out, err


async def _kill(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is None:
        try:
            proc.kill()
        except ProcessLookupError:
            pass
    # Reap it, so no zombie and no "event loop is closed" warning later. Shielded:
    # a second cancellation must not leave the child unreaped.
    await asyncio.shield(proc.wait())


def _with_limits(args: list[str]) -> tuple[list[str], Any]:
    """Wrap `args` so the child runs under Glance's qemu-img limits."""
    prlimit = shutil.which("prlimit")
    if prlimit:
        return [prlimit, f"--as={INFO_ADDRESS_SPACE_BYTES}", f"--cpu={INFO_CPU_SECONDS}", *args], None
    # Without util-linux: set the limits in the child between fork and exec.
    return args, _set_limits


def _set_limits() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (INFO_ADDRESS_SPACE_BYTES, INFO_ADDRESS_SPACE_BYTES))
    resource.setrlimit(resource.RLIMIT_CPU, (INFO_CPU_SECONDS, INFO_CPU_SECONDS))


def _summarise(stderr: bytes, rc: int) -> str:
    text = stderr.decode("utf-8", "replace").strip()
    lines = [line.removeprefix("qemu-img: ").strip() for line in text.splitlines() if line.strip()]
    summary = "; ".join(lines) or f"qemu-img exited with status {rc} and no message"
    if rc < 0:
        summary += f" (killed by signal {-rc}, e.g. a resource limit)"
    if len(summary) > _STDERR_SUMMARY_CHARS:
        summary = summary[:_STDERR_SUMMARY_CHARS] + "…"
    return summary
