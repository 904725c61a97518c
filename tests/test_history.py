"""The history, baseline and accept: an append-only schema_migrations_history
table (one row per apply, failure, interruption, rollback, baseline, accept
and D1 bookmark, with who did it), the `history` command (filters, --json,
--stats), `baseline` (recording migrations a database already has, refused
when its schema is not theirs) and `accept` (an edited applied file taken
on purpose, with the reason kept).  Locally, on a wrangler local D1 file and
on --d1-remote (the in-process fake of D1's API)."""
from __future__ import annotations

import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from contextlib import closing
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import pytest

from conftest import ENV_CLEARED, TOOL_PATH
from dbhelpers import create_db, expected_checksum, query, sqlite_error, tables, tracking_rows
from fake_d1 import FakeD1

sys.path.insert(0, str(Path(__file__).resolve().parent / "fixtures" / "wrangler"))
from wrangler_cli import DATABASE_ID, local_database  # noqa: E402

DB = "trading_brain.db"
HISTORY = "schema_migrations_history"
# The layout the manual shows (MIGRATION_SYSTEM.md, "The history").
COLUMNS = ["id", "run", "event", "outcome", "version", "name", "checksum", "started_at",
           "duration_ms", "statement", "line", "error", "detail", "os_user", "host",
           "ci_repository", "ci_run", "ci_commit", "ci_actor"]
GITHUB = ("GITHUB_REPOSITORY", "GITHUB_RUN_ID", "GITHUB_SHA", "GITHUB_ACTOR")
STARTED_AT = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z"

A = "CREATE TABLE a (id INTEGER PRIMARY KEY, name TEXT);\n"
B = "CREATE TABLE b (id INTEGER PRIMARY KEY, a_id INTEGER REFERENCES a (id));\n" \
    "CREATE INDEX b_a ON b (a_id);\n"
C = "CREATE TABLE c (id INTEGER);\n"
# Its second statement starts on line 5 and fails: the table it names is not there.
B_FAILING = ("-- 0002: a table, then an insert into nothing\n"
             "CREATE TABLE b (id INTEGER);\n"
             "\n"
             "-- the statement that fails starts on the next line\n"
             "INSERT INTO\n"
             "  nowhere VALUES (1);\n")
FAILING_LINE = 5


# --------------------------------------------------------------------------
# Helpers


def history(db: Path) -> List[Dict[str, object]]:
    """Every row of the history as a dict, oldest first ([] without the table)."""
    if HISTORY not in [r[0] for r in query(db, "SELECT name FROM sqlite_master")]:
        return []
    return [dict(zip(COLUMNS, row)) for row in query(db, f"SELECT * FROM {HISTORY} ORDER BY id")]


def events(db: Path) -> List[Tuple[object, object, object]]:
    """(event, outcome, version) of each row, oldest first."""
    return [(r["event"], r["outcome"], r["version"]) for r in history(db)]


def one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one error line:\n{err}"
    assert lines[0].startswith("Error: "), lines[0]
    return lines[0]


