"""Robustness of apply_migrations.py against the world around it.

1. Concurrency: several `apply` runs on one database apply each migration
   exactly once; a lock held too long is a clear error that changes nothing.
2. Crashes and signals: `kill -9` at a random moment leaves every migration
   whole and recorded or absent and unrecorded; SIGINT/SIGTERM roll back the
   running migration promptly with the documented line and exit code.
3. A full disk (or SQLite's page limit) rolls the migration back wholly.
4. A hostile environment (read-only file or folder, a directory, a file that
   is not SQLite, a missing or huge migrations folder) gives one clear
   `Error:` line, the documented exit code and writes nothing.
5. `apply --backup` copies the database before anything runs, or applies
   nothing.
6. Hostile input: odd file names are recorded exactly; a tracking table the
   tool cannot trust is reported and left alone.

Tests run the tool as a real process wherever signals, locks, crashes or
another user are involved; the big matrices of bad databases and tracking
tables run in-process (run_cli) to stay fast.  Longer variants live in
test_robustness_slow.py (-m slow).

Regression tests for bugs these tests found (fixed in 87ecd97):
- stale plan: after another process committed, only the current migration
  was re-checked, so the next one ran again ("table already exists");
  test_migrations_another_process_applied_meanwhile_are_skipped and the
  eight-process test;
- a signal during COMMIT was reported as "X rolled back" although X had
  committed: test_interrupted_line_tells_the_truth_at_any_moment;
- `status` after kill -9 or a full disk (hot journal) failed with a
  misleading "check the permissions": test_status_after_kill_9_...;
- a file name that is not UTF-8 ended in a traceback:
  test_file_name_that_is_not_utf8_is_a_clear_error.
"""
from __future__ import annotations

import datetime
import errno
import json
import os
import queue
import random
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import closing
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import pytest

from conftest import ENV_CLEARED, TOOL_PATH
from dbhelpers import expected_checksum, full_tracking_rows, query, schema, tables, tracking_rows

import apply_migrations  # the copy under test (conftest put its folder on sys.path)

DB = "trading_brain.db"
POSIX = os.name == "posix"
needs_posix = pytest.mark.skipif(not POSIX, reason="needs POSIX signals, users and locks")


# --------------------------------------------------------------------------
# Helpers.


def tool_env(extra: Optional[Dict[str, str]] = None) -> Dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ENV_CLEARED}
    env["PYTHONIOENCODING"] = "utf-8"
    env.update(extra or {})
    return env


def tool_cmd(argv: Sequence[object], python: Optional[str] = None,
             tool: Optional[Path] = None) -> List[str]:
    return [python or sys.executable, str(tool or TOOL_PATH)] + [str(a) for a in argv]


def run_tool(argv: Sequence[object], cwd: Path, timeout: float = 60, **popen) -> Tuple[int, str, str]:
    """Like conftest's run_subprocess, with a timeout and Popen options of its own."""
    python = popen.pop("python", None)
    tool = popen.pop("tool", None)
    proc = subprocess.run(tool_cmd(argv, python, tool), cwd=str(cwd), env=tool_env(),
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=timeout, **popen)
    return (proc.returncode, proc.stdout.decode("utf-8", "replace"),
            proc.stderr.decode("utf-8", "replace"))


def one_error(err: str) -> str:
    """stderr is exactly one line, `Error: ...`, and no traceback."""
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one line on stderr, got:\n{err}"
    assert lines[0].startswith("Error: "), lines[0]
    return lines[0]


