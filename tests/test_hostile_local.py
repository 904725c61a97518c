"""Hostile inputs on the local path: migrations, databases and moments that
once broke the local `apply` (SQLite file, wrangler's local D1 file) or a
D1 batch, pinned one promise each (fixed in 6dc1933).

1. --foreign-keys and a foreign-key "mismatch" (a foreign key naming parent
   columns with no unique index): PRAGMA foreign_key_check cannot run.
   Made by a migration, that migration fails and the ones before it stay
   (it took the whole group with it, unreported); already in the database,
   the run stops before anything, naming the database.
2. PRAGMA defer_foreign_keys lasts until the COMMIT: a migration that sets
   it ends its group (and its D1 batch), so the next one is checked as with
   one commit each.
3. PRAGMA journal_mode / locking_mode that set a value are refused before
   anything runs; reading journal_mode is not.
4. A trigger that rolls back the tool's note of the schema no longer loses
   the last group ("no such savepoint").
5. A signal while the --json report is written, after everything committed,
   neither cuts the report nor calls the run interrupted.
6. A lock at the COMMIT is reported naming --lock-timeout, in one sentence.
7. SQLite's table-rebuild recipe (leading PRAGMA foreign_keys, then
   BEGIN TRANSACTION ... COMMIT) is a wrapper, removed; BEGIN elsewhere is
   still refused.
8. --wrangler-config refuses what D1 refuses (wrangler's local D1 does) and
   warns of what D1 ignores; a plain --db-path run does neither.

Real SQLite files; the tool through main(argv), or as a process where a
signal is sent; the D1 batches against tests/fake_d1.py.

Regression guards (they pass on the code before 6dc1933 as well, and pin
neighbouring behaviour): test_deferred_violation_of_its_own_fails_that_migration,
the [commit-each] cases of test_deferral_set_by_one_migration_does_not_cover_the_next
and test_deferred_violation_is_not_repaired_by_the_next_migration (the reference
the grouped runs must match), test_reading_the_journal_mode_is_not_refused,
test_begin_in_the_middle_is_still_refused.

Found by these tests (each fixed since, and the test passes):
- with PYTHONUNBUFFERED=1 (common in containers and CI) a signal during the
  blocked write of the report still cuts it, silently, exit 0: unbuffered,
  sys.stdout's TextIOWrapper writes once to the pipe, and the write that the
  signal interrupts returns short (65536 bytes); the rest is dropped:
  test_signal_while_the_report_is_written_neither_cuts_it_nor_interrupts
  [PYTHONUNBUFFERED-*];
- `PRAGMA query_only = ON` in a migration makes the tool's own writes fail,
  reported as "Cannot write to database ...; check the permissions", naming
  no migration: test_query_only_in_a_migration_fails_that_migration_by_name;
- on a database without the tool's record, a lock held at the first COMMIT
  is waited for twice (the record's creation is retried alone), 4 s for
  --lock-timeout 2, while the message says 2 s:
  test_lock_at_commit_waits_lock_timeout_once;
- SQLite's full rebuild recipe also *re-enables* foreign keys after the
  COMMIT (`PRAGMA foreign_keys = OFF; BEGIN TRANSACTION; ...; COMMIT;
  PRAGMA foreign_keys = ON;`): the trailing PRAGMA makes the wrapper "in the
  middle", and the file is refused:
  test_rebuild_recipe_with_trailing_foreign_keys_pragma_is_a_wrapper.

Against the real wrangler (marked `wrangler`): wrangler 4.86.0's local D1
runs a computed down script's sqlite_sequence statements, and the
AUTOINCREMENT sequence is kept.
"""
from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import time
from contextlib import closing
from pathlib import Path
from typing import List, Tuple

import pytest

from dbhelpers import create_db, query, tables, tracking_rows
from test_group_commit import migration_batches, versions, visible_versions
from test_remote_faults import (  # noqa: F401  (fake and remote_cli are fixtures)
    assert_one_line_error, fake, finish, remote_cli, tracked)
from test_robustness import run_tool, tool_cmd, tool_env
from test_wrangler import wrangler_project  # noqa: F401  (a fixture)
import wrangler_cli  # noqa: E402  (test_wrangler put its folder on sys.path)
from wrangler_cli import local_database, write_project  # noqa: E402

