"""wrangler interop: the wrangler config (TOML with tomllib and with the
subset reader of Python 3.8-3.10, JSON, JSONC), where wrangler keeps its local
D1 database (miniflare's object id, preview_database_id, --persist-to), the
d1_migrations record kept in step with the tool's own, and, against the real
wrangler (marked `wrangler`), both tools applying, listing and rolling back
migrations of one project in turn.
"""
from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
import sqlite3
import subprocess
import sys
from contextlib import closing
from pathlib import Path
from types import SimpleNamespace
from typing import Dict, List, Sequence

import pytest

from conftest import ENV_CLEARED, TOOL_PATH, apply_migrations
from dbhelpers import create_db, query, tables

sys.path.insert(0, str(Path(__file__).resolve().parent / "fixtures" / "wrangler"))
import wrangler_cli  # noqa: E402
from wrangler_cli import (APPLIED, DATABASE_ID, DATABASE_OBJECT_ID, execute_json,  # noqa: E402
                          fixture_migrations, local_database, migrations_apply,
                          statuses, to_be_applied, write_project)

STATE = os.path.join(".wrangler", "state", "v3", "d1", "miniflare-D1DatabaseObject")
NAMES = ["0001_create_users.sql", "0002_create_posts.sql", "0003_seed_users.sql",
         "0004_add_user_name.sql"]
DOWN_0004 = "down/0004_add_user_name.sql"


def object_id(name: str) -> str:
    """miniflare's idFromName for the D1DatabaseObject namespace, written out
    from its description (D1_NOTES.md), independently of the tool."""
    key = hashlib.sha256(b"miniflare-D1DatabaseObject").digest()
    a = hmac.new(key, name.encode("utf-8"), hashlib.sha256).digest()[:16]
    b = hmac.new(key, a, hashlib.sha256).digest()[:16]
    return (a + b).hex()


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def wrangler_rows(db: Path, table: str = "d1_migrations") -> List[str]:
    return [r[0] for r in query(db, f'SELECT name FROM "{table}" ORDER BY id')]


# --------------------------------------------------------------------------
# miniflare_object_id


def test_object_id_of_a_database_id_is_the_file_name_wrangler_uses():
    # The file name wrangler 4.86.0 wrote for this database_id.
    assert apply_migrations.miniflare_object_id(DATABASE_ID) == (
        "f023adf8de81e80d62670e09f086149af129cccda34c51f26517069258c53e8c")
    assert DATABASE_OBJECT_ID == object_id(DATABASE_ID)


@pytest.mark.parametrize("name", ["DB", "preview-db", "00000000-0000-4000-8000-0000000000d1",
                                  "base\u00e9-\u6570\u636e"])
def test_object_id_follows_miniflare_derivation(name):
    ident = apply_migrations.miniflare_object_id(name)
    assert ident == object_id(name)
    assert re.fullmatch(r"[0-9a-f]{64}", ident)


# --------------------------------------------------------------------------
# Reading the config: TOML


CONFIG_TOML = """\
# The Worker
name = "trading-brain"
main = "src/index.ts"
compatibility_date = "2024-09-01"
compatibility_flags = [
  "nodejs_compat",
]
workers_dev = true
account_id = 'acc # not a comment'

[vars]
ENVIRONMENT = "dev"
database_id = "not-this-one"

[[kv_namespaces]]
binding = "CACHE"
id = "0123"

[[d1_databases]]
binding = "DB"                    # the main database
database_name = "trading-brain"
database_id = "11111111-2222-3333-4444-555555555555"
preview_database_id = 'preview-db'
migrations_dir = "db/migrations"
migrations_table = "d1_migrations_custom"

[[d1_databases]]
binding = "ANALYTICS"
database_name = "analytics \\"events\\""
database_id = "22222222-2222-3333-4444-555555555555"

[env.production]
name = "trading-brain-production"

[[env.production.d1_databases]]
binding = "DB"
database_name = "production"
database_id = "33333333-2222-3333-4444-555555555555"
"""

EXPECTED_DATABASES = [
    {"binding": "DB", "database_name": "trading-brain",
     "database_id": "11111111-2222-3333-4444-555555555555",
     "preview_database_id": "preview-db", "migrations_dir": "db/migrations",
     "migrations_table": "d1_migrations_custom"},
    {"binding": "ANALYTICS", "database_name": 'analytics "events"',
     "database_id": "22222222-2222-3333-4444-555555555555"},
]


def test_toml_subset_reader_reads_d1_databases():
    # Every Python runs this: it is what 3.8 to 3.10 use.
    config = apply_migrations._parse_toml_subset(CONFIG_TOML)
    assert config["d1_databases"] == EXPECTED_DATABASES
    assert config["name"] == "trading-brain"
    assert config["workers_dev"] is True
    assert config["account_id"] == "acc # not a comment"
    # Of [env.*] tables, only their D1 databases are read (--wrangler-env).
    assert config["env"] == {"production": {"d1_databases": [
        {"binding": "DB", "database_name": "production",
         "database_id": "33333333-2222-3333-4444-555555555555"}]}}
    assert "trading-brain-production" not in json.dumps(config)


def test_toml_subset_reader_handles_crlf_and_comments_after_headers():
    text = ("[[d1_databases]]   # first\r\nbinding = \"DB\"\r\n"
            "database_id = \"abc\"  # id\r\n")
    assert apply_migrations._parse_toml_subset(text) == {
        "d1_databases": [{"binding": "DB", "database_id": "abc"}]}


def test_toml_subset_reader_refuses_inline_d1_databases_with_the_line():
    text = 'name = "x"\nd1_databases = [{ binding = "DB", database_id = "abc" }]\n'
    with pytest.raises(apply_migrations.ConfigurationError) as info:
        apply_migrations._parse_toml_subset(text)
    assert "line 2" in str(info.value) and "[[d1_databases]]" in str(info.value)


def test_toml_subset_reader_allows_spaces_inside_the_header():
    text = '[[ d1_databases ]]\nbinding = "DB"\ndatabase_id = "abc"\n'
    assert apply_migrations._parse_toml_subset(text) == {
        "d1_databases": [{"binding": "DB", "database_id": "abc"}]}


