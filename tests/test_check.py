"""`check`: what Cloudflare D1 would reject, found before deploy.

Each finding has a file made for it (its code, severity and line are
asserted), the output formats are pinned (text lines, --json, GitHub
annotations), and, marked `wrangler`, the findings are held against the real
D1 engine: the Worker in tests/fixtures/d1_api_worker run by `wrangler dev
--local` (each statement as D1 receives it) and `wrangler d1 migrations
apply --local` (a file as wrangler sends it).
"""
from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path
from typing import List, Optional, Tuple

import pytest

from conftest import BUNDLED_MIGRATIONS, apply_migrations

sys.path.insert(0, str(Path(__file__).resolve().parent / "fixtures" / "wrangler"))
import wrangler_cli  # noqa: E402
from wrangler_cli import APPLIED, FAILED, D1Rejected  # noqa: E402

# A file around the statement under test: it starts on LINE.
BEFORE = """\
-- Migration number: 0001 \t 2026-11-24T16:00:00.000Z
CREATE TABLE accounts (
    id   INTEGER PRIMARY KEY,
    name TEXT NOT NULL
);

/* a block comment
   over two lines; with a ';' in it */
"""
AFTER = "\nCREATE TABLE ledger (id INTEGER PRIMARY KEY);\n"
LINE = 9

Summary = List[Tuple[str, str, Optional[int], str]]


def check(run_cli, *args: str) -> Tuple[int, dict, str]:
    """check --json: (exit code, payload, stderr)."""
    code, out, err = run_cli(["check", "--json"] + list(args))
    return code, json.loads(out), err


def summary(payload: dict) -> Summary:
    """(severity, file name, line, code) of every finding."""
    return [(f["severity"], os.path.basename(f["path"]), f["line"], f["code"])
            for f in payload["findings"]]


def only_finding(run_cli, write_migration, sql: str, name: str = "0001_test.sql"
                 ) -> Tuple[int, dict]:
    """Check a file holding sql between BEFORE and AFTER; (exit, finding)."""
    write_migration(name, BEFORE + sql + AFTER)
    code, payload, err = check(run_cli)
    assert len(payload["findings"]) == 1, payload["findings"]
    return code, payload["findings"][0]


def no_findings(run_cli, write_migration, sql: str) -> None:
    write_migration("0001_test.sql", BEFORE + sql + AFTER)
    code, payload, err = check(run_cli)
    assert payload["findings"] == [] and code == 0, payload["findings"]


# --------------------------------------------------------------------------
# Transaction control


@pytest.mark.parametrize("sql,keyword", [
    ("BEGIN;", "BEGIN"),
    ("BEGIN TRANSACTION;", "BEGIN"),
    ("begin immediate;", "BEGIN"),
    ("COMMIT;", "COMMIT"),
    ("END;", "END"),
    ("END TRANSACTION;", "END"),
    ("ROLLBACK;", "ROLLBACK"),
    ("ROLLBACK TO SAVEPOINT before_fill;", "ROLLBACK"),
    ("SAVEPOINT before_fill;", "SAVEPOINT"),
    ("RELEASE before_fill;", "RELEASE"),
    ("RELEASE SAVEPOINT before_fill;", "RELEASE"),
])
def test_transaction_statement_is_an_error_at_its_line(run_cli, write_migration, sql, keyword):
    code, finding = only_finding(run_cli, write_migration, sql)
    assert code == 1
    assert (finding["severity"], finding["line"], finding["code"]) == \
        ("error", LINE, "transaction-statement")
    assert finding["message"].startswith(f"{keyword} is rejected by D1")


def test_whole_file_wrapper_is_only_a_warning(project, run_cli, write_migration):
    write_migration("0001_wrapped.sql", "BEGIN TRANSACTION;\n"
                    "CREATE TABLE accounts (id INTEGER PRIMARY KEY);\n"
                    "CREATE INDEX accounts_id ON accounts (id);\n"
                    "COMMIT;\n")
    code, payload, err = check(run_cli)
    assert code == 0
    assert summary(payload) == [("warning", "0001_wrapped.sql", 1, "transaction-wrapper"),
                                ("warning", "0001_wrapped.sql", 4, "transaction-wrapper")]
    assert payload["summary"] == {"files": 1, "errors": 0, "warnings": 2}
    code, out, err = run_cli(["check"])
    assert code == 0
    assert out.splitlines()[-1] == "1 migration checked: 0 errors, 2 warnings."
    # As promised: this tool removes the wrapper and applies the file.
    code, out, err = run_cli(["apply", "--db-path", "w.db"])
    assert code == 0, err