DB = "app.db"
POSIX = os.name == "posix"
needs_posix = pytest.mark.skipif(not POSIX, reason="needs POSIX signals")


def apply_history(db: Path) -> List[Tuple]:
    """(version, outcome) of the apply events, oldest first."""
    return query(db, "SELECT version, outcome FROM schema_migrations_history"
                     " WHERE event = 'apply' ORDER BY id")


def succeeded(*names: str) -> List[Tuple]:
    return [(v, "succeeded") for v in names]


def tracked_versions(db: Path) -> List[str]:
    return [r[0] for r in tracking_rows(db)]


def write_tables(write_migration, count: int) -> None:
    """count small migrations, 000i_tI.sql each creating table tI."""
    for i in range(1, count + 1):
        write_migration(f"{i:04d}_t{i}.sql", f"CREATE TABLE t{i} (x);\n")


# --------------------------------------------------------------------------
# 1. A foreign-key mismatch under --foreign-keys

MISMATCH = "CREATE TABLE p (a);\nCREATE TABLE c (x REFERENCES p (a));\n"


@pytest.mark.parametrize("args", [[], ["--commit-each"]], ids=["group", "commit-each"])
def test_migration_making_a_foreign_key_mismatch_fails_alone(project, run_cli, write_migration,
                                                             args):
    write_tables(write_migration, 5)
    write_migration("0006_mismatch.sql", MISMATCH)
    write_migration("0007_t7.sql", "CREATE TABLE t7 (x);\n")
    code, out, err = run_cli(["apply", "--foreign-keys", "--db-path", DB, *args])
    assert code == 1, (out, err)
    assert_one_line_error(err, "0006_mismatch",
                          "PRAGMA foreign_key_check failed: foreign key mismatch")
    db = project / DB
    assert tracked_versions(db) == versions(5)
    assert apply_history(db) == succeeded(*versions(5)) + [("0006", "failed")]
    assert tables(db) == sorted(["schema_migrations"] + [f"t{i}" for i in range(1, 6)])
    for i in range(1, 6):  # reported as applied, as committed
        assert f"0{i:03d}_t{i}" in out


def test_foreign_key_mismatch_already_in_the_database_stops_before_anything(
        project, run_cli, write_migration):
    db = project / DB
    create_db(db, "CREATE TABLE p (a); CREATE TABLE c (x REFERENCES p (a));")
    write_tables(write_migration, 2)
    code, out, err = run_cli(["apply", "--foreign-keys", "--db-path", DB])
    assert code == 1, (out, err)
    line = assert_one_line_error(err, f"Database {DB}", "foreign key mismatch")
    assert "Nothing was applied" in line, line
    assert tracked_versions(db) == []
    assert "t1" not in tables(db) and "t2" not in tables(db)


# --------------------------------------------------------------------------
# 2. PRAGMA defer_foreign_keys ends its group

DEFER_SCHEMA = ("CREATE TABLE p (id INTEGER PRIMARY KEY);\n"
                "CREATE TABLE c (p REFERENCES p (id));\n"
                "PRAGMA defer_foreign_keys = ON;\n")
CHILD_FIRST = "INSERT INTO c VALUES (1);\nINSERT INTO p VALUES (1);\n"


@pytest.mark.parametrize("args", [[], ["--commit-each"]], ids=["group", "commit-each"])
def test_deferral_set_by_one_migration_does_not_cover_the_next(project, run_cli,
                                                               write_migration, args):
    """0001 sets defer_foreign_keys; 0002 inserts a child before its parent.
    With one commit each 0002's first INSERT fails at once: grouped, it must
    too (its checks were once deferred by 0001's PRAGMA, and it passed)."""
    write_migration("0001_defer.sql", DEFER_SCHEMA)
    write_migration("0002_child_first.sql", CHILD_FIRST)
    code, out, err = run_cli(["apply", "--foreign-keys", "--db-path", DB, *args])
    assert code == 1, (out, err)
    assert_one_line_error(err, "0002_child_first", "FOREIGN KEY constraint failed",
                          "statement 1")
    db = project / DB
    assert tracked_versions(db) == ["0001"]
    assert apply_history(db) == succeeded("0001") + [("0002", "failed")]
    assert query(db, "SELECT count(*) FROM c") == [(0,)]
    assert query(db, "SELECT count(*) FROM p") == [(0,)]


