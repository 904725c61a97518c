"""apply: discovery, the tracking table, encodings, per-file atomicity,
--single-transaction, out-of-order, foreign tracking tables, and the bundled
initial schema."""
from __future__ import annotations

import datetime
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
import tracemalloc
from typing import List

import pytest

import apply_migrations

from conftest import BUNDLED_MIGRATIONS, ENV_CLEARED, TOOL_PATH
from dbhelpers import (applied_names, create_db, expected_checksum, full_tracking_rows, query,
                       schema, sqlite_error, tables, tracking_rows)

DB = "trading_brain.db"


def error_lines(err: str) -> List[str]:
    return [line for line in err.splitlines() if line.strip()]


def one_error(err: str) -> str:
    lines = error_lines(err)
    assert len(lines) == 1, err
    assert lines[0].startswith("Error: "), lines[0]
    return lines[0]


# --------------------------------------------------------------------------
# 2. Discovery.


def test_orders_by_number_not_by_name(project, run_cli, write_migration):
    # By name "10_..." sorts before "2_..."; 10 needs the table 2 creates.
    write_migration("10_fill_items.sql", "INSERT INTO items (id) VALUES (10);\n")
    write_migration("2_create_items.sql", "CREATE TABLE items (id INTEGER PRIMARY KEY);\n")
    write_migration("0003_add_index.sql", "CREATE INDEX items_id ON items (id);\n")

    code, out, err = run_cli(["status"])
    assert code == 0, err
    assert out.index("2_create_items") < out.index("0003_add_index") < out.index("10_fill_items")

    code, out, err = run_cli(["apply"])
    assert code == 0, err
    assert applied_names(project / DB) == ["2_create_items", "0003_add_index", "10_fill_items"]
    assert query(project / DB, "SELECT id FROM items") == [(10,)]
    assert out.index("2_create_items") < out.index("0003_add_index") < out.index("10_fill_items")


@pytest.mark.parametrize("first,second,number", [
    ("0001_a.sql", "1_b.sql", 1),
    ("0002_a.sql", "0002_b.sql", 2),
])
@pytest.mark.parametrize("command", ["apply", "status"])
def test_duplicate_numbers_are_an_error_before_anything_runs(project, run_cli, write_migration,
                                                             first, second, number, command):
    write_migration("0000_base.sql", "CREATE TABLE base (x);\n")
    write_migration(first, "CREATE TABLE from_first (x);\n")
    write_migration(second, "CREATE TABLE from_second (x);\n")
    assert run_cli(["init"])[0] == 0

    code, out, err = run_cli([command])
    assert code == 1
    line = one_error(err)
    assert first in line and second in line
    assert str(number) in line
    db = project / DB
    assert tracking_rows(db) == []  # not even 0000_base ran
    assert tables(db) == ["schema_migrations"]


def test_non_matching_sql_warns_other_files_and_subfolders_ignored(project, run_cli,
                                                                   write_migration):
    write_migration("0001_real.sql", "CREATE TABLE real_one (x);\n")
    write_migration("notes.sql", "CREATE TABLE from_notes (x);\n")
    write_migration("V2__flyway_style.sql", "CREATE TABLE from_flyway (x);\n")
    write_migration("README.md", "CREATE TABLE from_readme (x);\n")
    write_migration("0002_backup.sql.bak", "CREATE TABLE from_bak (x);\n")
    write_migration("0003_text.txt", "CREATE TABLE from_txt (x);\n")
    write_migration("0004_nested.sql", "CREATE TABLE from_subfolder (x);\n", folder="migrations/archive")
    write_migration("0001_real.sql", "DROP TABLE real_one;\n", folder="migrations/down")

    code, out, err = run_cli(["apply"])
    assert code == 0, err
    warnings = [line for line in error_lines(err)]
    assert len(warnings) == 2, err
    assert all(line.startswith("Warning: ") for line in warnings)
    assert any("notes.sql" in line for line in warnings)
    assert any("V2__flyway_style.sql" in line for line in warnings)
    db = project / DB
    assert applied_names(db) == ["0001_real"]
    assert tables(db) == ["real_one", "schema_migrations"]

    code, out, err = run_cli(["status"])
    assert code == 0
    assert "notes.sql" in err and "V2__flyway_style.sql" in err
    for ignored in ("README", "0002_backup", "0003_text", "0004_nested"):
        assert ignored not in out and ignored not in err


