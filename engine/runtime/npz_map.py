"""The arrays of an ``.npz`` file mapped read-only from the file, not read into memory.

``np.savez`` stores each array as an uncompressed zip member holding an ``.npy`` file,
so the array's bytes lie in the ``.npz`` at a fixed offset: mapped there, every process
of the host that opens the same bundle shares the same page-cache pages (``serve
--processes N``, docs/scale-out.md "Memory per host") instead of each holding a copy.
``np.load(mmap_mode=...)`` maps only ``.npy`` files, hence this module.

A member that cannot be mapped (compressed, an object array, a Fortran-order or
zero-size array) is read with ``np.load`` as before, so any ``.npz`` opens.

Alignment: ``np.savez`` puts a member's data wherever its zip header ends, so a mapped
array usually starts at an address that is not a multiple of its item size. numpy
reads such an array, but copies all of it for every operation that needs aligned input
(``np.searchsorted`` of a sorted id column: 45 MB per call at a million items, on every
request). :func:`save_npz` writes the same format with every member's data at a
64-byte boundary (padding in the zip header's extra field, as Android's zipalign does);
``np.load`` reads it as before. A member of an older file that would map unaligned is
read into memory once instead.
"""

from __future__ import annotations

import struct
import zipfile
from pathlib import Path
from typing import IO, BinaryIO

import numpy as np
from numpy.typing import ArrayLike

from recall_engine.observability.logs import get_logger

log = get_logger(__name__)

__all__ = ["map_npz", "save_npz"]

_LOCAL_HEADER = struct.Struct("<4s2B4HL2L2H")  # a zip member's local file header
_LOCAL_MAGIC = b"PK\x03\x04"
_ALIGN = 64  # .npy headers are padded to a multiple of this, so data starts aligned too
_PADDING_ID = 0xD935  # the extra-field id Android's zipalign pads with; readers skip it
_ZIP64_EXTRA = 20  # what zipfile appends to a local header it writes as zip64


def save_npz(fh: IO[bytes], **arrays: ArrayLike) -> None:
    """``np.savez(fh, **arrays)`` with each member's array data at a multiple of 64
    bytes from the start of ``fh`` (a new, seekable binary file), so that
    :func:`map_npz` maps it aligned."""
    with zipfile.ZipFile(fh, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
        for name, value in arrays.items():
            array = np.asanyarray(value)
            info = zipfile.ZipInfo(name + ".npy", date_time=(1980, 1, 1, 0, 0, 0))
            zip64 = array.nbytes + 4096 > zipfile.ZIP64_LIMIT
            # the member's .npy starts after its local header: the fixed part, the name,
            # this padding (4 bytes of id and size, then the pad) and any zip64 field
            start = fh.tell() + _LOCAL_HEADER.size + len(info.filename.encode())
            pad = -(start + 4 + (_ZIP64_EXTRA if zip64 else 0)) % _ALIGN
            info.extra = struct.pack("<HH", _PADDING_ID, pad) + bytes(pad)
            with zf.open(info, "w", force_zip64=zip64) as member:
                np.lib.format.write_array(member, array, allow_pickle=False)


def map_npz(path: Path) -> dict[str, np.ndarray]:
    """Every array of the ``.npz`` at ``path`` by name (without ``.npy``), read-only:
    mapped where the member allows it, else loaded. Raises ``ValueError`` naming the
    file when it is not a readable ``.npz``."""
    out: dict[str, np.ndarray] = {}
    try:
        with zipfile.ZipFile(path) as zf, open(path, "rb") as fh:
            members = [m for m in zf.infolist() if m.filename.endswith(".npy")]
            unmapped, misaligned = [], []
            for member in members:
                mapped = _map_member(path, fh, member)
                if mapped is _MISALIGNED:
                    misaligned.append(member.filename[: -len(".npy")])
                if mapped is None or mapped is _MISALIGNED:
                    unmapped.append(member.filename)
                else:
                    out[member.filename[: -len(".npy")]] = mapped
        if unmapped:
            if misaligned:
                log.info(
                    "npz_read_into_memory",
                    file=str(path),
                    arrays=misaligned,
                    why="written unaligned (np.savez): a rebuild maps them, shared",
                )
            with np.load(path, allow_pickle=False) as z:
                for name in unmapped:
                    array = z[name[: -len(".npy")]]
                    array.flags.writeable = False
                    out[name[: -len(".npy")]] = array
    except (OSError, zipfile.BadZipFile, ValueError, struct.error) as exc:
        raise ValueError(f"{path}: not a readable .npz ({exc})") from exc
    return out


_MISALIGNED = np.zeros(0)  # _map_member: a member that would map unaligned


def _map_member(path: Path, fh: BinaryIO, member: zipfile.ZipInfo) -> np.ndarray | None:
    if member.compress_type != zipfile.ZIP_STORED or member.flag_bits & 0x1:
        return None
    fh.seek(member.header_offset)
    fields = _LOCAL_HEADER.unpack(fh.read(_LOCAL_HEADER.size))
    if fields[0] != _LOCAL_MAGIC:
        raise ValueError(f"member {member.filename}: bad local header")
    name_len, extra_len = fields[-2], fields[-1]
    start = member.header_offset + _LOCAL_HEADER.size + name_len + extra_len
    fh.seek(start)
    version = np.lib.format.read_magic(fh)
    if version == (1, 0):
        shape, fortran, dtype = np.lib.format.read_array_header_1_0(fh)
    elif version == (2, 0):
        shape, fortran, dtype = np.lib.format.read_array_header_2_0(fh)
    else:
        return None
    count = int(np.prod(shape)) if shape else 1
    if fortran or dtype.hasobject or count == 0:
        return None
    offset = fh.tell()
    if offset - start + count * dtype.itemsize != member.file_size:
        raise ValueError(f"member {member.filename}: its size does not match its header")
    if offset % dtype.alignment:  # written by np.savez: read it once instead (module doc)
        return _MISALIGNED
    mapped = np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=shape)
    # a plain ndarray over the same mapping: np.memmap's Python-level __getitem__ and
    # __array_finalize__ would run on every gather of every request (plugins/cf/item2item.py)
    return mapped.view(np.ndarray)
