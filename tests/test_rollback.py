"""rollback: naming the version, down scripts in migrations/down/, the
no-down-script case, the latest by default, and later migrations."""
from __future__ import annotations

from typing import List

import pytest

from dbhelpers import applied_names, query, schema, tables, tracking_rows

DB = "trading_brain.db"


def error_lines(err: str) -> List[str]:
    return [line for line in err.splitlines() if line.strip()]


@pytest.fixture
def three_applied(project, run_cli, write_migration):
    """0001_initial_schema, 9_add_posts, 10_add_tags applied, with down
    scripts for 0001 and 10 (not for 9).  By name 10_ sorts before 9_."""
    write_migration("0001_initial_schema.sql", "CREATE TABLE users (id INTEGER PRIMARY KEY);\n")
    write_migration("9_add_posts.sql", "CREATE TABLE posts (id INTEGER PRIMARY KEY);\n")
    write_migration("10_add_tags.sql", "CREATE TABLE tags (id INTEGER);\nCREATE INDEX tags_id ON tags (id);\n")
    write_migration("0001_initial_schema.sql", "DROP TABLE users;\n", folder="migrations/down")
    write_migration("10_add_tags.sql", "DROP INDEX tags_id;\nDROP TABLE tags;\n", folder="migrations/down")
    code, _, err = run_cli(["apply"])
    assert code == 0, err
    assert applied_names(project / DB) == ["0001_initial_schema", "9_add_posts", "10_add_tags"]


@pytest.mark.parametrize("version", ["0001", "0001_initial_schema", "0001_initial_schema.sql"])
def test_version_forms_are_accepted(project, run_cli, write_migration, version):
    write_migration("0001_initial_schema.sql", "CREATE TABLE users (id INTEGER PRIMARY KEY);\n")
    write_migration("0001_initial_schema.sql", "DROP TABLE users;\n", folder="migrations/down")
    assert run_cli(["apply"])[0] == 0

    code, out, err = run_cli(["rollback", "--version", version])
    assert code == 0, err
    db = project / DB
    assert tracking_rows(db) == []
    assert "users" not in tables(db)
    assert "0001_initial_schema" in out


@pytest.mark.parametrize("version", ["0002", "0002_add_posts", "0003_never_existed", "9"])
def test_not_applied_version_is_an_error(project, run_cli, write_migration, version):
    write_migration("0001_initial_schema.sql", "CREATE TABLE users (id INTEGER PRIMARY KEY);\n")
    assert run_cli(["apply"])[0] == 0
    write_migration("0002_add_posts.sql", "CREATE TABLE posts (id INTEGER PRIMARY KEY);\n")
    before = schema(project / DB)

    code, out, err = run_cli(["rollback", "--version", version])
    assert code == 1
    assert error_lines(err) == [f"Error: Migration {version} not found in applied migrations"]
    assert applied_names(project / DB) == ["0001_initial_schema"]
    assert schema(project / DB) == before


def test_not_applied_when_database_does_not_exist(project, run_cli, write_migration):
    write_migration("0001_initial_schema.sql", "CREATE TABLE users (id INTEGER PRIMARY KEY);\n")
    code, out, err = run_cli(["rollback", "--version", "0001"])
    assert code == 1
    assert error_lines(err) == ["Error: Migration 0001 not found in applied migrations"]
    assert not (project / DB).exists()


def test_down_script_runs_and_row_is_removed(project, run_cli, three_applied):
    code, out, err = run_cli(["rollback", "--version", "10"])
    assert code == 0, err
    db = project / DB
    assert applied_names(db) == ["0001_initial_schema", "9_add_posts"]
    assert "tags" not in tables(db)
    assert query(db, "SELECT name FROM sqlite_master WHERE name = 'tags_id'") == []
    assert "10_add_tags" in out
    # Pending again: apply brings it back.
    code, out, err = run_cli(["apply"])
    assert code == 0, err
    assert "tags" in tables(db)
    assert applied_names(db)[-1] == "10_add_tags"


