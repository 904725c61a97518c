"""Foreign keys as D1 enforces them (--foreign-keys), and SQLite's own rules
without the option (a file's leading PRAGMA foreign_keys runs before BEGIN,
and the connection's setting comes back after).

With --foreign-keys the connection has PRAGMA foreign_keys = ON, a
PRAGMA foreign_keys in a file changes nothing (as on D1), PRAGMA
defer_foreign_keys = ON moves the checks to the end of the migration, and
PRAGMA foreign_key_check runs after each migration: rows left pointing
nowhere roll the migration back, naming table and rows.  The last test holds
all this against D1 itself (`wrangler d1 migrations apply --local`).
"""
from __future__ import annotations

import json
from contextlib import closing
import sqlite3
import sys
from pathlib import Path

import pytest

from conftest import BUNDLED_MIGRATIONS
from dbhelpers import applied_names, query, tables

sys.path.insert(0, str(Path(__file__).resolve().parent / "fixtures" / "wrangler"))
import wrangler_cli  # noqa: E402

DB = "fk.db"

SCHEMA = """\
CREATE TABLE parent (id INTEGER PRIMARY KEY, name TEXT NOT NULL);
CREATE TABLE child (
    id        INTEGER PRIMARY KEY,
    parent_id INTEGER NOT NULL REFERENCES parent (id){on_delete}
);
INSERT INTO parent (id, name) VALUES (1, 'one'), (2, 'two');
INSERT INTO child (id, parent_id) VALUES (10, 1), (11, 2);
"""


def schema(on_delete: str = "") -> str:
    return SCHEMA.format(on_delete=f" ON DELETE {on_delete}" if on_delete else "")


def apply(run_cli, *extra: str):
    return run_cli(["apply", "--db-path", DB] + list(extra))


def children(project: Path):
    return query(project / DB, "SELECT id, parent_id FROM child ORDER BY id")


# --------------------------------------------------------------------------
# --foreign-keys: a migration that leaves dangling references is rolled back


def test_dangling_reference_rolls_the_migration_back(project, run_cli, write_migration):
    write_migration("0001_schema.sql", schema())
    write_migration("0002_orphan.sql",
                    "PRAGMA defer_foreign_keys = ON;\n"
                    "CREATE TABLE audit (id INTEGER PRIMARY KEY);\n"
                    "INSERT INTO audit (id) VALUES (1);\n"
                    "INSERT INTO child (id, parent_id) VALUES (20, 99);\n")
    write_migration("0003_later.sql", "CREATE TABLE later (id INTEGER);\n")
    code, out, err = apply(run_cli, "--foreign-keys")
    assert code == 1
    assert "Failed to apply migration 0002_orphan" in err
    assert "child rowid 20 -> parent" in err
    assert "foreign_key_check" in err
    # Wholly rolled back; earlier kept, later not tried.
    assert applied_names(project / DB) == ["0001_schema"]
    assert "audit" not in tables(project / DB) and "later" not in tables(project / DB)
    assert children(project) == [(10, 1), (11, 2)]


def test_without_the_option_the_same_migration_applies(project, run_cli, write_migration):
    # Plain SQLite does not check: the option is what makes the difference.
    write_migration("0001_schema.sql", schema())
    write_migration("0002_orphan.sql", "PRAGMA defer_foreign_keys = ON;\n"
                    "INSERT INTO child (id, parent_id) VALUES (20, 99);\n")
    code, out, err = apply(run_cli)
    assert code == 0, err
    assert (20, 99) in children(project)


def test_dangling_rows_are_named_up_to_five(project, run_cli, write_migration):
    write_migration("0001_schema.sql", schema())
    write_migration("0002_orphans.sql", "PRAGMA defer_foreign_keys = ON;\n"
                    "INSERT INTO child (id, parent_id) VALUES"
                    " (21, 91), (22, 92), (23, 93), (24, 94), (25, 95), (26, 96), (27, 97);\n")
    code, out, err = apply(run_cli, "--foreign-keys", "--json")
    assert code == 1
    message = json.loads(out)["error"]["message"]
    for rowid in (21, 22, 23, 24, 25):
        assert f"child rowid {rowid} -> parent" in message
    assert "rowid 26" not in message and "and 2 more" in message
    assert children(project) == [(10, 1), (11, 2)]