ORPHAN_SCHEMA = ("CREATE TABLE p (id INTEGER PRIMARY KEY);\n"
                 "CREATE TABLE c (p REFERENCES p (id));\n")
ORPHAN = "PRAGMA defer_foreign_keys = ON;\nINSERT INTO c VALUES (5);\n"


@pytest.mark.parametrize("args", [[], ["--commit-each"]], ids=["group", "commit-each"])
@pytest.mark.parametrize("checked", [True, False], ids=["foreign-keys", "enforced-only"])
def test_deferred_violation_of_its_own_fails_that_migration(project, run_cli, write_migration,
                                                            request, args, checked):
    """Regression guard: 0003 defers and leaves an orphan; it fails (in the
    check after it, or, foreign keys enforced without the check, at its
    COMMIT), and 0001-0002 stay applied."""
    if not checked:
        request.getfixturevalue("foreign_keys_on_by_default")
    write_migration("0001_schema.sql", ORPHAN_SCHEMA)
    write_migration("0002_t2.sql", "CREATE TABLE t2 (x);\n")
    write_migration("0003_orphan.sql", ORPHAN)
    write_migration("0004_t4.sql", "CREATE TABLE t4 (x);\n")
    code, out, err = run_cli(["apply", "--db-path", DB, *args]
                             + (["--foreign-keys"] if checked else []))
    assert code == 1, (out, err)
    line = assert_one_line_error(err, "0003_orphan")
    if not checked:
        assert "FOREIGN KEY constraint failed at COMMIT" in line, line
    db = project / DB
    assert tracked_versions(db) == ["0001", "0002"]
    assert apply_history(db) == succeeded("0001", "0002") + [("0003", "failed")]
    assert query(db, "SELECT count(*) FROM c") == [(0,)]
    assert "t2" in tables(db) and "t4" not in tables(db)


@pytest.mark.parametrize("args", [[], ["--commit-each"]], ids=["group", "commit-each"])
def test_deferred_violation_is_not_repaired_by_the_next_migration(
        project, run_cli, write_migration, foreign_keys_on_by_default, args):
    """Foreign keys enforced (SQLite's default here), no check: 0003 defers
    and leaves an orphan that 0004 would repair.  One commit each fails 0003
    at its COMMIT; grouped with 0004 it once committed, orphan repaired by a
    later migration, all four 'applied'."""
    write_migration("0001_schema.sql", ORPHAN_SCHEMA)
    write_migration("0002_t2.sql", "CREATE TABLE t2 (x);\n")
    write_migration("0003_orphan.sql", ORPHAN)
    write_migration("0004_parent.sql", "INSERT INTO p VALUES (5);\n")
    code, out, err = run_cli(["apply", "--db-path", DB, *args])
    assert code == 1, (out, err)
    assert_one_line_error(err, "0003_orphan", "FOREIGN KEY constraint failed at COMMIT")
    db = project / DB
    assert tracked_versions(db) == ["0001", "0002"]
    assert apply_history(db) == succeeded("0001", "0002") + [("0003", "failed")]
    assert query(db, "SELECT count(*) FROM c") == [(0,)]
    assert query(db, "SELECT count(*) FROM p") == [(0,)]


@pytest.mark.parametrize("where", [1, 2, 4])
def test_d1_batch_ends_with_the_migration_that_sets_deferral(write_migration, fake,
                                                            remote_cli, where):
    for i in range(1, 6):
        body = f"CREATE TABLE r{i} (x);\n"
        if i == where:
            body += "PRAGMA defer_foreign_keys = ON;\n"
        write_migration(f"{i:04d}_r{i}.sql", body)
    code, out, err = remote_cli("apply")
    assert (code, err) == (0, "")
    assert migration_batches(fake) == [versions(where), versions(5, where + 1)]
    assert tracked(fake) == versions(5)


