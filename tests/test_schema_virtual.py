"""Virtual tables, AUTOINCREMENT and row changes in the schema tools: a virtual table's shadow tables are parts of it, not
objects of the schema; a computed rollback drops and makes again an FTS
table (rebuilding an index over a content table), keeps an AUTOINCREMENT
table's sequence when it rebuilds it, and notes the rows it leaves changed,
refusing a migration that changed rows only.  Real SQLite files, the real
command line (run_cli), no mocks."""
from __future__ import annotations

import json
import sqlite3
from contextlib import closing
from pathlib import Path
from typing import Dict, List, Set, Tuple

import pytest

from conftest import apply_migrations

RECORD_TABLES = ("schema_migrations", "schema_migrations_state", "schema_migrations_history")


def apply(run_cli, write_migration, migrations: Dict[str, str]) -> None:
    for name, text in migrations.items():
        write_migration(name, text)
    code, out, err = run_cli(["apply", "--db-path", "app.db"])
    assert code == 0, err


def execute(db: Path, *statements: str) -> None:
    with closing(sqlite3.connect(str(db))) as conn:
        for statement in statements:
            conn.execute(statement)
        conn.commit()


def query(db: Path, sql: str) -> list:
    with closing(sqlite3.connect(str(db))) as conn:
        return conn.execute(sql).fetchall()


def master(conn: sqlite3.Connection) -> Set[Tuple[str, str, str]]:
    """Every object SQLite keeps (shadow tables too), the record left out."""
    return {(t, n, sql) for t, n, sql in conn.execute(
        "SELECT type, name, sql FROM sqlite_master WHERE sql IS NOT NULL")
        if n not in RECORD_TABLES}


def no_drift(run_cli) -> bool:
    code, out, err = run_cli(["status", "--db-path", "app.db", "--json"])
    assert code == 0, err
    drift = json.loads(out)["drift"]
    assert drift["checked"] is True, drift
    return drift["differences"] == []


def states(run_cli) -> Dict[str, str]:
    code, out, err = run_cli(["status", "--db-path", "app.db", "--json"])
    assert code == 0, err
    return {m["name"]: m["state"] for m in json.loads(out)["migrations"]}


SHADOW_NAMES = {
    "notes_fts_data", "notes_fts_idx", "notes_fts_docsize", "notes_fts_config",
    "docs_fts_data", "docs_fts_idx", "docs_fts_content", "docs_fts_docsize",
    "docs_fts_config",
    "old_fts_content", "old_fts_segments", "old_fts_segdir", "old_fts_docsize",
    "old_fts_stat",
    "boxes_node", "boxes_parent", "boxes_rowid",
}

VIRTUAL = {
    "0001_notes.sql": "CREATE TABLE notes (id INTEGER PRIMARY KEY, title TEXT, body TEXT);\n"
                      "CREATE INDEX notes_title ON notes (title);\n",
    "0002_search.sql": """\
-- FTS5 over notes' rows (external content), FTS5 and FTS4 with their own, an R*Tree
CREATE VIRTUAL TABLE notes_fts USING fts5(title, body, content='notes', content_rowid='id');
CREATE VIRTUAL TABLE docs_fts USING fts5(title, body);
CREATE VIRTUAL TABLE old_fts USING fts4(title, body);
CREATE VIRTUAL TABLE boxes USING rtree(id, min_x, max_x, min_y, max_y);
CREATE TRIGGER notes_ai AFTER INSERT ON notes BEGIN
    INSERT INTO notes_fts (rowid, title, body) VALUES (new.id, new.title, new.body);
END;
""",
}


@pytest.fixture
def virtual(project, write_migration, run_cli) -> Path:
    apply(run_cli, write_migration, VIRTUAL)
    db = project / "app.db"
    execute(db, "INSERT INTO notes (id, title, body) VALUES (1, 'hello', 'big world')",
            "INSERT INTO docs_fts (title, body) VALUES ('a doc', 'its text')",
            "INSERT INTO old_fts (title, body) VALUES ('old', 'text')",
            "INSERT INTO boxes VALUES (1, 0, 1, 0, 1)")
    return db


# --------------------------------------------------------------------------
# 1. Shadow tables are not schema objects


def test_schema_output_of_virtual_tables_runs_and_gives_the_same_schema(virtual, run_cli,
                                                                        project):
    code, from_db, err = run_cli(["schema", "--db-path", "app.db"])
    assert code == 0, err
    code, from_migrations, err = run_cli(["schema", "--from-migrations"])
    assert code == 0, err
    assert from_migrations == from_db
    assert "CREATE VIRTUAL TABLE notes_fts USING fts5(" in from_db
    assert "CREATE VIRTUAL TABLE boxes USING rtree(" in from_db
    # Executable as it is (each shadow table made once, by its virtual table) ...
    with closing(sqlite3.connect(":memory:")) as copy, \
            closing(sqlite3.connect(str(virtual))) as original:
        copy.executescript(from_db)
        # ... and it makes exactly the database's schema, shadow tables and all.
        assert master(copy) == master(original)
        assert SHADOW_NAMES <= {name for _, name, _ in master(copy)}
    for shadow in SHADOW_NAMES:
        assert shadow not in from_db, shadow