def test_dropping_a_referenced_parent_rolls_back(project, run_cli, write_migration):
    write_migration("0001_schema.sql", schema())
    write_migration("0002_drop_parent.sql", "PRAGMA defer_foreign_keys = ON;\n"
                    "DROP TABLE parent;\n")
    code, out, err = apply(run_cli, "--foreign-keys")
    assert code == 1
    assert "Failed to apply migration 0002_drop_parent" in err
    assert "child rowid 10 -> parent" in err and "child rowid 11 -> parent" in err
    assert query(project / DB, "SELECT id FROM parent ORDER BY id") == [(1,), (2,)]
    assert applied_names(project / DB) == ["0001_schema"]


def test_dropping_a_referenced_parent_without_defer_fails_at_once(project, run_cli,
                                                                  write_migration):
    write_migration("0001_schema.sql", schema())
    write_migration("0002_drop_parent.sql", "CREATE TABLE audit (id INTEGER);\n"
                    "DROP TABLE parent;\n")
    code, out, err = apply(run_cli, "--foreign-keys")
    assert code == 1
    assert "FOREIGN KEY constraint failed" in err
    assert "statement 2, line 2" in err
    assert "audit" not in tables(project / DB)
    assert "parent" in tables(project / DB)


def test_single_transaction_run_is_rolled_back_whole(project, run_cli, write_migration):
    write_migration("0001_schema.sql", schema())
    write_migration("0002_orphan.sql", "PRAGMA defer_foreign_keys = ON;\n"
                    "INSERT INTO child (id, parent_id) VALUES (20, 99);\n")
    code, out, err = apply(run_cli, "--foreign-keys", "--single-transaction")
    assert code == 1
    assert "child rowid 20 -> parent" in err
    assert "rolled back the whole run" in err
    assert tables(project / DB) == []  # 0001 too, and the tracking table


# --------------------------------------------------------------------------
# --foreign-keys: deferred checks, cascades


def test_deferred_keys_allow_a_temporary_violation(project, run_cli, write_migration):
    write_migration("0001_schema.sql", schema())
    write_migration("0002_child_first.sql", "PRAGMA defer_foreign_keys = ON;\n"
                    "INSERT INTO child (id, parent_id) VALUES (30, 3);\n"
                    "INSERT INTO parent (id, name) VALUES (3, 'three');\n")
    code, out, err = apply(run_cli, "--foreign-keys")
    assert code == 0, err
    assert applied_names(project / DB) == ["0001_schema", "0002_child_first"]
    assert (30, 3) in children(project)


def test_without_defer_the_same_order_fails_at_the_insert(project, run_cli, write_migration):
    write_migration("0001_schema.sql", schema())
    write_migration("0002_child_first.sql",
                    "INSERT INTO child (id, parent_id) VALUES (30, 3);\n"
                    "INSERT INTO parent (id, name) VALUES (3, 'three');\n")
    code, out, err = apply(run_cli, "--foreign-keys")
    assert code == 1
    assert "FOREIGN KEY constraint failed" in err and "statement 1, line 1" in err
    assert applied_names(project / DB) == ["0001_schema"]


REBUILD_DROP = "PRAGMA foreign_keys = OFF;\nDROP TABLE parent;\n"


def test_drop_cascades_as_on_d1_despite_foreign_keys_off(project, run_cli, write_migration):
    write_migration("0001_schema.sql", schema("CASCADE"))
    write_migration("0002_drop_parent.sql", REBUILD_DROP)
    # As on D1 the drop would delete the children: the guard refuses it ...
    code, out, err = apply(run_cli, "--foreign-keys")
    assert code == 1
    assert err.splitlines() == [
        "Error: Failed to apply migration 0002_drop_parent: it would take rows from a table"
        " it does not name, through a foreign key's ON DELETE action (D1 always enforces"
        " them): child (ON DELETE CASCADE from parent), 2 rows before and 0 after; it was"
        " rolled back. Keep those rows in the migration (copy them aside and back, or rebuild"
        " that table too), or pass --allow-row-loss if the loss is intended"
        " (0002_drop_parent.sql)"]
    assert "parent" in tables(project / DB)
    assert children(project) == [(10, 1), (11, 2)]
    # ... unless the loss is meant.
    code, out, err = apply(run_cli, "--foreign-keys", "--allow-row-loss")
    assert code == 0, err
    assert "parent" not in tables(project / DB)
    assert children(project) == []  # deleted by the cascade, as D1 does


def test_without_the_option_foreign_keys_off_keeps_children(project, run_cli,
                                                            write_migration):
    write_migration("0001_schema.sql", schema("CASCADE"))
    write_migration("0002_drop_parent.sql", REBUILD_DROP)
    code, out, err = apply(run_cli)
    assert code == 0, err
    assert children(project) == [(10, 1), (11, 2)]


