"""No silent loss of rows (issue 16): a migration that drops, rebuilds or
deletes from a table that others reference with an ON DELETE action, and
would so take rows (CASCADE) or references (SET NULL) from tables it does not
name, is refused with the table and the counts, locally on wrangler's D1
file (foreign keys enforced, as D1 does) and on remote D1 (here the
in-process fake, which enforces them too); nothing is changed.  A migration
that keeps those rows itself, or --allow-row-loss, goes through."""
from __future__ import annotations

import json
import sqlite3
from contextlib import closing

import pytest

from conftest import apply_migrations
from fake_d1 import FakeD1, remote_env

SCHEMA = """\
CREATE TABLE users (id INTEGER PRIMARY KEY, email TEXT NOT NULL);
CREATE TABLE sessions (id INTEGER PRIMARY KEY,
    user_id INTEGER NOT NULL REFERENCES users (id) ON DELETE CASCADE);
CREATE TABLE accounts (id INTEGER PRIMARY KEY,
    user_id INTEGER REFERENCES users (id) ON DELETE SET NULL);
INSERT INTO users VALUES (1, 'a@example.com'), (2, 'b@example.com');
INSERT INTO sessions VALUES (10, 1), (20, 2);
INSERT INTO accounts VALUES (100, 1), (200, 2);
"""
# What drizzle-kit generates to add a column to users: a table rebuild.
REBUILD = """\
PRAGMA foreign_keys=OFF;--> statement-breakpoint
CREATE TABLE `__new_users` (`id` integer PRIMARY KEY, `email` text NOT NULL, `name` text);
--> statement-breakpoint
INSERT INTO `__new_users`("id", "email") SELECT "id", "email" FROM `users`;--> statement-breakpoint
DROP TABLE `users`;--> statement-breakpoint
ALTER TABLE `__new_users` RENAME TO `users`;--> statement-breakpoint
PRAGMA foreign_keys=ON;
"""
# The same rebuild, keeping the rows it would lose: copied aside and back.
SAFE_REBUILD = """\
CREATE TABLE sessions_kept AS SELECT * FROM sessions;
CREATE TABLE accounts_kept AS SELECT * FROM accounts;
PRAGMA defer_foreign_keys = ON;
CREATE TABLE __new_users (id integer PRIMARY KEY, email text NOT NULL, name text);
INSERT INTO __new_users (id, email) SELECT id, email FROM users;
DROP TABLE users;
ALTER TABLE __new_users RENAME TO users;
DELETE FROM sessions;
INSERT INTO sessions SELECT * FROM sessions_kept;
UPDATE accounts SET user_id = (SELECT user_id FROM accounts_kept AS k WHERE k.id = accounts.id);
DROP TABLE sessions_kept;
DROP TABLE accounts_kept;
"""
TOML = ('[[d1_databases]]\nbinding = "DB"\ndatabase_name = "app"\n'
        'database_id = "00000000-0000-4000-8000-0000000000d1"\n')


def data(db) -> dict:
    with closing(sqlite3.connect(str(db))) as conn:
        return {t: conn.execute(f"SELECT * FROM {t} ORDER BY id").fetchall()
                for t in ("users", "sessions", "accounts")}


SEEDED = {"users": [(1, "a@example.com"), (2, "b@example.com")],
          "sessions": [(10, 1), (20, 2)], "accounts": [(100, 1), (200, 2)]}


@pytest.fixture
def wrangler_project(project):
    (project / "wrangler.toml").write_text(TOML)
    return project


def local_db(project):
    found = apply_migrations.wrangler_database(str(project / "wrangler.toml"))
    return found.db_path