def listing(folder: Path) -> Dict[str, bytes]:
    """Every file below folder with its bytes (what 'nothing was written' compares)."""
    return {str(p.relative_to(folder)): p.read_bytes()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def history_json(run_cli, *argv: str) -> List[dict]:
    code, out, err = run_cli(["history", "--json", *argv])
    assert code == 0, err
    return json.loads(out)["events"]


def status_json(run_cli, *argv: str) -> Dict[str, dict]:
    code, out, err = run_cli(["status", "--json", *argv])
    assert code == 0, err
    return {m["name"]: m for m in json.loads(out)["migrations"]}


def status_line(out: str, name: str) -> str:
    lines = [line for line in out.splitlines() if re.search(rf"\b{re.escape(name)}\b", line)]
    assert len(lines) == 1, out
    return lines[0]


def median(values: Sequence[float]) -> float:
    ordered, middle = sorted(values), len(values) // 2
    return ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2


def tool_env() -> Dict[str, str]:
    """The environment run_subprocess gives the tool, for Popen-based runs."""
    env = {k: v for k, v in os.environ.items() if k not in ENV_CLEARED}
    env["PYTHONIOENCODING"] = "utf-8"
    return env


@pytest.fixture
def a_b_c(write_migration) -> None:
    """0001_a, 0002_b and 0003_c, each creating its table(s)."""
    write_migration("0001_a.sql", A)
    write_migration("0002_b.sql", B)
    write_migration("0003_c.sql", C)


def hand_built(db: Path, script: str) -> None:
    """A database made without the tool (another tool, or by hand)."""
    create_db(db, script + "INSERT INTO a (name) VALUES ('kept');")


# --------------------------------------------------------------------------
# What an apply and a rollback leave


def test_failed_apply_leaves_failure_row_and_no_tracking_row(project, run_cli, write_migration):
    """A failure's row tells the statement, line and error; the failed
    migration leaves no tracking row and nothing of its statements; the
    migration before it keeps its own row."""
    write_migration("0001_a.sql", A)
    path = write_migration("0002_b.sql", B_FAILING)
    code, out, err = run_cli(["apply"])
    assert code == 1
    assert f"statement 2, line {FAILING_LINE}" in one_error_line(err)
    db = project / DB

    assert [r[1] for r in query(db, f"SELECT * FROM pragma_table_info('{HISTORY}')")] == COLUMNS
    rows = history(db)
    assert [(r["event"], r["outcome"], r["version"], r["name"]) for r in rows] == [
        ("apply", "succeeded", "0001", "0001_a"), ("apply", "failed", "0002", "0002_b")]
    ok, failed = rows
    assert (ok["statement"], ok["line"], ok["error"]) == (None, None, None)
    assert ok["checksum"] == expected_checksum(A.encode())
    assert failed["statement"] == 2 and failed["line"] == FAILING_LINE
    assert failed["error"] == sqlite_error(["CREATE TABLE b (id INTEGER)"],
                                           "INSERT INTO nowhere VALUES (1)")
    assert failed["checksum"] == expected_checksum(path.read_bytes())
    assert failed["detail"] is None
    for row in rows:
        assert re.fullmatch(STARTED_AT, str(row["started_at"])), row
        assert isinstance(row["duration_ms"], float) and row["duration_ms"] >= 0
    assert ok["run"] == failed["run"] and re.fullmatch(r"[0-9a-f]{16}", str(ok["run"]))

    assert [r[0] for r in tracking_rows(db)] == ["0001"]
    assert "b" not in tables(db)  # the failure's row came after the rollback


def test_rollback_row_beside_apply_row(project, run_cli, write_migration):
    """A rollback adds its own row; the apply's row stays (rows are never
    changed or deleted), and applying again adds a third."""
    write_migration("0001_a.sql", A)
    write_migration("0002_c.sql", C)
    write_migration("0002_c.sql", "DROP TABLE c;\n", folder="migrations/down")
    db = project / DB
    assert run_cli(["apply"])[0] == 0
    applied = history(db)

    code, out, err = run_cli(["rollback", "--version", "0002"])
    assert code == 0, err
    rows = history(db)
    assert rows[:2] == applied  # untouched, id and all
    assert len(rows) == 3
    row = rows[2]
    assert (row["event"], row["outcome"], row["version"], row["name"]) == (
        "rollback", "succeeded", "0002", "0002_c")
    assert row["checksum"] == expected_checksum(C.encode())
    assert row["run"] != applied[0]["run"]  # another run of the tool
    assert [r[0] for r in tracking_rows(db)] == ["0001"] and "c" not in tables(db)

    assert run_cli(["apply"])[0] == 0
    assert history(db)[:3] == rows
    assert events(db) == [("apply", "succeeded", "0001"), ("apply", "succeeded", "0002"),
                          ("rollback", "succeeded", "0002"), ("apply", "succeeded", "0002")]


def test_failed_rollback_leaves_failed_row_and_the_migration_applied(project, run_cli,
                                                                      write_migration):
    """A down script that fails leaves a rollback/failed row with its
    statement and line; the migration stays applied."""
    write_migration("0001_c.sql", C)
    write_migration("0001_c.sql", "DROP TABLE c;\nDROP TABLE nothing_here;\n",
                    folder="migrations/down")
    assert run_cli(["apply"])[0] == 0
    code, out, err = run_cli(["rollback"])
    assert code == 1
    one_error_line(err)
    db = project / DB
    last = history(db)[-1]
    assert (last["event"], last["outcome"], last["version"]) == ("rollback", "failed", "0001")
    assert (last["statement"], last["line"]) == (2, 2)
    assert "nothing_here" in str(last["error"])
    assert [r[0] for r in tracking_rows(db)] == ["0001"] and "c" in tables(db)


def test_record_only_rollback_leaves_the_schema_even_with_a_down_script(project, run_cli,
                                                                         write_migration):
    """--record-only removes the record alone, and says so in the history,
    also when the migration has a down script: it must not run it."""
    write_migration("0001_c.sql", C)
    write_migration("0001_c.sql", "DROP TABLE c;\n", folder="migrations/down")
    assert run_cli(["apply"])[0] == 0
    code, out, err = run_cli(["rollback", "--record-only"])
    assert code == 0, err
    db = project / DB
    assert tracking_rows(db) == []
    assert events(db)[-1] == ("rollback", "succeeded", "0001")
    assert "c" in tables(db), "--record-only ran the down script"


def test_refused_runs_leave_no_row(project, run_cli, write_migration):
    """A run refused before anything ran (a modified migration, a file
    that does not split, a dry run that would fail) writes no row."""
    path = write_migration("0001_a.sql", A)
    assert run_cli(["apply"])[0] == 0
    db = project / DB
    before = history(db)

    path.write_text(A + "-- edited\n", encoding="utf-8")
    write_migration("0002_c.sql", C)
    assert run_cli(["apply"])[0] == 1
    path.write_text(A, encoding="utf-8")
    write_migration("0002_c.sql", "CREATE TABLE c (id INTEGER);\nINSERT INTO c VALUES ('x\n")
    assert run_cli(["apply"])[0] == 1
    write_migration("0002_c.sql", "INSERT INTO nowhere VALUES (1);\n")
    assert run_cli(["apply", "--dry-run"])[0] == 1
    assert history(db) == before


def test_history_json_and_stats_on_scripted_sequence(project, run_cli, write_migration):
    """history --json lists every event newest first; --stats counts
    applies, failures and rollbacks per migration and overall, with the
    success rate and the median and slowest apply."""
    write_migration("0001_a.sql", A)
    write_migration("0002_b.sql", B_FAILING)
    assert run_cli(["apply"])[0] == 1                      # 0001 ok, 0002 fails
    write_migration("0002_b.sql", "CREATE TABLE b (id INTEGER);\n")  # never applied: may change
    write_migration("0003_c.sql", "INSERT INTO nowhere VALUES (1);\n")
    assert run_cli(["apply"])[0] == 1                      # 0002 ok, 0003 fails
    write_migration("0003_c.sql", C)
    assert run_cli(["apply"])[0] == 0                      # 0003 ok
    assert run_cli(["rollback", "--version", "0003"])[0] == 0
    assert run_cli(["rollback", "--version", "0002"])[0] == 0
    assert run_cli(["apply"])[0] == 0                      # 0002 and 0003 again
    write_migration("0003_c.sql", "DROP TABLE nothing_here;\n", folder="migrations/down")
    assert run_cli(["rollback", "--version", "0003"])[0] == 1  # its down script fails

    listed = history_json(run_cli)
    assert [(e["event"], e["outcome"], e["version"]) for e in listed] == [
        ("rollback", "failed", "0003"),
        ("apply", "succeeded", "0003"), ("apply", "succeeded", "0002"),
        ("rollback", "succeeded", "0002"), ("rollback", "succeeded", "0003"),
        ("apply", "succeeded", "0003"), ("apply", "failed", "0003"),
        ("apply", "succeeded", "0002"), ("apply", "failed", "0002"),
        ("apply", "succeeded", "0001")]
    assert [list(e) for e in listed] == [COLUMNS] * len(listed)
    assert [e["id"] for e in listed] == sorted((e["id"] for e in listed), reverse=True)
    assert listed == [dict(r) for r in reversed(history(project / DB))]

    code, out, err = run_cli(["history", "--stats", "--json"])
    assert code == 0, err
    stats = json.loads(out)
    counts = {m["name"]: (m["applies"], m["failures"], m["interruptions"], m["rollbacks"])
              for m in stats["migrations"]}
    assert counts == {"0001_a": (1, 0, 0, 0), "0002_b": (2, 1, 0, 1), "0003_c": (2, 1, 0, 1)}
    rates = {m["name"]: m["success_rate"] for m in stats["migrations"]}
    assert rates == {"0001_a": 1.0, "0002_b": pytest.approx(2 / 3),
                     "0003_c": pytest.approx(2 / 3)}
    overall = stats["overall"]
    assert (overall["applies"], overall["failures"], overall["rollbacks"]) == (5, 2, 2)
    assert overall["success_rate"] == pytest.approx(5 / 7)
    for m in stats["migrations"] + [overall]:
        durations = [e["duration_ms"] for e in listed if e["event"] == "apply"
                     and e["outcome"] == "succeeded" and m["name"] in (None, e["name"])]
        assert m["median_ms"] == pytest.approx(median(durations))
        assert m["slowest_ms"] == pytest.approx(max(durations))

    code, out, err = run_cli(["history", "--stats"])
    assert code == 0, err
    assert re.search(r"^0002_b\s+2\s+1\s+1\s+67%", out, re.M), out
    assert re.search(r"^\(all\)\s+5\s+2\s+2\s+71%", out, re.M), out


def test_stats_go_to_the_step_summary(project, run_cli, write_migration, monkeypatch):
    """In GitHub Actions, history --stats also appends its table to the
    job's summary."""
    write_migration("0001_a.sql", A)
    assert run_cli(["apply"])[0] == 0
    summary = project.parent / "summary.md"
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(summary))
    code, out, err = run_cli(["history", "--stats"])
    assert code == 0, err
    text = summary.read_text(encoding="utf-8")
    assert "| 0001_a | 1 | 0 | 0 | 100% |" in text.replace("  ", " "), text