def test_schema_json_lists_no_shadow_tables(virtual, run_cli):
    code, out, err = run_cli(["schema", "--db-path", "app.db", "--format", "json"])
    assert code == 0, err
    data = json.loads(out)
    assert sorted(data["tables"]) == ["boxes", "docs_fts", "notes", "notes_fts", "old_fts"]
    assert sorted(o["name"] for o in data["objects"]) == [
        "boxes", "docs_fts", "notes", "notes_ai", "notes_fts", "notes_title", "old_fts"]
    code, out, err = run_cli(["schema", "--from-migrations", "--format", "mermaid"])
    assert code == 0, err
    assert not [s for s in SHADOW_NAMES if s in out]


def test_status_finds_no_drift_with_virtual_tables(virtual, run_cli):
    """Regression guard (passes before the change too): the shadow tables
    were on both sides of the comparison."""
    code, out, err = run_cli(["status", "--db-path", "app.db", "--exit-code"])
    assert code == 0 and "Drift" not in out, out
    # Without the tool's note: the migrations are replayed and compared.
    execute(virtual, "DROP TABLE schema_migrations_state")
    code, out, err = run_cli(["status", "--db-path", "app.db", "--json"])
    drift = json.loads(out)["drift"]
    assert drift["checked"] is True and drift["differences"] == [], drift


# --------------------------------------------------------------------------
# 2. Computed rollbacks of FTS tables


def test_rollback_of_a_migration_that_created_fts_tables(virtual, run_cli):
    code, out, err = run_cli(["rollback", "--db-path", "app.db", "--dry-run",
                              "--allow-data-loss"])
    assert code == 0, err
    statements = out.splitlines()[1:]
    assert 'DROP TABLE "notes_fts";' in statements
    assert 'DROP TABLE "boxes";' in statements
    assert not [s for s in statements if any(shadow in s for shadow in SHADOW_NAMES)]
    # The own-content tables hold rows: refused unless that loss is meant;
    # the index over notes' rows loses nothing.
    code, out, err = run_cli(["rollback", "--db-path", "app.db"])
    assert code == 1 and "would lose" in err, err
    assert "the 1 row of table docs_fts, which the migration created" in err
    assert "notes_fts" not in err
    code, out, err = run_cli(["rollback", "--db-path", "app.db", "--allow-data-loss"])
    assert code == 0, err
    assert "computed from the schema before it" in out
    assert states(run_cli) == {"0001_notes": "applied", "0002_search": "pending"}
    with closing(sqlite3.connect(str(virtual))) as conn:
        assert {name for _, name, _ in master(conn)} == {"notes", "notes_title"}
    assert query(virtual, "SELECT * FROM notes") == [(1, "hello", "big world")]
    code, out, err = run_cli(["apply", "--db-path", "app.db"])
    assert code == 0, err
    execute(virtual, "INSERT INTO notes (id, title, body) VALUES (2, 'again', 'small world')")
    assert query(virtual, "SELECT rowid FROM notes_fts WHERE notes_fts MATCH 'small'") == [(2,)]


def test_rollback_of_an_fts5_table_alone_drops_it(project, write_migration, run_cli):
    apply(run_cli, write_migration, {
        "0001_notes.sql": "CREATE TABLE notes (id INTEGER PRIMARY KEY, title TEXT, body TEXT);\n"
                          "INSERT INTO notes VALUES (1, 'hello', 'world');\n",
        "0002_fts.sql": "CREATE VIRTUAL TABLE notes_fts USING fts5(title, body,"
                        " content='notes', content_rowid='id');\n"
                        "INSERT INTO notes_fts (notes_fts) VALUES ('rebuild');\n",
    })
    code, out, err = run_cli(["rollback", "--db-path", "app.db", "--dry-run"])
    assert code == 0, err
    # The rebuild filled the table the migration made: no note about rows.
    assert out.splitlines() == [
        "-- The rollback of 0002_fts (computed: 0002_fts has no down script);"
        " nothing was changed",
        'DROP TABLE "notes_fts";']
    code, out, err = run_cli(["rollback", "--db-path", "app.db"])
    assert code == 0, err
    assert states(run_cli) == {"0001_notes": "applied", "0002_fts": "pending"}
    assert query(project / "app.db", "SELECT name FROM sqlite_master WHERE name LIKE"
                                     " 'notes_fts%'") == []
    code, out, err = run_cli(["apply", "--db-path", "app.db"])
    assert code == 0, err
    assert query(project / "app.db",
                 "SELECT rowid FROM notes_fts WHERE notes_fts MATCH 'world'") == [(1,)]


