"""The command line as scripts and CI see it, through real processes.

`new` (numbering, slugs, header, no overwrite), one JSON document per
command, the exit codes, `apply --dry-run` and `--target`, GitHub Actions
annotations and step summaries, the Makefile, and terminal behaviour
(colour only on a TTY, --quiet, progress lines, the live elapsed-time line,
Ctrl-C).  Terminal tests run the tool under a pseudo-terminal.
"""
from __future__ import annotations

import calendar
import hashlib
import json
import os
import re
import select
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from contextlib import closing
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import pytest

import apply_migrations
from conftest import BUNDLED_MIGRATIONS, ENV_CLEARED, REPO_ROOT, TOOL_PATH
from dbhelpers import applied_names, create_db, query, tables

DB = "trading_brain.db"
ELLIPSIS = "\u2026"
STOPWATCH = "\u23f1\ufe0f"
TIMESTAMP = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ"
STATUS_KEYS = {"database", "database_exists", "migrations_dir", "migrations", "summary", "drift"}
STATUS_MIGRATION_KEYS = {"version", "name", "file", "state", "checksum", "applied_at",
                         "baseline", "last_failure",
                         "duration_ms"}
SUMMARY_KEYS = {"applied", "pending", "modified", "missing", "total"}
ERROR_KEYS = {"type", "message", "migration", "file", "line", "statement", "sql", "exit_code"}
APPLY_KEYS = {"database", "migrations_dir", "dry_run", "single_transaction", "applied",
              "outcomes", "error"}
APPLIED_ITEM_KEYS = {"version", "name", "file", "duration_ms"}


# --------------------------------------------------------------------------
# Helpers


def tool_env(extra: Optional[Dict[str, Optional[str]]] = None) -> Dict[str, str]:
    """The environment run_subprocess gives the tool, for Popen-based runs."""
    environ = dict(os.environ)
    for name in ENV_CLEARED + ("NO_COLOR",):
        environ.pop(name, None)
    environ["PYTHONIOENCODING"] = "utf-8"
    environ["TERM"] = "xterm"
    for key, value in (extra or {}).items():
        if value is None:
            environ.pop(key, None)
        else:
            environ[key] = value
    return environ


def tool_cmd(argv: Sequence[object]) -> List[str]:
    return [sys.executable, str(TOOL_PATH)] + [str(a) for a in argv]


def parse_json(out: str) -> dict:
    """stdout must be exactly one JSON object and nothing else."""
    assert out.strip(), "stdout is empty: expected one JSON document"
    payload = json.loads(out)  # raises on a second document or on any extra text
    assert isinstance(payload, dict), out
    return payload