# --------------------------------------------------------------------------
# Concurrency and interruptions


def test_eight_concurrent_appliers_each_event_once(project, run_cli, write_migration):
    """Eight applies at once on one database: each of 12 migrations is
    applied once and has exactly one history row; every run exits 0."""
    for n in range(1, 13):
        write_migration(f"{n:04d}_t{n}.sql",
                        f"CREATE TABLE t{n} (i INTEGER);\n"
                        f"INSERT INTO t{n} WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL"
                        f" SELECT i + 1 FROM c WHERE i < 20000) SELECT i FROM c;\n")
    db = project / DB
    assert run_cli(["init", "-q"])[0] == 0
    # A read transaction holds every commit back until all eight have started.
    gate = sqlite3.connect(str(db), isolation_level=None)
    procs: List[subprocess.Popen] = []
    try:
        gate.execute("BEGIN")
        gate.execute("SELECT count(*) FROM sqlite_master").fetchone()
        for _ in range(8):
            procs.append(subprocess.Popen([sys.executable, str(TOOL_PATH), "apply", "-q"],
                                          cwd=str(project), env=tool_env(),
                                          stdout=subprocess.PIPE, stderr=subprocess.PIPE))
        time.sleep(1.0)
        gate.execute("ROLLBACK")
        results = [(p.communicate(timeout=60), p.returncode) for p in procs]
    finally:
        gate.close()
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.communicate()
    # The others waited for the lock, then found the work done: no error.
    assert [(code, err) for (_, err), code in results] == [(0, b"")] * 8, results

    versions = [f"{n:04d}" for n in range(1, 13)]
    assert [r[0] for r in tracking_rows(db)] == versions
    assert events(db) == [("apply", "succeeded", v) for v in versions]
    assert [r[0] for r in query(db, "SELECT count(*) FROM t12")] == [20000]