PEOPLE = {
    "0001_people.sql": """\
CREATE TABLE people (id INTEGER PRIMARY KEY, name TEXT, needs TEXT);
CREATE VIRTUAL TABLE people_fts USING fts5(name, needs, content='people', content_rowid='id');
""",
    "0002_wants.sql": """\
DROP TABLE people_fts;
ALTER TABLE people RENAME COLUMN needs TO wants;
CREATE VIRTUAL TABLE people_fts USING fts5(name, wants, content='people', content_rowid='id');
""",
}


def test_fts5_over_a_content_table_with_renamed_columns_rolls_back_and_is_rebuilt(
        project, write_migration, run_cli):
    apply(run_cli, write_migration, PEOPLE)
    db = project / "app.db"
    execute(db, "INSERT INTO people VALUES (1, 'ann', 'a bicycle'), (2, 'bob', 'a kettle')",
            "INSERT INTO people_fts (people_fts) VALUES ('rebuild')")
    code, out, err = run_cli(["rollback", "--db-path", "app.db", "--dry-run"])
    assert code == 0, err
    assert out.splitlines()[1:] == [
        'ALTER TABLE "people" RENAME COLUMN "wants" TO "needs";',
        'DROP TABLE "people_fts";',
        "CREATE VIRTUAL TABLE people_fts USING fts5(name, needs, content='people',"
        " content_rowid='id');",
        """INSERT INTO "people_fts" ("people_fts") VALUES ('rebuild');"""]
    # Rows the index has not seen yet (no triggers): the rebuild finds them.
    execute(db, "INSERT INTO people VALUES (3, 'cy', 'a lamp')")
    code, out, err = run_cli(["rollback", "--db-path", "app.db"])
    assert code == 0, err
    assert "comes back empty" not in out
    assert states(run_cli) == {"0001_people": "applied", "0002_wants": "pending"}
    assert query(db, "SELECT rowid, needs FROM people_fts WHERE people_fts MATCH 'kettle'") \
        == [(2, "a kettle")]
    assert query(db, "SELECT rowid FROM people_fts WHERE people_fts MATCH 'needs:lamp'") \
        == [(3,)]
    assert query(db, "SELECT * FROM people ORDER BY id") == [
        (1, "ann", "a bicycle"), (2, "bob", "a kettle"), (3, "cy", "a lamp")]
    assert no_drift(run_cli)
    code, out, err = run_cli(["apply", "--db-path", "app.db"])
    assert code == 0, err
    # (0002 makes an empty index: it rebuilds nothing itself.)
    assert query(db, "SELECT name FROM pragma_table_info('people')") == [
        ("id",), ("name",), ("wants",)]


def test_new_down_of_a_changed_fts_table_is_verified_by_check(project, write_migration,
                                                             run_cli):
    for name, text in PEOPLE.items():
        write_migration(name, text)
    code, out, err = run_cli(["new", "--down", "0002"])
    assert code == 0, err
    text = (project / "migrations" / "down" / "0002_wants.sql").read_text()
    assert """INSERT INTO "people_fts" ("people_fts") VALUES ('rebuild');""" in text
    assert "people_fts_" not in text  # no shadow table
    code, out, err = run_cli(["check", "--json"])
    codes = [f["code"] for f in json.loads(out)["findings"]]
    assert not [c for c in codes if c.startswith(("down-", "up-after"))], codes


def test_a_dropped_fts_index_over_a_content_table_comes_back_rebuilt(project, write_migration,
                                                                    run_cli):
    apply(run_cli, write_migration, {
        "0001_people.sql": PEOPLE["0001_people.sql"],
        "0002_drop_fts.sql": "DROP TABLE people_fts;\n"})
    db = project / "app.db"
    execute(db, "INSERT INTO people VALUES (1, 'ann', 'a bicycle')")
    code, out, err = run_cli(["rollback", "--db-path", "app.db"])
    assert code == 0, err
    assert "comes back empty" not in out  # its rows are people's
    assert query(db, "SELECT rowid FROM people_fts WHERE people_fts MATCH 'bicycle'") == [(1,)]