def test_d1_deferral_does_not_cover_the_next_migration(write_migration, fake, remote_cli):
    """On D1 a batch is one transaction: 0001's deferral, in 0002's batch,
    would let its child-first INSERT pass; alone, it fails as it would
    with one batch each."""
    write_migration("0001_defer.sql", DEFER_SCHEMA)
    write_migration("0002_child_first.sql", CHILD_FIRST)
    code, out, err = remote_cli("apply")
    assert code == 1, (out, err)
    assert_one_line_error(err, "0002_child_first", "FOREIGN KEY constraint failed")
    assert tracked(fake) == ["0001"]
    assert fake.rows("SELECT count(*) FROM c") == [(0,)]


# --------------------------------------------------------------------------
# 3. PRAGMAs that set how the file is written or locked

RUN_PRAGMAS = [
    ("PRAGMA journal_mode = WAL;", "journal_mode"),
    ("PRAGMA journal_mode = OFF;", "journal_mode"),
    ("PRAGMA main.journal_mode=MEMORY;", "journal_mode"),
    ("PRAGMA journal_mode(truncate);", "journal_mode"),
    ("PRAGMA locking_mode = EXCLUSIVE;", "locking_mode"),
]


@pytest.mark.parametrize("args", [[], ["--commit-each"]], ids=["group", "commit-each"])
@pytest.mark.parametrize("pragma, name", RUN_PRAGMAS, ids=[p for p, _ in RUN_PRAGMAS])
def test_pragma_setting_journal_or_locking_mode_is_refused_before_anything(
        project, run_cli, write_migration, pragma, name, args):
    db = project / DB
    create_db(db)
    before = db.read_bytes()
    write_migration("0001_a.sql", "CREATE TABLE a (x);\n")
    write_migration("0002_b.sql", f"CREATE TABLE b (x);\n{pragma}\nCREATE TABLE c (x);\n")
    code, out, err = run_cli(["apply", "--db-path", DB, *args])
    assert code == 1, (out, err)
    assert_one_line_error(err, "0002_b", f"PRAGMA {name} is not allowed inside a migration",
                          "statement 2")
    assert tracked_versions(db) == []
    assert tables(db) == ["keep_me"]
    assert query(db, "PRAGMA journal_mode") == [("delete",)]
    assert db.read_bytes() == before
    assert not Path(str(db) + "-wal").exists()


@pytest.mark.parametrize("pragma", ["PRAGMA journal_mode;", "PRAGMA main.journal_mode;",
                                    "PRAGMA locking_mode;"])
def test_reading_the_journal_mode_is_not_refused(project, run_cli, write_migration, pragma):
    """Regression guard: only setting is refused."""
    write_migration("0001_a.sql", f"CREATE TABLE a (x);\n{pragma}\n")
    code, out, err = run_cli(["apply", "--db-path", DB])
    assert (code, err) == (0, "")
    assert tracked_versions(project / DB) == ["0001"]


def test_query_only_in_a_migration_fails_that_migration_by_name(project, run_cli,
                                                                write_migration):
    write_migration("0001_a.sql", "CREATE TABLE a (x);\n")
    write_migration("0002_b.sql", "CREATE TABLE b (x);\nPRAGMA query_only = ON;\n")
    write_migration("0003_c.sql", "CREATE TABLE c (x);\n")
    code, out, err = run_cli(["apply", "--db-path", DB])
    assert code == 1, (out, err)
    line = assert_one_line_error(err)
    assert "permissions" not in line, line
    assert "0002_b" in line, line
    db = project / DB
    assert tracked_versions(db) == []  # refused as every pending file is checked, before any runs
    assert "a" not in tables(db) and "b" not in tables(db) and "c" not in tables(db)


# --------------------------------------------------------------------------
# 4. A trigger that rolls back the schema's note

STATE_TRIGGER = ("CREATE TRIGGER st BEFORE INSERT ON schema_migrations_state"
                 " BEGIN SELECT RAISE(ROLLBACK, 'x'); END;\n")