@pytest.mark.skipif(sys.version_info < (3, 11), reason="tomllib is Python 3.11+")
def test_toml_is_read_with_tomllib_on_311(tmp_path, monkeypatch):
    path = write(tmp_path / "wrangler.toml", CONFIG_TOML)

    def no_subset(text):  # pragma: no cover - must not be called
        raise AssertionError("the subset reader was used on Python 3.11+")

    monkeypatch.setattr(apply_migrations, "_parse_toml_subset", no_subset)
    config = apply_migrations.read_wrangler_config(str(path))
    assert config["d1_databases"] == EXPECTED_DATABASES
    assert config["env"]["production"]["d1_databases"][0]["database_name"] == "production"
    # Inline tables, which only tomllib reads, also work there.
    inline = write(tmp_path / "inline.toml",
                   'd1_databases = [{ binding = "DB", database_id = "abc" }]\n')
    assert apply_migrations.read_wrangler_config(str(inline))["d1_databases"] == [
        {"binding": "DB", "database_id": "abc"}]


@pytest.mark.skipif(sys.version_info < (3, 11), reason="tomllib is Python 3.11+")
def test_subset_reader_agrees_with_tomllib():
    import tomllib
    assert (apply_migrations._parse_toml_subset(CONFIG_TOML)["d1_databases"]
            == tomllib.loads(CONFIG_TOML)["d1_databases"])


def test_read_wrangler_config_reads_toml_on_this_python(tmp_path):
    path = write(tmp_path / "wrangler.toml", CONFIG_TOML)
    assert apply_migrations.read_wrangler_config(str(path))["d1_databases"] == EXPECTED_DATABASES


def test_unparsable_config_is_a_configuration_error(tmp_path, run_cli, project):
    write(project / "wrangler.toml", '[[d1_databases]]\nbinding = "DB\n')
    code, out, err = run_cli(["status", "--wrangler-config", "wrangler.toml"])
    assert code == 2, (out, err)
    assert err.startswith("Error: ") and "wrangler config" in err
    assert "Traceback" not in err


# --------------------------------------------------------------------------
# Reading the config: JSON and JSONC


def test_json_config(tmp_path):
    path = write(tmp_path / "wrangler.json", json.dumps({
        "name": "x", "d1_databases": [{"binding": "DB", "database_id": "abc"}]}))
    assert apply_migrations.read_wrangler_config(str(path))["d1_databases"] == [
        {"binding": "DB", "database_id": "abc"}]


JSONC = """\
/**
 * wrangler.jsonc: https://developers.cloudflare.com/workers/wrangler/configuration/
 */
{
  "$schema": "node_modules/wrangler/config-schema.json",
  "name": "trading-brain", // the Worker
  "routes": ["example.com/*", "https://example.com/api//v1"],
  "d1_databases": [
    /* the main database */
    {
      "binding": "DB",
      "database_name": "a \\"quoted\\" // name /* not a comment */",
      "database_id": "11111111-2222-3333-4444-555555555555",
      "migrations_dir": "db/migrations",
    },
    {
      "binding": "OTHER",
      "database_id": "22222222-2222-3333-4444-555555555555"
    },
  ],
}
"""


def test_jsonc_config_with_comments_and_trailing_commas(tmp_path):
    path = write(tmp_path / "wrangler.jsonc", JSONC)
    config = apply_migrations.read_wrangler_config(str(path))
    assert config["routes"] == ["example.com/*", "https://example.com/api//v1"]
    assert config["d1_databases"] == [
        {"binding": "DB", "database_name": 'a "quoted" // name /* not a comment */',
         "database_id": "11111111-2222-3333-4444-555555555555",
         "migrations_dir": "db/migrations"},
        {"binding": "OTHER", "database_id": "22222222-2222-3333-4444-555555555555"},
    ]


def test_jsonc_trailing_comma_followed_by_a_comment(tmp_path):
    path = write(tmp_path / "wrangler.jsonc", """{
  "d1_databases": [
    {
      "binding": "DB",
      "database_id": "11111111-2222-3333-4444-555555555555", // the id
    },
    /* more later */
  ],
}
""")
    assert apply_migrations.read_wrangler_config(str(path))["d1_databases"] == [
        {"binding": "DB", "database_id": "11111111-2222-3333-4444-555555555555"}]


# --------------------------------------------------------------------------
# Finding the database: wrangler_database()


def two_databases_toml(extra_db: str = "", extra_analytics: str = "") -> str:
    return ('name = "x"\n\n[[d1_databases]]\nbinding = "DB"\ndatabase_name = "main-db"\n'
            f'database_id = "{DATABASE_ID}"\n{extra_db}\n'
            '[[d1_databases]]\nbinding = "ANALYTICS"\ndatabase_name = "analytics-db"\n'
            f'database_id = "analytics-id"\n{extra_analytics}')


def expected_file(folder: Path, ident: str) -> str:
    return os.path.join(str(folder), STATE, object_id(ident) + ".sqlite")


def test_single_database_needs_no_name(tmp_path):
    config = write(tmp_path / "wrangler.toml",
                   f'[[d1_databases]]\nbinding = "DB"\ndatabase_id = "{DATABASE_ID}"\n')
    found = apply_migrations.wrangler_database(str(config))
    assert found.db_path == os.path.join(str(tmp_path), STATE, DATABASE_OBJECT_ID + ".sqlite")
    assert found.migrations_dir == os.path.join(str(tmp_path), "migrations")
    assert found.migrations_table == "d1_migrations"


def test_several_databases_need_database(tmp_path):
    config = write(tmp_path / "wrangler.toml", two_databases_toml())
    with pytest.raises(apply_migrations.ConfigurationError) as info:
        apply_migrations.wrangler_database(str(config))
    assert "several D1 databases (DB, ANALYTICS)" in str(info.value)
    # The setting is named as the caller knows it: `database` in Python,
    # `--database` on the command line.
    assert info.value.options == ["database"]
    assert "choose one with database" in str(info.value)
    assert "--database" in info.value.message(apply_migrations.cli_spelling)
    # By binding and by database_name, as wrangler's commands take either.
    for name in ("ANALYTICS", "analytics-db"):
        found = apply_migrations.wrangler_database(str(config), name)
        assert found.db_path == expected_file(tmp_path, "analytics-id")
    assert apply_migrations.wrangler_database(str(config), "main-db").db_path == \
        expected_file(tmp_path, DATABASE_ID)
    with pytest.raises(apply_migrations.ConfigurationError) as info:
        apply_migrations.wrangler_database(str(config), "nope")
    assert "no D1 database nope" in str(info.value) and "DB, ANALYTICS" in str(info.value)