# --------------------------------------------------------------------------
# Without --foreign-keys: a leading PRAGMA foreign_keys runs before BEGIN, and
# the connection's setting is restored after the migration.

REBUILD = """\
-- SQLite's table rebuild (https://www.sqlite.org/lang_altertable.html#otheralter)
PRAGMA foreign_keys = OFF;
CREATE TABLE new_parent (
    id      INTEGER PRIMARY KEY,
    name    TEXT NOT NULL,
    created INTEGER NOT NULL DEFAULT 0
);
INSERT INTO new_parent (id, name) SELECT id, name FROM parent;
DROP TABLE parent;
ALTER TABLE new_parent RENAME TO parent;
PRAGMA foreign_key_check;
PRAGMA foreign_keys = ON;
"""

RECORD_SETTING = """\
CREATE TABLE fk_setting AS SELECT foreign_keys FROM pragma_foreign_keys;
DELETE FROM parent WHERE id = 2;
"""


def test_leading_pragma_takes_effect_and_is_undone_after(project, run_cli, write_migration):
    write_migration("0001_schema.sql", schema("CASCADE"))
    # Runs before its transaction, so the cascade fires within this migration...
    write_migration("0002_enforce.sql", "PRAGMA foreign_keys = ON;\n"
                    "DELETE FROM parent WHERE id = 1;\n")
    # ...and the next migration sees SQLite's default again (off: no cascade).
    write_migration("0003_after.sql", RECORD_SETTING)
    code, out, err = apply(run_cli, "--allow-row-loss")  # the cascade is meant
    assert code == 0, err
    assert query(project / DB, "SELECT foreign_keys FROM fk_setting") == [(0,)]
    assert children(project) == [(11, 2)]


def test_rebuild_keeps_children_and_restores_the_setting(project, run_cli, write_migration,
                                                         foreign_keys_on_by_default):
    write_migration("0001_schema.sql", schema("CASCADE"))
    write_migration("0002_rebuild_parent.sql", REBUILD)
    write_migration("0003_after.sql", RECORD_SETTING)
    code, out, err = apply(run_cli, "--allow-row-loss")  # 0003's cascade is meant
    assert code == 0, err
    db = project / DB
    assert applied_names(db) == ["0001_schema", "0002_rebuild_parent", "0003_after"]
    # The rebuild kept every child: its PRAGMA foreign_keys = OFF was honoured,
    # so DROP TABLE parent did not cascade.
    assert query(db, "SELECT id, name, created FROM parent") == [(1, "one", 0)]
    # The connection's own setting (on) was back for 0003: its DELETE cascaded.
    assert query(db, "SELECT foreign_keys FROM fk_setting") == [(1,)]
    assert children(project) == [(10, 1)]
    assert query(db, "PRAGMA foreign_key_check") == []


def test_a_deferred_violation_fails_the_single_transaction_at_commit(
        project, run_cli, write_migration, foreign_keys_on_by_default):
    # A build that enforces foreign keys: a deferred key is checked at COMMIT.
    write_migration("0001_schema.sql", "CREATE TABLE parent (id INTEGER PRIMARY KEY);\n"
                    "CREATE TABLE child (id INTEGER PRIMARY KEY, parent_id INTEGER"
                    " REFERENCES parent (id) DEFERRABLE INITIALLY DEFERRED);\n")
    write_migration("0002_orphan.sql", "INSERT INTO child (parent_id) VALUES (99);\n")
    code, out, err = apply(run_cli, "--single-transaction")
    assert code == 1
    assert err.splitlines() == [
        f"Error: Failed to commit the run to {DB}: FOREIGN KEY constraint failed at COMMIT;"
        " rolled back the whole run (--single-transaction): nothing was applied"]
    assert applied_names(project / DB) == [] and "child" not in tables(project / DB)


def test_rebuild_recipe_applies_on_a_default_build(project, run_cli, write_migration):
    write_migration("0001_schema.sql", schema("CASCADE"))
    write_migration("0002_rebuild_parent.sql", REBUILD)
    code, out, err = apply(run_cli)
    assert code == 0, err
    db = project / DB
    assert query(db, "SELECT id, name, created FROM parent ORDER BY id") == \
        [(1, "one", 0), (2, "two", 0)]
    assert children(project) == [(10, 1), (11, 2)]
    assert "new_parent" not in tables(db)
    assert query(db, "PRAGMA foreign_key_check") == []


