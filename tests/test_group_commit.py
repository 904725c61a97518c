"""Group commit: local `apply` runs pending migrations in one transaction,
each in a savepoint with its tracking and history rows, committed every
GROUP_COMMIT_SECONDS (and at a stop, before a hoisted PRAGMA file, before a
step that runs long); remote D1 sends consecutive small migrations as one
batch.  `--commit-each` keeps one commit (one batch) per migration.

What each part holds to:

  Local (real SQLite files; the tool in-process through main()/Migrator, or
  as a real process where a reader, a signal or kill -9 is involved):
  - a reader in another process is never kept waiting long, however long
    the run;
  - a failing migration leaves exactly the ones before it applied, each
    once, even when SQLite rolls back the whole group (INSERT OR ROLLBACK);
  - outcomes are reported only once committed, and grouping does happen
    (fewer commits than migrations) unless --commit-each;
  - a step that runs long yields: the ones before it commit first, and its
    re-run leaves its rows once;
  - a file that starts with PRAGMA foreign_keys runs outside the group;
  - kill -9 at any moment leaves a whole prefix, recorded;
  - a stop during a statement SQLite aborts by rolling back the whole group
    keeps the migrations that ran before it (what one commit each gives).

  Remote (tests/fake_d1.py, in-process or the tool as a process):
  - 100 small migrations need a handful of requests;
  - a failing group falls back to one batch each and names the failure;
  - a group whose answer is lost is resolved by the record: not resent if
    committed, sent one by one if not;
  - a signal lets a group in flight finish; with the answer lost, the
    Interrupted line names the batch.

Bug these tests found (open when written):
- a stop (SIGINT/SIGTERM) that aborts an INSERT or UPDATE of a migration
  with others before it in the group makes SQLite roll the whole group
  back; the replay of those others commits only the first of them
  (SQLiteTarget._group breaks on db.stop_signal, which ignores
  held_stops(), instead of db.stopped), reports the second as "rolled
  back" and names it in the Interrupted line:
  test_stop_during_an_insert_keeps_the_migrations_that_ran_before_it.

The database header's "file change counter" (offset 24, big-endian) counts
the write transactions committed to a rollback-journal database: it is how
some tests count commits without looking inside the tool.
"""
from __future__ import annotations

import functools
import json
import os
import random
import re
import signal
import sqlite3
import subprocess
import tempfile
import threading
import time
from contextlib import closing
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import pytest

from conftest import apply_migrations
from dbhelpers import query, tables, tracking_rows
from fake_d1 import drop, malformed, remote_env, respond
from test_robustness import (assert_each_applied_once, integrity, tool_cmd,
                             write_logged_migrations)
from test_robustness import tool_env as local_env
from test_remote_faults import (  # noqa: F401  (fake and remote_cli are fixtures)
    APPLIED_COUNT, TRACKING_INSERT, assert_one_line_error, batch_of, fake, finish, hold,
    interrupted_line, is_probe, remote_cli, sends, start_tool, tracked, wait_until, when)

DB = "trading_brain.db"  # the tool's default database name
GROUP_SECONDS = apply_migrations.GROUP_COMMIT_SECONDS
POSIX = os.name == "posix"
needs_posix = pytest.mark.skipif(not POSIX, reason="needs POSIX signals")


# --------------------------------------------------------------------------
# Helpers


def change_counter(db: Path) -> int:
    """The database header's file change counter: one more for each write
    transaction committed (rollback-journal mode, the default here)."""
    with open(str(db), "rb") as handle:
        header = handle.read(28)
    return int.from_bytes(header[24:28], "big") if len(header) == 28 else 0


@functools.lru_cache(maxsize=None)
def rows_per_second() -> float:
    """How many rows a recursive-CTE INSERT writes per second on this
    machine (in a transaction, with the tool's cache size), so that a
    migration can be made to run for a given time."""
    folder = tempfile.mkdtemp(prefix="group-commit-calibrate-")
    path = os.path.join(folder, "calibrate.db")
    probe = 400_000
    try:
        with closing(sqlite3.connect(path, isolation_level=None)) as conn:
            conn.execute("PRAGMA cache_size = -65536")
            conn.execute("CREATE TABLE a (n)")
            best = None
            for _ in range(2):
                conn.execute("BEGIN IMMEDIATE")
                started = time.perf_counter()
                conn.execute(insert_rows("a", probe))
                took = time.perf_counter() - started
                conn.execute("ROLLBACK")
                best = took if best is None else min(best, took)
        return probe / max(best, 1e-3)
    finally:
        for name in os.listdir(folder):
            os.remove(os.path.join(folder, name))
        os.rmdir(folder)


def insert_rows(table: str, count: int) -> str:
    return (f"INSERT INTO {table} (n) WITH RECURSIVE r(i) AS (SELECT 1 UNION ALL"
            f" SELECT i + 1 FROM r WHERE i < {count}) SELECT i FROM r")


def rows_for(seconds: float) -> int:
    return max(10_000, int(rows_per_second() * seconds))