def test_statement_inside_a_wrapper_is_still_an_error(run_cli, write_migration):
    write_migration("0001_wrapped.sql", "BEGIN TRANSACTION;\n"
                    "CREATE TABLE accounts (id INTEGER PRIMARY KEY);\n"
                    "SAVEPOINT fill;\n"
                    "COMMIT;\n")
    code, payload, err = check(run_cli)
    assert code == 1
    assert summary(payload) == [("warning", "0001_wrapped.sql", 1, "transaction-wrapper"),
                                ("error", "0001_wrapped.sql", 3, "transaction-statement"),
                                ("warning", "0001_wrapped.sql", 4, "transaction-wrapper")]


def test_begin_and_rollback_around_a_file_are_errors(run_cli, write_migration):
    write_migration("0001_x.sql", "BEGIN;\nCREATE TABLE a (id INTEGER);\nROLLBACK;\n")
    code, payload, err = check(run_cli)
    assert code == 1
    assert summary(payload) == [("error", "0001_x.sql", 1, "transaction-statement"),
                                ("error", "0001_x.sql", 3, "transaction-statement")]


@pytest.mark.parametrize("first,last", [
    ("BEGIN;", "COMMIT;"),
    ("BEGIN TRANSACTION;", "END;"),
    ("begin transaction;", "commit;"),
    ("BEGIN IMMEDIATE;", "COMMIT;"),
])
def test_wrapper_that_wrangler_does_not_remove_is_an_error(run_cli, write_migration, first,
                                                            last):
    write_migration("0001_wrapped.sql", f"{first}\nCREATE TABLE a (id INTEGER);\n{last}\n")
    code, payload, err = check(run_cli)
    assert code == 1
    assert payload["summary"]["errors"] >= 1


def test_trigger_body_begin_end_is_not_transaction_control(run_cli, write_migration):
    no_findings(run_cli, write_migration,
                "CREATE TRIGGER accounts_audit AFTER INSERT ON accounts\n"
                "BEGIN\n"
                "    INSERT INTO accounts (id, name) SELECT NEW.id + 1000, 'END;';\n"
                "END;")


# --------------------------------------------------------------------------
# PRAGMAs and statements D1 refuses or ignores


@pytest.mark.parametrize("sql", [
    "PRAGMA foreign_keys = OFF;",
    "PRAGMA foreign_keys=0;",
    "PRAGMA foreign_keys = false;",
    "PRAGMA foreign_keys(off);",
    "pragma FOREIGN_KEYS = Off;",
    "PRAGMA main.foreign_keys = no;",
    "PRAGMA foreign_keys = 'off';",
    "PRAGMA foreign_keys = OFF -- off\n;",
    'PRAGMA "foreign_keys" = /* no */ OFF;',
])
def test_foreign_keys_off_is_a_warning_that_d1_ignores_it(run_cli, write_migration, sql):
    # D1 accepts the pragma and keeps enforcing: not an error, but a warning
    # that says what a DROP TABLE still does, and that deferring is no cure
    # for ON DELETE actions.
    code, finding = only_finding(run_cli, write_migration, sql)
    assert code == 0
    assert (finding["severity"], finding["line"], finding["code"]) == \
        ("warning", LINE, "foreign-keys-off")
    assert "ON DELETE CASCADE" in finding["message"]
    assert "helps only where every reference is a plain one" in finding["message"]


@pytest.mark.parametrize("sql", ["PRAGMA foreign_keys = 'false';",
                                 'PRAGMA foreign_keys = "no";'])
def test_quoted_false_values_of_foreign_keys_are_found(run_cli, write_migration, sql):
    code, finding = only_finding(run_cli, write_migration, sql)
    assert finding["code"] == "foreign-keys-off"


@pytest.mark.parametrize("sql", [
    "PRAGMA foreign_keys = ON;",
    "PRAGMA foreign_keys;",
    "PRAGMA defer_foreign_keys = ON;",
    "PRAGMA defer_foreign_keys = OFF;",
    "PRAGMA foreign_key_check;",
    "PRAGMA optimize;",
    "PRAGMA table_info(accounts);",
    "PRAGMA case_sensitive_like = ON;",
])
def test_pragmas_d1_allows_are_not_findings(run_cli, write_migration, sql):
    no_findings(run_cli, write_migration, sql)