# --------------------------------------------------------------------------
# 3. The tracking table.


def test_tracking_table_schema_and_rows(project, run_cli, write_migration):
    contents = {
        "0001_create_users.sql": b"CREATE TABLE users (id INTEGER PRIMARY KEY);\n",
        "0002_add_email.sql": b"ALTER TABLE users ADD COLUMN email TEXT;\r\n",
    }
    for name, data in contents.items():
        write_migration(name, data)
    started = datetime.datetime.utcnow().replace(microsecond=0)
    code, out, err = run_cli(["apply"])
    finished = datetime.datetime.utcnow()
    assert code == 0, err
    db = project / DB

    info = query(db, "SELECT cid, name, type, pk FROM pragma_table_info('schema_migrations')")
    assert [row[1] for row in info] == ["version", "name", "checksum", "applied_at", "duration_ms"]
    assert info[0][1:] == ("version", "TEXT", 1)
    assert sum(row[3] for row in info) == 1  # version alone is the primary key

    rows = full_tracking_rows(db)
    assert [(r[0], r[1]) for r in rows] == [("0001", "0001_create_users"), ("0002", "0002_add_email")]
    assert query(db, "SELECT DISTINCT typeof(version) FROM schema_migrations") == [("text",)]
    for (version, name, checksum, applied_at, duration_ms) in rows:
        assert checksum == expected_checksum(contents[name + ".sql"])
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z", applied_at), applied_at
        when = datetime.datetime.strptime(applied_at[:19], "%Y-%m-%dT%H:%M:%S")
        assert started - datetime.timedelta(seconds=2) <= when <= finished + datetime.timedelta(seconds=2)
        assert isinstance(duration_ms, (int, float)) and duration_ms >= 0


def test_checksum_is_of_the_bytes_that_ran(tmp_path):
    # Once a file is split its bytes are let go; the checksum must still be
    # of those bytes, not of whatever the file holds by the time it is asked.
    path = tmp_path / "0001_t.sql"
    ran = b"CREATE TABLE t (x);\n"
    path.write_bytes(ran)
    migration = apply_migrations.Migration("0001", "0001_t", str(path))
    statements = migration.statements()
    path.write_bytes(b"CREATE TABLE edited_meanwhile (x);\n")
    assert [s.sql for s in statements] == ["CREATE TABLE t (x);"]
    assert migration.checksum == expected_checksum(ran)


def test_a_split_migration_holds_its_text_once(tmp_path):
    # A run keeps every pending file's statements until it ends: not also
    # its bytes, or a large data migration would sit in memory twice.
    size = 4_000_000
    path = tmp_path / "0001_big.sql"
    path.write_bytes(b"INSERT INTO t VALUES ('" + b"x" * size + b"');\n")
    migration = apply_migrations.Migration("0001", "0001_big", str(path))
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        statements = migration.statements()
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert len(statements[0].sql) > size
    assert held < 1.5 * size, held


# --------------------------------------------------------------------------
# 5. Encoding.


def test_bom_is_skipped(project, run_cli, write_migration):
    data = b"\xef\xbb\xbfCREATE TABLE with_bom (x);\nINSERT INTO with_bom VALUES ('\xc3\xa9');\n"
    write_migration("0001_bom.sql", data)
    code, out, err = run_cli(["apply"])
    assert code == 0, err
    assert query(project / DB, "SELECT x FROM with_bom") == [("\u00e9",)]
    assert tracking_rows(project / DB)[0][2] == expected_checksum(data)