def listing(folder: Path) -> Dict[str, bytes]:
    """Every file below folder with its bytes (what 'nothing was written' compares)."""
    return {str(p.relative_to(folder)): p.read_bytes()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def integrity(db: Path) -> str:
    """PRAGMA integrity_check through an ordinary read-write connection: the
    'next open' that rolls back a hot journal left by a crash."""
    with closing(sqlite3.connect(str(db))) as conn:
        return conn.execute("PRAGMA integrity_check").fetchone()[0]


class Watched:
    """A tool process whose stdout and stderr are read by threads, so a test
    can wait for a line with a deadline and still collect everything."""

    def __init__(self, argv: Sequence[object], cwd: Path):
        self.proc = subprocess.Popen(tool_cmd(argv), cwd=str(cwd), env=tool_env(),
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.lines: "queue.Queue[Optional[str]]" = queue.Queue()
        self.out: List[str] = []
        self.err: List[str] = []
        self._threads = [threading.Thread(target=self._pump, args=(self.proc.stdout, self.out, True)),
                         threading.Thread(target=self._pump, args=(self.proc.stderr, self.err, False))]
        for thread in self._threads:
            thread.daemon = True
            thread.start()

    def _pump(self, stream, sink: List[str], announce: bool) -> None:
        for raw in iter(stream.readline, b""):
            line = raw.decode("utf-8", "replace")
            sink.append(line)
            if announce:
                self.lines.put(line)
        if announce:
            self.lines.put(None)

    def wait_for(self, needle: str, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            assert left > 0, f"no stdout line with {needle!r} in {timeout} s: {''.join(self.out)}"
            try:
                line = self.lines.get(timeout=left)
            except queue.Empty:
                continue
            assert line is not None, (f"the tool ended before printing {needle!r}: "
                                       f"{''.join(self.out)}{''.join(self.err)}")
            if needle in line:
                return

    def finish(self, timeout: float) -> Tuple[Optional[int], str, str]:
        """(exit code or None when it had to be killed, stdout, stderr)."""
        try:
            code: Optional[int] = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            code = None
        for thread in self._threads:
            thread.join(10)
        return code, "".join(self.out), "".join(self.err)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()

    def signal_after(self, needle: str, delay: float, signum: int,
                     timeout: float = 15) -> Tuple[Optional[int], str, str, float]:
        """Wait for a stdout line with needle, then delay seconds, send
        signum and finish: (exit code or None, stdout, stderr, seconds from
        the signal to the exit)."""
        try:
            self.wait_for(needle)
            time.sleep(delay)
            sent = time.monotonic()
            self.proc.send_signal(signum)
            code, out, err = self.finish(timeout=timeout)
            return code, out, err, time.monotonic() - sent
        finally:
            self.kill()


# --------------------------------------------------------------------------
# 1. Concurrency.

N_PROCESSES = 8
N_MIGRATIONS = 200


def write_logged_migrations(folder: Path, count: int) -> None:
    """count migrations; each creates its own table (no IF NOT EXISTS, so a
    second run of it fails) and adds one row to the shared log table."""
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(1, count + 1):
        body = "CREATE TABLE log (n INTEGER NOT NULL, name TEXT NOT NULL);\n" if i == 1 else ""
        body += f"CREATE TABLE t{i:04d} (x);\nINSERT INTO log (n, name) VALUES ({i}, 't{i:04d}');\n"
        (folder / f"{i:04d}_t{i:04d}.sql").write_text(body, encoding="utf-8")


def opened_by(pid: int, path: Path) -> bool:
    """Whether process pid has path open (Linux /proc; False elsewhere)."""
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return False
    for fd in fds:
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}") == str(path):
                return True
        except OSError:
            pass
    return False


def start_together(argvs: List[List[object]], cwd: Path, db: Path) -> List[subprocess.Popen]:
    """Start the processes behind a barrier, held until all of them have the
    database open (or 5 s passed); then they race.

    With a rollback journal the barrier is a read transaction: every process
    can open the database and plan, none can commit.  In WAL mode readers do
    not block a commit, so it is a write transaction: they wait to plan.
    """
    gate = sqlite3.connect(str(db), isolation_level=None)
    procs: List[subprocess.Popen] = []
    try:
        if gate.execute("PRAGMA journal_mode").fetchone()[0].lower() == "wal":
            gate.execute("BEGIN IMMEDIATE")
        else:
            gate.execute("BEGIN")
            gate.execute("SELECT count(*) FROM sqlite_master").fetchone()  # holds SHARED
        for argv in argvs:
            procs.append(subprocess.Popen(tool_cmd(argv), cwd=str(cwd), env=tool_env(),
                                          stdout=subprocess.PIPE, stderr=subprocess.PIPE))
        deadline = time.monotonic() + 5
        resolved = db.resolve()
        while time.monotonic() < deadline and not all(
                opened_by(p.pid, resolved) or p.poll() is not None for p in procs):
            time.sleep(0.02)
        time.sleep(0.3)  # time to read the tracking table and plan
    finally:
        if gate.in_transaction:
            gate.execute("ROLLBACK")
        gate.close()
    return procs


def collect(procs: List[subprocess.Popen], timeout: float) -> List[Tuple[int, str, str]]:
    results = []
    deadline = time.monotonic() + timeout
    try:
        for p in procs:
            out, err = p.communicate(timeout=max(1.0, deadline - time.monotonic()))
            results.append((p.returncode, out.decode("utf-8", "replace"),
                            err.decode("utf-8", "replace")))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    return results


def assert_each_applied_once(db: Path, folder: Path, count: int) -> None:
    files = sorted(folder.glob("*.sql"))
    assert [r[:2] for r in tracking_rows(db)] == [(f.name[:4], f.stem) for f in files]
    assert [r[2] for r in tracking_rows(db)] == [expected_checksum(f.read_bytes()) for f in files]
    assert query(db, "SELECT count(*), count(DISTINCT n), min(n), max(n) FROM log") == [
        (count, count, 1, count)]
    assert len([t for t in tables(db) if re.fullmatch(r"t\d{4}", t)]) == count
    assert integrity(db) == "ok"


@needs_posix
@pytest.mark.parametrize("journal_mode", ["delete", "wal"])
def test_eight_simultaneous_applies_apply_each_migration_exactly_once(project, run_subprocess,
                                                                      journal_mode):
    """In WAL mode a plain (deferred) BEGIN would fail with 'database is
    locked' (SQLITE_BUSY_SNAPSHOT) where BEGIN IMMEDIATE waits."""
    folder = project / "migrations"
    write_logged_migrations(folder, N_MIGRATIONS)
    db = project / DB
    assert run_subprocess(["init", "-q"])[0] == 0  # the barrier needs the file
    with closing(sqlite3.connect(str(db))) as conn:
        assert conn.execute(f"PRAGMA journal_mode = {journal_mode}").fetchone()[0] == journal_mode
    procs = start_together([["apply", "-q"]] * N_PROCESSES, project, db)
    results = collect(procs, timeout=180)

    assert [code for code, _, _ in results] == [0] * N_PROCESSES, "\n".join(
        err for _, _, err in results if err)
    for _, _, err in results:
        assert "locked" not in err.lower(), err
        assert err == "", err
    assert_each_applied_once(db, folder, N_MIGRATIONS)


def test_migrations_another_process_applied_meanwhile_are_skipped(project, run_subprocess):
    """Deterministic reproducer of the stale-plan bug: right after this run
    commits its first migration, another process applies all the others."""
    folder = project / "migrations"
    write_logged_migrations(folder, 4)
    db = project / DB
    other: List[Tuple[int, str, str]] = []

    def on_outcome(outcome) -> None:
        if outcome.position == 1:
            other.append(run_subprocess(["apply", "-q"]))

    # One commit per migration, so that the other process runs between two.
    with apply_migrations.Migrator(str(db), str(folder), on_outcome=on_outcome) as migrator:
        report = migrator.apply(commit_each=True)
    assert other and other[0][0] == 0, other
    assert [o.name for o in report.applied] == ["0001_t0001"]
    assert [o.result for o in report.outcomes] == ["applied", "skipped", "skipped", "skipped"]
    assert_each_applied_once(db, folder, 4)


@needs_posix
@pytest.mark.parametrize("holder_mode", ["EXCLUSIVE", "IMMEDIATE"])
def test_lock_held_past_lock_timeout_is_a_clear_error_and_changes_nothing(project, run_subprocess,
                                                                         write_migration,
                                                                         holder_mode):
    write_migration("0001_a.sql", "CREATE TABLE a (x);\n")
    write_migration("0002_b.sql", "CREATE TABLE b (x);\n")
    db = project / "locked.db"
    assert run_subprocess(["init", "-q", "--db-path", db.name])[0] == 0
    before = listing(project)
    holder = sqlite3.connect(str(db), isolation_level=None, timeout=0)
    try:
        holder.execute(f"BEGIN {holder_mode}")
        started = time.monotonic()
        code, out, err = run_subprocess(["apply", "--db-path", db.name, "--lock-timeout", "0.5"])
        elapsed = time.monotonic() - started
        status = run_subprocess(["status", "--db-path", db.name, "--lock-timeout", "0.5"])
    finally:
        holder.execute("ROLLBACK")
        holder.close()

    assert code == 1, err
    line = one_error(err)
    assert db.name in line and "locked" in line.replace(db.name, ""), line
    assert "--lock-timeout" in line, line
    assert 0.45 <= elapsed < 15, f"gave up after {elapsed:.2f} s, not after --lock-timeout 0.5"
    if holder_mode == "EXCLUSIVE":  # readers are shut out too: status fails the same way
        assert status[0] == 1, status
        assert db.name in one_error(status[2])
    else:  # a writer's RESERVED lock lets status read
        assert status[0] == 0, status
        assert "Pending: 2" in status[1]
    assert listing(project) == before
    assert tracking_rows(db) == []


@needs_posix
def test_apply_waits_for_a_shorter_lock_then_succeeds(project, run_subprocess, write_migration):
    write_migration("0001_a.sql", "CREATE TABLE a (x);\n")
    db = project / DB
    assert run_subprocess(["init", "-q"])[0] == 0
    holder = sqlite3.connect(str(db), isolation_level=None, timeout=0, check_same_thread=False)
    holder.execute("BEGIN IMMEDIATE")
    holder.execute("CREATE TABLE from_holder (x)")
    release = threading.Timer(1.0, lambda: holder.execute("COMMIT"))
    release.start()
    try:
        started = time.monotonic()
        code, out, err = run_subprocess(["apply", "--lock-timeout", "30"])
        elapsed = time.monotonic() - started
    finally:
        release.join()
        holder.close()
    assert code == 0, err
    assert elapsed >= 0.9
    assert [r[1] for r in tracking_rows(db)] == ["0001_a"]
    assert "from_holder" in tables(db) and "a" in tables(db)


@needs_posix
def test_tracking_row_and_migration_commit_together(project, run_subprocess, write_migration):
    """If writing the tracking row fails, the migration's statements are not
    kept either (a trigger refuses the row of 0003)."""
    write_migration("0001_a.sql", "CREATE TABLE a (x);\n")
    write_migration("0002_guard.sql",
                    "CREATE TRIGGER refuse_0003 BEFORE INSERT ON schema_migrations\n"
                    "WHEN NEW.version = '0003'\n"
                    "BEGIN SELECT RAISE(ABORT, 'tracking row refused'); END;\n")
    write_migration("0003_c.sql", "CREATE TABLE c (x);\nINSERT INTO c VALUES (3);\n")
    code, out, err = run_subprocess(["apply"])
    assert code == 1, err
    assert "tracking row refused" in one_error(err)
    db = project / DB
    assert [r[1] for r in tracking_rows(db)] == ["0001_a", "0002_guard"]
    assert "c" not in tables(db)


# --------------------------------------------------------------------------
# 2. Crashes (kill -9) and signals.

CRASH_BIG_ROWS = 200_000
CRASH_SMALL = list(range(2, 10)) + list(range(11, 21))
CRASH_VERSIONS = [f"{v:04d}" for v in range(1, 21)]


def write_crash_migrations(folder: Path) -> None:
    """0001 a base table, 0002-0009 and 0011-0020 small ones, 0010 a backfill
    of 200,000 rows (INSERT ... SELECT from a recursive CTE, then an UPDATE of
    every row, an index and a row in base)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "0001_base.sql").write_text(
        "CREATE TABLE base (id INTEGER PRIMARY KEY, label TEXT NOT NULL);\n"
        "INSERT INTO base VALUES (1, 'one');\n", encoding="utf-8")
    for k in CRASH_SMALL:
        (folder / f"{k:04d}_small_{k}.sql").write_text(
            f"CREATE TABLE small_{k} (x);\nINSERT INTO small_{k} VALUES ({k});\n", encoding="utf-8")
    (folder / "0010_backfill.sql").write_text(
        "CREATE TABLE big (id INTEGER PRIMARY KEY, v INTEGER NOT NULL, doubled INTEGER);\n"
        "INSERT INTO big (id, v) WITH RECURSIVE c(i) AS\n"
        f"  (SELECT 1 UNION ALL SELECT i + 1 FROM c WHERE i < {CRASH_BIG_ROWS})\n"
        "  SELECT i, i % 997 FROM c;\n"
        "UPDATE big SET doubled = v * 2;\n"
        "CREATE INDEX big_doubled ON big (doubled);\n"
        "INSERT INTO base VALUES (2, 'backfilled');\n", encoding="utf-8")


def crash_effects(db: Path) -> Dict[str, bool]:
    """version -> whether its effects are there; fails on any partial effect.

    Opens the database read-write first: the next open after a crash, which
    rolls back a hot journal.
    """
    assert integrity(db) == "ok"
    present: Dict[str, bool] = {}
    with closing(sqlite3.connect(str(db))) as conn:
        names = {r[0] for r in conn.execute("SELECT name FROM sqlite_master")}
        base = dict(conn.execute("SELECT id, label FROM base")) if "base" in names else {}
        present["0001"] = "base" in names
        if present["0001"]:
            assert base.get(1) == "one", base
        for k in CRASH_SMALL:
            table = f"small_{k}"
            present[f"{k:04d}"] = table in names
            if table in names:
                assert conn.execute(f"SELECT x FROM {table}").fetchall() == [(k,)], table
        parts = ["big" in names, "big_doubled" in names, 2 in base]
        assert len(set(parts)) == 1, f"0010_backfill is partly there: {parts}"
        present["0010"] = parts[0]
        if parts[0]:
            assert conn.execute(
                "SELECT count(*), sum(doubled IS NULL OR doubled != v * 2) FROM big"
            ).fetchone() == (CRASH_BIG_ROWS, 0)
            assert base[2] == "backfilled"
    return present


def assert_whole_or_absent(db: Path, folder: Path) -> int:
    """Every migration applied and recorded, or absent and unrecorded, in
    order; returns how many are applied."""
    if not db.exists():
        return 0
    effects = crash_effects(db)
    rows = {r[0]: r for r in tracking_rows(db)}
    files = {f.name[:4]: f for f in folder.glob("*.sql")}
    for version in CRASH_VERSIONS:
        assert effects[version] == (version in rows), (
            f"{version}: effects {'present' if effects[version] else 'absent'} but"
            f" {'recorded' if version in rows else 'unrecorded'}")
        if version in rows:
            assert rows[version][1:] == (files[version].stem,
                                         expected_checksum(files[version].read_bytes()))
    done = [v for v in CRASH_VERSIONS if v in rows]
    assert done == CRASH_VERSIONS[:len(done)], f"not a prefix: {done}"
    assert set(rows) <= set(CRASH_VERSIONS)
    return len(done)


@pytest.fixture(scope="module")
def crash_run_seconds(tmp_path_factory) -> float:
    """How long one uninterrupted run of the crash migrations takes here,
    process start included: the range of the random kill moments."""
    root = tmp_path_factory.mktemp("crash_calibration")
    write_crash_migrations(root / "migrations")
    started = time.monotonic()
    code, out, err = run_tool(["apply", "-q"], root)
    assert code == 0, err
    return time.monotonic() - started


def kill_at_random_moment(project: Path, delay: float) -> None:
    proc = subprocess.Popen(tool_cmd(["apply", "-q"]), cwd=str(project), env=tool_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(delay)
    finally:
        proc.kill()  # SIGKILL
        proc.wait()


@needs_posix
@pytest.mark.parametrize("seed", range(5))
def test_sigkill_at_random_moment_leaves_each_migration_whole_or_absent(project, run_subprocess,
                                                                        crash_run_seconds, seed):
    folder = project / "migrations"
    write_crash_migrations(folder)
    delay = random.Random(seed).uniform(0.0, crash_run_seconds)
    kill_at_random_moment(project, delay)
    assert_whole_or_absent(project / DB, folder)

    code, out, err = run_subprocess(["apply", "-q"])
    assert code == 0, err
    assert assert_whole_or_absent(project / DB, folder) == len(CRASH_VERSIONS)


def write_signal_migrations(write_migration) -> None:
    write_migration("0001_first.sql", "CREATE TABLE first (x);\n")
    write_migration("0002_second.sql", "CREATE TABLE second (x);\nINSERT INTO second VALUES (2);\n")
    # Its last statement writes a row per 100 steps of a count to 3e9: it
    # would run for minutes; the signal comes 0.5 s into it.
    write_migration("0003_backfill.sql",
                    "CREATE TABLE started (x);\n"
                    "INSERT INTO started VALUES (1);\n"
                    "CREATE TABLE big (i INTEGER);\n"
                    "INSERT INTO big WITH RECURSIVE c(i) AS\n"
                    "  (SELECT 1 UNION ALL SELECT i + 1 FROM c WHERE i < 3000000000)\n"
                    "  SELECT i FROM c WHERE i % 100 = 0;\n")
    write_migration("0004_after.sql", "CREATE TABLE after (x);\n")


@needs_posix
@pytest.mark.parametrize("signum,exit_code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)],
                         ids=["SIGINT", "SIGTERM"])
def test_signal_during_long_statement_rolls_back_promptly(project, write_migration, signum,
                                                          exit_code):
    write_signal_migrations(write_migration)
    # "0002_second" is printed once 0002 committed, as 0003 starts.
    code, out, err, took = Watched(["apply"], project).signal_after("0002_second", 0.5, signum)
    assert code is not None, "still running 15 s after the signal: the statement was not interrupted"
    assert took < 3.0, f"exit came {took:.1f} s after the signal"
    assert code == exit_code, err
    assert err == "Interrupted: 0003_backfill rolled back; 2 migrations applied in this run\n"
    db = project / DB
    assert [r[1] for r in tracking_rows(db)] == ["0001_first", "0002_second"]
    assert tables(db) == ["first", "schema_migrations", "second"]
    assert not Path(str(db) + "-journal").exists(), "the rollback left a journal behind"
    assert integrity(db) == "ok"


@needs_posix
def test_signal_during_rollback_undoes_the_rollback(project, run_subprocess, write_migration):
    write_migration("0001_first.sql", "CREATE TABLE first (x);\n")
    write_migration("0001_first.sql",
                    "DROP TABLE first;\n"
                    "CREATE TABLE big (i INTEGER);\n"
                    "INSERT INTO big WITH RECURSIVE c(i) AS\n"
                    "  (SELECT 1 UNION ALL SELECT i + 1 FROM c WHERE i < 3000000000)\n"
                    "  SELECT i FROM c WHERE i % 100 = 0;\n", folder="migrations/down")
    assert run_subprocess(["apply"])[0] == 0
    run = Watched(["rollback"], project)
    try:
        time.sleep(1.0)  # well into the down script's last statement
        signalled = time.monotonic()
        run.proc.send_signal(signal.SIGINT)
        code, out, err = run.finish(timeout=15)
    finally:
        run.kill()
    assert code == 130, err
    assert time.monotonic() - signalled < 5
    assert err == "Interrupted: the rollback of 0001_first was undone; it is still applied\n"
    db = project / DB
    assert [r[1] for r in tracking_rows(db)] == ["0001_first"]
    assert tables(db) == ["first", "schema_migrations"]


@needs_posix
@pytest.mark.parametrize("command", ["status", "apply"])
def test_ctrl_c_while_waiting_to_open_a_locked_database(project, run_subprocess,
                                                        write_migration, command):
    """Another process holds the database exclusively: the first read waits
    for it, and Ctrl-C ends that wait at once, not when --lock-timeout ends."""
    write_migration("0001_first.sql", "CREATE TABLE first (x);\n")
    assert run_subprocess(["apply"])[0] == 0
    write_migration("0002_second.sql", "CREATE TABLE second (x);\n")
    holder = sqlite3.connect(str(project / DB), isolation_level=None)
    try:
        holder.execute("BEGIN EXCLUSIVE")
        run = Watched([command, "--lock-timeout", "60"], project)
        try:
            time.sleep(1.0)
            signalled = time.monotonic()
            run.proc.send_signal(signal.SIGINT)
            code, out, err = run.finish(timeout=15)
            took = time.monotonic() - signalled
        finally:
            run.kill()
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert code == 130, (out, err)
    assert took < 3, f"exit came {took:.1f} s after the signal"
    assert err.startswith("Interrupted") and "Traceback" not in err, err
    assert [r[1] for r in tracking_rows(project / DB)] == ["0001_first"]


def test_a_stop_request_interrupts_the_foreign_key_check(project, write_migration):
    """PRAGMA foreign_key_check of a big table is aborted by a signal, as a
    statement is, and reported as an interruption, not as an SQLite error."""
    write_migration("0001_a.sql", "CREATE TABLE later (x);\n")
    db = project / DB
    with closing(sqlite3.connect(str(db))) as conn:
        conn.executescript(
            "CREATE TABLE parent (id INTEGER PRIMARY KEY);"
            "CREATE TABLE child (id INTEGER PRIMARY KEY, parent_id REFERENCES parent (id));"
            "INSERT INTO parent VALUES (1);"
            "INSERT INTO child (parent_id) WITH RECURSIVE c(i) AS"
            " (SELECT 1 UNION ALL SELECT i + 1 FROM c WHERE i < 50000) SELECT 1 FROM c;")
    with apply_migrations.Migrator(str(db), str(project / "migrations"),
                                   foreign_keys=True) as migrator:
        migrator.request_stop(signal.SIGINT)
        with pytest.raises(apply_migrations.Interrupted) as caught:
            migrator.apply()
    assert caught.value.exit_code == 130
    assert "later" not in tables(db)


@needs_posix
def test_interrupted_line_tells_the_truth_at_any_moment(project, write_migration):
    """SIGINT at seeded random moments of a run of 80 small migrations: the
    migration the line says was rolled back is not recorded, and the count
    is what this run recorded.  (Most of a small migration's time is its
    COMMIT's fsync, which is where the bug bites.)"""
    total = 80
    for i in range(1, total + 1):
        write_migration(f"{i:04d}_s{i}.sql", f"CREATE TABLE s{i} (x);\n")
    db = project / DB
    wrong = []
    for seed in range(6):
        for path in (db, Path(str(db) + "-journal")):
            if path.exists():
                path.unlink()
        run = Watched(["apply"], project)
        try:
            run.wait_for("0001_s1")
            time.sleep(random.Random(seed).uniform(0.0, 0.2))
            run.proc.send_signal(signal.SIGINT)
            code, out, err = run.finish(timeout=15)
        finally:
            run.kill()
        recorded = [r[1] for r in tracking_rows(db)]
        if len(recorded) == total and (code != 130 or err == "Interrupted\n"):
            continue  # the run had finished: the signal met its last steps
        # "Interrupted: X rolled back; N migrations applied in this run", or
        # without "X rolled back; " when the signal came between migrations.
        match = re.fullmatch(r"Interrupted: (?:(\S+) rolled back; )?(\d+) migrations? applied"
                             r" in this run\n", err)
        assert code == 130 and match, (code, err)
        if match.group(1) in recorded or int(match.group(2)) != len(recorded):
            wrong.append(f"seed {seed}: {err.strip()!r} but recorded: {recorded[-2:]}"
                         f" ({len(recorded)} rows)")
    assert not wrong, "\n".join(wrong)


@needs_posix
def test_status_after_kill_9_shows_the_restored_state(project, write_migration, run_subprocess):
    write_migration("0001_first.sql", "CREATE TABLE first (x);\n")
    write_migration("0002_second.sql", "CREATE TABLE second (x);\n")
    write_migration("0003_backfill.sql",
                    "CREATE TABLE big (i INTEGER, pad BLOB);\n"
                    "INSERT INTO big WITH RECURSIVE c(i) AS\n"
                    "  (SELECT 1 UNION ALL SELECT i + 1 FROM c WHERE i < 3000000000)\n"
                    "  SELECT i, zeroblob(200) FROM c;\n")
    db = project / DB
    run = Watched(["apply"], project)
    try:
        run.wait_for("0002_second")
        size = db.stat().st_size
        deadline = time.monotonic() + 20
        # Wait until 0003's pages spill into the database file: from then on
        # only its journal can restore the file.
        while db.stat().st_size < size + 1_000_000 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert db.stat().st_size >= size + 1_000_000
    finally:
        run.kill()  # SIGKILL
    assert Path(str(db) + "-journal").exists()
    code, out, err = run_subprocess(["status"])
    assert code == 0, err
    assert re.search(r"\[X\] 0002_second", out) and re.search(r"\[ \] 0003_backfill", out), out


# --------------------------------------------------------------------------
# 3. A full disk.


@needs_posix
def test_database_size_limit_rolls_the_migration_back_wholly(project, run_subprocess,
                                                             write_migration):
    write_migration("0001_a.sql", "CREATE TABLE a (x);\nINSERT INTO a VALUES (1);\n")
    write_migration("0002_fill.sql",
                    "CREATE TABLE filler (i INTEGER, pad TEXT);\n"
                    "INSERT INTO filler VALUES (0, 'first');\n"
                    "PRAGMA max_page_count = 1;\n"  # i.e. no page more than now
                    "INSERT INTO filler WITH RECURSIVE c(i) AS\n"
                    "  (SELECT 1 UNION ALL SELECT i + 1 FROM c WHERE i < 100000)\n"
                    "  SELECT i, hex(randomblob(100)) FROM c;\n")
    write_migration("0003_later.sql", "CREATE TABLE later (x);\n")
    code, out, err = run_subprocess(["apply"])
    assert code == 1, err
    line = one_error(err)
    assert "0002_fill" in line and "full" in line and "size limit was reached" in line, line
    assert "nothing of the current migration was kept" in line
    db = project / DB
    assert [r[1] for r in tracking_rows(db)] == ["0001_a"]
    assert tables(db) == ["a", "schema_migrations"]
    assert integrity(db) == "ok"


@pytest.fixture
def small_tmpfs(tmp_path):
    """A 256 KiB tmpfs (needs root and a kernel that lets us mount)."""
    if not POSIX or os.geteuid() != 0 or not shutil.which("mount"):
        pytest.skip("mounting a small tmpfs needs root and mount(8)")
    mountpoint = tmp_path / "small_fs"
    mountpoint.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mountpoint)],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.decode(errors='replace').strip()}")
    try:
        yield mountpoint
    finally:
        if subprocess.run(["umount", str(mountpoint)]).returncode != 0:
            subprocess.run(["umount", "-l", str(mountpoint)])


