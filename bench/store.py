"""One SQLite file per bench: metadata, the build plan, records and noise repeats.

Every write is its own short transaction, so a build killed at any moment (kill -9
included) keeps every finished record and nothing half-written. `config` is UNIQUE in
records, so two builders writing to one file can never duplicate a configuration; a busy
timeout makes them wait for each other's short transactions instead of failing.
A write SQLite cannot make (full disk, read-only file) is an `EmqError` naming the file.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import time
from collections.abc import Iterable, Iterator, Mapping
from contextlib import closing, contextmanager, suppress
from pathlib import Path
from typing import Any

from emq.errors import EmqError

log = logging.getLogger(__name__)

SCHEMA_VERSION = 2  # 2: per-image outcomes in records and repeats, test pools in meta
RECORD_COLUMNS = ("idx", "config", "top1", "loss", "kl", "size_bytes", "bitops", "seconds", "seed", "source")
_INSERT_COLUMNS = (*RECORD_COLUMNS, "outcomes")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS plan (idx INTEGER PRIMARY KEY, config TEXT NOT NULL UNIQUE, source TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS records (
    idx INTEGER PRIMARY KEY, config TEXT NOT NULL UNIQUE,
    top1 REAL NOT NULL, loss REAL, kl REAL, size_bytes REAL NOT NULL, bitops REAL NOT NULL,
    seconds REAL, seed INTEGER, source TEXT NOT NULL, outcomes BLOB
);
CREATE TABLE IF NOT EXISTS repeats (
    config TEXT PRIMARY KEY, top1 REAL NOT NULL, loss REAL, kl REAL, seconds REAL, calib_seed INTEGER NOT NULL,
    outcomes BLOB
);
CREATE TABLE IF NOT EXISTS failures (
    config TEXT NOT NULL, stage TEXT NOT NULL, error TEXT NOT NULL, attempts INTEGER NOT NULL, at TEXT NOT NULL,
    PRIMARY KEY (config, stage)
);
"""
# every table emq creates (and SQLite's indexes of their keys): any other schema object is refused
TABLES = ("meta", "plan", "records", "repeats", "failures")
STAGES = ("build", "retest")  # a failure's stage: a record of the bench, or a calibration repeat


def _check_schema(con: sqlite3.Connection, path: Path) -> None:
    """Refuse a file holding schema objects emq never creates: a trigger would run inside emq's
    own writes, a view or an extra table means the file is not what it claims to be."""
    try:
        objects = con.execute("SELECT type, name FROM sqlite_master").fetchall()
    except sqlite3.DatabaseError as e:
        raise EmqError(f"bench {path}: not a bench file ({e})") from e
    for kind, name in objects:
        ours = name in TABLES if kind == "table" else kind == "index" and name.startswith("sqlite_autoindex_")
        if not (ours or (kind == "table" and name.startswith("sqlite_"))):
            raise EmqError(
                f"bench {path}: not a bench file: it holds the {kind} {name!r:.80}, which emq never "
                "creates; refused before anything runs or is written (use a bench made by `emq bench build` or "
                "`emq bench import`)"
            )


def connect(path: Path | str, readonly: bool = False) -> sqlite3.Connection:
    """Open a bench file; read-only opens never create a file, and a failed creation leaves none.
    A file with schema objects emq does not create (triggers, views, other tables) is refused
    before any statement of emq's runs on it."""
    path = Path(path)
    if readonly:
        if not path.is_file():
            raise EmqError(f"bench {path}: no such file (build one with `emq bench build` or use 'default')")
        con = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30.0)
        try:
            _check_schema(con, path)
        except BaseException:
            con.close()
            raise
    else:
        new = not path.exists()
        try:
            con = sqlite3.connect(str(path), timeout=30.0, isolation_level=None)
        except sqlite3.OperationalError as e:
            raise EmqError(f"bench {path}: cannot open ({e})") from e
        try:
            con.execute("PRAGMA busy_timeout = 30000")
            _check_schema(con, path)
            with transaction(con):
                for stmt in filter(str.strip, _SCHEMA.split(";")):
                    con.execute(stmt)
        except BaseException as e:
            con.close()
            if new:  # never leave behind a file this call created (a full disk at creation)
                path.unlink(missing_ok=True)
            if isinstance(e, sqlite3.DatabaseError):
                raise EmqError(f"bench {path}: not a bench file ({e})") from e
            raise
    try:
        con.execute("SELECT count(*) FROM sqlite_master").fetchone()
    except sqlite3.DatabaseError as e:
        con.close()
        raise EmqError(f"bench {path}: not a bench file ({e})") from e
    return con


def _db_path(con: sqlite3.Connection) -> str:
    try:
        return con.execute("PRAGMA database_list").fetchone()[2] or "(in memory)"
    except sqlite3.Error:
        return "(unknown file)"


