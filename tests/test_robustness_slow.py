"""Long variants of test_robustness.py (marked slow: run with -m slow).

More processes and migrations, many more kill moments (chained kills on
one database, kills aimed at the long backfill), signals at random moments
of a long statement, real full disks of several sizes, and 10,000 migrations
committed to a disk that fsyncs.
"""
from __future__ import annotations

import os
import random
import re
import shutil
import signal
import sqlite3
import subprocess
import time
from contextlib import closing
from pathlib import Path
from typing import List

import pytest

from dbhelpers import query, tables, tracking_rows
from test_robustness import (CRASH_VERSIONS, DB, POSIX, Watched,
                             assert_each_applied_once, assert_whole_or_absent, collect,
                             crash_run_seconds, integrity, kill_at_random_moment, one_error,
                             run_tool, start_together, tool_cmd, tool_env,
                             write_crash_migrations, write_logged_migrations,
                             write_signal_migrations)

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not POSIX, reason="needs POSIX signals and locks")]

_ = crash_run_seconds  # the module-scoped fixture, shared with test_robustness.py


# --------------------------------------------------------------------------
# Concurrency.


@pytest.mark.parametrize("start", ["barrier", "wal barrier", "no database yet"])
def test_sixteen_simultaneous_applies_repeatedly(project, start):
    """5 rounds of 16 processes over 300 migrations: each migration applied
    exactly once, every process exits 0, none reports a lock.  Without the
    barrier all 16 also race to create the database and the tracking table."""
    folder = project / "migrations"
    write_logged_migrations(folder, 300)
    failures: List[str] = []
    for round_ in range(5):
        db = project / f"round{round_}.db"
        argv = ["apply", "-q", "--db-path", db.name]
        if start != "no database yet":
            assert run_tool(["init", "-q", "--db-path", db.name], project)[0] == 0
            if start == "wal barrier":
                with closing(sqlite3.connect(str(db))) as conn:
                    conn.execute("PRAGMA journal_mode = wal")
            procs = start_together([argv] * 16, project, db)
        else:
            procs = [subprocess.Popen(tool_cmd(argv), cwd=str(project), env=tool_env(),
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE)
                     for _ in range(16)]
        results = collect(procs, timeout=600)
        failures += [f"round {round_}: exit {code}: {err.strip()}"
                     for code, _, err in results if code != 0 or err]
        if not failures:
            assert_each_applied_once(db, folder, 300)
    assert not failures, "\n".join(failures)