@needs_posix
def test_full_filesystem_rolls_the_migration_back_wholly(project, run_subprocess, write_migration,
                                                         small_tmpfs):
    write_migration("0001_a.sql", "CREATE TABLE a (x);\nINSERT INTO a VALUES (1);\n")
    write_migration("0002_fill.sql",  # about 4 MB: more than the 256 KiB disk
                    "CREATE TABLE filler (i INTEGER, pad TEXT);\n"
                    "INSERT INTO filler VALUES (0, 'first');\n"
                    "INSERT INTO filler WITH RECURSIVE c(i) AS\n"
                    "  (SELECT 1 UNION ALL SELECT i + 1 FROM c WHERE i < 20000)\n"
                    "  SELECT i, hex(randomblob(100)) FROM c;\n")
    write_migration("0003_later.sql", "CREATE TABLE later (x);\n")
    db = small_tmpfs / "full.db"
    code, out, err = run_subprocess(["apply", "--db-path", str(db)])
    assert code == 1, err
    line = one_error(err)
    assert "0002_fill" in line and "full" in line and "disk" in line, line
    # The next open restores the database (SQLite's journal).
    assert integrity(db) == "ok"
    assert [r[1] for r in tracking_rows(db)] == ["0001_a"]
    assert tables(db) == ["a", "schema_migrations"]

    remount = subprocess.run(["mount", "-o", "remount,size=64m", str(small_tmpfs)])
    assert remount.returncode == 0
    code, out, err = run_subprocess(["apply", "--db-path", str(db)])
    assert code == 0, err
    assert [r[1] for r in tracking_rows(db)] == ["0001_a", "0002_fill", "0003_later"]
    assert query(db, "SELECT count(*) FROM filler") == [(20001,)]