def _write_error(con: sqlite3.Connection, e: sqlite3.OperationalError) -> EmqError:
    """`e` as a one-line error naming the file; a full disk says so."""
    if getattr(e, "sqlite_errorname", "") == "SQLITE_FULL" or "disk is full" in str(e):
        return EmqError(f"bench {_db_path(con)}: the disk is full ({e}); free some space and try again")
    return EmqError(f"bench {_db_path(con)}: {e}")


@contextmanager
def transaction(con: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """An explicit write transaction (the connection is in autocommit mode otherwise).

    SQLite may have rolled back by itself (SQLITE_FULL does), so roll back only what is
    still open: a second ROLLBACK would raise and hide the real error.
    """
    try:
        con.execute("BEGIN IMMEDIATE")
    except sqlite3.OperationalError as e:
        raise _write_error(con, e) from e
    try:
        yield con
        con.execute("COMMIT")
    except BaseException as e:
        if con.in_transaction:
            with suppress(sqlite3.Error):
                con.execute("ROLLBACK")
        if isinstance(e, sqlite3.OperationalError):
            raise _write_error(con, e) from e
        raise


def read_meta(con: sqlite3.Connection, path: Path | str | None = None) -> dict[str, Any]:
    """The metadata, each value decoded from JSON (`path` names the file in errors)."""
    try:
        rows = con.execute("SELECT key, value FROM meta").fetchall()
    except sqlite3.DatabaseError as e:
        raise EmqError(f"not a bench file: {e}") from e
    meta = {}
    for key, value in rows:
        try:
            meta[key] = json.loads(value)
        except (TypeError, ValueError) as e:  # JSONDecodeError, or a value that is not text
            raise EmqError(
                f"bench {path or _db_path(con)}: metadata {key!r:.80} is not JSON ({e}); the file is damaged: "
                "rebuild it with `emq bench build` or restore a copy"
            ) from e
    return meta


def write_meta(con: sqlite3.Connection, items: Mapping[str, Any], log_entry: Mapping[str, Any] | None = None) -> None:
    """Store `items` and append `log_entry` to `build_log`, read and written in ONE transaction
    so concurrent writers keep every entry. Writes nothing when nothing changes, so resuming a
    finished bench works on a read-only disk."""
    new = {k: json.dumps(v) for k, v in items.items()}

    def changes() -> dict[str, str]:
        stored = dict(con.execute("SELECT key, value FROM meta").fetchall())
        out = {k: v for k, v in new.items() if stored.get(k) != v}
        if log_entry is not None:
            out["build_log"] = json.dumps(json.loads(stored.get("build_log", "[]")) + [dict(log_entry)])
        return out

    if not changes():
        return
    with transaction(con):
        con.executemany("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", list(changes().items()))


def init_bench(con: sqlite3.Connection, meta: Mapping[str, Any], plan: list[tuple[str, str]]) -> dict[str, Any]:
    """Write metadata and plan if the file is new; otherwise return the stored metadata.

    One transaction, so two builders starting together agree on who initialised the file.
    """
    with transaction(con):
        stored = read_meta(con)
        if stored:
            return stored
        con.executemany("INSERT INTO meta (key, value) VALUES (?, ?)", [(k, json.dumps(v)) for k, v in meta.items()])
        con.executemany(
            "INSERT INTO plan (idx, config, source) VALUES (?, ?, ?)", [(i, c, s) for i, (c, s) in enumerate(plan)]
        )
    return json.loads(json.dumps(dict(meta)))


def read_plan(con: sqlite3.Connection) -> list[tuple[int, str, str]]:
    return con.execute("SELECT idx, config, source FROM plan ORDER BY idx").fetchall()


def done_configs(con: sqlite3.Connection, table: str = "records") -> set[str]:
    return {r[0] for r in con.execute(f"SELECT config FROM {table}")}  # noqa: S608 - table is internal


def insert_record(con: sqlite3.Connection, row: Mapping[str, Any]) -> bool:
    """Insert one record in its own transaction (clearing an earlier failure of its config);
    False when the config was already there."""
    with transaction(con):
        cur = con.execute(
            f"INSERT OR IGNORE INTO records ({', '.join(_INSERT_COLUMNS)}) VALUES "
            f"({', '.join('?' * len(_INSERT_COLUMNS))})",
            [row.get(c) for c in _INSERT_COLUMNS],
        )
        con.execute("DELETE FROM failures WHERE config = ? AND stage = 'build'", (row["config"],))
    return cur.rowcount == 1


def insert_records(con: sqlite3.Connection, rows: Iterable[Mapping[str, Any]]) -> int:
    """Insert many records in ONE transaction (imports: all or nothing)."""
    with transaction(con):
        cur = con.executemany(
            f"INSERT INTO records ({', '.join(_INSERT_COLUMNS)}) VALUES ({', '.join('?' * len(_INSERT_COLUMNS))})",
            [[row.get(c) for c in _INSERT_COLUMNS] for row in rows],
        )
    return cur.rowcount


def insert_repeat(con: sqlite3.Connection, config: str, result: Mapping[str, Any], calib_seed: int) -> None:
    with transaction(con):
        con.execute(
            "INSERT OR IGNORE INTO repeats (config, top1, loss, kl, seconds, calib_seed, outcomes) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            (
                config,
                result["top1"],
                result["loss"],
                result["kl"],
                result["seconds"],
                calib_seed,
                result.get("outcomes"),
            ),
        )
        con.execute("DELETE FROM failures WHERE config = ? AND stage = 'retest'", (config,))