def test_with_the_option_a_file_cannot_switch_enforcement_off(project, run_cli,
                                                              write_migration):
    # The rebuild under --foreign-keys: the OFF does nothing (as on D1), and the
    # DROP of the parent deletes the children through the cascade.
    write_migration("0001_schema.sql", schema("CASCADE"))
    write_migration("0002_rebuild_parent.sql", REBUILD)
    write_migration("0003_after.sql", "CREATE TABLE fk_setting AS"
                    " SELECT foreign_keys FROM pragma_foreign_keys;\n")
    # The loss of rows that D1 would cause is refused, with the counts ...
    code, out, err = apply(run_cli, "--foreign-keys")
    assert code == 1
    assert ("Failed to apply migration 0002_rebuild_parent: it would take rows from a table"
            " it does not name, through a foreign key's ON DELETE action (D1 always enforces"
            " them): child (ON DELETE CASCADE from parent), 2 rows before and 0 after;"
            " it was rolled back.") in err
    assert children(project) == [(10, 1), (11, 2)]
    # ... and done when meant.
    code, out, err = apply(run_cli, "--foreign-keys", "--allow-row-loss")
    assert code == 0, err
    assert children(project) == []
    assert query(project / DB, "SELECT foreign_keys FROM fk_setting") == [(1,)]


def test_dry_run_predicts_apply_for_a_leading_foreign_keys_pragma(project, run_cli,
                                                                  write_migration):
    write_migration("0001_schema.sql", schema())
    write_migration("0002_enforce.sql", "PRAGMA foreign_keys = ON;\n"
                    "DELETE FROM parent WHERE id = 1;\n")
    dry_code, out, err = apply(run_cli, "--dry-run")
    real_code, out, err = apply(run_cli)
    assert real_code == 1 and "FOREIGN KEY constraint failed" in err
    assert dry_code == real_code


# --------------------------------------------------------------------------
# Rolling back, and the bundled migrations


def test_rollback_with_foreign_keys_refuses_a_down_script_leaving_orphans(
        project, run_cli, write_migration):
    write_migration("0001_schema.sql", schema())
    write_migration("0002_third.sql", "INSERT INTO parent (id, name) VALUES (3, 'three');\n"
                    "INSERT INTO child (id, parent_id) VALUES (30, 3);\n")
    write_migration("0002_third.sql", "PRAGMA defer_foreign_keys = ON;\n"
                    "DELETE FROM parent WHERE id = 3;\n", folder="migrations/down")
    code, out, err = apply(run_cli, "--foreign-keys")
    assert code == 0, err
    code, out, err = run_cli(["rollback", "--db-path", DB, "--foreign-keys"])
    assert code == 1
    assert "child rowid 30 -> parent" in err
    assert applied_names(project / DB) == ["0001_schema", "0002_third"]
    assert query(project / DB, "SELECT id FROM parent WHERE id = 3") == [(3,)]
    # Without the option SQLite does not check, and the down script runs.
    code, out, err = run_cli(["rollback", "--db-path", DB])
    assert code == 0, err
    assert applied_names(project / DB) == ["0001_schema"]


def test_rollback_with_foreign_keys_does_not_blame_old_orphans(project, run_cli,
                                                               write_migration):
    write_migration("0001_schema.sql", schema())
    write_migration("0002_audit.sql", "CREATE TABLE audit (id INTEGER);\n")
    write_migration("0002_audit.sql", "DROP TABLE audit;\n", folder="migrations/down")
    assert apply(run_cli, "--foreign-keys")[0] == 0
    with closing(sqlite3.connect(str(project / DB))) as conn:  # foreign keys off
        conn.execute("INSERT INTO child (id, parent_id) VALUES (40, 99)")
        conn.commit()
    code, out, err = run_cli(["rollback", "--db-path", DB, "--foreign-keys"])
    assert code == 1
    assert err.splitlines() == [
        f"Error: Database {DB} already has rows whose foreign keys point nowhere"
        " (child rowid 40 -> parent); --foreign-keys checks after each migration,"
        " so fix these rows first. Nothing was rolled back."]
    assert applied_names(project / DB) == ["0001_schema", "0002_audit"]
    assert "audit" in tables(project / DB)