# --------------------------------------------------------------------------
# 4. A hostile environment: one `Error:` line, the documented exit code,
# nothing written; `status` never creates a file or a table.

NOBODY = 65534


def _become_nobody() -> None:
    os.setgroups([])
    os.setgid(NOBODY)
    os.setuid(NOBODY)


class Unprivileged:
    """Runs a copy of the tool as an unprivileged user in a folder that user
    can reach (pytest's tmp_path below /tmp/pytest-of-root is 0700)."""

    def __init__(self, base: Path, python: str, preexec: Optional[Callable[[], None]]):
        self.base = base
        self.python = python
        self.preexec = preexec
        self.tool = base / "apply_migrations.py"

    def give(self, path: Path) -> None:
        """Make path the unprivileged user's (a no-op when we are not root)."""
        if os.geteuid() == 0:
            os.chown(str(path), NOBODY, NOBODY)

    def run(self, argv: Sequence[object]) -> Tuple[int, str, str]:
        return run_tool(argv, self.base, python=self.python, tool=self.tool,
                        preexec_fn=self.preexec)


@pytest.fixture
def unprivileged() -> Unprivileged:
    if not POSIX:
        pytest.skip("needs POSIX permissions")
    base = Path(tempfile.mkdtemp(prefix="robustness-unprivileged-"))
    try:
        base.chmod(0o755)
        shutil.copyfile(str(TOOL_PATH), str(base / "apply_migrations.py"))
        (base / "apply_migrations.py").chmod(0o644)
        (base / "migrations").mkdir()
        if os.geteuid() != 0:
            yield Unprivileged(base, sys.executable, None)
            return
        # As root, chmod stops nothing: run as nobody.  This Python may live
        # below a home folder that nobody cannot enter: then take one
        # nobody can run.
        candidates = [sys.executable, "/usr/bin/python3", "/usr/local/bin/python3",
                      shutil.which("python3") or ""]
        for python in [c for c in candidates if c]:
            try:
                ok = subprocess.run(
                    [python, "-c", "import sqlite3, sys; assert sys.version_info >= (3, 8)"],
                    cwd=str(base), preexec_fn=_become_nobody, stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL, timeout=30).returncode == 0
            except (OSError, subprocess.SubprocessError):
                ok = False
            if ok:
                yield Unprivileged(base, python, _become_nobody)
                return
        pytest.skip("no Python 3.8+ that the unprivileged user (uid 65534) can run")
    finally:
        shutil.rmtree(str(base), ignore_errors=True)