def test_several_databases_on_the_command_line(project, run_cli, write_migration):
    write(project / "wrangler.toml", two_databases_toml())
    write_migration("0001_a.sql", "CREATE TABLE a (id INTEGER);\n")
    code, out, err = run_cli(["apply", "--wrangler-config", "wrangler.toml"])
    assert code == 2, (out, err)
    assert "--database" in err
    assert not (project / ".wrangler").exists()
    code, out, err = run_cli(["apply", "--wrangler-config", "wrangler.toml",
                              "--database", "ANALYTICS"])
    assert code == 0, err
    db = Path(expected_file(project, "analytics-id"))
    assert tables(db) == ["a", "d1_migrations", "schema_migrations"]
    assert not Path(expected_file(project, DATABASE_ID)).exists()


def test_no_d1_databases_is_an_error(tmp_path):
    config = write(tmp_path / "wrangler.toml", 'name = "x"\n')
    with pytest.raises(apply_migrations.ConfigurationError) as info:
        apply_migrations.wrangler_database(str(config))
    assert "no D1 database" in str(info.value)


@pytest.mark.parametrize("entry,ident", [
    ('binding = "DB"\ndatabase_id = "db-id"\npreview_database_id = "preview-id"\n', "preview-id"),
    ('binding = "DB"\npreview_database_id = "preview-id"\ndatabase_id = "db-id"\n', "preview-id"),
    ('binding = "DB"\ndatabase_id = "db-id"\n', "db-id"),
    ('binding = "DB"\ndatabase_name = "named"\n', "DB"),
])
def test_local_file_is_named_after_preview_id_then_database_id_then_binding(tmp_path, entry,
                                                                            ident):
    config = write(tmp_path / "wrangler.toml", "[[d1_databases]]\n" + entry)
    assert apply_migrations.wrangler_database(str(config)).db_path == \
        expected_file(tmp_path, ident)


def test_migrations_dir_and_table_come_from_the_config(tmp_path):
    config = write(tmp_path / "app" / "wrangler.toml",
                   two_databases_toml('migrations_dir = "db/migrations"\n'
                                      'migrations_table = "schema_history"\n'))
    found = apply_migrations.wrangler_database(str(config), "DB")
    # Relative to the config's folder, as wrangler resolves it.
    assert found.migrations_dir == os.path.join(str(tmp_path / "app"), "db/migrations")
    assert found.migrations_table == "schema_history"
    other = apply_migrations.wrangler_database(str(config), "ANALYTICS")
    assert other.migrations_dir == os.path.join(str(tmp_path / "app"), "migrations")
    assert other.migrations_table == "d1_migrations"


def test_persist_to_replaces_the_state_folder(tmp_path):
    config = write(tmp_path / "wrangler.toml",
                   f'[[d1_databases]]\nbinding = "DB"\ndatabase_id = "{DATABASE_ID}"\n')
    found = apply_migrations.wrangler_database(str(config), None, str(tmp_path / "state"))
    assert found.db_path == os.path.join(str(tmp_path / "state"), "v3", "d1",
                                         "miniflare-D1DatabaseObject",
                                         DATABASE_OBJECT_ID + ".sqlite")


def test_status_json_names_the_config_database_and_folder(project, run_cli):
    write(project / "app" / "wrangler.toml",
          f'[[d1_databases]]\nbinding = "DB"\ndatabase_id = "{DATABASE_ID}"\n'
          'migrations_dir = "sql"\n')
    write(project / "app" / "sql" / "0001_a.sql", "CREATE TABLE a (id INTEGER);\n")
    code, out, err = run_cli(["status", "--json", "--wrangler-config", "app/wrangler.toml",
                              "--persist-to", "state"])
    assert code == 0, err
    payload = json.loads(out)
    assert payload["database"] == os.path.join("state", "v3", "d1",
                                               "miniflare-D1DatabaseObject",
                                               DATABASE_OBJECT_ID + ".sqlite")
    assert payload["migrations_dir"] == os.path.join("app", "sql")
    assert [m["name"] for m in payload["migrations"]] == ["0001_a"]


def test_command_line_options_override_the_config(project, run_cli, write_migration):
    write(project / "wrangler.toml",
          f'[[d1_databases]]\nbinding = "DB"\ndatabase_id = "{DATABASE_ID}"\n'
          'migrations_dir = "unused"\nmigrations_table = "unused_table"\n')
    write_migration("0001_a.sql", "CREATE TABLE a (id INTEGER);\n")
    code, out, err = run_cli(["apply", "--wrangler-config", "wrangler.toml",
                              "--migrations-dir", "migrations", "--wrangler-table", "mine",
                              "--db-path", "here.db"])
    assert code == 0, err
    assert set(tables(project / "here.db")) == {"a", "mine", "schema_migrations"}
    assert wrangler_rows(project / "here.db", "mine") == ["0001_a.sql"]
    assert not (project / ".wrangler").exists()


def test_check_reads_the_migrations_dir_of_the_config(project, run_cli):
    write(project / "wrangler.toml",
          '[[d1_databases]]\nbinding = "DB"\ndatabase_id = "x"\nmigrations_dir = "sql"\n')
    write(project / "sql" / "0001_a.sql", "BEGIN;\nCREATE TABLE a (id INTEGER);\n")
    code, out, err = run_cli(["check", "--wrangler-config", "wrangler.toml"])
    assert code == 1, (out, err)
    assert os.path.join("sql", "0001_a.sql") + ":1: error:" in out


# --------------------------------------------------------------------------
# Keeping d1_migrations in step (no wrangler needed)


@pytest.fixture
def wrangler_project(project: Path) -> Path:
    write(project / "wrangler.toml",
          f'[[d1_databases]]\nbinding = "DB"\ndatabase_id = "{DATABASE_ID}"\n')
    return project


def test_apply_creates_the_local_file_where_wrangler_keeps_it(wrangler_project, run_cli,
                                                             write_migration):
    write_migration("0001_a.sql", "CREATE TABLE a (id INTEGER);\n")
    write_migration("0002_b.sql", "CREATE TABLE b (id INTEGER);\n")
    code, out, err = run_cli(["apply", "--wrangler-config", "wrangler.toml"])
    assert code == 0, err
    db = local_database(wrangler_project)
    assert db.is_file()
    assert wrangler_rows(db) == ["0001_a.sql", "0002_b.sql"]
    assert [r[0] for r in query(db, "SELECT version FROM schema_migrations ORDER BY version")] \
        == ["0001", "0002"]
    # wrangler's DDL, so wrangler takes the table as its own.
    ddl = query(db, "SELECT sql FROM sqlite_master WHERE name = 'd1_migrations'")[0][0]
    assert "id         INTEGER PRIMARY KEY AUTOINCREMENT" in ddl
    assert "applied_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP NOT NULL" in ddl
    for (applied_at,) in query(db, "SELECT applied_at FROM d1_migrations"):
        assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", applied_at)


