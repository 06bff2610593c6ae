"""One builder per bench file, claimed before any model work.

A new file is created atomically (O_EXCL), so the existence check cannot race, and a
non-writable place fails at once instead of after the set-up. The builder then holds an
advisory `flock` on the bench file itself for the whole build: SQLite locks with `fcntl`
byte ranges, which `flock` does not touch on Linux, so the lock needs no extra file, works on
a read-only mount, and is released by the kernel when a builder is killed. A file the claim
created is removed again if the build fails before storing any record (a full disk at
creation, a bad argument), so a plain rerun works.
"""

from __future__ import annotations

import fcntl
import functools
import inspect
import os
import sqlite3
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager
from pathlib import Path
from typing import Any, TypeVar

from emq.errors import EmqError
from emq.fileio import ensure_dir, os_reason
from emq.specs import ParameterError

F = TypeVar("F", bound=Callable[..., Any])


def _busy(path: Path) -> EmqError:
    return EmqError(
        f"bench {path}: another build is writing this file; wait for it to finish (or resume it once it has stopped)"
    )


def _is_locked(path: Path) -> bool:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def _has_records(path: Path) -> bool:
    try:
        with closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as con:
            return con.execute("SELECT count(*) FROM records").fetchone()[0] > 0
    except sqlite3.Error:
        return False


def _remove(path: Path) -> None:
    for p in (path, *(path.with_name(path.name + s) for s in ("-journal", "-wal", "-shm"))):
        p.unlink(missing_ok=True)


@contextmanager
def claim(path: Path | str, resume: bool) -> Iterator[None]:
    """Hold `path` for one build: refuse an existing file unless `resume`, and refuse a file
    another build is writing."""
    path = Path(path)
    ensure_dir(path.parent)
    created = not (resume and path.exists())
    try:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o666) if created else os.open(path, os.O_RDONLY)
        except FileExistsError:
            if not resume:
                if _is_locked(path):
                    raise _busy(path) from None
                raise ParameterError(
                    "out", path, "the file exists; pass --resume to continue that build, or choose another file"
                ) from None
            created, fd = False, os.open(path, os.O_RDONLY)  # another resume created it just now
    except OSError as e:
        raise EmqError(f"bench {path}: cannot {'create' if created else 'open'} it ({os_reason(e)})") from e
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise _busy(path) from None
        try:
            yield
        except BaseException:
            if created and not _has_records(path):
                _remove(path)
            raise
    finally:
        os.close(fd)


def claimed(fn: F) -> F:
    """Run a builder `fn(out, ..., resume=...)` inside `claim(out, resume)`."""
    sig = inspect.signature(fn)

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        bound = sig.bind(*args, **kwargs)
        bound.apply_defaults()
        with claim(bound.arguments["out"], bool(bound.arguments["resume"])):
            return fn(*args, **kwargs)

    return wrapper  # type: ignore[return-value]