def _prepared_db(env: Unprivileged, where: Path, command: str) -> Path:
    """A database made by root: for apply, with 0001 applied and 0002
    pending; for init, a SQLite file without the tracking table (init on an
    initialised database has nothing to write, and rightly succeeds)."""
    (env.base / "migrations" / "0001_a.sql").write_text("CREATE TABLE a (x);\n")
    (env.base / "migrations" / "0002_b.sql").write_text("CREATE TABLE b (x);\n")
    db = where / "app.db"
    if command == "init":
        with closing(sqlite3.connect(str(db))) as conn:
            conn.execute("CREATE TABLE keep (x)")
            conn.commit()
        return db
    code, out, err = run_tool(["apply", "-q", "--db-path", str(db), "--target", "0001"], env.base,
                              tool=env.tool)
    assert code == 0, err
    return db


def _assert_status_reads(env: Unprivileged, db: Path, before: Dict[str, bytes],
                         command: str) -> None:
    code, out, err = env.run(["status", "--db-path", str(db)])
    assert code == 0, err
    first = "[ ]" if command == "init" else "[X]"
    assert f"{first} 0001_a" in out and "[ ] 0002_b" in out, out
    assert listing(env.base) == before


@needs_posix
@pytest.mark.parametrize("command", ["apply", "init"])
def test_read_only_database_file(unprivileged, command):
    env = unprivileged
    folder = env.base / "data"
    folder.mkdir()
    db = _prepared_db(env, folder, command)
    env.give(folder)  # the folder is writable: only the file is read-only
    env.give(db)
    db.chmod(0o444)
    before = listing(env.base)
    code, out, err = env.run([command, "--db-path", str(db)])
    assert code == 1, err
    line = one_error(err)
    assert str(db) in line and "read" in line.lower(), line
    assert listing(env.base) == before
    _assert_status_reads(env, db, before, command)