@pytest.mark.parametrize("args", [[], ["--commit-each"]], ids=["group", "commit-each"])
def test_trigger_rolling_back_the_note_of_the_schema_loses_nothing(project, run_cli,
                                                                   write_migration, args):
    write_migration("0001_a.sql", "CREATE TABLE a (x);\n")
    code, out, err = run_cli(["apply", "--db-path", DB])
    assert (code, err) == (0, "")
    db = project / DB
    assert "schema_migrations_state" in [r[0] for r in query(
        db, "SELECT name FROM sqlite_master WHERE type = 'table'")]
    write_migration("0002_trigger.sql", STATE_TRIGGER)
    write_migration("0003_c.sql", "CREATE TABLE c (x);\n")
    code, out, err = run_cli(["apply", "--db-path", DB, *args])
    assert (code, err) == (0, ""), err
    assert tracked_versions(db) == ["0001", "0002", "0003"]
    assert apply_history(db) == succeeded("0001", "0002", "0003")
    assert "c" in tables(db)
    assert query(db, "SELECT name FROM sqlite_master WHERE type = 'trigger'") == [("st",)]
    code, out, err = run_cli(["status", "--db-path", DB])
    assert code == 0, err


# --------------------------------------------------------------------------
# 5. A signal while the JSON report is written