@pytest.mark.skipif(os.name != "posix", reason="signals")
def test_interrupted_apply_leaves_an_interrupted_row(project, write_migration):
    """Ctrl-C in a long statement rolls the migration back and leaves an
    apply/interrupted row for it, after the rollback."""
    write_migration("0001_a.sql", A)
    write_migration("0002_long.sql",
                    "CREATE TABLE big (i INTEGER);\n"
                    "INSERT INTO big WITH RECURSIVE c(i) AS\n"
                    "  (SELECT 1 UNION ALL SELECT i + 1 FROM c WHERE i < 3000000000)\n"
                    "  SELECT i FROM c WHERE i % 100 = 0;\n")
    db = project / DB
    proc = subprocess.Popen([sys.executable, str(TOOL_PATH), "apply"], cwd=str(project),
                            env=tool_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        # The journal appears with the run's first write; 0001 is quick, so
        # 0.7 s later 0002's last statement is running (for minutes, unless
        # interrupted).
        journal = Path(str(db) + "-journal")
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and proc.poll() is None and not journal.exists():
            time.sleep(0.01)
        time.sleep(0.7)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=15)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 130, err
    assert [r[0] for r in tracking_rows(db)] == ["0001"] and "big" not in tables(db)
    assert events(db) == [("apply", "succeeded", "0001"), ("apply", "interrupted", "0002")]
    assert history(db)[-1]["duration_ms"] >= 0


# --------------------------------------------------------------------------
# baseline


def test_baseline_on_hand_built_database_then_apply_runs_later_ones(project, run_cli, a_b_c):
    """baseline --version records the migrations up to it without running
    them (tracking rows and baseline rows); status marks them; apply then
    runs only the later ones."""
    db = project / DB
    hand_built(db, A + B)
    code, out, err = run_cli(["baseline", "--version", "0002", "--json"])
    assert code == 0, err
    assert json.loads(out)["baselined"] == ["0001_a", "0002_b"]

    migrations = project / "migrations"
    assert tracking_rows(db) == [
        ("0001", "0001_a", expected_checksum((migrations / "0001_a.sql").read_bytes())),
        ("0002", "0002_b", expected_checksum((migrations / "0002_b.sql").read_bytes()))]
    rows = history(db)
    assert [(r["event"], r["outcome"], r["version"], r["duration_ms"]) for r in rows] == [
        ("baseline", "succeeded", "0001", None), ("baseline", "succeeded", "0002", None)]
    assert rows[0]["checksum"] == tracking_rows(db)[0][2]

    code, out, err = run_cli(["status"])
    assert code == 0, err
    for name in ("0001_a", "0002_b"):
        assert "(baseline: recorded, not run)" in status_line(out, name)
    assert "baseline" not in status_line(out, "0003_c") and "pending" in status_line(out, "0003_c")
    states = status_json(run_cli)
    assert [(n, m["state"], m["baseline"]) for n, m in states.items()] == [
        ("0001_a", "applied", True), ("0002_b", "applied", True), ("0003_c", "pending", False)]

    # 0001's CREATE TABLE a would fail if it ran again.
    code, out, err = run_cli(["apply", "--json"])
    assert code == 0, err
    assert [m["name"] for m in json.loads(out)["applied"]] == ["0003_c"]
    assert events(db)[-1] == ("apply", "succeeded", "0003")
    assert query(db, "SELECT name FROM a") == [("kept",)]
    assert status_json(run_cli)["0001_a"]["baseline"] is True  # the mark stays


def test_baseline_refuses_when_a_table_is_missing(project, run_cli, a_b_c):
    """A database lacking a table the migrations make: baseline names it in
    one error line and records nothing (the file is byte for byte the same);
    --force records them anyway."""
    db = project / DB
    hand_built(db, A + "CREATE TABLE c (id INTEGER);\n")  # no b, no b_a
    before = listing(project)
    code, out, err = run_cli(["baseline"])
    assert code == 1
    line = one_error_line(err)
    assert "table b: missing" in line and "index b_a: missing" in line and "--force" in line
    assert listing(project) == before
    assert tables(db) == ["a", "c"] and history(db) == []

    code, out, err = run_cli(["baseline", "--force"])
    assert code == 0, err
    assert [r[0] for r in tracking_rows(db)] == ["0001", "0002", "0003"]
    assert events(db) == [("baseline", "succeeded", v) for v in ("0001", "0002", "0003")]
    assert len({r["run"] for r in history(db)}) == 1


