"""The arrays of an ``.npz`` file mapped read-only from the file, not read into memory.

``np.savez`` stores each array as an uncompressed zip member holding an ``.npy`` file,
so the array's bytes lie in the ``.npz`` at a fixed offset: mapped there, every process
of the host that opens the same bundle shares the same page-cache pages (``serve
--processes N``, docs/scale-out.md "Memory per host") instead of each holding a copy.
``np.load(mmap_mode=...)`` maps only ``.npy`` files, hence this module.

A member that cannot be mapped (compressed, an object array, a Fortran-order or
zero-size array) is read with ``np.load`` as before, so any ``.npz`` opens.
"""

from __future__ import annotations

import struct
import zipfile
from pathlib import Path
from typing import BinaryIO

import numpy as np

__all__ = ["map_npz"]

_LOCAL_HEADER = struct.Struct("<4s2B4HL2L2H")  # a zip member's local file header
_LOCAL_MAGIC = b"PK\x03\x04"


def map_npz(path: Path) -> dict[str, np.ndarray]:
    """Every array of the ``.npz`` at ``path`` by name (without ``.npy``), read-only:
    mapped where the member allows it, else loaded. Raises ``ValueError`` naming the
    file when it is not a readable ``.npz``."""
    out: dict[str, np.ndarray] = {}
    try:
        with zipfile.ZipFile(path) as zf, open(path, "rb") as fh:
            members = [m for m in zf.infolist() if m.filename.endswith(".npy")]
            unmapped = []
            for member in members:
                mapped = _map_member(path, fh, member)
                if mapped is None:
                    unmapped.append(member.filename)
                else:
                    out[member.filename[: -len(".npy")]] = mapped
        if unmapped:
            with np.load(path, allow_pickle=False) as z:
                for name in unmapped:
                    array = z[name[: -len(".npy")]]
                    array.flags.writeable = False
                    out[name[: -len(".npy")]] = array
    except (OSError, zipfile.BadZipFile, ValueError, struct.error) as exc:
        raise ValueError(f"{path}: not a readable .npz ({exc})") from exc
    return out


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
    mapped = np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=shape)
    # a plain ndarray over the same mapping: np.memmap's Python-level __getitem__ and
    # __array_finalize__ would run on every gather of every request (plugins/cf/item2item.py)
    return mapped.view(np.ndarray)