@pytest.mark.parametrize("body", [
    # The BOM must not glue onto the first keyword: BEGIN must still be seen
    # as the wrapper, CREATE TRIGGER as a trigger (whose body holds ';').
    b"BEGIN;\nCREATE TABLE wrapped (x);\nCOMMIT;\n",
    b"CREATE TRIGGER log_insert AFTER INSERT ON base BEGIN\n"
    b"  SELECT 1;\n  SELECT 2;\nEND;\nCREATE TABLE wrapped (x);\n",
], ids=["begin-wrapper", "trigger"])
def test_bom_before_first_keyword(project, run_cli, write_migration, body):
    write_migration("0000_base.sql", "CREATE TABLE base (x);\n")
    write_migration("0001_bom.sql", b"\xef\xbb\xbf" + body)
    code, out, err = run_cli(["apply"])
    assert code == 0, err
    assert "wrapped" in tables(project / DB)
    assert applied_names(project / DB) == ["0000_base", "0001_bom"]


def test_crlf_inside_string_literal_is_stored_as_crlf(project, run_cli, write_migration):
    write_migration("0001_crlf.sql",
                    b"CREATE TABLE notes (body TEXT);\r\n"
                    b"INSERT INTO notes VALUES ('first line\r\nsecond line');\r\n")
    code, out, err = run_cli(["apply"])
    assert code == 0, err
    assert query(project / DB, "SELECT body FROM notes") == [("first line\r\nsecond line",)]


BAD_FILES = {
    # kind: (file bytes, what the error must contain)
    "invalid-utf8": (b"CREATE TABLE latin1 (x);\nINSERT INTO latin1 VALUES ('caf\xe9');\n",
                     ["0003_bad.sql", "byte offset {offset}"]),
    "invalid-utf8-after-bom": (b"\xef\xbb\xbfCREATE TABLE latin1 (x);\nINSERT INTO latin1 VALUES ('caf\xe9');\n",
                               ["0003_bad.sql", "byte offset {offset}"]),
    "unterminated-string": (b"CREATE TABLE t (x);\nINSERT INTO t VALUES ('no end);\n",
                            ["0003_bad", "line 2"]),
    "unterminated-comment": (b"CREATE TABLE t (x);\n\n/* never closed\nCREATE TABLE u (y);\n",
                             ["0003_bad", "line 3"]),
    "transaction-statement": (b"CREATE TABLE t (x);\nCOMMIT;\nCREATE TABLE u (y);\n",
                              ["0003_bad", "COMMIT", "line 2"]),
}


@pytest.mark.parametrize("kind", sorted(BAD_FILES))
def test_invalid_utf8_refused_before_anything_runs(project, run_cli, write_migration, kind):
    """A bad file (invalid UTF-8, unterminated SQL, a transaction statement)
    stops the run before any pending file, even one numbered before it, runs."""
    write_migration("0001_applied.sql", "CREATE TABLE applied_before (x);\n")
    assert run_cli(["apply"])[0] == 0
    write_migration("0002_good.sql", "CREATE TABLE good_pending (x);\n")
    data, expected = BAD_FILES[kind]
    write_migration("0003_bad.sql", data)
    write_migration("0004_after.sql", "CREATE TABLE after_bad (x);\n")

    code, out, err = run_cli(["apply"])
    assert code == 1
    line = one_error(err)
    for part in expected:
        part = part.format(offset=data.find(b"\xe9"))  # the bad byte's offset in the file
        assert part in line, (part, line)
    db = project / DB
    assert applied_names(db) == ["0001_applied"]
    assert tables(db) == ["applied_before", "schema_migrations"]


# --------------------------------------------------------------------------
# 6. One file, one transaction.

FAILING_0002 = (
    "-- Migration number: 0002\n"          # 1
    "-- Indexes for user lookups.\n"       # 2
    "CREATE TABLE user_tags (\n"           # 3  statement 1
    "    user_id INTEGER NOT NULL,\n"      # 4
    "    tag     TEXT NOT NULL\n"          # 5
    ");\n"                                 # 6
    "CREATE INDEX idx_missing_email ON no_such_users (email);\n"  # 7 statement 2
    "CREATE INDEX idx_user_tags_tag ON user_tags (tag);\n"        # 8 statement 3
)


