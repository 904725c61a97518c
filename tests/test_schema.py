"""The tool knows the schema (issue 17): `schema` from the database or from
the migration files alone, drift in `status`, rollback without a down script
computed from the schema before, down scripts verified by `check`, schema
files, and the markdown and Mermaid renderings.  On one migration set that
creates and drops tables, indexes, views and triggers, adds, drops and
renames columns, rebuilds a table in SQLite's twelve steps, and has foreign
keys."""
from __future__ import annotations

import json
import re
import shutil
import sqlite3
from contextlib import closing
from pathlib import Path
from typing import Dict, List

import pytest

from conftest import apply_migrations

MIGRATIONS = {
    "0001_users_and_posts.sql": """\
CREATE TABLE users (id INTEGER PRIMARY KEY, email TEXT NOT NULL UNIQUE);
CREATE TABLE posts (
    id      INTEGER PRIMARY KEY,
    user_id INTEGER NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    title   TEXT NOT NULL,
    draft   INTEGER NOT NULL DEFAULT 0
);
INSERT INTO users (id, email) VALUES (1, 'a@example.com'), (2, 'b@example.com');
INSERT INTO posts (id, user_id, title) VALUES (10, 1, 'one'), (20, 2, 'two');
""",
    "0002_posts_index.sql": "CREATE INDEX posts_user ON posts (user_id);\n",
    "0003_view.sql": "CREATE VIEW user_posts AS\n"
                     "    SELECT users.email, posts.title FROM users JOIN posts"
                     " ON posts.user_id = users.id;\n",
    "0004_audit.sql": "CREATE TABLE audit (post_id INTEGER, at TEXT);\n"
                      "CREATE TRIGGER posts_audit AFTER INSERT ON posts\n"
                      "BEGIN\n    INSERT INTO audit (post_id, at) VALUES (NEW.id, 'now');\nEND;\n",
    "0005_user_name.sql": "ALTER TABLE users ADD COLUMN name TEXT;\n",
    "0006_rename_title.sql": "DROP VIEW user_posts;\n"
                             "ALTER TABLE posts RENAME COLUMN title TO headline;\n",
    "0007_drop_draft.sql": "ALTER TABLE posts DROP COLUMN draft;\n",
    "0008_rebuild_users.sql": """\
-- SQLite's twelve steps: a column made NOT NULL with a default
PRAGMA foreign_keys = OFF;
CREATE TABLE new_users (
    id     INTEGER PRIMARY KEY,
    email  TEXT NOT NULL UNIQUE,
    name   TEXT NOT NULL DEFAULT '',
    joined INTEGER NOT NULL DEFAULT 0
);
INSERT INTO new_users (id, email, name) SELECT id, email, coalesce(name, '') FROM users;
DROP TABLE users;
ALTER TABLE new_users RENAME TO users;
PRAGMA foreign_keys = ON;
""",
    "0009_drop_index.sql": "DROP INDEX posts_user;\n",
    "0010_drop_audit.sql": "DROP TRIGGER posts_audit;\nDROP TABLE audit;\n",
    "0011_rename_table.sql": "ALTER TABLE posts RENAME TO articles;\n",
}
NAMES = sorted(MIGRATIONS)


@pytest.fixture
def applied(project, write_migration, run_cli) -> Path:
    for name, text in MIGRATIONS.items():
        write_migration(name, text)
    code, out, err = run_cli(["apply", "--db-path", "app.db"])
    assert code == 0, err
    return project / "app.db"


def schema_text(run_cli, *extra: str) -> str:
    code, out, err = run_cli(["schema", *extra])
    assert code == 0, err
    return out


def differences_from_replay(db: Path, project: Path, names: List[str]) -> list:
    """How the database's schema differs from the one the first migrations
    make (compared as the tool compares: comments, spacing and the quotes
    SQLite adds on a rename left out)."""
    folder = project / ("upto_%d" % len(names))
    folder.mkdir()
    for name in names:
        shutil.copy(str(project / "migrations" / name), str(folder / name))
    expected = apply_migrations.replay_schema(
        apply_migrations.scan_folder(str(folder)).migrations)
    with closing(sqlite3.connect(str(db))) as conn:
        actual = apply_migrations.read_schema(
            lambda sql, params: conn.execute(sql, params).fetchall(),
            ["schema_migrations", "schema_migrations_state", "schema_migrations_history"])
    return [(kind, o.type, o.name) for kind, o in actual.differences(expected)]