@needs_posix
def test_read_only_database_file_verbose_shows_traceback(unprivileged):
    env = unprivileged
    db = _prepared_db(env, env.base, "apply")
    env.give(db)
    db.chmod(0o444)
    code, out, err = env.run(["apply", "--verbose", "--db-path", str(db)])
    assert code == 1
    assert "Traceback (most recent call last)" in err
    assert err.splitlines()[-1].startswith("Error: ") and str(db) in err.splitlines()[-1]


@needs_posix
@pytest.mark.parametrize("command", ["apply", "init"])
def test_read_only_folder_with_writable_database(unprivileged, command):
    env = unprivileged
    folder = env.base / "data"
    folder.mkdir()
    db = _prepared_db(env, folder, command)
    env.give(db)  # the file is the user's; its folder (root's, 0755) is not
    folder.chmod(0o555)
    before = listing(env.base)
    code, out, err = env.run([command, "--db-path", str(db)])
    assert code == 1, err
    line = one_error(err)
    assert str(db) in line and "read" in line.lower(), line
    assert listing(env.base) == before
    _assert_status_reads(env, db, before, command)


@needs_posix
@pytest.mark.parametrize("command,exit_code", [("apply", 2), ("init", 2), ("status", 0)])
def test_read_only_folder_without_database(unprivileged, command, exit_code):
    env = unprivileged
    (env.base / "migrations" / "0001_a.sql").write_text("CREATE TABLE a (x);\n")
    folder = env.base / "data"
    folder.mkdir()
    folder.chmod(0o555)
    db = folder / "new.db"
    before = listing(env.base)
    code, out, err = env.run([command, "--db-path", str(db)])
    assert code == exit_code, err
    if exit_code:
        line = one_error(err)
        assert line.startswith("Error: Failed to connect to database: ") and str(db) in line, line
    else:
        assert err == "" and "does not exist yet" in out and "[ ] 0001_a" in out, out
    assert not db.exists()
    assert listing(env.base) == before


def _bad_database(project: Path, kind: str) -> Path:
    if kind == "directory":
        path = project / "dir.db"
        path.mkdir()
        (path / "inside").write_text("x")
    elif kind == "not sqlite":
        path = project / "notes.db"
        path.write_bytes(b"these are notes, not a SQLite database\n" * 200)
    elif kind == "truncated sqlite":
        path = project / "cut.db"
        full = project / "full.db"
        with closing(sqlite3.connect(str(full))) as conn:
            conn.execute("CREATE TABLE t (x)")
            conn.executemany("INSERT INTO t VALUES (?)", [("x" * 500,)] * 100)
            conn.commit()
        path.write_bytes(full.read_bytes()[:100])  # the header only
        full.unlink()
    else:
        raise AssertionError(kind)
    return path


@pytest.mark.parametrize("command", ["apply", "status", "init", "rollback"])
@pytest.mark.parametrize("kind", ["directory", "not sqlite", "truncated sqlite"])
def test_unusable_database_path_is_exit_2_and_writes_nothing(project, run_cli, write_migration,
                                                             command, kind):
    write_migration("0001_a.sql", "CREATE TABLE a (x);\n")
    path = _bad_database(project, kind)
    before = listing(project)
    code, out, err = run_cli([command, "--db-path", path.name])
    assert code == 2, err
    line = one_error(err)
    assert line.startswith("Error: Failed to connect to database: ") and path.name in line, line
    assert listing(project) == before


@pytest.mark.parametrize("command", ["apply", "status"])
def test_missing_migrations_folder_is_exit_2_and_creates_nothing(project, run_subprocess, command):
    before = listing(project)
    code, out, err = run_subprocess([command, "--migrations-dir", "nowhere"])
    assert code == 2, err
    assert "nowhere" in one_error(err)
    assert listing(project) == before
    assert not (project / DB).exists()