@pytest.mark.parametrize("encoding", ["lf", "crlf", "bom+crlf"])
def test_failed_statement_leaves_nothing_of_its_file(project, run_cli, write_migration, encoding):
    write_migration("0001_create_users.sql", "CREATE TABLE users (id INTEGER PRIMARY KEY, email TEXT);\n")
    data = FAILING_0002.encode("utf-8")
    if "crlf" in encoding:
        data = data.replace(b"\n", b"\r\n")
    if "bom" in encoding:
        data = b"\xef\xbb\xbf" + data
    write_migration("0002_add_user_indexes.sql", data)
    write_migration("0003_later.sql", "CREATE TABLE later (x);\n")
    sqlite_message = sqlite_error(
        ["CREATE TABLE user_tags (user_id INTEGER NOT NULL, tag TEXT NOT NULL)"],
        "CREATE INDEX idx_missing_email ON no_such_users (email)",
    )

    code, out, err = run_cli(["apply"])
    assert code == 1
    assert error_lines(err) == [
        f"Error: Failed to apply migration 0002_add_user_indexes: {sqlite_message}"
        " (0002_add_user_indexes.sql, statement 2, line 7)"
    ]
    db = project / DB
    assert applied_names(db) == ["0001_create_users"]  # earlier file stays
    assert "user_tags" not in tables(db)  # statement 1 undone
    assert "later" not in tables(db)  # later file not tried
    assert "0003_later" not in out


def test_failure_keeps_earlier_and_skips_later(project, run_cli, write_migration):
    write_migration("0001_one.sql", "CREATE TABLE one (x);\n")
    write_migration("0002_two.sql", "CREATE TABLE two (x);\nINSERT INTO two VALUES (2);\n")
    write_migration("0003_three.sql", "CREATE TABLE three (x);\nINSERT INTO nowhere VALUES (3);\n")
    write_migration("0004_four.sql", "CREATE TABLE four (x);\n")
    write_migration("0005_five.sql", "CREATE TABLE five (x);\n")

    code, out, err = run_cli(["apply"])
    assert code == 1
    assert one_error(err).startswith("Error: Failed to apply migration 0003_three: ")
    db = project / DB
    assert applied_names(db) == ["0001_one", "0002_two"]
    assert query(db, "SELECT x FROM two") == [(2,)]
    assert tables(db) == ["one", "schema_migrations", "two"]
    assert "0001_one" in out and "0002_two" in out
    assert "0004_four" not in out and "0005_five" not in out


def test_failed_file_is_retried_cleanly_after_fix(project, run_cli, write_migration):
    write_migration("0001_create_users.sql", "CREATE TABLE users (id INTEGER PRIMARY KEY, email TEXT);\n")
    write_migration("0002_add_user_indexes.sql", FAILING_0002)
    assert run_cli(["apply"])[0] == 1
    write_migration("0002_add_user_indexes.sql", FAILING_0002.replace("no_such_users", "users"))
    code, out, err = run_cli(["apply"])
    assert code == 0, err  # would fail with "table user_tags already exists" if statement 1 had stuck
    assert applied_names(project / DB) == ["0001_create_users", "0002_add_user_indexes"]


@pytest.mark.parametrize("begin,commit", [
    ("BEGIN;", "COMMIT;"),
    ("BEGIN TRANSACTION;", "END TRANSACTION;"),
    ("begin immediate;", "commit"),
])
def test_file_wrapped_in_begin_commit_runs_and_is_recorded(project, run_cli, write_migration,
                                                           begin, commit):
    data = f"{begin}\nCREATE TABLE wrapped (x);\nINSERT INTO wrapped VALUES (1);\n{commit}\n"
    write_migration("0001_wrapped.sql", data)
    code, out, err = run_cli(["apply"])
    assert code == 0, err
    db = project / DB
    assert query(db, "SELECT x FROM wrapped") == [(1,)]
    assert tracking_rows(db) == [("0001", "0001_wrapped", expected_checksum(data.encode()))]