def test_an_own_content_fts5_table_made_again_is_data_loss(project, write_migration, run_cli):
    apply(run_cli, write_migration, {
        "0001_docs.sql": "CREATE VIRTUAL TABLE docs_fts USING fts5(title, body);\n",
        "0002_tags.sql": "DROP TABLE docs_fts;\n"
                         "CREATE VIRTUAL TABLE docs_fts USING fts5(title, body, tags);\n"})
    db = project / "app.db"
    execute(db, "INSERT INTO docs_fts VALUES ('a', 'b', 'c'), ('d', 'e', 'f')")
    before = db.read_bytes()
    code, out, err = run_cli(["rollback", "--db-path", "app.db"])
    assert code == 1, out
    assert ("would lose the 2 rows of table docs_fts, which is made again. Nothing was rolled"
            " back: pass --allow-data-loss") in err, err
    assert db.read_bytes() == before
    assert states(run_cli)["0002_tags"] == "applied"
    code, out, err = run_cli(["rollback", "--db-path", "app.db", "--allow-data-loss"])
    assert code == 0, err
    assert "Note: table docs_fts, which the migration changed, comes back empty" in out
    assert query(db, "SELECT sql FROM sqlite_master WHERE name = 'docs_fts'") == [
        ("CREATE VIRTUAL TABLE docs_fts USING fts5(title, body)",)]
    assert query(db, "SELECT count(*) FROM docs_fts") == [(0,)]
    assert no_drift(run_cli)


# --------------------------------------------------------------------------
# 3. A rebuild keeps AUTOINCREMENT's sequence

AUTOINCREMENT = {
    "0001_tables.sql": """\
CREATE TABLE counted (id INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT NOT NULL,
                      note TEXT NOT NULL DEFAULT '');
CREATE TABLE plain (id INTEGER PRIMARY KEY, name TEXT NOT NULL, note TEXT NOT NULL DEFAULT '');
""",
    # Its rollback adds NOT NULL columns with a default back: a rebuild of each.
    "0002_drop_notes.sql": "ALTER TABLE counted DROP COLUMN note;\n"
                           "ALTER TABLE plain DROP COLUMN note;\n",
}


def test_a_rebuild_keeps_the_autoincrement_sequence(project, write_migration, run_cli):
    apply(run_cli, write_migration, AUTOINCREMENT)
    db = project / "app.db"
    for table in ("counted", "plain"):
        execute(db, f"INSERT INTO {table} (name) VALUES ('a'), ('b'), ('c')",
                f"DELETE FROM {table} WHERE id = 3")
    code, out, err = run_cli(["rollback", "--db-path", "app.db"])
    assert code == 0, err
    assert "computed from the schema before it" in out
    execute(db, "INSERT INTO counted (name) VALUES ('d')", "INSERT INTO plain (name) VALUES ('d')")
    # AUTOINCREMENT: never an id used before; a plain rowid table reuses it.
    assert query(db, "SELECT id, name, note FROM counted ORDER BY id") == [
        (1, "a", ""), (2, "b", ""), (4, "d", "")]
    assert query(db, "SELECT id FROM plain ORDER BY id") == [(1,), (2,), (3,)]
    assert query(db, "SELECT name, seq FROM sqlite_sequence") == [("counted", 4)]
    assert no_drift(run_cli)


def test_sequence_statements_only_for_autoincrement_tables(project, write_migration, run_cli):
    apply(run_cli, write_migration, AUTOINCREMENT)
    code, out, err = run_cli(["rollback", "--db-path", "app.db", "--dry-run"])
    assert code == 0, err
    temporary = "counted" + apply_migrations.ROLLBACK_TABLE_SUFFIX
    sequence = [line for line in out.splitlines() if "sqlite_sequence" in line]
    assert sequence == [
        f"DELETE FROM sqlite_sequence WHERE name = '{temporary}';",
        f"INSERT INTO sqlite_sequence (name, seq) SELECT '{temporary}', seq"
        " FROM sqlite_sequence WHERE name = 'counted';"]
    lines = out.splitlines()
    # After the rows are copied, before the old table goes.
    assert lines.index(sequence[0]) > next(
        i for i, line in enumerate(lines) if line.startswith(f'INSERT INTO "{temporary}"'))
    assert lines.index(sequence[1]) < lines.index('DROP TABLE "counted";')
    # The down script new --down writes has them too.
    code, out, err = run_cli(["new", "--down", "0002"])
    assert code == 0, err
    text = (project / "migrations" / "down" / "0002_drop_notes.sql").read_text()
    assert [line for line in text.splitlines() if "sqlite_sequence" in line] == sequence


def test_autoincrement_sequence_of_a_table_with_a_quote_in_its_name(project, write_migration,
                                                                    run_cli):
    apply(run_cli, write_migration, {
        "0001_t.sql": "CREATE TABLE \"o'brien\" (id INTEGER PRIMARY KEY AUTOINCREMENT,"
                      " x TEXT NOT NULL DEFAULT 'x');\n",
        "0002_drop.sql": "ALTER TABLE \"o'brien\" DROP COLUMN x;\n"})
    db = project / "app.db"
    execute(db, "INSERT INTO \"o'brien\" DEFAULT VALUES", "INSERT INTO \"o'brien\" DEFAULT VALUES",
            "DELETE FROM \"o'brien\" WHERE id = 2")
    code, out, err = run_cli(["rollback", "--db-path", "app.db"])
    assert code == 0, err
    execute(db, "INSERT INTO \"o'brien\" (x) VALUES ('y')")
    assert query(db, "SELECT id FROM \"o'brien\" ORDER BY id") == [(1,), (3,)]