def test_a_down_scripts_leading_pragma_takes_effect(project, run_cli, write_migration):
    write_migration("0001_schema.sql", schema("CASCADE"))
    write_migration("0002_third.sql", "INSERT INTO parent (id, name) VALUES (3, 'three');\n"
                    "INSERT INTO child (id, parent_id) VALUES (30, 3);\n")
    # As in a migration: the pragma runs before the transaction, so the
    # delete cascades to child 30.
    write_migration("0002_third.sql", "PRAGMA foreign_keys = ON;\n"
                    "DELETE FROM parent WHERE id = 3;\n", folder="migrations/down")
    assert apply(run_cli)[0] == 0
    code, out, err = run_cli(["rollback", "--db-path", DB])
    assert code == 1  # the guard: child 30 would go with its parent
    assert "Failed to roll back migration 0002_third: it would take rows" in err
    code, out, err = run_cli(["rollback", "--db-path", DB, "--allow-row-loss"])
    assert code == 0, err
    assert "(2 statements)" in out
    assert children(project) == [(10, 1), (11, 2)]
    assert applied_names(project / DB) == ["0001_schema"]


def test_bundled_migrations_apply_with_foreign_keys(project, run_cli):
    code, out, err = run_cli(["apply", "--db-path", DB, "--foreign-keys",
                              "--migrations-dir", str(BUNDLED_MIGRATIONS)])
    assert code == 0, err
    names = sorted(p.stem for p in BUNDLED_MIGRATIONS.glob("*.sql"))
    assert applied_names(project / DB) == names
    assert query(project / DB, "PRAGMA foreign_key_check") == []
    # Every foreign key of the bundled schema names a table that exists.
    db_tables = set(tables(project / DB))
    for table in db_tables:
        for (target,) in query(project / DB,
                               'SELECT "table" FROM pragma_foreign_key_list(?)', (table,)):
            assert target in db_tables, (table, target)


# --------------------------------------------------------------------------
# Against D1 itself


FK_MIGRATIONS = {
    "0001_schema.sql": """\
CREATE TABLE authors (id INTEGER PRIMARY KEY);
CREATE TABLE books (
    id        INTEGER PRIMARY KEY,
    author_id INTEGER NOT NULL REFERENCES authors (id) ON DELETE CASCADE
);
CREATE TABLE teams (id INTEGER PRIMARY KEY);
CREATE TABLE members (
    id      INTEGER PRIMARY KEY,
    team_id INTEGER NOT NULL REFERENCES teams (id)
);
INSERT INTO authors (id) VALUES (1), (2);
INSERT INTO books (id, author_id) VALUES (10, 1), (11, 2);
INSERT INTO teams (id) VALUES (1);
INSERT INTO members (id, team_id) VALUES (100, 1);
""",
    "0002_drop_authors.sql": "PRAGMA foreign_keys = OFF;\nDROP TABLE authors;\n",
    "0003_member_first.sql": "PRAGMA defer_foreign_keys = ON;\n"
                             "INSERT INTO members (id, team_id) VALUES (101, 2);\n"
                             "INSERT INTO teams (id) VALUES (2);\n",
    "0004_orphan.sql": "PRAGMA defer_foreign_keys = ON;\n"
                       "INSERT INTO members (id, team_id) VALUES (102, 3);\n",
}


def contents(db: Path):
    return {table: query(db, f"SELECT * FROM {table} ORDER BY 1")
            for table in ("books", "teams", "members")}


@pytest.mark.wrangler
def test_foreign_keys_option_does_what_d1_does(wrangler_bin, tmp_path, run_cli):
    root = wrangler_cli.write_project(tmp_path / "wrangler", FK_MIGRATIONS)
    run = wrangler_cli.migrations_apply(wrangler_bin, root)
    assert wrangler_cli.statuses(run) == {
        "0001_schema.sql": wrangler_cli.APPLIED, "0002_drop_authors.sql": wrangler_cli.APPLIED,
        "0003_member_first.sql": wrangler_cli.APPLIED, "0004_orphan.sql": wrangler_cli.FAILED,
    }, run.describe()
    assert run.returncode == 1
    assert "FOREIGN KEY constraint failed" in run.text
    on_d1 = contents(wrangler_cli.local_database(root))
    assert on_d1 == {"books": [], "teams": [(1,), (2,)], "members": [(100, 1), (101, 2)]}

    code, out, err = run_cli(["apply", "--foreign-keys", "--db-path", str(tmp_path / "t.db"),
                              "--migrations-dir", str(root / "migrations"),
                              "--allow-row-loss"])
    assert code == 1
    assert "Failed to apply migration 0004_orphan" in err
    assert "members rowid 102 -> teams" in err
    assert applied_names(tmp_path / "t.db") == ["0001_schema", "0002_drop_authors",
                                                "0003_member_first"]
    assert contents(tmp_path / "t.db") == on_d1