def test_baseline_refuses_a_table_no_migration_makes(project, run_cli, a_b_c):
    """An extra table is a difference too: a baseline must match exactly."""
    db = project / DB
    hand_built(db, A + "CREATE TABLE stray (x);\n")
    before = listing(project)
    code, out, err = run_cli(["baseline", "--version", "0001"])
    assert code == 1
    assert "stray" in one_error_line(err)
    assert listing(project) == before


# --------------------------------------------------------------------------
# accept


def test_accept_unblocks_apply_and_keeps_reason(project, run_cli, write_migration):
    """An edited applied file blocks apply, which names accept; accept
    records the new checksum and keeps the reason in the history's
    detail; apply and status are clean again."""
    path = write_migration("0001_a.sql", A)
    assert run_cli(["apply"])[0] == 0
    db = project / DB
    old = expected_checksum(path.read_bytes())
    path.write_text("-- Reviewed: fine as it is.\n" + A, encoding="utf-8")
    new = expected_checksum(path.read_bytes())
    write_migration("0002_c.sql", C)

    code, out, err = run_cli(["apply"])
    assert code == 1
    line = one_error_line(err)
    assert "0001_a" in line and "accept VERSION --reason" in line
    assert [r[0] for r in tracking_rows(db)] == ["0001"]

    code, out, err = run_cli(["accept", "0001", "--reason", "  comment fixed  ", "--json"])
    assert code == 0, err
    report = json.loads(out)
    assert report["accepted"] == {"version": "0001", "name": "0001_a"}
    assert (report["previous_checksum"], report["checksum"]) == (old, new)
    assert report["schema_differences"] == []
    assert tracking_rows(db)[0] == ("0001", "0001_a", new)
    row = history(db)[-1]
    assert (row["event"], row["outcome"], row["version"], row["name"]) == (
        "accept", "succeeded", "0001", "0001_a")
    assert row["detail"] == "comment fixed" and row["checksum"] == new

    code, out, err = run_cli(["history", "--event", "accept"])
    assert code == 0, err
    assert len(out.splitlines()) == 1 and "0001_a: comment fixed" in out

    assert run_cli(["apply"])[0] == 0
    code, out, err = run_cli(["status", "--exit-code"])
    assert code == 0, out + err
    assert "Modified: 0" in out and "Drift" not in out


def test_accept_says_what_the_edit_does_to_the_schema(project, run_cli, write_migration):
    """An edit that changes what the migration makes is accepted with the
    difference named, and status then reports it as drift."""
    path = write_migration("0001_a.sql", A)
    assert run_cli(["apply"])[0] == 0
    path.write_text(A + "CREATE INDEX a_name ON a (name);\n", encoding="utf-8")
    code, out, err = run_cli(["accept", "0001_a.sql", "--reason", "index added", "--json"])
    assert code == 0, err
    assert any("a_name" in d for d in json.loads(out)["schema_differences"])
    code, out, err = run_cli(["status", "--exit-code"])
    assert code == 1
    assert "Modified: 0" in out and "a_name" in out


# --------------------------------------------------------------------------
# Who


def test_github_values_land_in_history(project, run_cli, write_migration, monkeypatch):
    """GITHUB_REPOSITORY, GITHUB_RUN_ID, GITHUB_SHA and GITHUB_ACTOR go
    into every row; the OS user and host are always there."""
    values = {"GITHUB_REPOSITORY": "acme/trading-brain", "GITHUB_RUN_ID": "987654321",
              "GITHUB_SHA": "0123456789abcdef0123456789abcdef01234567",
              "GITHUB_ACTOR": "octocat"}
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("LOGNAME", "deployer")
    write_migration("0001_a.sql", A)
    write_migration("0002_b.sql", B_FAILING)
    assert run_cli(["apply"])[0] == 1
    db = project / DB
    rows = history(db)
    assert len(rows) == 2
    for row in rows:
        assert (row["ci_repository"], row["ci_run"], row["ci_commit"], row["ci_actor"]) == (
            values["GITHUB_REPOSITORY"], values["GITHUB_RUN_ID"], values["GITHUB_SHA"],
            values["GITHUB_ACTOR"])
        assert row["os_user"] == "deployer"
        assert isinstance(row["host"], str) and row["host"]
    code, out, err = run_cli(["history", "--limit", "1"])
    assert code == 0, err
    assert "acme/trading-brain" in out and "987654321" in out and "octocat" in out

    # Outside GitHub Actions (or set but empty): nothing made up.
    for name in GITHUB:
        monkeypatch.delenv(name)
    monkeypatch.setenv("GITHUB_ACTOR", "")
    write_migration("0002_b.sql", C)
    assert run_cli(["apply"])[0] == 0
    last = history(db)[-1]
    assert [last[c] for c in ("ci_repository", "ci_run", "ci_commit", "ci_actor")] == [None] * 4
    assert last["os_user"] == "deployer" and last["host"]


# --------------------------------------------------------------------------
# Read-only commands