def test_custom_migrations_table_from_the_config(project, run_cli, write_migration):
    write(project / "wrangler.toml",
          f'[[d1_databases]]\nbinding = "DB"\ndatabase_id = "{DATABASE_ID}"\n'
          'migrations_table = "schema_history"\n')
    write_migration("0001_a.sql", "CREATE TABLE a (id INTEGER);\n")
    code, out, err = run_cli(["apply", "--wrangler-config", "wrangler.toml"])
    assert code == 0, err
    db = local_database(project)
    assert wrangler_rows(db, "schema_history") == ["0001_a.sql"]
    assert "d1_migrations" not in tables(db)


def test_failed_migration_leaves_no_row_in_either_table(wrangler_project, run_cli,
                                                         write_migration):
    write_migration("0001_a.sql", "CREATE TABLE a (id INTEGER);\n")
    write_migration("0002_b.sql", "CREATE TABLE b (id INTEGER);\nINSERT INTO nowhere VALUES (1);\n")
    code, out, err = run_cli(["apply", "--wrangler-config", "wrangler.toml"])
    assert code == 1
    db = local_database(wrangler_project)
    assert wrangler_rows(db) == ["0001_a.sql"]
    assert [r[0] for r in query(db, "SELECT version FROM schema_migrations")] == ["0001"]
    assert "b" not in tables(db)


def test_migrations_recorded_only_by_wrangler_count_as_applied(wrangler_project, run_cli,
                                                                write_migration):
    write_migration("0001_a.sql", "CREATE TABLE a (id INTEGER);\n")
    write_migration("0002_b.sql", "CREATE TABLE b (id INTEGER);\n")
    db = local_database(wrangler_project)
    db.parent.mkdir(parents=True)
    create_db(db, apply_migrations.SQL_CREATE_WRANGLER.format(table="d1_migrations") + ";"
              "CREATE TABLE a (id INTEGER);"
              "INSERT INTO d1_migrations (name) VALUES ('0001_a.sql');")
    code, out, err = run_cli(["status", "--json", "--wrangler-config", "wrangler.toml"])
    assert code == 0, err
    assert [(m["name"], m["state"]) for m in json.loads(out)["migrations"]] == [
        ("0001_a", "applied"), ("0002_b", "pending")]
    code, out, err = run_cli(["apply", "--json", "--wrangler-config", "wrangler.toml"])
    assert code == 0, err
    assert [a["name"] for a in json.loads(out)["applied"]] == ["0002_b"]
    assert wrangler_rows(db) == ["0001_a.sql", "0002_b.sql"]


def test_apply_backfills_wrangler_rows_for_earlier_runs(wrangler_project, run_cli,
                                                        write_migration):
    write_migration("0001_a.sql", "CREATE TABLE a (id INTEGER);\n")
    write_migration("0002_b.sql", "CREATE TABLE b (id INTEGER);\n")
    db = local_database(wrangler_project)
    db.parent.mkdir(parents=True)
    # Applied before wrangler's table was kept: plain --db-path.
    code, out, err = run_cli(["apply", "--db-path", str(db)])
    assert code == 0, err
    assert "d1_migrations" not in tables(db)
    code, out, err = run_cli(["apply", "--wrangler-config", "wrangler.toml"])
    assert code == 0, err
    assert wrangler_rows(db) == ["0001_a.sql", "0002_b.sql"]
    assert ("Recorded 2 migrations applied earlier in d1_migrations for wrangler:"
            " 0001_a, 0002_b") in out
    # Said once: the next run has nothing to record.
    code, out, err = run_cli(["apply", "--wrangler-config", "wrangler.toml"])
    assert code == 0 and "Recorded" not in out


def test_init_says_what_it_recorded_for_wrangler(wrangler_project, run_cli, write_migration):
    write_migration("0001_a.sql", "CREATE TABLE a (id INTEGER);\n")
    db = local_database(wrangler_project)
    db.parent.mkdir(parents=True)
    assert run_cli(["apply", "--db-path", str(db)])[0] == 0
    code, out, err = run_cli(["init", "--wrangler-config", "wrangler.toml"])
    assert code == 0, err
    assert wrangler_rows(db) == ["0001_a.sql"]
    assert out.splitlines() == [
        "Recorded 1 migration applied earlier in d1_migrations for wrangler: 0001_a"]
    code, out, err = run_cli(["init", "--wrangler-config", "wrangler.toml", "--json"])
    assert code == 0 and json.loads(out)["recorded_for_wrangler"] == []
    assert "nothing to do" in run_cli(["init", "--wrangler-config", "wrangler.toml"])[1]


def test_rollback_removes_both_rows(wrangler_project, run_cli, write_migration):
    write_migration("0001_a.sql", "CREATE TABLE a (id INTEGER);\n")
    write_migration("0002_b.sql", "CREATE TABLE b (id INTEGER);\n")
    write_migration("0002_b.sql", "DROP TABLE b;\n", folder="migrations/down")
    code, out, err = run_cli(["apply", "--wrangler-config", "wrangler.toml"])
    assert code == 0, err
    code, out, err = run_cli(["rollback", "--wrangler-config", "wrangler.toml"])
    assert code == 0, err
    db = local_database(wrangler_project)
    assert wrangler_rows(db) == ["0001_a.sql"]
    assert [r[0] for r in query(db, "SELECT version FROM schema_migrations")] == ["0001"]
    assert "b" not in tables(db)


def test_wrangler_flag_with_db_path(project, run_cli, write_migration):
    write_migration("0001_a.sql", "CREATE TABLE a (id INTEGER);\n")
    code, out, err = run_cli(["apply", "--wrangler", "--db-path", "x.db"])
    assert code == 0, err
    assert wrangler_rows(project / "x.db") == ["0001_a.sql"]


# --------------------------------------------------------------------------
# Against the real wrangler: both tools on one project.