def test_empty_migrations_folder_is_nothing_to_do(project, run_subprocess):
    code, out, err = run_subprocess(["status", "--exit-code"])
    assert (code, err) == (0, "")
    assert "(no migrations)" in out
    assert not (project / DB).exists()  # status creates nothing
    code, out, err = run_subprocess(["apply"])
    assert (code, err) == (0, "")
    assert "Nothing to apply" in out
    assert tracking_rows(project / DB) == []
    assert tables(project / DB) == ["schema_migrations"]


def tmpfs_folder(tmp_path: Path) -> Tuple[Path, bool]:
    """A scratch folder in RAM (/dev/shm) when there is one: 10,000 commits
    are seconds there and minutes on a disk that fsyncs."""
    shm = Path("/dev/shm")
    if shm.is_dir() and os.access(str(shm), os.W_OK):
        return Path(tempfile.mkdtemp(prefix="robustness-", dir=str(shm))), True
    return tmp_path, False


def test_ten_thousand_migrations(project, run_subprocess, tmp_path):
    count = 10_000
    folder = project / "migrations"
    for i in range(1, count + 1):
        body = "CREATE TABLE log (n INTEGER);\n" if i == 1 else f"INSERT INTO log VALUES ({i});\n"
        (folder / f"{i:05d}_m.sql").write_text(body)
    scratch, in_ram = tmpfs_folder(tmp_path)
    if not in_ram:
        pytest.skip("no /dev/shm for the database: see test_robustness_slow.py")
    try:
        db = scratch / "many.db"
        code, out, err = run_tool(["status", "--json", "--db-path", db], project)
        assert (code, err) == (0, "")
        report = json.loads(out)
        assert report["summary"] == {"applied": 0, "pending": count, "modified": 0,
                                     "missing": 0, "total": count}
        assert [m["name"] for m in report["migrations"]] == [f"{i:05d}_m" for i in
                                                             range(1, count + 1)]
        assert not db.exists()

        code, out, err = run_tool(["apply", "-q", "--db-path", db, "--target", "05000"], project,
                                  timeout=300)
        assert (code, err) == (0, "")
        code, out, err = run_tool(["apply", "-q", "--db-path", db], project, timeout=300)
        assert (code, err) == (0, "")
        assert query(db, "SELECT count(*), count(DISTINCT version), min(version), max(version)"
                         " FROM schema_migrations") == [(count, count, "00001", f"{count:05d}")]
        assert query(db, "SELECT count(*), min(n), max(n) FROM log") == [(count - 1, 2, count)]

        code, out, err = run_tool(["status", "--db-path", db, "--exit-code"], project)
        assert (code, err) == (0, "")
        assert out.count("[X] ") == count and f"Applied: {count}, Pending: 0" in out
        code, out, err = run_tool(["apply", "--db-path", db], project)
        assert (code, err) == (0, "") and "Nothing to apply" in out
    finally:
        shutil.rmtree(str(scratch), ignore_errors=True)


# --------------------------------------------------------------------------
# 5. Backups.


def _backup_project(write_migration, run_subprocess) -> None:
    write_migration("0001_a.sql", "CREATE TABLE a (x);\nINSERT INTO a VALUES (1);\n")
    assert run_subprocess(["apply", "-q"])[0] == 0
    write_migration("0002_b.sql", "CREATE TABLE b (x);\nUPDATE a SET x = 2;\n")
    write_migration("0003_c.sql", "DROP TABLE a;\n")


@pytest.mark.parametrize("mode", [[], ["--single-transaction"]], ids=["per-file", "single"])
def test_backup_restores_the_database_from_before_the_run(project, run_subprocess,
                                                          write_migration, mode):
    _backup_project(write_migration, run_subprocess)
    db = project / DB
    before = (schema(db), full_tracking_rows(db), query(db, "SELECT x FROM a"))
    target = project / "before-release.db"
    code, out, err = run_subprocess(["apply", "--backup", target.name] + mode)
    assert code == 0, err
    assert f"Backed up {DB} to {target.name}" in out
    assert out.index("Backed up") < out.index("0002_b")
    assert [r[1] for r in tracking_rows(db)] == ["0001_a", "0002_b", "0003_c"]

    shutil.copyfile(str(target), str(db))  # the documented restore
    assert (schema(db), full_tracking_rows(db), query(db, "SELECT x FROM a")) == before
    code, out, err = run_subprocess(["status"])
    assert "[ ] 0002_b" in out and "[ ] 0003_c" in out


def test_backup_default_path_is_beside_the_database_with_utc_time(project, run_subprocess,
                                                                  write_migration):
    _backup_project(write_migration, run_subprocess)
    (project / "data").mkdir()
    shutil.move(str(project / DB), str(project / "data" / "app.db"))
    start = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0)
    code, out, err = run_subprocess(["apply", "--backup", "--db-path", "data/app.db"])
    end = datetime.datetime.now(datetime.timezone.utc)
    assert code == 0, err
    copies = [p.name for p in (project / "data").iterdir() if p.name != "app.db"]
    assert len(copies) == 1, copies
    match = re.fullmatch(r"app-backup-(\d{8}T\d{6}Z)\.db", copies[0])
    assert match, copies
    stamp = datetime.datetime.strptime(match.group(1), "%Y%m%dT%H%M%SZ").replace(
        tzinfo=datetime.timezone.utc)
    assert start <= stamp <= end, (start, stamp, end)
    assert f"Backed up data/app.db to {os.path.join('data', copies[0])}" in out
    assert [r[1] for r in tracking_rows(project / "data" / copies[0])] == ["0001_a"]


@pytest.mark.parametrize("where", ["missing folder", "existing file"])
@pytest.mark.parametrize("mode", [[], ["--single-transaction"]], ids=["per-file", "single"])
def test_failed_backup_applies_nothing(project, run_subprocess, write_migration, where, mode):
    _backup_project(write_migration, run_subprocess)
    if where == "existing file":
        (project / "taken.db").write_bytes(b"keep me")
        target = "taken.db"
    else:
        target = "no_such_folder/backup.db"
    before = listing(project)
    code, out, err = run_subprocess(["apply", "--backup", target] + mode)
    assert code == 1, err
    line = one_error(err)
    assert target in line and "nothing was applied" in line, line
    assert listing(project) == before
    assert [r[1] for r in tracking_rows(project / DB)] == ["0001_a"]


# --------------------------------------------------------------------------
# 6. Hostile input.

HOSTILE_NAMES = [
    "0001_plain",
    "0002_it's \"quoted\"",
    "0003_café_ünïcode",
    "0004_with  two spaces ",
    "0005_semi;colon -- and $dollar `tick` [bracket] %percent% ?query #hash",
    "0006_日本語_emoji_\U0001F600",
]