def rows(db: Path) -> Dict[str, list]:
    with closing(sqlite3.connect(str(db))) as conn:
        tables = [r[0] for r in conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
            " AND name NOT LIKE 'schema_migrations%'")]
        return {t: conn.execute(f'SELECT * FROM "{t}" ORDER BY 1').fetchall() for t in tables}


def test_schema_from_the_migrations_is_the_schema_of_the_applied_database(applied, run_cli,
                                                                          project):
    from_db = schema_text(run_cli, "--db-path", "app.db")
    assert schema_text(run_cli, "--from-migrations") == from_db
    assert 'CREATE TABLE "users"' in from_db and 'CREATE TABLE "articles"' in from_db
    assert "schema_migrations" not in from_db  # the record is not the schema
    # --from-migrations needs no database and makes none.
    code, out, err = run_cli(["schema", "--from-migrations", "--db-path", "none.db"])
    assert code == 0 and not (project / "none.db").exists()
    code, out, err = run_cli(["schema", "--db-path", "none.db"])
    assert code == 1 and "does not exist" in err and not (project / "none.db").exists()


def test_a_manual_change_is_drift_and_fails_status_exit_code(applied, run_cli):
    code, out, err = run_cli(["status", "--db-path", "app.db", "--exit-code"])
    assert code == 0 and "Drift" not in out, out
    with closing(sqlite3.connect(str(applied))) as conn:
        conn.execute("ALTER TABLE users ADD COLUMN hotfix TEXT")
        conn.execute("CREATE INDEX by_hand ON articles (headline)")
        conn.commit()
    code, out, err = run_cli(["status", "--db-path", "app.db", "--exit-code"])
    assert code == 1
    assert "Drift: the schema of app.db is not what its applied migrations make:" in out
    assert "  table users: changed" in out
    assert "  index by_hand (on articles): not created by any migration" in out
    code, out, err = run_cli(["status", "--db-path", "app.db", "--json"])
    drift = json.loads(out)["drift"]
    assert drift["checked"] is True
    assert {(d["difference"], d["type"], d["name"]) for d in drift["differences"]} == {
        ("changed", "table", "users"), ("not created by any migration", "index", "by_hand")}
    code, out, err = run_cli(["status", "--db-path", "app.db", "--exit-code", "--no-drift"])
    assert code == 0 and "Drift" not in out


def test_drift_is_checked_without_the_tools_note_too(applied, run_cli):
    # A database migrated by another tool has no note: the migrations are
    # replayed, and the same drift is found.
    with closing(sqlite3.connect(str(applied))) as conn:
        conn.execute("DROP TABLE schema_migrations_state")
        conn.commit()
    code, out, err = run_cli(["status", "--db-path", "app.db", "--exit-code"])
    assert code == 0 and "Drift" not in out, out
    with closing(sqlite3.connect(str(applied))) as conn:
        conn.execute("DROP VIEW IF EXISTS x")
        conn.execute("CREATE VIEW hand AS SELECT 1")
        conn.commit()
    code, out, err = run_cli(["status", "--db-path", "app.db", "--exit-code"])
    assert code == 1 and "  view hand: not created by any migration" in out


def test_drift_is_unknown_when_a_migration_cannot_be_replayed(project, write_migration, run_cli):
    # A table made by hand before the first migration, which fills it: the
    # migration ran on the database, and cannot run on an empty one.
    with closing(sqlite3.connect(str(project / "app.db"))) as conn:
        conn.execute("CREATE TABLE legacy (x)")
    write_migration("0001_a.sql", "CREATE TABLE a (x);\nINSERT INTO legacy VALUES (1);\n")
    code, out, err = run_cli(["apply", "--db-path", "app.db"])
    assert code == 0, err
    code, out, err = run_cli(["status", "--db-path", "app.db", "--json"])
    drift = json.loads(out)["drift"]
    assert drift["checked"] is False and drift["differences"] == []
    assert "no such table: legacy" in drift["unknown"]
    code, out, err = run_cli(["status", "--db-path", "app.db", "--exit-code"])
    assert code == 0 and "Drift: not checked: Failed to apply migration 0001_a: no such table:"\
        " legacy" in out
    # No rollback computed from a wrong picture either.
    code, out, err = run_cli(["rollback", "--db-path", "app.db"])
    assert code == 1 and "Cannot compute a rollback of 0001_a" in err
    (project / "migrations" / "0001_a.sql").unlink()
    code, out, err = run_cli(["status", "--db-path", "app.db", "--json"])
    assert "the file of 0001_a is gone" in json.loads(out)["drift"]["unknown"]


