"""Reading idx files, the format of MNIST and Fashion-MNIST: plain or gzip-compressed, checked, cached."""

from __future__ import annotations

import errno
import functools
import gzip
import os
import zlib
from pathlib import Path

import torch

__all__ = ["IdxFormatError", "read_idx", "read_idx_cached", "readable", "unreadable"]


class IdxFormatError(ValueError):
    """An idx file is corrupt, truncated or not an idx file."""


# idx type code -> (torch dtype, bytes per element). Multi-byte types are big-endian on disk.
_IDX_TYPES = {
    0x08: (torch.uint8, 1),
    0x09: (torch.int8, 1),
    0x0B: (torch.int16, 2),
    0x0C: (torch.int32, 4),
    0x0D: (torch.float32, 4),
    0x0E: (torch.float64, 8),
}


def read_idx(path: str | os.PathLike) -> torch.Tensor:
    """Read an idx file (the MNIST format), plain or gzip-compressed, into a CPU tensor.

    Returns a new tensor of the stored dtype and shape, e.g. ``uint8 [60000, 28, 28]`` for an
    images file and ``uint8 [60000]`` for a labels file. Gzip is detected from the file's first
    bytes, not its name. Parsed files are cached in-process (keyed on path, size and modification
    time), so reading the same file again is a copy, not a parse.

    Raises :class:`IdxFormatError` when the file is corrupt or truncated (bad magic number, unknown
    type code, dimensions that do not match the amount of data, broken gzip stream), and
    ``FileNotFoundError`` when it does not exist.
    """
    return read_idx_cached(path).clone()


def read_idx_cached(path: str | os.PathLike) -> torch.Tensor:
    """``read_idx`` without the copy: the cached tensor itself (callers must not change it in place)."""
    return _read_idx_cached(*_cache_key(path))


def _cache_key(path: str | os.PathLike) -> tuple[str, int, int]:
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"read_idx takes a file path (str or pathlib.Path), got {type(path).__name__}")
    resolved = Path(path).expanduser().resolve()
    info = resolved.stat()  # FileNotFoundError for a missing file, as it should be
    if resolved.is_dir():
        idx = sorted(p.name for p in resolved.glob("*-idx?-ubyte*"))[:4]
        inside = f" It holds {', '.join(idx)}." if idx else ""
        raise IsADirectoryError(
            f"{resolved} is a folder, not an idx file.{inside} Pass one file, e.g. "
            f"read_idx('{resolved / 'train-images-idx3-ubyte'}'), or load the whole set with "
            f"load_dataset(root='{resolved}')."
        )
    if not readable(resolved):
        raise unreadable(resolved)
    return str(resolved), info.st_size, info.st_mtime_ns


def readable(path: Path, folder: bool = False) -> bool:
    """Whether this process may read ``path`` (and, for a folder, search it)."""
    return os.access(path, os.R_OK | (os.X_OK if folder else 0))


def unreadable(path: Path, folder: bool = False) -> PermissionError:
    """A PermissionError that names the path and how to get access."""
    what = "look inside the folder" if folder else "read"
    mode = "a+rx" if folder else "a+r"
    error = PermissionError(
        f"Cannot {what} {path}: permission denied. Give yourself access (chmod {mode} '{path}', or ask "
        "the owner), or copy the idx files to a folder you can read and pass load_dataset(..., root=that_folder)."
    )
    error.errno = errno.EACCES  # no .filename: it would turn the text into "[Errno 13] ...: 'path'"
    return error


@functools.lru_cache(maxsize=16)
def _read_idx_cached(path: str, size: int, mtime_ns: int) -> torch.Tensor:
    """Parse ``path``; ``size`` and ``mtime_ns`` are only part of the cache key."""
    try:
        raw = Path(path).read_bytes()
    except PermissionError:
        raise unreadable(Path(path)) from None
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as err:
            raise IdxFormatError(
                f"{path} is a corrupt or truncated gzip file ({err}). "
                "Delete it and download or copy the file again."
            ) from None
    return _parse_idx(raw, path)


def _parse_idx(raw: bytes, path: str) -> torch.Tensor:
    fix = "Delete it and download or copy the file again."
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_TYPES or raw[3] == 0:
        raise IdxFormatError(
            f"{path} is not an idx file: its first 4 bytes {raw[:4].hex(' ') or '(none)'} are not an "
            "idx magic number (00 00 <type code> <number of dimensions>). " + fix
        )
    dtype, itemsize = _IDX_TYPES[raw[2]]
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise IdxFormatError(f"{path} is truncated: it ends inside its header. " + fix)
    shape = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    count = 1
    for dim in shape:
        count *= dim
    expected = header + count * itemsize
    if len(raw) != expected:
        problem = "truncated" if len(raw) < expected else "longer than its header says"
        raise IdxFormatError(
            f"{path} is {problem}: dimensions {shape} need {expected:,} bytes, the file has "
            f"{len(raw):,} (uncompressed). " + fix
        )
    if count == 0:
        return torch.empty(shape, dtype=dtype)
    # frombuffer needs a writable buffer to avoid a warning; bytearray copies once, which we need anyway.
    data = torch.frombuffer(bytearray(raw), dtype=torch.uint8, offset=header, count=count * itemsize)
    if itemsize > 1:  # big-endian on disk -> native (little-endian) order
        data = data.view(count, itemsize).flip(-1).contiguous().view(-1)
    return data.view(dtype).reshape(shape)