def test_failing_down_script_changes_nothing(project, run_cli, write_migration, three_applied):
    write_migration("10_add_tags.sql",
                    "DROP INDEX tags_id;\nDROP TABLE tags;\nDELETE FROM no_such_table;\n",
                    folder="migrations/down")
    db = project / DB
    before_schema, before_rows = schema(db), tracking_rows(db)

    code, out, err = run_cli(["rollback"])
    assert code == 1
    lines = error_lines(err)
    assert len(lines) == 1, err
    assert lines[0].startswith("Error: Failed to roll back migration 10_add_tags: ")
    assert lines[0].endswith("statement 3, line 3)"), lines[0]
    assert schema(db) == before_schema  # DROP INDEX / DROP TABLE undone
    assert tracking_rows(db) == before_rows


def test_down_script_with_transaction_control_is_refused(project, run_cli, write_migration,
                                                         three_applied):
    write_migration("10_add_tags.sql", "DROP TABLE tags;\nCOMMIT;\nDROP INDEX tags_id;\n",
                    folder="migrations/down")
    db = project / DB
    before_schema, before_rows = schema(db), tracking_rows(db)
    code, out, err = run_cli(["rollback", "--version", "10_add_tags"])
    assert code == 1
    assert "line 2" in err and "COMMIT" in err
    assert schema(db) == before_schema
    assert tracking_rows(db) == before_rows


def test_record_only_removes_the_row_alone(project, run_cli, three_applied):
    db = project / DB
    before_schema = [row for row in schema(db)]
    code, out, err = run_cli(["rollback", "--version", "9", "--force", "--record-only"])
    assert code == 0, err
    assert applied_names(db) == ["0001_initial_schema", "10_add_tags"]
    assert "posts" in tables(db)
    assert schema(db) == before_schema
    assert "schema was not changed" in out.lower()


def test_no_version_rolls_back_the_latest_applied(project, run_cli, three_applied):
    # Latest by number: 10_add_tags, though "9_add_posts" sorts after it by name.
    code, out, err = run_cli(["rollback"])
    assert code == 0, err
    assert applied_names(project / DB) == ["0001_initial_schema", "9_add_posts"]
    assert "10_add_tags" in out
    code, out, err = run_cli(["rollback"])
    assert code == 0, err
    assert applied_names(project / DB) == ["0001_initial_schema"]
    assert "9_add_posts" in out


def test_nothing_applied_nothing_to_roll_back(project, run_cli, write_migration):
    write_migration("0001_initial_schema.sql", "CREATE TABLE users (id INTEGER PRIMARY KEY);\n")
    assert run_cli(["init"])[0] == 0
    code, out, err = run_cli(["rollback"])
    assert code == 1
    lines = error_lines(err)
    assert len(lines) == 1 and lines[0].startswith("Error: ")
    assert tracking_rows(project / DB) == []


def test_later_applied_migrations_refuse_unless_forced(project, run_cli, three_applied):
    db = project / DB
    before_schema, before_rows = schema(db), tracking_rows(db)

    code, out, err = run_cli(["rollback", "--version", "0001_initial_schema"])
    assert code == 1
    lines = error_lines(err)
    assert len(lines) == 1 and lines[0].startswith("Error: "), err
    assert "9_add_posts" in lines[0] and "10_add_tags" in lines[0]
    assert "--force" in lines[0]
    assert schema(db) == before_schema
    assert tracking_rows(db) == before_rows

    code, out, err = run_cli(["rollback", "--version", "0001_initial_schema", "--force"])
    assert code == 0, err
    assert applied_names(db) == ["9_add_posts", "10_add_tags"]
    assert "users" not in tables(db)
    assert {"posts", "tags"} <= set(tables(db))


def test_a_mistyped_migrations_folder_rolls_back_nothing(project, run_cli, three_applied):
    """Without the folder there is no down script to find: removing the
    record alone would leave the schema and make the migration pending."""
    before = schema(project / DB)
    code, out, err = run_cli(["rollback", "--migrations-dir", "migrationz"])
    assert code == 2
    assert error_lines(err) == ["Error: Migrations folder migrationz does not exist;"
                                " create it or pass --migrations-dir"]
    assert applied_names(project / DB) == ["0001_initial_schema", "9_add_posts", "10_add_tags"]
    assert schema(project / DB) == before
