"""Read-only helpers to look inside the SQLite files the tests create.

Every helper opens its own connection (read-only, via a URI) and closes it,
so it never holds a lock or changes the file the tool under test works on.
"""
from __future__ import annotations

import hashlib
import sqlite3
from contextlib import closing
from pathlib import Path
from typing import List, Tuple, Union

PathLike = Union[str, Path]


def connect_ro(db: PathLike) -> sqlite3.Connection:
    path = Path(db).resolve()
    assert path.is_file(), f"{path} does not exist"
    return sqlite3.connect(f"file:{path}?mode=ro", uri=True)


# The tool's note of the schema it left (for `status`'s drift check) and its
# history: part of its record, not of the schema the tests look at.
STATE_TABLE = "schema_migrations_state"
HISTORY_TABLE = "schema_migrations_history"


def tables(db: PathLike) -> List[str]:
    """User tables (and the tracking table), sorted; no sqlite_* tables and
    not the tool's schema note or history."""
    with closing(connect_ro(db)) as conn:
        return sorted(
            r[0] for r in conn.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table'"
                " AND name NOT LIKE 'sqlite_%' AND name NOT IN (?, ?)",
                (STATE_TABLE, HISTORY_TABLE)
            )
        )


def schema(db: PathLike) -> List[Tuple]:
    """Every row of sqlite_master but the tool's schema note and history, sorted."""
    with closing(connect_ro(db)) as conn:
        return sorted(
            conn.execute("SELECT type, name, tbl_name, sql FROM sqlite_master"
                         " WHERE name NOT IN (?, ?)", (STATE_TABLE, HISTORY_TABLE)),
            key=repr,
        )


def tracking_rows(db: PathLike) -> List[Tuple]:
    """(version, name, checksum) of every tracking row, by version; [] when
    there is no tracking table."""
    with closing(connect_ro(db)) as conn:
        exists = conn.execute(
            "SELECT 1 FROM sqlite_master WHERE type='table' AND name='schema_migrations'"
        ).fetchone()
        if not exists:
            return []
        return list(conn.execute(
            "SELECT version, name, checksum FROM schema_migrations ORDER BY CAST(version AS INTEGER)"
        ))


def full_tracking_rows(db: PathLike) -> List[Tuple]:
    with closing(connect_ro(db)) as conn:
        return list(conn.execute(
            "SELECT version, name, checksum, applied_at, duration_ms FROM schema_migrations"
            " ORDER BY CAST(version AS INTEGER)"
        ))


def applied_names(db: PathLike) -> List[str]:
    return [row[1] for row in tracking_rows(db)]


def query(db: PathLike, sql: str, params: tuple = ()) -> List[Tuple]:
    with closing(connect_ro(db)) as conn:
        return list(conn.execute(sql, params))


def create_db(db: PathLike, script: str = "") -> None:
    """Create a SQLite file (optionally running a script in it)."""
    with closing(sqlite3.connect(str(db))) as conn:
        conn.executescript(script or "CREATE TABLE IF NOT EXISTS keep_me(x); ")
        conn.commit()


def expected_checksum(data: bytes) -> str:
    """The checksum rule as specified, written independently of the tool:
    SHA256 of the bytes without a leading UTF-8 BOM and with CRLF as LF."""
    if data[:3] == b"\xef\xbb\xbf":
        data = data[3:]
    return hashlib.sha256(data.replace(b"\r\n", b"\n")).hexdigest()


def sqlite_error(setup: List[str], failing: str) -> str:
    """The message SQLite (this Python's build) gives for `failing` after
    running `setup` on a fresh in-memory database."""
    with closing(sqlite3.connect(":memory:")) as conn:
        for sql in setup:
            conn.execute(sql)
        try:
            conn.execute(failing)
        except sqlite3.Error as exc:
            return str(exc)
    raise AssertionError(f"{failing!r} did not fail")