def test_a_rebuild_that_would_cascade_is_refused_locally(wrangler_project, run_cli,
                                                         write_migration):
    write_migration("0001_schema.sql", SCHEMA)
    write_migration("0002_rebuild_users.sql", REBUILD)
    code, out, err = run_cli(["apply", "--wrangler-config", "wrangler.toml"])
    assert code == 1
    # wrangler's local D1 file: what D1 treats differently is said first
    warning, *err_lines = err.splitlines()
    assert warning.startswith("Warning: migrations/0002_rebuild_users.sql:1: PRAGMA"
                              " foreign_keys = OFF does nothing on D1"), warning
    assert err_lines == [
        "Error: Failed to apply migration 0002_rebuild_users: it would take rows from a"
        " table it does not name, through a foreign key's ON DELETE action (D1 always"
        " enforces them): sessions (ON DELETE CASCADE from users), 2 rows before and 0 after;"
        " it was rolled back. Keep those rows in the migration (copy them aside and back, or"
        " rebuild that table too), or pass --allow-row-loss if the loss is intended"
        " (0002_rebuild_users.sql)"]
    db = local_db(wrangler_project)
    assert data(db) == SEEDED
    with closing(sqlite3.connect(db)) as conn:
        names = {r[0] for r in conn.execute("SELECT name FROM sqlite_master")}
        assert "apply_migrations_guard" not in names and "__new_users" not in names
        assert [r[0] for r in conn.execute("SELECT name FROM schema_migrations")] == [
            "0001_schema"]


def test_set_null_references_are_counted_too(wrangler_project, run_cli, write_migration):
    write_migration("0001_schema.sql", SCHEMA.replace("ON DELETE CASCADE", ""))
    write_migration("0002_drop_users.sql", "PRAGMA defer_foreign_keys = ON;\n"
                    "DELETE FROM sessions;\nDROP TABLE users;\n"
                    "CREATE TABLE users (id INTEGER PRIMARY KEY, email TEXT NOT NULL);\n")
    code, out, err = run_cli(["apply", "--wrangler-config", "wrangler.toml"])
    assert code == 1
    assert ("accounts.user_id (ON DELETE SET NULL to users), 2 references before and 0 after"
            in err), err
    assert data(local_db(wrangler_project))["accounts"] == [(100, 1), (200, 2)]


def test_a_rebuild_that_keeps_the_rows_applies(wrangler_project, run_cli, write_migration):
    write_migration("0001_schema.sql", SCHEMA)
    write_migration("0002_rebuild_users.sql", SAFE_REBUILD)
    code, out, err = run_cli(["apply", "--wrangler-config", "wrangler.toml"])
    assert code == 0, err
    assert data(local_db(wrangler_project)) == {
        **SEEDED, "users": [(1, "a@example.com", None), (2, "b@example.com", None)]}


def test_allow_row_loss_lets_the_cascade_run(wrangler_project, run_cli, write_migration):
    write_migration("0001_schema.sql", SCHEMA)
    write_migration("0002_rebuild_users.sql", REBUILD)
    code, out, err = run_cli(["apply", "--wrangler-config", "wrangler.toml",
                              "--allow-row-loss"])
    assert code == 0, err
    after = data(local_db(wrangler_project))
    assert after["sessions"] == [] and after["accounts"] == [(100, None), (200, None)]


def test_without_enforced_foreign_keys_nothing_is_lost(project, run_cli, write_migration):
    # A plain SQLite file does not enforce foreign keys: the rebuild keeps
    # every row, and the guard, which counts, lets it through.
    write_migration("0001_schema.sql", SCHEMA)
    write_migration("0002_rebuild_users.sql", REBUILD)
    code, out, err = run_cli(["apply", "--db-path", "plain.db"])
    assert code == 0, err
    assert data(project / "plain.db")["sessions"] == [(10, 1), (20, 2)]


def test_migrations_that_drop_nothing_referenced_read_nothing_more(project, write_migration):
    write_migration("0001_schema.sql", SCHEMA)
    write_migration("0002_index.sql", "CREATE INDEX users_email ON users (email);\n")
    write_migration("0003_drop_lonely.sql", "CREATE TABLE lonely (x);\nDROP TABLE lonely;\n")
    queries = []
    with apply_migrations.Migrator(project / "x.db", project / "migrations",
                                   foreign_keys=True) as migrator:
        real = migrator.target.query
        migrator.target.query = lambda sql, params=(): queries.append(sql) or real(sql, params)
        migrator.apply()
    references = [q for q in queries if "pragma_foreign_key_list" in q]
    assert len(references) == 1  # only 0003 drops a table; nothing references it