def insert_failure(con: sqlite3.Connection, config: str, stage: str, *, error: str, attempts: int) -> None:
    """Record that `config` kept failing in `stage` ('build' or 'retest'); a resume tries it
    again, and its success removes this row."""
    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r}")
    with transaction(con):
        con.execute(
            "INSERT OR REPLACE INTO failures (config, stage, error, attempts, at) VALUES (?, ?, ?, ?, ?)",
            (config, stage, error, attempts, time.strftime("%Y-%m-%dT%H:%M:%S%z")),
        )


def read_failures(con: sqlite3.Connection) -> list[dict[str, Any]]:
    """The configurations that failed for good, with their errors (none in files made before
    failures were recorded)."""
    try:
        rows = con.execute("SELECT config, stage, error, attempts, at FROM failures ORDER BY stage, config").fetchall()
    except sqlite3.OperationalError as e:
        if "no such table" in str(e):
            return []
        raise EmqError(f"bench {_db_path(con)}: cannot read its failures ({e})") from e
    return [{"config": c, "stage": st, "error": e, "attempts": a, "at": at} for c, st, e, a, at in rows]


def read_outcomes(
    con: sqlite3.Connection, table: str = "records", max_bytes: int | None = None, path: Path | str | None = None
) -> dict[str, bytes | None]:
    """{config: per-image outcome blob or None} of the records or the repeats. A blob longer than
    `max_bytes` (more than its images can need) is refused before it is read into memory."""
    try:
        if max_bytes is not None:
            big = con.execute(
                f"SELECT config, length(outcomes) FROM {table} WHERE length(outcomes) > ? LIMIT 1",  # noqa: S608
                (max_bytes,),
            ).fetchone()
            if big is not None:
                raise EmqError(
                    f"bench {path or _db_path(con)}: the per-image outcomes of configuration {big[0]!r:.80} "
                    f"in {table} take {big[1]:,} bytes, more than the {max_bytes:,} its test images can need; the "
                    "file is damaged: rebuild it with `emq bench build` or restore a copy"
                )
        return dict(con.execute(f"SELECT config, outcomes FROM {table}").fetchall())  # noqa: S608 - table is internal
    except sqlite3.OperationalError as e:
        raise EmqError(f"not a bench file of format {SCHEMA_VERSION}: {e}") from e


def read_repeats(con: sqlite3.Connection) -> dict[str, dict[str, float | None]]:
    """{config: {top1, loss, kl}} of the calibration repeats."""
    return {
        r[0]: {"top1": r[1], "loss": r[2], "kl": r[3]}
        for r in con.execute("SELECT config, top1, loss, kl FROM repeats")
    }


def read_records(con: sqlite3.Connection) -> list[tuple]:
    try:
        return con.execute(f"SELECT {', '.join(RECORD_COLUMNS)} FROM records ORDER BY idx").fetchall()
    except sqlite3.DatabaseError as e:
        raise EmqError(f"not a bench file: {e}") from e


PAGE_SIZE = 1024  # a per-image blob wastes half a page on average: 4 KiB pages cost ~10 % of a bench


def compact(path: Path | str) -> None:
    """VACUUM (into PAGE_SIZE pages) so the shipped file is small and has no journal left behind.

    Best effort: the file is complete and valid without it, and VACUUM needs free space of
    about the file's size, so a failure (a nearly full disk) only logs a warning. A file this
    process cannot write (a finished bench resumed on a read-only disk) is left as it is.
    """
    path = Path(path)
    if not (os.access(path, os.W_OK) and os.access(path.parent, os.W_OK)):
        log.info("bench %s: not writable here, not compacted", path)
        return
    try:
        with closing(sqlite3.connect(str(path), timeout=30.0, isolation_level=None)) as con:
            con.execute(f"PRAGMA page_size = {PAGE_SIZE}")
            con.execute("VACUUM")
    except sqlite3.Error as e:
        log.warning("bench %s: not compacted (%s); the file is complete and valid", path, e)


def records_so_far(path: str | Path) -> int:
    """How many records a bench file holds, read-only, while a build may be writing it: 0 when
    there is no file yet (connecting would create one, and the build would refuse it) or it is
    not readable at this moment."""
    path = Path(path)
    if not path.exists():
        return 0
    try:
        with closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)) as con:
            return con.execute("SELECT count(*) FROM records").fetchone()[0]
    except sqlite3.OperationalError:
        return 0
