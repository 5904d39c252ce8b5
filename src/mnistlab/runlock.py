"""One writer per run or study directory: an advisory lock on a file inside it.

`fcntl.flock` is released by the kernel when the process that holds it ends, however it
ends, so a crash or a kill leaves no stale lock behind. The lock file holds the holder's
process id, for the message the second writer gets. Within one process the lock is
re-entrant for the thread that holds it (`mnistlab train` takes it, then `fit` again).
"""

from __future__ import annotations

import errno
import fcntl
import functools
import inspect
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from mnistlab.checkpoint import CHECKPOINT_NAME
from mnistlab.errors import UserError

LOCK_NAME = ".mnistlab.lock"

_held: dict[Path, tuple[int, int, int]] = {}  # directory -> (file descriptor, owning thread, depth)
_guard = threading.Lock()


@contextmanager
def run_lock(directory: str | os.PathLike) -> Iterator[None]:
    """Hold `directory`'s lock within the block; another writer gets a UserError naming its holder."""
    directory = Path(directory)
    key = directory.resolve()
    me = threading.get_ident()
    with _guard:
        if key in _held:
            fd, owner, depth = _held[key]
            if owner != me:
                raise UserError(f"{directory} is being written by another thread of this process; wait for it to end")
            _held[key] = (fd, owner, depth + 1)
        else:
            _held[key] = (_acquire(directory), me, 1)
    try:
        yield
    finally:
        with _guard:
            fd, owner, depth = _held[key]
            if depth > 1:
                _held[key] = (fd, owner, depth - 1)
            else:
                del _held[key]
                os.close(fd)  # closing the file releases the lock


def _acquire(directory: Path) -> int:
    path = directory / LOCK_NAME
    try:
        directory.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o644)
    except OSError as e:
        raise UserError(f"{directory}: cannot write here ({e.strerror or e})") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        holder = _read_pid(fd)
        os.close(fd)
        if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            raise UserError(f"{path}: cannot lock it ({e.strerror or e})") from None
        who = f"process {holder}" if holder else "another process"
        raise UserError(
            f"{directory} is being written by {who}; wait for it to finish, or stop it, then run this again"
        ) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def _read_pid(fd: int) -> int | None:
    try:
        text = os.pread(fd, 32, 0).decode("ascii").strip()
        return int(text) if text.isdigit() else None
    except (OSError, UnicodeDecodeError):
        return None


def locks_run_directory(check=None):
    """Decorate `fit(config, arrays, out_dir, resume=None, ...)`: it holds out_dir's lock throughout,
    and a new run (no `resume`) refuses a directory that already holds a run. `check`, called with
    fit's arguments, refuses a wrong call before the directory is made."""
    return functools.partial(_locked, check=check)


def _locked(fit, check=None):
    signature = inspect.signature(fit)

    @functools.wraps(fit)
    def locked(*args, **kwargs):
        try:
            bound = signature.bind(*args, **kwargs)
        except TypeError as e:
            raise UserError(f"{fit.__name__}: {e}") from None
        out_dir = bound.arguments["out_dir"]
        if not isinstance(out_dir, (str, os.PathLike)):
            raise UserError(f"out_dir must be a path (a string or a Path), got {type(out_dir).__name__}")
        if check is not None:
            check(*args, **kwargs)
        with run_lock(out_dir):
            if bound.arguments.get("resume") is None and (Path(out_dir) / CHECKPOINT_NAME).exists():
                raise UserError(
                    f"{out_dir} already holds a run; resume it (`mnistlab train --resume {out_dir}`, "
                    "or fit(..., resume=load_checkpoint(out_dir))), or write to another directory"
                )
            return fit(*args, **kwargs)

    return locked