def tool(argv: Sequence[str], cwd: Path) -> "tuple[int, str, str]":
    """The tool as a subprocess (module-scoped fixtures cannot use run_cli)."""
    env = dict(os.environ, PYTHONIOENCODING="utf-8")
    for name in ENV_CLEARED:
        env.pop(name, None)
    proc = subprocess.run([sys.executable, str(TOOL_PATH)] + list(argv), cwd=str(cwd),
                          env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=120)
    return proc.returncode, proc.stdout.decode("utf-8"), proc.stderr.decode("utf-8")


def user_schema(db: Path) -> List[tuple]:
    """sqlite_master without SQLite's, D1's (_cf_*) and the tracking tables."""
    return sorted(query(db, (
        "SELECT type, name, tbl_name, sql FROM sqlite_master"
        " WHERE name NOT LIKE 'sqlite!_%' ESCAPE '!' AND substr(name, 1, 4) <> '_cf_'"
        " AND tbl_name NOT IN ('d1_migrations', 'schema_migrations',"
        " 'schema_migrations_state', 'schema_migrations_history')")), key=repr)


def user_data(db: Path) -> Dict[str, List[tuple]]:
    return {t: sorted(query(db, f"SELECT * FROM {t}"), key=repr) for t in ("users", "posts")}


def journal_mode(db: Path) -> str:
    with closing(sqlite3.connect(str(db))) as conn:
        return conn.execute("PRAGMA journal_mode").fetchone()[0]


@pytest.fixture(scope="module")
def plain_run(tmp_path_factory) -> SimpleNamespace:
    """All four migrations applied by the tool to a plain SQLite file."""
    root = write_project(tmp_path_factory.mktemp("plain"), fixture_migrations(*NAMES))
    code, out, err = tool(["apply", "--db-path", "plain.db"], root)
    assert code == 0, err
    return SimpleNamespace(schema=user_schema(root / "plain.db"),
                           data=user_data(root / "plain.db"))


@pytest.fixture(scope="module")
def wrangler_then_tool(wrangler_bin, tmp_path_factory) -> SimpleNamespace:
    """(a) wrangler applies 0001-0002, then the tool applies 0003-0004."""
    root = write_project(tmp_path_factory.mktemp("wrangler_first"),
                         fixture_migrations(*NAMES[:2]))
    first = migrations_apply(wrangler_bin, root)
    assert first.returncode == 0, first.describe()
    state = root / STATE
    files_after_wrangler = sorted(p.name for p in state.glob("*.sqlite"))
    db = local_database(root)
    mode_after_wrangler = journal_mode(db)
    write_project(root, fixture_migrations(*NAMES[2:], DOWN_0004))
    status = tool(["status", "--json", "--wrangler-config", "wrangler.toml"], root)
    apply = tool(["apply", "--json", "--wrangler-config", "wrangler.toml"], root)
    assert apply[0] == 0, apply
    return SimpleNamespace(
        root=root, db=db, first=first, files_after_wrangler=files_after_wrangler,
        mode_after_wrangler=mode_after_wrangler, status=status, apply=apply,
        schema=user_schema(db), data=user_data(db), d1_rows=wrangler_rows(db),
        own_rows=[r[0] for r in query(db, "SELECT name FROM schema_migrations ORDER BY version")])


@pytest.fixture(scope="module")
def tool_then_wrangler(wrangler_bin, tmp_path_factory) -> SimpleNamespace:
    """(b) the tool applies 0001-0002 to a database wrangler has never seen,
    then wrangler applies the rest; then (e) the tool rolls back 0004, which
    wrangler applied, and wrangler lists what is pending.  With a
    preview_database_id and --persist-to: wrangler finds the tool's file only
    if both tools derive the same path."""
    root = write_project(tmp_path_factory.mktemp("tool_first"),
                         fixture_migrations(*NAMES, DOWN_0004),
                         extra_config='preview_database_id = "preview-db"\n')
    tool_apply = tool(["apply", "--json", "--wrangler-config", "wrangler.toml",
                       "--persist-to", "state", "--target", "0002"], root)
    assert tool_apply[0] == 0, tool_apply
    db = root / "state" / "v3" / "d1" / "miniflare-D1DatabaseObject" / (
        object_id("preview-db") + ".sqlite")
    assert db.is_file()
    apply = wrangler_cli.run_wrangler(wrangler_bin, root, [
        "d1", "migrations", "apply", "DB", "--local", "--persist-to", "state"])
    found = SimpleNamespace(root=root, db=db, tool_apply=tool_apply, apply=apply,
                            schema=user_schema(db), data=user_data(db),
                            d1_rows=wrangler_rows(db))
    found.rollback = tool(["rollback", "--json", "--wrangler-config", "wrangler.toml",
                           "--persist-to", "state"], root)
    found.d1_rows_after_rollback = wrangler_rows(db)
    found.schema_after_rollback = user_schema(db)
    found.user_columns_after_rollback = [
        r[0] for r in query(db, "SELECT name FROM pragma_table_info('users')")]
    found.listing = wrangler_cli.run_wrangler(wrangler_bin, root, [
        "d1", "migrations", "list", "DB", "--local", "--persist-to", "state"])
    return found


@pytest.mark.wrangler
def test_status_shows_what_wrangler_applied(wrangler_then_tool):
    code, out, err = wrangler_then_tool.status
    assert code == 0, err
    states = [(m["name"], m["state"]) for m in json.loads(out)["migrations"]]
    assert states == [("0001_create_users", "applied"), ("0002_create_posts", "applied"),
                      ("0003_seed_users", "pending"), ("0004_add_user_name", "pending")]


@pytest.mark.wrangler
def test_tool_applies_only_what_wrangler_did_not(wrangler_then_tool):
    assert statuses(wrangler_then_tool.first) == {n: APPLIED for n in NAMES[:2]}
    payload = json.loads(wrangler_then_tool.apply[1])
    assert [a["name"] for a in payload["applied"]] == ["0003_seed_users", "0004_add_user_name"]
    assert wrangler_then_tool.d1_rows == NAMES
    # The tool's own record holds what it applied; wrangler's holds all four.
    assert wrangler_then_tool.own_rows == ["0003_seed_users", "0004_add_user_name"]


@pytest.mark.wrangler
def test_wrangler_writes_the_file_wrangler_database_names(wrangler_then_tool):
    found = apply_migrations.wrangler_database(str(wrangler_then_tool.root / "wrangler.toml"))
    assert wrangler_then_tool.files_after_wrangler == sorted(
        ["metadata.sqlite", DATABASE_OBJECT_ID + ".sqlite"])
    assert Path(found.db_path) == wrangler_then_tool.db
    assert os.path.basename(found.db_path) == \
        apply_migrations.miniflare_object_id(DATABASE_ID) + ".sqlite"


