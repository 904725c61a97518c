#!/usr/bin/env python3
"""Benchmark of apply_migrations.py against a floor (bench/floor.py).

    python bench/bench.py                 # N=100 and N=1000, 7 runs each
    python bench/bench.py --large         # also N=5000
    python bench/bench.py --quick         # N=100 only, 3 runs: a smoke run
    python bench/bench.py --script        # the tool as `python apply_migrations.py`
    python bench/bench.py --runs 11 --json /tmp/bench.json
    python bench/bench.py --generate-only DIR --n 1000   # just write migrations

Every figure is a whole process (interpreter start-up counts), timed with
time.perf_counter around the child, tool and floor interleaved (A, B, A, B),
each run on its own fresh database in one temporary folder.  The tool runs
as make and the CI steps run it, `python -m apply_migrations` from the
repository with its bytecode cached; info rows show the script.  See
bench/README.md for what each figure means.  Standard library only.  It
reports; it is not a test: it exits 0 when targets are missed (and 1 only
when the tool or the floor failed to do the work).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import random
import re
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, HERE)
from floor import CREATE_TRACKING  # noqa: E402  (byte for byte the tool's table)

SQLITE3_CLI = shutil.which("sqlite3")
# The remote figure: migrations, and the fake D1's delay per request (a round
# trip to Cloudflare is tens of milliseconds).
REMOTE_N = 100
REMOTE_DELAY_S = 0.02
TOOL = os.path.join(REPO, "apply_migrations.py")
FLOOR = os.path.join(HERE, "floor.py")
DEFAULT_JSON = os.path.join(HERE, "results", "latest.json")
DEFAULT_SEED = 20240601
DEFAULT_RUNS = 7
# Info rows: the tool run as a script, which Python compiles on every run
# (and whose syntax tree it keeps until the script ends), where the figures
# run it as the Makefile and the CI steps do, as a module with its bytecode
# cached.
SCRIPT_NOTE = ", tool run as the script `python apply_migrations.py`"

# --------------------------------------------------------------------------
# The generator: N realistic migrations, the same bytes for the same seed.

WORDS = (
    "account", "order", "trade", "signal", "position", "invoice", "payment",
    "customer", "broker", "alert", "report", "session", "device", "strategy",
    "portfolio", "quote", "fill", "ledger", "webhook", "subscription",
    "notification", "watchlist", "backtest", "model", "feature", "briefing",
    "article", "venue", "instrument", "exposure",
)
STATUSES = ("pending", "active", "archived", "failed")
EXTRA_COLUMNS = (
    ("note", "TEXT"), ("priority", "INTEGER NOT NULL DEFAULT 0"), ("score", "REAL"),
    ("currency", "TEXT NOT NULL DEFAULT 'USD'"), ("external_ref", "TEXT"),
    ("region", "TEXT"), ("is_flagged", "INTEGER NOT NULL DEFAULT 0 CHECK (is_flagged IN (0, 1))"),
)
ADDED_COLUMNS = (
    ("risk_score", "REAL", "num"), ("fee_rate", "REAL DEFAULT 0.0", "num"),
    ("source", "TEXT DEFAULT 'import'", "text"), ("label", "TEXT", "text"),
    ("archived_at", "INTEGER", "int"), ("version_no", "INTEGER NOT NULL DEFAULT 1", "int"),
    ("tags", "TEXT", "text"), ("weight", "REAL CHECK (weight IS NULL OR weight >= 0)", "num"),
)
NOTES = (
    "imported from the legacy ledger", "Bob''s desk; reviewed", "re-run after fix -- ok",
    "see ticket /* 42 */", "rate: 1.5%; capped", "", "manual entry",
)
BASE_TS = 1700000000


class _Table:
    __slots__ = ("name", "word", "columns", "parent", "fk", "rows")

    def __init__(self, name, word, parent):
        self.name = name
        self.word = word
        self.parent = parent
        self.fk = parent.word + "_id" if parent is not None else None
        self.columns = []
        self.rows = 0


class _Generator:
    def __init__(self, seed, update_from):
        self.rng = random.Random(seed)
        self.update_from = update_from
        self.tables = []
        self.count = 0
        self.statements = 0

    # -- building blocks: each returns (description, [statement texts]) --

    def create_table(self, number):
        rng = self.rng
        word = rng.choice(WORDS)
        self.count += 1
        parent = rng.choice(self.tables) if self.tables and rng.random() < 0.8 else None
        table = _Table("%s_%04d" % (word, self.count), word, parent)
        cols = ["    id           INTEGER PRIMARY KEY"]
        if parent is not None:
            cols.append("    %-12s INTEGER REFERENCES %s (id) ON DELETE CASCADE"
                        % (table.fk, parent.name))
        cols += [
            "    name         TEXT NOT NULL",
            "    status       TEXT NOT NULL DEFAULT 'pending'"
            " CHECK (status IN ('pending', 'active', 'archived', 'failed'))",
            "    amount       REAL CHECK (amount IS NULL OR amount >= 0)",
            "    quantity     INTEGER NOT NULL DEFAULT 0",
        ]
        for name, decl in rng.sample(EXTRA_COLUMNS, rng.randint(0, 3)):
            cols.append("    %-12s %s" % (name, decl))
            table.columns.append(name)
        cols += ["    created_at   INTEGER NOT NULL", "    updated_at   INTEGER"]
        sql = ["-- %s: one row per %s%s.\nCREATE TABLE IF NOT EXISTS %s (\n%s\n);" % (
            table.name, word, "" if parent is None else ", owned by a " + parent.word,
            table.name, ",\n".join(cols))]
        if parent is not None:
            sql.append("CREATE INDEX IF NOT EXISTS idx_%s_%s ON %s (%s);"
                       % (table.name, table.fk, table.name, table.fk))
        sql.append("CREATE INDEX IF NOT EXISTS idx_%s_status_created ON %s (status, created_at);"
                   % (table.name, table.name))
        if rng.random() < 0.4:
            sql.append("CREATE UNIQUE INDEX IF NOT EXISTS uq_%s_name ON %s (name);"
                       % (table.name, table.name))
        if rng.random() < 0.3:
            sql.append("CREATE INDEX IF NOT EXISTS idx_%s_active_amount ON %s (amount)"
                       " WHERE status = 'active';" % (table.name, table.name))
        self.tables.append(table)
        return "create_%s" % table.name, sql

    def insert(self, number, table=None):
        rng = self.rng
        table = table or rng.choice(self.tables)
        rows = []
        for _ in range(rng.randint(5, 40)):
            table.rows += 1
            values = [str(table.rows)]
            if table.fk:
                values.append(str(rng.randint(1, table.parent.rows)) if table.parent.rows else "NULL")
            values += [
                "'%s-%d'" % (table.word, table.rows),
                "'%s'" % rng.choice(STATUSES[:2] if rng.random() < 0.9 else STATUSES),
                "%.2f" % (rng.random() * 1000),
                str(rng.randint(0, 50)),
                str(BASE_TS + number * 3600 + rng.randint(0, 3599)),
            ]
            rows.append("    (%s)" % ", ".join(values))
        cols = ["id"] + ([table.fk] if table.fk else []) + [
            "name", "status", "amount", "quantity", "created_at"]
        sql = "INSERT INTO %s (%s) VALUES\n%s;" % (table.name, ", ".join(cols), ",\n".join(rows))
        if "note" in table.columns and rng.random() < 0.5:
            sql += "\nUPDATE %s SET note = '%s' WHERE id %% 7 = 3;" % (table.name, rng.choice(NOTES))
            self.statements += 1
        return "seed_%s" % table.name, [sql]

    def add_column(self, number):
        rng = self.rng
        table = rng.choice(self.tables)
        name, decl, kind = rng.choice(ADDED_COLUMNS)
        if name in table.columns:
            name = "%s_%d" % (name, number)
        table.columns.append(name)
        sql = ["ALTER TABLE %s ADD COLUMN %s %s;" % (table.name, name, decl)]
        if kind == "num":
            sql.append(
                "-- backfill from the amounts already there\n"
                "WITH src AS (\n"
                "    SELECT id, round(coalesce(amount, 0) * %.3f, 4) AS v FROM %s\n"
                ")\n"
                "UPDATE %s SET %s = (SELECT v FROM src WHERE src.id = %s.id)\n"
                "WHERE id IN (SELECT id FROM src WHERE v > 0);"
                % (rng.random(), table.name, table.name, name, table.name))
        elif kind == "text":
            sql.append("UPDATE %s SET %s = lower(name) || ':' || status WHERE %s IS NULL;"
                       % (table.name, name, name))
        if rng.random() < 0.3:
            sql.append("CREATE INDEX IF NOT EXISTS idx_%s_%s ON %s (%s);"
                       % (table.name, name, table.name, name))
        return "add_%s_to_%s" % (name, table.name), sql

    def backfill(self, number):
        rng = self.rng
        children = [t for t in self.tables if t.parent is not None]
        if children and rng.random() < 0.5:
            child = rng.choice(children)
            parent = child.parent
            cte = (
                "WITH totals AS (\n"
                "    SELECT %s AS parent_id, count(*) AS n, coalesce(sum(amount), 0) AS total\n"
                "    FROM %s\n"
                "    WHERE %s IS NOT NULL\n"
                "    GROUP BY %s\n"
                ")\n" % (child.fk, child.name, child.fk, child.fk))
            if self.update_from:
                sql = (cte + "UPDATE %s\nSET quantity = totals.n,\n    amount = round(totals.total, 2),\n"
                       "    updated_at = %d + totals.n\nFROM totals\nWHERE totals.parent_id = %s.id;"
                       % (parent.name, BASE_TS + number, parent.name))
            else:
                sql = (cte + "UPDATE %s\nSET quantity = (SELECT n FROM totals WHERE parent_id = %s.id)\n"
                       "WHERE id IN (SELECT parent_id FROM totals);" % (parent.name, parent.name))
            return "backfill_%s_totals" % parent.name, [sql]
        table = rng.choice(self.tables)
        sql = (
            "WITH stale AS (\n"
            "    SELECT id FROM %s\n"
            "    WHERE status = 'pending' AND created_at < %d\n"
            "    ORDER BY id\n"
            "    LIMIT %d\n"
            ")\n"
            "UPDATE %s\n"
            "SET status = 'active', updated_at = created_at + 60\n"
            "WHERE id IN (SELECT id FROM stale);"
            % (table.name, BASE_TS + number * 3600, rng.randint(10, 60), table.name))
        return "activate_%s" % table.name, [sql]

    def trigger(self, number):
        table = self.rng.choice(self.tables)
        return "audit_%s" % table.name, [
            "CREATE TRIGGER IF NOT EXISTS trg_%s_status_%04d\n"
            "AFTER UPDATE OF status ON %s\n"
            "FOR EACH ROW\n"
            "WHEN NEW.status IS NOT OLD.status\n"
            "BEGIN\n"
            "    -- the audit row first; then touch the row itself\n"
            "    INSERT INTO audit_log (table_name, row_id, old_status, new_status, severity, changed_at)\n"
            "    VALUES ('%s', NEW.id, OLD.status, NEW.status,\n"
            "            CASE NEW.status WHEN 'failed' THEN 'error' WHEN 'archived' THEN 'info'"
            " ELSE 'notice' END,\n"
            "            coalesce(NEW.updated_at, NEW.created_at));\n"
            "    UPDATE %s SET updated_at = coalesce(NEW.updated_at, NEW.created_at) + 1"
            " WHERE id = NEW.id;\n"
            "END;" % (table.name, number, table.name, table.name, table.name)]

    def view(self, number):
        children = [t for t in self.tables if t.parent is not None]
        if children:
            child = self.rng.choice(children)
            parent = child.parent
            sql = (
                "CREATE VIEW IF NOT EXISTS v_%s_summary_%04d AS\n"
                "SELECT p.id, p.name, p.status,\n"
                "       count(c.id) AS children,\n"
                "       coalesce(sum(c.amount), 0) AS total_amount,\n"
                "       max(c.created_at) AS last_activity\n"
                "FROM %s AS p\n"
                "LEFT JOIN %s AS c ON c.%s = p.id\n"
                "GROUP BY p.id, p.name, p.status;"
                % (parent.name, number, parent.name, child.name, child.fk))
            return "view_%s_summary" % parent.name, [sql]
        table = self.rng.choice(self.tables)
        return "view_%s_active" % table.name, [
            "CREATE VIEW IF NOT EXISTS v_%s_active_%04d AS\n"
            "SELECT id, name, amount FROM %s WHERE status = 'active';"
            % (table.name, number, table.name)]

    # -- one file -----------------------------------------------------------

    def migration(self, number):
        rng = self.rng
        parts = []
        if number == 1:
            parts.append(("create_audit_log", [
                "CREATE TABLE IF NOT EXISTS audit_log (\n"
                "    id          INTEGER PRIMARY KEY,\n"
                "    table_name  TEXT NOT NULL,\n"
                "    row_id      INTEGER NOT NULL,\n"
                "    old_status  TEXT,\n"
                "    new_status  TEXT,\n"
                "    severity    TEXT NOT NULL CHECK (severity IN ('notice', 'info', 'error')),\n"
                "    changed_at  INTEGER NOT NULL\n"
                ");",
                "CREATE INDEX IF NOT EXISTS idx_audit_log_table_row ON audit_log (table_name, row_id);"]))
            for _ in range(3):
                parts.append(self.create_table(number))
                parts.append(self.insert(number, self.tables[-1]))
        else:
            kinds = ("create_table", "insert", "add_column", "backfill")
            for kind in rng.choices(kinds, weights=(8, 40, 14, 38), k=rng.randint(1, 3)):
                parts.append(getattr(self, kind)(number))
        if number % 10 == 0:
            parts.append(self.trigger(number))
        if number % 25 == 0:
            parts.append(self.view(number))
        description = re.sub(r"_\d+$", "", parts[0][0])
        statements = [s for _, sqls in parts for s in sqls]
        self.statements += len(statements)
        header = ("-- Migration number: %04d\n-- %s (generated by bench/bench.py)\n\n"
                  % (number, description.replace("_", " ")))
        return "%04d_%s.sql" % (number, description), header + "\n\n".join(statements) + "\n"


def generate(n, dest, seed=DEFAULT_SEED, update_from=None):
    """Write migrations 0001..n into dest; return what was written.

    update_from: use UPDATE ... FROM (SQLite 3.33+) in half the backfills;
    by default when the running SQLite has it (3.40 here: yes).
    """
    if update_from is None:
        update_from = sqlite3.sqlite_version_info >= (3, 33, 0)
    os.makedirs(dest, exist_ok=True)
    gen = _Generator(seed, update_from)
    total = 0
    for number in range(1, n + 1):
        name, text = gen.migration(number)
        data = text.encode("utf-8")
        total += len(data)
        with open(os.path.join(dest, name), "wb") as handle:
            handle.write(data)
    return {"files": n, "statements": gen.statements, "bytes": total, "tables": len(gen.tables),
            "seed": seed, "update_from": update_from}


def write_big_insert(dest, rows=40000):
    """0001 creates ticks; 0002 is ONE INSERT of `rows` rows, about 1.4 MB."""
    os.makedirs(dest, exist_ok=True)
    rng = random.Random(7)
    with open(os.path.join(dest, "0001_create_ticks.sql"), "w") as handle:
        handle.write("CREATE TABLE ticks (\n    id INTEGER PRIMARY KEY,\n    symbol TEXT NOT NULL,\n"
                     "    price REAL NOT NULL,\n    ts INTEGER NOT NULL\n);\n")
    symbols = ("AAPL", "MSFT", "BTCUSD", "ETHUSD", "EURUSD", "TSLA", "NVDA", "SPY")
    lines = ["(%d,'%s',%.3f,%d)" % (i, rng.choice(symbols), rng.random() * 900 + 10,
                                    BASE_TS + i) for i in range(1, rows + 1)]
    text = ("-- one statement, %d rows\nINSERT INTO ticks (id, symbol, price, ts) VALUES\n%s;\n"
            % (rows, ",\n".join(lines)))
    with open(os.path.join(dest, "0002_load_ticks.sql"), "w") as handle:
        handle.write(text)
    return {"rows": rows, "bytes": len(text.encode())}


def write_big_literal(dest, size=1 << 20):
    """0001 creates documents; 0002 inserts one string literal of `size`
    characters with quotes, semicolons, comment markers and newlines in it."""
    os.makedirs(dest, exist_ok=True)
    rng = random.Random(11)
    with open(os.path.join(dest, "0001_create_documents.sql"), "w") as handle:
        handle.write("CREATE TABLE documents (\n    id INTEGER PRIMARY KEY,\n    title TEXT NOT NULL,\n"
                     "    body TEXT NOT NULL\n);\n")
    pieces = ("the risk desk''s view; ", "-- not a comment ", "/* nor this */ ", "BEGIN; END; ",
              "stop loss at 1.5%; ", "position sizing, ", "\n", "momentum ", "drawdown ")
    out, length = [], 0
    while length < size:
        piece = rng.choice(pieces)
        out.append(piece)
        length += len(piece)
    body = "".join(out)[:size]
    if body.endswith("'") and not body.endswith("''"):
        body = body[:-1] + "."
    text = "INSERT INTO documents (id, title, body) VALUES (1, 'handbook', '%s');\n" % body
    with open(os.path.join(dest, "0002_store_handbook.sql"), "w") as handle:
        handle.write(text)
    return {"literal_chars": len(body), "bytes": len(text.encode())}


# --------------------------------------------------------------------------
# Running a child: wall time (perf_counter around it) and its own peak RSS.

_HAVE_WAIT4 = hasattr(os, "wait4")


def _exit_code(status):
    if os.WIFEXITED(status):
        return os.WEXITSTATUS(status)
    if os.WIFSIGNALED(status):
        return -os.WTERMSIG(status)
    return 1  # pragma: no cover


class ChildFailed(Exception):
    pass


def run_child(cmd, cwd=REPO, env=None):
    """(seconds, peak RSS in bytes or None, CPU seconds user+sys or None).  os.wait4 returns the rusage of
    this one child, so its ru_maxrss is that process's peak alone (unlike
    getrusage(RUSAGE_CHILDREN), the maximum over every child ever reaped)."""
    with tempfile.TemporaryFile() as err:
        started = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=cwd, stdin=subprocess.DEVNULL, env=env,
                                stdout=subprocess.DEVNULL, stderr=err)
        if _HAVE_WAIT4:
            _, status, usage = os.wait4(proc.pid, 0)
            elapsed = time.perf_counter() - started
            proc.returncode = _exit_code(status)
            # ru_maxrss is kilobytes on Linux and the BSDs, bytes on macOS.
            rss = usage.ru_maxrss * (1 if sys.platform == "darwin" else 1024)
            cpu = usage.ru_utime + usage.ru_stime
        else:  # pragma: no cover - Windows
            proc.wait()
            elapsed = time.perf_counter() - started
            rss = cpu = None
        if proc.returncode != 0:
            err.seek(0)
            raise ChildFailed("%s exited %s: %s" % (
                " ".join(cmd), proc.returncode, err.read().decode("utf-8", "replace")[-2000:]))
    return elapsed, rss, cpu


def _remove_db(path):
    for suffix in ("", "-journal", "-wal", "-shm"):
        try:
            os.remove(path + suffix)
        except FileNotFoundError:
            pass


def applied_count(db):
    conn = sqlite3.connect(db)
    try:
        return conn.execute('SELECT count(*) FROM "schema_migrations"').fetchone()[0]
    finally:
        conn.close()


def schema_of(db):
    """sqlite_master as (type, name, tbl_name, sql), in a fixed order."""
    conn = sqlite3.connect(db)
    try:
        return conn.execute(
            "SELECT type, name, tbl_name, sql FROM sqlite_master"
            # The tool's note of the schema it left and its history are its
            # record, not schema.
            " WHERE name NOT IN ('schema_migrations_state', 'schema_migrations_history')"
            " ORDER BY type, name").fetchall()
    finally:
        conn.close()


# --------------------------------------------------------------------------
# Series of paired runs.


def _stats(values):
    values = sorted(values)
    out = {"median": statistics.median(values), "min": values[0], "max": values[-1]}
    if len(values) >= 2:
        q = statistics.quantiles(values, n=4, method="inclusive")
        out["q1"], out["q3"] = q[0], q[2]
        out["stdev"] = statistics.stdev(values)
    return out


class Series:
    """One figure: R interleaved pairs of whole-process runs, tool then floor."""

    def __init__(self, key, label):
        self.key = key
        self.label = label
        self.tool = []   # seconds
        self.floor = []
        self.tool_rss = []  # bytes
        self.floor_rss = []
        self.tool_cpu = []  # seconds, user + sys of the child
        self.floor_cpu = []

    def ratios(self):
        return [t / f for t, f in zip(self.tool, self.floor)]

    def cpu_ratios(self):
        return [t / f for t, f in zip(self.tool_cpu, self.floor_cpu)]

    def to_json(self):
        out = {"label": self.label, "tool_s": self.tool, "floor_s": self.floor,
               "tool_rss_bytes": self.tool_rss, "floor_rss_bytes": self.floor_rss,
               "tool_cpu_s": self.tool_cpu, "floor_cpu_s": self.floor_cpu}
        if self.tool:
            out["tool_stats_s"] = _stats(self.tool)
        if self.floor:
            out["floor_stats_s"] = _stats(self.floor)
        if self.tool and self.floor:
            out["ratios"] = self.ratios()
            out["ratio_stats"] = _stats(self.ratios())
        if self.tool_cpu and self.floor_cpu:
            out["cpu_ratio_stats"] = _stats(self.cpu_ratios())
        return out


def paired(series, runs, tool_run, floor_run, warmup=True, log=None):
    """tool_run(tag) and floor_run(tag) each run once and return
    (seconds, rss, cpu).  One untimed warm-up pair first (page cache, disk)."""
    if warmup:
        tool_run("warmup")
        floor_run("warmup")
    for rep in range(runs):
        for fn, times, rsss, cpus in (
                (tool_run, series.tool, series.tool_rss, series.tool_cpu),
                (floor_run, series.floor, series.floor_rss, series.floor_cpu)):
            seconds, rss, cpu = fn(rep)
            times.append(seconds)
            if rss is not None:
                rsss.append(rss)
            if cpu is not None:
                cpus.append(cpu)
        if log:
            log("  %s: run %d/%d tool %.1f ms%s" % (
                series.label, rep + 1, runs, series.tool[-1] * 1000 if series.tool else 0,
                "  floor %.1f ms" % (series.floor[-1] * 1000) if series.floor else ""))
    return series


# --------------------------------------------------------------------------
# The benchmark proper.


class Bench:
    def __init__(self, args):
        self.args = args
        self.python = args.python
        self.work = tempfile.mkdtemp(prefix="bench-migrations-", dir=args.tmpdir)
        self.series = {}
        self.meta = {}
        self.extra = {}
        self._module_env = None
        self.module = not args.script

    def log(self, text):
        if not self.args.quiet:
            print(text, file=sys.stderr, flush=True)

    def tool_cmd(self, *argv, script=False):
        """The tool's command line: `python -m apply_migrations` (run from
        the repository, as make and the CI steps run it), or the script
        (for the info rows, and for every figure with --script)."""
        if self.module and not script:
            return [self.python, "-m", "apply_migrations"] + list(argv)
        return [self.python, TOOL] + list(argv)

    def tool_env(self, script=False):
        """None for the script.  For the module, an environment in which it
        caches its bytecode, outside the repository; a first run here writes
        the cache, so timed runs find it, as every run after a user's first
        does."""
        if script or not self.module:
            return None
        if self._module_env is None:
            env = self.bytecode_cache_env()
            run_child(self.tool_cmd("--version"), env=env)
            self._module_env = env
        return self._module_env

    def bytecode_cache_env(self):
        """This environment, with Python caching bytecode under the work
        folder (never in the repository)."""
        env = dict(os.environ)
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        env["PYTHONPYCACHEPREFIX"] = os.path.join(self.work, "pycache")
        return env

    def floor_cmd(self, *argv):
        return [self.python, FLOOR] + list(argv)

    def migrations(self, n):
        key = "gen%d" % n
        folder = os.path.join(self.work, key)
        if key not in self.meta:
            started = time.perf_counter()
            self.meta[key] = generate(n, folder, seed=self.args.seed)
            self.log("generated %d migrations (%d statements, %.0f KB) in %.1f s" % (
                n, self.meta[key]["statements"], self.meta[key]["bytes"] / 1024,
                time.perf_counter() - started))
        return folder

    def _applier(self, label, folder, expected, cmd_fn, check_against=None, env=None):
        """A run function: fresh database, run, check the rows, delete."""
        def run(tag):
            db = os.path.join(self.work, "%s-%s.db" % (label, tag))
            _remove_db(db)
            result = run_child(cmd_fn(db, folder), env=env)
            count = applied_count(db)
            if count != expected:
                raise ChildFailed("%s: %d tracking rows, expected %d" % (label, count, expected))
            if tag == "warmup" and check_against is not None:
                self.schemas[label] = schema_of(db)
            _remove_db(db)
            return result
        return run

    def cli_script(self, n, single):
        """The sqlite3 CLI's script for the N migrations: the tracking table
        (its own commit, as the tool makes it), then each file read by the
        CLI with its tracking row, in one transaction each (single: all in
        one).  Written once, outside the timing."""
        folder = self.migrations(n)
        path = os.path.join(self.work, "cli-%d%s.sql" % (n, "-single" if single else ""))
        if os.path.exists(path):
            return path
        lines = [CREATE_TRACKING + ";"]
        if single:
            lines.append("BEGIN IMMEDIATE;")
        for name in sorted(x for x in os.listdir(folder) if x.endswith(".sql")):
            with open(os.path.join(folder, name), "rb") as handle:
                checksum = hashlib.sha256(handle.read()).hexdigest()
            if not single:
                lines.append("BEGIN IMMEDIATE;")
            lines.append(".read '%s'" % os.path.join(folder, name).replace("'", "''"))
            lines.append(
                "INSERT INTO \"schema_migrations\" (version, name, checksum, applied_at,"
                " duration_ms) VALUES ('%s', '%s', '%s', strftime('%%Y-%%m-%%dT%%H:%%M:%%SZ',"
                " 'now'), 0);" % (name.split("_", 1)[0], name[:-4].replace("'", "''"), checksum))
            if not single:
                lines.append("COMMIT;")
        if single:
            lines.append("COMMIT;")
        with open(path, "w") as handle:
            handle.write("\n".join(lines) + "\n")
        return path

    def cli_series(self, n, single, commit_each=False, runs=None):
        """The tool's apply (group commit, or --commit-each) against the sqlite3
        CLI running the same files: one transaction each, or all in one."""
        folder = self.migrations(n)
        script = self.cli_script(n, single)
        key = "apply_%d%s%s" % (n, "_cli_single" if single else "",
                                "_commit_each" if commit_each else "")
        label = "apply%s N=%d vs the sqlite3 CLI, %s" % (
            " --commit-each" if commit_each else "", n,
            "all files in one transaction" if single else "one transaction per file")
        series = Series(key, label)
        self.schemas = {}
        extra = ["--commit-each"] if commit_each else []
        tool_run = self._applier(key + "-tool", folder, n, lambda db, d: self.tool_cmd(
            "apply", "--db-path", db, "--migrations-dir", d, *extra), check_against=True,
            env=self.tool_env())
        floor_run = self._applier(key + "-cli", folder, n, lambda db, d: [
            SQLITE3_CLI, "-bail", db, ".read '%s'" % script.replace("'", "''")],
            check_against=True)
        self.log("%s ..." % label)
        paired(series, runs or self.args.runs, tool_run, floor_run, log=self.log)
        schemas = list(self.schemas.values())
        if len(schemas) == 2 and schemas[0] != schemas[1]:
            raise ChildFailed("%s: the tool and the CLI built different schemas" % label)
        self.series[key] = series

    def memory_series(self, n):
        """Info: the sqlite3 CLI running all N files in one transaction on an
        in-memory database (no journal, no sync, no file: SQLite's own work on
        the statements and nothing else) against the CLI per file.  No apply
        to a file can take less than this share of the per-file time."""
        script = self.cli_script(n, True)
        series = Series("apply_%d_cli_memory" % n, "the sqlite3 CLI N=%d, all files in one"
                        " transaction in memory (no I/O), vs the CLI per file" % n)
        per_file = self._applier(series.key + "-cli", self.migrations(n), n, lambda db, d: [
            SQLITE3_CLI, "-bail", db, ".read '%s'" % self.cli_script(n, False).replace("'", "''")])

        def in_memory(tag):
            return run_child([SQLITE3_CLI, "-bail", ":memory:",
                              ".read '%s'" % script.replace("'", "''"),
                              "SELECT count(*) FROM schema_migrations;"])

        self.log("%s ..." % series.label)
        paired(series, self.args.runs, in_memory, per_file, log=self.log)
        self.series[series.key] = series

    def remote_series(self):
        """apply --d1-remote of REMOTE_N small migrations against the fake D1
        (tests/fake_d1.py) answering each request after REMOTE_DELAY_S:
        requests and time, group batches against --commit-each."""
        sys.path.insert(0, os.path.join(REPO, "tests"))
        try:
            from fake_d1 import FakeD1, remote_env
        except ImportError:
            self.log("the remote figure needs tests/fake_d1.py beside bench/: skipped")
            return
        folder = os.path.join(self.work, "remote")
        if not os.path.isdir(folder):
            os.makedirs(folder)
            for i in range(1, REMOTE_N + 1):
                with open(os.path.join(folder, "%04d_table_%d.sql" % (i, i)), "w") as handle:
                    handle.write("CREATE TABLE t%d (id INTEGER PRIMARY KEY, name TEXT);\n"
                                 "INSERT INTO t%d (name) VALUES ('x');\n" % (i, i))
        series = Series("remote_%d" % REMOTE_N, "apply --d1-remote N=%d, %d ms per request,"
                        " vs --commit-each" % (REMOTE_N, REMOTE_DELAY_S * 1000))
        requests = {"tool": [], "floor": []}

        def runner(who, extra):
            def run(tag):
                with FakeD1() as fake:
                    fake.delay = REMOTE_DELAY_S
                    env = dict(self.tool_env() or os.environ, **remote_env(fake))
                    result = run_child(self.tool_cmd("apply", "--d1-remote", "--migrations-dir",
                                                     folder, *extra), env=env)
                    if len(fake.tracking()) != REMOTE_N:
                        raise ChildFailed("remote apply: %d tracked, expected %d"
                                          % (len(fake.tracking()), REMOTE_N))
                    if tag != "warmup":
                        requests[who].append(fake.request_count)
                return result
            return run

        self.log("%s ..." % series.label)
        paired(series, max(3, self.args.runs // 2), runner("tool", []),
               runner("floor", ["--commit-each"]), log=self.log)
        self.series[series.key] = series
        self.extra["remote_requests"] = requests

    def apply_series(self, n, single=False, nosync=False, runs=None, script=False):
        folder = self.migrations(n)
        key = "apply_%d%s%s" % (n, "_single" if single else "", "_script" if script else "")
        label = ("apply --single-transaction N=%d vs one-transaction floor" % n if single
                 else "apply N=%d" % n)
        if script:
            label += SCRIPT_NOTE
        if nosync:
            key, label = "floor_nosync_%d" % n, "floor N=%d, synchronous FULL vs OFF" % n
        series = Series(key, label)
        self.schemas = {}
        extra = ["--single-transaction"] if single else []
        if nosync:
            tool_run = self._applier(key + "-full", folder, n,
                                     lambda db, d: self.floor_cmd("apply", db, d))
            floor_run = self._applier(key + "-off", folder, n,
                                      lambda db, d: self.floor_cmd("apply", db, d, "--nosync"))
        else:
            tool_cmd = lambda db, d: self.tool_cmd(  # noqa: E731
                "apply", "--db-path", db, "--migrations-dir", d, *extra, script=script)
            tool_run = self._applier(key + "-tool", folder, n, tool_cmd, check_against=True,
                                     env=self.tool_env(script))
            floor_run = self._applier(
                key + "-floor", folder, n,
                lambda db, d: self.floor_cmd("apply", db, d, *(["--single"] if single else [])),
                check_against=True)
        self.log("%s ..." % label)
        paired(series, runs or self.args.runs, tool_run, floor_run, log=self.log)
        if not nosync:
            schemas = list(self.schemas.values())
            if len(schemas) == 2 and schemas[0] != schemas[1]:
                raise ChildFailed("%s: the tool and the floor built different schemas" % label)
        self.series[key] = series

    def read_series(self, n):
        """status and no-op apply on a database with n migrations applied."""
        folder = self.migrations(n)
        db = os.path.join(self.work, "applied-%d.db" % n)
        _remove_db(db)
        run_child(self.tool_cmd("apply", "--db-path", db, "--migrations-dir", folder),
                  env=self.tool_env())
        if applied_count(db) != n:
            raise ChildFailed("setup of the read figures failed")
        floor_run = lambda tag: run_child(self.floor_cmd("status", db, folder))  # noqa: E731
        for key, label, argv in (
                ("status_%d" % n, "status, %d applied" % n, ("status",)),
                ("noop_%d" % n, "no-op apply, %d applied" % n, ("apply",))):
            series = Series(key, label)
            self.log("%s ..." % label)
            paired(series, self.args.runs,
                   lambda tag: run_child(self.tool_cmd(*argv, "--db-path", db,
                                                       "--migrations-dir", folder),
                                         env=self.tool_env()),
                   floor_run, log=self.log)
            self.series[key] = series
        if applied_count(db) != n:
            raise ChildFailed("no-op apply changed the database")
        _remove_db(db)

    def big_series(self, kind, script=False):
        folder = os.path.join(self.work, kind)
        if kind not in self.meta:
            write = write_big_insert if kind == "big_insert" else write_big_literal
            self.meta[kind] = write(folder)
        if kind == "big_insert":
            label = "one %.1f MB INSERT of %d rows" % (self.meta[kind]["bytes"] / 1e6,
                                                       self.meta[kind]["rows"])
        else:
            label = "one %.1f MB string literal" % (self.meta[kind]["bytes"] / 1e6)
        key = kind + ("_script" if script else "")
        if script:
            label += SCRIPT_NOTE
        series = Series(key, label)
        self.schemas = {}
        tool_run = self._applier(key + "-tool", folder, 2, lambda db, d: self.tool_cmd(
            "apply", "--db-path", db, "--migrations-dir", d, script=script), check_against=True,
            env=self.tool_env(script))
        floor_run = self._applier(key + "-floor", folder, 2,
                                  lambda db, d: self.floor_cmd("apply", db, d), check_against=True)
        self.log("%s ..." % label)
        paired(series, self.args.runs, tool_run, floor_run, log=self.log)
        self.series[key] = series

    def startup_series(self):
        tool = "python -m apply_migrations" if self.module else "apply_migrations.py"
        series = Series("startup", "start-up: %s --version vs python -c \"import sqlite3,"
                                   " hashlib\"" % tool)
        self.log("start-up ...")
        paired(series, self.args.runs,
               lambda tag: run_child(self.tool_cmd("--version"), env=self.tool_env()),
               lambda tag: run_child([self.python, "-c", "import sqlite3, hashlib"]), log=self.log)
        self.series["startup"] = series

    def import_time(self):
        """-X importtime: what `import apply_migrations` adds to the bare
        interpreter, with its .pyc cached (in a temporary pycache prefix, so
        the repository is not written to) and without."""
        runs = self.args.runs
        env = self.bytecode_cache_env()
        nocache = dict(os.environ, PYTHONDONTWRITEBYTECODE="1")
        nocache.pop("PYTHONPYCACHEPREFIX", None)

        def importtime(code, environ):
            proc = subprocess.run([self.python, "-X", "importtime", "-c", code], cwd=REPO,
                                  env=environ, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.PIPE, universal_newlines=True)
            if proc.returncode != 0:
                raise ChildFailed("importtime failed: " + proc.stderr[-2000:])
            modules = {}
            for line in proc.stderr.splitlines():
                match = re.match(r"import time:\s+(\d+) \|\s+(\d+) \|( *)(\S+)", line)
                if match:
                    modules[match.group(4)] = (int(match.group(1)), int(match.group(2)))
            return modules

        baseline = set()
        for _ in range(2):
            baseline |= set(importtime("pass", env))
        importtime("import apply_migrations", env)  # writes the .pyc
        out = {}
        for label, environ in (("cached", env), ("uncached", nocache)):
            cumulative, added, new_modules = [], [], set()
            for _ in range(runs):
                modules = importtime("import apply_migrations", environ)
                cumulative.append(modules["apply_migrations"][1])
                extra = {m: v for m, v in modules.items() if m not in baseline}
                new_modules |= set(extra)
                added.append(sum(v[0] for v in extra.values()))
            out[label] = {"apply_migrations_cumulative_us": cumulative,
                          "added_self_us": added,
                          "median_ms": statistics.median(cumulative) / 1000.0,
                          "modules_beyond_interpreter": sorted(new_modules)}
        # The script itself is never cached: `python apply_migrations.py`
        # compiles it on every run.  Time that compile here, in-process.
        with open(TOOL, "rb") as handle:
            source = handle.read()
        compiles = []
        for _ in range(max(3, runs)):
            started = time.perf_counter()
            compile(source, TOOL, "exec", dont_inherit=True)
            compiles.append(time.perf_counter() - started)
        out["script_compile_ms"] = statistics.median(compiles) * 1000.0
        out["note"] = ("cached: `import apply_migrations` with its .pyc; uncached: without"
                       " (PYTHONDONTWRITEBYTECODE=1), which is also how the script runs as"
                       " `python apply_migrations.py` (script_compile_ms is that compile, timed"
                       " in the benchmark's own interpreter)")
        self.extra["import"] = out

    def fsync_probe(self):
        """Median latency of a 4 KB write + fdatasync in the work folder."""
        path = os.path.join(self.work, "fsync-probe")
        sync = getattr(os, "fdatasync", os.fsync)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
        times = []
        try:
            for _ in range(30):
                os.write(fd, b"\0" * 4096)
                started = time.perf_counter()
                sync(fd)
                times.append(time.perf_counter() - started)
        finally:
            os.close(fd)
            os.remove(path)
        return {"median_us": statistics.median(times) * 1e6, "max_us": max(times) * 1e6,
                "samples_us": [t * 1e6 for t in times]}

    def cleanup(self):
        if self.args.keep:
            self.log("kept %s" % self.work)
        else:
            shutil.rmtree(self.work, ignore_errors=True)


# --------------------------------------------------------------------------
# Machine, targets, report.


def _filesystem(path):
    """(mount point, type) of the filesystem holding path, from /proc/mounts."""
    try:
        with open("/proc/mounts") as handle:
            mounts = [line.split()[:3] for line in handle]
    except OSError:
        return None, None
    path = os.path.realpath(path)
    best = ("", None)
    for _, point, fstype in mounts:
        point = point.replace("\\040", " ")
        if (path == point or path.startswith(point.rstrip("/") + "/")) and len(point) > len(best[0]):
            best = (point, fstype)
    return best


def clean_interpreter(bench):
    """This interpreter in a fresh virtual environment (no pip, no packages).

    A machine's site-packages can hold .pth files that run code at every
    start (one on the machine that made README's table imports certifi, about
    20 ms); they add the same time to tool and floor and so pull every
    start-up-bound ratio towards 1.  A venv leaves them out, as on a clean
    installation.  If venv is missing (some distributions split it off), the
    interpreter runs as it is.  Returns the interpreter and how it runs.
    """
    folder = os.path.join(bench.work, "venv")
    try:
        subprocess.run([sys.executable, "-m", "venv", "--without-pip", folder], check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    except (OSError, subprocess.CalledProcessError) as exc:
        bench.log("no virtual environment (%s): running %s as it is" % (exc, sys.executable))
        return sys.executable, "as is (venv failed)"
    scripts = "Scripts" if os.name == "nt" else "bin"
    python = os.path.join(folder, scripts, "python.exe" if os.name == "nt" else "python")
    return python, "fresh venv of %s" % sys.executable


def machine_info(python, work):
    cpu = platform.processor() or None
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.lower().startswith(("model name", "hardware", "cpu model")):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    child = subprocess.run(
        [python, "-c", "import sys, sqlite3, platform; print(platform.python_implementation(),"
                       " platform.python_version(), sqlite3.sqlite_version, sep='|')"],
        stdout=subprocess.PIPE, universal_newlines=True, check=True).stdout.strip().split("|")
    mount, fstype = _filesystem(work)
    commit = None
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, stdout=subprocess.PIPE,
                                stderr=subprocess.DEVNULL, universal_newlines=True).stdout.strip()
    except OSError:
        pass
    with open(TOOL, "rb") as handle:
        tool_sha = hashlib.sha256(handle.read()).hexdigest()
    try:
        load = os.getloadavg()
    except (AttributeError, OSError):
        load = None
    return {
        "platform": platform.platform(), "machine": platform.machine(), "cpu_model": cpu,
        "cpu_count": os.cpu_count(), "loadavg_at_start": load,
        "python": python, "python_implementation": child[0], "python_version": child[1],
        "sqlite_version": child[2], "work_dir": work, "work_mount": mount, "work_fstype": fstype,
        "git_commit": commit or None, "tool_sha256": tool_sha,
        "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


# key -> (kind, limit, text): ratio of medians of pairs, tool median ms, tool median RSS MB
TARGETS = {
    "apply_100": ("ratio", 0.6, "<= 0.60x CLI"),
    "apply_1000": ("ratio", 0.4, "<= 0.40x CLI"),
    "apply_1000_cli_single": ("ratio", 1.25, "<= 1.25x CLI"),
    "apply_1000_single": ("ratio", 1.1, "<= 1.10x floor"),
    "remote_requests": ("count", 10, "<= 10 requests"),
    "status_1000": ("ms", 150.0, "< 150 ms"),
    "noop_1000": ("ms", 150.0, "< 150 ms"),
    "big_insert": ("ms", 1000.0, "< 1 s"),
    "big_literal": ("ms", 1000.0, "< 1 s"),
    "big_insert_rss": ("mb", 60.0, "< 60 MB"),
    "big_literal_rss": ("mb", 60.0, "< 60 MB"),
    "import": ("ms", 20.0, "<= 20 ms"),
}
# --quick measures the read figures and single-transaction at N=100:
# same limits, so a smoke run shows the same table.
for _n in (100, 5000):
    TARGETS.setdefault("status_%d" % _n, TARGETS["status_1000"])
    TARGETS.setdefault("noop_%d" % _n, TARGETS["noop_1000"])
    TARGETS.setdefault("apply_%d_single" % _n, TARGETS["apply_1000_single"])


def _verdict(key, value):
    target = TARGETS.get(key)
    if target is None or value is None:
        return "", "info"
    kind, limit, text = target
    ok = value <= limit if text.startswith("<=") else value < limit
    return text, "pass" if ok else "FAIL"


def build_rows(bench):
    rows = []  # (figure, tool, floor, ratio, target, verdict, key, value)
    fmt_ms = lambda s: "%.1f ms" % (s * 1000)  # noqa: E731
    for key, series in bench.series.items():
        if key == "startup":
            continue
        tool_med = statistics.median(series.tool)
        floor_med = statistics.median(series.floor)
        ratio = statistics.median(series.ratios())
        if key.startswith("floor_nosync"):
            rows.append((series.label + " (fsync share %.0f%%)" % (100 * (1 - floor_med / tool_med)),
                         fmt_ms(tool_med) + " (FULL)", fmt_ms(floor_med) + " (OFF)",
                         "%.2fx" % ratio, "", "info", key, None))
            continue
        kind = TARGETS.get(key, ("ratio",))[0]
        value = ratio if kind == "ratio" else tool_med * 1000
        target, verdict = _verdict(key, value)
        rows.append((series.label, fmt_ms(tool_med), fmt_ms(floor_med), "%.3fx" % ratio,
                     target, verdict, key, value))
        if series.tool_rss and key.startswith("big_"):
            tool_mb = statistics.median(series.tool_rss) / 1e6
            floor_mb = statistics.median(series.floor_rss) / 1e6
            target, verdict = _verdict(key + "_rss", tool_mb)
            rows.append((series.label + ": peak RSS", "%.1f MB" % tool_mb, "%.1f MB" % floor_mb,
                         "%.2fx" % (tool_mb / floor_mb), target, verdict, key + "_rss", tool_mb))
    remote = bench.extra.get("remote_requests")
    if remote and remote["tool"]:
        value = statistics.median(remote["tool"])
        target, verdict = _verdict("remote_requests", value)
        rows.append(("apply --d1-remote N=%d: HTTP requests (floor: --commit-each)" % REMOTE_N,
                     "%d" % value, "%d" % statistics.median(remote["floor"]), "-", target,
                     verdict, "remote_requests", value))
    if "startup" in bench.series:
        s = bench.series["startup"]
        rows.append((s.label, fmt_ms(statistics.median(s.tool)), fmt_ms(statistics.median(s.floor)),
                     "%.2fx" % statistics.median(s.ratios()), "", "info", "startup", None))
    imp = bench.extra.get("import")
    if imp:
        value = imp["cached"]["median_ms"]
        target, verdict = _verdict("import", value)
        rows.append(("import apply_migrations beyond the interpreter (.pyc cached)",
                     "%.1f ms" % value, "-", "-", target, verdict, "import", value))
        rows.append(("import apply_migrations without .pyc (as the script runs; compile %.1f ms)"
                     % imp["script_compile_ms"], "%.1f ms" % imp["uncached"]["median_ms"], "-", "-",
                     "", "info", "import_uncached", imp["uncached"]["median_ms"]))
    return rows


def markdown_table(rows):
    header = ("figure", "tool median", "floor median", "median paired ratio", "target", "result")
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        lines.append("| " + " | ".join(row[:6]) + " |")
    return "\n".join(lines)


def spread_table(bench):
    """The noise behind each median, and the same comparison in CPU time
    (user + sys of the child), which disk latency does not disturb."""
    lines = ["| figure | tool min..max ms | floor min..max ms | ratio min..max | ratio IQR"
             " | CPU tool / floor median ms | CPU ratio (median of pairs) |",
             "|---|---|---|---|---|---|---|"]
    for series in bench.series.values():
        ratios = sorted(series.ratios())
        iqr = "-"
        if len(ratios) >= 2:
            q = statistics.quantiles(ratios, n=4, method="inclusive")
            iqr = "%.3f..%.3f" % (q[0], q[2])
        cpu = cpu_ratio = "-"
        if series.tool_cpu and series.floor_cpu:
            cpu = "%.1f / %.1f" % (statistics.median(series.tool_cpu) * 1e3,
                                   statistics.median(series.floor_cpu) * 1e3)
            cpu_ratio = "%.3fx" % statistics.median(series.cpu_ratios())
        lines.append("| %s | %.1f..%.1f | %.1f..%.1f | %.3f..%.3f | %s | %s | %s |" % (
            series.label, min(series.tool) * 1e3, max(series.tool) * 1e3,
            min(series.floor) * 1e3, max(series.floor) * 1e3, ratios[0], ratios[-1], iqr,
            cpu, cpu_ratio))
    return "\n".join(lines)


def overhead_lines(bench):
    """Where the difference goes, per migration and per statement, net of
    the start-up difference (tool --version vs python -c pass)."""
    out = []
    startup = {"wall": 0.0, "CPU": 0.0}
    if "startup" in bench.series:
        s = bench.series["startup"]
        startup["wall"] = statistics.median([t - f for t, f in zip(s.tool, s.floor)])
        if s.tool_cpu and s.floor_cpu:
            startup["CPU"] = statistics.median([t - f for t, f in zip(s.tool_cpu, s.floor_cpu)])
    for n in sorted(int(k[3:]) for k in bench.meta if k.startswith("gen")):
        meta = bench.meta["gen%d" % n]
        for key, what in (("apply_%d_single" % n, "apply --single-transaction"),):
            if key not in bench.series:
                continue
            series = bench.series[key]
            for measure, tool, floor in (("wall", series.tool, series.floor),
                                         ("CPU", series.tool_cpu, series.floor_cpu)):
                if not tool or not floor:
                    continue
                diff = statistics.median([t - f for t, f in zip(tool, floor)]) - startup[measure]
                out.append(
                    "- %s N=%d (%d statements, %.0f KB), %s: tool - floor - start-up difference"
                    " (%.1f ms) = %.1f ms: %.0f us per migration, %.1f us per statement" % (
                        what, n, meta["statements"], meta["bytes"] / 1024, measure,
                        startup[measure] * 1e3, diff * 1e3, diff / n * 1e6,
                        diff / meta["statements"] * 1e6))
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=None,
                        help="timed pairs per figure (default %d; 3 with --quick)" % DEFAULT_RUNS)
    parser.add_argument("--large", action="store_true",
                        help="also N=5000 (minutes per run: SQLite's ALTER TABLE re-reads"
                             " the whole schema, so its own work grows with N squared)")
    parser.add_argument("--large-runs", type=int, default=3,
                        help="timed pairs for N=5000 (default 3)")
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: N=100 only, 3 runs (targets as for N=1000)")
    parser.add_argument("--json", default=DEFAULT_JSON, metavar="PATH",
                        help="where to write the results (default bench/results/latest.json)")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED)
    parser.add_argument("--python", default=None,
                        help="interpreter for the tool and the floor, run as it is (default: a"
                             " fresh virtual environment of this one, see --no-venv)")
    parser.add_argument("--no-venv", dest="venv", action="store_false",
                        help="run this interpreter as it is, with whatever its site-packages"
                             " loads at every start")
    parser.add_argument("--script", action="store_true",
                        help="run the tool as the script `python apply_migrations.py` for every"
                             " figure (default: `python -m apply_migrations` from the repository,"
                             " its bytecode cached, as make and the CI steps run it)")
    parser.add_argument("--tmpdir", default=None,
                        help="where the databases go (default: the system temp dir); tool and"
                             " floor always share it")
    parser.add_argument("--no-fsync-probe", dest="fsync_probe", action="store_false",
                        help="skip the synchronous=OFF floor diagnostic")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    parser.add_argument("--quiet", action="store_true", help="no progress on stderr")
    parser.add_argument("--generate-only", metavar="DIR",
                        help="write --n migrations into DIR and exit")
    parser.add_argument("--n", type=int, default=1000, help="for --generate-only")
    args = parser.parse_args(argv)
    if args.generate_only:
        print(json.dumps(generate(args.n, args.generate_only, seed=args.seed)))
        return 0
    if args.runs is None:
        args.runs = 3 if args.quick else DEFAULT_RUNS
    sizes = [100] if args.quick else [100, 1000] + ([5000] if args.large else [])
    read_n = single_n = sizes[-1] if args.quick else 1000

    bench = Bench(args)
    if args.python is not None:
        how = "as given"
    elif args.venv:
        args.python, how = clean_interpreter(bench)
    else:
        args.python, how = sys.executable, "as is"
    bench.python = args.python
    info = machine_info(args.python, bench.work)
    info["interpreter"] = how
    info["tool_run_as"] = ("tool run as the script `python apply_migrations.py`" if args.script
                           else "tool run as `python -m apply_migrations`, bytecode cached")
    info["fsync"] = bench.fsync_probe()
    bench.log("work dir %s on %s (%s); fdatasync %.0f us median" % (
        bench.work, info["work_mount"], info["work_fstype"], info["fsync"]["median_us"]))
    started = time.perf_counter()
    error = None
    try:
        for n in sizes:
            runs = args.large_runs if n == 5000 else None
            if SQLITE3_CLI:
                bench.cli_series(n, single=False, runs=runs)
            else:  # no sqlite3 CLI on this machine: the Python floor only
                bench.log("no sqlite3 CLI on PATH: apply is measured against the Python floor")
                bench.apply_series(n, runs=runs)
        if SQLITE3_CLI:
            bench.cli_series(single_n, single=True)
            bench.cli_series(single_n, single=False, commit_each=True)
            bench.memory_series(single_n)
        if not args.script:
            bench.apply_series(sizes[0], script=True)
        bench.apply_series(single_n, single=True)
        if args.fsync_probe:
            bench.apply_series(single_n, nosync=True)
        bench.read_series(read_n)
        bench.big_series("big_insert")
        if not args.script:
            bench.big_series("big_insert", script=True)
        bench.big_series("big_literal")
        bench.remote_series()
        bench.startup_series()
        bench.import_time()
    except ChildFailed as exc:
        error = str(exc)
    finally:
        bench.cleanup()
    elapsed = time.perf_counter() - started
    try:
        info["loadavg_at_end"] = os.getloadavg()
    except (AttributeError, OSError):
        info["loadavg_at_end"] = None
    with open(TOOL, "rb") as handle:
        tool_changed = hashlib.sha256(handle.read()).hexdigest() != info["tool_sha256"]

    rows = build_rows(bench)
    print("## apply_migrations.py benchmark\n")
    print("%s, %s (%d CPUs); Python %s (%s), SQLite %s; databases on %s (%s); %s; %d runs"
          " per figure, medians of whole processes; ratio = median of tool/floor over"
          " interleaved pairs.\n" % (
              info["platform"], info["cpu_model"], info["cpu_count"] or 0, info["python_version"],
              info["interpreter"], info["sqlite_version"], info["work_mount"],
              info["work_fstype"], info["tool_run_as"], args.runs))
    print(markdown_table(rows))
    print()
    misses = [row for row in rows if row[5] == "FAIL"]
    if error:
        print("**BENCHMARK ERROR** (the figures above are incomplete): %s\n" % error)
    if tool_changed:
        print("**WARNING: apply_migrations.py changed while the benchmark ran;"
              " the figures mix two versions.**\n")
    loads = [x[0] for x in (info["loadavg_at_start"], info["loadavg_at_end"]) if x]
    if loads and info["cpu_count"] and max(loads) > 0.5 * info["cpu_count"]:
        print("**WARNING: the machine was busy (1-minute load average %s on %d CPUs):"
              " other processes add noise; see the spread below and prefer the CPU"
              " ratios.**\n" % ("/".join("%.2f" % x for x in loads), info["cpu_count"]))
    if misses:
        print("**MISSED TARGETS (%d):**" % len(misses))
        for row in misses:
            print("- %s: %s, target %s" % (row[0], row[3] if TARGETS[row[6]][0] == "ratio"
                                            else row[1], row[4]))
    elif not error:
        print("All targets met.")
    print()
    print("Spread (noise):\n")
    print(spread_table(bench))
    print()
    lines = overhead_lines(bench)
    if lines:
        print("Overhead:\n")
        print("\n".join(lines))
    print("\nfdatasync of 4 KB in the work dir: %.0f us median; benchmark took %.0f s."
          % (info["fsync"]["median_us"], elapsed))

    result = {
        "machine": info, "runs": args.runs, "sizes": sizes, "seed": args.seed,
        "quick": args.quick, "elapsed_s": elapsed, "error": error, "tool_changed": tool_changed,
        "inputs": bench.meta,
        "figures": {key: s.to_json() for key, s in bench.series.items()},
        "import": bench.extra.get("import"),
        "table": [{"figure": r[0], "tool": r[1], "floor": r[2], "ratio": r[3], "target": r[4],
                   "result": r[5], "key": r[6], "value": r[7]} for r in rows],
        "misses": [r[6] for r in misses],
    }
    if args.json:
        folder = os.path.dirname(os.path.abspath(args.json))
        os.makedirs(folder, exist_ok=True)
        with open(args.json, "w") as handle:
            json.dump(result, handle, indent=1)
        print("Results: %s" % args.json)
    return 1 if error else 0


if __name__ == "__main__":
    sys.exit(main())