def quick_body(i: int) -> str:
    """Migration i: a comment, its own table (no IF NOT EXISTS: a second run
    would fail), one row in it: statement 2 is on line 3."""
    return f"-- migration {i}\nCREATE TABLE t{i:04d} (x);\nINSERT INTO t{i:04d} (x) VALUES ({i});\n"


def write_quick(folder: Path, count: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(1, count + 1):
        (folder / f"{i:04d}_m{i:04d}.sql").write_text(quick_body(i), encoding="utf-8")


def history(db: Path) -> List[Tuple]:
    """(version, outcome, statement, line) of the apply events, oldest first."""
    return query(db, "SELECT version, outcome, statement, line FROM schema_migrations_history"
                     " WHERE event = 'apply' ORDER BY id")


def versions(count: int, start: int = 1) -> List[str]:
    return [f"{i:04d}" for i in range(start, count + 1)]


def visible_versions(db: Path) -> Optional[List[str]]:
    """The tracking rows another connection sees now (None: no table yet)."""
    try:
        with closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)) as conn:
            return [r[0] for r in conn.execute(
                "SELECT version FROM schema_migrations ORDER BY version")]
    except sqlite3.OperationalError as exc:
        if "no such table" in str(exc) or "unable to open" in str(exc):
            return None
        raise