@pytest.mark.parametrize("sql,code,words", [
    ("PRAGMA journal_mode = WAL;", "unauthorized-pragma", "PRAGMA journal_mode"),
    ("PRAGMA journal_mode;", "unauthorized-pragma", "PRAGMA journal_mode"),
    ("PRAGMA main.journal_mode=DELETE;", "unauthorized-pragma", "PRAGMA journal_mode"),
    ("pragma USER_VERSION = 7;", "unauthorized-pragma", "PRAGMA user_version"),
    ("PRAGMA user_version;", "unauthorized-pragma", "PRAGMA user_version"),
    ("ATTACH DATABASE 'archive.db' AS archive;", "unauthorized-statement", "ATTACH"),
    ("attach 'archive.db' as archive;", "unauthorized-statement", "ATTACH"),
    ("DETACH DATABASE archive;", "unauthorized-statement", "DETACH"),
    ("VACUUM;", "unauthorized-statement", "VACUUM"),
    ("PRAGMA /* x */ journal_mode = WAL;", "unauthorized-pragma", "PRAGMA journal_mode"),
    ('PRAGMA "journal_mode" = WAL;', "unauthorized-pragma", "PRAGMA journal_mode"),
    ("PRAGMA main.[user_version] = 7;", "unauthorized-pragma", "PRAGMA user_version"),
    ("PRAGMA -- the version\n  user_version = 7;", "unauthorized-pragma",
     "PRAGMA user_version"),
])
def test_unauthorized_statement_is_an_error(run_cli, write_migration, sql, code, words):
    exit_code, finding = only_finding(run_cli, write_migration, sql)
    assert exit_code == 1
    assert (finding["severity"], finding["line"], finding["code"]) == ("error", LINE, code)
    assert finding["message"].startswith(f"{words} is not authorized on D1")


# D1 (workerd) authorizes a short list of PRAGMAs; local D1 answers
# "not authorized: SQLITE_AUTH" to these, and to TEMP objects.
D1_REJECTS_UNFLAGGED = [
    "PRAGMA synchronous = OFF;",
    "PRAGMA cache_size = -2000;",
    "PRAGMA temp_store = MEMORY;",
    "PRAGMA busy_timeout = 1000;",
    "PRAGMA writable_schema = ON;",
    "CREATE TEMP TABLE scratch (a);",
    "CREATE TABLE temp.scratch (a);",
    "CREATE /* c */ TEMP TABLE scratch (a);",
    "CREATE VIRTUAL TABLE temp.scratch USING fts5(a);",
]


@pytest.mark.parametrize("sql", D1_REJECTS_UNFLAGGED)
def test_other_statements_d1_refuses_are_errors(run_cli, write_migration, sql):
    code, finding = only_finding(run_cli, write_migration, sql)
    assert code == 1 and finding["severity"] == "error"


# --------------------------------------------------------------------------
# Statement size


