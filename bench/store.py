"""One SQLite file per bench: metadata, the build plan, records and noise repeats.

Every write is its own short transaction, so a build killed at any moment (kill -9
included) keeps every finished record and nothing half-written. `config` is UNIQUE in
records, so two builders writing to one file can never duplicate a configuration; a busy
timeout makes them wait for each other's short transactions instead of failing.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable, Iterator, Mapping
from contextlib import closing, contextmanager
from pathlib import Path
from typing import Any

from emq.errors import EmqError

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
    config TEXT PRIMARY KEY, top1 REAL NOT NULL, loss REAL, kl REAL, seconds REAL, calib_seed INTEGER NOT NULL, outcomes BLOB
);
"""


def connect(path: Path | str, readonly: bool = False) -> sqlite3.Connection:
    """Open a bench file; read-only opens never create a file."""
    path = Path(path)
    if readonly:
        if not path.is_file():
            raise EmqError(f"bench {path}: no such file (build one with `emq bench build` or use 'default')")
        con = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30.0)
    else:
        con = sqlite3.connect(str(path), timeout=30.0, isolation_level=None)
        con.execute("PRAGMA busy_timeout = 30000")
        try:
            with transaction(con):
                for stmt in filter(str.strip, _SCHEMA.split(";")):
                    con.execute(stmt)
        except sqlite3.DatabaseError as e:
            con.close()
            raise EmqError(f"bench {path}: not a bench file ({e})") from e
    try:
        con.execute("SELECT count(*) FROM sqlite_master").fetchone()
    except sqlite3.DatabaseError as e:
        con.close()
        raise EmqError(f"bench {path}: not a bench file ({e})") from e
    return con


@contextmanager
def transaction(con: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """An explicit write transaction (the connection is in autocommit mode otherwise)."""
    con.execute("BEGIN IMMEDIATE")
    try:
        yield con
    except BaseException:
        con.execute("ROLLBACK")
        raise
    con.execute("COMMIT")


def read_meta(con: sqlite3.Connection) -> dict[str, Any]:
    try:
        rows = con.execute("SELECT key, value FROM meta").fetchall()
    except sqlite3.DatabaseError as e:
        raise EmqError(f"not a bench file: {e}") from e
    return {k: json.loads(v) for k, v in rows}


def write_meta(con: sqlite3.Connection, items: Mapping[str, Any]) -> None:
    with transaction(con):
        con.executemany("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", [(k, json.dumps(v)) for k, v in items.items()])


def init_bench(con: sqlite3.Connection, meta: Mapping[str, Any], plan: list[tuple[str, str]]) -> dict[str, Any]:
    """Write metadata and plan if the file is new; otherwise return the stored metadata.

    One transaction, so two builders starting together agree on who initialised the file.
    """
    with transaction(con):
        stored = {k: json.loads(v) for k, v in con.execute("SELECT key, value FROM meta")}
        if stored:
            return stored
        con.executemany("INSERT INTO meta (key, value) VALUES (?, ?)", [(k, json.dumps(v)) for k, v in meta.items()])
        con.executemany("INSERT INTO plan (idx, config, source) VALUES (?, ?, ?)", [(i, c, s) for i, (c, s) in enumerate(plan)])
    return json.loads(json.dumps(dict(meta)))


def read_plan(con: sqlite3.Connection) -> list[tuple[int, str, str]]:
    return con.execute("SELECT idx, config, source FROM plan ORDER BY idx").fetchall()


def done_configs(con: sqlite3.Connection, table: str = "records") -> set[str]:
    return {r[0] for r in con.execute(f"SELECT config FROM {table}")}  # noqa: S608 - table is internal


def insert_record(con: sqlite3.Connection, row: Mapping[str, Any]) -> bool:
    """Insert one record in its own transaction; False when the config was already there."""
    with transaction(con):
        cur = con.execute(
            f"INSERT OR IGNORE INTO records ({', '.join(_INSERT_COLUMNS)}) VALUES ({', '.join('?' * len(_INSERT_COLUMNS))})",
            [row.get(c) for c in _INSERT_COLUMNS],
        )
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
            "INSERT OR IGNORE INTO repeats (config, top1, loss, kl, seconds, calib_seed, outcomes) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (config, result["top1"], result["loss"], result["kl"], result["seconds"], calib_seed, result.get("outcomes")),
        )


def read_outcomes(con: sqlite3.Connection, table: str = "records") -> dict[str, bytes | None]:
    """{config: per-image outcome blob or None} of the records or the repeats."""
    try:
        return dict(con.execute(f"SELECT config, outcomes FROM {table}").fetchall())  # noqa: S608 - table is internal
    except sqlite3.OperationalError as e:
        raise EmqError(f"not a bench file of format {SCHEMA_VERSION}: {e}") from e


def read_repeats(con: sqlite3.Connection) -> dict[str, dict[str, float | None]]:
    """{config: {top1, loss, kl}} of the calibration repeats."""
    return {r[0]: {"top1": r[1], "loss": r[2], "kl": r[3]} for r in con.execute("SELECT config, top1, loss, kl FROM repeats")}


def read_records(con: sqlite3.Connection) -> list[tuple]:
    try:
        return con.execute(f"SELECT {', '.join(RECORD_COLUMNS)} FROM records ORDER BY idx").fetchall()
    except sqlite3.DatabaseError as e:
        raise EmqError(f"not a bench file: {e}") from e


def compact(path: Path | str) -> None:
    """VACUUM so the shipped file is small and has no journal left behind."""
    with closing(sqlite3.connect(str(path), timeout=30.0, isolation_level=None)) as con:
        con.execute("VACUUM")