def test_the_word_autoincrement_in_a_default_is_not_autoincrement(project, write_migration,
                                                                  run_cli):
    apply(run_cli, write_migration, {
        "0001_t.sql": "CREATE TABLE t (id INTEGER PRIMARY KEY,"
                      " note TEXT NOT NULL DEFAULT 'no AUTOINCREMENT here');\n",
        "0002_drop.sql": "ALTER TABLE t DROP COLUMN note;\n"})
    code, out, err = run_cli(["rollback", "--db-path", "app.db", "--dry-run"])
    assert code == 0, err
    assert "sqlite_sequence" not in out


# --------------------------------------------------------------------------
# 4. Rows a migration changed

ITEMS = "CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT NOT NULL);\n" \
        "INSERT INTO items (id, name) VALUES (1, 'one');\n"


@pytest.mark.parametrize("statement, what", [
    ("INSERT INTO items (id, name) VALUES (2, 'two');", "INSERT items"),
    ("INSERT OR REPLACE INTO main.\"items\" (id, name) VALUES (2, 'two');", "INSERT items"),
    ("REPLACE INTO [Items] (id, name) VALUES (2, 'two');", "REPLACE Items"),
    ("DELETE FROM items WHERE id = 1;", "DELETE items"),
    ("WITH n(x) AS (VALUES (2)) INSERT INTO items (id, name) SELECT x, 'two' FROM n;",
     "WITH ... INSERT items"),
])
def test_a_migration_that_changed_rows_only_is_not_rolled_back(
        project, write_migration, run_cli, statement, what):
    apply(run_cli, write_migration, {"0001_items.sql": ITEMS,
                                     "0002_rows.sql": "-- rows only\n" + statement + "\n"})
    db = project / "app.db"
    rows = query(db, "SELECT * FROM items ORDER BY id")
    before = db.read_bytes()
    for extra in ([], ["--dry-run"]):
        code, out, err = run_cli(["rollback", "--db-path", "app.db", *extra])
        assert code == 1, out
        assert (f"Cannot compute a rollback of 0002_rows: it changed rows, not the schema"
                f" (statement 1, {what})") in err, err
        assert "--record-only" in err
        assert db.read_bytes() == before  # nothing changed: record and rows stay
    assert states(run_cli) == {"0001_items": "applied", "0002_rows": "applied"}
    code, out, err = run_cli(["new", "--down", "0002"])
    assert code == 1
    assert (f"Cannot compute a down script for 0002_rows: it changed rows, not the schema"
            f" (statement 1, {what})") in err, err
    assert not (project / "migrations" / "down").exists()
    # The record alone can still go.
    code, out, err = run_cli(["rollback", "--db-path", "app.db", "--record-only"])
    assert code == 0, err
    assert "removed its record only" in out
    assert states(run_cli) == {"0001_items": "applied", "0002_rows": "pending"}
    assert query(db, "SELECT * FROM items ORDER BY id") == rows


def test_a_migration_that_only_updated_rows_is_not_rolled_back(project, write_migration,
                                                               run_cli):
    apply(run_cli, write_migration, {"0001_items.sql": ITEMS,
                                     "0002_rows.sql": "UPDATE items SET name = 'uno';\n"})
    code, out, err = run_cli(["rollback", "--db-path", "app.db"])
    assert code == 1, out
    assert "it changed rows, not the schema (statement 1, UPDATE items)" in err
    assert states(run_cli)["0002_rows"] == "applied"


SCHEMA_AND_ROWS = {
    "0001_items.sql": ITEMS,
    "0002_tag.sql": """\
ALTER TABLE items ADD COLUMN tag TEXT;
INSERT INTO items (id, name) VALUES (2, 'two');
CREATE TABLE log (msg TEXT);
INSERT INTO log (msg) VALUES ('tagged');
DELETE FROM items WHERE id = 1;
""",
}
NOTE = ("the rows that statement {} ({}) changed stay as they are (a computed rollback undoes"
        " the schema, and values only with the columns it drops)")
NOTES = [NOTE.format(2, "INSERT items"), NOTE.format(5, "DELETE items")]