def test_wrapped_file_is_still_atomic(project, run_cli, write_migration):
    write_migration("0001_wrapped.sql", "BEGIN;\nCREATE TABLE wrapped (x);\nINSERT INTO nope VALUES (1);\nCOMMIT;\n")
    code, out, err = run_cli(["apply"])
    assert code == 1
    line = one_error(err)
    assert line.startswith("Error: Failed to apply migration 0001_wrapped: ")
    assert line.endswith(", line 3)"), line
    assert tables(project / DB) == ["schema_migrations"]
    assert tracking_rows(project / DB) == []


@pytest.mark.parametrize("statement,keyword", [
    ("BEGIN;", "BEGIN"),
    ("COMMIT;", "COMMIT"),
    ("END;", "END"),
    ("ROLLBACK;", "ROLLBACK"),
    ("SAVEPOINT before_data;", "SAVEPOINT"),
    ("RELEASE before_data;", "RELEASE"),
    ("rollback to savepoint before_data;", "ROLLBACK"),
])
def test_transaction_control_inside_a_file_is_refused(project, run_cli, write_migration,
                                                      statement, keyword):
    write_migration("0001_earlier.sql", "CREATE TABLE earlier (x);\n")
    write_migration("0002_txn.sql",
                    "-- line 1\n"
                    "CREATE TABLE first_statement (x);\n"   # 2
                    "\n"                                    # 3
                    f"{statement}\n"                        # 4
                    "CREATE TABLE after_it (x);\n")         # 5
    code, out, err = run_cli(["apply"])
    assert code == 1
    line = one_error(err)
    assert line.startswith("Error: Failed to apply migration 0002_txn: ")
    assert keyword in line
    assert "line 4" in line, line
    db = project / DB
    assert "first_statement" not in tables(db)
    assert "after_it" not in tables(db)
    assert "0002_txn" not in applied_names(db)


@pytest.mark.parametrize("data", [b"", b"   \n\t\r\n  ", b"-- nothing here yet\n/* still\n nothing */\n",
                                  b"-- no newline at end"],
                         ids=["empty", "whitespace", "comments", "comment-no-newline"])
def test_files_without_statements_are_applied_and_recorded(project, run_cli, write_migration, data):
    write_migration("0001_placeholder.sql", data)
    write_migration("0002_next.sql", "CREATE TABLE next_one (x);\n")
    code, out, err = run_cli(["apply"])
    assert code == 0, err
    assert tracking_rows(project / DB) == [
        ("0001", "0001_placeholder", expected_checksum(data)),
        ("0002", "0002_next", expected_checksum(b"CREATE TABLE next_one (x);\n")),
    ]
    code, out, err = run_cli(["status"])
    assert "Applied: 2, Pending: 0" in out


@pytest.mark.parametrize("tail", [
    "CREATE TABLE last_one (x)",
    "CREATE TABLE last_one (x)\n",
    "CREATE TABLE last_one (x) -- trailing comment, no newline",
    "CREATE TABLE last_one (x)\n-- comment on its own line, no newline",
    "CREATE TABLE last_one (x) /* block comment */",
])
def test_last_statement_without_semicolon_runs(project, run_cli, write_migration, tail):
    write_migration("0001_tail.sql", "CREATE TABLE first_one (x);\n" + tail)
    code, out, err = run_cli(["apply"])
    assert code == 0, err
    assert tables(project / DB) == ["first_one", "last_one", "schema_migrations"]
    assert applied_names(project / DB) == ["0001_tail"]


# Found by this suite (rows were matched to files by the version string) and
# fixed in 52de18f: rows and files are matched by number.
def test_renumbered_applied_file_is_not_applied_twice(project, run_cli, write_migration):
    body = "CREATE TABLE IF NOT EXISTS runs (x);\nINSERT INTO runs VALUES (1);\n"
    write_migration("0001_count_runs.sql", body)
    assert run_cli(["apply"])[0] == 0
    (project / "migrations" / "0001_count_runs.sql").rename(project / "migrations" / "1_count_runs.sql")

    code, out, err = run_cli(["apply"])
    db = project / DB
    assert query(db, "SELECT count(*) FROM runs") == [(1,)], (code, out, err)
    numbers = [int(row[0]) for row in tracking_rows(db)]
    assert len(numbers) == len(set(numbers)) == 1