@pytest.mark.wrangler
def test_wrangler_reads_what_the_tool_wrote_to_its_wal_file(wrangler_bin, wrangler_then_tool):
    assert wrangler_then_tool.mode_after_wrangler == "wal"
    results = execute_json(wrangler_bin, wrangler_then_tool.root,
                           "SELECT count(*) AS n FROM users;"
                           " SELECT count(*) AS n, max(email) AS last FROM user_emails;"
                           " SELECT name FROM users WHERE id = 3;"
                           " SELECT name FROM d1_migrations ORDER BY id")
    assert results[0]["results"] == [{"n": 3}]  # rows of 0003, applied by the tool
    # The view and the column of 0004, also the tool's.
    assert results[1]["results"] == [{"n": 3, "last": "grace@example.com"}]
    assert results[2]["results"] == [{"name": None}]
    assert [r["name"] for r in results[3]["results"]] == NAMES


@pytest.mark.wrangler
def test_wrangler_applies_only_what_the_tool_did_not(tool_then_wrangler):
    run = tool_then_wrangler.apply
    assert run.returncode == 0, run.describe()
    assert to_be_applied(run) == NAMES[2:]
    assert statuses(run) == {n: APPLIED for n in NAMES[2:]}
    # Recorded as wrangler counts migrations: by file name.
    assert tool_then_wrangler.d1_rows == NAMES
    # Nothing else pending for wrangler (the list is taken after the rollback
    # of 0004 below, to save a wrangler start: it shows 0004 alone).
    listing = tool_then_wrangler.listing
    assert listing.returncode == 0, listing.describe()
    assert set(to_be_applied(listing)) <= {"0004_add_user_name.sql"}


@pytest.mark.wrangler
def test_both_orders_give_the_schema_of_a_plain_run(wrangler_then_tool, tool_then_wrangler,
                                                    plain_run):
    assert plain_run.schema  # tables, index, trigger, view
    assert {row[0] for row in plain_run.schema} == {"table", "index", "trigger", "view"}
    assert wrangler_then_tool.schema == plain_run.schema
    assert tool_then_wrangler.schema == plain_run.schema
    assert wrangler_then_tool.data == plain_run.data
    assert tool_then_wrangler.data == plain_run.data
    assert wrangler_then_tool.d1_rows == tool_then_wrangler.d1_rows == NAMES


@pytest.mark.wrangler
def test_rollback_makes_wrangler_see_the_migration_pending(tool_then_wrangler):
    # 0004 was applied by wrangler: its record is only in d1_migrations.
    code, out, err = tool_then_wrangler.rollback
    assert code == 0, err
    payload = json.loads(out)
    assert payload["rolled_back"]["name"] == "0004_add_user_name"
    assert payload["schema_changed"] is True  # the down script ran
    # The view and the column of 0004 are gone.
    assert [row[1] for row in tool_then_wrangler.schema_after_rollback
            if row[0] == "view"] == []
    assert tool_then_wrangler.user_columns_after_rollback == ["id", "email"]
    assert tool_then_wrangler.d1_rows_after_rollback == NAMES[:3]
    listing = tool_then_wrangler.listing
    assert listing.returncode == 0, listing.describe()
    assert to_be_applied(listing) == ["0004_add_user_name.sql"]


# --------------------------------------------------------------------------
# wrangler's local file behaves as D1 by default (issue 16)

CASCADE_SCHEMA = ("CREATE TABLE parent (id INTEGER PRIMARY KEY);\n"
                  "CREATE TABLE child (id INTEGER PRIMARY KEY,"
                  " parent_id INTEGER REFERENCES parent (id) ON DELETE CASCADE);\n"
                  "INSERT INTO parent VALUES (1), (2);\n"
                  "INSERT INTO child VALUES (10, 1), (20, 2);\n")


@pytest.mark.parametrize("extra,children", [([], [(20,)]), (["--no-foreign-keys"], [(10,), (20,)])],
                         ids=["as-d1", "no-foreign-keys"])
def test_foreign_keys_are_enforced_on_wranglers_file_by_default(wrangler_project, run_cli,
                                                                  write_migration, extra,
                                                                  children):
    # D1 always enforces them: on its local stand-in a DELETE of a parent
    # cascades (here meant: --allow-row-loss), unless the user says otherwise.
    write_migration("0001_schema.sql", CASCADE_SCHEMA)
    write_migration("0002_delete.sql", "DELETE FROM parent WHERE id = 1;\n")
    code, out, err = run_cli(["apply", "--wrangler-config", "wrangler.toml",
                              "--allow-row-loss", *extra])
    assert code == 0, err
    assert query(local_database(wrangler_project), "SELECT id FROM child ORDER BY id") \
        == children


def test_foreign_keys_and_no_foreign_keys_exclude_each_other(wrangler_project, run_cli,
                                                             write_migration):
    write_migration("0001_schema.sql", CASCADE_SCHEMA)
    code, out, err = run_cli(["apply", "--wrangler-config", "wrangler.toml",
                              "--foreign-keys", "--no-foreign-keys"])
    assert code == 2
    assert err.strip() == ("Error: --foreign-keys and --no-foreign-keys exclude each other")
    assert not (wrangler_project / ".wrangler").exists()


@pytest.mark.parametrize("failing", [False, True], ids=["clean", "failing"])
def test_dry_run_on_a_fresh_checkout_exits_as_the_real_run(wrangler_project, run_cli,
                                                          write_migration, failing):
    # wrangler's state folder does not exist yet: the real run makes it, the
    # dry run makes nothing and gives the real run's exit code.
    write_migration("0001_a.sql", "CREATE TABLE a (id INTEGER);\n")
    write_migration("0002_b.sql", "INSERT INTO nowhere VALUES (1);\n" if failing
                    else "CREATE TABLE b (id INTEGER);\n")
    code, out, err = run_cli(["apply", "--dry-run", "--wrangler-config", "wrangler.toml"])
    assert code == (1 if failing else 0), err
    assert "(dry run)" in out
    assert not (wrangler_project / ".wrangler").exists()
    code, out, err = run_cli(["apply", "--wrangler-config", "wrangler.toml"])
    assert code == (1 if failing else 0), err
    assert local_database(wrangler_project).is_file()


