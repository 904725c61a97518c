"""Hostile inputs: values, files, databases, streams and moments chosen to
break apply_migrations.py.

Each test is one promise; every error is one line on stderr (no traceback
unless --verbose), carries the documented exit code, and leaves untouched
what the tool promises to leave untouched.

 1. Empty values are errors, never defaults.
 2. Non-finite or negative --lock-timeout is refused at once (nan never waits).
 3. Odd entries in the migrations folder (dangling link, link loop, FIFO,
    folder) block apply and status and are findings of check; a link to a
    real file is that file.
 4. A closed, full or abandoned stdout never stops a run midway.
 5. Tracking rows the tool cannot trust are refused and left byte for byte.
 6. --json stays valid JSON when stdout is not UTF-8.
 7. --dry-run on a database that does not exist exits as the real run
    would and creates nothing.
 8. The modified-file check also runs under --target.
 9. An error message is folded to one line (a file name with CR LF).
10. A leading PRAGMA foreign_keys takes effect and is restored afterwards.
11. Ctrl-C in a --single-transaction run rolls the whole run back.
12. Ctrl-C between many short statements rolls the migration back.
13. A library caller whose apply/rollback failed keeps no transaction open.
14. Out of order is re-checked when another process applied a later one.
15. Messages never say something untrue.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from contextlib import closing, contextmanager
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import pytest

from conftest import ENV_CLEARED, TOOL_PATH
from dbhelpers import expected_checksum, query, tables, tracking_rows

import apply_migrations  # the copy under test (conftest put its folder on sys.path)

DB = "trading_brain.db"
POSIX = os.name == "posix"
needs_posix = pytest.mark.skipif(not POSIX, reason="needs POSIX file types and signals")


# --------------------------------------------------------------------------
# Helpers.


def tool_cmd(argv: Sequence[object]) -> List[str]:
    return [sys.executable, str(TOOL_PATH)] + [str(a) for a in argv]


def tool_env(**changes: Optional[str]) -> Dict[str, str]:
    """os.environ without the variables conftest clears, stdout in UTF-8,
    then `changes` (None removes a variable)."""
    env = {k: v for k, v in os.environ.items() if k not in ENV_CLEARED}
    env["PYTHONIOENCODING"] = "utf-8"
    for key, value in changes.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    return env


def run_tool(argv: Sequence[object], cwd: Path, *, env: Optional[Dict[str, str]] = None,
             timeout: float = 30, stdout=subprocess.PIPE) -> Tuple[int, bytes, str]:
    """(exit code, stdout bytes, stderr text) of the tool as a real process;
    the test fails (and the process is killed) when it outlives timeout."""
    try:
        proc = subprocess.run(tool_cmd(argv), cwd=str(cwd), env=env or tool_env(),
                              stdout=stdout, stderr=subprocess.PIPE, timeout=timeout)
    except subprocess.TimeoutExpired:
        pytest.fail(f"{' '.join(map(str, argv))} did not finish within {timeout} s")
    return proc.returncode, proc.stdout or b"", proc.stderr.decode("utf-8", "replace")


def one_error(err: str) -> str:
    """stderr is exactly one line starting with `Error: `, and no traceback."""
    assert "Traceback" not in err, err
    assert err.endswith("\n") and err.count("\n") == 1 and "\r" not in err, \
        f"expected exactly one line on stderr, got {err!r}"
    assert err.startswith("Error: "), err
    return err[:-1]


def listing(folder: Path) -> Dict[str, bytes]:
    """Every file (and link, FIFO, folder) below folder, with the bytes of the
    regular files: what 'nothing was created or changed' compares."""
    result: Dict[str, bytes] = {}
    for path in sorted(folder.rglob("*")):
        key = str(path.relative_to(folder))
        if path.is_symlink() or not path.exists():
            result[key] = b"<link>"
        elif path.is_dir():
            result[key] = b"<dir>"
        elif path.is_file():
            result[key] = path.read_bytes()
        else:
            result[key] = b"<special>"
    return result


def write(folder: Path, name: str, text: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_bytes(text.encode("utf-8"))
    return path


def versions(db: Path) -> List[str]:
    return [row[0] for row in tracking_rows(db)] if db.exists() else []


def assert_nothing_applied(db: Path) -> None:
    assert not db.exists() or (tracking_rows(db) == [] and tables(db) in ([], [
        "schema_migrations"])), (tables(db), tracking_rows(db))


def lock_is_free(db: Path) -> None:
    """Another connection takes the write lock at once (no waiting)."""
    other = sqlite3.connect(str(db), timeout=0, isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")
        other.execute("ROLLBACK")
    finally:
        other.close()


def wait_for_file(path: Path, proc: subprocess.Popen, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not os.path.exists(str(path)):
        if proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(f"the tool ended (exit {proc.returncode}) before {path.name} appeared:"
                        f" {out!r} {err!r}")
        if time.monotonic() > deadline:
            proc.kill()
            proc.wait()
            pytest.fail(f"{path.name} did not appear within {timeout} s")
        time.sleep(0.0005)


# --------------------------------------------------------------------------
# 1. Empty values are errors, never defaults.

EMPTY_OPTIONS = [
    (["apply"], "--db-path"), (["status"], "--db-path"), (["init"], "--db-path"),
    (["rollback"], "--db-path"), (["check"], "--db-path"),
    (["apply"], "--migrations-dir"), (["status"], "--migrations-dir"),
    (["init"], "--migrations-dir"), (["rollback"], "--migrations-dir"),
    (["check"], "--migrations-dir"), (["new", "add things"], "--migrations-dir"),
    (["apply"], "--target"),
    (["rollback"], "--version"),
    (["apply"], "--wrangler-table"), (["status"], "--wrangler-table"),
    (["init"], "--wrangler-table"), (["rollback"], "--wrangler-table"),
    (["apply"], "--backup"),
    (["apply"], "--wrangler-config"), (["status"], "--wrangler-config"),
    (["init"], "--wrangler-config"), (["rollback"], "--wrangler-config"),
    (["check"], "--wrangler-config"),
    (["apply"], "--database"), (["apply"], "--persist-to"),
]


@pytest.mark.parametrize("blank", ["", "   "], ids=["empty", "blank"])
@pytest.mark.parametrize("command,option", EMPTY_OPTIONS,
                         ids=[f"{c[0]}{o}" for c, o in EMPTY_OPTIONS])
def test_empty_value_is_an_error_naming_the_option(project, run_cli, write_migration, command,
                                                   option, blank):
    write_migration("0001_a.sql", "CREATE TABLE a (x);\n")
    write_migration("0001_a.sql", "DROP TABLE a;\n", folder="migrations/down")
    before = listing(project)
    code, out, err = run_cli(command[:1] + [option, blank] + command[1:])
    assert code == 2, (out, err)
    line = one_error(err)
    assert f"{option} is empty" in line, line
    assert listing(project) == before  # no trading_brain.db, no migration file, nothing


@pytest.mark.parametrize("value", ["", "   "], ids=["empty", "blank"])
@pytest.mark.parametrize("command", ["apply", "status", "init", "rollback"])
def test_production_with_empty_database_variable_is_an_error(project, run_cli, write_migration,
                                                             monkeypatch, command, value):
    write_migration("0001_a.sql", "CREATE TABLE a (x);\n")
    before = listing(project)
    monkeypatch.setenv("D1_DATABASE_PATH", value)
    code, out, err = run_cli([command, "--env", "production"])
    assert code == 2, (out, err)
    assert "D1_DATABASE_PATH" in one_error(err)
    assert listing(project) == before


# --------------------------------------------------------------------------
# 2. Non-finite or negative --lock-timeout.

BAD_SECONDS = [["--lock-timeout", "nan"], ["--lock-timeout", "inf"], ["--lock-timeout", "-1"],
               ["--lock-timeout=-inf"], ["--lock-timeout", "NaN"]]


@pytest.mark.parametrize("command", ["apply", "status", "init", "rollback", "check"])
@pytest.mark.parametrize("option", BAD_SECONDS, ids=lambda o: "".join(o))
def test_unusable_lock_timeout_is_exit_2(project, run_cli, write_migration, command, option):
    write_migration("0001_a.sql", "CREATE TABLE a (x);\n")
    before = listing(project)
    code, out, err = run_cli([command] + option)
    assert code == 2, (out, err)
    assert "--lock-timeout" in one_error(err)
    assert listing(project) == before


@needs_posix
@pytest.mark.parametrize("value", ["nan", "inf", "-1"])
def test_unusable_lock_timeout_does_not_wait_for_a_held_lock(project, run_subprocess,
                                                             write_migration, value):
    """The lock is held (BEGIN IMMEDIATE) for the whole run: a nan deadline
    would never pass, an infinite one never end, a negative one would say
    'locked' (exit 1) instead of refusing the value."""
    write_migration("0001_a.sql", "CREATE TABLE a (x);\n")
    db = project / DB
    assert run_subprocess(["init", "-q"])[0] == 0
    holder = sqlite3.connect(str(db), isolation_level=None, timeout=0)
    holder.execute("BEGIN IMMEDIATE")
    try:
        started = time.monotonic()
        code, out, err = run_tool(["apply", "--lock-timeout", value], project, timeout=10)
        took = time.monotonic() - started
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert code == 2, (out, err)
    line = one_error(err)
    assert "--lock-timeout" in line and "locked" not in line, line
    assert took < 5, took
    assert tracking_rows(db) == []


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -1.0])
def test_library_refuses_unusable_lock_timeout(project, value):
    with pytest.raises(apply_migrations.ConfigurationError, match="lock_timeout"):
        apply_migrations.Migrator(str(project / DB), str(project / "migrations"),
                                  lock_timeout=value)
    assert not (project / DB).exists()


# --------------------------------------------------------------------------
# 3. Odd entries in the migrations folder.

ODD_ENTRIES = {
    # kind: (finding code, words the message uses)
    "dangling symlink": ("broken-link", "does not exist"),
    "symlink loop": ("broken-link", "loops"),
    "fifo": ("not-a-file", "not a regular file"),
    "folder": ("not-a-file", "folder"),
}


def make_odd_entry(folder: Path, kind: str) -> Path:
    path = folder / "0002_x.sql"
    if kind == "dangling symlink":
        os.symlink("nowhere.sql", str(path))
    elif kind == "symlink loop":
        os.symlink("0002_x.sql", str(path))  # points at itself
    elif kind == "fifo":
        os.mkfifo(str(path))
    elif kind == "folder":
        path.mkdir()
        (path / "inside.sql").write_text("CREATE TABLE inside (x);\n")
    else:
        raise AssertionError(kind)
    return path


@needs_posix
@pytest.mark.parametrize("command", ["apply", "status"])
@pytest.mark.parametrize("kind", sorted(ODD_ENTRIES))
def test_odd_entry_blocks_apply_and_status(project, write_migration, kind, command):
    write_migration("0001_a.sql", "CREATE TABLE a (x);\n")
    write_migration("0003_c.sql", "CREATE TABLE c (x);\n")
    make_odd_entry(project / "migrations", kind)
    before = listing(project)
    code, out, err = run_tool([command], project, timeout=15)  # a FIFO must not hang
    assert code == 1, (out, err)
    line = one_error(err)
    assert "0002_x.sql" in line and ODD_ENTRIES[kind][1] in line, line
    assert_nothing_applied(project / DB)  # not even 0001
    assert listing(project) == before


@needs_posix
@pytest.mark.parametrize("kind", sorted(ODD_ENTRIES))
def test_odd_entry_is_a_check_finding(project, write_migration, kind):
    write_migration("0001_a.sql", "CREATE TABLE a (x);\n")
    make_odd_entry(project / "migrations", kind)
    code, out, err = run_tool(["check", "--json"], project, timeout=15)
    assert code == 1, (out, err)
    assert "Traceback" not in err
    report = json.loads(out)
    assert [(Path(f["path"]).name, f["code"], f["severity"]) for f in report["findings"]] == [
        ("0002_x.sql", ODD_ENTRIES[kind][0], "error")]
    assert report["summary"]["files"] == 1  # 0001 was still checked


@needs_posix
def test_symlink_to_a_real_file_is_that_file(project, write_migration, tmp_path):
    write_migration("0001_a.sql", "CREATE TABLE a (x);\n")
    real = write(tmp_path / "elsewhere", "real.sql",
                 "CREATE TABLE b (x);\nINSERT INTO b VALUES (1);\n")
    os.symlink(str(real), str(project / "migrations" / "0002_b.sql"))
    code, out, err = run_tool(["check", "--json"], project)
    assert (code, err, json.loads(out)["findings"]) == (0, "", [])
    code, out, err = run_tool(["apply"], project)
    assert (code, err) == (0, ""), err
    db = project / DB
    assert tracking_rows(db) == [
        ("0001", "0001_a", expected_checksum(b"CREATE TABLE a (x);\n")),
        ("0002", "0002_b", expected_checksum(real.read_bytes()))]
    assert query(db, "SELECT x FROM b") == [(1,)]
    code, out, err = run_tool(["status", "--exit-code"], project)
    assert (code, err) == (0, "")
    assert b"[X] 0002_b" in out


# --------------------------------------------------------------------------
# 4. A closed, full or abandoned stdout never stops a run midway.

N_OUTPUT = 50


@pytest.fixture
def fifty(project: Path) -> Path:
    folder = project / "migrations"
    for i in range(1, N_OUTPUT + 1):
        write(folder, f"{i:04d}_t{i:04d}.sql", f"CREATE TABLE t{i:04d} (x);\n")
    return project


def run_with_broken_stdout(how: str, argv: Sequence[object], cwd: Path,
                           env: Dict[str, str]) -> Tuple[int, str, bytes]:
    """(exit code, stderr, what stdout's reader got)."""
    cmd = tool_cmd(argv)
    if how == "closed":
        proc = subprocess.run(["sh", "-c", 'exec "$@" >&-', "sh"] + cmd, cwd=str(cwd), env=env,
                              stderr=subprocess.PIPE, timeout=60)
        return proc.returncode, proc.stderr.decode("utf-8", "replace"), b""
    if how == "/dev/full":
        if not os.path.exists("/dev/full"):
            pytest.skip("no /dev/full here")
        with open("/dev/full", "wb") as full:
            proc = subprocess.run(cmd, cwd=str(cwd), env=env, stdout=full,
                                  stderr=subprocess.PIPE, timeout=60)
        return proc.returncode, proc.stderr.decode("utf-8", "replace"), b""
    if how == "head -1":
        bash = shutil.which("bash")
        if bash is None:
            pytest.skip("needs bash for PIPESTATUS")
        proc = subprocess.run([bash, "-c", '"$@" | head -1; exit "${PIPESTATUS[0]}"', "bash"]
                              + cmd, cwd=str(cwd), env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, timeout=60)
        return proc.returncode, proc.stderr.decode("utf-8", "replace"), proc.stdout
    if how == "reader leaves after one line":
        popen = subprocess.Popen(cmd, cwd=str(cwd), env=env, stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE)
        try:
            first = popen.stdout.readline()  # type: ignore[union-attr]
            popen.stdout.close()  # type: ignore[union-attr]
            err = popen.stderr.read()  # type: ignore[union-attr]
            code = popen.wait(timeout=60)
        finally:
            if popen.poll() is None:
                popen.kill()
                popen.wait()
        return code, err.decode("utf-8", "replace"), first
    raise AssertionError(how)


BROKEN_STDOUTS = ["closed", "/dev/full", "head -1", "reader leaves after one line"]
# Python's own buffering (the default) and PYTHONUNBUFFERED=1 (this test
# machine's environment sets it) write at different moments.
BUFFERING = {"buffered": None, "unbuffered": "1"}


@needs_posix
@pytest.mark.parametrize("buffering", sorted(BUFFERING))
@pytest.mark.parametrize("how", BROKEN_STDOUTS)
def test_lost_stdout_never_stops_the_run(fifty, how, buffering):
    env = tool_env(PYTHONUNBUFFERED=BUFFERING[buffering])
    code, err, got = run_with_broken_stdout(how, ["apply"], fifty, env)
    db = fifty / DB
    assert versions(db) == [f"{i:04d}" for i in range(1, N_OUTPUT + 1)], err  # all 50 applied
    assert "Traceback" not in err and "Exception ignored" not in err, f"stderr:\n{err}"
    if how in ("head -1", "reader leaves after one line") and (code, err) == (0, ""):
        # Group commit writes the 50 lines at once, after one commit: the pipe
        # can take them all before the reader leaves, and then no write
        # failed (nothing to report).  Otherwise the one line below.
        assert got.startswith(b"[1/50] 0001_t0001 "), got
        return
    line = one_error(err)
    assert line.startswith("Error: Cannot write to standard output ("), line
    assert code == 1, (code, err)
    if how in ("head -1", "reader leaves after one line"):
        assert got.startswith(b"[1/50] 0001_t0001 "), got


@needs_posix
@pytest.mark.parametrize("buffering", sorted(BUFFERING))
def test_quiet_run_with_closed_stdout_succeeds(fifty, buffering):
    env = tool_env(PYTHONUNBUFFERED=BUFFERING[buffering])
    code, err, _ = run_with_broken_stdout("closed", ["apply", "--quiet"], fifty, env)
    assert (code, err) == (0, "")
    assert len(versions(fifty / DB)) == N_OUTPUT


# --------------------------------------------------------------------------
# 5. Tracking rows the tool cannot trust.

UNTRUSTED_ROWS = {
    "empty version": "version = ''",
    "empty name": "name = ''",
    "blank name": "name = '   '",
    "empty checksum": "checksum = ''",
    "empty applied_at": "applied_at = ''",
    "checksum in capitals": "checksum = upper(checksum)",
    "checksum of 63 characters": "checksum = substr(checksum, 2)",
    "checksum of 65 characters": "checksum = checksum || 'a'",
    "checksum not hex": "checksum = 'g' || substr(checksum, 2)",
    "checksum with a space": "checksum = substr(checksum, 2) || ' '",
    "negative duration": "duration_ms = -1",
    "text duration": "duration_ms = 'fast'",
    "empty duration": "duration_ms = ''",
}


@pytest.mark.parametrize("command", [["status"], ["apply"], ["rollback"]], ids=lambda c: c[0])
@pytest.mark.parametrize("kind", sorted(UNTRUSTED_ROWS))
def test_untrusted_tracking_row_is_refused_and_left_alone(project, run_cli, write_migration,
                                                          kind, command):
    write_migration("0001_a.sql", "CREATE TABLE a (x);\n")
    write_migration("0001_a.sql", "DROP TABLE a;\n", folder="migrations/down")
    assert run_cli(["apply", "-q"])[0] == 0
    write_migration("0002_b.sql", "CREATE TABLE b (x);\n")
    db = project / DB
    with closing(sqlite3.connect(str(db))) as conn:
        conn.execute(f"UPDATE schema_migrations SET {UNTRUSTED_ROWS[kind]}")
        conn.commit()
    before = listing(project)
    code, out, err = run_cli(command)
    assert code == 1, (out, err)
    line = one_error(err)
    assert "schema_migrations" in line and "invalid row" in line, line
    assert listing(project) == before  # byte for byte


# --------------------------------------------------------------------------
# 6. --json stays valid JSON when stdout is not UTF-8.

CAFE = "0001_café_ünïcode"
BAD = "0002_bäd_ñame"
# In the error messages: letters of latin-1, one beyond it, one beyond the
# Basic Multilingual Plane (a \U0001d4b3 escape is not JSON, a \u0151 one is).
MISSING_TABLE = "nëxistent_tàble_ő_\U0001d4b3"


@pytest.mark.parametrize("encoding", ["ascii", "latin-1"])
def test_json_is_valid_whatever_the_stdout_encoding(project, write_migration, encoding):
    write_migration(CAFE + ".sql", "CREATE TABLE café (x);\n")
    write_migration(BAD + ".sql", f"SELECT * FROM {MISSING_TABLE};\n")
    write_migration("nötes_ünïcode.sql", "-- not a migration\n")
    down = write_migration(CAFE + ".sql", f"DROP TABLE {MISSING_TABLE};\n",
                           folder="migrations/down")
    env = tool_env(PYTHONIOENCODING=encoding)

    def run(argv: List[str]) -> Tuple[int, dict]:
        code, out, err = run_tool(argv + ["--json"], project, env=env)
        assert "Traceback" not in err, err
        try:
            return code, json.loads(out.decode(encoding))
        except ValueError as exc:
            pytest.fail(f"{argv}: stdout is not JSON ({exc}): {out!r}")

    code, data = run(["apply"])
    assert code == 1
    assert [o["name"] for o in data["applied"]] == [CAFE]
    assert [(o["name"], o["result"]) for o in data["outcomes"]] == [(CAFE, "applied"),
                                                                   (BAD, "failed")]
    assert data["error"]["migration"] == BAD
    assert MISSING_TABLE in data["error"]["message"] and BAD in data["error"]["message"]
    assert data["error"]["sql"] == f"SELECT * FROM {MISSING_TABLE};"

    code, data = run(["status"])
    assert code == 0
    assert [(m["name"], m["state"]) for m in data["migrations"]] == [(CAFE, "applied"),
                                                                    (BAD, "pending")]
    assert Path(data["migrations"][0]["file"]).name == CAFE + ".sql"

    code, data = run(["check"])
    assert code == 1  # the down script that fails, the misnamed file
    assert [(Path(f["path"]).name, f["code"]) for f in data["findings"]] == [
        (CAFE + ".sql", "down-script-fails"), ("nötes_ünïcode.sql", "bad-name")]
    assert MISSING_TABLE in data["findings"][0]["message"]

    code, data = run(["rollback"])
    assert code == 1
    assert data["error"]["migration"] == CAFE and MISSING_TABLE in data["error"]["message"]
    down.write_text("DROP TABLE café;\n", encoding="utf-8")
    code, data = run(["rollback"])
    assert code == 0
    assert data["rolled_back"] == {"version": "0001", "name": CAFE}
    assert Path(data["down_script"]).name == CAFE + ".sql"


# --------------------------------------------------------------------------
# 7. --dry-run on a database that does not exist yet.


@contextmanager
def read_only_folder(path: Path) -> Iterator[Path]:
    """An empty folder this process cannot create files in: chmod 0o555, or
    (as root, whom chmod does not stop) a read-only bind mount of it."""
    path.mkdir()
    mounted = False
    if os.geteuid() == 0:
        if shutil.which("mount") is None:
            pytest.skip("running as root, and no mount command for a read-only bind")
        done = subprocess.run(["mount", "--bind", "-o", "ro", str(path), str(path)],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        if done.returncode != 0:
            pytest.skip(f"running as root, and a read-only bind mount failed:"
                        f" {done.stdout.decode(errors='replace').strip()}")
        mounted = True
    else:
        path.chmod(0o555)
    try:
        if os.access(str(path), os.W_OK):
            pytest.skip(f"{path} is writable whatever its mode (root without a read-only mount)")
        yield path
    finally:
        if mounted:
            subprocess.run(["umount", str(path)], check=True)
        else:
            path.chmod(0o755)


@needs_posix
@pytest.mark.parametrize("where", ["read-only folder", "missing folder"])
def test_dry_run_where_the_database_cannot_be_created(project, write_migration, tmp_path, where):
    write_migration("0001_a.sql", "CREATE TABLE a (x);\n")
    if where == "missing folder":
        folder = tmp_path / "missing"
        db = folder / "new.db"
        code_dry, _, err_dry = run_tool(["apply", "--dry-run", "--db-path", db], project)
        code_real, _, err_real = run_tool(["apply", "--db-path", db], project)
        assert not folder.exists()
    else:
        with read_only_folder(tmp_path / "ro") as folder:
            db = folder / "new.db"
            code_dry, _, err_dry = run_tool(["apply", "--dry-run", "--db-path", db], project)
            code_real, _, err_real = run_tool(["apply", "--db-path", db], project)
            assert list(folder.iterdir()) == []
    assert code_real == 2, err_real
    assert code_dry == code_real, (err_dry, err_real)
    assert str(db) in one_error(err_dry) and str(db) in one_error(err_real)


@pytest.mark.parametrize("kind,expected", [("clean", 0), ("failing", 1)])
def test_dry_run_on_missing_database_exits_as_the_real_run(project, run_cli, write_migration,
                                                           tmp_path, kind, expected):
    write_migration("0001_a.sql", "CREATE TABLE a (x);\nINSERT INTO a VALUES (1);\n")
    write_migration("0002_b.sql", "INSERT INTO a SELECT x + 1 FROM a;\n" if kind == "clean"
                    else "INSERT INTO nope VALUES (1);\n")
    write_migration("0003_c.sql", "CREATE TABLE c (x);\n")
    twin = tmp_path / "twin"
    shutil.copytree(str(project), str(twin))
    before = listing(project)

    code_dry, out_dry, err_dry = run_cli(["apply", "--dry-run"])
    code_real, out_real, err_real = run_cli(["apply"], cwd=twin)

    assert code_real == expected, err_real
    assert code_dry == code_real, (out_dry, err_dry)
    assert listing(project) == before  # no database, no journal, nothing
    if kind == "failing":
        assert "0002_b" in one_error(err_dry) and "0002_b" in one_error(err_real)
        assert versions(twin / DB) == ["0001"]
    else:
        assert err_dry == "" and "would apply cleanly" in out_dry
        assert versions(twin / DB) == ["0001", "0002", "0003"]


# --------------------------------------------------------------------------
# 8. The modified-file check also runs under --target.


@pytest.mark.parametrize("extra", [[], ["--dry-run"], ["--single-transaction"]],
                         ids=["plain", "dry-run", "single-transaction"])
@pytest.mark.parametrize("target", ["0003", "0002", "3"])
def test_modified_file_blocks_apply_with_a_target(project, run_cli, write_migration, target,
                                                   extra):
    first = write_migration("0001_first.sql", "CREATE TABLE a (x);\n")
    write_migration("0002_second.sql", "CREATE TABLE b (x);\n")
    assert run_cli(["apply", "-q"])[0] == 0
    first.write_text("CREATE TABLE a (x, y);\n")  # edited after it was applied
    write_migration("0003_third.sql", "CREATE TABLE c (x);\n")
    before = listing(project)
    code, out, err = run_cli(["apply", "--target", target] + extra)
    assert code == 1, (out, err)
    line = one_error(err)
    assert "0001_first" in line and "modified" in line, line
    assert listing(project) == before
    assert versions(project / DB) == ["0001", "0002"]


# --------------------------------------------------------------------------
# 9. An error message is folded to one line.

CRLF_CASES = {
    # the failing migration's file name, its SQL, and what the message holds
    "file name": ("0001_a\r\nb.sql", "SELECT * FROM nope;\n", "0001_a\\r\\nb"),
    "sqlite message": ("0001_check.sql",
                       "CREATE TABLE t (x CHECK (x\r\n> 0));\nINSERT INTO t VALUES (-1);\n",
                       "x\\r\\n> 0"),
}


@needs_posix
@pytest.mark.parametrize("case", sorted(CRLF_CASES))
def test_error_with_cr_lf_is_one_line(project, write_migration, case):
    filename, sql, folded = CRLF_CASES[case]
    write_migration(filename, sql)

    code, out, err = run_tool(["apply"], project)
    assert code == 1
    assert folded in one_error(err)

    code, out, err = run_tool(["apply"], project, env=tool_env(GITHUB_ACTIONS="true"))
    assert code == 1
    assert folded in one_error(err)
    text = out.decode("utf-8")
    at = text.index("::error ")
    annotation = text[at:text.index("\n", at)]
    assert "\r" not in annotation, annotation
    assert annotation.startswith("::error file=migrations/") and "%0D%0A" in annotation, annotation
    assert text[:at].endswith("\n") or at == 0, text  # a line of its own

    code, out, err = run_tool(["apply", "--json"], project)
    assert code == 1
    message = json.loads(out)["error"]["message"]
    assert "\n" not in message and "\r" not in message and folded in message, message
    assert folded in one_error(err)


# --------------------------------------------------------------------------
# 10. A leading PRAGMA foreign_keys takes effect, and is restored after.

FK_SCHEMA = """\
CREATE TABLE parent (id INTEGER PRIMARY KEY);
CREATE TABLE child (id INTEGER PRIMARY KEY,
                    parent_id INTEGER REFERENCES parent (id) ON DELETE CASCADE);
INSERT INTO parent VALUES (1), (2), (3);
INSERT INTO child VALUES (10, 1), (20, 2), (30, 3);
"""
LEADING_PRAGMAS = [
    "PRAGMA main.foreign_keys = ON;",
    'PRAGMA "main".foreign_keys=1;',
    "-- cascades need this\nPRAGMA main.foreign_keys = ON;",
    "/* rebuild recipe */ PRAGMA [main] . foreign_keys = true;",
]


@pytest.mark.parametrize("pragma", LEADING_PRAGMAS, ids=range(len(LEADING_PRAGMAS)))
def test_leading_foreign_keys_pragma_takes_effect_and_is_restored(project, run_cli,
                                                                  write_migration, pragma):
    write_migration("0001_schema.sql", FK_SCHEMA)
    write_migration("0002_cascade.sql", pragma + "\nDELETE FROM parent WHERE id = 1;\n")
    write_migration("0003_plain.sql", "DELETE FROM parent WHERE id = 2;\n")
    code, out, err = run_cli(["apply", "--allow-row-loss"])  # 0002's cascade is meant
    assert (code, err) == (0, "")
    db = project / DB
    assert versions(db) == ["0001", "0002", "0003"]
    assert query(db, "SELECT id FROM parent ORDER BY id") == [(3,)]
    # 10 went with its parent (the pragma ran before the transaction);
    # 20 stayed (the setting was back to off for 0003).
    assert query(db, "SELECT id FROM child ORDER BY id") == [(20,), (30,)]


# --------------------------------------------------------------------------
# 11. Ctrl-C in a --single-transaction run.

LONG_STATEMENT = (
    "SELECT count(*) FROM (WITH RECURSIVE c(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM c"
    " LIMIT 1000000000) SELECT n FROM c);\n")


def interrupt_once_writing(project: Path, argv: List[str], db: Path,
                           delay: float = 0.0) -> "tuple[int, str]":
    """Run the tool; send SIGINT `delay` s after its first write to db (the
    journal appears); its exit code and stderr."""
    proc = subprocess.Popen(tool_cmd(argv), cwd=str(project), env=tool_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        wait_for_file(Path(str(db) + "-journal"), proc)
        time.sleep(delay)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return proc.returncode, err.decode("utf-8", "replace")


@needs_posix
def test_ctrl_c_in_single_transaction_rolls_back_the_whole_run(project, write_migration):
    write_migration("0001_a.sql", "CREATE TABLE a (x);\nINSERT INTO a VALUES (1);\n")
    write_migration("0002_long.sql",
                    "CREATE TABLE big (n);\nINSERT INTO big WITH RECURSIVE c(n) AS (SELECT 1"
                    " UNION ALL SELECT n + 1 FROM c LIMIT 100000) SELECT n FROM c;\n"
                    + LONG_STATEMENT)
    write_migration("0003_c.sql", "CREATE TABLE c (x);\n")
    db = project / DB
    # 0.3 s after the journal appears: well into 0002's long statement.
    code, err = interrupt_once_writing(project, ["apply", "--single-transaction"], db, 0.3)
    assert code == 130, err
    assert "Traceback" not in err, err
    assert err.splitlines()[-1] == (
        "Interrupted: the whole run was rolled back; 0 migrations applied in this run"), err
    assert tracking_rows(db) == []
    assert [t for t in tables(db) if t in ("a", "big", "c")] == []


# --------------------------------------------------------------------------
# 12. Ctrl-C between many short statements.


@needs_posix
@pytest.mark.parametrize("rows", [60_000, 300_000])
def test_ctrl_c_between_many_short_statements_rolls_back(project, run_subprocess, rows):
    folder = project / "migrations"
    with open(str(folder / "0001_rows.sql"), "w", encoding="utf-8") as handle:
        handle.write("CREATE TABLE many (n INTEGER);\n")
        handle.writelines(f"INSERT INTO many VALUES ({i});\n" for i in range(rows))
    write(folder, "0002_after.sql", "CREATE TABLE after (x);\n")
    db = project / DB
    assert run_subprocess(["init", "-q"])[0] == 0  # the journal is then the migration's own
    code, err = interrupt_once_writing(project, ["apply"], db)
    assert code == 130, err
    assert "Traceback" not in err, err
    last = err.splitlines()[-1]
    assert last.startswith("Interrupted:") and "rolled back" in last and "0001_rows" in last, err
    assert tracking_rows(db) == []
    assert "many" not in tables(db) and "after" not in tables(db)


# --------------------------------------------------------------------------
# 13. A library caller keeps no transaction open after a failure.

FAILURES = ["apply", "apply single_transaction", "apply dry_run", "apply after leading pragma",
            "rollback"]


@pytest.mark.parametrize("how", FAILURES)
def test_failed_library_call_keeps_no_transaction_open(project, write_migration, how):
    folder = project / "migrations"
    db = project / DB
    write_migration("0001_a.sql", "CREATE TABLE a (x);\n")
    failing = "INSERT INTO a VALUES (1);\nINSERT INTO nope VALUES (1);\n"
    if how == "rollback":
        with apply_migrations.Migrator(str(db), str(folder)) as migrator:
            migrator.apply()
        write_migration("0001_a.sql", "DELETE FROM a;\nDROP TABLE nope;\n",
                        folder="migrations/down")
    elif how == "apply after leading pragma":
        write_migration("0002_b.sql", "PRAGMA foreign_keys = ON;\n" + failing)
    else:
        write_migration("0002_b.sql", failing)
    migrator = apply_migrations.Migrator(str(db), str(folder), lock_timeout=0)
    try:
        with pytest.raises(apply_migrations.MigrationFailed):
            if how == "rollback":
                migrator.rollback()
            else:
                migrator.apply(single_transaction=how.endswith("single_transaction"),
                               dry_run=how.endswith("dry_run"))
        lock_is_free(db)  # the migrator is still open
        # And the migrator itself goes on working on the same connection.
        assert [s.state for s in migrator.status()][:1] == [
            "pending" if how in ("apply single_transaction", "apply dry_run") else "applied"]
    finally:
        migrator.close()


# --------------------------------------------------------------------------
# 14. Out of order is re-checked when another process applied a later one.


def test_out_of_order_rechecked_after_another_process_applied_a_later_one(
        project, write_migration, run_subprocess, tmp_path):
    folder = project / "migrations"
    db = project / DB
    write_migration("0001_a.sql", "CREATE TABLE a (x);\n")
    write_migration("0002_b.sql", "CREATE TABLE b (x);\n")
    third = write_migration("0003_c.sql", "CREATE TABLE c (x);\n")
    only_third = tmp_path / "only_third"
    only_third.mkdir()
    shutil.copyfile(str(third), str(only_third / third.name))
    other: List[Tuple[int, str, str]] = []

    def on_outcome(outcome) -> None:
        if outcome.name == "0001_a" and not other:
            other.append(run_subprocess(["apply", "-q", "--migrations-dir", only_third,
                                         "--db-path", db]))

    migrator = apply_migrations.Migrator(str(db), str(folder), on_outcome=on_outcome)
    try:
        with pytest.raises(apply_migrations.MigrationFileError) as raised:
            migrator.apply(commit_each=True)  # the other process runs between two commits
        lock_is_free(db)
    finally:
        migrator.close()
    assert other and other[0][0] == 0, other
    message = str(raised.value)
    assert "0002_b is pending" in message and "0003_c" in message, message
    assert "1 migration applied in this run before it" in message, message
    assert "nothing was applied" not in message.lower(), message
    assert versions(db) == ["0001", "0003"]
    assert "b" not in tables(db)
    report = raised.value.report
    assert [(o.name, o.result) for o in report.outcomes] == [("0001_a", "applied"),
                                                            ("0002_b", "failed")]


# --------------------------------------------------------------------------
# 15. Messages never say something untrue.


def test_target_behind_pending_migrations_is_not_up_to_date(project, run_cli, write_migration):
    for n in (1, 2, 3):
        write_migration(f"000{n}_t{n}.sql", f"CREATE TABLE t{n} (x);\n")
    assert run_cli(["apply", "-q", "--target", "0001"])[0] == 0
    code, out, err = run_cli(["apply", "--target", "0001"])
    assert (code, err) == (0, "")
    assert "up to date" not in out, out
    assert "--target 0001" in out and "2 migrations" in out and "pending" in out, out
    assert versions(project / DB) == ["0001"]


def test_nothing_to_apply_mentions_the_ignored_file(project, run_cli, write_migration):
    write_migration("0001_a.sql", "CREATE TABLE a (x);\n")
    assert run_cli(["apply", "-q"])[0] == 0
    write_migration("notes.sql", "CREATE TABLE notes (x);\n")
    code, out, err = run_cli(["apply"])
    assert code == 0, err
    assert "notes.sql" in err and "Warning" in err, err
    nothing = [line for line in out.splitlines() if line.startswith("Nothing to apply")]
    assert len(nothing) == 1 and "ignored" in nothing[0], out


@pytest.mark.parametrize("json_output", [False, True], ids=["text", "json"])
def test_blocked_status_does_not_say_nothing_was_applied(project, run_cli, write_migration,
                                                         json_output):
    write_migration("0001_a.sql", "CREATE TABLE a (x);\n")
    write_migration("0002_b.sql", "CREATE TABLE b (x);\n")
    write_migration("0002_c.sql", "CREATE TABLE c (x);\n")
    code, out, err = run_cli(["status"] + (["--json"] if json_output else []))
    assert code == 1, (out, err)
    line = one_error(err)
    assert "0002_" in line and "number 2" in line, line
    assert "nothing was applied" not in line.lower(), line  # status never applies anything
    if json_output:
        assert "nothing was applied" not in json.loads(out)["error"]["message"].lower(), out


# --------------------------------------------------------------------------
# 16. (Beyond the list above.) A database path that is a FIFO never hangs.


@needs_posix
@pytest.mark.parametrize("command", ["status", "check", "apply", "init", "rollback"])
def test_fifo_as_database_path_is_an_error_not_a_hang(project, write_migration, command):
    write_migration("0001_a.sql", "CREATE TABLE a (x);\n")
    os.mkfifo(str(project / "db.fifo"))
    before = listing(project)
    code, out, err = run_tool([command, "--db-path", "db.fifo"], project, timeout=5)
    assert code == 2, (out, err)
    assert "db.fifo" in one_error(err)
    assert listing(project) == before


@pytest.mark.parametrize("pragma", ["PRAGMA query_only = ON;", "PRAGMA locking_mode=EXCLUSIVE;",
                                    "PRAGMA main.journal_mode = OFF;"])
def test_a_pragma_that_would_last_for_the_run_is_refused(project, run_cli, write_migration,
                                                          pragma):
    write_migration("0001_a.sql", "CREATE TABLE a (x);\n")
    write_migration("0002_setting.sql", f"-- a setting\n{pragma}\n")
    code, out, err = run_cli(["apply", "--db-path", "x.db"])
    assert code == 1
    assert "is not allowed inside a migration" in err and "line 2" in err, err
    with closing(sqlite3.connect(str(project / "x.db"))) as conn:  # checked before any runs
        assert conn.execute("SELECT name FROM sqlite_master WHERE name = 'a'").fetchall() == []
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("delete",)