def test_nothing_written_by_dry_run_status_or_history(project, run_cli, write_migration,
                                                      tmp_path):
    """apply --dry-run, rollback --dry-run, status and history (with its
    stats) leave the database byte for byte the same; on a missing
    database they create nothing."""
    write_migration("0001_a.sql", A)
    write_migration("0001_a.sql", "DROP TABLE a;\n", folder="migrations/down")
    assert run_cli(["apply"])[0] == 0
    write_migration("0002_c.sql", C)
    before = listing(project)
    for argv in (["apply", "--dry-run"], ["rollback", "--dry-run"], ["status"],
                 ["status", "--json"], ["history"], ["history", "--json"],
                 ["history", "--stats"], ["history", "--stats", "--json"],
                 ["history", "--since", "1d", "--outcome", "failed"]):
        code, out, err = run_cli(argv)
        assert code == 0, (argv, err)
        assert listing(project) == before, argv
    write_migration("0002_c.sql", "INSERT INTO nowhere VALUES (1);\n")
    before = listing(project)
    assert run_cli(["apply", "--dry-run"])[0] == 1
    assert listing(project) == before

    missing = tmp_path / "absent" / "none.db"
    missing.parent.mkdir()
    for argv, expected in ((["status"], 0), (["history"], 0), (["history", "--stats"], 0),
                           (["history", "--json"], 0), (["apply", "--dry-run"], 1)):
        code, out, err = run_cli(argv + ["--db-path", str(missing)])
        assert code == expected, (argv, err)
        assert list(missing.parent.iterdir()) == [], argv
    code, out, err = run_cli(["history", "--db-path", str(missing)])
    assert code == 0 and "No history" in out


def test_history_on_a_database_without_a_history_says_so(project, run_cli, tmp_path):
    """A database the tool never wrote to: history says so, and writes nothing."""
    db = tmp_path / "other.db"
    create_db(db)
    before = db.read_bytes()
    code, out, err = run_cli(["history", "--db-path", str(db)])
    assert code == 0, err
    assert out.startswith("No history in ")
    code, out, err = run_cli(["history", "--db-path", str(db), "--json"])
    assert code == 0 and json.loads(out)["events"] == []
    assert db.read_bytes() == before


# --------------------------------------------------------------------------
# Filters


def test_history_filters(project, run_cli, write_migration):
    """--version (any form rollback takes), --event, --outcome, --since (a
    UTC date or time, or an age) and --limit, alone and together."""
    write_migration("0001_a.sql", A)
    write_migration("0002_b.sql", B_FAILING)
    assert run_cli(["apply"])[0] == 1
    write_migration("0002_b.sql", "CREATE TABLE b (id INTEGER);\n")
    assert run_cli(["apply"])[0] == 0
    assert run_cli(["rollback"])[0] == 0
    db = project / DB
    # Ids 1-4: apply 0001, failed 0002, apply 0002, rollback 0002.  Move the
    # first two into the past, as if run long ago.
    with closing(sqlite3.connect(str(db))) as conn:
        conn.execute(f"UPDATE {HISTORY} SET started_at = '2001-02-03T04:05:06.007Z' WHERE id = 1")
        conn.execute(f"UPDATE {HISTORY} SET started_at = '2001-03-01T00:00:00.000Z' WHERE id = 2")
        conn.commit()

    def ids(*argv: str) -> List[int]:
        return [e["id"] for e in history_json(run_cli, *argv)]

    assert ids() == [4, 3, 2, 1]
    for form in ("0002", "2", "0002_b", "0002_b.sql"):
        assert ids("--version", form) == [4, 3, 2], form
    assert ids("--version", "0001") == [1]
    assert ids("--version", "0009") == []
    assert ids("--event", "rollback") == [4]
    assert ids("--event", "apply") == [3, 2, 1]
    assert ids("--event", "baseline") == []
    assert ids("--outcome", "failed") == [2]
    assert ids("--outcome", "succeeded") == [4, 3, 1]
    assert ids("--since", "2001-02-03") == [4, 3, 2, 1]
    assert ids("--since", "2001-02-04") == [4, 3, 2]
    assert ids("--since", "2001-02-03T04:05") == [4, 3, 2, 1]
    assert ids("--since", "2001-02-03T04:06") == [4, 3, 2]
    assert ids("--since", "2001-03-01T00:00:00Z") == [4, 3, 2]
    assert ids("--since", "2001-03-01 00:00:01") == [4, 3]
    assert ids("--since", "7d") == [4, 3]
    assert ids("--since", "90m") == [4, 3]
    assert ids("--since", "20000d") == [4, 3, 2, 1]  # back to 1972
    assert ids("--limit", "1") == [4]
    assert ids("--limit", "3") == [4, 3, 2]
    assert ids("--limit", "99") == [4, 3, 2, 1]
    assert ids("--version", "0002", "--event", "apply", "--limit", "1") == [3]
    assert ids("--version", "0002", "--outcome", "failed", "--since", "1d") == []

    code, out, err = run_cli(["history", "--outcome", "failed"])
    assert code == 0, err
    assert out.count("\n") == 1 and "statement 2, line 5" in out
    code, out, err = run_cli(["history", "--stats", "--json", "--version", "0001"])
    assert code == 0, err
    assert [m["name"] for m in json.loads(out)["migrations"]] == ["0001_a"]


# --------------------------------------------------------------------------
# Bad input


def edit_0001(project: Path) -> None:
    path = project / "migrations" / "0001_a.sql"
    path.write_text(A + "-- edited\n", encoding="utf-8")