# --------------------------------------------------------------------------
# 7. --single-transaction.


@pytest.mark.parametrize("start", ["applied-before", "no-tracking-table"])
def test_single_transaction_failure_leaves_database_unchanged(project, run_cli, write_migration, start):
    db = project / DB
    if start == "applied-before":
        write_migration("0001_base.sql", "CREATE TABLE base (x);\nINSERT INTO base VALUES (1);\n")
        assert run_cli(["apply"])[0] == 0
    else:
        create_db(db, "CREATE TABLE legacy (x); INSERT INTO legacy VALUES (42);")
    schema_before = schema(db)
    rows_before = tracking_rows(db)

    for i in range(2, 8):  # six files: 0002 .. 0007; the 5th (0006) fails
        body = f"CREATE TABLE t{i} (x);\nINSERT INTO t{i} VALUES ({i});\n"
        if i == 6:
            body = "CREATE TABLE t6 (x);\nINSERT INTO missing_table VALUES (1);\n"
        write_migration(f"000{i}_step{i}.sql", body)

    code, out, err = run_cli(["apply", "--single-transaction"])
    assert code == 1
    line = one_error(err)
    assert "0006_step6" in line
    assert schema(db) == schema_before
    assert tracking_rows(db) == rows_before
    assert not {"t2", "t3", "t4", "t5", "t6", "t7"} & set(tables(db))
    # Nothing of the run is left but the history's row of its failure,
    # written after the rollback (and, on a database without one, its table).
    assert query(db, "SELECT event, outcome, name, statement, line"
                     " FROM schema_migrations_history WHERE outcome <> 'succeeded'") == [
        ("apply", "failed", "0006_step6", 2, 2)]
    if start == "applied-before":
        assert query(db, "SELECT * FROM base") == [(1,)]
    else:
        assert query(db, "SELECT * FROM legacy") == [(42,)]

    # Without the failure the same run applies all six at once.
    write_migration("0006_step6.sql", "CREATE TABLE t6 (x);\n")
    code, out, err = run_cli(["apply", "--single-transaction"])
    assert code == 0, err
    assert applied_names(db)[-6:] == [f"000{i}_step{i}" for i in range(2, 8)]


# --------------------------------------------------------------------------
# 10. Out of order.


def test_out_of_order_is_refused_unless_allowed(project, run_cli, write_migration):
    write_migration("0001_first.sql", "CREATE TABLE first (x);\n")
    write_migration("0003_third.sql", "CREATE TABLE third (x);\n")
    assert run_cli(["apply"])[0] == 0
    write_migration("0002_late_branch.sql", "CREATE TABLE late_branch (x);\n")
    write_migration("0004_fourth.sql", "CREATE TABLE fourth (x);\n")

    code, out, err = run_cli(["apply"])
    assert code == 1
    line = one_error(err)
    assert "0002_late_branch" in line and "0003_third" in line
    db = project / DB
    assert applied_names(db) == ["0001_first", "0003_third"]
    assert not {"late_branch", "fourth"} & set(tables(db))

    code, out, err = run_cli(["apply", "--allow-out-of-order"])
    assert code == 0, err
    assert sorted(applied_names(db)) == ["0001_first", "0002_late_branch", "0003_third", "0004_fourth"]
    assert {"late_branch", "fourth"} <= set(tables(db))


def test_target_applies_up_to_and_including(project, run_cli, write_migration):
    for i in range(1, 5):
        write_migration(f"000{i}_m{i}.sql", f"CREATE TABLE m{i} (x);\n")
    code, out, err = run_cli(["apply", "--target", "0002"])
    assert code == 0, err
    assert applied_names(project / DB) == ["0001_m1", "0002_m2"]
    code, out, err = run_cli(["apply", "--target", "0003_m3.sql"])
    assert code == 0, err
    assert applied_names(project / DB) == ["0001_m1", "0002_m2", "0003_m3"]