@needs_posix
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
@pytest.mark.parametrize("unbuffered", [
    pytest.param(False, id="buffered"),
    pytest.param(True, id="PYTHONUNBUFFERED"),
])
def test_signal_while_the_report_is_written_neither_cuts_it_nor_interrupts(project, signum,
                                                                           unbuffered):
    """400 migrations make a report larger than a pipe holds: the tool blocks
    writing it, with everything committed, until the test reads.  A signal
    then changes nothing: exit 0, the whole JSON, no Interrupted line.  The
    test reads only a while after the signal, so that it finds the write
    still blocked (else the write may finish before the signal is seen)."""
    count = 400
    folder = project / "migrations"
    for i in range(1, count + 1):
        (folder / f"{i:04d}_m{i:04d}.sql").write_text(f"CREATE TABLE t{i} (x);\n")
    db = project / DB
    env = tool_env()
    env.pop("PYTHONUNBUFFERED", None)
    if unbuffered:
        env["PYTHONUNBUFFERED"] = "1"
    proc = subprocess.Popen(tool_cmd(["apply", "--json", "--db-path", DB]), cwd=str(project),
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while len(visible_versions(db) or []) < count:
            assert proc.poll() is None, "the tool ended before writing its report"
            assert time.monotonic() < deadline, "the migrations were not all committed"
            time.sleep(0.02)
        time.sleep(0.5)
        assert proc.poll() is None, "the report fitted in the pipe: nothing was blocked"
        proc.send_signal(signum)
        time.sleep(0.3)
    except BaseException:
        proc.kill()
        proc.communicate()
        raise
    code, out, err = finish(proc, timeout=60)
    assert "Interrupted" not in err, err
    assert code == 0, (code, err)
    assert len(out) > 70_000, len(out)
    payload = json.loads(out)
    assert [(o["version"], o["result"]) for o in payload["outcomes"]] == [
        (v, "applied") for v in versions(count)]
    assert tracked_versions(db) == versions(count)


# --------------------------------------------------------------------------
# 6. A lock held at the COMMIT


@pytest.mark.parametrize("args", [["--commit-each"], []], ids=["commit-each", "group"])
def test_lock_at_commit_names_the_option(project, run_cli, write_migration, args):
    """A reader's open read transaction lets the tool write its journal but
    not commit: the message names --lock-timeout, as the option is spelled,
    and reads as one sentence."""
    db = project / DB
    create_db(db)
    write_migration("0001_a.sql", "CREATE TABLE a (x);\n")
    with closing(sqlite3.connect(str(db), isolation_level=None)) as reader:
        reader.execute("BEGIN")
        assert reader.execute("SELECT * FROM sqlite_master").fetchall()
        try:
            code, out, err = run_cli(["apply", "--lock-timeout", "1", "--db-path", DB, *args])
        finally:
            reader.execute("COMMIT")
    assert code == 1, (out, err)
    line = assert_one_line_error(err, "0001_a", "--lock-timeout")
    assert "lock_timeout" not in line.replace("--lock-timeout", ""), line
    assert ". at COMMIT" not in line, line
    assert tracked_versions(db) == []
    assert tables(db) == ["keep_me"]


def test_lock_at_commit_waits_lock_timeout_once(project, run_cli, write_migration):
    db = project / DB
    create_db(db)
    write_migration("0001_a.sql", "CREATE TABLE a (x);\n")
    with closing(sqlite3.connect(str(db), isolation_level=None)) as reader:
        reader.execute("BEGIN")
        reader.execute("SELECT * FROM sqlite_master").fetchall()
        started = time.monotonic()
        try:
            code, out, err = run_cli(["apply", "--lock-timeout", "2", "--db-path", DB])
        finally:
            took = time.monotonic() - started
            reader.execute("COMMIT")
    assert code == 1, (out, err)
    assert_one_line_error(err, "locked by another process for 2 s")
    assert took < 3.5, f"waited {took:.1f} s for a --lock-timeout of 2 s"


# --------------------------------------------------------------------------
# 7. SQLite's rebuild recipe: a wrapper after a leading PRAGMA foreign_keys

RECIPE = "PRAGMA foreign_keys = ON;\nBEGIN TRANSACTION;\nCREATE TABLE c (x);\nCOMMIT;\n"


def check_findings(run_cli) -> Tuple[int, List[Tuple[str, str, int]]]:
    code, out, err = run_cli(["check", "--json"])
    return code, [(f["severity"], f["code"], f["line"]) for f in json.loads(out)["findings"]]


@pytest.mark.parametrize("lead", ["", "-- rebuild c, SQLite's recipe\n"],
                         ids=["plain", "leading-comment"])
def test_wrapper_after_leading_foreign_keys_pragma_is_removed(project, run_cli,
                                                              write_migration, lead):
    write_migration("0001_c.sql", lead + RECIPE)
    first = 2 + lead.count("\n")  # the line of BEGIN TRANSACTION
    code, findings = check_findings(run_cli)
    assert code == 0, findings
    assert findings == [("warning", "transaction-wrapper", first),
                        ("warning", "transaction-wrapper", first + 2)]
    code, out, err = run_cli(["apply", "--db-path", DB])
    assert (code, err) == (0, "")
    db = project / DB
    assert tracked_versions(db) == ["0001"]
    assert "c" in tables(db)


@pytest.mark.parametrize("body", [
    "CREATE TABLE a (x);\nBEGIN;\nCREATE TABLE c (x);\nCOMMIT;\n",
    "PRAGMA foreign_keys = ON;\nCREATE TABLE a (x);\nBEGIN TRANSACTION;\nCREATE TABLE c (x);\n"
    "COMMIT;\n",
], ids=["after-a-statement", "after-pragma-and-a-statement"])
def test_begin_in_the_middle_is_still_refused(project, run_cli, write_migration, body):
    """Regression guard."""
    write_migration("0001_c.sql", body)
    code, findings = check_findings(run_cli)
    assert code == 1
    assert ("error", "transaction-statement", 3 if body.startswith("PRAGMA") else 2) in findings
    code, out, err = run_cli(["apply", "--db-path", DB])
    assert code == 1
    assert_one_line_error(err, "0001_c", "BEGIN is not allowed inside a migration")
    assert tracked_versions(project / DB) == []


def test_rebuild_recipe_with_trailing_foreign_keys_pragma_is_a_wrapper(project, run_cli,
                                                                       write_migration):
    write_migration("0001_c.sql", "PRAGMA foreign_keys = OFF;\nBEGIN TRANSACTION;\n"
                                  "CREATE TABLE c (x);\nCOMMIT;\nPRAGMA foreign_keys = ON;\n")
    code, out, err = run_cli(["apply", "--db-path", DB])
    assert (code, err) == (0, "")
    assert "c" in tables(project / DB)


# --------------------------------------------------------------------------
# 8. --wrangler-config: D1's rules on wrangler's local file

D1_REFUSED = [
    ("CREATE TEMPORARY TABLE t AS SELECT 1;", "TEMP TABLE"),
    ("CREATE TEMP VIEW v AS SELECT 1;", "TEMP VIEW"),
    ("PRAGMA user_version = 7;", "user_version"),
    ("CREATE TABLE _cf_x (a);", "_cf_"),
]


@pytest.mark.parametrize("sql, what", D1_REFUSED, ids=[w for _, w in D1_REFUSED])
def test_wrangler_local_file_refuses_what_d1_refuses(wrangler_project, run_cli,
                                                     write_migration, sql, what):
    write_migration("0001_a.sql", "CREATE TABLE a (x);\n")
    write_migration("0002_b.sql", f"CREATE TABLE b (x);\n{sql}\n")
    code, out, err = run_cli(["apply", "--wrangler-config", "wrangler.toml"])
    assert code == 1, (out, err)
    assert_one_line_error(err, "0002_b", "D1 would reject it", what, "statement 2")
    db = local_database(wrangler_project)
    assert not db.exists() or ("b" not in tables(db) and tracked_versions(db) == [])
    # the same files on a plain SQLite database: SQLite takes them
    code, out, err = run_cli(["apply", "--db-path", DB])
    assert (code, err) == (0, "")
    assert tracked_versions(wrangler_project / DB) == ["0001", "0002"]


def test_wrangler_local_file_warns_of_foreign_keys_off(wrangler_project, run_cli,
                                                       write_migration):
    write_migration("0001_a.sql", "CREATE TABLE a (x);\nPRAGMA foreign_keys = OFF;\n")
    code, out, err = run_cli(["apply", "--wrangler-config", "wrangler.toml"])
    assert code == 0, err
    warnings = [line for line in err.splitlines() if line.startswith("Warning:")]
    assert len(warnings) == 1 and "PRAGMA foreign_keys = OFF does nothing on D1" in warnings[0], err
    assert "0001_a.sql:2" in warnings[0], warnings
    assert tracked_versions(local_database(wrangler_project)) == ["0001"]
    code, out, err = run_cli(["apply", "--db-path", DB])
    assert (code, err) == (0, "")
    assert tracked_versions(wrangler_project / DB) == ["0001"]


# --------------------------------------------------------------------------
# wrangler's local D1 and a computed rollback's sqlite_sequence statements


@pytest.mark.wrangler
def test_wrangler_local_d1_runs_a_computed_down_script_that_keeps_the_sequence(
        wrangler_bin, tmp_path):
    """A computed rollback that rebuilds an AUTOINCREMENT table writes to
    sqlite_sequence (DELETE ... WHERE name = ...; INSERT ... SELECT ...):
    wrangler's local D1 runs it, and the sequence is kept."""
    root = write_project(tmp_path / "w", {
        "0001_tables.sql": "CREATE TABLE counted (id INTEGER PRIMARY KEY AUTOINCREMENT,"
                           " name TEXT NOT NULL, note TEXT NOT NULL DEFAULT '');\n",
        "0002_drop_note.sql": "ALTER TABLE counted DROP COLUMN note;\n"})
    for argv in (["apply", "--wrangler-config", "wrangler.toml"],
                 ["new", "--down", "0002", "--wrangler-config", "wrangler.toml"]):
        code, out, err = run_tool(argv, root)
        assert code == 0, err
    down = root / "migrations" / "down" / "0002_drop_note.sql"
    assert "sqlite_sequence" in down.read_text()
    db = local_database(root)
    with closing(sqlite3.connect(str(db))) as conn:
        conn.executescript("INSERT INTO counted (name) VALUES ('a'), ('b'), ('c');"
                           " DELETE FROM counted WHERE id = 3;")
    run = wrangler_cli.run_wrangler(wrangler_bin, root, [
        "d1", "execute", "DB", "--local", "--file", str(down.relative_to(root))])
    assert run.returncode == 0, run.describe()
    with closing(sqlite3.connect(str(db))) as conn:
        conn.execute("INSERT INTO counted (name) VALUES ('d')")
        conn.commit()
    assert query(db, "SELECT id, name, note FROM counted ORDER BY id") == [
        (1, "a", ""), (2, "b", ""), (4, "d", "")]
    assert query(db, "SELECT seq FROM sqlite_sequence WHERE name = 'counted'") == [(4,)]