def statement_of(size: int, target: str = "accounts (name)") -> str:
    """An INSERT of exactly `size` UTF-8 bytes with its ';', mostly of
    2-byte characters (a check counting characters would see half)."""
    head, tail = f"INSERT INTO {target} VALUES ('", "');"
    room = size - len(head) - len(tail)
    text = head + "\u00e9" * (room // 2) + "x" * (room % 2) + tail
    assert len(text.encode("utf-8")) == size
    return text


def test_statement_over_100000_bytes_is_an_error(run_cli, write_migration):
    code, finding = only_finding(run_cli, write_migration, statement_of(100_001))
    assert code == 1
    assert (finding["severity"], finding["line"], finding["code"]) == \
        ("error", LINE, "statement-too-long")
    assert "100,001 bytes" in finding["message"]


def test_statement_of_100000_bytes_is_fine(run_cli, write_migration):
    no_findings(run_cli, write_migration, statement_of(100_000))


# --------------------------------------------------------------------------
# Names D1 reserves


@pytest.mark.parametrize("sql,name", [
    ("CREATE TABLE _cf_cache (k TEXT);", "_cf_cache"),
    ('CREATE TABLE "_cf_cache" (k TEXT);', "_cf_cache"),
    ("CREATE TABLE `_cf_cache` (k TEXT);", "_cf_cache"),
    ("CREATE TABLE [_cf_cache] (k TEXT);", "_cf_cache"),
    ("CREATE TABLE IF NOT EXISTS _cf_cache (k TEXT);", "_cf_cache"),
    ("CREATE TABLE main._cf_cache (k TEXT);", "_cf_cache"),
    ('CREATE TABLE IF NOT EXISTS "main" . "_cf_cache" (k TEXT);', "_cf_cache"),
    ("create table _cf_cache (k text);", "_cf_cache"),
    ("CREATE INDEX _cf_idx ON accounts (name);", "_cf_idx"),
    ("CREATE UNIQUE INDEX IF NOT EXISTS main._cf_idx ON accounts (name);", "_cf_idx"),
    ("CREATE VIEW _cf_view AS SELECT id FROM accounts;", "_cf_view"),
    ('CREATE VIEW IF NOT EXISTS "_cf_view" AS SELECT id FROM accounts;', "_cf_view"),
    ("CREATE TRIGGER _cf_trg AFTER INSERT ON accounts BEGIN SELECT 1; END;", "_cf_trg"),
    ("CREATE TRIGGER IF NOT EXISTS main.[_cf_trg] AFTER INSERT ON accounts"
     " BEGIN SELECT 1; END;", "_cf_trg"),
    ("CREATE VIRTUAL TABLE _cf_search USING fts5(body);", "_cf_search"),
    ("CREATE TABLE /* c */ _cf_cache (k TEXT);", "_cf_cache"),
    ('ALTER TABLE "my accounts" RENAME TO _cf_cache;', "_cf_cache"),
    ('ALTER TABLE main."my accounts" RENAME TO "_cf_cache";', "_cf_cache"),
    ("ALTER TABLE accounts -- old\n RENAME TO _cf_cache;", "_cf_cache"),
])
def test_reserved_cf_name_is_an_error(run_cli, write_migration, sql, name):
    code, finding = only_finding(run_cli, write_migration, sql)
    assert code == 1
    assert (finding["severity"], finding["line"], finding["code"]) == \
        ("error", LINE, "reserved-name")
    assert f"the name {name} starts with _cf_" in finding["message"]


@pytest.mark.parametrize("sql", [
    "CREATE TABLE cf_cache (k TEXT);",
    "CREATE TABLE x_cf_cache (k TEXT);",
    "CREATE TABLE _cf (k TEXT);",
    "CREATE TABLE settings (_cf_flag INTEGER);",
    "CREATE INDEX accounts_name ON accounts (name);",
    "CREATE TABLE notes (body TEXT DEFAULT '/* _cf_x */');",
    "CREATE TABLE /* _cf_x */ notes (body TEXT);",
])
def test_names_that_are_not_reserved(run_cli, write_migration, sql):
    no_findings(run_cli, write_migration, sql)


# --------------------------------------------------------------------------
# The last statement's ';'


@pytest.mark.parametrize("tail", [
    "",
    "\n",
    " -- no semicolon here",
    "\n-- a comment; with a semicolon in it\n",
    " /* trailing; comment */",
    " -- a comment that ends with a semicolon;",
])
def test_last_statement_without_semicolon_is_an_error(run_cli, write_migration, tail):
    write_migration("0001_test.sql", BEFORE + "CREATE TABLE ledger (id INTEGER PRIMARY KEY)"
                    + tail)
    code, payload, err = check(run_cli)
    assert code == 1
    assert summary(payload) == [("error", "0001_test.sql", LINE, "missing-semicolon")]
    assert "wrangler appends its own INSERT" in payload["findings"][0]["message"]


@pytest.mark.parametrize("content", [
    "CREATE TABLE ledger (id INTEGER PRIMARY KEY); -- done\n",
    "CREATE TABLE ledger (id INTEGER PRIMARY KEY);\n/* done */",
    "-- only a comment: a migration that does nothing\n",
    "",
])
def test_terminated_or_empty_files_are_fine(run_cli, write_migration, content):
    write_migration("0001_test.sql", content)
    code, payload, err = check(run_cli)
    assert (code, payload["findings"]) == (0, [])


# --------------------------------------------------------------------------
# Files: names, numbers, encoding, SQL that does not end


def test_bad_names_are_errors_without_a_line(project, run_cli, write_migration):
    write_migration("0001_ok.sql", "CREATE TABLE a (id INTEGER);\n")
    write_migration("create_users.sql", "CREATE TABLE b (id INTEGER);\n")
    write_migration("0002-add-index.sql", "CREATE INDEX a_id ON a (id);\n")
    write_migration("README.md", "not a migration\n")
    write_migration("0001_ok.sql", "DROP TABLE a;\n", folder="migrations/down")
    code, payload, err = check(run_cli)
    assert code == 1
    assert summary(payload) == [("error", "0002-add-index.sql", None, "bad-name"),
                                ("error", "create_users.sql", None, "bad-name")]
    assert payload["summary"]["files"] == 1
    code, out, err = run_cli(["check"])
    assert os.path.join("migrations", "create_users.sql") + ": error: the name does not match" \
        in out


@pytest.mark.parametrize("first,second", [("0002_a.sql", "0002_b.sql"),
                                          ("0002_a.sql", "2_b.sql")])
def test_duplicate_numbers_are_errors(run_cli, write_migration, first, second):
    write_migration("0001_ok.sql", "CREATE TABLE a (id INTEGER);\n")
    write_migration(first, "CREATE TABLE b (id INTEGER);\n")
    write_migration(second, "CREATE TABLE c (id INTEGER);\n")
    code, payload, err = check(run_cli)
    assert code == 1
    assert summary(payload) == [("error", second, None, "duplicate-number")]
    assert f"also used by {first}" in payload["findings"][0]["message"]


def test_invalid_utf8_is_an_error_at_its_line(run_cli, write_migration):
    write_migration("0001_latin1.sql", b"CREATE TABLE a (id INTEGER);\n"
                    b"INSERT INTO a VALUES (1); -- caf\xe9\n")
    code, payload, err = check(run_cli)
    assert code == 1
    assert summary(payload) == [("error", "0001_latin1.sql", 2, "invalid-utf8")]
    assert "0xe9" in payload["findings"][0]["message"]


@pytest.mark.parametrize("sql,words", [
    ("INSERT INTO accounts (name) VALUES ('it''s open);", "unterminated string literal"),
    ("CREATE TABLE broken (x /* never closed );", "unterminated /* comment"),
])
def test_unterminated_sql_is_an_error_at_its_line(run_cli, write_migration, sql, words):
    code, finding = only_finding(run_cli, write_migration, sql)
    assert code == 1
    assert (finding["severity"], finding["line"], finding["code"]) == \
        ("error", LINE, "incomplete-sql")
    assert words in finding["message"]


def test_modified_migration_is_an_error_with_db_path(project, run_cli, write_migration):
    path = write_migration("0001_a.sql", "CREATE TABLE a (id INTEGER);\n")
    write_migration("0002_b.sql", "CREATE TABLE b (id INTEGER);\n")
    code, out, err = run_cli(["apply", "--db-path", "app.db"])
    assert code == 0, err
    code, payload, err = check(run_cli, "--db-path", "app.db")
    assert (code, payload["findings"], payload["database"]) == (0, [], "app.db")
    path.write_text("CREATE TABLE a (id INTEGER, extra TEXT);\n", encoding="utf-8")
    code, payload, err = check(run_cli, "--db-path", "app.db")
    assert code == 1
    assert summary(payload) == [("error", "0001_a.sql", None, "modified")]
    assert "applied to app.db on " in payload["findings"][0]["message"]
    # Without a database there is nothing to compare with.
    code, payload, err = check(run_cli)
    assert (code, payload["findings"], payload["database"]) == (0, [], None)


def test_bundled_migrations_have_no_findings(run_cli):
    code, out, err = run_cli(["check", "--migrations-dir", str(BUNDLED_MIGRATIONS)])
    assert code == 0, out
    files = len(list(BUNDLED_MIGRATIONS.glob("*.sql")))
    assert files >= 1
    assert out.splitlines() == [
        f"{files} migration{'s' if files != 1 else ''} checked: 0 errors, 0 warnings."]


# --------------------------------------------------------------------------
# Output: text lines, JSON, GitHub annotations


def several_findings(write_migration) -> None:
    write_migration("0001_tx.sql", "CREATE TABLE a (id INTEGER);\nBEGIN;\n")
    write_migration("0002_wrapped.sql", "BEGIN TRANSACTION;\nCREATE TABLE b (id INTEGER);\n"
                    "COMMIT;\n")
    write_migration("0003_pragma.sql", "-- header\n\nPRAGMA journal_mode = WAL;\n")
    write_migration("bad name.sql", "SELECT 1;\n")


EXPECTED_SEVERAL = [
    ("error", "0001_tx.sql", 2, "transaction-statement"),
    ("warning", "0002_wrapped.sql", 1, "transaction-wrapper"),
    ("warning", "0002_wrapped.sql", 3, "transaction-wrapper"),
    ("error", "0003_pragma.sql", 3, "unauthorized-pragma"),
    ("error", "bad name.sql", None, "bad-name"),
]


def test_json_output_shape(run_cli, write_migration):
    several_findings(write_migration)
    code, out, err = run_cli(["check", "--json"])
    assert code == 1
    payload = json.loads(out)  # stdout is the JSON object and nothing else
    assert set(payload) == {"migrations_dir", "database", "findings", "summary"}
    assert payload["migrations_dir"] == "migrations"
    assert payload["database"] is None
    assert payload["summary"] == {"files": 3, "errors": 3, "warnings": 2}
    for finding in payload["findings"]:
        assert set(finding) == {"severity", "path", "line", "code", "message"}
        assert finding["path"].startswith("migrations" + os.sep)
        assert isinstance(finding["message"], str) and finding["message"]
    assert summary(payload) == EXPECTED_SEVERAL


LINE_FORMAT = re.compile(
    r"(?P<path>[^:]+?)(?::(?P<line>\d+))?: (?P<severity>error|warning): (?P<message>.+)"
    r" \[(?P<code>[a-z0-9-]+)\]")


def test_text_lines_are_path_line_severity_message_code(run_cli, write_migration):
    several_findings(write_migration)
    code, out, err = run_cli(["check"])
    assert code == 1
    lines = out.splitlines()
    assert lines[-1] == "3 migrations checked: 3 errors, 2 warnings."
    found = []
    for line in lines[:-1]:
        match = LINE_FORMAT.fullmatch(line)
        assert match, line
        found.append((match["severity"], os.path.basename(match["path"]),
                      int(match["line"]) if match["line"] else None, match["code"]))
    assert found == EXPECTED_SEVERAL
    assert lines[0] == (os.path.join("migrations", "0001_tx.sql") + ":2: error: BEGIN is"
                        " rejected by D1, which runs each migration in its own transaction;"
                        " remove it [transaction-statement]")
    assert "::" not in out + err  # no annotations outside GitHub Actions


def test_github_annotations_only_under_github_actions(run_cli, write_migration, monkeypatch):
    several_findings(write_migration)
    write_migration("0004_a,b.sql", "CREATE TABLE c (id INTEGER)")
    monkeypatch.setenv("GITHUB_ACTIONS", "true")
    code, out, err = run_cli(["check"])
    assert code == 1
    annotations = [line for line in out.splitlines() if line.startswith("::")]
    path = "migrations" + os.sep
    assert annotations == [
        f"::error file={path}0001_tx.sql,line=2,title=D1 check (transaction-statement)::BEGIN"
        " is rejected by D1, which runs each migration in its own transaction; remove it",
        f"::warning file={path}0002_wrapped.sql,line=1,title=D1 check (transaction-wrapper)::"
        "BEGIN around the whole file: D1 rejects it, but this tool and wrangler remove exactly this"
        " wrapper before sending the file",
        f"::warning file={path}0002_wrapped.sql,line=3,title=D1 check (transaction-wrapper)::"
        "COMMIT around the whole file: D1 rejects it, but this tool and wrangler remove exactly this"
        " wrapper before sending the file",
        f"::error file={path}0003_pragma.sql,line=3,title=D1 check (unauthorized-pragma)::"
        "PRAGMA journal_mode is not authorized on D1; remove it",
        f"::error file={path}0004_a%2Cb.sql,line=1,title=D1 check (missing-semicolon)::the last"
        " statement has no ';': wrangler appends its own INSERT to the file and the migration"
        " fails on D1; end it with ';'",
        f"::error file={path}bad name.sql,title=D1 check (bad-name)::the name does not match"
        " NNNN_description.sql: apply_migrations.py ignores it, but wrangler would apply it"
        " (and if wrangler has, renaming it makes wrangler apply it again): rename it, or use"
        " wrangler's rules (--wrangler-config or --wrangler)",
    ]
    # The plain lines are still there, each before its annotation.
    assert sum(1 for line in out.splitlines() if LINE_FORMAT.fullmatch(line)) == 6
    # With --json the annotations go to stderr and stdout stays one JSON object.
    code, out, err = run_cli(["check", "--json"])
    assert code == 1
    assert json.loads(out)["summary"]["errors"] == 4
    assert [line.split(",", 1)[0] for line in err.splitlines() if line.startswith("::")] == \
        [a.split(",", 1)[0] for a in annotations]


def test_github_actions_other_than_true_gives_no_annotations(run_cli, write_migration,
                                                             monkeypatch):
    several_findings(write_migration)
    monkeypatch.setenv("GITHUB_ACTIONS", "false")
    code, out, err = run_cli(["check"])
    assert code == 1 and "::" not in out + err


def test_annotation_paths_are_relative_to_the_workspace(project, run_cli, write_migration,
                                                        monkeypatch):
    write_migration("0001_tx.sql", "BEGIN;\n")
    monkeypatch.setenv("GITHUB_ACTIONS", "true")
    monkeypatch.setenv("GITHUB_WORKSPACE", str(project))
    code, out, err = run_cli(["check", "--migrations-dir", str(project / "migrations")])
    assert "::error file=migrations/0001_tx.sql,line=1," in out


def test_subprocess_exit_codes(project, run_subprocess, write_migration):
    write_migration("0001_ok.sql", "CREATE TABLE a (id INTEGER);\n")
    code, out, err = run_subprocess(["check"])
    assert (code, out, err) == (0, "1 migration checked: 0 errors, 0 warnings.\n", "")
    write_migration("0002_bad.sql", "VACUUM;\n")
    code, out, err = run_subprocess(["check"], env={"GITHUB_ACTIONS": "true"})
    assert code == 1
    assert "::error file=migrations/0002_bad.sql,line=1,title=D1 check (unauthorized-statement)::" \
        in out


# --------------------------------------------------------------------------
# Against the real D1 engine (wrangler, offline)


@pytest.fixture(scope="module")
def d1_base(wrangler_bin, tmp_path_factory):
    """The D1 API fixture Worker, with only workerd's own statement limit."""
    proc, base = wrangler_cli.start_d1(wrangler_bin, tmp_path_factory.mktemp("d1"),
                                       {"MAX_STATEMENT_BYTES": "0"})
    try:
        yield base
    finally:
        wrangler_cli.stop_d1(proc)


def d1_verdict(base: str, sql: str) -> Optional[str]:
    """None if D1 runs sql (as one batch), else its error message."""
    try:
        wrangler_cli.d1_raw(base, sql)
    except D1Rejected as exc:
        return str(exc)
    return None


# (file text, D1 rejects it); each runs as one batch on the same database, so
# what is accepted (and committed) uses names of its own.
AGREEMENT = [
    ("BEGIN;", True), ("BEGIN TRANSACTION;", True), ("COMMIT;", True), ("END;", True),
    ("ROLLBACK;", True), ("SAVEPOINT sp;", True), ("RELEASE sp;", True),
    ("PRAGMA journal_mode = WAL;", True), ("PRAGMA journal_mode;", True),
    ("PRAGMA user_version = 7;", True), ("PRAGMA user_version;", True),
    ("ATTACH DATABASE 'other.db' AS other;", True), ("DETACH DATABASE other;", True),
    ("VACUUM;", True),
    ("CREATE TABLE _cf_x (a);", True), ('CREATE TABLE "_cf_x" (a);', True),
    ("CREATE TABLE IF NOT EXISTS main._cf_x (a);", True), ("CREATE TABLE [_cf_x] (a);", True),
    ("CREATE TABLE t1 (a);\nCREATE INDEX _cf_i ON t1 (a);", True),
    ("CREATE VIEW _cf_v AS SELECT 1;", True),
    ("CREATE TABLE t2 (a);\nCREATE TRIGGER _cf_tr AFTER INSERT ON t2 BEGIN SELECT 1; END;",
     True),
    ("CREATE TABLE t3 (a);\n" + statement_of(100_001, "t3 (a)"),
     True),
    ("CREATE TABLE t4 (a);\n" + statement_of(100_000, "t4 (a)"),
     False),
    ("PRAGMA defer_foreign_keys = ON;", False), ("PRAGMA optimize;", False),
    ("PRAGMA foreign_keys = OFF;", False),
    ("PRAGMA foreign_key_check;", False), ("PRAGMA case_sensitive_like = ON;", False),
    ("CREATE TABLE t5 (a);\nPRAGMA table_info(t5);", False),
    ("CREATE TABLE x_cf_ (a);", False), ("CREATE TABLE t6 (_cf_col);", False),
    ("CREATE TABLE t7 (a);\nCREATE TRIGGER tr7 AFTER INSERT ON t7\nBEGIN\n"
     "    SELECT 1;\nEND;", False),
    # Comments and quotes where the words are looked for.
    ("PRAGMA /* x */ journal_mode = WAL;", True), ('PRAGMA "journal_mode" = WAL;', True),
    ("PRAGMA main.[user_version] = 7;", True),
    ("CREATE /* c */ TEMP TABLE tmp1 (a);", True), ("CREATE TABLE -- c\n_cf_y (a);", True),
    ("CREATE VIRTUAL TABLE temp.v1 USING fts5(a);", True),
    ("CREATE TABLE t10 (a /* _cf_ */);\nPRAGMA /* journal_mode */ optimize;", False),
]


def check_errors(project: Path, write_migration, sql: str) -> List[str]:
    path = write_migration("0001_case.sql", sql)
    findings = apply_migrations.check_statements(
        str(path), apply_migrations.split_sql(sql))
    return [f.code for f in findings if f.severity == "error"]


@pytest.mark.wrangler
@pytest.mark.parametrize("sql,rejected", AGREEMENT, ids=[s[:40] for s, _ in AGREEMENT])
def test_check_errors_exactly_where_d1_refuses(d1_base, project, write_migration, sql,
                                               rejected):
    verdict = d1_verdict(d1_base, sql)
    assert (verdict is not None) == rejected, verdict
    assert bool(check_errors(project, write_migration, sql)) == rejected


# D1's engine refuses a _cf_ name at CREATE, but lets a rename to one through;
# check flags both, as the prefix is reserved.
RENAMES_TO_RESERVED = [
    'CREATE TABLE "my t8" (a);\nALTER TABLE "my t8" RENAME TO _cf_z;',
    "CREATE TABLE t9 (a);\nALTER TABLE main.t9 /* c */ RENAME TO _cf_w;",
]


@pytest.mark.wrangler
@pytest.mark.parametrize("sql", RENAMES_TO_RESERVED)
def test_check_flags_a_rename_to_a_reserved_name_that_d1_lets_through(d1_base, project,
                                                                       write_migration, sql):
    assert d1_verdict(d1_base, sql) is None
    assert check_errors(project, write_migration, sql) == ["reserved-name"]


@pytest.mark.wrangler
@pytest.mark.parametrize("sql", D1_REJECTS_UNFLAGGED)
def test_d1_refuses_other_pragmas_and_temp_objects(d1_base, sql):
    # The ground for test_other_statements_d1_refuses_are_errors.
    assert "not authorized" in (d1_verdict(d1_base, sql) or "accepted")


@pytest.mark.wrangler
def test_foreign_keys_off_runs_on_d1_but_changes_nothing(d1_base, project, write_migration):
    # Why check warns: D1 accepts it and keeps enforcing.
    rows = wrangler_cli.d1_raw(d1_base, "PRAGMA foreign_keys = OFF; PRAGMA foreign_keys;")
    assert rows[-1] == [[1]]
    sql = "PRAGMA foreign_keys = OFF;"
    path = write_migration("0001_case.sql", sql)
    findings = apply_migrations.check_statements(str(path), apply_migrations.split_sql(sql))
    assert [(f.severity, f.code) for f in findings] == [("warning", "foreign-keys-off")]


@pytest.fixture(scope="module")
def wrangler_wrappers(wrangler_bin, tmp_path_factory):
    """`wrangler d1 migrations apply --local` of a file wrapped exactly as
    wrangler strips it, then of one wrapped in BEGIN; ... COMMIT;."""
    root = wrangler_cli.write_project(tmp_path_factory.mktemp("wrappers"), {
        "0001_exact_wrapper.sql": "BEGIN TRANSACTION;\nCREATE TABLE wrapped (id INTEGER);\n"
                                  "COMMIT;\n",
        "0002_plain_wrapper.sql": "BEGIN;\nCREATE TABLE plain (id INTEGER);\nCOMMIT;\n",
    })
    return root, wrangler_cli.migrations_apply(wrangler_bin, root)


@pytest.mark.wrangler
def test_wrangler_applies_the_wrapper_check_only_warns_about(wrangler_wrappers, run_cli):
    root, run = wrangler_wrappers
    assert wrangler_cli.statuses(run)["0001_exact_wrapper.sql"] == APPLIED, run.describe()
    code, out, err = run_cli(["check", "--json", "--migrations-dir",
                              str(root / "migrations")])
    findings = [f for f in json.loads(out)["findings"]
                if os.path.basename(f["path"]) == "0001_exact_wrapper.sql"]
    assert [(f["severity"], f["code"]) for f in findings] == \
        [("warning", "transaction-wrapper")] * 2


@pytest.mark.wrangler
def test_wrangler_fails_on_a_begin_commit_wrapper(wrangler_wrappers):
    # The ground for test_wrapper_that_wrangler_does_not_remove_is_an_error.
    root, run = wrangler_wrappers
    assert run.returncode == 1, run.describe()
    assert wrangler_cli.statuses(run)["0002_plain_wrapper.sql"] == FAILED
    assert "state.storage.transaction()" in run.text