# --------------------------------------------------------------------------
# 12. A schema_migrations table that belongs to another tool.

FOREIGN_TABLES = {
    "golang-migrate": ("CREATE TABLE schema_migrations (version bigint NOT NULL PRIMARY KEY,"
                       " dirty boolean NOT NULL); INSERT INTO schema_migrations VALUES (3, 0);"),
    "dbmate": ("CREATE TABLE schema_migrations (version varchar(128) PRIMARY KEY);"
               " INSERT INTO schema_migrations VALUES ('20240101000000');"),
}


@pytest.mark.parametrize("tool", sorted(FOREIGN_TABLES))
@pytest.mark.parametrize("command", ["apply", "status", "init", "rollback"])
def test_foreign_tracking_table_is_a_clear_error_and_untouched(project, run_cli, write_migration,
                                                              tool, command):
    db = project / DB
    create_db(db, FOREIGN_TABLES[tool])
    write_migration("0001_a.sql", "CREATE TABLE a (x);\n")
    schema_before = schema(db)
    rows_before = query(db, "SELECT * FROM schema_migrations")
    data_before = db.read_bytes()

    code, out, err = run_cli([command])
    assert code == 1
    line = one_error(err)
    assert "schema_migrations" in line
    assert "version" in line
    assert "Traceback" not in err
    assert schema(db) == schema_before
    assert query(db, "SELECT * FROM schema_migrations") == rows_before
    assert db.read_bytes() == data_before


# --------------------------------------------------------------------------
# 13. The bundled initial schema.

BUNDLED_TABLES = sorted([
    "trades", "signals", "signal_events", "signal_outcomes", "learning_metrics",
    "weight_history", "news", "briefings", "user_connections", "trade_orders",
    "system_alerts", "system_monitoring", "telegram_reports",
])


def test_bundled_initial_schema_applies_cleanly(project, run_cli):
    code, out, err = run_cli(["apply", "--migrations-dir", str(BUNDLED_MIGRATIONS)])
    assert code == 0, err
    assert err == ""  # no warnings about the shipped folder either
    db = project / DB
    assert tables(db) == sorted(BUNDLED_TABLES + ["schema_migrations"])
    data = (BUNDLED_MIGRATIONS / "0001_initial_schema.sql").read_bytes()
    assert tracking_rows(db) == [("0001", "0001_initial_schema", expected_checksum(data))]
    assert query(db, "PRAGMA foreign_key_check") == []
    # Every foreign key points at an existing table's primary key.
    for table in BUNDLED_TABLES:
        for parent, child_col, parent_col in query(
                db, 'SELECT "table", "from", "to" FROM pragma_foreign_key_list(?)', (table,)):
            assert parent in BUNDLED_TABLES, (table, parent)
            pk = [r[0] for r in query(db, "SELECT name FROM pragma_table_info(?) WHERE pk > 0", (parent,))]
            assert pk == [parent_col], (table, child_col, parent, parent_col)
    # Running it again (it is IF NOT EXISTS throughout) is a no-op for the tool.
    code, out, err = run_cli(["apply", "--migrations-dir", str(BUNDLED_MIGRATIONS)])
    assert code == 0 and "Nothing to apply" in out


def test_bundled_initial_schema_header():
    text = (BUNDLED_MIGRATIONS / "0001_initial_schema.sql").read_text(encoding="utf-8")
    lines = text.splitlines()
    assert lines[0].startswith("-- Migration number: 0001")
    header = []
    for line in lines:
        if not line.startswith("--"):
            break
        header.append(line)
    assert "-- Environment: D1 (Cloudflare SQLite)" in header


# --------------------------------------------------------------------------
# Ctrl-C in the middle of a migration rolls that migration back.