def snapshot(folder: Path) -> Dict[str, bytes]:
    """Every file below folder with its bytes."""
    return {str(p.relative_to(folder)): p.read_bytes()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def side_files(db: Path) -> List[str]:
    return [s for s in ("-journal", "-wal", "-shm") if Path(str(db) + s).exists()]


def stderr_lines(err: str) -> List[str]:
    return [line for line in err.splitlines() if line.strip()]


def utc_seconds(stamp: str) -> int:
    return calendar.timegm(time.strptime(stamp, "%Y-%m-%dT%H:%M:%SZ"))


class PtyRun:
    """The tool with stdout on a pseudo-terminal (stderr on a pipe), drained by
    a thread so that several runs can go at once."""

    def __init__(self, argv: Sequence[object], cwd: Path,
                 env: Optional[Dict[str, Optional[str]]] = None):
        master, slave = os.openpty()
        try:
            self.proc = subprocess.Popen(
                tool_cmd(argv), cwd=str(cwd), env=tool_env(env),
                stdin=subprocess.DEVNULL, stdout=slave, stderr=subprocess.PIPE)
        finally:
            os.close(slave)
        self._master = master
        self._chunks: List[bytes] = []
        self._err = b""
        self._reader = threading.Thread(target=self._drain, daemon=True)
        self._reader.start()

    def _drain(self) -> None:
        while True:
            try:
                data = os.read(self._master, 65536)
            except OSError:  # EIO: the child closed the terminal
                break
            if not data:
                break
            self._chunks.append(data)

    def result(self, timeout: float = 60) -> Tuple[int, str, str]:
        try:
            _, self._err = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.communicate()
            raise
        finally:
            self._reader.join(timeout=10)
            os.close(self._master)
        out = b"".join(self._chunks).decode("utf-8", "replace").replace("\r\n", "\n")
        return self.proc.returncode, out, self._err.decode("utf-8", "replace")


def run_pty(argv: Sequence[object], cwd: Path,
            env: Optional[Dict[str, Optional[str]]] = None) -> Tuple[int, str, str]:
    return PtyRun(argv, cwd, env).result()


def slow_count(seconds: float) -> int:
    """How far a recursive CTE must count to run about this long here."""
    with closing(sqlite3.connect(":memory:")) as conn:
        conn.set_progress_handler(lambda: False, apply_migrations.PROGRESS_STEPS)
        n = 500000
        started = time.perf_counter()
        conn.execute(f"WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM c"
                     f" WHERE i < {n}) SELECT count(*) FROM c").fetchone()
        elapsed = max(time.perf_counter() - started, 1e-3)
    return max(int(n * seconds / elapsed), 1000000)


def counting_statement(table: str, n: int) -> str:
    return (f"CREATE TABLE {table} AS WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL"
            f" SELECT i + 1 FROM c WHERE i < {n}) SELECT count(*) AS n FROM c;\n")


@pytest.fixture
def four(write_migration):
    """0001_a .. 0004_d, each creating one table."""
    for number, letter in enumerate("abcd", 1):
        write_migration(f"000{number}_{letter}.sql", f"CREATE TABLE t_{letter} (x INTEGER);\n")


FAILING_0002 = (
    "-- a migration that fails on its third statement, line 7\n"
    "CREATE TABLE items (id INTEGER PRIMARY KEY);\n"
    "\n"
    "INSERT INTO items (id) VALUES (1);\n"
    "\n"
    "-- the next one names a table that does not exist\n"
    "INSERT INTO nothing_here\n"
    "  VALUES (2);\n"
)


@pytest.fixture
def failing(write_migration):
    """0001_ok applies; 0002_x fails at statement 3, line 7; 0003_later is never tried."""
    write_migration("0001_ok.sql", "CREATE TABLE ok (x);\n")
    write_migration("0002_x.sql", FAILING_0002)
    write_migration("0003_later.sql", "CREATE TABLE later (x);\n")


# --------------------------------------------------------------------------
# 1. new


def test_new_creates_next_file_with_exact_header_and_prints_path(project, run_subprocess,
                                                                 write_migration):
    write_migration("0001_initial.sql", "CREATE TABLE a (x);\n")
    before = time.time()
    code, out, err = run_subprocess(["new", "Add user indexes!"])
    after = time.time()
    assert code == 0, err
    assert out == "migrations/0002_add_user_indexes.sql\n"
    path = project / "migrations" / "0002_add_user_indexes.sql"
    data = path.read_bytes()
    assert b"\r" not in data
    lines = data.decode("utf-8").split("\n")
    match = re.fullmatch(rf"-- Migration number: 0002 {STOPWATCH} ({TIMESTAMP})", lines[0])
    assert match, lines[0]
    assert int(before) - 1 <= utc_seconds(match.group(1)) <= after + 1
    assert lines[1] == "-- Add user indexes!"
    assert lines[2] == "-- Environment: D1 (Cloudflare SQLite)"
    assert all(not line.strip() for line in lines[3:]), "nothing but the header"
    # the new file is a valid, empty migration
    code, out, err = run_subprocess(["apply"])
    assert code == 0, err
    assert applied_names(project / DB) == ["0001_initial", "0002_add_user_indexes"]


@pytest.mark.parametrize("existing, expected", [
    ([], "0001"),
    (["0001_a.sql", "0002_b.sql", "0005_c.sql"], "0006"),
    (["0003_a.sql", "12_b.sql"], "0013"),
    (["9999_last.sql"], "10000"),
    (["0001_a.sql", "0007_x.SQL"], "0008"),    # misnamed (upper-case .SQL)
    (["0001_a.sql", "0009_.sql"], "0010"),     # misnamed (no description)
], ids=["empty", "gap", "unpadded", "9999", "upper-SQL", "no-description"])
def test_new_numbers_after_highest_present(project, run_cli, write_migration, existing, expected):
    for name in existing:
        write_migration(name, "SELECT 1;\n")
    code, out, err = run_cli(["new", "next"])
    assert code == 0, err
    assert out == f"migrations/{expected}_next.sql\n"
    assert (project / "migrations" / f"{expected}_next.sql").is_file()


def test_new_with_duplicate_numbers_still_picks_the_next(project, run_subprocess, write_migration):
    write_migration("0002_a.sql", "SELECT 1;\n")
    write_migration("2_b.sql", "SELECT 1;\n")
    code, out, err = run_subprocess(["new", "fix numbering"])
    assert code == 0, err
    assert out == "migrations/0003_fix_numbering.sql\n"


def test_new_never_reuses_number_of_dash_named_file(project, run_subprocess, write_migration):
    write_migration("0011_a.sql", "SELECT 1;\n")
    write_migration("0012-add-index.sql", "SELECT 1;\n")
    code, out, err = run_subprocess(["new", "next"])
    assert code == 0, err
    assert out == "migrations/0013_next.sql\n"


@pytest.mark.parametrize("words, slug", [
    (["Add user indexes!"], "add_user_indexes"),
    (["  --Add   user---indexes!!  "], "add_user_indexes"),
    (["add", "user", "indexes"], "add_user_indexes"),
    (["snake__case___name_"], "snake_case_name"),
    (["a-b.c/d:e"], "a_b_c_d_e"),
    (["V2 prices 2026"], "v2_prices_2026"),
    (["Café Ümlaut straße"], "café_ümlaut_straße"),
    (["Добавить индекс"], "добавить_индекс"),
], ids=["example", "runs-and-ends", "several-words", "underscores", "punctuation",
        "digits", "latin-non-ascii", "cyrillic"])
def test_new_slug_rules(project, run_cli, words, slug):
    code, out, err = run_cli(["new"] + words)
    assert code == 0, err
    assert out == f"migrations/0001_{slug}.sql\n"
    text = (project / "migrations" / f"0001_{slug}.sql").read_text(encoding="utf-8")
    assert text.split("\n")[1] == "-- " + " ".join(" ".join(words).split())


@pytest.mark.parametrize("description", ["!!!", "  --- ", "_"])
def test_new_without_letters_or_digits_exits_2(project, run_subprocess, description):
    code, out, err = run_subprocess(["new", description])
    assert code == 2
    assert out == ""
    assert stderr_lines(err)[0].startswith("Error: new: the description"), err
    assert list((project / "migrations").iterdir()) == []


def test_new_creates_missing_migrations_folder(project, run_subprocess):
    (project / "migrations").rmdir()
    code, out, err = run_subprocess(["new", "first"])
    assert code == 0, err
    assert out == "migrations/0001_first.sql\n"
    assert (project / "migrations" / "0001_first.sql").is_file()
    code, out, err = run_subprocess(["new", "--migrations-dir", "db/deep/migs", "other"])
    assert code == 0, err
    assert out == os.path.join("db", "deep", "migs", "0001_other.sql") + "\n"
    assert (project / "db" / "deep" / "migs" / "0001_other.sql").is_file()


@pytest.mark.parametrize("folder", ["afile", "afile/sub"])
def test_new_says_when_the_folder_cannot_be_made(project, run_subprocess, folder):
    (project / "afile").write_text("not a folder\n")
    code, out, err = run_subprocess(["new", "--migrations-dir", folder, "first"])
    assert code == 2, err
    assert stderr_lines(err) == [f"Error: Cannot create the migrations folder {folder}: "
                                 + ("File exists" if folder == "afile" else "Not a directory")]
    assert out == "" and (project / "afile").read_text() == "not a folder\n"


def test_new_counts_ascii_digits_only(project, run_subprocess, write_migration):
    write_migration("0001_a.sql", "")
    write_migration("\u0663\u0663_arabic_digits.sql", "")  # apply ignores it
    code, out, err = run_subprocess(["new", "next"])
    assert code == 0, err
    assert out == "migrations/0002_next.sql\n"


def test_new_never_overwrites_a_file_created_meanwhile(project, run_cli, write_migration,
                                                       monkeypatch):
    """Another process creates the very file new chose, after new numbered it
    (simulated from inside the timestamp call, which comes between the two)."""
    write_migration("0001_a.sql", "SELECT 1;\n")
    theirs = b"-- written by someone else\nCREATE TABLE theirs (x);\n"
    target = project / "migrations" / "0002_add_user_indexes.sql"

    def racing_clock() -> str:
        if not target.exists():
            target.write_bytes(theirs)
        return "2026-11-24T16:10:00Z"

    monkeypatch.setattr(apply_migrations, "utc_now", racing_clock)
    code, out, err = run_cli(["new", "Add user indexes!"])
    assert target.read_bytes() == theirs, "new overwrote another file"
    if code == 0:  # the clock ran before numbering: it must have chosen another number
        assert out.strip() != "migrations/0002_add_user_indexes.sql"
    else:
        assert code == 1
        assert out == ""
        assert stderr_lines(err) == [
            "Error: migrations/0002_add_user_indexes.sql already exists; not overwriting it"]
        assert sorted(p.name for p in target.parent.iterdir()) == [
            "0001_a.sql", "0002_add_user_indexes.sql"]


def test_new_with_overlong_description_fails_cleanly(project, run_subprocess):
    code, out, err = run_subprocess(["new", "x" * 300])
    assert "Traceback" not in err
    if code != 0:
        assert stderr_lines(err)[0].startswith("Error: "), err


def test_new_json_and_quiet(project, run_subprocess):
    code, out, err = run_subprocess(["new", "--json", "Add trade tags"])
    assert code == 0, err
    assert parse_json(out) == {"file": "migrations/0001_add_trade_tags.sql",
                               "version": "0001", "name": "0001_add_trade_tags"}
    code, out, err = run_subprocess(["new", "--quiet", "more"])
    assert code == 0, err
    assert out == "" and err == ""
    assert (project / "migrations" / "0002_more.sql").is_file()
    code, out, err = run_subprocess(["new", "--json", "!!!"])
    assert code == 2
    payload = parse_json(out)
    assert set(payload) == {"error"}
    assert payload["error"]["type"] == "ConfigurationError"
    assert payload["error"]["exit_code"] == 2


# --------------------------------------------------------------------------
# 2. JSON


def test_status_json_all_four_states(project, run_subprocess, write_migration):
    write_migration("0001_a.sql", "CREATE TABLE a (x);\n")
    write_migration("0002_b.sql", "CREATE TABLE b (x);\n")
    gone = write_migration("0003_c.sql", "CREATE TABLE c (x);\n")
    gone_checksum = hashlib.sha256(gone.read_bytes()).hexdigest()
    code, _, err = run_subprocess(["apply"])
    assert code == 0, err
    changed = write_migration("0002_b.sql", "CREATE TABLE b (x, y);\n")
    gone.unlink()
    pending = write_migration("0004_d.sql", "CREATE TABLE d (x);\n")
    write_migration("notes.sql", "-- not a migration\n")  # a warning, on stderr

    code, out, err = run_subprocess(["status", "--json"])
    assert code == 0, err
    assert "Warning: Ignoring migrations/notes.sql" in err
    payload = parse_json(out)
    assert set(payload) == STATUS_KEYS
    assert payload["database"] == DB
    assert payload["database_exists"] is True
    assert payload["migrations_dir"] == "migrations"
    assert payload["summary"] == {"applied": 1, "pending": 1, "modified": 1, "missing": 1,
                                  "total": 4}
    rows = payload["migrations"]
    assert [set(r) for r in rows] == [STATUS_MIGRATION_KEYS] * 4
    by_state = {r["state"]: r for r in rows}
    assert [r["name"] for r in rows] == ["0001_a", "0002_b", "0003_c", "0004_d"]
    assert [r["version"] for r in rows] == ["0001", "0002", "0003", "0004"]
    applied, modified = by_state["applied"], by_state["modified"]
    missing, pend = by_state["missing"], by_state["pending"]
    assert applied["file"] == "migrations/0001_a.sql"
    assert re.fullmatch(TIMESTAMP, applied["applied_at"])
    assert isinstance(applied["duration_ms"], float)
    assert modified["name"] == "0002_b"
    assert modified["checksum"] == hashlib.sha256(changed.read_bytes()).hexdigest()
    assert modified["applied_at"] is not None and modified["duration_ms"] is not None
    assert missing["name"] == "0003_c" and missing["file"] is None
    assert missing["checksum"] == gone_checksum
    assert missing["applied_at"] is not None
    assert pend["name"] == "0004_d" and pend["file"] == "migrations/0004_d.sql"
    assert pend["checksum"] == hashlib.sha256(pending.read_bytes()).hexdigest()
    assert pend["applied_at"] is None and pend["duration_ms"] is None


def test_status_json_without_database(project, run_subprocess, write_migration):
    write_migration("0001_a.sql", "CREATE TABLE a (x);\n")
    code, out, err = run_subprocess(["status", "--json", "--db-path", "nowhere.db"])
    assert code == 0, err
    payload = parse_json(out)
    assert payload["database"] == "nowhere.db"
    assert payload["database_exists"] is False
    assert payload["summary"] == {"applied": 0, "pending": 1, "modified": 0, "missing": 0,
                                  "total": 1}
    assert not (project / "nowhere.db").exists()


def test_apply_json_success(project, run_subprocess, write_migration):
    write_migration("0001_a.sql", "CREATE TABLE a (x);\n")
    write_migration("0002_b.sql", "CREATE TABLE b (x);\n")
    write_migration("readme.sql", "-- misnamed\n")
    code, out, err = run_subprocess(["apply", "--json"])
    assert code == 0, err
    assert "Warning:" in err
    payload = parse_json(out)
    assert set(payload) == APPLY_KEYS
    assert payload["database"] == DB and payload["migrations_dir"] == "migrations"
    assert payload["dry_run"] is False and payload["single_transaction"] is False
    assert payload["error"] is None
    assert [set(a) for a in payload["applied"]] == [APPLIED_ITEM_KEYS] * 2
    assert [(a["version"], a["name"], a["file"]) for a in payload["applied"]] == [
        ("0001", "0001_a", "migrations/0001_a.sql"), ("0002", "0002_b", "migrations/0002_b.sql")]
    assert all(isinstance(a["duration_ms"], (int, float)) for a in payload["applied"])
    assert [(o["name"], o["result"]) for o in payload["outcomes"]] == [
        ("0001_a", "applied"), ("0002_b", "applied")]
    # nothing left: an empty list
    code, out, err = run_subprocess(["apply", "--json"])
    assert code == 0, err
    assert parse_json(out)["applied"] == []


def test_apply_json_failure(project, run_subprocess, failing):
    code, out, err = run_subprocess(["apply", "--json"])
    assert code == 1
    payload = parse_json(out)
    assert set(payload) == APPLY_KEYS
    assert [a["name"] for a in payload["applied"]] == ["0001_ok"]
    assert [(o["name"], o["result"]) for o in payload["outcomes"]] == [
        ("0001_ok", "applied"), ("0002_x", "failed")]
    error = payload["error"]
    assert set(error) == ERROR_KEYS
    assert error["type"] == "MigrationFailed"
    assert error["migration"] == "0002_x"
    assert error["file"] == "migrations/0002_x.sql"
    assert error["line"] == 7
    assert error["statement"] == 3
    assert error["sql"] == "INSERT INTO nothing_here\n  VALUES (2);"
    assert error["exit_code"] == 1
    assert error["message"].startswith("Failed to apply migration 0002_x: no such table")
    assert "(0002_x.sql, statement 3, line 7)" in error["message"]
    assert "Error: Failed to apply migration 0002_x" in err
    assert applied_names(project / DB) == ["0001_ok"]


def test_rollback_json(project, run_subprocess, write_migration):
    write_migration("0001_a.sql", "CREATE TABLE a (x);\n")
    write_migration("0002_b.sql", "CREATE TABLE b (x);\nCREATE TABLE b2 (x);\n")
    write_migration("0002_b.sql", "DROP TABLE b2;\nDROP TABLE b;\n", folder="migrations/down")
    assert run_subprocess(["apply"])[0] == 0
    code, out, err = run_subprocess(["rollback", "--json"])
    assert code == 0, err
    assert parse_json(out) == {
        "database": DB, "rolled_back": {"version": "0002", "name": "0002_b"},
        "result": "rolled back", "computed": False, "notes": [],
        "down_script": os.path.join("migrations", "down", "0002_b.sql"),
        "statements": 2, "schema_changed": True}
    assert tables(project / DB) == ["a", "schema_migrations"]
    # No down script: computed from the schema before it.
    code, out, err = run_subprocess(["rollback", "--json", "--version", "0001_a.sql"])
    assert code == 0, err
    assert parse_json(out) == {
        "database": DB, "rolled_back": {"version": "0001", "name": "0001_a"},
        "result": "rolled back", "computed": True, "notes": [], "down_script": None,
        "statements": 1, "schema_changed": True}
    assert tables(project / DB) == ["schema_migrations"]
    code, out, err = run_subprocess(["rollback", "--json"])
    assert code == 1
    payload = parse_json(out)
    assert set(payload) == {"error"} and set(payload["error"]) == ERROR_KEYS
    assert payload["error"]["exit_code"] == 1


def test_init_json(project, run_subprocess):
    code, out, err = run_subprocess(["init", "--json"])
    assert code == 0, err
    assert parse_json(out) == {"database": DB, "table": "schema_migrations", "created": True,
                               "recorded_for_wrangler": []}
    code, out, err = run_subprocess(["init", "--json"])
    assert code == 0, err
    assert parse_json(out) == {"database": DB, "table": "schema_migrations", "created": False,
                               "recorded_for_wrangler": []}


def test_check_json(project, run_subprocess, write_migration):
    write_migration("0001_a.sql", "CREATE TABLE a (x);\n")
    code, out, err = run_subprocess(["check", "--json"])
    assert code == 0, err
    assert parse_json(out) == {"migrations_dir": "migrations", "database": None, "findings": [],
                               "summary": {"files": 1, "errors": 0, "warnings": 0}}
    write_migration("0002_b.sql", "CREATE TABLE b (x);\n\nCOMMIT;\n")
    code, out, err = run_subprocess(["check", "--json", "--db-path", DB],
                                    env={"GITHUB_ACTIONS": "true"})
    assert code == 1
    payload = parse_json(out)
    assert set(payload) == {"migrations_dir", "database", "findings", "summary"}
    assert payload["database"] == DB
    assert payload["summary"] == {"files": 2, "errors": 1, "warnings": 0}
    assert payload["findings"] == [{
        "severity": "error", "path": "migrations/0002_b.sql", "line": 3,
        "code": "transaction-statement", "message": payload["findings"][0]["message"]}]
    assert "COMMIT" in payload["findings"][0]["message"]
    assert "::error file=migrations/0002_b.sql,line=3," in err  # annotation: stderr


@pytest.mark.parametrize("argv", [
    ["status", "--json", "--env", "production"],
    ["apply", "--json", "--env", "production"],
    ["init", "--json", "--env", "production"],
    ["rollback", "--json", "--env", "production"],
    ["check", "--json", "--env", "production"],
], ids=["status", "apply", "init", "rollback", "check"])
def test_json_configuration_error(project, run_subprocess, write_migration, argv):
    write_migration("0001_a.sql", "CREATE TABLE a (x);\n")
    before = snapshot(project)
    code, out, err = run_subprocess(argv, env={"D1_DATABASE_PATH": None})
    assert code == 2
    payload = parse_json(out)
    assert "error" in payload
    error = payload["error"]
    assert set(error) == ERROR_KEYS
    assert error["type"] == "ConfigurationError"
    assert error["exit_code"] == 2
    assert error["message"].startswith("D1_DATABASE_PATH is not set")
    assert error["migration"] is None and error["file"] is None and error["line"] is None
    assert error["statement"] is None and error["sql"] is None
    assert set(payload) - {"error"} <= {"database", "migrations_dir", "dry_run",
                                        "single_transaction", "applied"}
    assert "Error: D1_DATABASE_PATH is not set" in err
    assert snapshot(project) == before


def test_json_stdout_stays_pure_with_warnings_annotations_and_verbose(project, run_subprocess,
                                                                      failing, write_migration):
    write_migration("add_index.sql", "-- misnamed\n")
    env = {"GITHUB_ACTIONS": "true"}
    code, out, err = run_subprocess(["apply", "--json", "--verbose"], env=env)
    assert code == 1
    payload = parse_json(out)
    assert payload["error"]["migration"] == "0002_x"
    assert "Warning: Ignoring migrations/add_index.sql" in err
    assert "::error file=migrations/0002_x.sql,line=7,title=Migration failed::" in err
    assert "0001_ok statement 1 (line 1)" in err  # --verbose log: stderr
    code, out, err = run_subprocess(["status", "--json", "--verbose"], env=env)
    assert code == 0, err
    assert parse_json(out)["summary"]["pending"] == 2
    assert "Warning: Ignoring migrations/add_index.sql" in err


# --------------------------------------------------------------------------
# 3. Exit codes


def test_exit_0_on_success_and_nothing_to_do(project, run_subprocess, four):
    for argv in (["init"], ["status"], ["apply"], ["apply"], ["status", "--exit-code"],
                 ["check"], ["rollback"], ["status"]):
        code, out, err = run_subprocess(argv)
        assert code == 0, (argv, err)
    assert "Nothing to apply" in run_subprocess(["apply", "--target", "0003"])[1]


def test_exit_1_failed_migration_and_failed_check(project, run_subprocess, failing):
    code, out, err = run_subprocess(["apply"])
    assert code == 1
    assert stderr_lines(err) == [stderr_lines(err)[0]]
    assert stderr_lines(err)[0].startswith("Error: Failed to apply migration 0002_x")
    code, out, err = run_subprocess(["check"])
    assert code == 0, out  # failing SQL is not a D1 finding
    (project / "migrations" / "0004_tx.sql").write_text("BEGIN;\nSELECT 1;\n")
    code, out, err = run_subprocess(["check"])
    assert code == 1
    assert "migrations/0004_tx.sql:1: error:" in out


@pytest.mark.parametrize("state", ["applied", "pending", "modified", "missing"])
def test_status_exit_code(project, run_subprocess, write_migration, state):
    write_migration("0001_a.sql", "CREATE TABLE a (x);\n")
    second = write_migration("0002_b.sql", "CREATE TABLE b (x);\n")
    assert run_subprocess(["apply"])[0] == 0
    if state == "pending":
        write_migration("0003_c.sql", "CREATE TABLE c (x);\n")
    elif state == "modified":
        write_migration("0002_b.sql", "CREATE TABLE b (x, y);\n")
    elif state == "missing":
        second.unlink()
    code, out, err = run_subprocess(["status", "--exit-code"])
    assert code == (0 if state == "applied" else 1), out + err
    assert run_subprocess(["status"])[0] == 0  # without --exit-code: 0 anyway


@pytest.mark.parametrize("argv", [
    ["apply", "--bogus"],
    ["status", "--env", "staging"],
    ["apply", "--lock-timeout", "soon"],
    [],
    ["frobnicate"],
], ids=["unknown-option", "bad-choice", "bad-number", "no-command", "unknown-command"])
def test_exit_2_bad_option(project, run_subprocess, argv):
    code, out, err = run_subprocess(argv)
    assert code == 2
    assert "usage:" in err
    assert not (project / DB).exists()


def test_bad_option_with_json_gives_an_error_object(project, run_subprocess):
    code, out, err = run_subprocess(["status", "--json", "--env", "staging"])
    assert code == 2
    assert "usage:" in err
    error = json.loads(out)["error"]
    assert "invalid choice: 'staging'" in error["message"]
    assert error["exit_code"] == 2


@pytest.mark.parametrize("value,said", [(None, "not set"), ("", "empty"), ("  ", "empty")])
@pytest.mark.parametrize("command", ["init", "status", "apply", "rollback"])
def test_exit_2_missing_d1_database_path(project, run_subprocess, four, command, value, said):
    code, out, err = run_subprocess([command, "--env", "production"],
                                    env={"D1_DATABASE_PATH": value})
    assert code == 2
    assert stderr_lines(err) == [
        f"Error: D1_DATABASE_PATH is {said}: --env production reads the database path"
        " from it. Set D1_DATABASE_PATH=/path/to/db or pass --db-path."]
    assert not (project / DB).exists()


@pytest.mark.parametrize("kind", ["directory", "not-sqlite", "no-folder"])
@pytest.mark.parametrize("command", ["init", "apply", "status", "rollback"])
def test_exit_2_cannot_open_database(project, run_subprocess, four, command, kind):
    if kind == "directory":
        db = project / "db_dir"
        db.mkdir()
    elif kind == "not-sqlite":
        db = project / "notdb.db"
        db.write_bytes(b"this is not a SQLite database, just text\n" * 200)
    else:
        db = project / "no" / "such" / "folder" / "x.db"
    code, out, err = run_subprocess([command, "--db-path", db])
    if command == "status" and kind == "no-folder":
        assert code == 0  # status only reads: a missing database is all pending
        return
    if command == "rollback" and kind == "no-folder":
        assert code == 1  # nothing applied to a database that does not exist
        return
    assert code == 2, (out, err)
    assert stderr_lines(err)[0].startswith("Error: Failed to connect to database: "), err
    assert "Traceback" not in err


@pytest.mark.parametrize("command", ["apply", "status", "check"])
def test_exit_2_missing_migrations_folder(project, run_subprocess, command):
    code, out, err = run_subprocess([command, "--migrations-dir", "nope"])
    assert code == 2
    assert "nope" in err and stderr_lines(err)[0].startswith("Error: ")
    assert not (project / DB).exists()


@pytest.mark.parametrize("signum, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)],
                         ids=["SIGINT", "SIGTERM"])
def test_interrupt_long_migration(project, write_migration, signum, code):
    write_migration("0001_quick.sql", "CREATE TABLE quick (x);\n")
    write_migration("0002_long.sql",
                    "CREATE TABLE first_part (x);\n" + counting_statement("slow", 100000000))
    proc = subprocess.Popen(tool_cmd(["apply", "--verbose"]), cwd=str(project), env=tool_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        seen = b""
        deadline = time.monotonic() + 20
        fd = proc.stderr.fileno()  # unbuffered reads: select() must see what is pending
        while b"0002_long statement 1 " not in seen:  # statement 2, the long one, runs now
            remaining = deadline - time.monotonic()
            assert remaining > 0, seen
            if select.select([fd], [], [], remaining)[0]:
                chunk = os.read(fd, 65536)
                assert chunk, seen  # the process ended early
                seen += chunk
        time.sleep(0.3)
        started = time.monotonic()
        proc.send_signal(signum)
        out, err = proc.communicate(timeout=20)
        stopped_in = time.monotonic() - started
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    err_text = (seen + err).decode("utf-8", "replace")
    assert proc.returncode == code, err_text
    assert "Interrupted: 0002_long rolled back; 1 migration applied in this run" in err_text
    assert stopped_in < 5
    assert applied_names(project / DB) == ["0001_quick"]
    assert tables(project / DB) == ["quick", "schema_migrations"]
    assert side_files(project / DB) == []


# --------------------------------------------------------------------------
# 4. apply --dry-run and --target


SPILL = ("CREATE TABLE blobs (b BLOB);\n"
         "INSERT INTO blobs SELECT randomblob(1000) FROM (WITH RECURSIVE c(i) AS"
         " (SELECT 1 UNION ALL SELECT i + 1 FROM c WHERE i < 8000) SELECT i FROM c);\n")


def test_dry_run_with_pending_changes_nothing(project, run_subprocess, write_migration):
    write_migration("0001_a.sql", "CREATE TABLE a (x);\n")
    assert run_subprocess(["apply"])[0] == 0
    write_migration("0002_b.sql", "CREATE TABLE b (x);\nINSERT INTO b VALUES (1);\n")
    write_migration("0003_spill.sql", SPILL)  # 8 MB: more than SQLite's page cache
    db = project / DB
    before = snapshot(project)

    code, out, err = run_subprocess(["apply", "--dry-run", "--json"])
    assert code == 0, err
    payload = parse_json(out)
    assert payload["dry_run"] is True and payload["error"] is None
    assert [a["name"] for a in payload["applied"]] == ["0002_b", "0003_spill"]
    assert snapshot(project) == before
    assert side_files(db) == []

    code, out, err = run_subprocess(["apply", "--dry-run"])
    assert code == 0, err
    lines = out.splitlines()
    assert re.fullmatch(rf"\[1/2\] 0002_b {ELLIPSIS} \d+\.\d (ms|s) \(dry run\)", lines[0]), out
    assert re.fullmatch(rf"\[2/2\] 0003_spill {ELLIPSIS} \d+\.\d (ms|s) \(dry run\)", lines[1]), out
    assert lines[2] == f"Dry run: 2 migrations would apply cleanly to {DB}; nothing was changed."
    assert snapshot(project) == before
    assert side_files(db) == []

    # a real run then does what the dry run reported
    code, out, err = run_subprocess(["apply"])
    assert code == 0, err
    assert applied_names(db) == ["0001_a", "0002_b", "0003_spill"]
    assert snapshot(project)[DB] != before[DB]


def test_dry_run_failure_exits_1_and_changes_nothing(project, run_subprocess, write_migration):
    write_migration("0001_base.sql", "CREATE TABLE base (x);\n")
    assert run_subprocess(["apply"])[0] == 0
    write_migration("0002_ok.sql", "CREATE TABLE ok (x);\n")
    write_migration("0003_x.sql", FAILING_0002)
    write_migration("0004_later.sql", "CREATE TABLE later (x);\n")
    db = project / DB
    before = snapshot(project)

    code, out, err = run_subprocess(["apply", "--dry-run"])
    assert code == 1
    assert re.fullmatch(rf"\[1/3\] 0002_ok {ELLIPSIS} \d+\.\d (ms|s) \(dry run\)",
                        out.splitlines()[0]), out
    assert len(out.splitlines()) == 1, out
    assert stderr_lines(err) == [
        "Error: Failed to apply migration 0003_x: no such table: nothing_here"
        " (0003_x.sql, statement 3, line 7); dry run: nothing was changed"]
    assert snapshot(project) == before and side_files(db) == []

    code, out, err = run_subprocess(["apply", "--dry-run", "--json"])
    assert code == 1
    payload = parse_json(out)
    assert payload["dry_run"] is True
    assert [a["name"] for a in payload["applied"]] == ["0002_ok"]
    assert payload["error"]["file"] == "migrations/0003_x.sql"
    assert payload["error"]["line"] == 7
    assert payload["error"]["message"].endswith("dry run: nothing was changed")
    assert snapshot(project) == before and side_files(db) == []

    # the real run gives the same exit code, and does change the database
    code, out, err = run_subprocess(["apply"])
    assert code == 1
    assert applied_names(db) == ["0001_base", "0002_ok"]


@pytest.mark.parametrize("fails", [False, True], ids=["clean", "failing"])
def test_dry_run_on_missing_database_creates_nothing(project, run_subprocess, write_migration,
                                                     fails):
    write_migration("0001_a.sql", "CREATE TABLE a (x);\n")
    write_migration("0002_b.sql", "INSERT INTO nothing_here VALUES (1);\n" if fails
                    else "CREATE TABLE b (x);\n")
    before = snapshot(project)
    code, out, err = run_subprocess(["apply", "--dry-run"])
    assert code == (1 if fails else 0), err
    assert "[1/2] 0001_a " in out and "(dry run)" in out
    code, out, err = run_subprocess(["apply", "--dry-run", "--json", "--db-path", "other.db"])
    assert code == (1 if fails else 0), err
    assert [a["name"] for a in parse_json(out)["applied"]] == (
        ["0001_a"] if fails else ["0001_a", "0002_b"])
    assert snapshot(project) == before
    assert not (project / DB).exists() and not (project / "other.db").exists()
    assert side_files(project / DB) == [] and side_files(project / "other.db") == []


def test_dry_run_gives_a_real_runs_exit_code_when_the_folder_is_missing(project, run_subprocess,
                                                                       write_migration):
    write_migration("0001_a.sql", "CREATE TABLE a (x);\n")
    for extra in ([], ["--dry-run"]):
        code, out, err = run_subprocess(["apply", "--db-path", "nodir/x.db", *extra])
        assert code == 2, (extra, out, err)
        assert stderr_lines(err) == ["Error: Failed to connect to database: the folder nodir"
                                     " of database nodir/x.db does not exist"]
    assert not (project / "nodir").exists()


@pytest.mark.skipif(os.name != "posix", reason="a POSIX path")
def test_a_path_with_a_leading_double_slash_is_a_path(project, run_subprocess, write_migration):
    write_migration("0001_a.sql", "CREATE TABLE a (x);\n")
    path = "/" + str(project / "x.db")  # POSIX: //tmp/... is /tmp/...
    code, out, err = run_subprocess(["apply", "--db-path", path])
    assert code == 0, err
    assert applied_names(project / "x.db") == ["0001_a"]
    code, out, err = run_subprocess(["status", "--db-path", path])
    assert code == 0 and "Applied: 1, Pending: 0" in out, (out, err)


def test_single_transaction_failure_lists_nothing_as_applied(project, run_subprocess,
                                                             write_migration):
    write_migration("0001_a.sql", "CREATE TABLE a (x);\n")
    write_migration("0002_b.sql", "CREATE TABLE b (x);\n")
    write_migration("0003_x.sql", "INSERT INTO nothing_here VALUES (1);\n")
    code, out, err = run_subprocess(["apply", "--single-transaction", "--json"])
    assert code == 1, err
    payload = parse_json(out)
    assert payload["applied"] == []
    assert [a["name"] for a in payload["rolled_back"]] == ["0001_a", "0002_b"]
    assert payload["error"]["message"].endswith(
        "rolled back the whole run (--single-transaction): nothing was applied")
    assert applied_names(project / DB) == []


def test_dry_run_on_wal_database_leaves_no_side_files(project, run_subprocess, write_migration):
    db = project / DB
    with closing(sqlite3.connect(str(db))) as conn:
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("CREATE TABLE keep_me (x)")
        conn.commit()
    assert side_files(db) == []
    write_migration("0001_a.sql", "CREATE TABLE a (x);\n")
    write_migration("0002_spill.sql", SPILL)
    before = snapshot(project)
    code, out, err = run_subprocess(["apply", "--dry-run"])
    assert code == 0, err
    assert "Dry run: 2 migrations would apply cleanly" in out
    assert snapshot(project) == before
    assert side_files(db) == []


@pytest.mark.parametrize("target", ["0002", "2", "0002_b", "0002_b.sql"])
def test_apply_target(project, run_subprocess, four, target):
    code, out, err = run_subprocess(["apply", "--target", target])
    assert code == 0, err
    assert applied_names(project / DB) == ["0001_a", "0002_b"]
    assert "[2/2] 0002_b" in out
    code, out, err = run_subprocess(["apply", "--target", "0003_c.sql", "--json"])
    assert code == 0, err
    assert [a["name"] for a in parse_json(out)["applied"]] == ["0003_c"]
    assert applied_names(project / DB) == ["0001_a", "0002_b", "0003_c"]


@pytest.mark.parametrize("target", ["0009", "0002_nope", "9_b.sql"])
def test_apply_unknown_target_exits_2(project, run_subprocess, four, target):
    code, out, err = run_subprocess(["apply", "--target", target])
    assert code == 2
    assert stderr_lines(err) == [
        f"Error: --target {target}: no migration in migrations has that version or name"]
    assert not (project / DB).exists() or applied_names(project / DB) == []
    code, out, err = run_subprocess(["apply", "--target", target, "--json"])
    assert code == 2
    assert parse_json(out)["error"]["type"] == "ConfigurationError"


# --------------------------------------------------------------------------
# 5. GitHub Actions


def annotation_lines(text: str) -> List[str]:
    return [line for line in text.splitlines() if line.startswith("::")]


def test_github_annotation_on_failure(project, run_subprocess, failing):
    code, out, err = run_subprocess(["apply"], env={"GITHUB_ACTIONS": "true"})
    assert code == 1
    message = ("Failed to apply migration 0002_x: no such table: nothing_here"
               " (0002_x.sql, statement 3, line 7)")
    assert annotation_lines(out) == [
        f"::error file=migrations/0002_x.sql,line=7,title=Migration failed::{message}"]
    assert annotation_lines(err) == []
    assert stderr_lines(err) == [f"Error: {message}"]


def test_github_annotation_path_relative_to_workspace(project, run_subprocess, failing):
    env = {"GITHUB_ACTIONS": "true", "GITHUB_WORKSPACE": str(project.parent)}
    code, out, err = run_subprocess(["apply", "--migrations-dir", project / "migrations"],
                                    env=env)
    assert code == 1
    lines = annotation_lines(out)
    assert len(lines) == 1
    assert lines[0].startswith(
        f"::error file={project.name}/migrations/0002_x.sql,line=7,title=Migration failed::")
    # without GITHUB_WORKSPACE: relative to the working directory, also for an absolute dir
    code, out, err = run_subprocess(["apply", "--migrations-dir", project / "migrations"],
                                    env={"GITHUB_ACTIONS": "true"})
    assert annotation_lines(out)[0].startswith("::error file=migrations/0002_x.sql,line=7,")


def test_github_annotation_escaping(project, run_subprocess, write_migration):
    write_migration("0001_a,b:c.sql",
                    "CREATE TABLE a (x);\nINSERT INTO \"50%\r\nof it\" VALUES (1);\n")
    code, out, err = run_subprocess(["apply"], env={"GITHUB_ACTIONS": "true"})
    assert code == 1
    lines = annotation_lines(out)
    assert len(lines) == 1, out
    assert lines[0] == (
        "::error file=migrations/0001_a%2Cb%3Ac.sql,line=2,title=Migration failed::"
        "Failed to apply migration 0001_a,b:c: no such table: 50%25%0D%0Aof it"
        " (0001_a,b:c.sql, statement 2, line 2)")
    assert "\r" not in out


def test_github_annotation_with_json_goes_to_stderr(project, run_subprocess, failing):
    code, out, err = run_subprocess(["apply", "--json"], env={"GITHUB_ACTIONS": "true"})
    assert code == 1
    assert parse_json(out)["error"]["line"] == 7
    assert "::" not in out
    assert [line for line in annotation_lines(err)] == [
        "::error file=migrations/0002_x.sql,line=7,title=Migration failed::Failed to apply"
        " migration 0002_x: no such table: nothing_here (0002_x.sql, statement 3, line 7)"]


def test_github_check_annotation_path_relative_to_workspace(project, run_subprocess,
                                                            write_migration):
    write_migration("0001_a.sql", "CREATE TABLE a (x);\nBEGIN;\n")
    env = {"GITHUB_ACTIONS": "true", "GITHUB_WORKSPACE": str(project.parent)}
    code, out, err = run_subprocess(["check", "--migrations-dir", project / "migrations"],
                                    env=env)
    assert code == 1
    assert annotation_lines(out)[0].startswith(
        f"::error file={project.name}/migrations/0001_a.sql,line=2,")


def markdown_tables(text: str) -> List[List[str]]:
    """Each run of lines starting with '|' (CR, LF or CRLF ends a line)."""
    found: List[List[str]] = []
    current: List[str] = []
    for line in text.splitlines() + [""]:
        if line.startswith("|"):
            current.append(line)
        elif current:
            found.append(current)
            current = []
    return found


def test_github_step_summary_appends_tables(project, tmp_path, run_subprocess, write_migration):
    write_migration("0001_a.sql", "CREATE TABLE a (x);\n")
    write_migration("0002_b.sql", "CREATE TABLE b (x);\n")
    summary = tmp_path / "summary.md"
    summary.write_text("## Earlier step\n\n")
    env = {"GITHUB_STEP_SUMMARY": str(summary)}
    assert run_subprocess(["apply"], env=env)[0] == 0
    assert run_subprocess(["status"], env=env)[0] == 0
    text = summary.read_text(encoding="utf-8")
    assert text.startswith("## Earlier step\n\n")
    assert f"### Migrations on {DB}: 2 migrations applied" in text
    assert f"### Migration status of {DB}" in text
    applied, status = markdown_tables(text)
    assert applied[0] == "| Version | Name | Result | Duration |"
    assert re.fullmatch(r"\|(---\|){4}", applied[1])
    assert [row.split(" | ")[:3] for row in applied[2:]] == [
        ["| 0001", "0001_a", "applied"], ["| 0002", "0002_b", "applied"]]
    assert status[0] == "| Version | Name | State | Applied at |"
    assert re.fullmatch(r"\|(---\|){4}", status[1])
    assert len(status) == 4
    for row, name in zip(status[2:], ["0001_a", "0002_b"]):
        assert re.fullmatch(rf"\| {name[:4]} \| {name} \| applied \| {TIMESTAMP} \|", row), row

    # a second run appends again (a status with one pending row), nothing is overwritten
    write_migration("0003_c.sql", "CREATE TABLE c (x);\n")
    assert run_subprocess(["status"], env=env)[0] == 0
    again = summary.read_text(encoding="utf-8")
    assert again.startswith(text)
    last = markdown_tables(again)[-1]
    assert len(last) == 5 and last[-1] == "| 0003 | 0003_c | pending |  |"


def test_github_step_summary_on_failure(project, tmp_path, run_subprocess, failing):
    summary = tmp_path / "summary.md"
    code, out, err = run_subprocess(["apply"], env={"GITHUB_STEP_SUMMARY": str(summary)})
    assert code == 1
    table = markdown_tables(summary.read_text(encoding="utf-8"))[0]
    assert table[2].startswith("| 0001 | 0001_ok | applied | ")
    assert table[3].startswith("| 0002 | 0002_x | FAILED | Failed to apply migration 0002_x")
    assert len(table) == 4


def test_github_step_summary_row_survives_cr_in_message(project, tmp_path, run_subprocess,
                                                        write_migration):
    write_migration("0001_a.sql", "INSERT INTO \"x\r\ny\" VALUES (1);\n")
    summary = tmp_path / "summary.md"
    assert run_subprocess(["apply"], env={"GITHUB_STEP_SUMMARY": str(summary)})[0] == 1
    rows = markdown_tables(summary.read_text(encoding="utf-8"))[0]
    assert all(row.endswith("|") for row in rows), rows


@pytest.mark.parametrize("env", [
    {},
    {"GITHUB_ACTIONS": "false", "GITHUB_STEP_SUMMARY": ""},
], ids=["unset", "false-and-empty"])
def test_no_github_output_without_the_variables(project, tmp_path, run_subprocess, failing, env):
    before = snapshot(tmp_path)
    code, out, err = run_subprocess(["apply"], env=env)
    assert code == 1
    code2, out2, err2 = run_subprocess(["status"], env=env)
    assert code2 == 0
    assert "::" not in out + err + out2 + err2
    after = snapshot(tmp_path)
    assert set(after) - set(before) == {os.path.join("project", DB)}


# --------------------------------------------------------------------------
# 6. Makefile

needs_make = pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
MAKE_VARIABLES = ("MAKEFLAGS", "MFLAGS", "MAKELEVEL", "MAKEOVERRIDES", "ENV", "DB", "NAME",
                  "VERSION", "ARGS", "MIGRATIONS_DIR", "PYTHON", "BENCH_ARGS")


@pytest.fixture
def repo_copy(tmp_path) -> Path:
    root = tmp_path / "repo"
    root.mkdir()
    shutil.copy(str(TOOL_PATH), str(root / "apply_migrations.py"))
    shutil.copy(str(REPO_ROOT / "Makefile"), str(root / "Makefile"))
    shutil.copytree(str(BUNDLED_MIGRATIONS), str(root / "migrations"))
    return root


def bundled_names() -> List[str]:
    return sorted((p.stem for p in BUNDLED_MIGRATIONS.glob("*.sql")
                   if re.match(r"\d+_", p.name)), key=lambda n: int(n.split("_")[0]))


def make(root: Path, *args: str, env: Optional[Dict[str, str]] = None) -> Tuple[int, str, str]:
    environ = tool_env(env)
    for name in MAKE_VARIABLES:
        environ.pop(name, None)
    proc = subprocess.run(["make", "--no-print-directory", f"PYTHON={sys.executable}"] + list(args),
                          cwd=str(root), env=environ, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, timeout=60)
    return (proc.returncode, proc.stdout.decode("utf-8", "replace"),
            proc.stderr.decode("utf-8", "replace"))


@needs_make
def test_make_help_lists_targets(repo_copy):
    code, out, err = make(repo_copy, "help")
    assert code == 0, err
    listed = re.findall(r"^\s*make (\w+)\s", out, re.MULTILINE)
    for target in ("help", "migrate", "status", "new", "rollback", "test", "bench"):
        assert target in listed, out


@needs_make
def test_make_migrate_status_new_rollback(repo_copy):
    db = repo_copy / DB
    code, out, err = make(repo_copy, "migrate")
    assert code == 0, err
    assert applied_names(db) == bundled_names()
    code, out, err = make(repo_copy, "status", "ARGS=--exit-code")
    assert code == 0, out + err
    assert f"[X] {bundled_names()[0]}" in out

    number = int(bundled_names()[-1].split("_")[0]) + 1
    new_file = f"migrations/{number:04d}_add_user_indexes.sql"
    code, out, err = make(repo_copy, "new", "NAME=add_user_indexes")
    assert code == 0, err
    assert new_file in out.splitlines()
    assert (repo_copy / new_file).read_text(encoding="utf-8").startswith(
        f"-- Migration number: {number:04d} ")
    code, out, err = make(repo_copy, "new")
    assert code != 0 and "usage: make new NAME=" in err

    code, out, err = make(repo_copy, "status", "ARGS=--exit-code")
    assert code != 0 and f"[ ] {number:04d}_add_user_indexes" in out
    assert make(repo_copy, "migrate")[0] == 0
    code, out, err = make(repo_copy, "rollback", f"VERSION={number:04d}")
    assert code == 0, err
    assert applied_names(db) == bundled_names()
    code, out, err = make(repo_copy, "rollback", "VERSION=9999")
    assert code != 0 and "Migration 9999 not found in applied migrations" in err
    code, out, err = make(repo_copy, "rollback")
    assert code == 0, err
    assert applied_names(db) == bundled_names()[:-1]


@needs_make
def test_make_env_db_and_args_pass_through(repo_copy, tmp_path):
    prod = tmp_path / "prod.db"
    code, out, err = make(repo_copy, "migrate", "ENV=production",
                          env={"D1_DATABASE_PATH": str(prod)})
    assert code == 0, err
    assert applied_names(prod) == bundled_names()
    assert not (repo_copy / DB).exists()
    code, out, err = make(repo_copy, "status", "ENV=production",
                          env={"D1_DATABASE_PATH": str(prod)})
    assert code == 0 and str(prod) in out

    code, out, err = make(repo_copy, "migrate", "ENV=production", env={"D1_DATABASE_PATH": None})
    assert code != 0 and "Error: D1_DATABASE_PATH is not set" in err

    custom = tmp_path / "with space" / "custom.db"
    custom.parent.mkdir()
    code, out, err = make(repo_copy, "migrate", f"DB={custom}")
    assert code == 0, err
    assert applied_names(custom) == bundled_names()
    assert not (repo_copy / DB).exists()

    code, out, err = make(repo_copy, "migrate", "ARGS=--dry-run")
    assert code == 0, err
    assert "(dry run)" in out and "Dry run: " in out
    assert not (repo_copy / DB).exists()
    code, out, err = make(repo_copy, "migrate", "ARGS=--dry-run --json")
    assert code == 0, err
    assert json.loads(out[out.index("{"):])["dry_run"] is True
    assert not (repo_copy / DB).exists()


# --------------------------------------------------------------------------
# 7. Terminal: colour, --quiet, progress lines, the live elapsed-time line


@pytest.fixture
def applied_and_pending(project, run_subprocess, write_migration):
    write_migration("0001_a.sql", "CREATE TABLE a (x);\n")
    write_migration("0002_b.sql", "CREATE TABLE b (x);\n")
    assert run_subprocess(["apply", "--target", "0001"])[0] == 0


def test_colour_on_a_terminal(project, applied_and_pending):
    code, out, err = run_pty(["status"], project)
    assert code == 0, err
    assert "\x1b[32m[X]\x1b[0m 0001_a" in out, repr(out)
    assert "\x1b[33m[ ]\x1b[0m 0002_b" in out, repr(out)


@pytest.mark.parametrize("env", [{"NO_COLOR": "1"}, {"TERM": "dumb"}], ids=["NO_COLOR", "dumb"])
def test_no_colour_on_a_terminal_with_no_color(project, applied_and_pending, env):
    code, out, err = run_pty(["status"], project, env)
    assert code == 0, err
    assert "[X] 0001_a" in out and "[ ] 0002_b" in out
    assert "\x1b[" not in out + err, repr(out)


def test_empty_no_color_still_colours(project, applied_and_pending):
    code, out, err = run_pty(["status"], project, {"NO_COLOR": ""})
    assert code == 0, err
    assert "\x1b[32m[X]\x1b[0m" in out


def test_no_colour_through_a_pipe(project, run_subprocess, applied_and_pending, write_migration):
    write_migration("0003_bad.sql", "INSERT INTO nothing_here VALUES (1);\n")
    write_migration("readme.sql", "-- misnamed: a warning\n")
    env = {"TERM": "xterm-256color", "NO_COLOR": None}
    code, out, err = run_subprocess(["status"], env=env)
    assert code == 0
    assert "[X] 0001_a" in out and "Warning:" in err
    assert "\x1b[" not in out + err
    code, out, err = run_subprocess(["apply"], env=env)
    assert code == 1 and "Error:" in err
    assert "\x1b[" not in out + err


def test_quiet(project, run_subprocess, write_migration):
    write_migration("0001_a.sql", "CREATE TABLE a (x);\n")
    write_migration("readme.sql", "-- misnamed: a warning\n")
    code, out, err = run_subprocess(["apply", "--quiet"])
    assert code == 0, err
    assert out == "" and err == ""
    assert applied_names(project / DB) == ["0001_a"]
    write_migration("0002_bad.sql", "CREATE TABLE b (x);\nINSERT INTO nothing_here VALUES (1);\n")
    code, out, err = run_subprocess(["apply", "-q"])
    assert code == 1
    assert out == ""
    assert stderr_lines(err) == [
        "Error: Failed to apply migration 0002_bad: no such table: nothing_here"
        " (0002_bad.sql, statement 2, line 2)"]


def test_progress_lines(project, run_subprocess, write_migration):
    names = ["0001_schema", "0002_prices", "0003_backfill_prices"] + [
        f"{n:04d}_step_{n}" for n in range(4, 13)]
    for name in names:
        write_migration(name + ".sql", f"CREATE TABLE t_{name[:4]} (x);\n")
    code, out, err = run_subprocess(["apply"])
    assert code == 0, err
    lines = out.splitlines()
    assert len(lines) == 13
    for index, (line, name) in enumerate(zip(lines, names), 1):
        assert re.fullmatch(rf"\[{index}/12\] {name} {ELLIPSIS} \d+\.\d (ms|s)", line), line
    assert re.fullmatch(rf"Applied 12 migrations to {DB} in \d+\.\d (ms|s)\.", lines[-1])


def test_progress_lines_on_ascii_stdout(project, run_subprocess, write_migration):
    write_migration("0001_a.sql", "CREATE TABLE a (x);\n")
    write_migration("0002_b.sql", "CREATE TABLE b (x);\n")
    code, out, err = run_subprocess(["apply"], env={"PYTHONIOENCODING": "ascii"})
    assert code == 0, err
    lines = out.splitlines()
    assert re.fullmatch(r"\[1/2\] 0001_a \.\.\. \d+\.\d (ms|s)", lines[0]), out
    assert re.fullmatch(r"\[2/2\] 0002_b \.\.\. \d+\.\d (ms|s)", lines[1]), out


@pytest.fixture(scope="module")
def slow_runs(tmp_path_factory):
    """One migration whose second statement runs ~3 s, applied three times
    at once: on a terminal, on a terminal with --json, and through a pipe."""
    count = slow_count(3.0)
    runs = {}
    for kind in ("tty", "tty-json", "pipe"):
        root = tmp_path_factory.mktemp(f"slow-{kind}")
        (root / "migrations").mkdir()
        (root / "migrations" / "0001_slow.sql").write_text(
            "CREATE TABLE before_it (x);\n\n" + counting_statement("slow", count))
        runs[kind] = root
    tty = PtyRun(["apply"], runs["tty"])
    tty_json = PtyRun(["apply", "--json"], runs["tty-json"])
    pipe = subprocess.Popen(tool_cmd(["apply"]), cwd=str(runs["pipe"]), env=tool_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        pipe_out, pipe_err = pipe.communicate(timeout=60)
    finally:
        if pipe.poll() is None:
            pipe.kill()
    results = {"tty": tty.result(), "tty-json": tty_json.result(),
               "pipe": (pipe.returncode, pipe_out.decode("utf-8", "replace"),
                        pipe_err.decode("utf-8", "replace"))}
    for kind, root in runs.items():
        assert query(root / DB, "SELECT n FROM slow") == [(count,)], kind
    return results


def test_live_elapsed_line_on_a_terminal(slow_runs):
    code, out, err = slow_runs["tty"]
    assert code == 0, err
    ticks = re.findall(r"\r\x1b\[K  0001_slow: statement 2 \(line 3\) running for (\d+) s", out)
    assert ticks, repr(out)
    assert all(int(t) >= 2 for t in ticks)
    # the live line is erased before the result line
    assert re.search(rf"running for \d+ s\r\x1b\[K\[1/1\] 0001_slow {ELLIPSIS} \d+\.\d s\n", out), \
        repr(out)


def test_no_live_line_with_json_on_a_terminal(slow_runs):
    code, out, err = slow_runs["tty-json"]
    assert code == 0, err
    assert "running for" not in out + err
    assert [a["name"] for a in parse_json(out)["applied"]] == ["0001_slow"]


def test_no_live_line_through_a_pipe(slow_runs):
    code, out, err = slow_runs["pipe"]
    assert code == 0, err
    assert "running for" not in out + err
    assert "\x1b[" not in out + err
    assert re.match(rf"\[1/1\] 0001_slow {ELLIPSIS} \d+\.\d s\n", out), out