def test_hostile_file_names_are_applied_and_recorded_exactly(project, run_subprocess,
                                                             write_migration):
    for i, name in enumerate(HOSTILE_NAMES, 1):
        write_migration(name + ".sql", f"CREATE TABLE t{i} (x);\n")
    code, out, err = run_subprocess(["apply"])
    assert (code, err) == (0, "")
    db = project / DB
    rows = tracking_rows(db)
    assert [r[0] for r in rows] == [f"{i:04d}" for i in range(1, len(HOSTILE_NAMES) + 1)]
    assert [r[1] for r in rows] == HOSTILE_NAMES
    assert [r[2] for r in rows] == [
        expected_checksum((project / "migrations" / (n + ".sql")).read_bytes()) for n in HOSTILE_NAMES]
    for name in HOSTILE_NAMES:
        assert name in out

    code, out, err = run_subprocess(["status", "--json"])
    assert (code, err) == (0, "")
    assert [(m["name"], m["state"]) for m in json.loads(out)["migrations"]] == [
        (n, "applied") for n in HOSTILE_NAMES]
    code, out, err = run_subprocess(["rollback", "--version", HOSTILE_NAMES[-1] + ".sql"])
    assert code == 0, err
    code, out, err = run_subprocess(["rollback", "--force", "--version", HOSTILE_NAMES[1]])
    assert code == 0, err
    assert [r[1] for r in tracking_rows(db)] == [HOSTILE_NAMES[i] for i in (0, 2, 3, 4)]


@needs_posix
def test_file_name_that_is_not_utf8_is_a_clear_error(project, run_subprocess, write_migration):
    write_migration("0001_a.sql", "CREATE TABLE a (x);\n")
    folder = bytes(project / "migrations")
    try:
        with open(os.path.join(folder, b"0002_bad\xff.sql"), "wb") as handle:
            handle.write(b"CREATE TABLE b (x);\n")
    except OSError as exc:  # a file system that insists on UTF-8 names
        if exc.errno in (errno.EILSEQ, errno.EINVAL):
            pytest.skip(f"this file system refuses non-UTF-8 names: {exc}")
        raise
    code, out, err = run_subprocess(["apply"])
    assert code == 1, err
    assert "0002_bad" in one_error(err)
    db = project / DB
    assert not db.exists() or "b" not in tables(db)


TRACKING_COLUMNS_SQL = ("version TEXT PRIMARY KEY NOT NULL, name TEXT NOT NULL, checksum TEXT"
                        " NOT NULL, applied_at TEXT NOT NULL, duration_ms REAL NOT NULL")
ROW_A = "('0001', '0001_a', '{a}', '2026-01-01T00:00:00Z', 1.5)"
BAD_TABLES = {
    "missing columns": ("CREATE TABLE schema_migrations (version TEXT PRIMARY KEY, dirty INTEGER);"
                        " INSERT INTO schema_migrations VALUES ('0001', 0);"),
    "extra column": (f"CREATE TABLE schema_migrations ({TRACKING_COLUMNS_SQL}, applied_by TEXT);"
                     " INSERT INTO schema_migrations VALUES ('0001', '0001_a', '{a}',"
                     " '2026-01-01T00:00:00Z', 1.5, 'ops');"),
    "other column order": ("CREATE TABLE schema_migrations (name TEXT, version TEXT, checksum TEXT,"
                           " applied_at TEXT, duration_ms REAL);"
                           " INSERT INTO schema_migrations VALUES ('0001_a', '0001', '{a}',"
                           " '2026-01-01T00:00:00Z', 1.5);"),
    "duplicate version": ("CREATE TABLE schema_migrations (version TEXT, name TEXT, checksum TEXT,"
                          " applied_at TEXT, duration_ms REAL);"
                          f" INSERT INTO schema_migrations VALUES {ROW_A};"
                          f" INSERT INTO schema_migrations VALUES {ROW_A};"),
    "empty column": ("CREATE TABLE schema_migrations (version TEXT, name TEXT, checksum TEXT,"
                     " applied_at TEXT, duration_ms REAL);"
                     " INSERT INTO schema_migrations VALUES ('0001', '0001_a', NULL,"
                     " '2026-01-01T00:00:00Z', 1.5);"),
    "version not digits": (f"CREATE TABLE schema_migrations ({TRACKING_COLUMNS_SQL});"
                           " INSERT INTO schema_migrations VALUES ('v1', '0001_a', '{a}',"
                           " '2026-01-01T00:00:00Z', 1.5);"),
}


@pytest.mark.parametrize("command", [["status"], ["apply"], ["init"], ["rollback"],
                                     ["apply", "--single-transaction"], ["apply", "--dry-run"]],
                         ids=lambda c: "-".join(c))
@pytest.mark.parametrize("kind", sorted(BAD_TABLES))
def test_untrusted_tracking_table_is_reported_and_left_alone(project, run_cli, write_migration,
                                                             kind, command):
    a = write_migration("0001_a.sql", "CREATE TABLE a (x);\n")
    write_migration("0002_b.sql", "CREATE TABLE b (x);\n")
    db = project / DB
    with closing(sqlite3.connect(str(db))) as conn:
        conn.executescript(BAD_TABLES[kind].replace("{a}", expected_checksum(a.read_bytes())))
        conn.commit()
    before = listing(project)
    code, out, err = run_cli(command)
    assert code == 1, (out, err)
    line = one_error(err)
    assert "schema_migrations" in line and DB in line, line
    assert "nothing was changed" in line.lower(), line
    assert listing(project) == before  # byte for byte: not rewritten


def test_rows_of_deleted_files_are_missing_and_kept(project, run_subprocess, write_migration):
    write_migration("0001_a.sql", "CREATE TABLE a (x);\n")
    write_migration("0002_gone.sql", "CREATE TABLE gone (x);\n")
    assert run_subprocess(["apply", "-q"])[0] == 0
    db = project / DB
    (project / "migrations" / "0002_gone.sql").unlink()
    write_migration("0003_c.sql", "CREATE TABLE c (x);\n")
    rows_before = full_tracking_rows(db)

    code, out, err = run_subprocess(["status"])
    assert (code, err) == (0, "")
    assert re.search(r"\[\?\] 0002_gone +MISSING", out), out
    assert "Applied: 1, Pending: 1, Modified: 0, Missing: 1" in out
    assert run_subprocess(["status", "--exit-code"])[0] == 1
    code, out, err = run_subprocess(["status", "--json"])
    gone = [m for m in json.loads(out)["migrations"] if m["name"] == "0002_gone"]
    assert gone and gone[0]["state"] == "missing" and gone[0]["file"] is None

    code, out, err = run_subprocess(["apply"])
    assert (code, err) == (0, "")
    rows_after = full_tracking_rows(db)
    assert rows_after[:2] == rows_before  # the missing row is kept as it was
    assert [r[1] for r in rows_after] == ["0001_a", "0002_gone", "0003_c"]