def test_schema_and_rows_changed_rolls_back_with_a_note(project, write_migration, run_cli):
    apply(run_cli, write_migration, SCHEMA_AND_ROWS)
    db = project / "app.db"
    code, out, err = run_cli(["rollback", "--db-path", "app.db", "--dry-run",
                              "--allow-data-loss"])
    assert code == 0, err
    assert out.splitlines() == [
        "-- The rollback of 0002_tag (computed: 0002_tag has no down script);"
        " nothing was changed",
        *("-- Note: " + note for note in NOTES),
        'ALTER TABLE "items" DROP COLUMN "tag";',
        'DROP TABLE "log";']
    # Rows inserted into log, a table the migration made, get no note.
    assert "INSERT log" not in out
    code, out, err = run_cli(["rollback", "--db-path", "app.db", "--dry-run",
                              "--allow-data-loss", "--json"])
    assert code == 0, err
    payload = json.loads(out)
    assert payload["computed"] is True and payload["notes"] == NOTES
    code, out, err = run_cli(["rollback", "--db-path", "app.db", "--allow-data-loss", "--json"])
    assert code == 0, err
    assert json.loads(out)["notes"] == NOTES
    assert states(run_cli) == {"0001_items": "applied", "0002_tag": "pending"}
    assert query(db, "SELECT * FROM items") == [(2, "two")]  # as the notes say
    assert query(db, "SELECT name FROM sqlite_master WHERE name = 'log'") == []


def test_schema_and_rows_changed_note_in_text_output_and_new_down(project, write_migration,
                                                                  run_cli):
    apply(run_cli, write_migration, SCHEMA_AND_ROWS)
    code, out, err = run_cli(["new", "--down", "0002"])
    assert code == 0, err
    text = (project / "migrations" / "down" / "0002_tag.sql").read_text()
    assert text.splitlines()[1:] == [*("-- Note: " + note for note in NOTES),
                                     'ALTER TABLE "items" DROP COLUMN "tag";',
                                     'DROP TABLE "log";']
    (project / "migrations" / "down" / "0002_tag.sql").unlink()
    execute(project / "app.db", "DELETE FROM log")
    code, out, err = run_cli(["rollback", "--db-path", "app.db"])
    assert code == 0, err
    assert [line for line in out.splitlines() if line.startswith("Note:")] == [
        "Note: " + note for note in NOTES]


def test_rows_inserted_into_a_table_the_migration_made_give_no_note(project, write_migration,
                                                                    run_cli):
    """Regression guard (passes before the change too, which gave no notes)."""
    apply(run_cli, write_migration, {
        "0001_items.sql": ITEMS,
        "0002_log.sql": "CREATE TABLE log (msg TEXT);\n"
                        "INSERT INTO log (msg) VALUES ('one');\n"
                        "DELETE FROM log;\n"})
    code, out, err = run_cli(["rollback", "--db-path", "app.db", "--dry-run", "--json"])
    assert code == 0, err
    assert json.loads(out)["notes"] == []
    code, out, err = run_cli(["rollback", "--db-path", "app.db"])
    assert code == 0 and "Note" not in out, out


def test_rows_a_with_insert_put_into_a_table_the_migration_made_give_no_note(
        project, write_migration, run_cli):
    apply(run_cli, write_migration, {
        "0001_items.sql": ITEMS,
        "0002_log.sql": "CREATE TABLE log (msg TEXT);\n"
                        "WITH n(m) AS (VALUES ('one')) INSERT INTO log (msg) SELECT m FROM n;\n"})
    code, out, err = run_cli(["rollback", "--db-path", "app.db", "--dry-run", "--json",
                              "--allow-data-loss"])
    assert code == 0, err
    assert json.loads(out)["notes"] == []


def test_rows_inserted_into_a_renamed_table_get_a_note(project, write_migration, run_cli):
    apply(run_cli, write_migration, {
        "0001_items.sql": ITEMS,
        "0002_rename.sql": "ALTER TABLE items RENAME TO things;\n"
                           "INSERT INTO things (id, name) VALUES (2, 'two');\n"})
    code, out, err = run_cli(["rollback", "--db-path", "app.db", "--json"])
    assert code == 0, err
    assert query(project / "app.db", "SELECT id FROM items ORDER BY id") == [(1,), (2,)]
    assert json.loads(out)["notes"] == [NOTE.format(2, "INSERT things")]


# --------------------------------------------------------------------------
# The library API


def test_the_library_api_computes_the_same_rollbacks(tmp_path):
    folder = tmp_path / "migrations"
    folder.mkdir()
    for name, text in {**VIRTUAL, "0003_rows.sql": "DELETE FROM notes WHERE id = 1;\n",
                       "0004_tag.sql": "ALTER TABLE notes ADD COLUMN tag TEXT;\n"
                                       "INSERT INTO notes (id, title) VALUES (5, 'five');\n"
                       }.items():
        (folder / name).write_text(text)
    db = tmp_path / "lib.db"
    with apply_migrations.Migrator(db, folder) as migrator:
        migrator.apply()
        report = migrator.rollback()
        assert report.computed is not None
        assert report.computed.notes == [NOTE.format(2, "INSERT notes")]
        assert report.computed.statements[0] == 'ALTER TABLE "notes" DROP COLUMN "tag";'
        with pytest.raises(apply_migrations.MigrationError) as refused:
            migrator.rollback()
        assert "Cannot compute a rollback of 0003_rows: it changed rows, not the schema" \
               " (statement 1, DELETE notes)" in str(refused.value)
        assert migrator.rollback(record_only=True).computed is None
        report = migrator.rollback()  # 0002_search: the virtual tables, shadows and all
        assert report.computed is not None and report.computed.losses == []
        assert 'DROP TABLE "notes_fts";' in report.computed.statements
        assert {s.state for s in migrator.status()} == {"applied", "pending"}
        assert [s.state for s in migrator.status()] == ["applied", "pending", "pending",
                                                        "pending"]
    assert query(db, "SELECT name FROM sqlite_master WHERE name LIKE '%fts%'"
                     " OR name LIKE 'boxes%'") == []