def test_every_migration_rolls_back_without_a_down_script(applied, run_cli, project):
    refused = []
    for done in range(len(NAMES), 0, -1):
        before = rows(applied)
        code, out, err = run_cli(["rollback", "--db-path", "app.db"])
        if code == 1 and "would lose" in err:
            refused.append(NAMES[done - 1])
            assert "Nothing was rolled back" in err
            assert rows(applied) == before  # refused: nothing changed
            code, out, err = run_cli(["rollback", "--db-path", "app.db", "--allow-data-loss"])
        assert code == 0, (NAMES[done - 1], err)
        assert "computed from the schema before it" in out
        # Exactly the schema the migrations before it make ...
        assert differences_from_replay(applied, project, NAMES[:done - 1]) == [], NAMES[done - 1]
        # ... with every row of every table that survives.
        after = rows(applied)
        for table, kept in after.items():
            if table in before and NAMES[done - 1] not in refused:
                assert len(kept) == len(before[table]), (NAMES[done - 1], table)
    # Refused where data would be lost: the column 0008 added (its default
    # filled it), the names 0005's column holds after 0008, 0001's rows.
    assert refused == ["0008_rebuild_users.sql", "0005_user_name.sql",
                       "0001_users_and_posts.sql"]
    assert rows(applied) == {}


def test_rollback_dry_run_prints_and_changes_nothing(applied, run_cli, project):
    before = applied.read_bytes()
    code, out, err = run_cli(["rollback", "--db-path", "app.db", "--dry-run"])
    assert code == 0, err
    assert out.splitlines()[0] == ("-- The rollback of 0011_rename_table (computed:"
                                   " 0011_rename_table has no down script); nothing was changed")
    assert 'ALTER TABLE "articles" RENAME TO "posts";' in out
    assert applied.read_bytes() == before


def test_new_down_writes_the_computed_script_and_check_verifies_it(applied, run_cli, project):
    code, out, err = run_cli(["new", "--down", "0006"])
    assert code == 0, err
    down = project / "migrations" / "down" / "0006_rename_title.sql"
    assert out.strip() == str(Path("migrations") / "down" / "0006_rename_title.sql")
    text = down.read_text()
    assert text.startswith("-- Down script of 0006_rename_title, computed by")
    assert 'RENAME COLUMN "headline" TO "title"' in text
    code, out, err = run_cli(["check", "--json"])
    codes = [f["code"] for f in json.loads(out)["findings"]]
    assert not [c for c in codes if c.startswith(("down-", "up-after"))], codes
    code, out, err = run_cli(["new", "--down", "0006"])
    assert code == 1 and "already exists" in err


def test_check_reports_a_down_script_that_forgets_an_index(project, write_migration, run_cli):
    write_migration("0001_a.sql", "CREATE TABLE a (x);\n")
    write_migration("0002_index.sql", "CREATE INDEX a_x ON a (x);\nCREATE TABLE b (y);\n")
    write_migration("0002_index.sql", "DROP TABLE b;\n", folder="migrations/down")
    code, out, err = run_cli(["check", "--json"])
    assert code == 1
    findings = [f for f in json.loads(out)["findings"] if f["code"] == "down-script-incomplete"]
    assert [(f["path"], f["severity"]) for f in findings] == [
        ("migrations/down/0002_index.sql", "error")]
    assert findings[0]["message"] == (
        "it does not undo 0002_index: index a_x: created by the migration, not dropped")


def test_schema_file_is_kept_by_apply_and_checked_by_check(project, write_migration, run_cli):
    write_migration("0001_a.sql", "CREATE TABLE a (x);\n")
    code, out, err = run_cli(["apply", "--db-path", "app.db", "--schema-file", "schema.sql"])
    assert code == 0, err
    assert (project / "schema.sql").read_text() == schema_text(run_cli, "--from-migrations")
    assert run_cli(["check", "--schema-file", "schema.sql"])[0] == 0
    write_migration("0002_b.sql", "CREATE TABLE b (y);\n")
    code, out, err = run_cli(["check", "--schema-file", "schema.sql", "--json"])
    assert code == 1
    found = [f for f in json.loads(out)["findings"] if f["code"] == "schema-file"]
    assert found and "+CREATE TABLE b (y);" in found[0]["message"]
    assert "schema --from-migrations --output schema.sql" in found[0]["message"]
    code, out, err = run_cli(["schema", "--from-migrations", "--output", "schema.sql"])
    assert code == 0 and run_cli(["check", "--schema-file", "schema.sql"])[0] == 0


