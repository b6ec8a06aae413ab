"""Writing a file so that nothing is lost: atomically, verified before it replaces the old one, with the
errors a person can act on (a folder that is a file, no permission, a full disk) named with the fix.

``write_atomically(path, write, verify)``: a temporary file ``.<name>.saving-<host>-<pid>-<random>.tmp`` in
the same folder is written by ``write(file)``, flushed, fsync'ed and checked by ``verify(tmp)`` before
``os.replace`` puts it in place. A crash, a kill or a full disk leaves the previous file as it was, and a file
that ``verify`` refuses never replaces one. Temporary files left by killed writes are removed by the next
write into the same folder (those of processes that no longer run, and any older than an hour). The file
gets the usual mode for new files (0666 minus the umask), like any other file you write.
"""

from __future__ import annotations

import errno
import hashlib
import math
import os
import re
import secrets
import shutil
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

__all__ = ["writable_target", "write_atomically", "remove_stale_temp_files", "host_tag", "os_error",
           "STALE_TEMP_SECONDS"]

# Temporary files: ".<target name>.saving-<host hash>-<pid>-<random>.tmp" next to the target.
_TEMP_PATTERN = re.compile(r"^\.(?P<target>.*)\.saving-(?P<host>[0-9a-f]{6})-(?P<pid>\d+)-[0-9a-f]{8}\.tmp$")
STALE_TEMP_SECONDS = 3600


def writable_target(path: Any, caller: str = "save_checkpoint") -> Path:
    """``path`` as a Path whose folder exists and can be written, or an error naming the problem."""
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"{caller}: path must be a str or pathlib.Path, got {type(path).__name__}.")
    path = Path(path).expanduser()
    if path.is_dir():
        raise os_error(
            IsADirectoryError, errno.EISDIR, path,
            f"Cannot save the checkpoint to {path}: it is a folder. Give a file path, e.g. {path / 'checkpoint.pt'}.",
        )
    ancestor = path.parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise os_error(
            NotADirectoryError, errno.ENOTDIR, ancestor,
            f"Cannot save the checkpoint to {path}: {ancestor} is a file, not a folder. Choose a path "
            f"in a folder, or move the file {ancestor} out of the way.",
        )
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise _folder_error(path, ancestor, err) from None
    if not os.access(path.parent, os.W_OK | os.X_OK):
        raise _folder_error(path, path.parent, PermissionError(errno.EACCES, "Permission denied"))
    return path


def _folder_error(path: Path, folder: Path, err: OSError) -> OSError:
    if err.errno == errno.EROFS:
        problem, fix = "is on a read-only file system", "save to a writable disk"
    elif isinstance(err, PermissionError):
        problem = "is not writable (permission denied)"
        fix = f"save somewhere you can write (e.g. in your home folder), or make it writable (chmod u+w '{folder}')"
    else:
        return err
    message = f"Cannot save to {path}: the folder {folder} {problem}; {fix}."
    return os_error(type(err), err.errno, folder, message)


def os_error(kind: type[OSError], code: int, filename: Any, message: str) -> OSError:
    """An OSError subclass with ``errno`` set whose text is just ``message`` (which names the file),
    not "[Errno N] message: 'filename'" (setting ``.filename`` would bring that format back)."""
    error = kind(message)
    error.errno = code
    return error


class _RecordingWriter:
    """A file for torch.save that remembers the OSError a write raised (torch.save reports it only as
    ``RuntimeError: [enforce fail at inline_container.cc] ... unexpected pos``)."""

    def __init__(self, file):
        self.file = file
        self.error: OSError | None = None

    def write(self, data) -> int:
        try:
            return self.file.write(data)
        except OSError as err:
            self.error = self.error or err
            raise

    def flush(self) -> None:
        self.file.flush()


def host_tag() -> str:
    """This machine in temporary file names: 6 hex digits of a hash of the host name."""
    return hashlib.sha1(socket.gethostname().encode()).hexdigest()[:6]


def _temp_path(path: Path) -> Path:
    stem = path.name[:120]  # stays under the 255-byte name limit
    return path.with_name(f".{stem}.saving-{host_tag()}-{os.getpid()}-{secrets.token_hex(4)}.tmp")


def write_atomically(path: Path, write: Callable[[BinaryIO], None], verify: Callable[[Path], None],
                     size: int) -> None:
    """Write ``path`` through a temporary file: ``write(file)`` fills it, ``verify(tmp)`` raises unless it is
    good, and only then does it replace ``path``. size: about how many bytes ``write`` writes (named in the
    error for a full disk). Whatever fails, the previous file at ``path`` is unchanged."""
    folder = path.parent
    remove_stale_temp_files(folder)
    tmp = _temp_path(path)
    try:
        # O_EXCL: never follow or reuse an existing name; mode 0o666 lets the umask decide, as for any new file.
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    except OSError as err:
        raise _folder_error(path, folder, err) from None
    try:
        with os.fdopen(fd, "wb") as file:
            writer = _RecordingWriter(file)
            try:
                write(writer)
                file.flush()
                os.fsync(file.fileno())
            except (OSError, RuntimeError) as err:
                raise _write_error(path, size, writer.error or err) from None
        verify(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(folder)


def _write_error(path: Path, size: int, err: BaseException) -> BaseException:
    """Name a full disk as such (torch.save reports it as 'enforce fail at inline_container.cc')."""
    needed = size + 64 * 1024
    try:
        free = shutil.disk_usage(path.parent).free
    except OSError:
        free = None
    recorded = isinstance(err, OSError) and err.errno is not None
    full = err.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)) if recorded else (
        "inline_container" in str(err) and free is not None and free < needed
    )
    if not full:
        return err
    left = f"; {_size(free)} free there" if free is not None else ""
    return os_error(
        OSError, errno.ENOSPC, path,
        f"No space left on device while writing {path} (needed about {_size(needed, up=True)}{left}). Free some "
        f"space or save to another disk; the previous file at {path}, if any, is unchanged.",
    )


def _size(n: int, up: bool = False) -> str:
    """Bytes for a person: whole MB from 1 MB on (rounded up for what is needed), else KB."""
    if n >= 2**20:
        return f"{math.ceil(n / 2**20) if up else round(n / 2**20)} MB"
    return f"{math.ceil(n / 2**10) if up else round(n / 2**10)} KB"


def remove_stale_temp_files(folder: str | os.PathLike) -> list[Path]:
    """Delete the temporary files of interrupted writes in ``folder``: those of processes on this machine
    that no longer run, and any older than an hour. ``write_atomically`` calls this before every write.
    Returns the paths removed."""
    folder = Path(folder)
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return []
    now, host, removed = time.time(), host_tag(), []
    for entry in entries:
        match = _TEMP_PATTERN.match(entry.name)
        if not match:
            continue
        try:
            age = now - entry.stat(follow_symlinks=False).st_mtime
            if not entry.is_file(follow_symlinks=False):
                continue
        except OSError:
            continue
        dead = match["host"] == host and not _process_alive(int(match["pid"]))
        if dead or age > STALE_TEMP_SECONDS:
            try:
                os.unlink(entry.path)
                removed.append(Path(entry.path))
            except OSError:
                pass
    return removed


def _process_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    if os.name == "nt":  # os.kill(pid, 0) would terminate it on Windows: rely on the age instead
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # PermissionError: it runs, as someone else
        return True
    return True


def _fsync_dir(folder: Path) -> None:
    """Make the rename durable (POSIX); harmless to skip where directories cannot be opened."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