@pytest.fixture
def fake(monkeypatch):
    with FakeD1() as server:
        for name, value in remote_env(server).items():
            monkeypatch.setenv(name, value)
        yield server


@pytest.mark.parametrize("extra", [[], ["--single-transaction"]], ids=["per-file", "one-batch"])
def test_a_rebuild_that_would_cascade_is_refused_on_d1(fake, run_cli, write_migration, extra):
    write_migration("0001_schema.sql", SCHEMA)
    assert run_cli(["apply", "--d1-remote", "--no-bookmark"])[0] == 0
    before = fake.dump()
    write_migration("0002_rebuild_users.sql", REBUILD)
    code, out, err = run_cli(["apply", "--d1-remote", "--json", *extra])
    assert code == 1
    message = json.loads(out)["error"]["message"]
    assert message.startswith(
        "Failed to apply migration 0002_rebuild_users: it would take rows from a table it does"
        " not name, through a foreign key's ON DELETE action (D1 always enforces them):"
        " sessions (ON DELETE CASCADE from users), 2 rows before; it was rolled back."), message
    assert fake.dump() == before  # nothing changed on D1, no guard table left

    code, out, err = run_cli(["apply", "--d1-remote", "--allow-row-loss", *extra])
    assert code == 0, err
    assert fake.rows("SELECT count(*) FROM sessions") == [(0,)]


def test_a_rebuild_that_keeps_the_rows_applies_on_d1(fake, run_cli, write_migration):
    write_migration("0001_schema.sql", SCHEMA)
    write_migration("0002_rebuild_users.sql", SAFE_REBUILD)
    code, out, err = run_cli(["apply", "--d1-remote"])
    assert code == 0, err
    assert fake.rows("SELECT id, user_id FROM sessions ORDER BY id") == [(10, 1), (20, 2)]
    assert fake.rows("SELECT id, user_id FROM accounts ORDER BY id") == [(100, 1), (200, 2)]


# --------------------------------------------------------------------------
# check: the same danger found before deploy, with file and line

def drop_findings(run_cli):
    code, out, err = run_cli(["check", "--json"])
    findings = [f for f in json.loads(out)["findings"]
                if f["code"] in ("drop-referenced-table", "replay-failed")]
    return code, findings


def test_check_finds_a_drop_of_a_referenced_table(run_cli, write_migration):
    write_migration("0001_schema.sql", SCHEMA + "CREATE TABLE posts (id INTEGER PRIMARY KEY,"
                    " user_id INTEGER REFERENCES users (id));\n")
    write_migration("0002_rebuild_users.sql", REBUILD)
    code, findings = drop_findings(run_cli)
    assert code == 1
    assert [(f["severity"], f["path"], f["line"]) for f in findings] == [
        ("error", "migrations/0002_rebuild_users.sql", 5)]
    message = findings[0]["message"]
    assert message.startswith("DROP TABLE users: other tables reference it, and on D1, which"
                              " always enforces foreign keys, the drop ")
    assert "deletes every row of sessions (ON DELETE CASCADE)" in message
    assert "sets accounts.user_id to NULL (ON DELETE SET NULL)" in message
    assert "fails when posts has rows (a plain reference)" in message
    assert "PRAGMA defer_foreign_keys = ON does not stop ON DELETE actions" in message


def test_check_is_quiet_on_a_rebuild_that_keeps_the_rows(run_cli, write_migration):
    write_migration("0001_schema.sql", SCHEMA)
    write_migration("0002_rebuild_users.sql", SAFE_REBUILD)
    code, findings = drop_findings(run_cli)
    assert (code, findings) == (0, [])


@pytest.mark.parametrize("defer,found", [(False, True), (True, False)],
                         ids=["plain-without-defer", "plain-with-defer"])