def test_many_status_readers_while_applying(project):
    """Readers (status) polling during a 300-migration apply never fail and
    never see a migration's table without its row or the reverse."""
    folder = project / "migrations"
    write_logged_migrations(folder, 300)
    db = project / DB
    assert run_tool(["init", "-q"], project)[0] == 0
    writer = subprocess.Popen(tool_cmd(["apply", "-q"]), cwd=str(project), env=tool_env(),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    seen = 0
    try:
        while writer.poll() is None:
            code, out, err = run_tool(["status", "--lock-timeout", "30"], project)
            assert (code, err) == (0, ""), err
            applied = re.findall(r"\[X\] (\S+)", out)
            assert applied == [f.stem for f in sorted(folder.glob("*.sql"))][:len(applied)]
            seen += 1
    finally:
        out, err = writer.communicate(timeout=600)
    assert writer.returncode == 0, err
    assert seen >= 1
    assert_each_applied_once(db, folder, 300)


# --------------------------------------------------------------------------
# Crashes.


@pytest.mark.parametrize("seed", range(40))
def test_chained_sigkills_at_random_moments(project, crash_run_seconds, seed):
    """Up to three kills in a row on one database (each restart continues
    the half-done run), checked after each, then a run that finishes."""
    folder = project / "migrations"
    write_crash_migrations(folder)
    rng = random.Random(1000 + seed)
    for _ in range(rng.randint(1, 3)):
        kill_at_random_moment(project, rng.uniform(0.0, crash_run_seconds))
        assert_whole_or_absent(project / DB, folder)
    code, out, err = run_tool(["apply", "-q"], project)
    assert code == 0, err
    assert assert_whole_or_absent(project / DB, folder) == len(CRASH_VERSIONS)


@pytest.mark.parametrize("seed", range(30))
def test_sigkill_inside_the_backfill(project, seed):
    """Kills aimed at the 200,000-row backfill (0010): from the moment 0009
    is reported until well past the backfill's usual end."""
    folder = project / "migrations"
    write_crash_migrations(folder)
    run = Watched(["apply"], project)
    try:
        run.wait_for("0009_small_9")
        time.sleep(random.Random(2000 + seed).uniform(0.0, 0.8))
    finally:
        run.kill()
    applied = assert_whole_or_absent(project / DB, folder)
    assert applied >= 9
    code, out, err = run_tool(["apply", "-q"], project)
    assert code == 0, err
    assert assert_whole_or_absent(project / DB, folder) == len(CRASH_VERSIONS)


@pytest.mark.parametrize("seed", range(12))
def test_signal_at_random_moment_of_long_statement(project, write_migration, seed):
    """SIGINT or SIGTERM between 0.05 and 2 s into a statement that would
    run for minutes: rolled back within 3 s, the exact line, exit 130/143."""
    write_signal_migrations(write_migration)
    rng = random.Random(3000 + seed)
    signum, exit_code = rng.choice([(signal.SIGINT, 130), (signal.SIGTERM, 143)])
    code, out, err, took = Watched(["apply"], project).signal_after(
        "0002_second", rng.uniform(0.05, 2.0), signum)
    assert code == exit_code and took < 3.0, (code, took, err)
    assert err == "Interrupted: 0003_backfill rolled back; 2 migrations applied in this run\n"
    db = project / DB
    assert [r[1] for r in tracking_rows(db)] == ["0001_first", "0002_second"]
    assert tables(db) == ["first", "schema_migrations", "second"]
    assert integrity(db) == "ok"


# --------------------------------------------------------------------------
# Full disks of several sizes.


@pytest.fixture
def mountpoint(tmp_path):
    if os.geteuid() != 0 or not shutil.which("mount"):
        pytest.skip("mounting a tmpfs needs root and mount(8)")
    path = tmp_path / "fs"
    path.mkdir()
    mounted: List[Path] = []
    yield path, mounted
    if mounted and subprocess.run(["umount", str(path)]).returncode != 0:
        subprocess.run(["umount", "-l", str(path)])


@pytest.mark.parametrize("size", ["64k", "128k", "256k", "1m", "3m"])
def test_full_filesystem_of_various_sizes(project, write_migration, mountpoint, size):
    path, mounted = mountpoint
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.decode(errors='replace').strip()}")
    mounted.append(path)
    write_migration("0001_a.sql", "CREATE TABLE a (x);\nINSERT INTO a VALUES (1);\n")
    write_migration("0002_fill.sql",
                    "CREATE TABLE filler (i INTEGER, pad TEXT);\n"
                    "INSERT INTO filler WITH RECURSIVE c(i) AS\n"
                    "  (SELECT 1 UNION ALL SELECT i + 1 FROM c WHERE i < 20000)\n"
                    "  SELECT i, hex(randomblob(100)) FROM c;\n"
                    "UPDATE filler SET pad = pad || pad;\n")
    db = path / "full.db"
    code, out, err = run_tool(["apply", "--db-path", str(db)], project)
    assert code in (1, 2), err
    line = one_error(err)
    assert "full" in line or "disk" in line, line
    if db.exists():
        assert integrity(db) == "ok"
        rows = [r[1] for r in tracking_rows(db)]
        assert rows in ([], ["0001_a"])
        assert "filler" not in tables(db)
    assert subprocess.run(["mount", "-o", "remount,size=64m", str(path)]).returncode == 0
    code, out, err = run_tool(["apply", "-q", "--db-path", str(db)], project)
    assert code == 0, err
    assert query(db, "SELECT count(*) FROM filler") == [(20000,)]


# --------------------------------------------------------------------------
# 10,000 migrations on a disk that fsyncs every commit (minutes).


def test_ten_thousand_migrations_on_disk(project):
    count = 10_000
    folder = project / "migrations"
    for i in range(1, count + 1):
        body = "CREATE TABLE log (n INTEGER);\n" if i == 1 else f"INSERT INTO log VALUES ({i});\n"
        (folder / f"{i:05d}_m.sql").write_text(body)
    code, out, err = run_tool(["apply", "-q"], project, timeout=1800)
    assert (code, err) == (0, "")
    db = project / DB
    assert query(db, "SELECT count(*), count(DISTINCT version) FROM schema_migrations") == [
        (count, count)]
    code, out, err = run_tool(["status", "--exit-code"], project)
    assert (code, err) == (0, "")
    assert f"Applied: {count}, Pending: 0" in out