# --------------------------------------------------------------------------
# wrangler's rules in wrangler mode (issue 16): every *.sql file, known by its
# name, in wrangler's order (parseInt of the text before the first "_",
# stable on the names in JavaScript's order)


@pytest.mark.parametrize("text,number", [
    ("0005", 5.0), ("0005-skill-parameters.sql", 5.0), ("  42abc", 42.0), ("-3", -3.0),
    ("+7x", 7.0), ("0x1A", 26.0), ("seed.sql", None), ("", None), ("_x", None),
    ("9" * 20, 1e20),
])
def test_js_parse_int(text, number):
    assert apply_migrations.js_parse_int(text) == number


def ordered(names: Sequence[str]) -> List[str]:
    migrations = [apply_migrations.Migration(n[:-4], n[:-4], n, key=n) for n in names]
    return [m.filename for m in apply_migrations.wrangler_order(migrations)]


def test_wrangler_order_of_numbered_names():
    assert ordered(["10_d.sql", "9_e.sql", "0002_c.sql", "0002-a.sql", "0005-skill.sql",
                    "0001_init.sql", "0002_b.sql"]) == [
        "0001_init.sql", "0002-a.sql", "0002_b.sql", "0002_c.sql", "0005-skill.sql",
        "9_e.sql", "10_d.sql"]


def test_wrangler_order_of_many_names_is_by_number_then_name():
    names = [f"{i % 70}_{'x' if i % 2 else 'y'}{i}.sql" for i in range(140)]
    result = ordered(names)
    assert result == sorted(names, key=lambda n: (int(n.split("_")[0]), n))


HYPHENATED = {
    "0001_init.sql": "CREATE TABLE log (id INTEGER PRIMARY KEY AUTOINCREMENT,"
                     " name TEXT NOT NULL);\n",
}


def logged(name: str) -> str:
    return f"INSERT INTO log (name) VALUES ('{name}');\n"


for _name in ("0002-a-hyphen.sql", "0002_b.sql", "0005-skill-parameters.sql", "9_e.sql",
              "10_d.sql"):
    HYPHENATED[_name] = logged(_name)


def test_wrangler_mode_applies_every_sql_file_in_wranglers_order(wrangler_project, run_cli):
    write_project(wrangler_project, HYPHENATED)
    code, out, err = run_cli(["status", "--wrangler-config", "wrangler.toml", "--json"])
    assert code == 0, err
    assert [m["name"] for m in json.loads(out)["migrations"]] == [
        "0001_init", "0002-a-hyphen", "0002_b", "0005-skill-parameters", "9_e", "10_d"]
    assert "Warning" not in err
    code, out, err = run_cli(["apply", "--wrangler-config", "wrangler.toml"])
    assert code == 0, err
    db = local_database(wrangler_project)
    order = [n for n in HYPHENATED if n != "0001_init.sql"]
    assert [r[0] for r in query(db, "SELECT name FROM log ORDER BY id")] == [
        "0002-a-hyphen.sql", "0002_b.sql", "0005-skill-parameters.sql", "9_e.sql", "10_d.sql"]
    assert wrangler_rows(db) == ["0001_init.sql"] + order
    # The version column keeps the digits where they name one NNNN_ file
    # alone, else the name: every row its own key.
    assert query(db, "SELECT version, name FROM schema_migrations ORDER BY name") == [
        ("0001", "0001_init"), ("0002-a-hyphen", "0002-a-hyphen"), ("0002", "0002_b"),
        ("0005-skill-parameters", "0005-skill-parameters"), ("10", "10_d"), ("9", "9_e")]
    code, out, err = run_cli(["check", "--wrangler-config", "wrangler.toml", "--json"])
    assert code == 0 and json.loads(out)["findings"] == [], out
    code, out, err = run_cli(["status", "--wrangler-config", "wrangler.toml", "--exit-code"])
    assert code == 0, out
    # A number that names two migrations is not enough to pick one.
    code, out, err = run_cli(["rollback", "--wrangler-config", "wrangler.toml",
                              "--version", "0002", "--force"])
    assert code == 2 and "0002 could be any of 0002-a-hyphen, 0002_b" in err, err
    # 10_d only adds a row: a computed rollback would undo nothing, so it
    # is refused; the record alone can go.
    code, out, err = run_cli(["rollback", "--wrangler-config", "wrangler.toml"])
    assert code == 1 and "Cannot compute a rollback of 10_d: it changed rows" in err, err
    code, out, err = run_cli(["rollback", "--wrangler-config", "wrangler.toml", "--record-only"])
    assert code == 0 and "10_d" in out, (out, err)


def test_without_wrangler_mode_the_tools_rules_hold(project, run_cli):
    write_project(project, HYPHENATED)
    code, out, err = run_cli(["apply", "--db-path", "x.db"])
    assert code == 0, err
    assert "Warning: Ignoring migrations/0002-a-hyphen.sql" in err
    assert "Warning: Ignoring migrations/0005-skill-parameters.sql" in err
    assert "2 .sql files in it were ignored" not in out  # something was applied
    assert [r[0] for r in query(project / "x.db", "SELECT name FROM log ORDER BY id")] == [
        "0002_b.sql", "9_e.sql", "10_d.sql"]
    code, out, err = run_cli(["apply", "--db-path", "x.db"])
    assert code == 0 and "2 .sql files in it were ignored: see the warnings above." in out


ENV_TOML = f"""\
name = "app"

[env.production]
name = "app-production"

[[env.production.d1_databases]]
binding = "DB"
database_name = "app-prod"
database_id = "{DATABASE_ID}"
migrations_dir = "db/migrations"

[env.staging]
name = "app-staging"
"""
ENV_JSONC = """\
{
  // only the production environment declares D1
  "name": "app",
  "env": {
    "production": {
      "d1_databases": [
        {"binding": "DB", "database_name": "app-prod", "database_id": "%s",
         "migrations_dir": "db/migrations",},
      ],
    },
    "staging": {},
  },
}
""" % DATABASE_ID


@pytest.mark.parametrize("name,text", [("wrangler.toml", ENV_TOML),
                                       ("wrangler.jsonc", ENV_JSONC)])