# --------------------------------------------------------------------------
# Markdown and Mermaid

MERMAID_LINE = re.compile(
    r'erDiagram'
    r'|    [A-Za-z][A-Za-z0-9_]* \{'
    r'|        [A-Za-z][A-Za-z0-9_]* [A-Za-z][A-Za-z0-9_]*(?: (?:PK|FK|PK, FK))?'
    r'|    \}'
    r'|    [A-Za-z][A-Za-z0-9_]* \}o--\|\| [A-Za-z][A-Za-z0-9_]* : "[^"]*"')


@pytest.fixture
def odd_names(project, write_migration):
    write_migration("0001_odd.sql", """\
CREATE TABLE "weird name-1" (id INTEGER PRIMARY KEY, "1st col" VARCHAR(10), [x|y] TEXT);
CREATE TABLE child ("parent id" INTEGER REFERENCES "weird name-1" (id), note);
CREATE INDEX child_parent ON child ("parent id");
""")
    return project


def test_mermaid_is_a_valid_er_diagram(odd_names, run_cli):
    text = schema_text(run_cli, "--from-migrations", "--format", "mermaid")
    lines = text.splitlines()
    assert lines[0] == "erDiagram"
    for line in lines:
        assert MERMAID_LINE.fullmatch(line), line
    opened = [line for line in lines if line.endswith("{")]
    assert len(opened) == len([line for line in lines if line == "    }"]) == 2
    assert '    child }o--|| weird_name_1 : "parent id"' in lines
    assert "        INTEGER parent_id FK" in lines
    assert "        VARCHAR_10 col_1st_col" in lines


def test_markdown_is_a_valid_table_per_table(odd_names, run_cli):
    text = schema_text(run_cli, "--from-migrations", "--format", "markdown")

    def cells(row: str) -> int:
        assert row.startswith("| ") and row.endswith(" |"), row
        return len(re.split(r"(?<!\\)\|", row)) - 2

    sections = text.split("\n## ")[1:]
    assert [s.splitlines()[0] for s in sections] == ["child", "weird name-1"]
    for section in sections:
        table = [line for line in section.splitlines() if line.startswith("|")]
        assert re.fullmatch(r"\|(---\|)+", table[1])
        width = table[1].count("---")
        assert all(cells(row) == width for row in [table[0]] + table[2:]), table
    assert "| x\\|y | TEXT |" in text


def test_json_lists_columns_and_foreign_keys(odd_names, run_cli):
    data = json.loads(schema_text(run_cli, "--from-migrations", "--format", "json"))
    assert [c["name"] for c in data["tables"]["child"]["columns"]] == ["parent id", "note"]
    assert data["tables"]["child"]["foreign_keys"] == [
        {"column": "parent id", "references": "weird name-1", "on_delete": "NO ACTION"}]
    assert data["tables"]["child"]["indexes"] == ["child_parent"]


# --------------------------------------------------------------------------
# Drift on D1 targets: wrangler's local file and --d1-remote (the fake API)

WRANGLER_TOML = ('name = "app"\n[[d1_databases]]\nbinding = "DB"\n'
                 'database_name = "app"\n'
                 'database_id = "00000000-0000-4000-8000-0000000000d1"\n')
D1_SET = {
    "0001_users.sql": "CREATE TABLE users (id INTEGER PRIMARY KEY, email TEXT NOT NULL);\n",
    "0002_posts.sql": "CREATE TABLE posts (id INTEGER PRIMARY KEY,"
                      " user_id INTEGER REFERENCES users (id));\n"
                      "CREATE INDEX posts_user ON posts (user_id);\n",
    "0003_name.sql": "ALTER TABLE users ADD COLUMN name TEXT;\n",
}


def test_drift_on_wrangler_s_local_file(project, write_migration, run_cli):
    (project / "wrangler.toml").write_text(WRANGLER_TOML)
    for name, text in D1_SET.items():
        write_migration(name, text)
    target = ["--wrangler-config", "wrangler.toml"]
    code, out, err = run_cli(["apply", *target])
    assert code == 0, err
    code, out, err = run_cli(["status", *target, "--exit-code"])
    assert code == 0 and "Drift" not in out, out
    db = apply_migrations.wrangler_database(str(project / "wrangler.toml")).db_path
    with closing(sqlite3.connect(db)) as conn:
        conn.execute("DROP INDEX posts_user")
        conn.commit()
    code, out, err = run_cli(["status", *target, "--exit-code"])
    assert code == 1
    assert "  index posts_user (on posts): missing" in out, out