def test_a_table_named_like_a_shadow_table_is_the_users(project, write_migration, run_cli):
    """An FTS5 table over external content makes no `_content` table of its
    own: a table of the user's with that name is an object of the schema,
    and a rollback that changes it is computed."""
    apply(run_cli, write_migration, {
        "0001_init.sql": "CREATE TABLE docs_content (id INTEGER PRIMARY KEY, body TEXT);\n"
                         "CREATE VIRTUAL TABLE docs USING fts5(body, content='docs_content',"
                         " content_rowid='id');\n"
                         "CREATE TRIGGER docs_ai AFTER INSERT ON docs_content BEGIN\n"
                         "  INSERT INTO docs (rowid, body) VALUES (new.id, new.body);\nEND;\n",
        "0002_more.sql": "ALTER TABLE docs_content ADD COLUMN extra TEXT;\n"})
    code, out, err = run_cli(["schema", "--db-path", "app.db"])
    assert code == 0, err
    assert "CREATE TABLE docs_content" in out and "CREATE TRIGGER docs_ai" in out, out
    assert "docs_data" not in out and "docs_config" not in out, out
    code, out, err = run_cli(["rollback", "--db-path", "app.db", "--dry-run"])
    assert code == 0, err
    assert out.splitlines()[1:] == ['ALTER TABLE "docs_content" DROP COLUMN "extra";']


def test_an_fts_index_and_its_content_table_both_made_again_in_any_name_order(
        project, write_migration, run_cli):
    """The rebuild reads the content table: it comes after every table is
    back, whatever the names' order (afts sorts before notes)."""
    apply(run_cli, write_migration, {
        "0001_init.sql": "CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT);\n"
                         "CREATE VIRTUAL TABLE afts USING fts5(body, content='notes',"
                         " content_rowid='id');\n",
        "0002_drop.sql": "DROP TABLE afts;\nDROP TABLE notes;\n"})
    code, out, err = run_cli(["rollback", "--db-path", "app.db", "--dry-run"])
    assert code == 0, err
    lines = out.splitlines()
    assert lines[-1] == 'INSERT INTO "afts" ("afts") VALUES (\'rebuild\');'
    assert any(line.startswith("CREATE TABLE notes") for line in lines[:-1]), lines


def test_an_applied_migration_with_a_setting_of_the_run_still_replays(project, write_migration,
                                                                      run_cli):
    """apply refuses PRAGMA journal_mode and the like, but a migration that
    has one (applied before the refusal, or by another tool) must still
    replay in memory: schema --from-migrations, computed rollbacks, check."""
    write_migration("0001_a.sql", "CREATE TABLE a (x);\nPRAGMA journal_mode = DELETE;\n"
                                  "PRAGMA locking_mode = NORMAL;\n")
    write_migration("0002_b.sql", "CREATE TABLE b (x);\nDROP TABLE a;\n")
    code, out, err = run_cli(["schema", "--from-migrations"])
    assert code == 0, err
    assert "CREATE TABLE b" in out and "CREATE TABLE a" not in out, out


# --------------------------------------------------------------------------
# From a second trial on real projects (authelia, vaultwarden, memos)


def test_a_column_both_versions_have_keeps_its_values(project, write_migration, run_cli):
    """Dropping x and adding y leaves the same number of columns: x's place
    is b's now, but b is b's in both versions, so b's values stay in b (they
    went into x, silently)."""
    apply(run_cli, write_migration, {
        "0001_init.sql": "CREATE TABLE s (id INTEGER PRIMARY KEY, a TEXT, x TEXT, b TEXT);\n",
        "0002_alter.sql": "ALTER TABLE s DROP COLUMN x;\nALTER TABLE s ADD COLUMN y INTEGER;\n"})
    db = project / "app.db"
    execute(db, "INSERT INTO s (id, a, b) VALUES (1, 'A', 'B')")
    code, out, err = run_cli(["rollback", "--db-path", "app.db"])
    assert code == 0, err
    assert query(db, "SELECT id, a, x, b FROM s") == [(1, "A", None, "B")]