def test_check_plain_references_and_defer(run_cli, write_migration, defer, found):
    write_migration("0001_schema.sql", SCHEMA.replace(" ON DELETE CASCADE", "").replace(
        " ON DELETE SET NULL", ""))
    write_migration("0002_rebuild_users.sql",
                    ("PRAGMA defer_foreign_keys = ON;\n" if defer else "") + REBUILD)
    code, findings = drop_findings(run_cli)
    assert bool(findings) == found
    if found:
        assert "put PRAGMA defer_foreign_keys = ON before the drop" in findings[0]["message"]


def test_check_says_when_the_schema_cannot_be_replayed(run_cli, write_migration):
    write_migration("0001_schema.sql", SCHEMA)
    write_migration("0002_newer_sqlite.sql", "SELECT no_such_function();\n")
    write_migration("0003_rebuild_users.sql", REBUILD)
    code, findings = drop_findings(run_cli)
    assert [(f["severity"], f["path"], f["line"], f["code"]) for f in findings] == [
        ("warning", "migrations/0002_newer_sqlite.sql", 1, "replay-failed")]
    assert "no such function: no_such_function" in findings[0]["message"]


def test_the_manuals_rebuild_that_keeps_the_rows_passes_the_guard(project, run_cli,
                                                                  write_migration):
    from pathlib import Path
    import re
    manual = (Path(__file__).resolve().parent.parent / "MIGRATION_SYSTEM.md").read_text(
        encoding="utf-8")
    section = manual.split("### No silent loss of rows", 1)[1].split("\n### ", 1)[0]
    example = re.search(r"```sql\n(.*?)```", section, re.DOTALL).group(1)
    schema = "\n".join(line for line in SCHEMA.splitlines() if "accounts" not in line
                       and "ON DELETE SET NULL" not in line) + "\n"
    write_migration("0001_schema.sql", schema)
    write_migration("0002_rebuild_users.sql", example)
    code, out, err = run_cli(["apply", "--db-path", "x.db", "--foreign-keys"])
    assert code == 0, err
    with closing(sqlite3.connect(str(project / "x.db"))) as conn:
        assert conn.execute("SELECT id, user_id FROM sessions ORDER BY id").fetchall() == [
            (10, 1), (20, 2)]
        assert [r[1] for r in conn.execute("PRAGMA table_info(users)")] == ["id", "email", "name"]


CASES = [
    ('ALTER TABLE main."a b" RENAME TO [c]', set(), set(), {"a b", "c"}),
    ('DELETE /* a comment */ FROM "p" WHERE 1', set(), {"p"}, {"p"}),
    ("INSERT OR REPLACE INTO t VALUES ('DROP TABLE z; DELETE FROM y')", set(), set(), {"t"}),
    ("WITH x AS (SELECT 1) DELETE FROM q WHERE id IN x", set(), {"q"}, {"q"}),
    ("DROP TABLE IF EXISTS main . zz", {"zz"}, set(), {"zz"}),
    ('create table "x""y" (a)', set(), set(), {'x"y'}),
    ("UPDATE OR IGNORE u SET a = 1", set(), set(), {"u"}),
    # A trigger's body runs later, not when the migration creates it.
    ("CREATE TRIGGER tr AFTER INSERT ON a BEGIN DELETE FROM b; END", set(), set(), set()),
    # What a long statement does is read from its first words alone.
    ("INSERT INTO big VALUES " + ", ".join("(%d, 'DELETE FROM x')" % i for i in range(5000)),
     set(), set(), {"big"}),
]


@pytest.mark.parametrize("case", range(len(CASES)))
def test_what_a_statement_drops_deletes_and_names(case):
    sql, drops, deletes, names = CASES[case]
    # Beside a DELETE, so that what the statement names is read too.
    changes = apply_migrations.changes_of(apply_migrations.split_sql(
        sql + ";\nDELETE FROM other;"))
    assert (changes.drops, changes.deletes - {"other"}, changes.names - {"other"}) == (
        drops, deletes, names)


def test_statements_that_cannot_take_rows_are_not_read():
    statements = apply_migrations.split_sql(
        "CREATE TABLE a (x);\nINSERT INTO a VALUES ('DROP TABLE b');\nUPDATE a SET x = 1;")
    assert apply_migrations.changes_of(statements) == apply_migrations.NO_CHANGES
