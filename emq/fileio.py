"""Atomic file writes: readers (and a job killed mid-write) see the old file or the new one,
never a partial one. Failures (a read-only or full disk) are one-line `EmqError`s naming the
file, and leave no temp file behind."""

from __future__ import annotations

import errno
import os
import secrets
import tempfile
from collections.abc import Callable
from pathlib import Path

from .errors import EmqError

TEMP_SUFFIX = ".tmp"


def cache_root(cache_dir: str | Path | None = None) -> Path:
    """The root of emq's caches: `cache_dir`, else $EMQ_CACHE_DIR, else ~/.cache/emq."""
    root = cache_dir if cache_dir is not None else os.environ.get("EMQ_CACHE_DIR")
    return Path(root) if root else Path.home() / ".cache" / "emq"


def remove_stale_temps(directory: str | Path) -> list[Path]:
    """Delete the temp files a killed writer left in `directory` (`.<name>.<random>.tmp`);
    call it only where no other writer can be busy, e.g. when resuming a run directory."""
    stale = [p for p in Path(directory).glob(f".*{TEMP_SUFFIX}") if p.is_file()]
    for p in stale:
        p.unlink(missing_ok=True)
    return stale


def os_reason(e: OSError) -> str:
    """`e` in a few words, for a one-line message (ENOSPC also says the disk is full)."""
    reason = e.strerror or str(e)
    return f"{reason} (the disk is full)" if e.errno == errno.ENOSPC else reason


def ensure_dir(directory: str | Path) -> Path:
    """Create `directory` and its parents: an output path may name a new folder."""
    directory = Path(directory)
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise EmqError(f"cannot create directory {directory}: {os_reason(e)}") from e
    return directory


def writable_dir(directory: str | Path) -> str | None:
    """None if files can be written into `directory` (created with its parents if missing), else
    why not. Tried for real with a temp file removed at once: permission bits say nothing to root,
    and a read-only mount or an immutable directory refuses root too."""
    try:
        Path(directory).mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-test.", suffix=TEMP_SUFFIX, dir=directory)
    except OSError as e:
        return os_reason(e)
    os.close(fd)
    os.unlink(probe)
    return None


def _new_temp(path: Path) -> Path:
    """An empty, new `.<name>.<random>.tmp` beside `path`. Created with mode 0o666 so the
    kernel applies the user's umask (tempfile.mkstemp would make every output 0600)."""
    while True:
        tmp = path.parent / f".{path.name}.{secrets.token_hex(6)}{TEMP_SUFFIX}"
        try:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
        except FileExistsError:
            continue
        except OSError as e:
            raise EmqError(f"cannot write {path}: {os_reason(e)}") from e
        return tmp


def atomic_write(path: str | Path, write: Callable[[str], None]) -> None:
    """Call `write(tmp_path)` on a temp file beside `path`, then rename it over `path`."""
    path = Path(path)
    ensure_dir(path.parent)
    tmp = _new_temp(path)
    try:
        write(str(tmp))
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise EmqError(f"cannot write {path}: {os_reason(e)}") from e
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write a text file atomically (UTF-8)."""

    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)

    atomic_write(path, write)