def drop_0002_file(project: Path) -> None:
    (project / "migrations" / "0002_b.sql").unlink()


def drop_0003_file(project: Path) -> None:
    (project / "migrations" / "0003_c.sql").unlink()


@pytest.mark.parametrize("argv,exit_code,words,prepare", [
    (["history", "--limit", "0"], 2, "--limit", None),
    (["history", "--limit", "-3"], 2, "--limit", None),
    (["history", "--since", "nonsense"], 2, "--since", None),
    (["history", "--since", "2026-13-45"], 2, "--since", None),
    (["baseline", "--version", "9999"], 1, "9999 not found", None),
    (["baseline", "--version", "0002"], 1, "already applied", None),
    (["baseline"], 1, "already applied", drop_0003_file),
    (["accept", "0003", "--reason", "x"], 1, "not applied", edit_0001),
    (["accept", "9999", "--reason", "x"], 1, "9999 not found", edit_0001),
    (["accept", "0002", "--reason", "x"], 1, "not modified", edit_0001),
    (["accept", "0002", "--reason", "x"], 1, "gone", drop_0002_file),
    (["accept", "0001", "--reason", ""], 2, "--reason", edit_0001),
    (["accept", "0001", "--reason", "   "], 2, "--reason", edit_0001),
], ids=["limit-0", "limit-negative", "since-nonsense", "since-impossible-date",
        "baseline-unknown", "baseline-applied", "baseline-all-applied", "accept-pending",
        "accept-unknown", "accept-unmodified", "accept-file-gone", "accept-empty-reason",
        "accept-blank-reason"])
def test_bad_input_is_one_line_and_changes_nothing(project, run_cli, write_migration, argv,
                                                   exit_code, words,
                                                   prepare: Optional[Callable]):
    """Each refusal: its exit code (2 for a bad value, 1 for a refused
    request), one error line that names the problem, nothing written."""
    write_migration("0001_a.sql", A)
    write_migration("0002_b.sql", B)
    assert run_cli(["apply"])[0] == 0
    write_migration("0003_c.sql", C)
    if prepare is not None:
        prepare(project)
    before = listing(project)
    code, out, err = run_cli(argv)
    assert code == exit_code, (out, err)
    assert words in one_error_line(err)
    assert listing(project) == before


# --------------------------------------------------------------------------
# A history the tool cannot trust


# The tracking table as the manual shows it.
TRACKING_DDL = ("CREATE TABLE schema_migrations (version TEXT PRIMARY KEY NOT NULL, name TEXT"
                " NOT NULL, checksum TEXT NOT NULL, applied_at TEXT NOT NULL, duration_ms"
                " REAL NOT NULL)")
FOREIGN_HISTORY = (f"CREATE TABLE {HISTORY} (id INTEGER PRIMARY KEY, what TEXT, at TEXT);"
                   f"INSERT INTO {HISTORY} (what, at) VALUES ('deployed', 'yesterday');")


@pytest.mark.parametrize("argv", [["apply"], ["history"], ["history", "--stats"], ["status"],
                                  ["baseline", "--force"], ["accept", "0001", "--reason", "x"],
                                  ["rollback", "--record-only"], ["init"]],
                         ids=lambda argv: "-".join(a.strip("-") for a in argv[:2]))
def test_history_table_of_another_layout_is_refused_and_untouched(project, run_cli,
                                                                  write_migration, argv):
    """A schema_migrations_history made by someone else: every command
    stops with one line naming it, and the file stays byte for byte."""
    write_migration("0001_a.sql", A)
    db = project / DB
    create_db(db, A + FOREIGN_HISTORY)
    if argv[0] in ("accept", "rollback"):
        with closing(sqlite3.connect(str(db))) as conn:  # a tracking row to act on
            conn.execute(TRACKING_DDL)
            conn.execute("INSERT INTO schema_migrations VALUES ('0001', '0001_a', ?, "
                         "'2026-01-01T00:00:00Z', 1.0)", ("0" * 64,))
            conn.commit()
    before = listing(project)
    code, out, err = run_cli(argv)
    assert code == 1, (out, err)
    line = one_error_line(err)
    assert HISTORY in line and "(id, what, at)" in line and "rename it" in line
    assert listing(project) == before


@pytest.mark.parametrize("forged", [
    "event = 'deploy'", "outcome = 'maybe'", "run = ''", "started_at = ''",
    "duration_ms = -1", "statement = 'two'"])
def test_history_row_the_tool_cannot_have_written_is_reported_and_kept(project, run_cli,
                                                                       write_migration, forged):
    """A row the tool cannot have written: history refuses with one line
    naming it; the row is never rewritten or deleted, whatever runs later."""
    write_migration("0001_a.sql", A)
    assert run_cli(["apply"])[0] == 0
    db = project / DB
    with closing(sqlite3.connect(str(db))) as conn:
        conn.execute(f"UPDATE {HISTORY} SET {forged} WHERE id = 1")
        conn.commit()
    bad = query(db, f"SELECT * FROM {HISTORY} WHERE id = 1")
    before = listing(project)
    for argv in (["history"], ["history", "--stats", "--json"]):
        code, out, err = run_cli(argv)
        assert code == 1, (argv, out, err)
        line = one_error_line(err)
        assert HISTORY in line and "cannot have written" in line
        assert listing(project) == before

    write_migration("0002_c.sql", C)
    run_cli(["apply"])
    run_cli(["rollback"])
    assert query(db, f"SELECT * FROM {HISTORY} WHERE id = 1") == bad