def test_drift_on_d1_remote(project, write_migration, run_cli, monkeypatch):
    from fake_d1 import FakeD1, remote_env
    for name, text in D1_SET.items():
        write_migration(name, text)
    with FakeD1() as fake:
        for name, value in remote_env(fake).items():
            monkeypatch.setenv(name, value)
        code, out, err = run_cli(["apply", "--d1-remote", "--no-bookmark"])
        assert code == 0, err
        code, out, err = run_cli(["status", "--d1-remote", "--json"])
        assert code == 0, err
        drift = json.loads(out)["drift"]
        assert drift["checked"] is True and drift["differences"] == [], drift
        fake.sql("ALTER TABLE users ADD COLUMN hotfix TEXT")
        code, out, err = run_cli(["status", "--d1-remote", "--exit-code"])
        assert code == 1
        assert "  table users: changed" in out, out
        # A computed rollback is refused on a drifted database.
        code, out, err = run_cli(["rollback", "--d1-remote", "--no-bookmark"])
        assert code == 1 and "drift" in err.lower(), err


def test_rollback_of_an_added_column_leaves_the_tables_indexes_and_triggers_alone(
        project, write_migration, run_cli):
    """A column the migration added is dropped, and nothing else: the
    table's indexes and triggers were not rebuilt, so they are not made
    again (on a large table that would cost an index build each)."""
    write_migration("0001_t.sql", "CREATE TABLE t (id INTEGER PRIMARY KEY, name TEXT);\n"
                                  "CREATE INDEX t_name ON t (name);\n"
                                  "CREATE TABLE log (id INTEGER);\n"
                                  "CREATE TRIGGER t_log AFTER INSERT ON t\n"
                                  "BEGIN INSERT INTO log (id) VALUES (NEW.id); END;\n")
    write_migration("0002_note.sql", "ALTER TABLE t ADD COLUMN note TEXT;\n")
    code, out, err = run_cli(["apply", "--db-path", "app.db"])
    assert code == 0, err
    code, out, err = run_cli(["rollback", "--db-path", "app.db", "--dry-run"])
    assert code == 0, err
    assert out.splitlines()[1:] == ['ALTER TABLE "t" DROP COLUMN "note";']


def test_up_and_down_files_of_one_number_point_to_the_down_folder(project, write_migration,
                                                                   run_cli):
    write_migration("0001_a.up.sql", "CREATE TABLE a (x);\n")
    write_migration("0001_a.down.sql", "DROP TABLE a;\n")
    code, out, err = run_cli(["status", "--db-path", "app.db"])
    assert code == 1
    assert "a down script belongs in the down/ sub-folder" in err, err
    assert not (project / "app.db").exists()


def test_a_dry_run_refused_for_lost_data_still_shows_what_it_computed(project, write_migration,
                                                                     run_cli):
    """The preview is most wanted where the rollback is refused: the SQL is
    printed, with what it would lose, and the exit code is the real run's."""
    write_migration("0001_a.sql", "CREATE TABLE a (id INTEGER PRIMARY KEY);\n")
    write_migration("0002_b.sql", "CREATE TABLE b (id INTEGER PRIMARY KEY, v TEXT);\n"
                                  "ALTER TABLE a ADD COLUMN note TEXT;\n")
    code, out, err = run_cli(["apply", "--db-path", "app.db"])
    assert code == 0, err
    with closing(sqlite3.connect(str(project / "app.db"))) as conn:
        conn.execute("INSERT INTO b (v) VALUES ('x')")
        conn.execute("INSERT INTO a (note) VALUES ('n')")
        conn.commit()
    before = (project / "app.db").read_bytes()
    code, out, err = run_cli(["rollback", "--db-path", "app.db", "--dry-run"])
    assert code == 1
    assert out.splitlines() == [
        "-- The rollback of 0002_b (computed: 0002_b has no down script); nothing was changed",
        "-- Note: it would lose the 1 value of column a.note, which the migration added",
        "-- Note: it would lose the 1 row of table b, which the migration created",
        'ALTER TABLE "a" DROP COLUMN "note";',
        'DROP TABLE "b";']
    assert err.startswith("Error: The rollback computed for 0002_b (it has no down script)"
                          " would lose the 1 value of column a.note"), err
    assert (project / "app.db").read_bytes() == before
    code, out, err = run_cli(["rollback", "--db-path", "app.db", "--dry-run", "--json"])
    assert code == 1
    assert list(json.loads(out)) == ["error"]  # one object: the error's