def start_apply(project: Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen(tool_cmd(["apply", *args]), cwd=str(project), env=local_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


# --------------------------------------------------------------------------
# 1. Readers are not kept waiting


@needs_posix
def test_reader_is_never_blocked_for_more_than_a_second(project):
    count = 1500
    folder = project / "migrations"
    heavy_rows = rows_for(0.5)
    heavy = {300, 700, 1100, 1400}
    for i in range(1, count + 1):
        if i == 1:
            body = "CREATE TABLE log (n INTEGER NOT NULL);\n"
        else:
            body = f"CREATE TABLE t{i:04d} (n);\n"
            body += "".join(f"INSERT INTO t{i:04d} (n) VALUES ({i * 10 + j});\n" for j in range(3))
            if i in heavy:
                body += insert_rows(f"t{i:04d}", heavy_rows) + ";\n"
        (folder / f"{i:04d}_m{i:04d}.sql").write_text(body)
    db = project / DB

    latencies: List[float] = []
    during: List[bool] = []
    errors: List[BaseException] = []
    done = threading.Event()

    def read() -> None:
        try:
            while not done.is_set():
                if not db.exists():
                    time.sleep(0.002)
                    continue
                started = time.monotonic()
                with closing(sqlite3.connect(str(db), timeout=30)) as conn:
                    try:
                        conn.execute("SELECT count(*) FROM schema_migrations").fetchone()
                    except sqlite3.OperationalError as exc:
                        if "no such table" not in str(exc):
                            raise
                latencies.append(time.monotonic() - started)
                during.append(proc.poll() is None)
                time.sleep(0.01)
        except BaseException as exc:  # noqa: BLE001  (reported by the test)
            errors.append(exc)

    proc = start_apply(project, "-q")
    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        code, out, err = finish(proc, timeout=90)
    finally:
        done.set()
        reader.join(40)
    assert not errors, errors
    assert (code, err) == (0, ""), err
    assert len(tracking_rows(db)) == count
    assert query(db, "SELECT count(*) FROM t0300") == [(heavy_rows + 3,)]
    assert sum(during) >= 20, f"only {sum(during)} reads while the apply ran"
    worst = max(latencies)
    assert worst < 1.0, (f"a reader waited {worst:.2f} s (of {len(latencies)} reads;"
                         f" slowest: {sorted(latencies)[-5:]})")


# --------------------------------------------------------------------------
# 2. A failure leaves exactly the migrations before it

FAILING = {
    # statement 2 fails; the statement alone is undone
    "error": ("-- migration {i}\nCREATE TABLE t{i:04d} (x);\n"
              "INSERT INTO t{i:04d} (nope) VALUES (1);\n"),
    # statement 2 fails with ON CONFLICT ROLLBACK: SQLite rolls back the
    # whole transaction, the group before it included, which must be replayed
    "whole-group-rolled-back": ("-- migration {i}\nCREATE TABLE t{i:04d} (x UNIQUE);\n"
                                "INSERT OR ROLLBACK INTO t{i:04d} (x) VALUES (1), (1);\n"),
}


@pytest.mark.parametrize("kind", sorted(FAILING))
@pytest.mark.parametrize("k", [1, 2, 137, 300])
def test_failure_at_k_leaves_exactly_the_migrations_before_it(project, run_cli, k, kind):
    count = 300
    folder = project / "migrations"
    write_quick(folder, count)
    (folder / f"{k:04d}_m{k:04d}.sql").write_text(FAILING[kind].format(i=k))
    code, out, err = run_cli(["apply"])
    db = project / DB
    assert code == 1, (out, err)
    line = assert_one_line_error(err, f"Failed to apply migration {k:04d}_m{k:04d}",
                                 "statement 2, line 3")
    assert "Traceback" not in line
    assert integrity(db) == "ok"
    assert [r[0] for r in tracking_rows(db)] == versions(k - 1)
    assert tables(db) == sorted([f"t{i:04d}" for i in range(1, k)] + ["schema_migrations"])
    for i in (1, k // 2, k - 1):
        if 1 <= i < k:
            assert query(db, f"SELECT x FROM t{i:04d}") == [(i,)]
    # each applied one succeeded once, the failing one failed at statement 2
    assert history(db) == ([(v, "succeeded", None, None) for v in versions(k - 1)]
                           + [(f"{k:04d}", "failed", 2, 3)])
    # and the next run (the file fixed) applies the rest, each once
    (folder / f"{k:04d}_m{k:04d}.sql").write_text(quick_body(k))
    code, out, err = run_cli(["apply", "-q"])
    assert (code, err) == (0, "")
    assert [r[0] for r in tracking_rows(db)] == versions(count)
    assert query(db, f"SELECT x FROM t{count:04d}") == [(count,)]


# --------------------------------------------------------------------------
# 3. and 4. Outcomes after the commit; fewer commits than migrations


def _seen_at_each_outcome(project: Path, count: int, commit_each: bool
                          ) -> Tuple[List[Tuple[int, str, Optional[List[str]]]], int]:
    """Apply `count` quick migrations through the library; at each outcome,
    what another connection sees.  Returns [(position, version, visible
    versions)], and how many write transactions the run committed."""
    folder = project / "migrations"
    write_quick(folder, count)
    db = project / DB
    seen: List[Tuple[int, str, Optional[List[str]]]] = []

    def on_outcome(outcome) -> None:
        seen.append((outcome.position, outcome.version, visible_versions(db)))

    with apply_migrations.Migrator(str(db), str(folder)) as migrator:
        migrator.init()
    before = change_counter(db)
    with apply_migrations.Migrator(str(db), str(folder), on_outcome=on_outcome) as migrator:
        report = migrator.apply(commit_each=commit_each)
    assert [o.result for o in report.outcomes] == ["applied"] * count
    assert [r[0] for r in tracking_rows(db)] == versions(count)
    return seen, change_counter(db) - before


@pytest.mark.parametrize("commit_each", [False, True], ids=["group", "commit-each"])
def test_outcomes_are_reported_only_once_committed(project, commit_each):
    seen, _ = _seen_at_each_outcome(project, 200, commit_each)
    assert [(position, version) for position, version, _ in seen] == [
        (i, f"{i:04d}") for i in range(1, 201)]
    not_yet = [version for _, version, visible in seen
               if visible is None or version not in visible]
    assert not_yet == [], f"reported before another connection could see them: {not_yet}"


def test_group_commit_commits_fewer_times_than_migrations(project):
    count = 300
    seen, commits = _seen_at_each_outcome(project, count, commit_each=False)
    ahead = [(position, len(visible)) for position, _, visible in seen
             if visible is not None and len(visible) > position]
    # The first outcome already finds later migrations committed with it.
    assert ahead and ahead[0][0] == 1, seen[:3]
    # Distinct views = commits of tracking rows: far fewer than migrations.
    views = {len(visible) for _, _, visible in seen if visible is not None}
    assert len(views) <= count // 10, sorted(views)
    assert commits < count // 10, f"{commits} commits for {count} migrations"


def test_commit_each_commits_every_migration_alone(project):
    count = 60
    seen, commits = _seen_at_each_outcome(project, count, commit_each=True)
    # Each outcome sees exactly the migrations up to itself.
    assert [len(visible or []) for _, _, visible in seen] == list(range(1, count + 1))
    assert commits >= count


# --------------------------------------------------------------------------
# 5. A long step yields to the ones before it


@needs_posix
def test_long_migration_yields_so_earlier_ones_commit_first(project):
    # long enough to yield (it runs GROUP_SECONDS with 0001 and 0002 waiting),
    # then to run alone for well over 0.7 s
    long_rows = rows_for(GROUP_SECONDS + 1.3)
    folder = project / "migrations"
    (folder / "0001_numbers.sql").write_text("CREATE TABLE numbers (n INTEGER NOT NULL);\n")
    (folder / "0002_quick.sql").write_text("CREATE TABLE quick (x);\n"
                                           "INSERT INTO quick VALUES (2);\n")
    (folder / "0003_long.sql").write_text("CREATE TABLE long_marker (x);\n"
                                          + insert_rows("numbers", long_rows) + ";\n")
    db = project / DB
    first_seen: Dict[str, float] = {}
    errors: List[BaseException] = []
    done = threading.Event()

    def poll() -> None:
        try:
            while not done.is_set():
                for version in visible_versions(db) or []:
                    first_seen.setdefault(version, time.monotonic())
                time.sleep(0.005)
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    proc = start_apply(project)
    poller = threading.Thread(target=poll, daemon=True)
    poller.start()
    try:
        code, out, err = finish(proc, timeout=60)
        time.sleep(0.05)  # one more poll after the end
    finally:
        done.set()
        poller.join(30)
    assert not errors, errors
    assert (code, err) == (0, ""), err
    assert sorted(first_seen) == ["0001", "0002", "0003"], first_seen
    gap = first_seen["0003"] - first_seen["0002"]
    assert first_seen["0002"] - first_seen["0001"] < 0.1 + GROUP_SECONDS
    assert gap >= 0.7, (f"0001 and 0002 became visible only {gap:.2f} s before 0003:"
                        " they waited for the long migration's commit")
    assert integrity(db) == "ok"
    assert [r[0] for r in tracking_rows(db)] == ["0001", "0002", "0003"]
    # the yielded run was undone wholly: its rows are there once
    assert query(db, "SELECT count(*), count(DISTINCT n), min(n), max(n) FROM numbers") == [
        (long_rows, long_rows, 1, long_rows)]
    # the yield is no failure: one success each in the history
    assert history(db) == [(v, "succeeded", None, None) for v in ("0001", "0002", "0003")]


# --------------------------------------------------------------------------
# 6. A file starting with PRAGMA foreign_keys runs outside the group

FK_SCHEMA = """\
CREATE TABLE parent (id INTEGER PRIMARY KEY, name TEXT NOT NULL);
CREATE TABLE child (id INTEGER PRIMARY KEY,
                    parent_id INTEGER NOT NULL REFERENCES parent (id) ON DELETE CASCADE);
INSERT INTO parent (id, name) VALUES (1, 'one'), (2, 'two');
INSERT INTO child (id, parent_id) VALUES (10, 1), (11, 2);
"""
REBUILD = """\
PRAGMA foreign_keys = OFF;
CREATE TABLE new_parent (id INTEGER PRIMARY KEY, name TEXT NOT NULL,
                         created INTEGER NOT NULL DEFAULT 0);
INSERT INTO new_parent (id, name) SELECT id, name FROM parent;
DROP TABLE parent;
ALTER TABLE new_parent RENAME TO parent;
PRAGMA foreign_keys = ON;
"""
ENFORCE = "PRAGMA foreign_keys = ON;\nDELETE FROM parent WHERE id = 1;\n"
RECORD_SETTING = ("CREATE TABLE fk_setting AS SELECT foreign_keys FROM pragma_foreign_keys;\n"
                  "DELETE FROM parent WHERE id = 2;\n")


def _fk_project(folder: Path, hoisted: str) -> None:
    """0001 the schema, 0002-0005 quick, 0006 the hoisted file, 0007 records
    the connection's setting (and deletes parent 2), 0008-0010 quick."""
    write_quick(folder, 10)
    (folder / "0001_m0001.sql").write_text(FK_SCHEMA)
    (folder / "0006_m0006.sql").write_text(hoisted)
    (folder / "0007_m0007.sql").write_text(RECORD_SETTING)


def _children(db: Path) -> List[Tuple]:
    return query(db, "SELECT id, parent_id FROM child ORDER BY id")


def test_hoisted_pragma_on_takes_effect_in_the_middle_of_a_group(project, run_cli):
    """Inside a transaction PRAGMA foreign_keys is a no-op: the cascade of
    0006 fires only if the group was committed before it and the PRAGMA ran
    outside one; 0007 sees the connection's own setting (off) again."""
    folder = project / "migrations"
    _fk_project(folder, ENFORCE)
    code, out, err = run_cli(["apply", "--allow-row-loss"])  # 0006's cascade is meant
    assert (code, err) == (0, "")
    db = project / DB
    assert [r[0] for r in tracking_rows(db)] == versions(10)
    assert _children(db) == [(11, 2)]  # 10 went with parent 1; 11 stayed (no cascade)
    assert query(db, "SELECT foreign_keys FROM fk_setting") == [(0,)]
    assert query(db, "SELECT id FROM parent") == []
    assert [f"t{i:04d}" in tables(db) for i in (2, 5, 8, 10)] == [True] * 4
    assert integrity(db) == "ok"


def test_hoisted_pragma_off_rebuild_keeps_children_in_a_group(project, run_cli,
                                                              foreign_keys_on_by_default):
    """test_foreign_keys' rebuild, with quick migrations before and after it
    in the same run, on a build whose connections enforce foreign keys: the
    rebuild's OFF is honoured (no cascade on DROP TABLE parent), and the
    connection's own setting (on) is back for 0007."""
    folder = project / "migrations"
    _fk_project(folder, REBUILD)
    code, out, err = run_cli(["apply", "--allow-row-loss"])  # 0007's cascade is meant
    assert (code, err) == (0, "")
    db = project / DB
    assert [r[0] for r in tracking_rows(db)] == versions(10)
    assert query(db, "SELECT id, name, created FROM parent") == [(1, "one", 0)]
    assert query(db, "SELECT foreign_keys FROM fk_setting") == [(1,)]
    assert _children(db) == [(10, 1)]  # 11 went with parent 2 in 0007, as meant
    assert "new_parent" not in tables(db)
    assert query(db, "PRAGMA foreign_key_check") == []
    assert integrity(db) == "ok"


# --------------------------------------------------------------------------
# 7. kill -9 during group commit


@needs_posix
def test_kill_9_during_group_commit_leaves_a_consistent_prefix(project, run_cli):
    count = 400
    folder = project / "migrations"
    write_logged_migrations(folder, count)
    # Some work in each (computed, not written: the file stays small), so
    # that a run spans two or three group commits.
    work = rows_for(2.5 * GROUP_SECONDS / count)
    for i in range(2, count + 1):
        path = folder / f"{i:04d}_t{i:04d}.sql"
        path.write_text(path.read_text() + f"INSERT INTO t{i:04d} (x) WITH RECURSIVE r(i) AS"
                        f" (SELECT 1 UNION ALL SELECT i + 1 FROM r WHERE i < {work})"
                        " SELECT count(*) FROM r;\n")
    db = project / DB

    def wipe() -> None:
        for suffix in ("", "-journal", "-wal", "-shm"):
            if os.path.exists(str(db) + suffix):
                os.remove(str(db) + suffix)

    started = time.monotonic()
    code, out, err = finish(start_apply(project, "-q"), timeout=60)
    whole = time.monotonic() - started
    assert (code, err) == (0, "")
    assert_each_applied_once(db, folder, count)

    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    prefixes = []
    for trial in range(10 if whole < 1.0 else 5):
        wipe()
        proc = start_apply(project, "-q")
        started = time.monotonic()
        if trial % 2:  # a moment after the first group commit
            while not visible_versions(db) and proc.poll() is None:
                time.sleep(0.005)
            left = whole - (time.monotonic() - started)
            time.sleep(rng.uniform(0, 0.8 * max(0.0, left)))
        else:  # any moment
            time.sleep(rng.uniform(0.1, whole))
        proc.kill()
        proc.wait()
        where = f"seed {seed}, trial {trial}"
        assert integrity(db) == "ok", where  # also rolls a hot journal back
        applied = [r[0] for r in tracking_rows(db)]
        n = len(applied)
        prefixes.append(n)
        assert applied == versions(n), where
        assert sorted(t for t in tables(db) if re.fullmatch(r"t\d{4}", t)) == [
            f"t{i:04d}" for i in range(1, n + 1)], where
        if n:
            assert query(db, "SELECT count(*), count(DISTINCT n), min(n), max(n) FROM log") == [
                (n, n, 1, n)], where
            assert [h[:2] for h in history(db)] == [(v, "succeeded") for v in versions(n)], where
            assert query(db, f"SELECT x FROM t{n:04d}") == ([(work,)] if n > 1 else []), where
        code, out, err = run_cli(["apply", "-q"])
        assert (code, err) == (0, ""), where
        assert_each_applied_once(db, folder, count)
    # the kills landed at different moments, some in the middle of the run
    assert any(0 < n < count for n in prefixes), (seed, whole, prefixes)


# --------------------------------------------------------------------------
# 8. --commit-each from the command line


def test_commit_each_option_from_the_cli(project, run_cli):
    count = 40
    folder = project / "migrations"
    write_quick(folder, count)
    db = project / DB
    assert run_cli(["init", "-q"])[0] == 0
    before = change_counter(db)
    code, out, err = run_cli(["apply", "--commit-each"])
    assert (code, err) == (0, "")
    assert [r[0] for r in tracking_rows(db)] == versions(count)
    assert f"Applied {count} migrations" in out
    assert change_counter(db) - before >= count  # a commit each

    # the default groups them: a few commits for all of them
    write_quick(project / "grouped", count)
    grouped = project / "grouped.db"
    assert run_cli(["init", "-q", "--db-path", grouped.name])[0] == 0
    before = change_counter(grouped)
    code, out, err = run_cli(["apply", "--db-path", grouped.name, "--migrations-dir", "grouped"])
    assert (code, err) == (0, "")
    assert [r[0] for r in tracking_rows(grouped)] == versions(count)
    assert change_counter(grouped) - before < count // 4


@pytest.mark.parametrize("order", [["--commit-each", "--single-transaction"],
                                   ["--single-transaction", "--commit-each"]],
                         ids=["commit-each-first", "single-first"])
def test_commit_each_with_single_transaction_is_refused(project, run_cli, order):
    """The two contradict each other (one commit each, one commit for all):
    refused before anything runs, from the command line (exit 2) and from
    the library, and the database is left as it was."""
    count = 5
    folder = project / "migrations"
    write_quick(folder, count)
    db = project / DB
    assert run_cli(["init", "-q"])[0] == 0
    before = db.read_bytes()
    code, out, err = run_cli(["apply", *order])
    assert code == 2, (code, out, err)
    assert_one_line_error(err, "--commit-each", "--single-transaction")
    assert db.read_bytes() == before
    with apply_migrations.Migrator(str(db), str(folder)) as migrator:
        with pytest.raises(apply_migrations.ConfigurationError, match="exclude each other"):
            migrator.apply(single_transaction=True, commit_each=True)
    assert db.read_bytes() == before
    assert tracking_rows(db) == []


# --------------------------------------------------------------------------
# A stop during a statement that SQLite aborts by rolling back the group


def test_stop_during_an_insert_keeps_the_migrations_that_ran_before_it(project):
    """SIGINT while 0004's INSERT runs, 0001-0003 done in the same group:
    SQLite's abort of an INSERT rolls back the whole transaction, so
    0001-0003 are replayed, and must all be committed (as one commit each
    would have left them); 0004 is the one rolled back, and named."""
    folder = project / "migrations"
    write_quick(folder, 3)
    # An INSERT that computes for a few seconds (and writes one row)
    (folder / "0004_big.sql").write_text(
        "CREATE TABLE big (n);\n"
        "INSERT INTO big (n) SELECT count(*) FROM (WITH RECURSIVE r(i) AS (SELECT 1 UNION ALL"
        f" SELECT i + 1 FROM r WHERE i < {rows_for(GROUP_SECONDS + 3)}) SELECT i FROM r);\n")
    db = project / DB
    outcomes = []
    holder: Dict[str, object] = {}

    def log(line: str) -> None:
        # statement 1 of 0004 is done: its INSERT starts now; the stop comes
        # 20 ms into it (long before it would yield, after GROUP_SECONDS)
        if line.startswith("0004_big statement 1 "):
            threading.Timer(0.02, holder["target"].request_stop, (signal.SIGINT,)).start()

    with apply_migrations.Migrator(str(db), str(folder), log=log,
                                   on_outcome=outcomes.append) as migrator:
        holder["target"] = migrator.target
        with pytest.raises(apply_migrations.Interrupted) as caught:
            migrator.apply()
    assert [(o.version, o.result) for o in outcomes] == [
        ("0001", "applied"), ("0002", "applied"), ("0003", "applied"), ("0004", "interrupted")]
    assert str(caught.value) == ("Interrupted: 0004_big rolled back;"
                                 " 3 migrations applied in this run")
    assert [r[0] for r in tracking_rows(db)] == ["0001", "0002", "0003"]
    assert "big" not in tables(db)
    assert integrity(db) == "ok"


def test_a_run_whose_last_commit_is_replayed_still_notes_its_schema(project, monkeypatch):
    """The final COMMIT fails once (as an I/O error would): the group is
    replayed, and the replay's commit carries the schema's note, as the
    lost one did, so that the next `status` need not replay the files."""
    folder = project / "migrations"
    write_quick(folder, 3)
    db = project / DB
    commit = apply_migrations._SQLiteConnection.commit
    failed: List[bool] = []

    def commit_failing_once(self) -> None:
        if not failed and self.conn.in_transaction:
            failed.append(True)
            raise sqlite3.OperationalError("disk I/O error")
        commit(self)

    monkeypatch.setattr(apply_migrations._SQLiteConnection, "commit", commit_failing_once)
    outcomes = []
    with apply_migrations.Migrator(str(db), str(folder), on_outcome=outcomes.append) as migrator:
        migrator.apply()
    assert failed, "the injected COMMIT failure did not happen"
    assert [(o.version, o.result) for o in outcomes] == [
        (v, "applied") for v in versions(3)]
    assert [r[0] for r in tracking_rows(db)] == versions(3)
    noted = query(db, "SELECT applied, fingerprint FROM schema_migrations_state")
    monkeypatch.undo()
    again = project / "again.db"
    with apply_migrations.Migrator(str(again), str(folder)) as migrator:
        migrator.apply()
    assert noted and noted == query(again, "SELECT applied, fingerprint FROM"
                                           " schema_migrations_state")


@pytest.mark.parametrize("failing", [
    "INSERT INTO nosuch VALUES (1);\n",
    "CREATE TABLE a (x);\n",  # already there
])
def test_a_yielded_migration_that_then_fails_is_reported_once(project, run_subprocess,
                                                               failing):
    """0002 runs long (it yields, so 0001 commits, and runs again alone),
    then fails for a reason of its own: one failure, named with its
    statement, never another yield (a stale flag once looped for ever)."""
    folder = project / "migrations"
    (folder / "0001_a.sql").write_text("CREATE TABLE a (x);\n")
    (folder / "0002_b.sql").write_text(
        "SELECT count(*) FROM (WITH RECURSIVE r(i) AS (SELECT 1 UNION ALL SELECT i + 1"
        f" FROM r WHERE i < {rows_for(GROUP_SECONDS + 0.5)}) SELECT i FROM r);\n" + failing)
    (folder / "0003_c.sql").write_text("CREATE TABLE c (x);\n")
    code, out, err = run_subprocess(["apply"])  # a loop would time out (60 s)
    assert code == 1, err
    assert "0002_b" in err and "statement 2" in err, err
    db = project / DB
    assert [r[0] for r in tracking_rows(db)] == ["0001"]
    assert query(db, "SELECT version, outcome, statement FROM schema_migrations_history"
                     " ORDER BY id") == [("0001", "succeeded", None), ("0002", "failed", 2)]


# ==========================================================================
# Remote D1


def remote_migrations(write_migration, count: int) -> None:
    """count small migrations: 0001 creates events; each adds its own table
    and one event row."""
    for i in range(1, count + 1):
        body = "CREATE TABLE events (what TEXT NOT NULL);\n" if i == 1 else ""
        body += f"CREATE TABLE r{i:04d} (x);\nINSERT INTO events (what) VALUES ('{i:04d}');\n"
        write_migration(f"{i:04d}_r{i:04d}.sql", body)


def versions_in(record: dict) -> List[str]:
    """The versions whose tracking rows a (non-probe) batch inserts."""
    if is_probe(record):
        return []
    return [e["params"][0] for e in batch_of(record)
            if e["sql"].startswith(TRACKING_INSERT) and e.get("params")]


def is_group(record: dict) -> bool:
    return len(versions_in(record)) > 1


def migration_batches(fake) -> List[List[str]]:
    return [v for v in (versions_in(r) for r in fake.requests) if v]


def event_counts(fake) -> Dict[str, int]:
    if not fake.has_table("events"):
        return {}
    return dict(fake.rows("SELECT what, count(*) FROM events GROUP BY what"))


def test_hundred_small_migrations_need_at_most_ten_requests(write_migration, fake, remote_cli):
    remote_migrations(write_migration, 100)
    code, out, err = remote_cli("apply")
    assert (code, err) == (0, "")
    assert fake.request_count <= 10, [r["kind"] for r in fake.requests]
    assert tracked(fake) == versions(100)
    assert event_counts(fake) == {v: 1 for v in versions(100)}
    assert [h for h in fake.history() if h[0] == "apply"] == [
        ("apply", "succeeded", f"{i:04d}_r{i:04d}") for i in range(1, 101)]
    assert migration_batches(fake) == [versions(100)]  # one batch for all of them


def test_a_group_is_bounded_by_bytes_not_characters(write_migration, fake, remote_cli):
    """Three migrations of 60,000 three-byte characters each (two
    statements of 90,000 bytes, under D1's limit): 180,000 characters,
    540,000 bytes of SQL, and a request body as large: more than
    D1_GROUP_BYTES, so they do not all go in one request."""
    write_migration("0001_notes.sql", "CREATE TABLE notes (body TEXT);\n")
    row = f"INSERT INTO notes (body) VALUES ('{chr(0x20AC) * 30_000}');\n"
    for i in (2, 3, 4):
        write_migration(f"{i:04d}_seed{i}.sql", row * 2)
    code, out, err = remote_cli("apply")
    assert (code, err) == (0, ""), err
    batches = migration_batches(fake)
    assert [v for batch in batches for v in batch] == versions(4)
    assert len(batches) > 1, batches


def test_failing_group_falls_back_to_one_batch_each(write_migration, fake, remote_cli):
    remote_migrations(write_migration, 5)
    write_migration("0004_r0004.sql", "-- fails at its second statement\n"
                                      "CREATE TABLE r0004 (x);\n\n"
                                      "INSERT INTO no_such_table VALUES (1);\n")
    code, out, err = remote_cli("apply")
    assert code == 1, (out, err)
    assert_one_line_error(err, "Failed to apply migration 0004_r0004", "no such table",
                          "statement 2, line 4")
    assert tracked(fake) == ["0001", "0002", "0003"]
    assert event_counts(fake) == {"0001": 1, "0002": 1, "0003": 1}  # each INSERT ran once
    assert not fake.has_table("r0004") and not fake.has_table("r0005")
    # the group once (refused), then one batch each up to the failing one
    batches = migration_batches(fake)
    assert batches == [versions(5), ["0001"], ["0002"], ["0003"], ["0004"]], batches
    assert [r["status"] for r in fake.requests if versions_in(r)] == [400, 200, 200, 200, 400]
    assert any(is_probe(r) for r in fake.requests)  # the statement was found by probes
    assert [h[:2] for h in fake.history() if h[0] == "apply"] == [
        ("apply", "succeeded")] * 3 + [("apply", "failed")]


LOST_AFTER_COMMIT = [
    pytest.param(lambda: drop(execute=True), id="dropped-after-commit"),
    pytest.param(lambda: respond(503, execute=True), id="503-after-commit"),
    pytest.param(lambda: malformed(b"<html>proxy</html>", execute=True), id="200-not-d1s"),
]


@pytest.mark.parametrize("lost", LOST_AFTER_COMMIT)
def test_lost_answer_of_a_group_after_commit_is_not_resent(write_migration, fake, remote_cli,
                                                           lost):
    remote_migrations(write_migration, 5)
    action = lost()
    when(fake, is_group, lambda record: action)
    code, out, err = remote_cli("apply", "--json")
    assert (code, err) == (0, "")
    assert tracked(fake) == versions(5)
    assert event_counts(fake) == {v: 1 for v in versions(5)}
    assert migration_batches(fake) == [versions(5)]  # sent once, nothing resent
    for version in versions(5):
        assert len(sends(fake, version)) == 1
    payload = json.loads(out)
    assert [(o["version"], o["result"]) for o in payload["outcomes"]] == [
        (v, "applied") for v in versions(5)]


def test_lost_answer_of_a_group_before_it_ran_sends_each_alone(write_migration, fake,
                                                               remote_cli):
    remote_migrations(write_migration, 5)
    when(fake, is_group, lambda record: drop(execute=False))
    code, out, err = remote_cli("apply")
    assert (code, err) == (0, "")
    assert tracked(fake) == versions(5)
    assert event_counts(fake) == {v: 1 for v in versions(5)}
    assert migration_batches(fake) == [versions(5)] + [[v] for v in versions(5)]
    assert [h[:2] for h in fake.history() if h[0] == "apply"] == [("apply", "succeeded")] * 5


def _signal_while_group_held(fake, project: Path, release: threading.Event,
                             *args: str) -> Tuple[float, Tuple[int, str, str]]:
    proc = start_tool(fake, project, ["apply", "--d1-remote", "--http-timeout", "10", *args])
    try:
        wait_until(lambda: any(is_group(r) for r in fake.requests), "the group's batch")
        stopped_at = time.monotonic()
        proc.send_signal(signal.SIGINT)
        time.sleep(0.2)  # the handler runs while the batch is in flight
    except BaseException:
        proc.kill()
        raise
    finally:
        release.set()
    return stopped_at, finish(proc)


@needs_posix
def test_signal_while_a_group_is_in_flight_lets_it_finish(project, write_migration, fake):
    remote_migrations(write_migration, 5)
    release = hold(fake, is_group)
    stopped_at, (code, out, err) = _signal_while_group_held(fake, project, release)
    assert code == 130, (code, err)
    line = interrupted_line(err)
    count = APPLIED_COUNT.search(line)
    assert count and int(count.group(1)) == 5, line
    assert tracked(fake) == versions(5)
    assert event_counts(fake) == {v: 1 for v in versions(5)}
    group = [r for r in fake.requests if is_group(r)]
    assert len(group) == 1 and group[0]["status"] == 200
    # nothing after the stop, not even the durations' amendment
    assert [r for r in fake.requests if r["time"] > stopped_at] == []
    assert fake.requests[-1] is group[0]


@needs_posix
@pytest.mark.parametrize("lost, state", [
    pytest.param(drop(execute=True), "applied", id="dropped-after-commit"),
    pytest.param(respond(503, execute=True), "applied", id="503-after-commit"),
    pytest.param(drop(execute=False), "pending", id="dropped-before-running"),
])
def test_signal_pending_when_a_group_answer_is_lost_names_the_batch(
        project, write_migration, fake, run_subprocess, lost, state):
    remote_migrations(write_migration, 5)
    release = hold(fake, is_group, lost)
    stopped_at, (code, out, err) = _signal_while_group_held(fake, project, release, "--json")
    assert code == 130, (code, err)
    line = interrupted_line(err)
    assert "0001_r0001 to 0005_r0005 (one batch)" in line, line
    assert "wholly or not at all" in line and "status" in line, line
    count = APPLIED_COUNT.search(line)
    assert count and int(count.group(1)) == 0, line
    payload = json.loads(out)
    assert [(o["version"], o["result"]) for o in payload["outcomes"]] == [
        (v, "unknown") for v in versions(5)]
    # the lost batch was the last request: no read, no resend
    assert [r for r in fake.requests if r["time"] > stopped_at] == []
    assert fake.requests[-1]["action"] is lost
    code, out, err = run_subprocess(["status", "--d1-remote", "--json"], env=remote_env(fake))
    assert code == 0, err
    states = {m["version"]: m["state"] for m in json.loads(out)["migrations"]}
    assert states == {v: state for v in versions(5)}
    assert tracked(fake) == (versions(5) if state == "applied" else [])


@pytest.mark.parametrize("args, expected", [
    pytest.param([], [versions(5)], id="grouped"),
    pytest.param(["--commit-each"], [[v] for v in versions(5)], id="commit-each"),
])
def test_commit_each_sends_one_batch_per_migration(write_migration, fake, remote_cli, args,
                                                   expected):
    remote_migrations(write_migration, 5)
    code, out, err = remote_cli("apply", *args)
    assert (code, err) == (0, "")
    assert migration_batches(fake) == expected
    assert tracked(fake) == versions(5)
    assert event_counts(fake) == {v: 1 for v in versions(5)}


def test_the_record_is_created_even_when_the_first_batch_fails(write_migration, fake,
                                                               remote_cli):
    """The record's tables go in the first migration's batch; when that
    batch fails, they are created alone (as wrangler's rows are synced)."""
    write_migration("0001_bad.sql", "CREATE TABLE a (x);\nINSERT INTO nosuch VALUES (1);\n")
    code, out, err = remote_cli("apply")
    assert code == 1, err
    assert "0001_bad" in err and "statement 2" in err, err
    assert fake.has_table("schema_migrations") and fake.tracking() == []
    assert not fake.has_table("a")


def test_a_migration_that_needs_a_schema_read_goes_alone(write_migration, fake, remote_cli):
    """A DROP or DELETE needs the row-loss guard's read of the schema as the
    migrations before it left it: the group ends before it, and it goes alone."""
    remote_migrations(write_migration, 6)
    write_migration("0003_r0003.sql", "DROP TABLE r0002;\n")
    write_migration("0005_r0005.sql", "DELETE FROM events WHERE what = '0004';\n")
    code, out, err = remote_cli("apply")
    assert (code, err) == (0, "")
    assert migration_batches(fake) == [["0001", "0002"], ["0003"], ["0004"], ["0005"],
                                       ["0006"]]
    assert tracked(fake) == versions(6)
    assert not fake.has_table("r0002") and fake.has_table("r0004")
    assert event_counts(fake) == {"0001": 1, "0002": 1, "0006": 1}
