"""The command line as documented: commands, --env, --db-path,
--migrations-dir, --verbose, error lines and exit codes; a subset as real
processes; Python 3.8 compatibility and standard-library-only imports."""
from __future__ import annotations

import ast
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Dict, List

import pytest

from conftest import BUNDLED_MIGRATIONS, ENV_CLEARED, TOOL_PATH
from dbhelpers import (applied_names, full_tracking_rows, query, schema,
                       tables, tracking_rows)

DB = "trading_brain.db"
TIMING = re.compile(r"\d+(?:\.\d+)? ?(?:ms|s)\b")


def status_line(out: str, name: str) -> str:
    lines = [line for line in out.splitlines() if re.search(rf"(?<![\w]){re.escape(name)}(?![\w])", line)]
    assert len(lines) == 1, f"expected one status line for {name}:\n{out}"
    return lines[0]


def error_lines(err: str) -> List[str]:
    return [line for line in err.splitlines() if line.strip()]


def listing(folder: Path) -> List[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


@pytest.fixture
def two_migrations(write_migration):
    write_migration("0001_create_users.sql", "CREATE TABLE users (id INTEGER PRIMARY KEY, email TEXT);\n")
    write_migration("0002_add_posts.sql",
                    "CREATE TABLE posts (id INTEGER PRIMARY KEY, user_id INTEGER REFERENCES users(id));\n"
                    "INSERT INTO users (email) VALUES ('a@example.com');\n")


# --------------------------------------------------------------------------
# 1. Each command as documented.


def test_init_dev_creates_database_and_tracking_table(project, run_cli):
    code, out, err = run_cli(["init", "--env", "dev"])
    assert code == 0, err
    assert err == ""
    db = project / DB
    assert db.is_file()
    assert tables(db) == ["schema_migrations"]
    assert tracking_rows(db) == []
    assert "schema_migrations" in out


def test_init_is_safe_to_rerun_and_keeps_applied_rows(project, run_cli, two_migrations):
    assert run_cli(["init", "--env", "dev"])[0] == 0
    assert run_cli(["apply", "--env", "dev"])[0] == 0
    db = project / DB
    rows_before, schema_before = full_tracking_rows(db), schema(db)
    assert len(rows_before) == 2

    code, out, err = run_cli(["init", "--env", "dev"])
    assert code == 0, err
    assert err == ""
    assert full_tracking_rows(db) == rows_before
    assert schema(db) == schema_before


def test_status_dev_lists_applied_and_pending(project, run_cli, write_migration):
    write_migration("0001_create_users.sql", "CREATE TABLE users (id INTEGER PRIMARY KEY);\n")
    assert run_cli(["apply", "--env", "dev"])[0] == 0
    write_migration("0002_add_posts.sql", "CREATE TABLE posts (id INTEGER PRIMARY KEY);\n")

    code, out, err = run_cli(["status", "--env", "dev"])
    assert code == 0, err
    assert err == ""
    applied_at = full_tracking_rows(project / DB)[0][3]
    line1 = status_line(out, "0001_create_users")
    assert "applied" in line1.lower() and applied_at in line1
    line2 = status_line(out, "0002_add_posts")
    assert "pending" in line2.lower() and "applied" not in line2.lower()
    assert "Applied: 1, Pending: 1, Modified: 0, Missing: 0" in out
    assert out.index("0001_create_users") < out.index("0002_add_posts")


def test_apply_dev_applies_all_pending_then_nothing(project, run_cli, two_migrations):
    code, out, err = run_cli(["apply", "--env", "dev"])
    assert code == 0, err
    assert err == ""
    db = project / DB
    assert applied_names(db) == ["0001_create_users", "0002_add_posts"]
    assert {"users", "posts"} <= set(tables(db))
    assert query(db, "SELECT email FROM users") == [("a@example.com",)]
    assert "0001_create_users" in out and "0002_add_posts" in out

    rows = full_tracking_rows(db)
    code, out, err = run_cli(["apply", "--env", "dev"])
    assert code == 0, err
    assert "Nothing to apply" in out
    assert full_tracking_rows(db) == rows
    assert query(db, "SELECT count(*) FROM users") == [(1,)]  # not run twice


def test_apply_verbose_logs_one_line_per_statement_with_timing(project, run_cli, write_migration):
    write_migration("0001_a.sql", "CREATE TABLE a (x);\nINSERT INTO a VALUES (1);\n\nINSERT INTO a VALUES (2);\n")
    write_migration("0002_b.sql", "-- header\nCREATE TABLE b (y);\nCREATE INDEX b_y ON b (y);\n")

    code, out, err = run_cli(["apply", "--env", "dev", "--verbose"])
    assert code == 0, err
    lines = error_lines(err)
    assert len(lines) == 5, err
    expected = [("0001_a", 1, 1), ("0001_a", 2, 2), ("0001_a", 3, 4), ("0002_b", 1, 2), ("0002_b", 2, 3)]
    for line, (name, number, lineno) in zip(lines, expected):
        assert name in line, line
        assert f"statement {number}" in line, line
        assert f"line {lineno}" in line, line
        assert TIMING.search(line), f"no timing in {line!r}"
    assert applied_names(project / DB) == ["0001_a", "0002_b"]


def test_apply_without_verbose_is_silent_on_stderr(project, run_cli, two_migrations):
    code, out, err = run_cli(["apply", "--env", "dev"])
    assert code == 0
    assert err == ""


def test_rollback_bundled_initial_schema_dev(project, run_cli):
    shutil.copy(str(BUNDLED_MIGRATIONS / "0001_initial_schema.sql"), str(project / "migrations"))
    assert run_cli(["apply", "--env", "dev"])[0] == 0
    db = project / DB
    schema_before = [row for row in schema(db)]
    assert applied_names(db) == ["0001_initial_schema"]

    code, out, err = run_cli(["rollback", "--version", "0001_initial_schema", "--env", "dev"])
    assert code == 0, err
    assert tracking_rows(db) == []
    # No down script ships for it: the rollback is computed from the schema
    # before it (none), its tables hold no rows, and stdout says so.
    assert sorted(row[1] for row in schema(db)) == [
        "schema_migrations", "sqlite_autoindex_schema_migrations_1"]
    assert len(schema_before) > 2
    assert "computed from the schema before it (it has no down script)" in out
    # It is pending again.
    code, out, _ = run_cli(["status", "--env", "dev"])
    assert "pending" in status_line(out, "0001_initial_schema").lower()


# --------------------------------------------------------------------------
# --env production and D1_DATABASE_PATH.


def test_production_reads_path_from_d1_database_path(project, tmp_path, run_cli, monkeypatch,
                                                      two_migrations):
    prod = tmp_path / "d1" / "prod.db"
    prod.parent.mkdir()
    monkeypatch.setenv("D1_DATABASE_PATH", str(prod))

    code, out, err = run_cli(["status", "--env", "production"])
    assert code == 0, err
    assert str(prod) in out and "does not exist" in out
    assert not prod.exists()

    code, out, err = run_cli(["apply", "--env", "production"])
    assert code == 0, err
    assert applied_names(prod) == ["0001_create_users", "0002_add_posts"]
    assert not (project / DB).exists()

    code, out, err = run_cli(["status", "--env", "production"])
    assert code == 0, err
    assert str(prod) in out
    assert "Applied: 2, Pending: 0" in out


@pytest.mark.parametrize("command", ["init", "status", "apply", "rollback"])
@pytest.mark.parametrize("value", [None, "", "   "], ids=["unset", "empty", "blank"])
def test_production_without_d1_database_path_is_a_usage_error(project, run_cli, monkeypatch,
                                                              two_migrations, command, value):
    if value is not None:
        monkeypatch.setenv("D1_DATABASE_PATH", value)
    before = listing(project)

    code, out, err = run_cli([command, "--env", "production"])
    assert code == 2
    lines = error_lines(err)
    assert len(lines) == 1, err
    assert lines[0].startswith("Error: ")
    assert "D1_DATABASE_PATH" in lines[0]
    assert "Traceback" not in err
    assert listing(project) == before  # no database file anywhere
    assert out == ""


def test_db_path_option(project, run_cli, two_migrations):
    code, _, err = run_cli(["apply", "--db-path", "custom.db"])
    assert code == 0, err
    assert applied_names(project / "custom.db") == ["0001_create_users", "0002_add_posts"]
    assert not (project / DB).exists()

    code, out, err = run_cli(["status", "--db-path", "custom.db"])
    assert code == 0, err
    assert "custom.db" in out
    assert "applied" in status_line(out, "0002_add_posts").lower()
    assert not (project / DB).exists()


def test_migrations_dir_option(project, run_cli, write_migration):
    write_migration("0001_in_default.sql", "CREATE TABLE in_default (x);\n")
    write_migration("0001_in_other.sql", "CREATE TABLE in_other (x);\n", folder="other")
    write_migration("0002_more_other.sql", "CREATE TABLE more_other (x);\n", folder="other")

    code, out, err = run_cli(["status", "--migrations-dir", "other/"])
    assert code == 0, err
    assert "pending" in status_line(out, "0001_in_other").lower()
    assert "pending" in status_line(out, "0002_more_other").lower()
    assert "0001_in_default" not in out

    code, out, err = run_cli(["apply", "--migrations-dir", "other/"])
    assert code == 0, err
    db = project / DB
    assert applied_names(db) == ["0001_in_other", "0002_more_other"]
    assert "in_default" not in tables(db)


def test_missing_migrations_folder_is_a_config_error(project, run_cli):
    code, out, err = run_cli(["apply", "--migrations-dir", "nowhere"])
    assert code == 2
    lines = error_lines(err)
    assert len(lines) == 1 and lines[0].startswith("Error: ") and "nowhere" in lines[0]
    assert not (project / DB).exists()


@pytest.mark.parametrize("command", ["status", "apply", "init", "rollback"])
@pytest.mark.parametrize("option", ["--database", "--persist-to"])
def test_wrangler_selectors_without_config_are_refused(project, run_cli, two_migrations,
                                                       command, option):
    # `--database app.db` reads like a file path; it must not quietly use the
    # dev database instead.
    code, out, err = run_cli([command, option, "custom.db"])
    assert code == 2
    lines = error_lines(err)
    assert len(lines) == 1 and lines[0].startswith(f"Error: {option} custom.db needs "
                                                   "--wrangler-config")
    if option == "--database":
        assert "--db-path custom.db" in lines[0]
    assert listing(project) == ["migrations", "migrations/0001_create_users.sql",
                                "migrations/0002_add_posts.sql"]


@pytest.mark.parametrize("argv", [
    [],
    ["frobnicate"],
    ["apply", "--no-such-option"],
    ["status", "--env", "staging"],
    ["apply", "--lock-timeout", "soon"],
])
def test_usage_errors_exit_2(project, run_cli, argv):
    code, out, err = run_cli(argv)
    assert code == 2
    assert "usage:" in err
    assert not (project / DB).exists()


def test_lock_timeout_gives_up_with_exit_1(project, run_cli, write_migration):
    import sqlite3
    write_migration("0001_a.sql", "CREATE TABLE a (x);\n")
    assert run_cli(["init"])[0] == 0
    holder = sqlite3.connect(str(project / DB), isolation_level=None)
    try:
        holder.execute("BEGIN IMMEDIATE")
        code, out, err = run_cli(["apply", "--lock-timeout", "0.2"])
        holder.execute("ROLLBACK")
    finally:
        holder.close()
    assert code == 1
    lines = error_lines(err)
    assert len(lines) == 1 and lines[0].startswith("Error: ") and "locked" in lines[0], err
    assert tracking_rows(project / DB) == []


# --------------------------------------------------------------------------
# 9. Cannot open the database: exit 2, one line, traceback only with --verbose.


def _bad_db(project: Path, kind: str) -> str:
    if kind == "missing folder":
        return "no_such_folder/app.db"
    if kind == "directory":
        (project / "dir.db").mkdir()
        return "dir.db"
    if kind == "not sqlite":
        (project / "notes.db").write_bytes(b"this is a text file, not a SQLite database\n" * 20)
        return "notes.db"
    raise AssertionError(kind)


BAD_DB_CASES = [
    ("init", "missing folder"), ("init", "directory"), ("init", "not sqlite"),
    ("apply", "missing folder"), ("apply", "directory"), ("apply", "not sqlite"),
    ("status", "directory"), ("status", "not sqlite"),
    ("rollback", "directory"), ("rollback", "not sqlite"),
]


@pytest.mark.parametrize("command,kind", BAD_DB_CASES)
def test_cannot_connect_is_exit_2_without_traceback(project, run_cli, write_migration, command, kind):
    write_migration("0001_a.sql", "CREATE TABLE a (x);\n")
    db_path = _bad_db(project, kind)
    before = listing(project)
    content_before = (project / db_path).read_bytes() if (project / db_path).is_file() else None

    code, out, err = run_cli([command, "--db-path", db_path])
    assert code == 2, err
    lines = error_lines(err)
    assert len(lines) == 1, err
    assert lines[0].startswith("Error: Failed to connect to database: "), lines[0]
    assert db_path.split("/")[0] in lines[0]
    assert "Traceback" not in err
    assert listing(project) == before
    if content_before is not None:
        assert (project / db_path).read_bytes() == content_before


@pytest.mark.parametrize("command,kind", [("init", "missing folder"), ("apply", "not sqlite"),
                                          ("status", "directory")])
def test_cannot_connect_verbose_shows_traceback(project, run_cli, write_migration, command, kind):
    write_migration("0001_a.sql", "CREATE TABLE a (x);\n")
    db_path = _bad_db(project, kind)
    code, out, err = run_cli([command, "--db-path", db_path, "--verbose"])
    assert code == 2
    assert "Traceback" in err
    assert error_lines(err)[-1].startswith("Error: Failed to connect to database: ")


# --------------------------------------------------------------------------
# The same through real processes: every exit code, the production variable
# error, tracebacks only with --verbose.


def test_subprocess_apply_and_status_exit_0(project, run_subprocess, two_migrations):
    code, out, err = run_subprocess(["apply", "--env", "dev"])
    assert code == 0, err
    assert applied_names(project / DB) == ["0001_create_users", "0002_add_posts"]
    code, out, err = run_subprocess(["status", "--env", "dev"])
    assert code == 0, err
    assert "Applied: 2, Pending: 0, Modified: 0, Missing: 0" in out


def test_runs_as_a_module_with_its_bytecode_cached(project, tmp_path, two_migrations):
    # `python -m apply_migrations` (README, Performance) skips the compile a
    # script pays on every run, once its bytecode is cached: it must behave
    # as the script does, and it must write that cache.
    cache = tmp_path / "pycache"
    environ = dict(os.environ)
    for name in ENV_CLEARED + ("PYTHONDONTWRITEBYTECODE",):
        environ.pop(name, None)
    environ.update(PYTHONPATH=str(TOOL_PATH.parent), PYTHONPYCACHEPREFIX=str(cache))

    def module(*argv):
        proc = subprocess.run([sys.executable, "-m", "apply_migrations"] + list(argv),
                              cwd=str(project), env=environ, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, universal_newlines=True, timeout=60)
        return proc.returncode, proc.stdout, proc.stderr

    code, out, err = module("apply")
    assert code == 0, err
    assert applied_names(project / DB) == ["0001_create_users", "0002_add_posts"]
    assert list(cache.rglob("apply_migrations.*.pyc")), "no bytecode was cached"
    code, out, err = module("status", "--exit-code")
    assert code == 0, err
    assert "Applied: 2, Pending: 0, Modified: 0, Missing: 0" in out
    code, out, err = module("apply", "--no-such-option")
    assert code == 2
    assert "apply_migrations.py: error:" in err and "Traceback" not in err


def test_subprocess_failed_migration_exit_1_traceback_only_verbose(project, run_subprocess,
                                                                    write_migration):
    write_migration("0001_ok.sql", "CREATE TABLE ok (x);\n")
    write_migration("0002_bad.sql", "CREATE TABLE half (x);\nINSERT INTO no_such_table VALUES (1);\n")

    code, out, err = run_subprocess(["apply", "--env", "dev"])
    assert code == 1
    lines = error_lines(err)
    assert len(lines) == 1, err
    assert lines[0].startswith("Error: Failed to apply migration 0002_bad: ")
    assert lines[0].endswith("(0002_bad.sql, statement 2, line 2)")
    assert "Traceback" not in err
    assert applied_names(project / DB) == ["0001_ok"]
    assert "half" not in tables(project / DB)

    code, out, err = run_subprocess(["apply", "--env", "dev", "--verbose"])
    assert code == 1
    assert "Traceback" in err
    assert error_lines(err)[-1] == lines[0]
    assert applied_names(project / DB) == ["0001_ok"]


@pytest.mark.parametrize("value", [None, ""], ids=["unset", "empty"])
def test_subprocess_production_without_variable_exit_2(project, run_subprocess, two_migrations, value):
    before = listing(project)
    code, out, err = run_subprocess(["status", "--env", "production"],
                                    env={"D1_DATABASE_PATH": value})
    assert code == 2
    lines = error_lines(err)
    assert len(lines) == 1 and lines[0].startswith("Error: ") and "D1_DATABASE_PATH" in lines[0], err
    assert "Traceback" not in err
    assert listing(project) == before


def test_subprocess_production_with_variable(project, tmp_path, run_subprocess, two_migrations):
    prod = tmp_path / "prod.db"
    env = {"D1_DATABASE_PATH": str(prod)}
    code, out, err = run_subprocess(["apply", "--env", "production"], env=env)
    assert code == 0, err
    assert applied_names(prod) == ["0001_create_users", "0002_add_posts"]
    code, out, err = run_subprocess(["status", "--env", "production"], env=env)
    assert code == 0, err
    assert str(prod) in out and "Applied: 2" in out
    assert not (project / DB).exists()


def test_subprocess_not_a_database_exit_2_traceback_only_verbose(project, run_subprocess,
                                                                  two_migrations):
    (project / DB).write_bytes(b"PK\x03\x04 definitely a zip file, not SQLite" * 30)
    code, out, err = run_subprocess(["init", "--env", "dev"])
    assert code == 2
    lines = error_lines(err)
    assert len(lines) == 1 and lines[0].startswith("Error: Failed to connect to database: "), err
    assert "Traceback" not in err

    code, out, err = run_subprocess(["init", "--env", "dev", "--verbose"])
    assert code == 2
    assert "Traceback" in err


def test_subprocess_usage_error_exit_2(project, run_subprocess):
    code, out, err = run_subprocess(["apply", "--bogus"])
    assert code == 2
    assert "usage:" in err


# --------------------------------------------------------------------------
# 14. Python 3.8 compatibility and standard library only.


def _guarded_imports(tree: ast.AST) -> Dict[str, List[int]]:
    """Modules imported inside ``try: ... except ImportError`` (or
    ModuleNotFoundError), with the lines of those imports: optional imports
    with a fallback, which run on any Python."""
    guarded: Dict[str, List[int]] = {}
    for node in ast.walk(tree):
        if not isinstance(node, ast.Try):
            continue
        caught = set()
        for handler in node.handlers:
            types = handler.type.elts if isinstance(handler.type, ast.Tuple) else [handler.type]
            caught.update(getattr(t, "id", None) for t in types)
        if not caught & {"ImportError", "ModuleNotFoundError"}:
            continue
        for stmt in node.body:
            _add_import_lines(stmt, guarded)
    return guarded


def _add_import_lines(node: ast.AST, lines: Dict[str, List[int]]) -> None:
    """If node imports, record its line under each module it names."""
    if isinstance(node, ast.Import):
        for alias in node.names:
            lines.setdefault(alias.name, []).append(node.lineno)
    elif isinstance(node, ast.ImportFrom) and node.module:
        lines.setdefault(node.module, []).append(node.lineno)


def _all_import_lines(tree: ast.AST) -> Dict[str, List[int]]:
    lines: Dict[str, List[int]] = {}
    for node in ast.walk(tree):
        _add_import_lines(node, lines)
    return lines


def test_vermin_says_python_38_compatible():
    """vermin -t=3.8- finds nothing newer than 3.8.

    The only exclusions are modules every import of which sits in a
    ``try/except ImportError`` with a fallback (e.g. tomllib, 3.11+), which
    vermin cannot see; a bare import of such a module still fails here.
    vermin's "# novm" markers are accepted only on such guarded imports.
    """
    pytest.importorskip("vermin")
    source = TOOL_PATH.read_text(encoding="utf-8")
    tree = ast.parse(source)
    guarded = _guarded_imports(tree)
    everywhere = _all_import_lines(tree)
    excluded = sorted(m for m, lines in guarded.items() if sorted(lines) == sorted(everywhere[m]))
    guarded_lines = {line for m in excluded for line in guarded[m]}
    for number, line in enumerate(source.splitlines(), 1):
        if re.search(r"#\s*(novm|novermin)\b", line):
            assert number in guarded_lines, f"line {number} hides code from vermin: {line.strip()}"

    command = [sys.executable, "-c", "import sys; from vermin import main; sys.exit(main())",
               "-t=3.8-", "--violations", "--no-tips"]
    for module in excluded:
        command += ["--exclude", module]
    proc = subprocess.run(command + [str(TOOL_PATH)],
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=120)
    output = proc.stdout.decode("utf-8", "replace")
    assert proc.returncode == 0, output
    assert "Target versions not met" not in output
    match = re.search(r"Minimum required versions: (\d+)\.(\d+)", output)
    assert match, output
    assert (int(match.group(1)), int(match.group(2))) <= (3, 8), output


_STDLIB_FALLBACK = frozenset("""
    __future__ abc argparse array ast asyncio base64 binascii bisect builtins calendar
    codecs collections contextlib copy csv dataclasses datetime decimal difflib enum
    errno fnmatch functools gc getpass glob gzip hashlib heapq hmac html http io
    itertools json locale logging math mmap multiprocessing numbers operator os
    pathlib pickle platform pprint queue random re select shlex shutil signal socket
    sqlite3 stat string struct subprocess sys tempfile textwrap threading time
    timeit tomllib traceback types typing unicodedata unittest urllib uuid warnings
    weakref zipfile zlib
""".split())  # for Pythons before 3.10; tomllib is stdlib from 3.11


def _imported_modules(path: Path) -> List[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.extend(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, "relative import in a single-file tool"
            names.append(node.module.split(".")[0])
    return sorted(set(names))


def test_imports_only_standard_library():
    modules = _imported_modules(TOOL_PATH)
    assert "sqlite3" in modules  # the parse found the imports
    stdlib = set(getattr(sys, "stdlib_module_names", ())) | _STDLIB_FALLBACK
    non_stdlib = [m for m in modules if m not in stdlib and m != "__future__"]
    assert non_stdlib == []


def test_imports_without_site_packages(tmp_path):
    # -S: no site-packages at all, so any third-party import would fail.
    proc = subprocess.run(
        [sys.executable, "-S", "-c",
         "import sys; sys.path.insert(0, sys.argv[1]); import apply_migrations;"
         " print(apply_migrations.main(['--version']))", str(TOOL_PATH.parent)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=str(tmp_path), timeout=60,
    )
    assert proc.returncode == 0, proc.stderr.decode()
    assert b"apply_migrations.py" in proc.stdout


def test_a_run_imports_only_what_it_needs(tmp_path):
    # Start-up is part of every run's cost (bench/): a local apply must not
    # import shutil and the compression modules (argparse's formatter would),
    # typing (hints are strings, for type checkers), locale (argparse's
    # gettext lookups), or what only some commands need: json (the wrangler
    # config readers), what the D1 client needs, tomllib, traceback (--verbose).
    (tmp_path / "migrations").mkdir()
    (tmp_path / "migrations" / "0001_a.sql").write_text("CREATE TABLE a (x);\n")
    proc = subprocess.run(
        [sys.executable, "-S", "-c",
         "import sys; sys.path.insert(0, sys.argv[1]); import apply_migrations;"
         " code = apply_migrations.main(['apply', '--db-path', 'x.db']);"
         " print(code, sorted(sys.modules))", str(TOOL_PATH.parent)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=str(tmp_path), timeout=60,
        universal_newlines=True,
    )
    assert proc.returncode == 0, proc.stderr
    code, _, modules = proc.stdout.strip().splitlines()[-1].partition(" ")
    assert code == "0"
    imported = set(ast.literal_eval(modules))
    unneeded = {"shutil", "bz2", "lzma", "typing", "locale", "json", "urllib.request",
                "http.client", "socket", "hmac", "tomllib", "traceback"}
    assert not imported & unneeded