def test_a_binding_declared_only_under_an_environment(project, run_cli, name, text,
                                                      monkeypatch):
    write(project / name, text)
    write(project / "db" / "migrations" / "0001_a.sql", "CREATE TABLE a (x);\n")
    code, out, err = run_cli(["status", "--wrangler-config", name])
    assert code == 2
    assert err.strip() == (
        f"Error: {name} declares its D1 databases only in the environment production;"
        " choose one with --wrangler-env production")
    code, out, err = run_cli(["apply", "--wrangler-config", name, "--wrangler-env", "production"])
    assert code == 0, err
    assert wrangler_rows(local_database(project)) == ["0001_a.sql"]
    code, out, err = run_cli(["status", "--wrangler-config", name, "--wrangler-env", "qa"])
    assert code == 2
    assert err.strip() == f"Error: {name} has no environment qa (it has: production, staging)"
    code, out, err = run_cli(["status", "--wrangler-config", name, "--wrangler-env", "staging"])
    assert code == 2
    empty = ("[[env.staging.d1_databases]]" if name.endswith(".toml")
             else '"env": {"staging": {"d1_databases": [...]}}')
    assert err.strip() == f"Error: {name} has no D1 database ({empty} is empty)"


def test_environments_in_the_toml_subset_reader():
    parsed = apply_migrations._parse_toml_subset(ENV_TOML)
    assert parsed["env"]["production"]["d1_databases"] == [
        {"binding": "DB", "database_name": "app-prod", "database_id": DATABASE_ID,
         "migrations_dir": "db/migrations"}]


def test_wrangler_env_needs_a_config(project, run_cli):
    code, out, err = run_cli(["status", "--wrangler-env", "production"])
    assert code == 2
    assert err.strip() == ("Error: --wrangler-env production needs --wrangler-config: it"
                           " selects within the wrangler config, and no config was given.")


@pytest.fixture(scope="module")
def hyphenated_runs(wrangler_bin, tmp_path_factory) -> SimpleNamespace:
    """The same folder of hyphenated, duplicate and out-of-string-order
    numbers, with a name that has no number: applied (a) by wrangler alone,
    (b) half by wrangler then the rest by the tool, (c) half by the tool
    then the rest by wrangler."""
    files = dict(HYPHENATED)
    files["seed.sql"] = logged("seed.sql")  # no number: NaN to wrangler's sort
    # Every file may run first (the NaN one too): create the log if needed.
    files = {n: "CREATE TABLE IF NOT EXISTS log (id INTEGER PRIMARY KEY AUTOINCREMENT,"
                " name TEXT NOT NULL);\n" + (text if n != "0001_init.sql" else "")
             for n, text in files.items()}
    first_half = ["0001_init.sql", "10_d.sql", "0002_b.sql"]
    runs = SimpleNamespace()

    def log(root):
        db = local_database(root)
        return [r[0] for r in query(db, "SELECT name FROM log ORDER BY id")], wrangler_rows(db)

    alone = write_project(tmp_path_factory.mktemp("alone"), files)
    run = migrations_apply(wrangler_bin, alone)
    assert run.returncode == 0, run.describe()
    runs.wrangler_alone = log(alone)
    runs.wrangler_alone_schema = user_schema(local_database(alone))

    # (b) wrangler first, on a part of the folder; then the tool
    b = write_project(tmp_path_factory.mktemp("wrangler_first"),
                      {n: files[n] for n in first_half})
    run = migrations_apply(wrangler_bin, b)
    assert run.returncode == 0, run.describe()
    write_project(b, files)
    runs.b_status = tool(["status", "--json", "--wrangler-config", "wrangler.toml"], b)
    runs.b_apply = tool(["apply", "--json", "--wrangler-config", "wrangler.toml"], b)
    runs.b = log(b)
    runs.b_expected = (wrangler_cli.to_be_applied(run), None)

    # (c) the tool first, on a part of the folder; then wrangler
    c = write_project(tmp_path_factory.mktemp("tool_first"), {n: files[n] for n in first_half})
    runs.c_apply = tool(["apply", "--wrangler-config", "wrangler.toml"], c)
    write_project(c, files)
    runs.c_wrangler = migrations_apply(wrangler_bin, c)
    runs.c = log(c)
    runs.c_tool_status = tool(["status", "--json", "--wrangler-config", "wrangler.toml"], c)
    runs.all_files = sorted(files)
    return runs


@pytest.mark.wrangler
def test_the_tool_applies_in_wranglers_order(hyphenated_runs):
    runs = hyphenated_runs
    log, d1_rows = runs.wrangler_alone
    assert sorted(d1_rows) == runs.all_files
    # What the tool would do on the same folder from scratch: its own order.
    migrations = [apply_migrations.Migration(n[:-4], n[:-4], n, key=n) for n in runs.all_files]
    assert [m.filename for m in apply_migrations.wrangler_order(migrations)] == d1_rows


@pytest.mark.wrangler
def test_after_wrangler_the_tool_applies_the_rest_in_wranglers_order(hyphenated_runs):
    runs = hyphenated_runs
    code, out, err = runs.b_status
    assert code == 0, err
    pending = [m["name"] + ".sql" for m in json.loads(out)["migrations"]
               if m["state"] == "pending"]
    code, out, err = runs.b_apply
    assert code == 0, err
    applied = [a["name"] + ".sql" for a in json.loads(out)["applied"]]
    assert sorted(pending) == sorted(applied)
    log, d1_rows = runs.b
    # wrangler's part first (its order), then the tool's, in wrangler's order
    # of what was pending.
    tool_part = d1_rows[3:]
    assert applied == tool_part
    migrations = [apply_migrations.Migration(n[:-4], n[:-4], n, key=n) for n in tool_part]
    assert [m.filename for m in apply_migrations.wrangler_order(migrations)] == tool_part
    assert sorted(d1_rows) == runs.all_files and len(set(log)) == len(log)


@pytest.mark.wrangler
def test_after_the_tool_wrangler_applies_only_the_rest(hyphenated_runs):
    runs = hyphenated_runs
    assert runs.c_apply[0] == 0, runs.c_apply
    run = runs.c_wrangler
    assert run.returncode == 0, run.describe()
    log, d1_rows = runs.c
    applied_by_wrangler = to_be_applied(run)
    assert sorted(d1_rows[:3]) == sorted(["0001_init.sql", "0002_b.sql", "10_d.sql"])
    assert applied_by_wrangler == d1_rows[3:]
    assert sorted(d1_rows) == runs.all_files
    code, out, err = runs.c_tool_status
    assert code == 0, err
    assert {m["state"] for m in json.loads(out)["migrations"]} == {"applied"}
