"""status and checksums: modified and missing migrations, CRLF and BOM
blindness, and status never writing anything."""
from __future__ import annotations

import hashlib
import re
import sqlite3
from pathlib import Path
from typing import List

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import apply_migrations
from dbhelpers import applied_names, create_db, expected_checksum, tables, tracking_rows

DB = "trading_brain.db"
ORIGINAL = b"-- users\nCREATE TABLE users (\n    id INTEGER PRIMARY KEY,\n    email TEXT\n);\n"


def status_line(out: str, name: str) -> str:
    lines = [line for line in out.splitlines() if re.search(rf"(?<!\w){re.escape(name)}(?!\w)", line)]
    assert len(lines) == 1, f"expected one status line for {name}:\n{out}"
    return lines[0]


def error_lines(err: str) -> List[str]:
    return [line for line in err.splitlines() if line.strip()]


@pytest.fixture
def applied_users(project, run_cli, write_migration) -> Path:
    """0001_create_users applied from ORIGINAL; returns its path."""
    path = write_migration("0001_create_users.sql", ORIGINAL)
    code, _, err = run_cli(["apply"])
    assert code == 0, err
    return path


# --------------------------------------------------------------------------
# 4. Checksums.


def test_recorded_checksum_is_sha256_of_the_file(project, applied_users):
    assert tracking_rows(project / DB) == [
        ("0001", "0001_create_users", hashlib.sha256(ORIGINAL).hexdigest())
    ]


@pytest.mark.parametrize("variant", ["crlf", "bom", "bom+crlf"])
def test_crlf_and_bom_do_not_modify(project, run_cli, write_migration,
                                                            applied_users, variant):
    data = ORIGINAL
    if "crlf" in variant:
        data = data.replace(b"\n", b"\r\n")
    if "bom" in variant:
        data = b"\xef\xbb\xbf" + data
    applied_users.write_bytes(data)
    rows = tracking_rows(project / DB)

    code, out, err = run_cli(["status"])
    assert code == 0, err
    line = status_line(out, "0001_create_users")
    assert "applied" in line.lower() and "modified" not in line.lower()
    assert "Applied: 1, Pending: 0, Modified: 0, Missing: 0" in out

    write_migration("0002_next.sql", "CREATE TABLE next_one (x);\n")
    code, out, err = run_cli(["apply"])
    assert code == 0, err
    assert applied_names(project / DB) == ["0001_create_users", "0002_next"]
    assert tracking_rows(project / DB)[0] == rows[0]


@pytest.mark.parametrize("change", [
    lambda data: data.replace(b"email TEXT", b"email TEXT NOT NULL"),
    lambda data: data + b"-- a trailing comment counts too\n",
    lambda data: data.replace(b"\n", b"\r"),  # bare CR is not CRLF
    lambda data: data.rstrip(b"\n"),
], ids=["sql", "comment", "bare-cr", "final-newline"])
def test_modified_file_blocks_apply(project, run_cli, write_migration,
                                                       applied_users, change):
    applied_users.write_bytes(change(ORIGINAL))
    write_migration("0002_next.sql", "CREATE TABLE next_one (x);\n")

    code, out, err = run_cli(["status"])
    assert code == 0, err
    line = status_line(out, "0001_create_users")
    assert "modified" in line.lower()
    assert "Modified: 1" in out

    code, out, err = run_cli(["apply"])
    assert code == 1
    lines = error_lines(err)
    assert len(lines) == 1 and lines[0].startswith("Error: "), err
    assert "0001_create_users" in lines[0]
    db = project / DB
    assert applied_names(db) == ["0001_create_users"]
    assert "next_one" not in tables(db)


def test_deleted_applied_file_is_missing(project, run_cli, write_migration, applied_users):
    write_migration("0002_next.sql", "CREATE TABLE next_one (x);\n")
    assert run_cli(["apply"])[0] == 0
    applied_users.unlink()

    code, out, err = run_cli(["status"])
    assert code == 0, err
    line = status_line(out, "0001_create_users")
    assert "missing" in line.lower()
    assert "applied" in status_line(out, "0002_next").lower()
    assert "Applied: 1, Pending: 0, Modified: 0, Missing: 1" in out