def test_a_not_null_column_without_default_empties_its_table_only_when_allowed(
        project, write_migration, run_cli):
    """The column comes back with no value to give the rows: refused, and
    allowed, the table comes back empty, as the refusal said (it failed on
    the NOT NULL constraint)."""
    apply(run_cli, write_migration, {
        "0001_init.sql": "CREATE TABLE c (id INTEGER PRIMARY KEY, name TEXT,"
                         " fav BOOLEAN NOT NULL);\n",
        "0002_drop_fav.sql": "ALTER TABLE c DROP COLUMN fav;\n"})
    db = project / "app.db"
    execute(db, "INSERT INTO c (name) VALUES ('one')")
    code, out, err = run_cli(["rollback", "--db-path", "app.db"])
    assert code == 1 and "would lose the rows of table c" in err, err
    assert query(db, "SELECT name FROM c") == [("one",)]
    code, out, err = run_cli(["rollback", "--db-path", "app.db", "--allow-data-loss"])
    assert code == 0, err
    assert query(db, "SELECT count(*) FROM c") == [(0,)]
    assert [r[1] for r in query(db, "SELECT * FROM pragma_table_info('c')")] == [
        "id", "name", "fav"]


def test_after_a_down_script_that_undoes_too_little_status_shows_drift(
        project, write_migration, run_cli):
    """Only a computed rollback is known to leave the migrations' schema; an
    empty down script leaves the column, and status must say so."""
    apply(run_cli, write_migration, {
        "0001_init.sql": "CREATE TABLE t (id INTEGER PRIMARY KEY);\n",
        "0002_add_manage.sql": "ALTER TABLE t ADD COLUMN manage BOOLEAN NOT NULL DEFAULT 0;\n"})
    write_migration("0002_add_manage.sql", "-- nothing\n", folder="migrations/down")
    code, out, err = run_cli(["rollback", "--db-path", "app.db"])
    assert code == 0, err
    code, out, err = run_cli(["status", "--db-path", "app.db", "--exit-code"])
    assert code == 1, out
    assert "table t: changed" in out, out


def test_check_reports_every_incomplete_down_script(project, write_migration, run_cli):
    """One incomplete down script must not hide the ones after it."""
    write_migration("0001_a.sql", "CREATE TABLE a (x);\n")
    write_migration("0002_b.sql", "CREATE TABLE b (x);\n")
    write_migration("0003_c.sql", "CREATE TABLE c (x);\n")
    write_migration("0002_b.sql", "-- forgets b\n", folder="migrations/down")
    write_migration("0003_c.sql", "-- forgets c\n", folder="migrations/down")
    code, out, err = run_cli(["check", "--json"])
    found = [(f["path"].rsplit("/", 1)[-1], f["code"]) for f in json.loads(out)["findings"]]
    assert ("0002_b.sql", "down-script-incomplete") in found, found
    assert ("0003_c.sql", "down-script-incomplete") in found, found


def test_a_rebuild_keeps_a_check_that_names_its_own_table(project, write_migration, run_cli):
    """drizzle-kit writes CHECK("sub"."kind" ...): the rebuilt table, made
    under another name first, must name itself there too (SQLite's rename
    then names it back); it failed in memory, 'no such column: sub.kind'."""
    apply(run_cli, write_migration, {
        "0001_init.sql": "CREATE TABLE `sub` (`id` integer PRIMARY KEY NOT NULL,"
                         " `kind` text DEFAULT 'email' NOT NULL, `email` text,"
                         " CONSTRAINT \"sub_check\" CHECK(\"sub\".\"kind\" <> 'email'"
                         " OR \"sub\".\"email\" IS NOT NULL));\n",
        "0002_rebuild.sql": "CREATE TABLE `__new_sub` (`id` integer PRIMARY KEY NOT NULL,"
                            " `kind` text DEFAULT 'email' NOT NULL,"
                            " `email` text NOT NULL DEFAULT '', CONSTRAINT \"sub_check\""
                            " CHECK(\"__new_sub\".\"kind\" <> 'email'"
                            " OR \"__new_sub\".\"email\" IS NOT NULL));\n"
                            "INSERT INTO `__new_sub`(\"id\", \"kind\", \"email\") SELECT"
                            " \"id\", \"kind\", coalesce(\"email\", '') FROM `sub`;\n"
                            "DROP TABLE `sub`;\nALTER TABLE `__new_sub` RENAME TO `sub`;\n"})
    db = project / "app.db"
    execute(db, "INSERT INTO sub (kind, email) VALUES ('sms', 'a')")
    code, out, err = run_cli(["rollback", "--db-path", "app.db"])
    assert code == 0, err
    assert query(db, "SELECT id, kind, email FROM sub") == [(1, "sms", "a")]
    code, out, err = run_cli(["status", "--db-path", "app.db", "--exit-code"])
    assert code == 1 and "Drift" not in out, out  # pending again, and no drift