# --------------------------------------------------------------------------
# status


def test_status_tells_of_a_failed_last_attempt(project, run_cli, write_migration):
    """A pending migration whose last attempt failed: status says when,
    where and why, and status --json gives that row as last_failure; once
    applied (or pending again after a rollback) it no longer does."""
    write_migration("0001_a.sql", A)
    write_migration("0002_b.sql", B_FAILING)
    assert run_cli(["apply"])[0] == 1
    failed = history_json(run_cli, "--outcome", "failed")[0]

    code, out, err = run_cli(["status"])
    assert code == 0, err
    error = sqlite_error(["CREATE TABLE b (id INTEGER)"], "INSERT INTO nowhere VALUES (1)")
    assert status_line(out, "0002_b").endswith(
        f"0002_b  pending; its last attempt failed {failed['started_at']}: {error}"
        f" (statement 2, line {FAILING_LINE})")
    assert "failed" not in status_line(out, "0001_a")
    states = status_json(run_cli)
    assert states["0002_b"]["last_failure"] == failed
    assert states["0001_a"]["last_failure"] is None

    write_migration("0002_b.sql", "CREATE TABLE b (id INTEGER);\n")
    assert run_cli(["apply"])[0] == 0
    assert status_json(run_cli)["0002_b"]["last_failure"] is None
    assert run_cli(["rollback"])[0] == 0
    states = status_json(run_cli)
    assert states["0002_b"]["state"] == "pending" and states["0002_b"]["last_failure"] is None
    code, out, err = run_cli(["status"])
    assert "failed" not in out


# --------------------------------------------------------------------------
# Remote D1 and wrangler's local file


@pytest.fixture
def fake(remote_fake):
    return remote_fake


def test_d1_remote_history(fake: FakeD1, project, run_cli, write_migration):
    """On --d1-remote the history is D1's table: the bookmark, each apply,
    a failure (with statement and line), a rollback; a dry run adds
    nothing; history --d1-remote reads it back."""
    write_migration("0001_a.sql", A)
    write_migration("0001_a.sql", "DROP TABLE a;\n", folder="migrations/down")
    write_migration("0002_b.sql", B_FAILING)
    bookmark = fake.bookmark
    assert run_cli(["apply", "--d1-remote"])[0] == 1
    assert fake.history() == [("bookmark", "succeeded", ""), ("apply", "succeeded", "0001_a"),
                              ("apply", "failed", "0002_b")]
    assert fake.tracking() == [("0001", "0001_a")]
    assert "b" not in fake.tables()

    code, out, err = run_cli(["apply", "--d1-remote", "--dry-run"])
    assert code == 1
    assert len(fake.history()) == 3

    (project / "migrations" / "0002_b.sql").unlink()
    assert run_cli(["rollback", "--d1-remote"])[0] == 0
    assert fake.history()[3:] == [("bookmark", "succeeded", ""),
                                  ("rollback", "succeeded", "0001_a")]

    listed = history_json(run_cli, "--d1-remote")
    assert [(e["event"], e["outcome"], e["name"]) for e in listed] == list(
        reversed(fake.history()))
    failure = next(e for e in listed if e["outcome"] == "failed")
    assert (failure["statement"], failure["line"], failure["version"]) == (
        2, FAILING_LINE, "0002")
    assert "nowhere" in failure["error"]
    assert listed[-1]["detail"] == bookmark  # the bookmark from before the first run
    assert [e["id"] for e in history_json(run_cli, "--d1-remote", "--event", "bookmark")] == [
        4, 1]
    assert [e["event"] for e in history_json(run_cli, "--d1-remote", "--version", "0001")] == [
        "rollback", "apply"]


def test_wrangler_local_file_gets_history(project, run_cli, write_migration):
    """With --wrangler-config the history goes into wrangler's local D1
    file, beside d1_migrations, and history reads it from there."""
    (project / "wrangler.toml").write_text(
        f'[[d1_databases]]\nbinding = "DB"\ndatabase_id = "{DATABASE_ID}"\n', encoding="utf-8")
    write_migration("0001_a.sql", A)
    write_migration("0002_b.sql", B_FAILING)
    config = ["--wrangler-config", "wrangler.toml"]
    assert run_cli(["apply", *config])[0] == 1
    write_migration("0002_b.sql", C)
    assert run_cli(["apply", *config])[0] == 0
    assert run_cli(["rollback", *config])[0] == 0
    db = local_database(project)
    assert events(db) == [("apply", "succeeded", "0001"), ("apply", "failed", "0002"),
                          ("apply", "succeeded", "0002"), ("rollback", "succeeded", "0002")]
    assert [r[0] for r in query(db, "SELECT name FROM d1_migrations")] == ["0001_a.sql"]
    assert not (project / DB).exists()
    listed = history_json(run_cli, *config)
    assert [e["id"] for e in listed] == [4, 3, 2, 1]
    assert listed[2]["line"] == FAILING_LINE