_TEXT = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\r\ufeff"),
    max_size=200,
)


@settings(max_examples=200, deadline=None)
@given(text=_TEXT, bom=st.booleans(), crlf=st.booleans())
def test_file_checksum_ignores_only_bom_and_crlf(text, bom, crlf):
    lf = text.encode("utf-8")
    data = lf.replace(b"\n", b"\r\n") if crlf else lf
    if bom:
        data = b"\xef\xbb\xbf" + data
    assert apply_migrations.file_checksum(data) == hashlib.sha256(lf).hexdigest()
    # ...and any other byte change shows.
    assert apply_migrations.file_checksum(data + b" ") != hashlib.sha256(lf).hexdigest()


@settings(max_examples=15, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=st.lists(st.sampled_from([
    "CREATE TABLE IF NOT EXISTS u (x);", "-- comment", "", "  ", "INSERT INTO t VALUES ('a\nb');",
    "/* block\ncomment */", "CREATE INDEX IF NOT EXISTS t_x ON t (x);",
]), max_size=8), bom=st.booleans())
def test_applied_then_crlf_converted_stays_applied(tmp_path_factory, run_cli, body, bom):
    # Through the CLI: apply with LF, convert to CRLF (+BOM): still applied.
    root = tmp_path_factory.mktemp("prop")
    (root / "migrations").mkdir()
    text = "\n".join(["CREATE TABLE IF NOT EXISTS t (x);"] + body) + "\n"
    path = root / "migrations" / "0001_prop.sql"
    path.write_bytes(text.encode("utf-8"))
    code, out, err = run_cli(["apply"], cwd=root)
    assert code == 0, err
    assert tracking_rows(root / DB)[0][2] == expected_checksum(text.encode("utf-8"))
    path.write_bytes((b"\xef\xbb\xbf" if bom else b"") + text.replace("\n", "\r\n").encode("utf-8"))
    code, out, err = run_cli(["status"], cwd=root)
    assert code == 0, err
    assert "Applied: 1, Pending: 0, Modified: 0, Missing: 0" in out


# --------------------------------------------------------------------------
# 11. status never writes.


@pytest.mark.parametrize("start", ["missing-db", "no-tracking-table", "tracking-table",
                                   "wal-mode"])
def test_status_creates_nothing(project, run_cli, write_migration, start):
    """status never creates the database file or the tracking table, never
    changes a byte of an existing database, and leaves no -wal or -shm file
    behind (reading a WAL database makes both)."""
    write_migration("0001_a.sql", "CREATE TABLE a (x);\n")
    db = project / DB
    if start in ("tracking-table", "wal-mode"):
        assert run_cli(["apply"])[0] == 0
        write_migration("0002_b.sql", "CREATE TABLE b (x);\n")
    if start == "wal-mode":
        conn = sqlite3.connect(str(db))
        assert conn.execute("PRAGMA journal_mode = wal").fetchone()[0] == "wal"
        conn.close()
    elif start == "no-tracking-table":
        create_db(db, "CREATE TABLE legacy (id INTEGER PRIMARY KEY); INSERT INTO legacy VALUES (1);")
    before = db.read_bytes() if db.exists() else None
    before_files = sorted(p.name for p in project.iterdir())

    code, out, err = run_cli(["status"])
    assert code == 0, err
    assert sorted(p.name for p in project.iterdir()) == before_files  # no db, -journal, -wal
    if before is None:
        assert not db.exists()
        assert "pending" in status_line(out, "0001_a").lower()
        code, out, err = run_cli(["status", "--db-path", "elsewhere.db"])
        assert code == 0, err
        assert not (project / "elsewhere.db").exists()
        return
    assert db.read_bytes() == before
    if start == "no-tracking-table":
        assert "schema_migrations" not in tables(db)
        assert "pending" in status_line(out, "0001_a").lower()
    else:
        assert "applied" in status_line(out, "0001_a").lower()
        assert "pending" in status_line(out, "0002_b").lower()
