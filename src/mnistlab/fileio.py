"""Atomic file writes: a temporary file in the target's directory, then a rename; and reads
that check a file before they take it whole.

A reader never sees a half-written file, and an interrupted or failed write leaves the
previous file untouched; files that belong together are written with Ctrl-C held back
(`interrupts_held`). A read takes regular files only (a FIFO would block, a device never end)
and refuses one over its size limit before reading a byte.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import stat
import tempfile
import threading
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Iterator

from mnistlab.errors import UserError

# A write that finds no room, for whatever reason: what to say about it.
NO_ROOM = {errno.ENOSPC: "no space left on device", errno.EDQUOT: "disk quota exceeded",
           errno.EFBIG: "file size limit exceeded"}  # fmt: skip


class DiskFull(UserError):
    """A write found no room (a full disk, a quota, a file-size limit); the file it would replace is intact."""


@contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "wb") -> Iterator[IO]:
    """Open a temporary file beside `path`; on success it replaces `path`, on error it vanishes."""
    path = Path(path)
    if path.is_dir() and not path.is_symlink():
        raise UserError(f"{path}: is a directory where mnistlab writes a file; move or remove it")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as e:
        raise UserError(f"{path.parent}: cannot write here ({e.strerror or e})") from None
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the file the usual mode
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        if isinstance(e, OSError) and e.errno in NO_ROOM:
            raise DiskFull(f"{NO_ROOM[e.errno]} writing {path}") from None
        raise


@contextmanager
def signal_handler(signum: int, handler) -> Iterator[None]:
    """`handler` for `signum` within the block; only the main thread can set one, elsewhere nothing changes."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signum, handler)
    try:
        yield
    finally:
        signal.signal(signum, previous)


@contextmanager
def interrupts_held() -> Iterator[None]:
    """Within the block, Ctrl-C (SIGINT) waits: it takes effect as the block ends, so the files written
    in it (the seeds of a stacked run, each at the same epoch) are all written or none is.

    Only the main thread receives signals; in another thread nothing changes.
    """
    came = []
    previous = signal.getsignal(signal.SIGINT)
    with signal_handler(signal.SIGINT, lambda signum, frame: came.append(frame)):
        yield
    if came and callable(previous):
        previous(signal.SIGINT, came[0])
    elif came and previous == signal.SIG_DFL:
        os.kill(os.getpid(), signal.SIGINT)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: str | os.PathLike, write: Callable[[IO], object], mode: str = "wb") -> None:
    """Call `write(f)` on a temporary file, then move it to `path`."""
    with atomic_open(path, mode) as f:
        write(f)


def write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write(path, lambda f: f.write(text), mode="w")


def write_json(path: str | os.PathLike, obj: object) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def open_regular(path: str | os.PathLike, limit: int | None = None, what: str = "file") -> IO[bytes]:
    """Open `path` for reading, binary, if it is a regular file of at most `limit` bytes; else a UserError.

    Opened without blocking, so that a FIFO is refused rather than waited on."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise UserError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise UserError(f"{path}: is a directory, not a {what}") from None
    except OSError as e:
        raise UserError(f"{path}: cannot read ({e.strerror or e})") from None
    try:
        info = os.fstat(fd)
        if stat.S_ISDIR(info.st_mode):
            raise UserError(f"{path}: is a directory, not a {what}")
        if not stat.S_ISREG(info.st_mode):
            raise UserError(f"{path}: not a regular file (a pipe, a device or a socket), not a {what}")
        if limit is not None and info.st_size > limit:
            raise UserError(f"{path}: {info.st_size:,} bytes, too large for a {what} (the limit is {limit:,})")
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_regular(path: str | os.PathLike, limit: int | None = None, what: str = "file") -> bytes:
    """The bytes of a regular file of at most `limit` bytes (open_regular); its failures are UserErrors."""
    with open_regular(path, limit, what) as f:
        try:
            return f.read() if limit is None else f.read(limit + 1)  # one byte over: it grew meanwhile
        except OSError as e:
            raise UserError(f"{path}: cannot read ({e.strerror or e})") from None