@pytest.mark.skipif(os.name != "posix", reason="needs POSIX signals")
def test_sigint_rolls_back_the_running_migration(project, write_migration):
    write_migration("0001_fast.sql", "CREATE TABLE fast (x);\n")
    write_migration("0002_endless.sql",
                    "CREATE TABLE started (x);\n"
                    "CREATE TABLE numbers (i);\n"
                    "INSERT INTO numbers WITH RECURSIVE c(i) AS"
                    " (SELECT 1 UNION ALL SELECT i + 1 FROM c) SELECT i FROM c;\n")
    env = {k: v for k, v in os.environ.items() if k not in ENV_CLEARED}
    proc = subprocess.Popen([sys.executable, str(TOOL_PATH), "apply", "--verbose"],
                            cwd=str(project), env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, universal_newlines=True)
    try:
        seen = []
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:  # wait until the endless INSERT runs
            line = proc.stderr.readline()
            seen.append(line)
            if not line or ("0002_endless" in line and "statement 2" in line):
                break
        assert "0002_endless" in seen[-1] and "statement 2" in seen[-1], "".join(seen)
        time.sleep(0.2)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 130, err
    assert "0002_endless" in error_lines(err)[-1]
    db = project / DB
    assert applied_names(db) == ["0001_fast"]
    assert "started" not in tables(db) and "numbers" not in tables(db)


# -- A COMMIT that fails, and statements that return rows --------------------

DEFERRED_ORPHAN = ("PRAGMA foreign_keys = ON;\nPRAGMA defer_foreign_keys = ON;\n"
                   "INSERT INTO child (parent_id) VALUES (42);\n")


def test_a_commit_that_fails_rolls_back_and_names_the_migration(project, run_cli,
                                                                  write_migration):
    """A deferred foreign key fails at COMMIT, not at a statement: the
    transaction is rolled back (the lock is let go) and the error names the
    migration."""
    write_migration("0001_a.sql", "CREATE TABLE parent (id INTEGER PRIMARY KEY);\n"
                                  "CREATE TABLE child (id INTEGER PRIMARY KEY,"
                                  " parent_id REFERENCES parent (id));\n")
    write_migration("0002_b.sql", DEFERRED_ORPHAN)
    code, out, err = run_cli(["apply"])
    assert code == 1
    assert err.splitlines() == [
        "Error: Failed to apply migration 0002_b: FOREIGN KEY constraint failed at COMMIT;"
        " it was rolled back (0002_b.sql)"]
    db = project / "trading_brain.db"
    assert applied_names(db) == ["0001_a"]
    assert query(db, "SELECT count(*) FROM child") == [(0,)]

    with apply_migrations.Migrator(str(db), str(project / "migrations")) as migrator:
        with pytest.raises(apply_migrations.MigrationFailed, match="at COMMIT"):
            migrator.apply()
        assert not migrator.target.db.conn.in_transaction
        # The write lock was let go: another writer gets it at once.
        other = sqlite3.connect(str(db), timeout=0, isolation_level=None)
        other.execute("BEGIN IMMEDIATE")
        other.execute("ROLLBACK")
        other.close()


@pytest.mark.parametrize("extra", [[], ["--verbose"], ["--dry-run"], ["--single-transaction"]],
                         ids=["plain", "verbose", "dry-run", "single-transaction"])
def test_a_select_runs_to_its_last_row(project, run_cli, write_migration, extra):
    """executescript and D1 run a SELECT to its end; so does apply: a later
    row that fails fails the migration."""
    write_migration("0001_a.sql", "CREATE TABLE t (x);\n"
                                  "INSERT INTO t VALUES ('{}'), ('not json');\n"
                                  "SELECT json(x) FROM t;\n")
    code, out, err = run_cli(["apply", *extra])
    assert code == 1, (out, err)
    assert "Failed to apply migration 0001_a: malformed JSON (0001_a.sql, statement 3, line 3)" \
        in err
    db = project / "trading_brain.db"
    assert (not db.exists()) if extra == ["--dry-run"] else applied_names(db) == []
