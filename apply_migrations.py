#!/usr/bin/env python3
"""apply_migrations.py: schema migrations for SQLite and Cloudflare D1.

Migrations are the files named ``NNNN_description.sql`` directly inside the
migrations folder, applied in the order of their number.  Each file runs in
one transaction together with the row that records it in
``schema_migrations`` (version, name, SHA256 checksum, time, duration), so a
migration is either wholly applied and recorded or not at all.

    python apply_migrations.py init     --env dev
    python apply_migrations.py status   --env dev [--json] [--exit-code]
    python apply_migrations.py apply    --env dev [--verbose] [--dry-run]
    python apply_migrations.py rollback --version 0001_initial_schema --env dev
    python apply_migrations.py new      "Add user indexes"
    python apply_migrations.py check    (what Cloudflare D1 would reject)
    python apply_migrations.py schema   [--from-migrations] [--format mermaid]
    python apply_migrations.py history  [--stats] (every apply, failure, rollback)
    python apply_migrations.py baseline [--version 0003] (record, do not run)
    python apply_migrations.py accept   0002 --reason "comment fixed"

--wrangler-config keeps wrangler's own record in step on its local D1 file;
--d1-remote does all of this on a Cloudflare D1 database over its HTTP API.
As a library (from a test fixture, say):

    with Migrator("test.db", "migrations") as migrator:
        report = migrator.apply()        # RunReport; raises MigrationError

Standard library only; Python 3.8 or newer.  MIGRATION_SYSTEM.md is the manual.

Map of this file.  Sections run in dependency order: each uses only those
above it.

  1. Constants ............ table layouts, file names, defaults, exit codes
  2. Errors ............... MigrationError and its subclasses: what the core raises
  3. SQL text ............. split_sql, decode_sql, file_checksum: bytes to statements
  4. The migrations folder  Migration, scan_folder: the one scan that apply,
                            status, check and new share (names, numbers, links)
  5. D1 rules ............. D1_RULES, one entry per rule; check_statements, check_folder
  6. wrangler's config .... read_wrangler_config, wrangler_database
  7. Options .............. Options, resolve_options: every setting, resolved once;
                            Audit: who runs this
  8. Outcomes ............. Outcome, RunReport: what happened to each migration
  9. Bookkeeping .......... the SQL that reads, creates, records and forgets the
                            record (the tool's table and wrangler's) and appends to
                            the history, for every target; HistoryEvent, history_stats
 10. Targets .............. Target (the narrow interface), Step, Ran; SQLiteTarget
                            (group commit: savepoints in a transaction committed every
                            GROUP_COMMIT_SECONDS) over _SQLiteSteps (one step's
                            statements) over _SQLiteConnection (locks, stops)
 11. Remote D1 ............ D1Client (HTTP), D1Target (small migrations grouped in
                            one batch, one per batch after a failure)
 12. Planning ............. plan_migrations, prepare_statements, choose_rollback,
                            choose_baseline, choose_accept;
                            what a migration drops, who references it, and the
                            guard that keeps it from losing their rows
 13. Schemas .............. Schema, read_schema, replay_schema: what a database holds
                            and what the migrations make (drift, computed rollbacks,
                            baseline_matches); render_schema (SQL, JSON, markdown,
                            Mermaid)
 14. The engine ........... Migrator (the public entry); _Run (the migration loop,
                            and _Run.report, the one point where outcomes are told)
 15. Output ............... Console (streams, JSON, GitHub annotations, step
                            summaries) and show_* (what each command shows)
 16. Command line ......... the parser, one function per command, main()

Where a change goes:
  - a per-file option (say, a marker line that opts a file out of the
    transaction): read it in prepare_statements (12) into the Step (10), and
    honour it where each target runs a Step (SQLiteTarget.run, D1Target.run);
  - a new command such as `baseline`: a Migrator method (14) that writes
    Bookkeeping entries (9), and a cmd_ function and parser entry (16);
  - something more in the history: its entry in Bookkeeping (9), written
    with each Step's bookkeeping (what commits with the step) or from
    _Run.report (14), which sees every outcome (what happens after a
    rollback);
  - a new D1 rule: one function and one D1_RULES entry (5);
  - a new output format: a Console method or a show_ function (15), or for
    a schema, render_schema (13).

The public API is __all__; every other name is an implementation detail.

Start-up.  Every run pays for what the module imports, so four things stay
that the benchmark shows are worth it (README, Performance): typing is not
imported (annotations stay strings, and the named tuples say their fields'
types in their docstrings): about 3 ms and 1 MB a run; argparse runs without
its gettext lookups (which import locale and search the disk for catalogs)
and without shutil (which brings the compression modules): about 4 ms and
0.8 MB; and what only some commands need (json, urllib, hmac, tomllib,
traceback, threading) is imported where it is used; and regular
expressions are compiled on first use (_pattern): an apply needs a third
of them, about 3 ms a run.
"""
from __future__ import annotations

import argparse
import errno
import hashlib
import io
import os
import re
import signal
import sqlite3
import stat
import sys
import time
from collections import namedtuple
from contextlib import contextmanager

# Type hints are for type checkers only (see Start-up above).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import (Callable, Dict, Iterator, List, Mapping, Optional, Sequence, Set,
                        Tuple, Union)

__version__ = "1.2.0"

__all__ = [
    "Migrator", "RunReport", "Outcome", "MigrationStatus", "AppliedRow", "Migration",
    "HistoryEvent", "HistoryStats", "history_stats", "Audit",
    "Options", "Target", "Step", "Ran", "SQLiteTarget", "D1Target", "D1Client", "D1Settings",
    "MigrationError", "ConfigurationError", "DatabaseConnectError", "DatabaseWriteError",
    "TrackingTableError", "MigrationFileError", "MigrationFailed", "Interrupted",
    "D1Error", "D1Unsure", "SQLSplitError", "InvalidUTF8",
    "split_sql", "file_checksum", "scan_folder", "check_folder", "check_statements",
    "wrangler_database", "main",
]


# ==========================================================================
# 1. Constants
# ==========================================================================

class _pattern:
    """A regular expression compiled on its first use.  Each command uses a
    few of the file's patterns; compiling them all at import cost about 5 ms
    a run (bench/: import time).  After the first use its methods are the
    compiled pattern's own, so later calls cost what they would."""

    def __init__(self, pattern: str, flags: int = 0):
        self._source = (pattern, flags)

    def __getattr__(self, name: str):  # only until the first use
        compiled = re.compile(*self._source)
        for attr in ("match", "fullmatch", "search", "sub", "subn", "split", "findall",
                     "finditer", "pattern", "flags", "groups"):
            setattr(self, attr, getattr(compiled, attr))
        return getattr(compiled, name)


# Where the tool keeps its own record of what ran.
TRACKING_TABLE = "schema_migrations"
TRACKING_COLUMNS = ("version", "name", "checksum", "applied_at", "duration_ms")

# <digits>_<description>.sql; the digits, as written, are the version.
MIGRATION_FILENAME = _pattern(r"([0-9]+)_(.+)\.sql\Z", re.DOTALL)
VERSION_TEXT = _pattern(r"[0-9]+\Z")
CHECKSUM_TEXT = _pattern(r"[0-9a-f]{64}\Z")
# Down scripts live in a sub-folder so that tools which apply every *.sql in
# the migrations folder (wrangler among them) never run one by accident.
DOWN_DIR = "down"

DEFAULT_DB_PATH = "trading_brain.db"
DEFAULT_MIGRATIONS_DIR = "migrations"
DB_PATH_VARIABLE = "D1_DATABASE_PATH"
DEFAULT_LOCK_TIMEOUT = 60.0
# SQLite calls back into Python every this many VM steps, which is where a
# Ctrl-C during a long statement gets noticed; rare enough to cost nothing.
PROGRESS_STEPS = 10000
SLOW_STATEMENT_SECONDS = 2.0
# Group commit (local apply): each migration runs in a savepoint of a
# transaction that is committed once this long has passed since it began
# (and at the end, before a file that must run outside a transaction, at a
# stop, before a migration that runs long).  A commit (its journal made,
# synced and deleted) is most of a small migration's cost: at N=1000 on the
# benchmark machine one commit each takes 2x the time of one transaction,
# and 0.2 s, 0.5 s, 1 s groups take 1.18x, 1.16x, 1.11x.  Half a second
# bounds what a crash can undo and how long another writer waits; readers
# wait only while a commit writes.
GROUP_COMMIT_SECONDS = 0.5
# The page cache of a run's connection, in KiB (SQLite's default is 2 MB): a
# writer whose cache spills must lock readers out until it commits.
WRITE_CACHE_KIB = 65536
SQL_SAVEPOINT = "SAVEPOINT apply_migrations"
SQL_RELEASE = "RELEASE apply_migrations"
SQL_ROLLBACK_TO = "ROLLBACK TO apply_migrations"

UTF8_BOM = b"\xef\xbb\xbf"
TRANSACTION_KEYWORDS = frozenset(
    ("BEGIN", "COMMIT", "END", "ROLLBACK", "SAVEPOINT", "RELEASE")
)
# Settings that a migration must not change: they last for the rest of the
# run, and the tool's transactions rely on them (journal_mode=OFF leaves a
# failing migration half done; WAL cannot be entered inside a transaction,
# so it would work or fail by where the group commit fell; an EXCLUSIVE
# locking_mode keeps every other process out until the run ends; query_only
# makes the tool's own record fail to be written).
RUN_PRAGMAS = frozenset(("journal_mode", "locking_mode", "query_only"))

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130  # 128 + SIGINT; SIGTERM gives 128 + 15

SQL_CREATE_TRACKING = """\
CREATE TABLE IF NOT EXISTS {table} (
    version     TEXT PRIMARY KEY NOT NULL,
    name        TEXT NOT NULL,
    checksum    TEXT NOT NULL,
    applied_at  TEXT NOT NULL,
    duration_ms REAL NOT NULL
)"""
SQL_SELECT_APPLIED = (
    "SELECT version, name, checksum, applied_at, duration_ms FROM {table}"
)
SQL_INSERT_APPLIED = (
    "INSERT INTO {table} (version, name, checksum, applied_at, duration_ms)"
    " VALUES (?, ?, ?, ?, ?)"
)
SQL_DELETE_APPLIED = "DELETE FROM {table} WHERE version = ?"
SQL_SET_DURATION = "UPDATE {table} SET duration_ms = ? WHERE version = ?"
# What the tool knows of the schema it left: a fingerprint of the schema,
# taken when the applied migrations were `applied` (a digest of them) and the
# schema was known to be theirs.  `status` compares it with the database's to
# learn, without replaying every migration, that nothing else changed it.
STATE_TABLE = "schema_migrations_state"
SQL_CREATE_STATE = """\
CREATE TABLE IF NOT EXISTS {table} (
    id          INTEGER PRIMARY KEY CHECK (id = 1),
    applied     TEXT NOT NULL,
    fingerprint TEXT NOT NULL
)"""
SQL_READ_STATE = "SELECT applied, fingerprint FROM {table} WHERE id = 1"
SQL_WRITE_STATE = "INSERT OR REPLACE INTO {table} (id, applied, fingerprint) VALUES (1, ?, ?)"
SQL_TABLE_COLUMNS = "SELECT name FROM pragma_table_info(?)"
# The columns of three tables in one read (on D1, one round trip instead of
# three); the result's columns are named apart, as a JSON answer keeps them.
SQL_TABLES_COLUMNS = (
    "SELECT t.name AS table_name, p.name AS column_name FROM (SELECT 0 AS k, ? AS name"
    " UNION ALL SELECT 1, ? UNION ALL SELECT 2, ?) AS t, pragma_table_info(t.name) AS p"
    " ORDER BY t.k, p.cid")
# The history: one row per event, appended and never changed, so that the
# tracking table (the present) keeps its layout and wrangler's stays wrangler's.
HISTORY_TABLE = "schema_migrations_history"
HISTORY_COLUMNS = ("id", "run", "event", "outcome", "version", "name", "checksum",
                   "started_at", "duration_ms", "statement", "line", "error", "detail",
                   "os_user", "host", "ci_repository", "ci_run", "ci_commit", "ci_actor")
HISTORY_EVENTS = ("apply", "rollback", "baseline", "accept", "bookmark")
HISTORY_OUTCOMES = ("succeeded", "failed", "interrupted")
SQL_CREATE_HISTORY = """\
CREATE TABLE IF NOT EXISTS {table} (
    id            INTEGER PRIMARY KEY,
    run           TEXT NOT NULL,
    event         TEXT NOT NULL,
    outcome       TEXT NOT NULL,
    version       TEXT NOT NULL,
    name          TEXT NOT NULL,
    checksum      TEXT,
    started_at    TEXT NOT NULL,
    duration_ms   REAL,
    statement     INTEGER,
    line          INTEGER,
    error         TEXT,
    detail        TEXT,
    os_user       TEXT,
    host          TEXT,
    ci_repository TEXT,
    ci_run        TEXT,
    ci_commit     TEXT,
    ci_actor      TEXT
)"""
SQL_INSERT_HISTORY = (
    "INSERT INTO {table} (" + ", ".join(HISTORY_COLUMNS[1:]) + ")"
    " VALUES (" + ", ".join("?" * (len(HISTORY_COLUMNS) - 1)) + ")")
SQL_SELECT_HISTORY = "SELECT " + ", ".join(HISTORY_COLUMNS) + " FROM {table}"
# Per migration, its latest apply, rollback or baseline: what `status` tells.
SQL_LATEST_HISTORY = (
    SQL_SELECT_HISTORY + " WHERE id IN (SELECT max(id) FROM {table}"
    " WHERE event IN ('apply', 'rollback', 'baseline') GROUP BY version, name)")
SQL_SET_CHECKSUM = "UPDATE {table} SET checksum = ? WHERE version = ?"

# wrangler's own record (`wrangler d1 migrations apply`), kept in step with
# --wrangler: the same DDL, so that wrangler accepts the table as its own.
WRANGLER_TABLE = "d1_migrations"
SQL_CREATE_WRANGLER = """\
CREATE TABLE IF NOT EXISTS {table}(
		id         INTEGER PRIMARY KEY AUTOINCREMENT,
		name       TEXT UNIQUE,
		applied_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP NOT NULL
)"""
SQL_SELECT_WRANGLER = "SELECT name, applied_at FROM {table}"
SQL_INSERT_WRANGLER = "INSERT INTO {table} (name) VALUES (?)"
SQL_RECORD_WRANGLER = "INSERT OR IGNORE INTO {table} (name) VALUES (?)"
SQL_DELETE_WRANGLER = "DELETE FROM {table} WHERE name = ?"
# Where `wrangler dev` / `wrangler d1 ... --local` keep a D1 database,
# below the config's folder (or below --persist-to instead of .wrangler/state).
WRANGLER_STATE_DIR = os.path.join(".wrangler", "state")
WRANGLER_D1_DIR = os.path.join("v3", "d1", "miniflare-D1DatabaseObject")

D1_API_BASE = "https://api.cloudflare.com/client/v4"
D1_ACCOUNT_VARIABLE = "CLOUDFLARE_ACCOUNT_ID"
D1_DATABASE_VARIABLE = "D1_DATABASE_ID"
D1_TOKEN_VARIABLE = "CLOUDFLARE_API_TOKEN"
D1_API_BASE_VARIABLE = "CLOUDFLARE_API_BASE_URL"
DEFAULT_HTTP_TIMEOUT = 30.0
MAX_HTTP_TIMEOUT = 3600.0  # beyond this a wait is a hang (and far beyond, an OverflowError)
DEFAULT_HTTP_RETRIES = 4
MAX_HTTP_RETRIES = 100
D1_MAX_STATEMENT_BYTES = 100_000
# Consecutive small migrations go to D1 in one request (one transaction):
# at most this many, with at most this many bytes of SQL (UTF-8) together
# (D1 gives a request 30 s; a few hundred KB of DDL and small inserts take
# well under one).
D1_GROUP_STEPS = 100
D1_GROUP_BYTES = 400_000


# ==========================================================================
# 2. Errors: the core raises these; the command line turns them into one
#    line and an exit code.
# ==========================================================================

# A setting named inside a message.  The core does not know whether it runs
# under the command line (`--lock-timeout`) or a Python caller
# (`lock_timeout=`): a message marks the setting, and whoever shows it
# spells it (MigrationError.message).
_OPTION_MARK = _pattern("\x00([a-z_]+)\x00")


def _opt(name: str) -> str:
    """Mark the setting `name` (an Options attribute) inside a message."""
    return f"\x00{name}\x00"


def _python_spelling(name: str) -> str:
    return name


class MigrationError(Exception):
    """A failure reported to the user as one line.  `options` names the
    settings (Options attributes) that the message refers to."""

    exit_code = EXIT_FAILED

    def __init__(self, message: str):
        self.marked = message
        self.options = _OPTION_MARK.findall(message)
        # What the run did before this error (set by the engine).
        self.report: Optional[RunReport] = None
        super().__init__(message)

    def message(self, spell: Callable[[str], str] = _python_spelling) -> str:
        """The message, with each setting it names spelled by `spell`
        (the command line spells lock_timeout as --lock-timeout)."""
        return _OPTION_MARK.sub(lambda m: spell(m.group(1)), self.marked)

    def __str__(self) -> str:
        return self.message()


class ConfigurationError(MigrationError):
    """A bad option, value or environment: nothing was touched."""

    exit_code = EXIT_USAGE


class DatabaseConnectError(MigrationError):
    """The database could not be opened or is not a SQLite database."""

    exit_code = EXIT_USAGE

    def __init__(self, reason: str):
        super().__init__(f"Failed to connect to database: {reason}")


class DatabaseWriteError(MigrationError):
    """SQLite refused a write for a reason outside the migration (locked,
    read-only, disk full)."""


class TrackingTableError(MigrationError):
    """The tracking table exists but is not one this tool can trust."""


class MigrationFileError(MigrationError):
    """A migration file or folder is unusable (name, encoding, duplicates)."""


class MigrationFailed(MigrationError):
    """A migration (or its rollback) could not be run; it left nothing.
    Says where: the file, statement number, line and SQL when known."""

    def __init__(self, name: str, path: Optional[str], reason: str,
                 statement: Optional[int] = None, line: Optional[int] = None,
                 sql: Optional[str] = None, action: str = "apply",
                 note: Optional[str] = None):
        self.name = name
        self.path = path
        self.reason = reason
        self.statement = statement
        self.line = line
        self.sql = sql
        self.action = action
        self.note = note  # what happened to the rest of the run
        where = [os.path.basename(path)] if path else []
        if statement is not None:
            where.append(f"statement {statement}")
        if line is not None:
            where.append(f"line {line}")
        super().__init__(
            f"Failed to {action} migration {name}: {reason}"
            + (f" ({', '.join(where)})" if where else "")
            + (f"; {note}" if note else ""))

    def with_note(self, note: str) -> "MigrationFailed":
        noted = MigrationFailed(self.name, self.path, self.reason, self.statement,
                                self.line, self.sql, self.action, note)
        noted.__cause__ = self.__cause__  # a database that cannot be written, say
        return noted


class Interrupted(MigrationError):
    """SIGINT or SIGTERM arrived and the run stopped at a safe point.

    `state` says what became of the migration in progress (`current`):
    "rolled back", "not sent" (remote: stopped before it went), "unknown"
    (remote: sent, and the answer did not come), or None when the stop
    came between migrations.  `applied` counts what this run committed.
    """

    def __init__(self, signum: int, applied: int = 0, current: Optional[str] = None,
                 state: Optional[str] = None, whole_run: bool = False,
                 action: str = "apply"):
        self.signum = signum
        self.applied = applied
        self.current = current
        self.state = state
        self.whole_run = whole_run
        self.action = action
        self.exit_code = 128 + signum
        super().__init__(self._words())

    def _words(self) -> str:
        done = f"{self.applied} migration{'s' if self.applied != 1 else ''} applied in this run"
        current, state = self.current, self.state
        if self.action == "rollback":
            if state == "unknown":
                return (f"Interrupted while the rollback of {current} was on its way to D1:"
                        " D1 ran it wholly or not at all, and `status` shows whether it is"
                        " still applied")
            if state == "not sent":
                return f"Interrupted before the rollback of {current} was sent; it is still applied"
            return f"Interrupted: the rollback of {current} was undone; it is still applied"
        if self.whole_run:
            return f"Interrupted: the whole run was rolled back; {done}"
        if state == "unknown":
            return (f"Interrupted while {current} was on its way to D1: D1 applied it wholly"
                    f" or not at all, and `status` shows which; {done} before it")
        if state == "not sent":
            return f"Interrupted before {current} was sent to D1; {done}"
        if current:
            return f"Interrupted: {current} rolled back; {done}"
        return f"Interrupted: {done}"


class D1Error(MigrationError):
    """D1 refused a request; nothing of it was committed."""

    def __init__(self, message: str, code: Optional[int] = None,
                 status: Optional[int] = None):
        self.code = code
        self.status = status
        super().__init__(message)


class D1Unsure(D1Error):
    """The request may or may not have reached D1 (a timeout, a dropped
    connection, a 5xx): only the tracking table can tell whether it ran.
    `steps`: how many migrations it carried, when that is known (the engine
    reports each as unknown)."""

    steps = 1


class _NotSent(D1Error):
    """A stop was requested while the client waited to send a request again:
    it was not sent again (and no earlier attempt of a write can have run)."""


class SQLSplitError(ValueError):
    """The SQL text ends inside a string, comment or trigger body."""

    def __init__(self, reason: str, offset: int, line: int):
        self.reason = reason
        self.offset = offset
        self.line = line
        super().__init__(f"{reason} (line {line})")


class InvalidUTF8(SQLSplitError):
    """The file's bytes are not UTF-8."""


class _Stop(Exception):
    """A target stopped at a safe point because a stop was requested.  The
    engine turns it into Interrupted, with the run's counts."""

    def __init__(self, signum: int, state: Optional[str], steps: int = 1):
        self.signum = signum
        self.state = state  # what became of the step in progress (Interrupted.state)
        self.steps = steps  # how many steps that is (remote: one batch can hold several)
        super().__init__(state)


class _Locked(DatabaseWriteError):
    """The lock waited for did not come within lock_timeout."""


class _Yield(Exception):
    """Group commit: a step ran long while those before it waited for their
    commit, so it was stopped and rolled back, to run again after that
    commit (SQLiteTarget.run)."""


# ==========================================================================
# 3. SQL text: how a file's bytes become statements.
# ==========================================================================


class Statement(namedtuple("Statement", "sql line keyword start end")):
    """One SQL statement of a file.

    sql (str)
    line (int): the line it starts on
    keyword (str): its upper-cased first word ("CREATE", "BEGIN"; "" if none)
    start (int): offsets in the file's text
    end (int)
    """

    __slots__ = ()


# The splitter reads text the way SQLite's sqlite3_complete() does (its
# complete.c): a statement ends at a ';' outside quotes and comments, except
# inside CREATE [TEMP] TRIGGER, which ends only at a ';' that follows
# "; END".  Long stretches without a ';', quote or comment are consumed by
# one regular-expression step, so splitting is linear in the size of the
# text, and sqlite3.complete_statement (complete.c itself) confirms every
# statement it finds.

# Identifier characters as complete.c counts them (letters, digits, _, $ and
# everything beyond ASCII), written as "not the other ASCII characters": the
# same set, and far cheaper for `re` to compile than a range up to U+10FFFF.
_ID_CHAR = r"^\x00-\x23\x25-\x2f\x3a-\x40\x5b-\x5e\x60\x7b-\x7f"
_COMMENT = r"--[^\n]*(?:\n|\Z)|/\*[^*]*\*+(?:[^/*][^*]*\*+)*/"
_SPACE = r"[ \t\n\f\r]+"
_GAP = _pattern(rf"(?:{_SPACE}|{_COMMENT}|;)*")
# Up to a few hundred tokens per match: `re` keeps a backtracking mark for
# each repetition, so an unbounded `*` over a quote-heavy 1 MB statement
# would hold ten times its size; _skip_body loops instead.
_BODY = _pattern(
    rf"""(?:[^;'"`\[/\-]+|'[^']*'|"[^"]*"|`[^`]*`|\[[^\]]*\]|{_COMMENT}|/(?!\*)|-(?!-)){{0,256}}"""
)
_HEAD_TOKEN = _pattern(
    rf"""(?s)(?:{_SPACE}|{_COMMENT})+|[{_ID_CHAR}]+|'[^']*'|"[^"]*"|`[^`]*`|\[[^\]]*\]|[^;]"""
)
_FIRST_WORD = _pattern(rf"[{_ID_CHAR}]+")
# The head of a statement: whether CREATE [TEMP] TRIGGER opens it.  Blanks
# are matched one character per step: with `[ \t\n\f\r]+` inside the `*`, a
# failed match would retry every way of cutting a run of blanks.
_TRIGGER_HEAD = _pattern(
    rf"[Cc][Rr][Ee][Aa][Tt][Ee](?:[ \t\n\f\r]|{_COMMENT}"
    rf"|[Tt][Ee][Mm][Pp](?:[Oo][Rr][Aa][Rr][Yy])?(?![{_ID_CHAR}]))*?"
    rf"(?<![{_ID_CHAR}])[Tt][Rr][Ii][Gg][Gg][Ee][Rr](?![{_ID_CHAR}])"
)
_TRIGGER_END = _pattern(
    rf"(?:[ \t\n\f\r;]|{_COMMENT})*[Ee][Nn][Dd](?![{_ID_CHAR}])(?:[ \t\n\f\r]|{_COMMENT})*(;|\Z)"
)
_IDENTIFIER = _pattern(rf"[{_ID_CHAR}]+\Z")
_UNTERMINATED = {
    "'": "unterminated string literal",
    '"': 'unterminated "quoted" identifier',
    "`": "unterminated `quoted` identifier",
    "[": "unterminated [bracketed] identifier",
    "/": "unterminated /* comment",
}

# complete.c's states that matter while reading the head of a statement.
_START, _NORMAL, _EXPLAIN, _CREATE, _TRIGGER = range(5)


def _skip_body(text: str, pos: int) -> int:
    """The position of the next ';' outside strings and comments (or of an
    unterminated string or comment, or the end of the text)."""
    n = len(text)
    while True:
        end = _BODY.match(text, pos).end()
        if end == pos or end >= n or text[end] == ";":
            return end
        pos = end


def _line_at(text: str, offset: int) -> int:
    return text.count("\n", 0, offset) + 1


def _unterminated(text: str, pos: int) -> SQLSplitError:
    return SQLSplitError(_UNTERMINATED[text[pos]], pos, _line_at(text, pos))


def _head_state(text: str, pos: int, first_word) -> "tuple[int, int]":
    """Read the head of the statement at pos as complete.c does: returns
    (_TRIGGER or _NORMAL, the position after the head)."""
    n = len(text)
    word = first_word.group().lower() if first_word else ""
    if first_word and word != "explain":
        # The common case at once: any first word but EXPLAIN decides.
        trigger = _TRIGGER_HEAD.match(text, pos) if word == "create" else None
        return (_TRIGGER, trigger.end()) if trigger else (_NORMAL, first_word.end())
    state = _START
    # Otherwise read tokens while they can still make this a CREATE TRIGGER.
    while state not in (_NORMAL, _TRIGGER) and pos < n and text[pos] != ";":
        token = _HEAD_TOKEN.match(text, pos).group()
        first = token[0]
        if first in "'\"`[" and (len(token) == 1 or token[-1] not in "'\"`]"):
            raise _unterminated(text, pos)
        if first == "/" and text.startswith("/*", pos) and len(token) == 1:
            raise _unterminated(text, pos)
        pos += len(token)
        if first in " \t\n\f\r" or token.startswith(("--", "/*")):
            continue
        word = token.lower() if first.isalnum() or first in "_$" or first >= "\x80" else ""
        if state == _START:
            state = {"explain": _EXPLAIN, "create": _CREATE}.get(word, _NORMAL)
        elif state == _EXPLAIN:
            if word == "create":
                state = _CREATE
            elif word in ("explain", "temp", "temporary", "trigger", "end"):
                state = _NORMAL
        elif state == _CREATE:
            if word == "trigger":
                state = _TRIGGER
            elif word not in ("temp", "temporary"):
                state = _NORMAL
    return (_TRIGGER if state == _TRIGGER else _NORMAL), pos


def _statement_end(text: str, start: int, first_word) -> int:
    """The end of the statement starting at start (after its ';', or the end
    of the text); raises SQLSplitError where the text ends inside a string,
    identifier, comment or trigger body."""
    n = len(text)
    state, pos = _head_state(text, start, first_word)
    if state == _TRIGGER:
        while True:
            pos = _skip_body(text, pos)
            if pos >= n:
                raise SQLSplitError("CREATE TRIGGER has no END", start, _line_at(text, start))
            if text[pos] != ";":
                raise _unterminated(text, pos)
            pos += 1
            end_match = _TRIGGER_END.match(text, pos)
            if end_match:
                pos = end_match.end() - len(end_match.group(1))
                break
            # Every ';' of this run of blanks, comments and ';' leads to the
            # same next token, which is not an ending END: skip the run.
            pos = _GAP.match(text, pos).end()
    else:
        pos = _skip_body(text, pos)
    if pos < n:
        if text[pos] != ";":
            raise _unterminated(text, pos)
        end = pos + 1
        complete = sqlite3.complete_statement(text[start:end])
    else:
        end = n
        complete = sqlite3.complete_statement(text[start:end] + "\n;")
    if not complete:
        raise SQLSplitError("incomplete statement", start, _line_at(text, start))
    return end


def split_sql(text: str) -> List[Statement]:
    """Split SQL text into statements exactly where SQLite would.

    Whitespace, comments and empty statements between statements belong to
    no statement.  The last statement may lack its ';'.  Raises SQLSplitError
    when the text ends inside a string, identifier, comment or trigger body.
    """
    nul = text.find("\x00")
    if nul >= 0:
        # SQLite would take it for the end of the text and drop the rest.
        raise SQLSplitError("a NUL character is not allowed in SQL text", nul,
                            _line_at(text, nul))
    statements: List[Statement] = []
    n = len(text)
    line, counted = 1, 0
    pos = _GAP.match(text).end()
    while pos < n:
        start = pos
        # A statement starts at a token: a word gives its keyword; a quote,
        # a number or punctuation gives none.
        first_word = _FIRST_WORD.match(text, start)
        end = _statement_end(text, start, first_word)
        line += text.count("\n", counted, start)
        counted = start
        statements.append(Statement(text[start:end], line,
                                    first_word.group().upper() if first_word else "",
                                    start, end))
        pos = _GAP.match(text, end).end()
    return statements


def file_checksum(data: bytes) -> str:
    """SHA256 of a migration file, blind to a UTF-8 BOM and to CRLF vs LF.

    A checkout with git's autocrlf, or an editor that adds a BOM, must not
    make an applied migration look modified.  Everything else counts.
    """
    if data.startswith(UTF8_BOM):
        data = data[len(UTF8_BOM):]
    return hashlib.sha256(data.replace(b"\r\n", b"\n")).hexdigest()


def decode_sql(data: bytes) -> str:
    """Decode a migration file as UTF-8, skipping a BOM; line endings stay.

    Raises InvalidUTF8 with the byte offset (in the file) of the first bad byte.
    """
    skip = len(UTF8_BOM) if data.startswith(UTF8_BOM) else 0
    try:
        return data[skip:].decode("utf-8") if skip else data.decode("utf-8")
    except UnicodeDecodeError as exc:
        offset = skip + exc.start
        raise InvalidUTF8(
            f"not valid UTF-8: byte 0x{data[offset]:02x} at byte offset {offset};"
            " save the file as UTF-8",
            offset, data.count(b"\n", 0, offset) + 1,
        ) from None


def is_terminated(statement: Statement) -> bool:
    """Whether a statement ends with its own ';' (only the last one of a file
    may not; a ';' inside its trailing comment does not count)."""
    return statement.sql.endswith(";") and sqlite3.complete_statement(statement.sql)


def quote_identifier(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def utc_now() -> str:
    # Not time.strftime: its locale round trip costs 5 us a call, a tracking row each.
    return "%04d-%02d-%02dT%02d:%02d:%02dZ" % time.gmtime()[:6]


def utc_ms(seconds: float) -> str:
    """A Unix time as the history writes it: UTC, to the millisecond."""
    whole = int(seconds)
    return "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ" % (
        time.gmtime(whole)[:6] + (int((seconds - whole) * 1000),))


def format_ms(ms: float) -> str:
    if ms < 1000:
        return f"{ms:.1f} ms"
    return f"{ms / 1000:.1f} s"


# ==========================================================================
# 4. The migrations folder: one scan, one set of rules, for every command.
# ==========================================================================


class Migration:
    """One migration file (or down script).  Its bytes are read once, when
    first needed.

    Its `key` is what the record knows it by: under the tool's rules its
    number (so 0001_x.sql and 1_x.sql are one migration); under wrangler's,
    its file name.  Its `version` is what the tracking row stores: the
    digits of its name, or under wrangler's rules the name itself."""

    __slots__ = ("version", "key", "name", "path", "_data", "_checksum")

    def __init__(self, version: str, name: str, path: str,
                 key: Union[int, str, None] = None):
        self.version = version
        self.key = int(version) if key is None else key
        self.name = name  # the file name without ".sql": 0001_initial_schema
        self.path = path
        self._data: Optional[bytes] = None
        self._checksum: Optional[str] = None

    @property
    def filename(self) -> str:
        return self.name + ".sql"

    @property
    def data(self) -> bytes:
        if self._data is None:
            self._data = _read_file(self.path)
        return self._data

    @property
    def checksum(self) -> str:
        if self._checksum is None:
            self._checksum = file_checksum(self.data)
        return self._checksum

    def statements(self, action: str = "apply") -> List[Statement]:
        """The file's statements, or MigrationFailed naming the file and line.

        The checksum is taken from the same bytes first (the tracking row
        must describe what runs), then the bytes are let go: a run keeps
        every pending file's statements until it ends, and a large data
        migration need not stay in memory twice.
        """
        data, _ = self.data, self.checksum  # the checksum of these very bytes
        self._data = None
        try:
            return split_sql(decode_sql(data))
        except SQLSplitError as exc:
            raise MigrationFailed(self.name, self.path, exc.reason, line=exc.line,
                                  action=action) from None

    def __repr__(self) -> str:
        return f"Migration({self.name!r})"


def _read_file(path: str) -> bytes:
    try:
        with open(path, "rb") as handle:
            return handle.read()
    except OSError as exc:
        raise MigrationFileError(f"Cannot read {path}: {exc.strerror}") from None


class Finding(namedtuple("Finding", "severity path line code message")):
    """One problem found in the migrations: where, how bad, and what to do.

    severity (str): "error" or "warning"
    path (str)
    line (Optional[int]): None: the whole file
    code (str)
    message (str)
    """

    __slots__ = ()


class FolderScan(namedtuple("FolderScan", "folder migrations findings numbers")):
    """What the migrations folder holds.

    folder (str)
    migrations (List[Migration]): the usable migrations, by number
    findings (List[Finding]): about names and files (check_folder adds contents)
    numbers (List[int]): the number in front of every *.sql name, usable or not
    """

    __slots__ = ()

    def blocking(self) -> List[Finding]:
        """The findings that leave the folder's meaning unclear: apply and
        status stop on them (the others are warnings there)."""
        return [f for f in self.findings if f.code in BLOCKING_FOLDER_FINDINGS]

    def refusal(self, nothing_done: str = "") -> Optional[MigrationFileError]:
        """The error that stops apply and status, if any finding is blocking."""
        blocking = self.blocking()
        if not blocking:
            return None
        more = f" (and {len(blocking) - 1} more problem{'s' if len(blocking) > 2 else ''})" \
            if len(blocking) > 1 else ""
        return MigrationFileError(f"{blocking[0].path}: {blocking[0].message}{more}."
                                  + (f" {nothing_done}" if nothing_done else ""))


# Findings about the folder that stop apply and status.  A misnamed *.sql file
# only warns there: it is not a migration, and `check` reports it as an error.
BLOCKING_FOLDER_FINDINGS = frozenset(
    ("duplicate-number", "name-not-utf8", "broken-link", "not-a-file", "unreadable"))
_LEADING_NUMBER = _pattern(r"[0-9]+")


def scan_folder(folder: str, wrangler: bool = False) -> FolderScan:
    """Every *.sql entry directly in `folder`, judged once: migrations in
    order, and findings for what is not one (a misnamed file, a duplicate
    number, a broken link, something that is not a file).  Under wrangler's
    rules (wrangler=True) every file whose name ends in ".sql" is a
    migration, known by its name and put in wrangler's order (wrangler_order).
    Reads names only, no file contents."""
    if not folder:
        raise ConfigurationError(
            f"The migrations folder is an empty string; pass {_opt('migrations_dir')}")
    try:
        with os.scandir(folder) as listing:
            entries = sorted(listing, key=lambda entry: entry.name)
    except FileNotFoundError:
        raise ConfigurationError(
            f"Migrations folder {folder} does not exist;"
            f" create it or pass {_opt('migrations_dir')}") from None
    except NotADirectoryError:
        raise ConfigurationError(
            f"Migrations folder {folder} is not a folder; pass {_opt('migrations_dir')}"
        ) from None
    except OSError as exc:
        raise ConfigurationError(
            f"Cannot read migrations folder {folder}: {exc.strerror}") from None
    migrations: List[Migration] = []
    findings: List[Finding] = []
    numbers: List[int] = []
    by_number: Dict[int, Migration] = {}

    def find(code: str, path: str, message: str) -> None:
        findings.append(Finding("error", path, None, code, message))

    for entry in entries:
        name = entry.name
        if not (name.endswith(".sql") if wrangler else name.lower().endswith(".sql")):
            continue
        path = os.path.join(folder, name)
        leading = _LEADING_NUMBER.match(name)
        if leading:
            numbers.append(int(leading.group()))
        # is_file() needs no system call for a plain file (the folder's
        # listing says what each entry is); the rest is looked at closely.
        problem = None if _is_file(entry) else _not_a_file(path)
        if problem:
            find(*problem)
            continue
        if not _is_utf8_name(name):
            find("name-not-utf8", path,
                 f"the file name {path!r} is not valid UTF-8, so it cannot be recorded;"
                 " rename the file")
            continue
        if wrangler:
            migrations.append(Migration(name[:-4], name[:-4], path, key=name))
            continue
        match = MIGRATION_FILENAME.match(name)
        if not match:
            find("bad-name", path, "the name does not match NNNN_description.sql:"
                 " apply_migrations.py ignores it, but wrangler would apply it (and if"
                 " wrangler has, renaming it makes wrangler apply it again): rename it, or"
                 " use wrangler's rules (--wrangler-config or --wrangler)")
            continue
        migration = Migration(match.group(1), name[:-4], path)
        twin = by_number.get(migration.key)  # type: ignore[arg-type]
        if twin is not None:
            # sqlx's and golang-migrate's NNNN_x.up.sql / NNNN_x.down.sql
            paired = {n.lower()[:-4].rsplit(".", 1)[-1] for n in (name, twin.filename)}
            find("duplicate-number", path,
                 f"the number {migration.key} is also used by {twin.filename};"
                 + (" a down script belongs in the down/ sub-folder, under the name of its"
                    " migration" if paired == {"up", "down"} else " renumber one of them"))
            continue
        by_number[migration.key] = migration  # type: ignore[index]
        migrations.append(migration)
    if wrangler:
        # The tracking row's version: the digits where they name one file
        # alone (as under the tool's rules), else the whole name.
        shared: Dict[str, int] = {}
        for m in migrations:
            match = MIGRATION_FILENAME.match(m.filename)
            if match:
                shared[match.group(1)] = shared.get(match.group(1), 0) + 1
        for m in migrations:
            match = MIGRATION_FILENAME.match(m.filename)
            if match and shared[match.group(1)] == 1:
                m.version = match.group(1)
        migrations = wrangler_order(migrations)
    else:
        migrations.sort(key=lambda m: m.key)
    return FolderScan(folder, migrations, findings, numbers)


# wrangler's order, read from its source (wrangler 4.86, src/d1/migrations:
# getMigrationNames and `d1 migrations apply`): the names in JavaScript's
# default order (UTF-16 code units), then a stable sort by parseInt of the
# text before the first "_", with a comparator that calls a NaN (a name with
# no number) neither less nor greater than anything.  V8 sorts an array of
# fewer than 64 items by one binary insertion sort after the first run
# (_v8_small_sort): with such a comparator the result depends on exactly
# those steps, which are reproduced.  Larger arrays go through CPython's
# sort, the same TimSort, which agrees whenever every name has a number.
_JS_SPACE = " \t\n\v\f\r\u00a0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006" \
    "\u2007\u2008\u2009\u200a\u2028\u2029\u202f\u205f\u3000\ufeff"
_JS_INT = _pattern(r"([+-]?)(?:0[xX]([0-9a-fA-F]+)|([0-9]+))")


def js_parse_int(text: str) -> Optional[float]:
    """JavaScript's parseInt(text), None for NaN."""
    match = _JS_INT.match(text.lstrip(_JS_SPACE))
    if not match:
        return None
    value = float(int(match.group(2), 16) if match.group(2) else int(match.group(3)))
    return -value if match.group(1) == "-" else value


def wrangler_number(filename: str) -> Optional[float]:
    """The number wrangler orders a migration by (None: NaN)."""
    return js_parse_int(filename.split("_")[0])


def _utf16(name: str) -> bytes:
    return name.encode("utf-16-be", "surrogatepass")


def _wrangler_compare(a: Migration, b: Migration) -> int:
    x, y = wrangler_number(a.filename), wrangler_number(b.filename)
    if x is None or y is None:
        return 0
    return -1 if x < y else 1 if x > y else 0


def wrangler_order(migrations: List[Migration]) -> List[Migration]:
    """Migrations in the order `wrangler d1 migrations apply` runs them."""
    import functools
    items = sorted(migrations, key=lambda m: _utf16(m.filename))
    if len(items) < 64:
        return _v8_small_sort(items, _wrangler_compare)
    return sorted(items, key=functools.cmp_to_key(_wrangler_compare))


def _v8_small_sort(items: list, compare: Callable) -> list:
    """V8's Array.prototype.sort for fewer than 64 items: the first run
    (reversed when strictly descending), then binary insertion."""
    items = list(items)
    n = len(items)
    if n < 2:
        return items
    run = 2
    descending = compare(items[1], items[0]) < 0
    while run < n:
        order = compare(items[run], items[run - 1])
        if (order >= 0) if descending else (order < 0):
            break
        run += 1
    if descending:
        items[:run] = items[:run][::-1]
    for start in range(run, n):
        pivot, left, right = items[start], 0, start
        while left < right:
            middle = left + ((right - left) >> 1)
            if compare(pivot, items[middle]) < 0:
                right = middle
            else:
                left = middle + 1
        items[left + 1:start + 1] = items[left:start]
        items[left] = pivot
    return items


def _is_file(entry: os.DirEntry) -> bool:
    try:
        return entry.is_file()
    except OSError:
        return False


def _not_a_file(path: str) -> Optional["tuple[str, str, str]"]:
    """(code, path, message) when path cannot be a migration file: a
    broken or looping link, a folder, a FIFO or device; None for a file."""
    try:
        mode = os.stat(path).st_mode
    except OSError as exc:
        if os.path.islink(path):
            why = ("a symbolic link that loops" if exc.errno == errno.ELOOP
                   else f"a symbolic link to {os.readlink(path)!r}, which does not exist")
            return ("broken-link", path, f"it is {why}; fix or remove the link")
        return ("unreadable", path, f"cannot read it: {exc.strerror}")
    if stat.S_ISDIR(mode):
        return ("not-a-file", path, "it is a folder, not a migration file; rename or move it")
    if not stat.S_ISREG(mode):
        return ("not-a-file", path,
                "it is not a regular file (a FIFO, socket or device); a migration must"
                " be a file")
    return None


def _is_utf8_name(name: str) -> bool:
    """False for a file name whose bytes are not UTF-8 (Python decodes them
    to lone surrogates, which neither SQLite nor JSON can store)."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def find_migration(version: str, candidates):
    """The item of candidates (each with .version and .name) that version
    names: "0001", "1", "0001_initial_schema" or "0001_initial_schema.sql".
    A number that several names start with is an error (wrangler's rules
    allow two files with one number): the name must be given."""
    wanted = os.path.basename(version[:-4] if version.endswith(".sql") else version)
    for item in candidates:
        if wanted == item.name:
            return item
    if VERSION_TEXT.match(wanted):
        found = [item for item in candidates if _number_of(item.name) == int(wanted)]
        if len(found) > 1:
            raise ConfigurationError(
                f"{version} could be any of {', '.join(i.name for i in found)}; give the"
                " name of the one you mean")
        return found[0] if found else None
    return None


def _names(version: str, name: str) -> bool:
    """Whether `version`, as rollback takes it (0001, 1, the name, the file
    name), names the migration `name`."""
    wanted = os.path.basename(version[:-4] if version.endswith(".sql") else version)
    return name == wanted or (VERSION_TEXT.match(wanted) is not None
                              and _number_of(name) == int(wanted))


def _number_of(name: str) -> Optional[int]:
    leading = _LEADING_NUMBER.match(name)
    return int(leading.group()) if leading else None


# ==========================================================================
# 5. D1 rules: what Cloudflare D1 rejects or treats differently, one entry
#    per rule, found before deploy (`check`) and before sending (--d1-remote).
# ==========================================================================

# D1 authorizes only these PRAGMAs (checked against D1's engine) and answers
# "not authorized" to the rest (journal_mode, user_version, synchronous, ...).
D1_PRAGMAS = frozenset((
    "foreign_keys", "defer_foreign_keys", "foreign_key_check", "foreign_key_list",
    "table_info", "table_xinfo", "table_list", "index_info", "index_xinfo",
    "index_list", "quick_check", "optimize", "case_sensitive_like",
    "recursive_triggers", "legacy_alter_table", "ignore_check_constraints",
    "reverse_unordered_selects",
))
# The rules read a statement whose comments are spaces (_without_comments).
# A name as SQL spells it: quoted, or a bare word.
_SQL_NAME = r'(?:"[^"]*(?:""[^"]*)*"|`[^`]*(?:``[^`]*)*`|\[[^\]]*\]|[^\s.;(]+)'
_PRAGMA_NAME = _pattern(rf"(?i)PRAGMA\s+(?:{_SQL_NAME}\s*\.\s*)?[\"`\[]?(\w+)")
_SETS_PRAGMA = _pattern(r"[=(]")
_DEFERRAL = frozenset(("defer_foreign_keys",))
# Every spelling SQLite reads as "off" (sqlite3GetBoolean), quoted or not.
_FOREIGN_KEYS_OFF = _pattern(
    rf"(?i)PRAGMA\s+(?:{_SQL_NAME}\s*\.\s*)?[\"`\[]?foreign_keys[\"`\]]?\s*(?:=\s*|\(\s*)"
    r"(['\"]?)(?:0+|off|false|no)\1\s*\)?\s*;?\s*\Z")
_TEMP_OBJECT = _pattern(
    r"(?i)CREATE\s+(?:TEMP(?:ORARY)?\s+(TABLE|VIEW|TRIGGER)\b"
    r"|(?:UNIQUE\s+|VIRTUAL\s+)?(TABLE|VIEW|TRIGGER|INDEX)\s+(?:IF\s+NOT\s+EXISTS\s+)?"
    r"[\"`\[]?temp[\"`\]]?\s*\.)")
# Quoted text is matched whole, so that a comment marker inside it is text.
_QUOTED_OR_COMMENT = _pattern(
    r"""'[^']*(?:''[^']*)*'|"[^"]*(?:""[^"]*)*"|`[^`]*(?:``[^`]*)*`"""
    rf"|\[[^\]]*\]|({_COMMENT})")
# The only wrapper wrangler removes: exactly this text, case and all.
WRANGLER_WRAPPER = ("BEGIN TRANSACTION;", "COMMIT;")
_CF_RESERVED_NAME = _pattern(
    r"(?i)(?:CREATE\s+(?:TEMP\s+|TEMPORARY\s+)?(?:UNIQUE\s+)?(?:VIRTUAL\s+)?"
    r"(?:TABLE|INDEX|VIEW|TRIGGER)\s+(?:IF\s+NOT\s+EXISTS\s+)?"
    rf"|ALTER\s+TABLE\s+(?:{_SQL_NAME}\s*\.\s*)?{_SQL_NAME}\s+RENAME\s+TO\s+)"
    r"(?:[\w\"`\[\]]+\s*\.\s*)?[\"`\[]?(_cf_\w*)")


def _without_comments(sql: str) -> str:
    """sql with each comment made one space, as SQLite reads it."""
    if "--" not in sql and "/*" not in sql:
        return sql
    return _QUOTED_OR_COMMENT.sub(lambda m: " " if m.group(1) else m.group(0), sql)


class _InFile(namedtuple("_InFile", "position size wrapped exact_wrapper")):
    """Where a statement stands in its file, for the rules that care.

    position (int): from 0
    size (int): statements in the file
    wrapped (Optional[Tuple[int, int]]): where the BEGIN and the COMMIT/END
        of a wrapper around the file are (only PRAGMA foreign_keys outside
        them); None if it is not wrapped
    exact_wrapper (bool): ... in exactly wrangler's `BEGIN TRANSACTION;` / `COMMIT;`
    """

    __slots__ = ()

    def at_edge(self) -> bool:
        return self.wrapped is not None and self.position in self.wrapped


def _is_foreign_keys_pragma(statement: Statement) -> bool:
    return (statement.keyword == "PRAGMA"
            and _FOREIGN_KEYS_PRAGMA.match(_without_comments(statement.sql)) is not None)


def _wrapper(statements: Sequence[Statement]) -> "Optional[tuple[int, int]]":
    """Where the BEGIN and the COMMIT (or END) of a transaction that wraps a
    file whole are: only PRAGMA foreign_keys may stand outside it, as in
    SQLite's recipe for a table rebuild (off before, on again after).  None
    when the file is not wrapped."""
    lead, end = 0, len(statements) - 1
    while lead < len(statements) and _is_foreign_keys_pragma(statements[lead]):
        lead += 1
    while end > lead and _is_foreign_keys_pragma(statements[end]):
        end -= 1
    if (end > lead and statements[lead].keyword == "BEGIN"
            and statements[end].keyword in ("COMMIT", "END")):
        return lead, end
    return None


def _transaction_wrapper(s: Statement, words: str, where: _InFile) -> Optional[str]:
    if s.keyword in TRANSACTION_KEYWORDS and where.at_edge() and where.exact_wrapper:
        return (f"{s.keyword} around the whole file: D1 rejects it, but this tool and"
                " wrangler remove exactly this wrapper before sending the file")
    return None


def _transaction_statement(s: Statement, words: str, where: _InFile) -> Optional[str]:
    if s.keyword not in TRANSACTION_KEYWORDS or (where.at_edge() and where.exact_wrapper):
        return None
    if where.at_edge():
        return (f"{s.keyword} around the whole file: D1 rejects it, and wrangler removes"
                " only the exact text `BEGIN TRANSACTION;` ... `COMMIT;`; drop the"
                " wrapper (each migration already runs in a transaction)")
    return (f"{s.keyword} is rejected by D1, which runs each migration in its own"
            " transaction; remove it")


def _unauthorized_pragma(s: Statement, words: str, where: _InFile) -> Optional[str]:
    name = _PRAGMA_NAME.match(words)
    if name and name.group(1).lower() not in D1_PRAGMAS:
        return f"PRAGMA {name.group(1).lower()} is not authorized on D1; remove it"
    return None


def _foreign_keys_off(s: Statement, words: str, where: _InFile) -> Optional[str]:
    if _FOREIGN_KEYS_OFF.match(words):
        return ("PRAGMA foreign_keys = OFF does nothing on D1, which accepts it and keeps"
                " enforcing foreign keys: a DROP TABLE of a table that others reference"
                " still deletes their rows (ON DELETE CASCADE), empties their references"
                " (SET NULL) or fails when they have rows; PRAGMA defer_foreign_keys = ON"
                " helps only where every reference is a plain one")
    return None


def _unauthorized_statement(s: Statement, words: str, where: _InFile) -> Optional[str]:
    return f"{s.keyword} is not authorized on D1; remove it"


def _statement_too_long(s: Statement, words: str, where: _InFile) -> Optional[str]:
    if len(s.sql) * 4 <= D1_MAX_STATEMENT_BYTES:  # cannot be too long: skip encoding
        return None
    size = len(s.sql.encode("utf-8"))
    if size > D1_MAX_STATEMENT_BYTES:
        return (f"the statement is {size:,} bytes; D1 refuses statements over"
                f" {D1_MAX_STATEMENT_BYTES:,} bytes, split it (e.g. one INSERT per"
                " batch of rows)")
    return None


def _temporary_object(s: Statement, words: str, where: _InFile) -> Optional[str]:
    temporary = _TEMP_OBJECT.match(words)
    if temporary:
        kind = (temporary.group(1) or temporary.group(2)).upper()
        return (f"D1 does not allow TEMP {kind}s; create a regular one, or drop it at"
                " the end of the migration")
    return None


def _reserved_name(s: Statement, words: str, where: _InFile) -> Optional[str]:
    reserved = _CF_RESERVED_NAME.match(words)
    if reserved:
        return f"the name {reserved.group(1)} starts with _cf_, which D1 reserves; rename it"
    return None


def _missing_semicolon(s: Statement, words: str, where: _InFile) -> Optional[str]:
    if where.position == where.size - 1 and not is_terminated(s):
        return ("the last statement has no ';': wrangler appends its own INSERT to the file"
                " and the migration fails on D1; end it with ';'")
    return None


class D1Rule(namedtuple("D1Rule", "code severity blocks_remote keywords match")):
    """One thing D1 rejects or treats differently.

    code (str)
    severity (str): "error" or "warning"
    blocks_remote (bool): Whether --d1-remote refuses a migration with this finding
        before sending anything (it splits statements itself, so a missing final ';'
        does not matter there).
    keywords (Optional[frozenset]): the statements it reads, by first word (None: all)
    match (Callable[[Statement, str, _InFile], Optional[str]]): the message, or None
    """

    __slots__ = ()


D1_RULES = (
    D1Rule("transaction-wrapper", "warning", False, TRANSACTION_KEYWORDS, _transaction_wrapper),
    D1Rule("transaction-statement", "error", True, TRANSACTION_KEYWORDS, _transaction_statement),
    D1Rule("unauthorized-pragma", "error", True, frozenset(("PRAGMA",)), _unauthorized_pragma),
    D1Rule("foreign-keys-off", "warning", False, frozenset(("PRAGMA",)), _foreign_keys_off),
    D1Rule("unauthorized-statement", "error", True, frozenset(("ATTACH", "DETACH", "VACUUM")),
           _unauthorized_statement),
    D1Rule("statement-too-long", "error", True, None, _statement_too_long),
    D1Rule("temporary-object", "error", True, frozenset(("CREATE",)), _temporary_object),
    D1Rule("reserved-name", "error", True, frozenset(("CREATE", "ALTER")), _reserved_name),
    D1Rule("missing-semicolon", "error", False, None, _missing_semicolon),
)
# A PRAGMA that matched unauthorized-pragma is not also foreign-keys-off.
_EXCLUSIVE_RULES = frozenset(("unauthorized-pragma", "foreign-keys-off"))


def check_statements(path: str, statements: Sequence[Statement],
                     rules: Optional[Sequence[D1Rule]] = None) -> List[Finding]:
    """The findings of `rules` (default: D1_RULES) in one file's statements."""
    if rules is None:
        rules = D1_RULES
    findings: List[Finding] = []
    count = len(statements)
    wrapped = _wrapper(statements)
    exact = wrapped is not None and tuple(
        statements[at].sql for at in wrapped) == WRANGLER_WRAPPER
    for index, statement in enumerate(statements):
        where = _InFile(index, count, wrapped, exact)
        words = (_without_comments(statement.sql)
                 if statement.keyword in ("PRAGMA", "CREATE", "ALTER") else statement.sql)
        exclusive_hit = False
        for rule in rules:
            if rule.keywords is not None and statement.keyword not in rule.keywords:
                continue
            if exclusive_hit and rule.code in _EXCLUSIVE_RULES:
                continue
            message = rule.match(statement, words, where)
            if message:
                findings.append(Finding(rule.severity, path, statement.line, rule.code, message))
                exclusive_hit = exclusive_hit or rule.code in _EXCLUSIVE_RULES
    return findings


def check_folder(migrations_dir: str, wrangler: bool = False
                 ) -> "tuple[List[Migration], List[Finding]]":
    """Every finding in a migrations folder: names, numbers, links, encoding,
    SQL that D1 rejects (under wrangler's rules with wrangler=True).  Reads
    files only; needs no database."""
    scan = scan_folder(migrations_dir, wrangler)
    findings = list(scan.findings)
    for migration in scan.migrations:
        try:
            statements = split_sql(decode_sql(migration.data))
        except SQLSplitError as exc:
            code = "invalid-utf8" if isinstance(exc, InvalidUTF8) else "incomplete-sql"
            findings.append(Finding("error", migration.path, exc.line, code, exc.reason))
            continue
        except MigrationFileError as exc:
            findings.append(Finding("error", migration.path, None, "unreadable", str(exc)))
            continue
        finally:
            migration._data = None  # checked: let the bytes go
        findings.extend(check_statements(migration.path, statements))
    return scan.migrations, findings


# ==========================================================================
# 6. wrangler's configuration: where its local D1 database and migrations are.
# ==========================================================================


class WranglerDatabase(namedtuple(
        "WranglerDatabase", "name database_id db_path migrations_dir migrations_table")):
    """One D1 database of a wrangler config.

    name (str): the binding or database_name it was chosen by
    database_id (str): the remote database's id ("" when the config has none)
    db_path (str): the local SQLite file `wrangler ... --local` uses
    migrations_dir (str)
    migrations_table (str)
    """

    __slots__ = ()


_JSONC_COMMENT = _pattern(r'(?s)"(?:\\.|[^"\\])*"|//[^\n]*|/\*.*?\*/')
_JSONC_TRAILING_COMMA = _pattern(r'"(?:\\.|[^"\\])*"|,(?=\s*[}\]])')
_TOML_KEY_VALUE = _pattern(
    r"""\s*([A-Za-z0-9_-]+)\s*=\s*("(?:\\.|[^"\\])*"|'[^']*'|true|false|[-+0-9.]+)\s*(?:#.*)?\Z""")


def _parse_jsonc(text: str) -> dict:
    """JSON with comments and trailing commas, as wrangler.jsonc allows.
    Comments go first, so that a comma before a comment counts as trailing."""
    import json

    def keep_strings(match):
        return match.group(0) if match.group(0).startswith('"') else ""

    text = _JSONC_COMMENT.sub(keep_strings, text)
    return json.loads(_JSONC_TRAILING_COMMA.sub(keep_strings, text))


_TOML_D1_HEADER = _pattern(r"\[\[(?:env\.([A-Za-z0-9_-]+|\"[^\"]*\")\.)?d1_databases\]\]\Z")


def _parse_toml_subset(text: str) -> dict:
    """The part of wrangler.toml this tool needs, for Pythons without tomllib
    (3.8 to 3.10): top-level keys and [[d1_databases]] (and
    [[env.NAME.d1_databases]]) tables of plain values."""
    import json
    root: dict = {}
    current: Optional[dict] = root
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("["):
            header = _TOML_D1_HEADER.match(re.sub(r"\s+", "", line.split("#", 1)[0]))
            if header:
                env = header.group(1)
                holder = root if env is None else root.setdefault("env", {}).setdefault(
                    env.strip('"'), {})
                current = {}
                holder.setdefault("d1_databases", []).append(current)
            else:
                current = None  # a section this tool does not read
            continue
        if current is None:
            continue
        match = _TOML_KEY_VALUE.match(line)
        if match is None:
            if current is root and line.split("=", 1)[0].strip() != "d1_databases":
                continue  # a top-level value this reader cannot parse, not needed
            raise ConfigurationError(
                f"Cannot read line {number} of the wrangler config: {raw.strip()!r};"
                " on Python 3.8 to 3.10 write d1_databases as [[d1_databases]] tables"
                " of plain values (Python 3.11+ reads any TOML)")
        key, value = match.groups()
        if value.startswith("'"):
            current[key] = value[1:-1]
        else:
            current[key] = json.loads(value)
    return root


def read_wrangler_config(path: str) -> dict:
    try:
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
    except OSError as exc:
        raise ConfigurationError(f"Cannot read wrangler config {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigurationError(f"Cannot read wrangler config {path}: it is not UTF-8") from None
    try:
        if path.endswith(".toml"):
            try:
                import tomllib  # Python 3.11+  # novm
            except ImportError:
                return _parse_toml_subset(text)
            config = tomllib.loads(text)
        else:
            config = _parse_jsonc(text)
    except ValueError as exc:  # json and tomllib errors both derive from it
        raise ConfigurationError(f"Cannot parse wrangler config {path}: {exc}") from None
    if not isinstance(config, dict):
        raise ConfigurationError(f"Cannot parse wrangler config {path}: it is not an object")
    return config


def miniflare_object_id(name: str) -> str:
    """The Durable Object id miniflare names a local D1 database's file after
    (its idFromName for the D1DatabaseObject namespace)."""
    import hmac
    key = hashlib.sha256(b"miniflare-D1DatabaseObject").digest()
    first = hmac.new(key, name.encode("utf-8"), hashlib.sha256).digest()[:16]
    return (first + hmac.new(key, first, hashlib.sha256).digest()[:16]).hex()


def _d1_entries(config: dict) -> list:
    declared = config.get("d1_databases") or []
    return [e for e in declared if isinstance(e, dict)] if isinstance(declared, list) else []


def _environments(config: dict) -> Dict[str, dict]:
    envs = config.get("env")
    return {str(k): v for k, v in envs.items() if isinstance(v, dict)} \
        if isinstance(envs, dict) else {}


def wrangler_database(config_path: str, database: Optional[str] = None,
                      persist_to: Optional[str] = None,
                      env: Optional[str] = None) -> WranglerDatabase:
    """Find a D1 database of a wrangler config, by binding or database_name,
    at the top level or (env) in one of its environments, as `wrangler ...
    --env NAME` reads it."""
    config = read_wrangler_config(config_path)
    toml = config_path.endswith(".toml")
    envs = _environments(config)
    if env is not None:
        if env not in envs:
            raise ConfigurationError(
                f"{config_path} has no environment {env}"
                + (f" (it has: {', '.join(sorted(envs))})" if envs else
                   " (it declares no environments)"))
        entries = _d1_entries(envs[env])
        where = (f"[[env.{env}.d1_databases]]" if toml else
                 f'"env": {{"{env}": {{"d1_databases": [...]}}}}')
    else:
        entries = _d1_entries(config)
        where = "[[d1_databases]]" if toml else '"d1_databases"'
        only_in = sorted(name for name, section in envs.items() if _d1_entries(section))
        if not entries and only_in:
            raise ConfigurationError(
                f"{config_path} declares its D1 databases only in the environment"
                f"{'s' if len(only_in) > 1 else ''} {', '.join(only_in)}; choose one with"
                f" {_opt('wrangler_env')} {only_in[0]}")
    if database is not None:
        chosen = [e for e in entries if database in (e.get("binding"), e.get("database_name"))]
    else:
        chosen = entries if len(entries) == 1 else []
    names = ", ".join(str(e.get("binding") or e.get("database_name")) for e in entries)
    if not chosen:
        if database is None and entries:
            raise ConfigurationError(
                f"{config_path} has several D1 databases ({names}); choose one"
                f" with {_opt('database')}")
        raise ConfigurationError(
            f"{config_path} has no D1 database {database or ''}".rstrip()
            + (f" (it has: {names})" if names else f" ({where} is empty)"))
    entry = chosen[0]
    ident = entry.get("preview_database_id") or entry.get("database_id") or entry.get("binding")
    if not ident:
        raise ConfigurationError(
            f"The D1 database in {config_path} has no preview_database_id, database_id"
            " or binding to name its local file after")
    folder = os.path.dirname(config_path)
    state = persist_to if persist_to else os.path.join(folder, WRANGLER_STATE_DIR)
    return WranglerDatabase(
        str(entry.get("binding") or entry.get("database_name")),
        str(entry.get("database_id") or ""),
        os.path.join(state, WRANGLER_D1_DIR, miniflare_object_id(str(ident)) + ".sqlite"),
        os.path.join(folder, str(entry.get("migrations_dir") or DEFAULT_MIGRATIONS_DIR)),
        str(entry.get("migrations_table") or WRANGLER_TABLE),
    )


# ==========================================================================
# 7. Options: every setting of one command, resolved once from the command
#    line's values and the environment.  The engine and the commands read
#    only this object; nothing below argparse sees argparse.
# ==========================================================================


class D1Settings(namedtuple(
        "D1Settings", "api_base account_id database_id token timeout retries name",
        defaults=("",))):
    """How to reach a remote D1 database over its HTTP API.

    api_base (str)
    account_id (str)
    database_id (str)
    token (str)
    timeout (float)
    retries (int)
    name (str): the database's name or binding, when a wrangler config gives it
        ("": not known), for the commands a message suggests
    """

    __slots__ = ()


class Audit(namedtuple(
        "Audit", "run os_user host ci_repository ci_run ci_commit ci_actor")):
    """Who is at work, for the history: this run's random id, the operating
    system's user and host, and in GitHub Actions (any GITHUB_* set) the
    repository, run id, commit and actor.  Each is None when unknown.

    run (str)
    os_user, host, ci_repository, ci_run, ci_commit, ci_actor (Optional[str])
    """

    __slots__ = ()


def audit_of(environ: Mapping[str, str]) -> Audit:
    """The Audit of a run in this environment (an empty variable is unknown)."""
    def first(*names: str) -> Optional[str]:
        for name in names:
            value = environ.get(name, "").strip()
            if value:
                return value
        return None

    user = first("LOGNAME", "USER", "LNAME", "USERNAME")
    if user is None:
        try:
            import pwd
            user = pwd.getpwuid(os.getuid()).pw_name or None
        except (ImportError, KeyError, OSError, AttributeError):
            user = None
    host = os.uname().nodename if hasattr(os, "uname") else first("COMPUTERNAME")
    return Audit(os.urandom(8).hex(), user, host or None, first("GITHUB_REPOSITORY"),
                 first("GITHUB_RUN_ID"), first("GITHUB_SHA"), first("GITHUB_ACTOR"))


_SINCE_AGO = _pattern(r"([0-9]+)([smhd])\Z")
_SINCE_DATE = _pattern(
    r"([0-9]{4})-([0-9]{2})-([0-9]{2})"
    r"(?:[T ]([0-9]{2}):([0-9]{2})(?::([0-9]{2})(?:\.[0-9]{1,6})?)?Z?)?\Z")


def since_of(value: str, now: float) -> str:
    """--since as the earliest started_at to show: an ISO date or UTC time
    (2026-12-01, 2026-12-01T08:00), or an age (90m, 24h, 7d)."""
    text = value.strip()
    ago = _SINCE_AGO.match(text)
    if ago:
        seconds = int(ago.group(1)) * {"s": 1, "m": 60, "h": 3600, "d": 86400}[ago.group(2)]
        return utc_ms(max(0.0, now - seconds))
    date = _SINCE_DATE.match(text)
    if date and _is_calendar_time(*(int(part or 0) for part in date.groups())):
        return text.replace(" ", "T").rstrip("Z")
    raise ConfigurationError(
        f"{_opt('since')} {value!r} is neither a UTC date or time (2026-12-01,"
        " 2026-12-01T08:00) nor an age (90m, 24h, 7d)")


def _is_calendar_time(year: int, month: int, day: int, hour: int, minute: int,
                      second: int) -> bool:
    """Whether the parts name a real moment (not 2026-02-30, nor 25:00)."""
    leap = year % 4 == 0 and (year % 100 != 0 or year % 400 == 0)
    days = (31, 29 if leap else 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)
    return (1 <= month <= 12 and 1 <= day <= days[month - 1] and hour < 24 and minute < 60
            and second < 60)


class Options:
    """The resolved settings of one command (resolve_options makes them).
    What is not given keeps the default below."""

    command: Optional[str] = None
    db_path: str = DEFAULT_DB_PATH  # a local file (for --d1-remote: the database's id)
    migrations_dir: str = DEFAULT_MIGRATIONS_DIR
    remote: Optional[D1Settings] = None  # set: work on remote D1
    wrangler_table: Optional[str] = None  # set: keep wrangler's record in step
    wrangler_config: Optional[str] = None
    lock_timeout: float = DEFAULT_LOCK_TIMEOUT
    foreign_keys: bool = False
    target: Optional[str] = None
    allow_out_of_order: bool = False
    single_transaction: bool = False
    commit_each: bool = False  # apply: one commit per migration, not group commit
    dry_run: bool = False
    backup: Union[None, bool, str] = None  # True: beside the database
    bookmark: bool = True  # remote D1: take a Time Travel bookmark before changing it
    allow_row_loss: bool = False  # let ON DELETE actions take rows of tables not named
    from_migrations: bool = False  # schema: replay the migrations instead of reading
    schema_format: str = "sql"
    output: Optional[str] = None  # schema: the file to write
    schema_file: Optional[str] = None  # apply, rollback: keep it; check: compare with it
    no_drift: bool = False  # status: skip the comparison of the schema
    allow_data_loss: bool = False  # rollback: a computed rollback may drop data
    record_only: bool = False  # rollback: remove the record alone
    down: Optional[str] = None  # new: write the computed down script of this version
    version: Optional[str] = None
    force: bool = False
    reason: Optional[str] = None  # accept: why the file was edited
    event: Optional[str] = None  # history: only this event
    outcome: Optional[str] = None  # history: only this outcome
    since: Optional[str] = None  # history: the earliest started_at shown (resolved)
    limit: Optional[int] = None  # history: at most this many events
    stats: bool = False  # history: counts and durations instead of events
    audit: Optional[Audit] = None  # who runs this, for the history
    exit_code: bool = False
    description: str = ""
    check_database: bool = False  # check: also compare with a database
    json: bool = False
    quiet: bool = False
    verbose: bool = False

    def __init__(self, **values: object):
        for name, value in values.items():
            if name.startswith("_") or not hasattr(Options, name) or callable(
                    getattr(Options, name)):
                raise TypeError(f"unknown option: {name}")
            setattr(self, name, value)

    def __repr__(self) -> str:
        shown = ", ".join(f"{name}={value!r}" for name, value in vars(self).items()
                          if name != "remote")
        return f"Options({shown})"


def check_seconds(name: str, value: object, zero: bool = True) -> float:
    """A number of seconds, finite and not negative (nor zero unless allowed)."""
    try:
        seconds = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ConfigurationError(f"{_opt(name)} {value!r} is not a number of seconds") from None
    if seconds != seconds or seconds in (float("inf"), float("-inf")) or seconds < 0 \
            or (seconds == 0 and not zero):
        raise ConfigurationError(
            f"{_opt(name)} {value!r} is not a usable number of seconds: give a finite"
            f" number {'of 0 or more' if zero else 'above 0'}")
    return seconds


def resolve_options(values: Mapping[str, object], environ: Mapping[str, str]) -> Options:
    """The settings that the command line's values (argparse's, as a dict)
    and the environment name; checked before any I/O but reading the
    wrangler config.  An empty value is an error, never a default."""
    get = values.get
    for name in ("db_path", "migrations_dir", "wrangler_config", "database", "persist_to",
                 "wrangler_env", "wrangler_table", "api_base", "target", "version", "backup",
                 "output", "schema_file", "down", "since"):
        value = get(name)
        if isinstance(value, str) and not value.strip():
            raise ConfigurationError(
                f"{_opt(name)} is empty; give a value, or leave the option out for its default")
    # The values that pass as they are; the rest is worked out below.
    plain = ("command", "wrangler_config", "target", "allow_out_of_order", "allow_row_loss",
             "from_migrations", "schema_format", "output", "schema_file", "no_drift",
             "allow_data_loss", "record_only", "down", "reason", "event", "outcome", "stats",
             "single_transaction", "commit_each", "dry_run", "backup", "version", "force",
             "exit_code", "description", "json", "quiet", "verbose")
    options = Options(**{name: get(name) for name in plain if get(name) is not None})
    options.audit = audit_of(environ)
    if get("since") is not None:
        options.since = since_of(str(get("since")), time.time())
    limit = get("limit")
    if limit is not None:
        if not isinstance(limit, int) or isinstance(limit, bool) or limit < 1:
            raise ConfigurationError(f"{_opt('limit')} {limit!r} is not a count from 1")
        options.limit = limit
    options.lock_timeout = check_seconds("lock_timeout", get("lock_timeout", DEFAULT_LOCK_TIMEOUT))
    options.bookmark = not get("no_bookmark")
    config = get("wrangler_config")
    database, persist_to = get("database"), get("persist_to")
    found = None
    wrangler_env = get("wrangler_env")
    if config:
        found = wrangler_database(str(config), None if database is None else str(database),
                                  None if persist_to is None else str(persist_to),
                                  None if wrangler_env is None else str(wrangler_env))
    else:
        for name in ("database", "persist_to", "wrangler_env"):
            if get(name) is not None:
                hint = f" For a database file, pass {_opt('db_path')} {get(name)}." \
                    if name == "database" else ""
                raise ConfigurationError(
                    f"{_opt(name)} {get(name)} needs {_opt('wrangler_config')}: it selects"
                    f" within the wrangler config, and no config was given.{hint}")
    if get("foreign_keys") and get("no_foreign_keys"):
        raise ConfigurationError(f"{_opt('foreign_keys')} and {_opt('no_foreign_keys')}"
                                 " exclude each other")
    # wrangler's local file stands in for D1, which always enforces them.
    options.foreign_keys = bool(get("foreign_keys") or (config and not get("no_foreign_keys")))
    options.wrangler_table = str(get("wrangler_table") or "") or (
        found.migrations_table if found else WRANGLER_TABLE if get("wrangler") else None)
    options.migrations_dir = str(get("migrations_dir") or (
        found.migrations_dir if found else DEFAULT_MIGRATIONS_DIR))
    env = get("env")
    options.check_database = bool(get("db_path") or env)
    if get("d1_remote"):
        options.remote = _d1_settings(values, environ, found)
        options.db_path = options.remote.database_id
    elif get("db_path"):
        options.db_path = str(get("db_path"))
    elif found:
        options.db_path = found.db_path
    elif env == "production":
        path = environ.get(DB_PATH_VARIABLE, "").strip()
        if not path:
            raise ConfigurationError(
                f"{DB_PATH_VARIABLE} is {'empty' if DB_PATH_VARIABLE in environ else 'not set'}:"
                " --env production reads the database path from it. Set"
                f" {DB_PATH_VARIABLE}=/path/to/db or pass {_opt('db_path')}.")
        options.db_path = path
    return options


def _d1_settings(values: Mapping[str, object], environ: Mapping[str, str],
                 found: Optional[WranglerDatabase]) -> D1Settings:
    """The remote D1 database the environment names; each missing variable
    is a one-line error before anything is sent."""
    account = environ.get(D1_ACCOUNT_VARIABLE, "").strip()
    database = environ.get(D1_DATABASE_VARIABLE, "").strip() or (
        found.database_id if found else "")
    token = environ.get(D1_TOKEN_VARIABLE, "").strip()
    for variable, value, what in (
            (D1_ACCOUNT_VARIABLE, account, "your Cloudflare account id"),
            (D1_DATABASE_VARIABLE, database,
             f"the D1 database's id (or pass {_opt('wrangler_config')} with its database_id)"),
            (D1_TOKEN_VARIABLE, token, "an API token with D1 edit permission")):
        if not value:
            raise ConfigurationError(f"{variable} is not set: {_opt('remote')} needs {what}.")
    database_from = D1_DATABASE_VARIABLE if environ.get(D1_DATABASE_VARIABLE, "").strip() \
        else f"The database_id of {found.name if found else 'the database'} in" \
        f" {values.get('wrangler_config') or 'the wrangler config'}"
    # They go into the URL's path and the Authorization header: anything else
    # there would change the URL, or fail (with the token in the message).
    for variable, value in ((D1_ACCOUNT_VARIABLE, account), (database_from, database)):
        if not _D1_ID.fullmatch(value):
            raise ConfigurationError(
                f"{variable} {value!r} is not a Cloudflare id: it may hold only letters,"
                " digits, '-' and '_'. Copy it again from the dashboard or `wrangler d1 list`.")
    if not _PRINTABLE_ASCII.fullmatch(token):
        raise ConfigurationError(
            f"{D1_TOKEN_VARIABLE} holds a space, a control character or a character that is not"
            " ASCII, which no API token has (the token is not shown). Set it again, without"
            " quotes or line breaks.")
    api_base = values.get("api_base")
    if api_base is None:
        if D1_API_BASE_VARIABLE in environ and not environ[D1_API_BASE_VARIABLE].strip():
            raise ConfigurationError(
                f"{D1_API_BASE_VARIABLE} is set but empty; unset it to use {D1_API_BASE}")
        api_base = environ.get(D1_API_BASE_VARIABLE, "").strip() or D1_API_BASE
    if not re.match(r"https?://[^/\s]+", str(api_base)) or not _url_port_ok(str(api_base)) \
            or not _PRINTABLE_ASCII.fullmatch(str(api_base)):
        raise ConfigurationError(
            f"The D1 API base URL {api_base!r} is not an http:// or https:// URL")
    retries = values.get("http_retries", DEFAULT_HTTP_RETRIES)
    if not isinstance(retries, int) or not 0 <= retries <= MAX_HTTP_RETRIES:
        raise ConfigurationError(
            f"{_opt('http_retries')} {retries!r} is not a count from 0 to {MAX_HTTP_RETRIES}")
    timeout = check_seconds("http_timeout", values.get("http_timeout", DEFAULT_HTTP_TIMEOUT),
                            zero=False)
    if timeout > MAX_HTTP_TIMEOUT:
        raise ConfigurationError(
            f"{_opt('http_timeout')} {values.get('http_timeout')!r} is too long: give a number of"
            f" seconds above 0 and at most {MAX_HTTP_TIMEOUT:g}")
    return D1Settings(str(api_base).rstrip("/"), account, database, token, timeout,
                      retries, found.name if found else "")


# What Cloudflare's account and database ids are made of, and what may be in
# an Authorization header or a URL at all: printable ASCII, no space.
_D1_ID = _pattern(r"[A-Za-z0-9_-]+")
_PRINTABLE_ASCII = _pattern(r"[\x21-\x7e]+")


def _url_port_ok(url: str) -> bool:
    from urllib.parse import urlsplit
    try:
        urlsplit(url).port  # a port out of range or not a number fails only when sent
    except ValueError:
        return False
    return True


# ==========================================================================
# 8. Outcomes: what happened to each migration, as data.  _Run.report (14) is
#    the one place an Outcome is made known; the output, and anything that
#    wants to know (a history table, metrics), reads it from there.
# ==========================================================================

APPLIED = "applied"  # committed
WOULD_APPLY = "would apply"  # a dry run: ran cleanly, then rolled back by design
UNDONE = "undone"  # ran in a one-transaction run that then failed or stopped
FAILED = "failed"  # this one failed; it left nothing
INTERRUPTED = "interrupted"  # a stop arrived while it ran; rolled back
SKIPPED = "skipped"  # another process applied (or rolled back) it meanwhile
UNKNOWN = "unknown"  # remote: sent, no answer; D1 ran it wholly or not at all
NOT_SENT = "not sent"  # remote: the stop came before it was sent
ROLLED_BACK = "rolled back"  # a rollback: its down script ran and its record is gone
BASELINED = "baselined"  # recorded as applied without running (baseline)
ACCEPTED = "accepted"  # its edited file's checksum recorded (accept)


class Outcome(namedtuple(
        "Outcome", "action result version name path position total duration_ms error",
        defaults=(None,))):
    """What became of one migration in a run.

    action (str): "apply" or "rollback"
    result (str): APPLIED, WOULD_APPLY, UNDONE, FAILED, ... above
    version (str)
    name (str)
    path (Optional[str]): the file that ran (a rollback's down script; None: none)
    position (int): its place in the run, from 1, and the run's length
    total (int)
    duration_ms (Optional[float])
    error (Optional[MigrationError])
    """

    __slots__ = ()


class RunReport:
    """One run of apply, rollback or init: every Outcome in order, and what
    surrounds them.  The command line renders its text, JSON and summaries
    from this; a library caller reads it (and finds it on a raised
    MigrationError as `.report`)."""

    def __init__(self, action: str, database: str, migrations_dir: str,
                 dry_run: bool = False, single_transaction: bool = False):
        self.action = action
        self.database = database
        self.migrations_dir = migrations_dir
        self.dry_run = dry_run
        self.single_transaction = single_transaction
        self.outcomes: List[Outcome] = []
        self.migrations = 0  # migration files in the folder
        self.planned = 0  # how many this run set out to run
        self.target: Optional[str] = None  # apply: the target version asked for
        self.beyond_target = 0  # pending, but after the target version
        self.ignored = 0  # *.sql files that are not migrations (warned about)
        self.warnings: List[str] = []
        self.backup: Optional[str] = None
        self.bookmark: Optional[str] = None  # remote D1: Time Travel, before the first change
        self.restore_hint: Optional[str] = None  # how to go back to the bookmark
        self.synced: List[str] = []  # recorded in wrangler's table after the fact
        self.wrangler_table: Optional[str] = None
        self.created = False  # init: the tracking table was made by this run
        self.statements = 0  # rollback: how many statements its down script had
        self.computed: Optional[RollbackPlan] = None  # rollback: computed, not a down script
        self.subject: "tuple[str, str]" = ("", "")  # rollback: version and name of the migration
        self.down_script: Optional[str] = None  # rollback: the down script's path
        self.sql = ""  # rollback: what runs (or, in a dry run, would)
        self.checksums: "tuple[str, str]" = ("", "")  # accept: the recorded one, the file's
        # accept: how the schema the applied migrations make now differs from the
        # database's ([]: it does not; None: it cannot be told, see warnings)
        self.schema_effect: Optional[List[str]] = None
        self.error: Optional[MigrationError] = None
        self.started = time.perf_counter()
        self.elapsed_ms = 0.0

    def having(self, *results: str) -> List[Outcome]:
        return [o for o in self.outcomes if o.result in results]

    @property
    def applied(self) -> List[Outcome]:
        """The migrations this run committed (a dry run: would commit)."""
        return self.having(APPLIED, WOULD_APPLY)

    def __repr__(self) -> str:
        counts: Dict[str, int] = {}
        for o in self.outcomes:
            counts[o.result] = counts.get(o.result, 0) + 1
        return f"RunReport({self.action} on {self.database}: {counts})"


# ==========================================================================
# 9. Bookkeeping: the record of what ran, in the tool's table and (kept in
#    step) wrangler's.  The SQL that reads, creates, records and forgets is
#    produced here once, as (sql, parameters) entries that every target runs
#    in the same transaction as the migration they describe.
# ==========================================================================

if TYPE_CHECKING:
    Entry = Tuple[str, list]  # one statement of bookkeeping: its SQL and parameters


class AppliedRow(namedtuple("AppliedRow", "version name checksum applied_at duration_ms")):
    """A tracking row.

    version (str)
    name (str)
    checksum (str): "" for a migration that only wrangler recorded
    applied_at (str)
    duration_ms (float)
    """

    __slots__ = ()


class HistoryEvent(namedtuple("HistoryEvent", HISTORY_COLUMNS)):
    """One row of the history (HISTORY_TABLE), as read.

    id (int): its place: later events have larger ids
    run (str): the id of the run that wrote it (Audit.run)
    event (str): "apply", "rollback", "baseline", "accept" or "bookmark"
    outcome (str): "succeeded", "failed" or "interrupted"
    version, name (str): the migration ("" for a bookmark)
    checksum (Optional[str]): of the migration's file
    started_at (str): UTC, to the millisecond
    duration_ms (Optional[float]): None when unknown (on D1: only D1's answer
        tells it, and rows are never changed)
    statement, line (Optional[int]): where a failure happened
    error (Optional[str]): why it failed
    detail (Optional[str]): accept: the reason; bookmark: the bookmark
    os_user, host, ci_repository, ci_run, ci_commit, ci_actor (Optional[str]): see Audit
    """

    __slots__ = ()


class Record(namedtuple("Record", "own wrangler applied history", defaults=(False,))):
    """The record of a database, as read.

    own (Optional[Dict[Union[int, str], AppliedRow]]): by key (Migration.key);
        None: no tracking table yet
    wrangler (Optional[Dict[str, str]]): file name -> applied_at; None: no table (or not
        kept)
    applied (Dict[Union[int, str], AppliedRow]): what counts as applied, by key:
        under the tool's rules by number, so that "0001" and "1" are one migration
        (renaming 0001_x.sql to 1_x.sql does not make it pending); under wrangler's,
        by file name, and a migration only wrangler recorded counts too, with no
        checksum.
    history (bool): whether the history table is there (its layout checked)
    """

    __slots__ = ()


class Bookkeeping:
    """The SQL of the record, for the tool's table and, with wrangler_table,
    wrangler's (`d1_migrations` or the config's migrations_table).  With
    wrangler's table kept, wrangler's rules hold: a migration is known by
    its file name (see Migration.key)."""

    def __init__(self, wrangler_table: Optional[str] = None, audit: Optional[Audit] = None):
        self.table = quote_identifier(TRACKING_TABLE)
        self.wrangler_table = wrangler_table
        self.by_name = wrangler_table is not None
        self.audit = audit or audit_of(os.environ)
        self._wrangler = quote_identifier(wrangler_table) if wrangler_table else None
        self._insert = SQL_INSERT_APPLIED.format(table=self.table)
        self._insert_wrangler = SQL_INSERT_WRANGLER.format(table=self._wrangler)
        self._history = quote_identifier(HISTORY_TABLE)
        self._insert_history = SQL_INSERT_HISTORY.format(table=self._history)

    def read(self, query: Callable[[str, tuple], List[tuple]], where: str) -> Record:
        """Read and check the record through `query` (a target's read)."""
        names = (TRACKING_TABLE, HISTORY_TABLE, self.wrangler_table or "")
        layouts: Dict[str, tuple] = {}
        for table, column in query(SQL_TABLES_COLUMNS, names):
            layouts[table] = layouts.get(table, ()) + (column,)
        own = self._read_own(query, where, layouts.get(TRACKING_TABLE, ()))
        wrangler = (self._read_wrangler(query, where, layouts.get(self.wrangler_table, ()))
                    if self._wrangler else None)
        applied = dict(own or {})
        for name, applied_at in (wrangler or {}).items():
            if name not in applied:
                applied[name] = AppliedRow(name[:-4] if name.endswith(".sql") else name,
                                           name[:-4] if name.endswith(".sql") else name, "",
                                           str(applied_at).replace(" ", "T") + "Z", 0.0)
        return Record(own, wrangler, applied,
                      self._has_history(query, where, layouts.get(HISTORY_TABLE, ())))

    def key(self, row: Union[AppliedRow, HistoryEvent]) -> Union[int, str]:
        """What a row's migration is known by (as Migration.key)."""
        if not self.by_name and VERSION_TEXT.match(row.version):
            return int(row.version)
        return row.name + ".sql"

    # -- the history: appended in the same transaction as what it tells ------------

    def _has_history(self, query, where: str, columns: Optional[tuple] = None) -> bool:
        if columns is None:
            columns = tuple(row[0] for row in query(SQL_TABLE_COLUMNS, (HISTORY_TABLE,)))
        if columns and columns != HISTORY_COLUMNS:
            raise TrackingTableError(
                f"Table {HISTORY_TABLE} in {where} has the columns ({', '.join(columns)}),"
                f" not the ones this tool writes; another tool or a hand edit made it."
                " Nothing was changed, and the tool will not rewrite it: rename it (the"
                " tool then starts a new history), or restore its layout.")
        return bool(columns)

    def _event(self, event: str, outcome: str, version: str, name: str,
               checksum: Optional[str], started: float, duration_ms: Optional[float],
               error: Optional[MigrationError] = None, detail: Optional[str] = None) -> Entry:
        where: "tuple[Optional[int], Optional[int]]" = (None, None)
        if isinstance(error, MigrationFailed):
            where, text = (error.statement, error.line), error.reason
        else:
            text = None if error is None else str(error)
        a = self.audit
        return (self._insert_history, [
            a.run, event, outcome, version, name, checksum, utc_ms(started),
            None if duration_ms is None else round(duration_ms, 3), where[0], where[1], text,
            detail, a.os_user, a.host, a.ci_repository, a.ci_run, a.ci_commit, a.ci_actor])

    def _history_table(self) -> Entry:
        return (SQL_CREATE_HISTORY.format(table=self._history), [])

    def failed(self, event: str, outcome: str, version: str, name: str,
               checksum: Optional[str], started: float, duration_ms: Optional[float],
               error: Optional[MigrationError]) -> List[Entry]:
        """The entries that tell of a failed or interrupted apply or
        rollback, written after it was rolled back, in their own transaction
        (the table is made here too: a whole run's rollback undoes its own)."""
        return [self._history_table(),
                self._event(event, outcome, version, name, checksum, started, duration_ms,
                            error)]

    def bookmarked(self, bookmark: str) -> List[Entry]:
        """The entries that tell of a D1 Time Travel bookmark taken."""
        return [self._history_table(),
                self._event("bookmark", "succeeded", "", "", None, time.time(), None,
                            detail=bookmark)]

    def baseline(self, migration: Migration) -> List[Entry]:
        """The entries that record `migration` as applied without running it
        (no duration: nothing ran)."""
        return self.record(migration, None, "baseline")

    def accept(self, row: AppliedRow, migration: Migration, reason: str) -> List[Entry]:
        """The entries that record the edited file's checksum, and why."""
        return [self._history_table(),
                (SQL_SET_CHECKSUM.format(table=self.table), [migration.checksum, row.version]),
                self._event("accept", "succeeded", row.version, row.name, migration.checksum,
                            time.time(), None, detail=reason)]

    def latest(self, query: Callable[[str, tuple], List[tuple]], where: str,
               record: Record) -> Dict[Union[int, str], HistoryEvent]:
        """Each migration's latest apply, rollback or baseline, by key."""
        latest: Dict[Union[int, str], HistoryEvent] = {}
        for event in (self.history(query, where, latest=True) if record.history else []):
            latest.setdefault(self.key(event), event)
        return latest

    def history(self, query: Callable[[str, tuple], List[tuple]], where: str,
                latest: bool = False) -> List[HistoryEvent]:
        """The history, newest first (latest: only each migration's latest
        apply, rollback or baseline); every row checked, as the record is."""
        if not self._has_history(query, where):
            return []
        sql = (SQL_LATEST_HISTORY if latest else SQL_SELECT_HISTORY) + " ORDER BY id DESC"
        events = []
        for raw in query(sql.format(table=self._history), ()):
            if not _trusted_event(raw):
                raise TrackingTableError(
                    f"Table {HISTORY_TABLE} in {where} has a row the tool cannot have"
                    f" written: {tuple(raw)!r}. Nothing was changed; the tool never"
                    " rewrites its history: restore the row from a backup, or rename the"
                    " table to start a new history.")
            events.append(HistoryEvent(*raw))
        return events

    def _read_own(self, query, where: str,
                  columns: tuple) -> Optional[Dict[Union[int, str], AppliedRow]]:
        if not columns:
            return None
        if columns != TRACKING_COLUMNS:
            raise TrackingTableError(
                f"Table {TRACKING_TABLE} in {where} has the columns"
                f" ({', '.join(columns)}), not ({', '.join(TRACKING_COLUMNS)});"
                " another tool or a hand edit made it (dbmate and golang-migrate use"
                " the same name). Nothing was changed; migrate this database with"
                " the tool that owns the table, or rename the table.")
        rows: Dict[int, AppliedRow] = {}
        for raw in query(SQL_SELECT_APPLIED.format(table=self.table), ()):
            if not _trusted_row(raw):
                raise TrackingTableError(
                    f"Table {TRACKING_TABLE} in {where} has an invalid row {tuple(raw)!r}:"
                    " the version must be digits (or, under wrangler's rules, the name), the"
                    " name and time text, the checksum a SHA256 in hex and the duration a"
                    " number. Nothing was changed; fix or delete that row by hand.")
            row = AppliedRow(*raw)
            key = self.key(row)
            twin = rows.get(key)
            if twin is not None:
                raise TrackingTableError(
                    f"Table {TRACKING_TABLE} in {where} records"
                    f" {'version ' + str(key) if isinstance(key, int) else key}"
                    f" twice ({twin.name}, {row.name}); nothing was changed. Delete the"
                    " wrong row by hand.")
            rows[key] = row
        return rows

    def _read_wrangler(self, query, where: str, columns: tuple) -> Optional[Dict[str, str]]:
        if not columns:
            return None
        try:
            return {str(name): str(at) for name, at in
                    query(SQL_SELECT_WRANGLER.format(table=self._wrangler), ())}
        except (sqlite3.Error, MigrationError, ValueError) as exc:
            raise TrackingTableError(
                f"Table {self.wrangler_table} in {where} is not wrangler's"
                f" migrations table ({exc}); nothing was changed") from None

    def ensure(self, record: Record) -> "tuple[List[Entry], List[str]]":
        """The entries that create what is missing of the record (idempotent),
        and the names they record in wrangler's table: migrations this tool
        applied before that table was kept, so that wrangler does not run
        them again."""
        entries: List[Entry] = []
        synced: List[str] = []
        if record.own is None:
            entries.append((SQL_CREATE_TRACKING.format(table=self.table), []))
        if not record.history:
            entries.append(self._history_table())
        if self._wrangler is not None:
            if record.wrangler is None:
                entries.append((SQL_CREATE_WRANGLER.format(table=self._wrangler), []))
            known = record.wrangler or {}
            for row in sorted((record.own or {}).values(), key=lambda r: r.applied_at):
                if row.name + ".sql" not in known:
                    entries.append((SQL_RECORD_WRANGLER.format(table=self._wrangler),
                                    [row.name + ".sql"]))
                    synced.append(row.name)
        return entries, synced

    def record(self, migration: Migration, duration_ms: Optional[float],
               event: str = "apply") -> List[Entry]:
        """The entries that record `migration` as applied, and tell the
        history (duration None: not known yet, see set_duration)."""
        started = time.time() - (duration_ms or 0.0) / 1000
        entries: List[Entry] = [
            self._event(event, "succeeded", migration.version, migration.name,
                        migration.checksum, started, duration_ms),
            (self._insert, [migration.version, migration.name, migration.checksum,
                            utc_now(), round(duration_ms or 0.0, 3)])]
        if self._wrangler is not None:
            entries.append((self._insert_wrangler, [migration.filename]))
        return entries

    def forget(self, row: AppliedRow, record: Record,
               duration_ms: Optional[float] = None) -> List[Entry]:
        """The entries that remove `row`'s migration from the record, and
        tell the history."""
        entries: List[Entry] = [] if record.history else [self._history_table()]
        entries += [
            self._event("rollback", "succeeded", row.version, row.name, row.checksum or None,
                        time.time() - (duration_ms or 0.0) / 1000, duration_ms),
            (SQL_DELETE_APPLIED.format(table=self.table), [row.version])]
        if self._wrangler is not None and record.wrangler is not None:
            entries.append((SQL_DELETE_WRANGLER.format(table=self._wrangler),
                            [row.name + ".sql"]))
        return entries

    def digest(self, record: Record) -> str:
        """What the record holds, in a word: changes when anything is applied,
        rolled back or recorded by another tool."""
        text = "\n".join(sorted(f"{key}\t{row.checksum}" for key, row in record.applied.items()))
        return hashlib.sha256(text.encode("utf-8")).hexdigest()

    def read_state(self, query: Callable[[str, tuple], List[tuple]]
                   ) -> "Optional[tuple[str, str]]":
        """(digest, fingerprint) of the schema the tool last knew, if any."""
        if not query(SQL_TABLE_COLUMNS, (STATE_TABLE,)):
            return None
        rows = query(SQL_READ_STATE.format(table=quote_identifier(STATE_TABLE)), ())
        return (str(rows[0][0]), str(rows[0][1])) if rows else None

    def state(self, digest: str, fingerprint: str) -> List[Entry]:
        """The entries that note the schema the tool now knows."""
        table = quote_identifier(STATE_TABLE)
        return [(SQL_CREATE_STATE.format(table=table), []),
                (SQL_WRITE_STATE.format(table=table), [digest, fingerprint])]

    def set_duration(self, version: str, duration_ms: float) -> Entry:
        """The entry that corrects a recorded duration (a remote target learns
        it only from D1's answer)."""
        return (SQL_SET_DURATION.format(table=self.table), [round(duration_ms, 3), version])


def select_events(events: List[HistoryEvent], version: Optional[str] = None,
                  event: Optional[str] = None, outcome: Optional[str] = None,
                  since: Optional[str] = None, limit: Optional[int] = None
                  ) -> List[HistoryEvent]:
    """The events that pass each filter given: of one migration (`version`
    as rollback takes it), of one event and outcome, started at `since` (an
    ISO UTC time) or later; at most `limit` (the first, newest first)."""
    chosen = [e for e in events
              if (version is None or _names(version, e.name))
              and (event is None or e.event == event)
              and (outcome is None or e.outcome == outcome)
              and (since is None or e.started_at >= since)]
    return chosen if limit is None else chosen[:limit]


class HistoryStats(namedtuple(
        "HistoryStats", "version name applies failures interruptions rollbacks success_rate"
                        " median_ms slowest_ms")):
    """What the history says of one migration (or, with name "", of all).

    version, name (str)
    applies, failures, interruptions, rollbacks (int): succeeded applies,
        failed ones, interrupted ones, succeeded rollbacks
    success_rate (Optional[float]): applies / (applies + failures); None: never tried
    median_ms, slowest_ms (Optional[float]): of the succeeded applies with a duration
    """

    __slots__ = ()


def history_stats(events: Sequence[HistoryEvent]
                  ) -> "tuple[List[HistoryStats], HistoryStats]":
    """Per migration (in number order) and overall: counts, success rate,
    and the median and slowest duration of applies."""
    def stats(version: str, name: str, group: List[HistoryEvent]) -> HistoryStats:
        applies = [e for e in group if e.event == "apply" and e.outcome == "succeeded"]
        failures = sum(1 for e in group if e.event == "apply" and e.outcome == "failed")
        interruptions = sum(1 for e in group
                            if e.event == "apply" and e.outcome == "interrupted")
        rollbacks = sum(1 for e in group if e.event == "rollback" and e.outcome == "succeeded")
        tried = len(applies) + failures
        durations = sorted(e.duration_ms for e in applies if e.duration_ms is not None)
        middle = len(durations) // 2
        median = None if not durations else (
            durations[middle] if len(durations) % 2 else
            (durations[middle - 1] + durations[middle]) / 2)
        return HistoryStats(version, name, len(applies), failures, interruptions, rollbacks,
                            len(applies) / tried if tried else None, median,
                            durations[-1] if durations else None)

    groups: Dict["tuple[str, str]", List[HistoryEvent]] = {}
    for event in events:
        if event.event in ("apply", "rollback"):
            groups.setdefault((event.version, event.name), []).append(event)
    order = sorted(groups, key=lambda k: (_number_of(k[1]) is None, _number_of(k[1]) or 0, k[1]))
    every = [e for group in groups.values() for e in group]
    return [stats(v, n, groups[(v, n)]) for v, n in order], stats("", "", every)


def _trusted_event(raw: tuple) -> bool:
    """Whether a history row is one this tool could have written."""
    def text(value: object) -> bool:
        return value is None or isinstance(value, str)

    def count(value: object) -> bool:
        return value is None or (isinstance(value, int) and not isinstance(value, bool))

    (id_, run, event, outcome, version, name, checksum, started_at, duration, statement,
     line) = raw[:11]
    return (isinstance(id_, int) and isinstance(run, str) and run != ""
            and event in HISTORY_EVENTS and outcome in HISTORY_OUTCOMES
            and isinstance(version, str) and isinstance(name, str)
            and isinstance(started_at, str) and started_at != "" and text(checksum)
            and (duration is None or (isinstance(duration, (int, float))
                                      and not isinstance(duration, bool)
                                      and duration == duration and duration >= 0))
            and count(statement) and count(line) and all(text(v) for v in raw[11:]))


def _trusted_row(raw: tuple) -> bool:
    """Whether a tracking row is one this tool could have written: an empty
    or made-up checksum would hide every later edit of its file."""
    version, name, checksum, applied_at, duration = raw
    return (isinstance(version, str) and isinstance(name, str) and name.strip() != ""
            and (VERSION_TEXT.match(version) is not None or version == name)
            and isinstance(checksum, str) and CHECKSUM_TEXT.match(checksum) is not None
            and isinstance(applied_at, str) and applied_at.strip() != ""
            and isinstance(duration, (int, float)) and not isinstance(duration, bool)
            and duration == duration and duration >= 0)


# ==========================================================================
# 10. Targets: the narrow interface the engine runs migrations through, and
#     local SQLite behind it.  (Remote D1 is the next section.)
# ==========================================================================


class Step(namedtuple(
        "Step", "action version name path statements hoisted record amend settled guard"
                " checksum", defaults=(None,))):
    """One migration, or one rollback, ready to run: its statements and the
    bookkeeping that commits with them, all checked before anything runs.

    action (str): "apply" or "roll back", as messages say it
    version (str)
    name (str)
    path (Optional[str]): the file that runs; None: a rollback with no down script
    statements (List[Tuple[int, Statement]]): with their numbers in the file
    hoisted (int): how many statements at the start are PRAGMA foreign_keys: SQLite
        honours it only outside a transaction, so a local target runs them before BEGIN
        (D1 ignores it).
    record (Callable[[float], List[Entry]]): the bookkeeping, given the duration in ms
    amend (Callable[[float], List[Entry]]): the bookkeeping that corrects the recorded
        duration, for a target that learns it only from the answer (D1).
    settled (Callable[[], bool]): re-reads the record: True when the step's effect is
        already there (another process did it, or a lost answer hid that it ran); raises
        when the plan no longer holds (a later migration appeared meanwhile).
    guard (Callable[[query], Guard]): given a read of the schema just before the step
        runs, the statements to run before and after its own, in its transaction, that
        fail it when it would take rows from tables it does not name ("rows a
        migration must not lose", section 12).
    checksum (Optional[str]): of the migration's file, for the history
    """

    __slots__ = ()


class Ran(namedtuple("Ran", "done undone error began")):
    """What Target.run did with the steps it was given, in their order.

    done (List[Tuple[Step, Optional[float]]]): committed, each with its
        duration in ms (None: skipped, its effect was there already)
    undone (List[Tuple[Step, float]]): ran, then lost with a transaction the
        database rolled back, and not run again (a stop came first)
    error (Optional[BaseException]): what ended the call early: a
        MigrationError or a _Stop, concerning the step after done and undone
    began (Optional[Tuple[float, float]]): when that step began, as
        time.time() and time.perf_counter()
    """

    __slots__ = ()


class Target:
    """What the engine needs of a database, and all it needs: the interface
    that SQLiteTarget and D1Target each implement (as dbmate's Driver).

    open(mode) -> bool
        Be ready.  mode "read": read only, False when there is no database
        (nothing is created); "change": False when there is no database;
        "create": create it when missing; "dry-run": as "create", but a
        missing database is stood in for by an empty one, created nowhere.
    query(sql, params) -> rows
        One read.
    ensure(entries)
        Run idempotent bookkeeping entries (creating the record) and commit.
    write(entries)
        Run bookkeeping entries in one transaction and commit, once: they
        append (the history), so a lost answer is not sent again.
    run(steps, first, last) -> Ran
        Steps from the front of `steps`, each with its bookkeeping all or
        nothing, as many as the target commits together (at least one);
        a step's failure or a stop ends the call, and the steps before it
        stay committed.  A step that, under the target's write lock,
        step.settled() finds done already is skipped.  `first`: idempotent
        entries (creating the record) run before the first step, in its
        transaction or batch, and committed even if that step fails.
        `last()`: called once the last of `steps` ran without error, for
        entries written with them (the note of the schema); a failure of
        either only loses those entries.
    run_all(ensure, plan, commit, on_ran)
        A whole run as one transaction: the ensure entries, then each step
        that plan() returns (planned once the target holds its lock),
        on_ran(step, ms) after each; rolled back unless commit.
    request_stop(signum)
        Stop at the next safe point, raising _Stop there.  Safe to call from
        a signal handler.
    close()
    """

    name = ""  # how messages name the database
    d1_rules = False  # whether D1's rules refuse a migration before it is sent
    cheap_reads = True  # whether a few more reads per run cost next to nothing

    def open(self, mode: str) -> bool:
        raise NotImplementedError

    def query(self, sql: str, params: tuple = ()) -> List[tuple]:
        raise NotImplementedError

    def ensure(self, entries: List[Entry]) -> None:
        raise NotImplementedError

    def write(self, entries: List[Entry]) -> None:
        raise NotImplementedError

    def run(self, steps: List[Step], first: Sequence[Entry] = (),
            last: Optional[Callable[[], List[Entry]]] = None) -> Ran:
        raise NotImplementedError

    def run_all(self, ensure: List[Entry], plan: Callable[[], List[Step]], commit: bool,
                on_ran: Callable[[Step, float], None]) -> None:
        raise NotImplementedError

    def request_stop(self, signum: int) -> None:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def _create(self, first: Sequence[Entry]) -> None:
        """run()'s `first` alone, when the transaction or batch it went
        with was lost (after a stop, ensure sends nothing; a failure here
        only leaves the record's creation to the next run)."""
        if first:
            try:
                self.ensure(list(first))
            except (MigrationError, _Stop, sqlite3.Error):
                pass


def _is_busy(exc: sqlite3.OperationalError) -> bool:
    """SQLITE_BUSY: another connection holds the lock this statement needs."""
    message = str(exc)
    return "database is locked" in message or "database is busy" in message


def _in_wal_mode(path: str) -> bool:
    """Whether the database file's header says WAL (read and write versions 2)."""
    try:
        with open(path, "rb") as handle:
            header = handle.read(20)
    except OSError:
        return False
    return header[:16] == b"SQLite format 3\x00" and header[18:20] == b"\x02\x02"


def _sqlite_uri(path: str, mode: str) -> str:
    """A file: URI for path; only the characters URIs give a meaning are escaped."""
    escaped = path.replace("%", "%25").replace("?", "%3f").replace("#", "%23")
    if escaped.startswith("//"):
        # file://x/ would make x the URI's authority: give it an empty one.
        escaped = "//" + escaped
    return f"file:{escaped}?mode={mode}"


def _describe_sqlite_error(exc: Exception, db_path: str) -> Optional[MigrationError]:
    """Errors that are about the database file, not about the migration."""
    message = str(exc)
    lowered = message.lower()
    if "database is locked" in lowered or "database table is locked" in lowered:
        return DatabaseWriteError(
            f"Database {db_path} is locked by another process ({message});"
            f" wait for it to finish or raise {_opt('lock_timeout')}")
    if "readonly" in lowered or "read-only" in lowered:
        return DatabaseWriteError(
            f"Cannot write to database {db_path} ({message}); check the permissions"
            " of the file and of its folder")
    if "disk is full" in lowered:
        return DatabaseWriteError(
            f"Cannot write to database {db_path} ({message}); the disk or the database"
            " size limit was reached, nothing of the current migration was kept")
    if "disk i/o error" in lowered:
        return DatabaseWriteError(
            f"Cannot write to database {db_path} ({message}); the disk failed to read"
            " or write, nothing of the current migration was kept: check the disk")
    if "not a database" in lowered or "malformed" in lowered:
        return DatabaseConnectError(f"{db_path} is not a usable SQLite database ({message})")
    if "unable to open" in lowered:
        return DatabaseConnectError(f"cannot open {db_path} ({message})")
    return None


def _existing_ancestor(folder: str) -> str:
    """The nearest folder at or above `folder` that exists."""
    while not os.path.isdir(folder) and os.path.dirname(folder) != folder:
        folder = os.path.dirname(folder)
    return folder


def _describe_statement(name: str, number: int, statement: Statement, seconds: float) -> str:
    text = " ".join(statement.sql.split())
    if len(text) > 80:
        text = text[:77] + "..."
    return f"{name} statement {number} (line {statement.line}): {format_ms(seconds * 1000)}  {text}"


class _SQLiteConnection:
    """One connection to a SQLite file, with the tool's own transactions
    (isolation_level=None: BEGIN IMMEDIATE, COMMIT and ROLLBACK are issued
    here), waits for locks that a Ctrl-C can end, and the stop flag that
    SQLite's progress handler acts on.  What SQLiteTarget runs on."""

    def __init__(self, path: str, lock_timeout: float, foreign_keys: bool,
                 on_slow_statement: Optional[Callable[[str, int, int, float], None]],
                 create_folder: bool = False):
        self.path = path
        self.create_folder = create_folder
        self.lock_timeout = lock_timeout
        self.foreign_keys = foreign_keys
        self.on_slow_statement = on_slow_statement
        self.conn: Optional[sqlite3.Connection] = None
        self.stop_signal: Optional[int] = None
        self.hold = False  # stops wait (see held_stops)
        # Group commit: when the running step is stopped for the commit of
        # those before it (perf_counter time; None: never), and whether it was.
        self.yield_at: Optional[float] = None
        self.yielded = False
        self.foreign_keys_default = 0  # the connection's setting, restored after a hoisted PRAGMA
        # What the progress handler reports while a statement runs long.
        self.running: Optional[tuple] = None
        self.next_tick = 0.0

    def open(self, mode: str) -> bool:
        """As Target.open."""
        if self.conn is not None:
            return True
        path = self.path
        if not path:
            raise ConfigurationError(
                f"The database path is an empty string; pass {_opt('db_path')}")
        if os.path.isdir(path):
            raise DatabaseConnectError(f"{path} is a directory, not a database file")
        exists = os.path.exists(path)
        if exists and not os.path.isfile(path):
            # Opening a FIFO would wait for a writer for ever.
            raise DatabaseConnectError(
                f"{path} is not a regular file (a FIFO, socket or device), not a database")
        if mode in ("read", "change") and not exists:
            return False
        # Also for a dry run's stand-in: a real run would stop here.
        folder = os.path.dirname(os.path.abspath(path))
        shown = os.path.dirname(path) or folder
        if not os.path.isdir(folder):
            if not self.create_folder:
                raise DatabaseConnectError(
                    f"the folder {shown} of database {path} does not exist")
            self._make_folder(folder, shown, dry_run=mode == "dry-run")
        if mode == "dry-run" and not exists:
            if not os.access(_existing_ancestor(folder), os.W_OK | os.X_OK):
                raise DatabaseConnectError(f"cannot create {path}: its folder {shown} is not"
                                           " writable")
            self.conn = self._connect(":memory:", uri=False, readonly=False)
            return True
        # Read-write, which never creates the database, where read-only would
        # leave something behind: a journal left by a crash must be rolled
        # back before anything can be read; and reading a WAL database
        # creates -wal and -shm files, which only a read-write connection
        # removes when it closes last.  Either way only reads are issued.
        readonly = mode == "read"
        leaves_files = readonly and (
            os.path.exists(path + "-journal")
            or (_in_wal_mode(path) and not os.path.exists(path + "-wal")))
        uri_mode = "rw" if leaves_files or mode == "change" else "ro" if readonly else "rwc"
        self.conn = self._connect(_sqlite_uri(path, uri_mode), uri=True, readonly=readonly)
        return True

    @staticmethod
    def _make_folder(folder: str, shown: str, dry_run: bool) -> None:
        """A missing folder that wrangler would create (its state folder):
        made, as wrangler makes it on first use; a dry run makes nothing."""
        if dry_run:
            return
        try:
            os.makedirs(folder, exist_ok=True)
        except OSError as exc:
            raise DatabaseConnectError(f"cannot create the folder {shown}: {exc.strerror}"
                                       ) from None

    def _connect(self, target: str, uri: bool, readonly: bool) -> sqlite3.Connection:
        try:
            conn = sqlite3.connect(
                target, uri=uri,
                isolation_level=None,  # BEGIN, COMMIT and ROLLBACK are ours
                timeout=self.lock_timeout, check_same_thread=False,
                cached_statements=16)  # the tool's own: savepoints, rows
        except sqlite3.Error as exc:
            raise DatabaseConnectError(f"cannot open {self.path} ({exc})") from None
        try:
            # Waits for a lock happen in wait_for_lock, where Ctrl-C is
            # noticed: SQLite's own wait would hold it until the wait ends.
            busy_ms = conn.execute("PRAGMA busy_timeout").fetchone()[0]
            conn.execute("PRAGMA busy_timeout = 0")
            # Reading the schema surfaces "file is not a database" here, once,
            # instead of in the middle of a command.
            self.wait_for_lock("SELECT count(*) FROM sqlite_master", conn=conn)
            if not readonly:
                conn.execute(f"PRAGMA cache_size = -{WRITE_CACHE_KIB}")
            if self.foreign_keys and not readonly:
                conn.execute("PRAGMA foreign_keys = ON")
            self.foreign_keys_default = conn.execute("PRAGMA foreign_keys").fetchone()[0]
            if readonly:
                # A reader's few short queries after this one wait as SQLite
                # waits, up to lock_timeout.
                conn.execute(f"PRAGMA busy_timeout = {busy_ms}")
        except sqlite3.Error as exc:
            conn.close()
            raise _describe_sqlite_error(exc, self.path) or DatabaseConnectError(
                f"cannot read {self.path} ({exc})") from None
        except BaseException:
            conn.close()
            raise
        conn.set_progress_handler(self._progress, PROGRESS_STEPS)
        return conn

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None

    def begin(self) -> None:
        """BEGIN IMMEDIATE: the write lock, so that what is read inside cannot
        change before this transaction ends."""
        self.wait_for_lock("BEGIN IMMEDIATE")

    def commit(self) -> None:
        self.wait_for_lock("COMMIT")

    def abandon(self) -> None:
        """Roll back whatever is open (a library caller's connection must not
        stay inside a transaction after an error)."""
        if self.conn is not None and self.conn.in_transaction:
            try:
                self.conn.execute("ROLLBACK")
            except sqlite3.Error:
                pass  # SQLite has rolled back already (an I/O error, say)

    def data_version(self) -> int:
        # A read of the file header: outside a transaction it can meet a
        # writer's lock like any read.
        return self.wait_for_lock("PRAGMA data_version").fetchone()[0]

    def wait_for_lock(self, sql: str, params: Sequence[object] = (),
                      conn: Optional[sqlite3.Connection] = None) -> sqlite3.Cursor:
        """The statements that wait for other connections: BEGIN IMMEDIATE
        and COMMIT (a writer; readers finishing) and reads outside a
        transaction (a writer committing), retried for up to lock_timeout in
        short steps.  The connection has no busy timeout of its own: SQLite's
        wait would hold a Ctrl-C until it ends, this one notices it within
        milliseconds.  (Inside the write lock nothing else waits: SQLite does
        not fail a statement whose cache spill finds readers, it keeps the
        pages in memory.)"""
        execute = (conn or self.conn).execute  # type: ignore[union-attr]
        deadline: Optional[float] = None
        pause = 0.001
        while True:
            try:
                return execute(sql, params)
            except sqlite3.OperationalError as exc:
                if not _is_busy(exc):
                    raise _describe_sqlite_error(exc, self.path) or exc from None
            if deadline is None:
                deadline = time.monotonic() + self.lock_timeout
            if self.stop_signal is not None:
                raise _Stop(self.stop_signal, None)
            if time.monotonic() >= deadline:
                raise self.lock_timeout_error()
            time.sleep(min(pause, max(0.0, deadline - time.monotonic())))
            pause = min(pause * 2, 0.05)

    def lock_timeout_error(self) -> DatabaseWriteError:
        return _Locked(
            f"Database {self.path} stayed locked by another process for"
            f" {self.lock_timeout:g} s ({_opt('lock_timeout')}); nothing of the current"
            " migration was kept. Retry when the other migration run or program has finished.")

    def admin(self, sql: str, params: Sequence[object] = ()) -> sqlite3.Cursor:
        """Run the tool's own SQL; database-level failures become one clear error."""
        try:
            return self.conn.execute(sql, params)  # type: ignore[union-attr]
        except sqlite3.Error as exc:
            instead = self.interruption()
            if instead is not None:
                raise instead from None
            described = _describe_sqlite_error(exc, self.path)
            if described is None:
                raise
            if "locked" in str(exc):
                described = self.lock_timeout_error()
            raise described from None

    def request_stop(self, signum: int) -> None:
        """Only takes note: a running statement is aborted by SQLite's
        progress handler, and the loops check between statements.  Later
        signals change nothing."""
        if self.stop_signal is None:
            self.stop_signal = signum

    @property
    def stopped(self) -> Optional[int]:
        """The stop to act on now: none while held."""
        return None if self.hold else self.stop_signal

    def interruption(self) -> Optional[Exception]:
        """After a statement failed: the exception to raise instead when the
        progress handler aborted it (a stop, or a yield), else None."""
        if self.stopped is not None:
            return _Stop(self.stopped, "rolled back")
        if self.yielded and self.yield_at is not None:
            return _Yield()
        return None

    @contextmanager
    def held_stops(self) -> Iterator[None]:
        """A stop waits until the block ends, except while waiting for a
        lock: what runs here ran already, in one group commit's time, and
        was undone by the database, not by the user."""
        self.hold = True
        try:
            yield
        finally:
            self.hold = False

    def _progress(self) -> bool:
        """SQLite's progress handler: True aborts the running statement."""
        if self.stopped is not None:
            return True
        if self.yield_at is not None and time.perf_counter() >= self.yield_at:
            self.yielded = True
            return True
        if self.running is not None and self.on_slow_statement is not None:
            now = time.perf_counter()
            if now >= self.next_tick:
                self.next_tick = now + 0.25
                name, number, line, started = self.running
                self.on_slow_statement(name, number, line, now - started)
        return False


class _SQLiteSteps:
    """One step on a _SQLiteConnection, inside the transaction SQLiteTarget
    holds: its statements (with timings to ``log``), the guard's counts, the
    foreign-key check, and its bookkeeping."""

    def __init__(self, db: _SQLiteConnection, path: str, foreign_keys: bool,
                 log: Optional[Callable[[str], None]]):
        self.db = db
        self.path = path
        self.foreign_keys = foreign_keys
        self.log = log
        self.orphans_checked = False

    def run(self, step: Step, hoisted: int,
            query: Callable[[str, tuple], List[tuple]]) -> float:
        """One step's statements (those after the `hoisted` ones that ran
        before the transaction) and bookkeeping; its duration in ms."""
        self.check_orphans(step)
        guard = step.guard(query)
        started = time.perf_counter()
        self.admin_all(guard.before)
        self.execute(step, step.statements[hoisted:])
        self._check_guard(step, guard)
        return self._finish_step(step, started)


    def execute(self, step: Step, statements: List[Tuple[int, Statement]]) -> None:
        """The statements of a step, each run to its last row (as
        executescript and D1 run them: a SELECT can fail on a later row)."""
        db = self.db
        execute = db.conn.cursor().execute  # type: ignore[union-attr]
        log = self.log
        number, statement = 0, None
        try:
            for number, statement in statements:
                started = time.perf_counter()
                db.running = (step.name, number, statement.line, started)
                db.next_tick = started + SLOW_STATEMENT_SECONDS
                for _ in execute(statement.sql):
                    pass
                # Between statements too: a file of many short ones may never
                # reach the progress handler.
                if db.stopped is not None:
                    raise _Stop(db.stopped, "rolled back")
                if db.yield_at is not None and time.perf_counter() >= db.yield_at:
                    raise _Yield()
                if log is not None:
                    log(_describe_statement(step.name, number, statement,
                                            time.perf_counter() - started))
        except (sqlite3.Error, sqlite3.Warning, ValueError) as exc:
            instead = db.interruption()
            if instead is not None:
                raise instead from None
            described = _describe_sqlite_error(exc, self.path)
            unwritable = isinstance(described, DatabaseWriteError)
            raise MigrationFailed(step.name, step.path, str(described if unwritable else exc),
                                  number, statement.line, statement.sql,  # type: ignore
                                  action=step.action) from (described if unwritable else exc)
        finally:
            db.running = None

    def admin_all(self, entries: List[Entry]) -> None:
        for sql, params in entries:
            self.db.admin(sql, params)

    def _check_guard(self, step: Step, guard: Guard) -> None:
        """The guard's recounts after a step: a refusal becomes the step's
        failure, with both counts (read before the rollback)."""
        for sql, params in guard.after:
            try:
                self.db.admin(sql, params)
            except sqlite3.Error as exc:
                ref = guard.failed(str(exc))
                if ref is None:
                    raise
                kept = self.db.admin(SQL_GUARD_KEPT, (ref,)).fetchone()[0]
                now = self.db.admin(guard.count_sql(ref)).fetchone()[0]
                raise guard.failure(step, ref, kept, now) from None

    def _finish_step(self, step: Step, started: float) -> float:
        """After a step's statements: check its foreign keys and write its
        bookkeeping; returns its duration in ms."""
        if self.foreign_keys:
            broken = self._foreign_key_violations(step)
            if broken:
                raise MigrationFailed(
                    step.name, step.path,
                    f"it leaves rows whose foreign keys point nowhere: {broken}"
                    " (PRAGMA foreign_key_check; D1 enforces foreign keys)", action=step.action)
        duration_ms = (time.perf_counter() - started) * 1000.0
        try:
            for sql, params in step.record(duration_ms):
                self.db.admin(sql, params)
        except sqlite3.Error as exc:  # a trigger, a constraint: the step fails with it
            raise MigrationFailed(step.name, step.path,
                                  f"{exc} (recording it in {TRACKING_TABLE} or its"
                                  " history failed)",
                                  action=step.action) from exc
        return duration_ms

    @contextmanager
    def pragmas_first(self, step: Step) -> Iterator[int]:
        """Run a file's leading PRAGMA foreign_keys before its transaction
        (a no-op inside one, as SQLite documents); yield how many statements
        that was, and restore the setting after.  With foreign_keys on, they
        stay where they are, as on D1."""
        hoisted = 0 if self.foreign_keys else step.hoisted
        try:
            if hoisted:
                self.execute(step, step.statements[:hoisted])
            yield hoisted
        finally:
            if hoisted and self.db.conn is not None:
                self.db.conn.execute(f"PRAGMA foreign_keys = {self.db.foreign_keys_default}")

    def _foreign_key_violations(self, step: Step, before: bool = False) -> Optional[str]:
        """PRAGMA foreign_key_check, as text for a message; None if clean.
        A check that cannot run (a foreign key naming columns with no unique
        index: a "mismatch") is the step's failure, or with `before`, the
        database's, as any SQL error is."""
        try:
            broken = self.db.admin("PRAGMA foreign_key_check").fetchall()
        except sqlite3.Error as exc:
            # The progress handler aborts a long check on Ctrl-C.
            instead = self.db.interruption()
            if instead is not None:
                raise instead from None
            why = (f"PRAGMA foreign_key_check failed: {exc} (with {_opt('foreign_keys')} it"
                   " runs after each migration; a foreign key must name the parent's primary"
                   " key or columns with a UNIQUE index)")
            if before:
                raise MigrationError(f"Database {self.path}: {why}. Nothing was"
                                     f" {_done_word(step)}.") from None
            raise MigrationFailed(step.name, step.path, why, action=step.action) from None
        if not broken:
            return None
        shown = ", ".join(f"{table} rowid {rowid} -> {parent}"
                          for table, rowid, parent, _ in broken[:5])
        return shown + (f" and {len(broken) - 5} more" if len(broken) > 5 else "")

    def check_orphans(self, step: Step) -> None:
        """With foreign_keys the check runs after each step, so it must hold
        before the first: otherwise old orphans would be blamed on it."""
        if not self.foreign_keys or self.orphans_checked:
            return
        broken = self._foreign_key_violations(step, before=True)
        if broken:
            raise MigrationError(
                f"Database {self.path} already has rows whose foreign keys point"
                f" nowhere ({broken}); {_opt('foreign_keys')} checks after each migration,"
                f" so fix these rows first. Nothing was {_done_word(step)}.")
        self.orphans_checked = True


def _done_word(step: Step) -> str:
    return "applied" if step.action == "apply" else "rolled back"


def _locked(error: Optional[BaseException]) -> bool:
    """A lock that did not come, or a step's failure because of one."""
    return isinstance(error, _Locked) or isinstance(getattr(error, "__cause__", None), _Locked)


def _lost_at_commit(done: list, rest: list, error: BaseException) -> Ran:
    """A transaction lost at its COMMIT (a stop, a lock that did not come):
    the steps it held are undone; with a lock, the last of them failed."""
    return Ran(done, rest[:-1] if isinstance(error, _Locked) else rest, error, None)


class SQLiteTarget(Target):
    """A local SQLite database file (wrangler's local D1 file included).

    A step and its bookkeeping commit together, and any failure, Ctrl-C
    included, rolls both back before the exception leaves.  With
    create_folder, a missing folder of the database is made (wrangler's
    state folder, which wrangler makes on first use); with d1_rules, a
    migration that D1 would refuse is refused (wrangler's local D1 file,
    which wrangler's own local D1 refuses it on as well).  Output goes
    only through the optional callbacks: ``log`` gets one line per
    statement with its timing, ``on_slow_statement`` is called a few times
    a second while one statement has run longer than two seconds.
    """

    def __init__(self, path: str, *, lock_timeout: float = DEFAULT_LOCK_TIMEOUT,
                 foreign_keys: bool = False,
                 log: Optional[Callable[[str], None]] = None,
                 on_slow_statement: Optional[Callable[[str, int, int, float], None]] = None,
                 create_folder: bool = False, d1_rules: bool = False):
        self.path = self.name = path
        self.foreign_keys = foreign_keys
        self.d1_rules = d1_rules  # wrangler's local D1 file: what D1 refuses, refused here too
        self.db = _SQLiteConnection(path, check_seconds("lock_timeout", lock_timeout),
                                    foreign_keys, on_slow_statement, create_folder)
        self._seen_version: Optional[int] = None  # data_version when the record was read
        self._capture = True
        self._unnoted = False  # the schema's note took a group's transaction with it
        self.steps = _SQLiteSteps(self.db, path, foreign_keys, log)

    # -- the interface ------------------------------------------------------

    def open(self, mode: str) -> bool:
        return self.db.open(mode)

    def query(self, sql: str, params: tuple = ()) -> List[tuple]:
        if self._capture and not self.db.conn.in_transaction:  # type: ignore[union-attr]
            # The first read since our last write: what run() compares with
            # to learn whether another process wrote since (data_version
            # changes only with other connections' commits).
            self._seen_version = self.db.data_version()
            self._capture = False
        return self.db.wait_for_lock(sql, params).fetchall()

    def ensure(self, entries: List[Entry]) -> None:
        self.db.begin()
        try:
            for sql, params in entries:
                self.db.admin(sql, params)
            self.db.commit()
        except BaseException:
            self.db.abandon()
            raise
        self._capture = True

    write = ensure  # one transaction either way; nothing here is sent twice

    def run(self, steps: List[Step], first: Sequence[Entry] = (),
            last: Optional[Callable[[], List[Entry]]] = None) -> Ran:
        """Group commit: the steps run, each in a savepoint, in one
        transaction, committed once GROUP_COMMIT_SECONDS have passed since
        it began, at a stop, before a step that must begin outside a
        transaction, and before a step that runs long (that one is stopped
        once it has run GROUP_COMMIT_SECONDS, and runs again first in the
        next call).  A failing step is rolled back to its savepoint and
        those before it commit."""
        self._unnoted = False
        ran, error, began, lost = self._group(steps, GROUP_COMMIT_SECONDS, first, last)
        held = [step for step, _ in ran]
        if lost and not held and first and not _locked(error):
            # The record is kept even when the first step fails; not after a
            # lock timeout, which waiting again would only repeat.
            self._create(first)
        if not lost or not held:
            return Ran([] if lost else ran, [], error, began)
        if isinstance(error, _Locked):  # at the COMMIT: waiting again would wait as long
            return _lost_at_commit([], ran, error)
        # The database rolled back the whole transaction (an aborted INSERT
        # or UPDATE does that, as does a full disk) or could not commit it:
        # what it held runs again, so that each step's fate is what one
        # commit per migration would have made it.  Those steps ran before:
        # a stop waits for them, unless it comes while waiting for the lock.
        done: List[Tuple[Step, Optional[float]]] = []
        # The note goes with the last step, unless it was what was lost.
        last = last if len(held) == len(steps) and not self._unnoted else None
        with self.db.held_stops():
            try:
                again, failure, when, lost = self._group(held, None, first, last)
                if not lost:
                    return Ran(again, [], error if failure is None else failure,
                               began if failure is None else when)
                if isinstance(failure, (_Locked, _Stop)):  # at its COMMIT
                    return _lost_at_commit([], ran, failure)
                for step in held:  # one commit each, to find the one that fails
                    again, failure, when, lost = self._group(
                        [step], None, first, last if step is held[-1] else None)
                    if lost and again:  # a stop or a lock at its COMMIT
                        return _lost_at_commit(done, ran[len(done):], failure)
                    done += again
                    if failure is not None:
                        return Ran(done, [], failure, when)
            except (_Stop, _Locked) as exc:  # while waiting for the lock
                return _lost_at_commit(done, ran[len(done):], exc)
        return Ran(done, [], error, began)

    def _group(self, steps: List[Step], seconds: Optional[float], first: Sequence[Entry],
               last: Optional[Callable[[], List[Entry]]] = None
               ) -> "tuple[list, Optional[BaseException], Optional[tuple], bool]":
        """One transaction of steps from the front of `steps` (all of them
        when seconds is None): what ran, committed unless lost; the error
        that ended it early and when its step began; whether the
        transaction was lost with what it held."""
        db = self.db
        ran: list = []
        error: Optional[BaseException] = None
        began = None
        with self.steps.pragmas_first(steps[0]) as hoisted:
            db.begin()
            try:
                self.steps.admin_all(first)
                # Another process wrote since the engine read the record:
                # follow what it did.
                changed = db.data_version() != self._seen_version
                now = time.perf_counter()
                deadline = None if seconds is None else now + seconds
                for step in steps:
                    if ran and (hoisted or self._hoists(step) or db.stopped is not None
                                or (deadline is not None and time.perf_counter() >= deadline)
                                or _sets_deferral(ran[-1][0])):
                        break
                    began = (time.time(), time.perf_counter())
                    try:
                        if changed and step.settled():
                            ran.append((step, None))
                            continue
                    except MigrationError as exc:
                        error = exc
                        break
                    changed = False
                    db.admin(SQL_SAVEPOINT)
                    db.yielded = False
                    if ran and seconds is not None:
                        db.yield_at = began[1] + seconds
                    try:
                        ms = self.steps.run(step, hoisted if step is steps[0] else 0, self.query)
                        ran.append((step, ms))
                    except (MigrationError, _Stop, _Yield) as exc:
                        if not isinstance(exc, _Yield):
                            error = exc
                        if db.conn.in_transaction:  # type: ignore[union-attr]
                            db.admin(SQL_ROLLBACK_TO)
                            db.admin(SQL_RELEASE)
                        break
                    finally:
                        db.yield_at = None
                    db.admin(SQL_RELEASE)
                if not db.conn.in_transaction:  # type: ignore[union-attr]
                    return ran, error, began, True
                if last is not None and error is None and len(ran) == len(steps):
                    if not self._last(last):
                        self._unnoted = True  # its replay goes without the note
                        return ran, error, began, True
                try:
                    db.commit()
                except (sqlite3.Error, MigrationError, _Stop) as exc:
                    db.abandon()
                    if isinstance(exc, _Locked) and len(ran) > 1:
                        return ran, exc, began, True  # (SQLiteTarget.run: undone)
                    if len(ran) != 1 or isinstance(exc, _Stop):
                        return ran, exc if isinstance(exc, _Stop) else error, began, True
                    step = ran[0][0]
                    failure = MigrationFailed(
                        step.name, step.path,
                        f"at its COMMIT: {exc.marked}" if isinstance(exc, _Locked)
                        else f"{exc} at COMMIT; it was rolled back", action=step.action)
                    failure.__cause__ = exc
                    return [], failure, began, True  # (its record too: SQLiteTarget.run)
            except BaseException:
                db.abandon()
                raise
        self._capture = True
        return ran, error, began, False

    def _last(self, last: Callable[[], List[Entry]]) -> bool:
        """The last entries (the schema's note) in their own savepoint: a
        failure only leaves them out.  False when it took the whole
        transaction with it (a trigger's RAISE(ROLLBACK) on the table)."""
        db = self.db
        db.admin(SQL_SAVEPOINT)
        try:
            self.steps.admin_all(last())
        except (MigrationError, sqlite3.Error):
            if not db.conn.in_transaction:  # type: ignore[union-attr]
                return False
            db.admin(SQL_ROLLBACK_TO)
        db.admin(SQL_RELEASE)
        return True

    def _hoists(self, step: Step) -> bool:
        return bool(step.hoisted) and not self.foreign_keys

    def run_all(self, ensure: List[Entry], plan: Callable[[], List[Step]], commit: bool,
                on_ran: Callable[[Step, float], None]) -> None:
        self.db.begin()
        try:
            for sql, params in ensure:
                self.db.admin(sql, params)
            steps = plan()
            if not self.foreign_keys:
                self._refuse_hoisting(steps, "single_transaction" if commit else "dry_run")
            for step in steps:
                on_ran(step, self.steps.run(step, 0, self.query))
            if self.db.stop_signal is not None:
                raise _Stop(self.db.stop_signal, "rolled back")
            if not commit:
                self.db.abandon()
                return
            try:
                self.db.commit()
            except sqlite3.Error as exc:
                raise MigrationError(
                    f"Failed to commit the run to {self.path}: {exc} at COMMIT; rolled back the"
                    f" whole run ({_opt('single_transaction')}): nothing was applied") from exc
        except BaseException:
            self.db.abandon()
            raise

    def request_stop(self, signum: int) -> None:
        self.db.request_stop(signum)

    def close(self) -> None:
        self.db.close()
        self.steps.orphans_checked = False

    def backup(self, path: Optional[str] = None) -> str:
        """Copy the database with SQLite's online backup API (not inside a
        write transaction: the API reports SQLITE_LOCKED for ever there);
        returns the copy's path.  Without a path: beside the database, with
        the UTC time in the name."""
        if path is None:
            stem, ext = os.path.splitext(self.path)
            stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
            path = f"{stem}-backup-{stamp}{ext or '.db'}"
            serial = 1
            while os.path.exists(path):  # two runs within one second
                serial += 1
                path = f"{stem}-backup-{stamp}-{serial}{ext or '.db'}"
        if os.path.exists(path):
            raise MigrationError(
                f"Backup file {path} already exists; nothing was applied. Move it away"
                f" or name another with {_opt('backup')} PATH")
        try:
            copy = sqlite3.connect(path)
            try:
                self.db.conn.backup(copy)  # type: ignore[union-attr]
            finally:
                copy.close()
        except (sqlite3.Error, OSError) as exc:
            if os.path.exists(path):
                os.remove(path)
            raise MigrationError(
                f"Backup of {self.path} to {path} failed ({exc}); nothing was applied") from None
        return path

    @staticmethod
    def _refuse_hoisting(steps: List[Step], option: str) -> None:
        """One transaction for the whole run cannot honour a file's leading
        PRAGMA foreign_keys, so it would not do what a normal apply does."""
        for step in steps:
            if step.hoisted:
                number, statement = step.statements[0]
                raise MigrationFailed(
                    step.name, step.path,
                    f"it starts with PRAGMA foreign_keys, which SQLite honours only"
                    f" outside a transaction, so {_opt(option)} cannot run it as apply does;"
                    f" apply without {_opt(option)}", number, statement.line, statement.sql)


# ==========================================================================
# 11. Remote D1: the HTTP client, and the target that sends each step as one
#     batch, which D1 runs as one transaction.
# ==========================================================================

# A statement that always fails with a message of its own: appended to a batch
# it makes D1 roll the batch back, which a dry run and the search for a
# failing statement need.
D1_SENTINEL_TABLE = "apply_migrations: rolled back on purpose"
SQL_SENTINEL = f"SELECT * FROM {quote_identifier(D1_SENTINEL_TABLE)}"


def d1_sql(statement: Statement) -> str:
    """A statement as sent to D1.  D1's server-side splitter, which sees
    each batch entry too, has cut trigger bodies whose BEGIN or END is not in
    upper case ("incomplete input"): upper-case those two words of a
    CREATE TRIGGER.  SQLite reads keywords in any case, so nothing else
    changes; the file and its checksum are untouched."""
    if statement.keyword != "CREATE":
        return statement.sql
    sql = statement.sql
    words = [m for m in _HEAD_TOKEN.finditer(sql) if _IDENTIFIER.match(m.group())]
    lowered = [m.group().lower() for m in words[:3]]
    if "trigger" not in lowered[1:3] or (lowered[1] != "trigger" and
                                         lowered[1] not in ("temp", "temporary")):
        return sql
    begin = next((m for m in words if m.group().lower() == "begin"), None)
    end = next((m for m in reversed(words) if m.group().lower() == "end"), None)
    if begin is None or end is None or end.start() < begin.start():
        return sql
    return (sql[:begin.start()] + "BEGIN" + sql[begin.end():end.start()] + "END"
            + sql[end.end():])


class _Transient(Exception):
    def __init__(self, reason: str, maybe_ran: bool, delay: Optional[float] = None):
        self.reason = reason
        self.maybe_ran = maybe_ran
        self.delay = delay
        super().__init__(reason)


def _read_by(response, deadline: float) -> bytes:
    """An answer's body, whole by `deadline` or a TimeoutError: the socket's
    timeout bounds each read, and a server that sends a byte now and then
    would otherwise hold a request open without end."""
    read = getattr(response, "read1", None) or response.read
    parts = []
    while True:
        if time.monotonic() > deadline:
            raise TimeoutError("the answer did not come whole in time")
        chunk = read(65536)
        if chunk:
            parts.append(chunk)
            continue
        missing = getattr(response, "length", None)  # what Content-Length still promised
        if missing:
            import http.client
            raise http.client.IncompleteRead(b"".join(parts), missing)
        return b"".join(parts)


class D1Client:
    """POSTs SQL to D1's /query and /raw endpoints with urllib.

    Requests that cannot change anything twice (reads, CREATE ... IF NOT
    EXISTS) are retried with backoff on timeouts, dropped connections, 429,
    5xx and answers that are not D1's.  A write that may have reached D1 is
    never resent here: it raises D1Unsure and the caller asks the tracking
    table what happened.  `stopping()` ends waits between retries early.
    """

    def __init__(self, settings: D1Settings, log: Optional[Callable[[str], None]] = None):
        self.api_base = settings.api_base.rstrip("/")
        self.account_id = settings.account_id
        self.database_id = settings.database_id
        self.database_name = settings.name
        self._token = settings.token
        self.timeout = settings.timeout
        self.retries = settings.retries
        self.log = log
        self.backoff = 1.0  # seconds before the first retry; doubles each time
        self.stopping: Callable[[], bool] = lambda: False

    def redact(self, text: str) -> str:
        return text.replace(self._token, "***") if self._token else text

    def pause(self, seconds: float) -> None:
        """Sleep, in short steps so that a stop request ends the wait."""
        deadline = time.monotonic() + seconds
        while not self.stopping():
            left = deadline - time.monotonic()
            if left <= 0:
                return
            time.sleep(min(left, 0.05))

    def _post_once(self, kind: str, body: Optional[dict]) -> "tuple[int, object]":
        """One POST (a GET without a body): (HTTP status, parsed JSON or
        None).  Raises _Transient."""
        import http.client
        import json
        import socket
        import urllib.error
        import urllib.request
        url = (f"{self.api_base}/accounts/{self.account_id}/d1/database/"
               f"{self.database_id}/{kind}")
        request = urllib.request.Request(
            # UTF-8 as it is: escaped, a character outside ASCII would take 6
            # bytes, and a group's size (D1_GROUP_BYTES) would not be its body's.
            url, data=None if body is None else json.dumps(
                body, ensure_ascii=False).encode("utf-8"),
            method="GET" if body is None else "POST",
            headers={"Authorization": f"Bearer {self._token}",
                     "Content-Type": "application/json",
                     "User-Agent": f"apply_migrations.py/{__version__}"})
        started = time.perf_counter()
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                status = response.status
                raw = _read_by(response, time.monotonic() + self.timeout)
        except urllib.error.HTTPError as exc:
            status = exc.code
            try:
                raw = _read_by(exc, time.monotonic() + self.timeout)
            except (ConnectionError, http.client.HTTPException, OSError) as lost:
                # An error answer cut short or stalled (a timeout is an
                # OSError): unread, it cannot say whether a write ran.
                raise _Transient(f"HTTP {status} from D1 with its body cut short"
                                 f" ({lost.__class__.__name__})", maybe_ran=status != 429,
                                 delay=_retry_after(exc.headers)) from None
            if status == 429 or status >= 500:
                raise _Transient(f"HTTP {status} from D1", maybe_ran=status != 429,
                                 delay=_retry_after(exc.headers))
        except urllib.error.URLError as exc:
            reason = exc.reason
            never_sent = isinstance(reason, (ConnectionRefusedError, socket.gaierror))
            raise _Transient(f"cannot reach {self.api_base} ({reason})",
                             maybe_ran=not never_sent) from None
        except (socket.timeout, TimeoutError):
            raise _Transient(f"no answer from D1 within {self.timeout:g} s"
                             f" ({_opt('http_timeout')})", maybe_ran=True) from None
        except (ConnectionError, http.client.HTTPException, OSError) as exc:
            raise _Transient(f"connection to D1 failed ({exc})", maybe_ran=True) from None
        if self.log:
            self.log(f"{request.get_method()} .../{kind}: HTTP {status} in"
                     f" {format_ms((time.perf_counter() - started) * 1000)}")

        def not_json(constant: str) -> None:
            raise ValueError(constant)  # NaN and Infinity are Python's, not JSON's

        try:
            return status, json.loads(raw.decode("utf-8"), parse_constant=not_json)
        except ValueError:
            return status, None

    def request(self, kind: str, body: Optional[dict], idempotent: bool,
                results: Optional[int]) -> list:
        """POST (GET without a body) with retries where safe; the `result` of
        D1's envelope, which must hold one result for each of the `results`
        statements (None: any object)."""
        delay = self.backoff
        for attempt in range(self.retries + 1):
            try:
                status, payload = self._post_once(kind, body)
                if 200 <= status < 300 and not _is_envelope(payload, results):
                    # Not D1's answer (a proxy's page, a truncated body):
                    # whether a write ran is unknown.
                    raise _Transient(f"HTTP {status} from D1 with a body that is not D1's"
                                     " answer", maybe_ran=True)
                break
            except _Transient as transient:
                if transient.maybe_ran and not idempotent:
                    raise D1Unsure(self.redact(transient.reason)) from None
                gave_up = self.redact(f"{transient.reason}; gave up after {attempt + 1}"
                                      f" attempt{'s' if attempt else ''}")
                if self.stopping():
                    raise _NotSent(gave_up) from None
                if attempt == self.retries:
                    raise D1Error(gave_up) from None
                self.pause(min(transient.delay if transient.delay is not None else delay, 60.0))
                if self.stopping():  # the wait ended early: send nothing more
                    raise _NotSent(gave_up) from None
                delay *= 2
        if 200 <= status < 300:
            return payload["result"]  # type: ignore[index]
        errors = payload.get("errors") if isinstance(payload, dict) else None
        if isinstance(errors, list) and errors and all(isinstance(e, dict) for e in errors):
            code = errors[0].get("code")
            message = "; ".join(f"{e.get('message')} [code {e.get('code')}]" for e in errors)
        else:
            message, code = f"HTTP {status} with no D1 answer in the body", None
        # A page that is not D1's (a firewall's, a proxy's) says nothing of the token.
        if (status in (401, 403) and code is not None) or code == 10000:
            raise ConfigurationError(self.redact(
                f"D1 refused the credentials ({message}): check {D1_TOKEN_VARIABLE}"
                f" (a token with D1 edit permission) and {D1_ACCOUNT_VARIABLE}"))
        if status == 404:
            raise ConfigurationError(self.redact(
                f"D1 database {self.database_id} not found in account {self.account_id}"
                f" ({message}); check {D1_DATABASE_VARIABLE} and {D1_ACCOUNT_VARIABLE}"))
        raise D1Error(self.redact(message), code=code, status=status)

    def batch(self, statements: List[Entry], idempotent: bool = False) -> list:
        """Run statements as one batch, one D1 transaction; per-statement results."""
        return self.request("query", {"batch": [{"sql": sql, "params": params}
                                                for sql, params in statements]},
                            idempotent, len(statements))

    def bookmark(self) -> str:
        """D1's Time Travel bookmark for now: restoring to it rewinds the
        whole database to this moment."""
        result = self.request("time_travel/bookmark", None, idempotent=True, results=None)
        bookmark = result.get("bookmark") if isinstance(result, dict) else None
        if not isinstance(bookmark, str) or not bookmark.strip():
            raise D1Error("D1 answered the Time Travel bookmark request without a bookmark")
        return bookmark

    def rows(self, sql: str, params: tuple = ()) -> List[tuple]:
        result = self.request("raw", {"sql": sql, "params": list(params)}, idempotent=True,
                              results=1)
        results = result[-1].get("results")
        rows = results.get("rows") if isinstance(results, dict) else None
        columns = results.get("columns") if isinstance(results, dict) else None
        # Callers unpack each row: one value for each column, or the answer
        # is not D1's (a row of another length would be a traceback there).
        if (not isinstance(rows, list) or not isinstance(columns, list)
                or (rows and not columns)
                or not all(isinstance(row, list) and len(row) == len(columns)
                           for row in rows)):
            raise D1Error("D1 answered a read with its rows in an unexpected shape: an answer"
                          " that is not D1's")
        return [tuple(row) for row in rows]


def _is_envelope(payload: object, results: Optional[int]) -> bool:
    """Whether a 200's body is D1's answer: success, with one successful
    result for each statement sent (results None: a result object)."""
    if not isinstance(payload, dict) or payload.get("success") is not True:
        return False
    result = payload.get("result")
    if results is None:
        return isinstance(result, dict)
    return (isinstance(result, list) and len(result) == results
            and all(isinstance(r, dict) and r.get("success") is not False for r in result))


def _sql_error(error: D1Error) -> bool:
    """Whether D1 refused a batch for its SQL: an error in D1's own answer
    (with its code), not a status that names no statement."""
    return error.code is not None and error.status not in (None, 413, 429)


def _retry_after(headers) -> Optional[float]:
    """Retry-After in seconds (D1 and Cloudflare send seconds)."""
    value = (headers.get("Retry-After") if headers else None) or ""
    try:
        seconds = float(value.strip())
    except ValueError:
        return None
    return seconds if 0 <= seconds < float("inf") else None


# Longer than D1 lets any request run (30 s) by far: a duration beyond it
# is not D1's, and would be stored and shown as if it were.
D1_MAX_DURATION_MS = 86_400_000.0


def _d1_duration(results: list) -> float:
    """The time D1 says the statements of results took, in ms.  A duration
    that is not a number from 0 to D1_MAX_DURATION_MS (Infinity and NaN
    included, which JSON output cannot hold) counts as absent."""
    total = 0.0
    for result in results:
        meta = result.get("meta") if isinstance(result, dict) else None
        duration = meta.get("duration") if isinstance(meta, dict) else None
        if (isinstance(duration, (int, float)) and not isinstance(duration, bool)
                and 0 <= duration <= D1_MAX_DURATION_MS):
            total += float(duration)
    return total


def _reads_schema(step: Step) -> bool:
    """Whether a step's guard must read the schema first (it drops or
    deletes from a table that others reference)."""
    def refuse(sql: str, params: tuple = ()) -> List[tuple]:
        raise LookupError(sql)
    try:
        step.guard(refuse)
    except LookupError:
        return True
    return False


@contextmanager
def _unsent(target: "D1Target", state: Optional[str], steps: int = 1) -> Iterator[None]:
    """A request the client did not send (again) because of a stop is the
    stop, with what became of the step(s) it carried."""
    try:
        yield
    except _NotSent:
        raise _Stop(target._stop_signal or signal.SIGINT, state, steps) from None


def _settled(step: Step, unsure: D1Unsure, steps: List[Step], what: str = "") -> bool:
    """After a lost answer: whether the record holds step.  When the record
    cannot be read either, whether D1 ran the request is unknown, not failed:
    the step(s) are reported so, and nothing more is sent."""
    try:
        return step.settled()
    except _Stop as stop:
        raise _Stop(stop.signum, "unknown", len(steps)) from None
    except (D1Error, ConfigurationError) as exc:
        rollback = step.action != "apply"
        what = what or (f"the rollback of {step.name}" if rollback else
                        steps[0].name if len(steps) == 1 else
                        f"{steps[0].name} to {steps[-1].name} (one batch)")
        lost = D1Unsure(
            f"The answer to {what} was lost ({unsure}), and reading {TRACKING_TABLE}"
            f" after it failed too ({exc}): D1 {'ran' if rollback else 'applied'} it"
            " wholly or not at all, and `status` shows "
            + ("whether it is still applied" if rollback else "which"))
        lost.steps = len(steps)
        raise lost from None


class D1Target(Target):
    """A remote D1 database over the HTTP API.  Each step travels as one
    batch (its statements, split by this tool, then its bookkeeping), which
    D1 commits together or not at all.  D1 has no lock to take: two runs
    racing for a migration both send it, and the second batch fails on the
    tracking row's primary key and leaves nothing, so each migration is
    still applied once."""

    d1_rules = True
    cheap_reads = False  # every read is a round trip to Cloudflare

    def __init__(self, client: D1Client):
        self.client = client
        self.name = f"D1 database {client.database_id}"
        self._stop_signal: Optional[int] = None
        client.stopping = lambda: self._stop_signal is not None

    def open(self, mode: str) -> bool:
        return True  # the database exists; the first request says if it cannot be reached

    def query(self, sql: str, params: tuple = ()) -> List[tuple]:
        self._check_stop(None)
        with _unsent(self, None):
            return self.client.rows(sql, params)

    def ensure(self, entries: List[Entry]) -> None:
        # Only idempotent statements come here (CREATE ... IF NOT EXISTS,
        # INSERT OR IGNORE), so they may be retried.
        self._check_stop(None)
        with _unsent(self, None):
            self.client.batch(entries, idempotent=True)

    def write(self, entries: List[Entry]) -> None:
        self._check_stop(None)  # after a stop, nothing more is sent
        with _unsent(self, None):
            self.client.batch(entries)

    def run(self, steps: List[Step], first: Sequence[Entry] = (),
            last: Optional[Callable[[], List[Entry]]] = None) -> Ran:
        """Consecutive small steps that need no read of the schema first go
        as one batch (D1 commits it wholly or not at all); if it fails, each
        is sent alone, so that the failing one is found and named, and those
        before it applied.  Any other step goes alone."""
        try:
            ran = self._run_group(self._group_of(steps), first)
        except (MigrationError, _Stop):
            self._create(first)
            raise
        if not ran.done:
            self._create(first)
        if last is not None and ran.error is None and len(ran.done) == len(steps):
            try:
                self.ensure(last())  # after the batch: a read cannot see inside one
            except (MigrationError, _Stop):
                pass
        return ran

    def _run_group(self, group: List[Step], first: Sequence[Entry]) -> Ran:
        if len(group) == 1:
            return Ran([(group[0], self._run_one(group[0], first))], [], None, None)
        owns = [self._entries(step) + step.record(None) for step in group]
        self._check_stop("not sent")
        try:
            with _unsent(self, "not sent", len(group)):
                results = self.client.batch(list(first)
                                            + [entry for own in owns for entry in own])
        except D1Unsure as unsure:
            # It may have run: all of it or none, and the record says which.
            if self._stop_signal is not None:
                raise _Stop(self._stop_signal, "unknown", len(group))
            if _settled(group[-1], unsure, group):
                return Ran([(step, 0.0) for step in group], [], None, None)
            return self._one_by_one(group, first)
        except D1Error:
            return self._one_by_one(group, first)
        done: List[Tuple[Step, Optional[float]]] = []
        amend: List[Entry] = []
        offset = len(first)
        for step, own in zip(group, owns):
            duration = _d1_duration(results[offset:offset + len(step.statements)])
            amend += step.amend(duration)
            done.append((step, duration))
            offset += len(own)
        self._amend(amend)
        return Ran(done, [], None, None)

    def _group_of(self, steps: List[Step]) -> List[Step]:
        """The steps from the front that go in one batch: small ones whose
        guard reads nothing (one that does must read the schema as the
        steps before it left it), up to D1_GROUP_STEPS and D1_GROUP_BYTES."""
        size = 0
        for count, step in enumerate(steps[:D1_GROUP_STEPS]):
            size += sum(len(statement.sql.encode("utf-8")) for _, statement in step.statements)
            if _reads_schema(step):
                return steps[:max(count, 1)]
            if count and size > D1_GROUP_BYTES:
                return steps[:count]
            if _sets_deferral(step):
                return steps[:count + 1]
        return steps[:D1_GROUP_STEPS]

    def _one_by_one(self, steps: List[Step], first: Sequence[Entry]) -> Ran:
        done: List[Tuple[Step, Optional[float]]] = []
        for step in steps:
            began = (time.time(), time.perf_counter())
            try:
                done.append((step, self._run_one(step, first)))
            except (MigrationError, _Stop) as exc:
                return Ran(done, [], exc, began)
        return Ran(done, [], None, None)

    def _amend(self, entries: List[Entry]) -> None:
        """Correct the recorded durations, from D1's answer."""
        try:
            if entries and self._stop_signal is None:  # after a stop, nothing more is sent
                self.client.batch(entries, idempotent=True)
        except D1Error:
            pass  # only the recorded durations are lost

    def _run_one(self, step: Step, first: Sequence[Entry] = ()) -> Optional[float]:
        guard = step.guard(self.query)
        entries = (list(first) + guard.before + self._entries(step) + guard.after
                   + step.record(None))
        for attempt in range(self.client.retries + 1):
            self._check_stop("not sent")
            try:
                with _unsent(self, "not sent"):
                    result = self.client.batch(entries)
            except D1Unsure as unsure:
                # It may have run: D1 committed all of it or none, and the
                # record says which.
                self._check_stop("unknown")
                if _settled(step, unsure, [step]):
                    return 0.0
                if attempt == self.client.retries:
                    raise MigrationFailed(step.name, step.path, f"{unsure}; it was not applied",
                                          action=step.action) from None
                self.client.pause(self.client.backoff * 2 ** attempt)
                continue
            except D1Error as exc:
                self._refuse_if_guarded(step, guard, exc)
                if step.settled():
                    return None  # the tracking row's key refused a second copy
                raise self._locate(step, exc) from None
            start = len(first) + len(guard.before)
            duration = _d1_duration(result[start:start + len(step.statements)])
            self._amend(step.amend(duration))
            return duration
        raise AssertionError("unreachable")

    def run_all(self, ensure: List[Entry], plan: Callable[[], List[Step]], commit: bool,
                on_ran: Callable[[Step, float], None]) -> None:
        steps = plan()
        if not steps:
            if commit:
                self.ensure(ensure)
            return
        entries = list(ensure)
        owns = []  # each step's entries, and how many of them come before its own
        for step in steps:
            # The schema as it is now: references that earlier steps of this
            # batch create are not seen (the batch cannot be read midway).
            guard = step.guard(self.query)
            owns.append((guard.before + self._entries(step) + guard.after + step.record(None),
                         guard))
            entries += owns[-1][0]
        self._check_stop("not sent")
        try:
            with _unsent(self, "not sent"):
                if commit:
                    results = self.client.batch(entries)
                else:
                    error = self._rolled_back_on_purpose(entries)
                    if error is not None:
                        raise error
                    results = []
        except D1Unsure as unsure:
            self._check_stop("unknown")
            if commit and _settled(steps[0], unsure, steps, "the run"):
                results = []  # D1 committed the batch; its answer was lost
            else:
                raise D1Error(f"{unsure}; D1 did not apply the run: nothing was applied,"
                              " run apply again") from None
        except D1Error as exc:
            raise self._first_failure(ensure, steps, owns, exc, on_ran) from None
        offset = len(ensure)
        for step, (own, guard) in zip(steps, owns):
            start = offset + len(guard.before)
            on_ran(step, _d1_duration(results[start:start + len(step.statements)]))
            offset += len(own)

    def bookmark(self) -> str:
        """A Time Travel bookmark of the database as it is now (a capability
        of D1 alone, as backup() is of a local file)."""
        self._check_stop(None)
        try:
            with _unsent(self, None):
                return self.client.bookmark()
        except MigrationError as exc:
            raise D1Error(
                f"D1 did not give a Time Travel bookmark ({exc}); no bookmark was taken and"
                f" nothing was changed. Retry, or pass {_opt('no_bookmark')} to go on"
                " without one") from None

    def restore_hint(self, bookmark: str) -> str:
        """How to go back to a bookmark."""
        client = self.client
        name = client.database_name or "<database name>"
        return (f"wrangler d1 time-travel restore {name} --bookmark={bookmark} (or POST"
                f" .../d1/database/{client.database_id}/time_travel/restore?bookmark="
                f"{bookmark}); a restore rewinds the whole database, and what was written"
                " after the bookmark is lost")

    def request_stop(self, signum: int) -> None:
        """Takes note: a request in flight is let finish (its outcome must be
        known), and nothing more is sent."""
        if self._stop_signal is None:
            self._stop_signal = signum

    def close(self) -> None:
        pass  # every request has its own connection, closed when answered

    # -- helpers ----------------------------------------------------------------

    def _check_stop(self, state: Optional[str]) -> None:
        if self._stop_signal is not None:
            raise _Stop(self._stop_signal, state)

    def _refuse_if_guarded(self, step: Step, guard: Guard, error: D1Error) -> None:
        """When the guard failed the batch: the step's failure, with the
        count from before (the batch left nothing to count after it)."""
        ref = guard.failed(str(error))
        if ref is not None:
            kept = None
            if self._stop_signal is None:
                rows = self.query(guard.count_sql(ref))
                kept = rows[0][0] if rows else None
            raise guard.failure(step, ref, kept, None) from None

    @staticmethod
    def _entries(step: Step) -> List[Entry]:
        return [(d1_sql(statement), []) for _, statement in step.statements]

    def _rolled_back_on_purpose(self, entries: List[Entry]) -> Optional[D1Error]:
        """Run entries plus the sentinel: None if all of them succeed (and
        the sentinel rolls them back), else the error of the first that fails."""
        try:
            with _unsent(self, None):
                self.client.batch(entries + [(SQL_SENTINEL, [])], idempotent=True)
        except D1Error as exc:
            return None if D1_SENTINEL_TABLE in str(exc) else exc
        raise MigrationError("D1 committed a batch that was meant to fail; stopping")

    def _locate(self, step: Step, error: D1Error, before: Sequence[Entry] = ()
                ) -> MigrationFailed:
        """D1 names no statement when a batch fails: find it by bisection,
        with batches that are always rolled back (each replaying `before`,
        the entries that ran ahead of this step in the same batch)."""
        before = list(before)
        entries = self._entries(step)
        # No more requests after a stop; and an error that is not SQLite's
        # (a proxy's page, a 413, a 429 to the last retry) is no statement's.
        if self._stop_signal is not None or not _sql_error(error):
            return MigrationFailed(step.name, step.path, str(error), action=step.action)
        try:
            if self._rolled_back_on_purpose(before + entries) is None:
                return MigrationFailed(step.name, step.path,
                                       f"{error} (recording it in {TRACKING_TABLE} failed)",
                                       action=step.action)
            good, bad = 0, len(entries)
            while bad - good > 1:
                middle = (good + bad) // 2
                if self._rolled_back_on_purpose(before + entries[:middle]) is None:
                    good = middle
                else:
                    bad = middle
        except _Stop:  # the search was cut short: what is known
            return MigrationFailed(step.name, step.path, str(error), action=step.action)
        number, statement = step.statements[bad - 1]
        return MigrationFailed(step.name, step.path, str(error), number,
                               statement.line, statement.sql, action=step.action)

    def _first_failure(self, ensure: List[Entry], steps: List[Step],
                       owns: List["tuple[List[Entry], Guard]"], error: D1Error,
                       on_ran: Callable[[Step, float], None]) -> MigrationFailed:
        """Which step of a one-batch run failed: growing prefixes of whole
        steps are tried, and rolled back, until one fails."""
        entries = list(ensure)
        for step, (own, guard) in zip(steps, owns):
            before = entries + guard.before
            entries += own
            failed = self._rolled_back_on_purpose(entries)
            if failed is not None:
                self._refuse_if_guarded(step, guard, failed)
                return self._locate(step, failed, before=before)
            on_ran(step, 0.0)
        last = steps[-1]
        return MigrationFailed(last.name, last.path, str(error), action=last.action)


# ==========================================================================
# 12. Planning: what to run and what it may do.  Pure functions of the files,
#     the record and a schema: the plan, each file's statements ready to
#     run, the rollback to choose, and the guard against losing rows.
# ==========================================================================


class MigrationStatus(namedtuple(
        "MigrationStatus", "version name path state checksum applied_at duration_ms last",
        defaults=(None,))):
    """One migration as status shows it.

    version (str)
    name (str)
    path (Optional[str]): None when the file is gone
    state (str): "applied", "pending", "modified" or "missing"
    checksum (str): the file's, or the recorded one when the file is gone
    applied_at (Optional[str]): None unless applied
    duration_ms (Optional[float])
    last (Optional[HistoryEvent]): the history's latest apply, rollback or
        baseline of it (None: none, or no history)
    """

    __slots__ = ()


_FOREIGN_KEYS_PRAGMA = _pattern(
    rf"(?i)PRAGMA\s+(?:{_SQL_NAME}\s*\.\s*)?[\"`\[]?foreign_keys\b")
_STOP_RESULTS = {"rolled back": INTERRUPTED, "unknown": UNKNOWN, "not sent": NOT_SENT}


def plan_migrations(migrations: List[Migration], applied: Dict[Union[int, str], AppliedRow],
                    target: Optional[str] = None, allow_out_of_order: bool = False,
                    done: str = "nothing was applied", folder: str = "the folder",
                    wrangler: bool = False) -> List[Migration]:
    """The migrations to apply, in order, after the checks that must pass
    before any of them runs: nothing applied was modified, nothing pending is
    numbered below what is applied (not under wrangler's rules, which apply
    such a file as wrangler does), the target exists.  `done` says, in a
    refusal, what the run has applied so far."""
    modified = [m for m in migrations if m.key in applied
                and applied[m.key].checksum not in ("", m.checksum)]
    if modified:
        raise MigrationFileError(
            "Applied migrations were modified since they were applied:"
            f" {', '.join(m.name for m in modified)}. {done[:1].upper() + done[1:]}. Restore"
            " each file as it was applied (git checkout -- <file>) and put the"
            " change in a new migration, or, if the edit was meant (a comment, say),"
            " record it: accept VERSION --reason TEXT. `status` lists them as modified.")
    pending = [m for m in migrations if m.key not in applied]
    if wrangler:
        # As wrangler: its order of what is pending (see wrangler_order).
        pending = wrangler_order(pending)
    if target is not None:
        chosen = find_migration(target, migrations)
        if chosen is None:
            raise ConfigurationError(
                f"{_opt('target')} {target}: no migration in {folder} has that version or name")
        place = {m.key: index for index, m in enumerate(migrations)}
        pending = [m for m in pending if place[m.key] <= place[chosen.key]]
    if pending and applied and not allow_out_of_order and not wrangler:
        highest = max(applied.values(), key=lambda row: _number_of(row.version) or 0)
        early = [m for m in pending if m.key < (_number_of(highest.version) or 0)]
        if early:
            raise MigrationFileError(
                f"Migration {early[0].name} is pending but {highest.name}, which has"
                f" a higher number, is already applied; {done}. Renumber the new"
                f" migration above it, or apply it anyway with {_opt('allow_out_of_order')}.")
    return pending


def prepare_statements(migration: Migration, action: str = "apply",
                       d1_rules: bool = False,
                       warn: Optional[Callable[[str], None]] = None,
                       replay: bool = False) -> List[Tuple[int, Statement]]:
    """A file's statements, numbered, ready to run: split, with transaction
    control inside refused (and, for D1, what D1 would reject; what it
    treats differently goes to `warn`).  A file wrapped whole in BEGIN ...
    COMMIT keeps its meaning: the two are dropped and the rest runs in the
    tool's own transaction.  For a replay in memory (replay=True), settings
    of the run (RUN_PRAGMAS) are let through: they matter only to a run on
    a file, and an applied migration that has one must still replay."""
    statements = migration.statements(action)
    numbered = list(enumerate(statements, 1))
    wrapped = _wrapper(statements)
    if wrapped is not None:
        # What follows the COMMIT (PRAGMA foreign_keys) then runs inside the
        # tool's transaction, where SQLite ignores it; the tool restores the
        # connection's setting after the file itself.
        begin, end = wrapped
        numbered = numbered[:begin] + numbered[begin + 1:end] + numbered[end + 1:]
    for number, statement in numbered:
        if not replay and _sets_pragma(statement, RUN_PRAGMAS):
            why = (f"PRAGMA {_pragma_name(statement)} is not allowed inside a migration: it"
                   " sets how the database file is written or locked for the rest of the run,"
                   " which the tool's transactions rely on; set it on the database outside"
                   " the migrations")
        elif statement.keyword in TRANSACTION_KEYWORDS:
            why = (f"{statement.keyword} is not allowed inside a migration: each file already"
                   " runs in its own transaction (a BEGIN ... COMMIT around the whole file is"
                   " accepted)")
        else:
            continue
        raise MigrationFailed(migration.name, migration.path, why, number, statement.line,
                              statement.sql, action=action)
    if d1_rules:
        rules = [rule for rule in D1_RULES if rule.blocks_remote or rule.severity == "warning"]
        for finding in check_statements(migration.path, [s for _, s in numbered], rules):
            if finding.severity == "warning":
                if warn is not None:
                    warn(f"{finding.path}:{finding.line}: {finding.message} [{finding.code}]")
                continue
            number = next(n for n, s in numbered if s.line == finding.line)
            raise MigrationFailed(
                migration.name, migration.path,
                f"D1 would reject it: {finding.message}",
                number, finding.line, action=action)
    return numbered


def _pragma_name(statement: Statement) -> Optional[str]:
    """The lower-cased name of a PRAGMA statement's setting; else None."""
    if statement.keyword != "PRAGMA":
        return None
    found = _PRAGMA_NAME.match(_without_comments(statement.sql).lstrip())
    return found.group(1).lower() if found else None


def _sets_pragma(statement: Statement, names: "frozenset[str]") -> bool:
    """Whether a statement sets (not reads) one of the PRAGMAs `names`."""
    return (_pragma_name(statement) in names
            and _SETS_PRAGMA.search(_without_comments(statement.sql)) is not None)


def _sets_deferral(step: Step) -> bool:
    """Whether a step sets PRAGMA defer_foreign_keys, which lasts until the
    COMMIT: no later step may share its transaction (a group commit's, a D1
    batch's), or it would run with its checks deferred too.  (Setting it
    off again is no cure: SQLite then forgets what was deferred.)"""
    return any(_sets_pragma(statement, _DEFERRAL) for _, statement in step.statements)


def _leading_foreign_keys(statements: List[Tuple[int, Statement]]) -> int:
    """How many statements at the start of a file are PRAGMA foreign_keys."""
    count = 0
    while count < len(statements) and _is_foreign_keys_pragma(statements[count][1]):
        count += 1
    return count


def status_of(migrations: List[Migration], applied: Dict[Union[int, str], AppliedRow],
              wrangler: bool = False, latest: Optional[Dict[Union[int, str], HistoryEvent]] = None
              ) -> List[MigrationStatus]:
    """Each migration's state, files and records merged: in number order, or
    under wrangler's rules the files in wrangler's order, then records whose
    file is gone.  `latest`: each migration's latest event in the history."""
    applied = dict(applied)
    latest = latest or {}
    result = []
    for m in migrations:
        row = applied.pop(m.key, None)
        if row is None:
            result.append(MigrationStatus(m.version, m.name, m.path, "pending",
                                          m.checksum, None, None, latest.get(m.key)))
        else:
            state = "applied" if row.checksum in ("", m.checksum) else "modified"
            result.append(MigrationStatus(m.version, m.name, m.path, state, m.checksum,
                                          row.applied_at, row.duration_ms, latest.get(m.key)))
    for key, row in applied.items():
        result.append(MigrationStatus(row.version, row.name, None, "missing", row.checksum,
                                      row.applied_at, row.duration_ms, latest.get(key)))

    def order(s: MigrationStatus) -> tuple:
        return row_order(AppliedRow(s.version, s.name, "", "", 0.0), wrangler)

    if wrangler:
        return result[:len(migrations)] + sorted(result[len(migrations):], key=order)
    return sorted(result, key=order)


def row_order(row: AppliedRow, wrangler: bool = False) -> tuple:
    """Where an applied migration stands among the others (the latest
    last): by number, or under wrangler's rules by wrangler's number and
    name; a name without a number comes last."""
    if wrangler:
        number = wrangler_number(row.name + ".sql")
        return (float("inf") if number is None else number, _utf16(row.name))
    number = _number_of(row.version)
    return (float("inf") if number is None else number, row.name.encode("utf-8"))


def choose_rollback(applied: Dict[Union[int, str], AppliedRow], version: Optional[str],
                    force: bool, wrangler: bool = False) -> AppliedRow:
    """The applied migration `version` names (default: the latest), once no
    later one stands in the way."""
    rows = sorted(applied.values(), key=lambda r: row_order(r, wrangler))
    if version is None:
        if not rows:
            raise MigrationError("Nothing to roll back: no migrations have been applied")
        row = rows[-1]
    else:
        row = find_migration(version, rows)
        if row is None:
            raise MigrationError(f"Migration {version} not found in applied migrations")
    later = [r.name for r in rows if row_order(r, wrangler) > row_order(row, wrangler)]
    if later and not force:
        raise MigrationError(
            f"Cannot roll back {row.name}: later migrations are still applied"
            f" ({', '.join(later)}). Roll those back first, or pass {_opt('force')}"
            " to roll back only this one.")
    return row


# -- rows a migration must not lose ------------------------------------------
# D1 always enforces foreign keys, so a DROP TABLE (a table rebuild's among
# them) or a DELETE of a table that others reference runs their ON DELETE
# actions: CASCADE deletes their rows, SET NULL and SET DEFAULT empty their
# references.  A migration does that to tables it does not name without a
# word (cloudflare/workers-sdk#5438).  What it drops and deletes from is read
# from its statements; who references those tables, from the schema just
# before it runs; and the guard counts those rows before and after it, in
# the same transaction (the same batch on D1), failing it with the table and
# the counts when they drop.  Plain references need no guard: their rows
# make the DROP itself fail.


def choose_baseline(migrations: List[Migration], applied: Dict[Union[int, str], AppliedRow],
                    version: Optional[str], folder: str
                    ) -> "tuple[List[Migration], List[Migration]]":
    """For baseline: the migrations up to `version` (default: all), and
    those of them to record (the pending ones)."""
    if version is None:
        if not migrations:
            raise MigrationError(f"No migrations in {folder}; nothing to baseline")
        chosen = migrations[-1]
    else:
        found = find_migration(version, migrations)
        if found is None:
            raise MigrationError(f"Migration {version} not found in {folder}; nothing was"
                                 " recorded")
        chosen = found
        if chosen.key in applied:
            raise MigrationError(f"Migration {chosen.name} is already applied; nothing was"
                                 " recorded. baseline records migrations that are pending")
    upto = migrations[:migrations.index(chosen) + 1]
    todo = [m for m in upto if m.key not in applied]
    if not todo:
        raise MigrationError(f"Every migration up to {chosen.name} is already applied;"
                             " nothing to baseline")
    return upto, todo


def choose_accept(migrations: List[Migration], applied: Dict[Union[int, str], AppliedRow],
                  version: str, folder: str) -> "tuple[Migration, AppliedRow]":
    """For accept: the applied migration `version` names whose file changed,
    and its tracking row."""
    migration = find_migration(version, migrations)
    if migration is None:
        row = find_migration(version, list(applied.values()))
        if row is not None:
            raise MigrationError(
                f"The file of {row.name} is gone from {folder}: accept records the checksum"
                " of an edited file, so there is nothing to accept. Restore the file, or"
                " roll the migration back.")
        raise MigrationError(f"Migration {version} not found in {folder}; nothing was accepted")
    row = applied.get(migration.key)
    if row is None:
        raise MigrationError(f"Migration {migration.name} is not applied; nothing to accept"
                             " (apply runs the file as it is now)")
    if not row.checksum:
        raise MigrationError(f"Migration {migration.name} was recorded by wrangler alone,"
                             " with no checksum; nothing to accept")
    if row.checksum == migration.checksum:
        raise MigrationError(f"Migration {migration.name} is not modified: its file has the"
                             " recorded checksum; nothing to accept")
    return migration, row


class Changes(namedtuple("Changes", "drops deletes names")):
    """What a migration's statements do to tables, by lower-cased name.

    drops (frozenset): the tables it drops (DROP TABLE; a rebuild drops one)
    deletes (frozenset): the tables it deletes rows from (DELETE FROM)
    names (frozenset): every table it names as what it creates, drops,
        alters or writes: its own business, never guarded
    """

    __slots__ = ()


class Reference(namedtuple("Reference", "child column parent action")):
    """A foreign key of `child` (its `column`) to `parent`, with its ON
    DELETE action ("CASCADE", "SET NULL", "SET DEFAULT", ...), as
    pragma_foreign_key_list reports it."""

    __slots__ = ()

    def describe(self) -> str:
        if self.action == "CASCADE":
            return f"{self.child} (ON DELETE CASCADE from {self.parent})"
        return f"{self.child}.{self.column} (ON DELETE {self.action} to {self.parent})"

    def counted(self) -> Dict[str, str]:
        """What the guard counts: the child's rows (CASCADE deletes them) or
        its references (SET NULL and SET DEFAULT empty them), quoted."""
        return {"counted": "*" if self.action == "CASCADE" else quote_identifier(self.column),
                "table": quote_identifier(self.child)}


_TABLE_NAME = rf"(?:{_SQL_NAME}\s*\.\s*)?({_SQL_NAME})"
_DROPS = _pattern(rf"(?i)\bDROP\s+TABLE\s+(?:IF\s+EXISTS\s+)?{_TABLE_NAME}")
_DELETES = _pattern(rf"(?i)\bDELETE\s+FROM\s+{_TABLE_NAME}")
_NAMES = _pattern(
    r"(?i)\b(?:CREATE\s+(?:TEMP(?:ORARY)?\s+)?TABLE\s+(?:IF\s+NOT\s+EXISTS\s+)?"
    r"|DROP\s+TABLE\s+(?:IF\s+EXISTS\s+)?|ALTER\s+TABLE\s+|RENAME\s+TO\s+"
    r"|INSERT\s+(?:OR\s+\w+\s+)?INTO\s+|REPLACE\s+INTO\s+|UPDATE\s+(?:OR\s+\w+\s+)?"
    rf"|DELETE\s+FROM\s+){_TABLE_NAME}")
_STRING = _pattern(r"'[^']*(?:''[^']*)*'")
SQL_REFERENCES = (
    'SELECT m.name, f."from", f."table", upper(f.on_delete)'
    " FROM sqlite_master AS m JOIN pragma_foreign_key_list(m.name) AS f"
    " WHERE m.type = 'table' AND m.name NOT LIKE 'sqlite!_%' ESCAPE '!'"
    " AND m.name NOT LIKE '!_cf!_%' ESCAPE '!'")
# The guard: a table of counts, one row per guarded reference, and one CHECK
# constraint per row that refuses a smaller count after the migration.  (A
# trigger's RAISE could say more, but before SQLite 3.47 it takes only a
# literal.)  The numbers in the constraints are the guard's own row numbers.
GUARD_TABLE = "apply_migrations_guard"
GUARD_MARK = "apply_migrations: rows lost "
SQL_GUARD_CREATE = (f"CREATE TABLE {quote_identifier(GUARD_TABLE)}"
                    " (ref INTEGER PRIMARY KEY, kept INTEGER NOT NULL, now INTEGER{checks})")
SQL_GUARD_CHECK = ", CONSTRAINT {name} CHECK (ref <> {ref} OR now IS NULL OR now >= kept)"
SQL_GUARD_COUNT = (f"INSERT INTO {quote_identifier(GUARD_TABLE)} (ref, kept)"
                   " SELECT ?, count({counted}) FROM {table}")
SQL_GUARD_RECOUNT = (f"UPDATE {quote_identifier(GUARD_TABLE)}"
                     " SET now = (SELECT count({counted}) FROM {table}) WHERE ref = ?")
SQL_GUARD_KEPT = f"SELECT kept FROM {quote_identifier(GUARD_TABLE)} WHERE ref = ?"
SQL_COUNT = "SELECT count({counted}) FROM {table}"
SQL_GUARD_DROP = f"DROP TABLE {quote_identifier(GUARD_TABLE)}"
_GUARDED_ACTIONS = frozenset(("CASCADE", "SET NULL", "SET DEFAULT"))
_GUARD_FAILED = _pattern(re.escape(GUARD_MARK) + r"(\d+)")


class Guard(namedtuple("Guard", "before after references")):
    """The statements to run before and after a step, in its transaction,
    and the references they count (the n-th is row n of the guard table).

    before, after (List[Entry])
    references (List[Reference])
    """

    __slots__ = ()

    def failed(self, message: str) -> Optional[int]:
        """Which reference (from 1) an error message says lost rows; None
        when it is not the guard's."""
        match = _GUARD_FAILED.search(message)
        return int(match.group(1)) if match and self.references else None

    def count_sql(self, ref: int) -> str:
        return SQL_COUNT.format(**self.references[ref - 1].counted())

    def failure(self, step: "Step", ref: int, kept: Optional[int],
                now: Optional[int]) -> MigrationFailed:
        """What to report when the guard stopped a step: the table, and the
        counts as far as they are known (a remote batch that failed leaves
        nothing to count afterwards)."""
        reference = self.references[ref - 1]
        unit = "rows" if reference.action == "CASCADE" else "references"
        counts = ("" if kept is None else f", {_plural(kept, unit[:-1])} before"
                  + ("" if now is None else f" and {now} after"))
        return MigrationFailed(
            step.name, step.path,
            f"it would take {unit} from a table it does not name, through a foreign key's"
            f" ON DELETE action (D1 always enforces them): {reference.describe()}{counts};"
            f" it was rolled back. Keep those {unit} in the migration (copy them aside and"
            " back, or rebuild that table too), or pass"
            f" {_opt('allow_row_loss')} if the loss is intended", action=step.action)


NO_GUARD = Guard([], [], [])


def _unquote(name: str) -> str:
    if name[:1] in ('"', "`") and name[-1:] == name[:1]:
        return name[1:-1].replace(name[0] * 2, name[0])
    if name[:1] == "[" and name[-1:] == "]":
        return name[1:-1]
    return name


# What a statement drops, deletes from or names stands in its first words
# (ALTER TABLE main.x RENAME TO y is ten), except after a WITH clause; so a
# 1 MB INSERT costs a few tokens here, not a pass of three patterns.
_HEAD_WORDS = 12


def _head_of(statement: Statement) -> str:
    """The words the patterns of changes_of read: the statement's first
    words (string literals emptied, comments left out), or all of it for a
    WITH clause or a statement that starts with no word."""
    if statement.keyword in ("WITH", ""):
        return _STRING.sub("''", _without_comments(statement.sql))
    if _TRIGGER_HEAD.match(statement.sql):
        return ""  # its body runs later, not when the migration creates it
    sql, pos, count, pieces = statement.sql, 0, 0, []
    while count < _HEAD_WORDS:
        token = _HEAD_TOKEN.match(sql, pos)
        if token is None:
            break
        pos, text = token.end(), token.group()
        if text[0] in " \t\n\f\r" or text[:2] in ("--", "/*"):
            pieces.append(" ")
            continue
        count += 1
        # Tokens are kept adjacent as written, so that "a""b" stays one name.
        pieces.append("''" if text[0] == "'" and len(text) > 1 else text)
    return "".join(pieces)


# Only these can drop a table or delete rows (and WITH ... DELETE).
_MAY_TAKE_ROWS = frozenset(("DROP", "DELETE", ""))
NO_CHANGES = Changes(frozenset(), frozenset(), frozenset())


def _may_take_rows(statement: Statement) -> bool:
    return statement.keyword in _MAY_TAKE_ROWS or (
        statement.keyword == "WITH" and _DELETES.search(statement.sql) is not None)


def changes_of(statements: Sequence[Statement]) -> Changes:
    """What the statements drop, delete from and name (read from their
    first words, comments and string literals left out).  Statements that
    can neither drop nor delete make NO_CHANGES: what they name matters
    only beside a drop or a delete, and most migrations have none."""
    if not any(_may_take_rows(statement) for statement in statements):
        return NO_CHANGES
    drops, deletes, names = set(), set(), set()
    for statement in statements:
        words = _head_of(statement)
        for pattern, found in ((_DROPS, drops), (_DELETES, deletes), (_NAMES, names)):
            for match in pattern.finditer(words):
                found.add(_unquote(match.group(1)).lower())
    return Changes(frozenset(drops), frozenset(deletes), frozenset(names))


def references_to(query: Callable[[str, tuple], List[tuple]],
                  tables: frozenset) -> List[Reference]:
    """The foreign keys, in the schema `query` reads, that point at `tables`."""
    return [Reference(str(child), str(column), str(parent), str(action or "NO ACTION"))
            for child, column, parent, action in query(SQL_REFERENCES, ())
            if str(parent).lower() in tables]


def guard_of(references: Sequence[Reference]) -> Guard:
    """The guard over `references`: counts before a migration of the rows
    (or references) their ON DELETE actions could take, and a refusal when
    fewer are left after it."""
    if not references:
        return NO_GUARD
    checks = "".join(SQL_GUARD_CHECK.format(name=quote_identifier(f"{GUARD_MARK}{ref}"),
                                            ref=ref)
                     for ref in range(1, len(references) + 1))
    before: List[Entry] = [(SQL_GUARD_CREATE.format(checks=checks), [])]
    after: List[Entry] = []
    for ref, reference in enumerate(references, 1):
        before.append((SQL_GUARD_COUNT.format(**reference.counted()), [ref]))
        after.append((SQL_GUARD_RECOUNT.format(**reference.counted()), [ref]))
    after.append((SQL_GUARD_DROP, []))
    return Guard(before, after, list(references))


def guard_for(changes: Changes) -> Callable[[Callable[[str, tuple], List[tuple]]], Guard]:
    """A Step's guard: given a read of the schema just before the step, the
    Guard over the references (with an ON DELETE action) to what it drops or
    deletes from, from tables it does not name."""
    touched = changes.drops | changes.deletes

    def guard(query: Callable[[str, tuple], List[tuple]]) -> Guard:
        if not touched:
            return NO_GUARD
        seen: set = set()
        references = []
        for ref in references_to(query, touched):
            if (ref.action in _GUARDED_ACTIONS and ref.child.lower() not in changes.names
                    and (ref.child, ref.column) not in seen):
                seen.add((ref.child, ref.column))
                references.append(ref)
        return guard_of(references)

    return guard


def no_guard(query: Callable[[str, tuple], List[tuple]]) -> Guard:
    return NO_GUARD


_DEFER_ON = _pattern(
    rf"(?i)PRAGMA\s+(?:{_SQL_NAME}\s*\.\s*)?[\"`\[]?defer_foreign_keys[\"`\]]?\s*"
    r"(?:=\s*|\(\s*)(['\"]?)(?:1|on|true|yes)\1\s*\)?\s*;?\s*\Z")


def drop_findings(migrations: Sequence[Migration]) -> List[Finding]:
    """For `check`: each DROP TABLE of a table that other tables reference,
    as D1 would run it, with what D1 does to their rows.  The schema at each
    drop is the one the earlier statements make, replayed into an empty
    in-memory database (no rows needed).  Quiet where the migration keeps
    those rows itself (it names the referencing table) or where every
    reference left is a plain one and PRAGMA defer_foreign_keys = ON comes
    before the drop.  When a statement cannot be replayed, the drops after
    it are not judged, and one warning says so (if there are any)."""
    findings: List[Finding] = []
    broken: Optional[Finding] = None  # the statement the replay stopped at
    replay = sqlite3.connect(":memory:", isolation_level=None)
    try:
        for migration in migrations:
            try:
                statements = [s for _, s in prepare_statements(migration, replay=True)]
            except (MigrationFailed, MigrationFileError):
                return findings  # reported as the file's own finding; no schema after it
            names = changes_of(statements).names
            deferred = False
            for statement in statements:
                drops = changes_of([statement]).drops
                if broken is not None:
                    if drops:
                        findings.append(broken)
                        return findings
                    continue
                deferred = deferred or bool(_DEFER_ON.match(_without_comments(statement.sql)))
                for dropped in drops:
                    refs = [r for r in references_to(
                                lambda q, p: replay.execute(q, p).fetchall(),
                                frozenset((dropped,)))
                            if r.child.lower() not in names and r.child.lower() != dropped
                            and not (deferred and r.action not in _GUARDED_ACTIONS)]
                    if refs:
                        findings.append(Finding("error", migration.path, statement.line,
                                                "drop-referenced-table",
                                                _drop_message(dropped, refs)))
                try:
                    for _ in replay.execute(statement.sql):
                        pass
                except sqlite3.Error as exc:
                    broken = Finding(
                        "warning", migration.path, statement.line, "replay-failed",
                        f"this statement cannot be replayed on an empty database ({exc}), so"
                        " the drops of tables after it are not checked for rows that D1 would"
                        " take from the tables that reference them")
    finally:
        replay.close()
    return findings


def _drop_message(table: str, refs: List[Reference]) -> str:
    effects = []
    for r in refs:
        if r.action == "CASCADE":
            effects.append(f"deletes every row of {r.child} (ON DELETE CASCADE)")
        elif r.action in ("SET NULL", "SET DEFAULT"):
            effects.append(f"sets {r.child}.{r.column} to"
                           f" {'NULL' if r.action == 'SET NULL' else 'its default'}"
                           f" (ON DELETE {r.action})")
        else:
            effects.append(f"fails when {r.child} has rows (a plain reference)")
    plain_only = all(r.action not in _GUARDED_ACTIONS for r in refs)
    advice = ("put PRAGMA defer_foreign_keys = ON before the drop: the check then waits for"
              " the commit, when the rebuilt table is back" if plain_only else
              "PRAGMA defer_foreign_keys = ON does not stop ON DELETE actions; keep those rows"
              " in the migration (copy them aside and back) or rebuild those tables too")
    return (f"DROP TABLE {table}: other tables reference it, and on D1, which always enforces"
            f" foreign keys, the drop {', '.join(effects)}; {advice}")


# ==========================================================================
# 13. Schemas: what the migrations make.  A schema is read from a database,
#     or replayed from the migration files into an empty in-memory database
#     (which SQLite makes nearly free), then compared, fingerprinted, and
#     written as SQL, JSON, markdown or a Mermaid diagram.
# ==========================================================================

SQL_SCHEMA_OBJECTS = (
    "SELECT type, name, tbl_name, sql FROM sqlite_master WHERE sql IS NOT NULL"
    " AND name NOT LIKE 'sqlite!_%' ESCAPE '!' AND name NOT LIKE '!_cf!_%' ESCAPE '!'")
SQL_SCHEMA_COLUMNS = (  # distinct names: D1 gives a row's values by column name
    'SELECT m.name AS tbl, c.name AS col, c.type, c."notnull", c.dflt_value, c.pk'
    " FROM sqlite_master AS m JOIN pragma_table_info(m.name) AS c"
    " WHERE m.type = 'table' AND m.name NOT LIKE 'sqlite!_%' ESCAPE '!'"
    " AND m.name NOT LIKE '!_cf!_%' ESCAPE '!' ORDER BY m.name, c.cid")
# The order objects are written in: tables, each followed by its indexes and
# triggers, then views, each followed by its triggers.
_KIND_ORDER = {"table": 0, "index": 1, "trigger": 2, "view": 0}
# A virtual table keeps its data in "shadow" tables that its CREATE VIRTUAL
# TABLE makes and its DROP drops: parts of it, not objects of the schema
# (written out, they would be made twice).  By module, the suffixes of
# SQLite's own modules (their xShadowName); D1 allows no others.
_SHADOW_SUFFIXES = {
    "fts3": ("content", "segments", "segdir", "docsize", "stat"),
    "fts4": ("content", "segments", "segdir", "docsize", "stat"),
    "fts5": ("data", "idx", "content", "docsize", "config"),
    "rtree": ("node", "parent", "rowid"),
    "rtree_i32": ("node", "parent", "rowid"),
    "geopoly": ("node", "parent", "rowid"),
}
_VIRTUAL_TABLE = _pattern(
    rf"(?is)\s*CREATE\s+VIRTUAL\s+TABLE\s+(?:IF\s+NOT\s+EXISTS\s+)?(?:{_SQL_NAME}\s*\.\s*)?"
    rf"{_SQL_NAME}\s+USING\s+(\w+)\s*(\(.*)?")
# How SQLite's modules write their shadow tables' CREATE: the name quoted,
# the column list right after it.
_MODULE_TABLE = _pattern(r"""CREATE TABLE (?:"[^"]*"\.)?(['"])([^'"]*)\1\s*\(""")
# An FTS table over another table's rows (content='notes'): its rows are that
# table's, and an empty index is made whole again with its 'rebuild' command.
_EXTERNAL_CONTENT = _pattern(
    r"""(?i)[(,]\s*content\s*=\s*(?:'([^']+)'|"([^"]+)"|([A-Za-z_]\w*))\s*[,)]""")


class SchemaObject(namedtuple("SchemaObject", "type name table sql")):
    """One object of a schema, as sqlite_master holds it.

    type (str): "table", "index", "view" or "trigger"
    name, table (str): its name, and the table (or view) it belongs to
    sql (str): its CREATE statement, as written
    """

    __slots__ = ()

    @property
    def key(self) -> "tuple[str, str]":
        return (self.type, self.name.lower())

    def _virtual(self):
        return self.type == "table" and _VIRTUAL_TABLE.match(_without_comments(self.sql))

    @property
    def module(self) -> Optional[str]:
        """A virtual table's module (fts5, rtree, ...), lower-cased; else None."""
        found = self._virtual()
        return found.group(1).lower() if found else None

    @property
    def rebuilt_from_content(self) -> bool:
        """An FTS table whose rows are another table's (content='t'): made
        again empty, its 'rebuild' command restores it, and nothing is lost."""
        found = self._virtual()
        return bool(found and found.group(1).lower() in ("fts4", "fts5") and found.group(2)
                    and _EXTERNAL_CONTENT.search(found.group(2)))


def _shadow_tables(objects: Sequence[SchemaObject]) -> Set[str]:
    """The lower-cased names of the virtual tables' shadow tables: a table
    named for one, as its module writes it (`CREATE TABLE 'docs_data'(`).
    A table of the user's that merely has such a name (an FTS table's
    external content, `docs_content`) is the user's."""
    names = {f"{o.name}_{suffix}".lower() for o in objects
             for suffix in _SHADOW_SUFFIXES.get(o.module or "", ())}
    shadows = set()
    for o in objects:
        made = o.type == "table" and o.name.lower() in names and _MODULE_TABLE.match(o.sql)
        if made and made.group(2).lower() == o.name.lower():
            shadows.add(o.name.lower())
    return shadows


class Column(namedtuple("Column", "name type notnull default pk")):
    """A column of a table: name, declared type (str, "" for none),
    notnull (bool), default (its SQL text or None), pk (its place in the
    primary key, 0 when not in it)."""

    __slots__ = ()


class Schema:
    """The objects of a database (bookkeeping tables, SQLite's and D1's own
    left out), in a stable order, with each table's columns and foreign keys."""

    def __init__(self, objects: List[SchemaObject], columns: Dict[str, List[Column]],
                 references: List[Reference]):
        parents = {o.name.lower(): o for o in objects if o.type in ("table", "view")}

        def order(o: SchemaObject) -> tuple:
            owner = parents.get(o.table.lower(), o)
            return (owner.type == "view", owner.name.lower(), _KIND_ORDER[o.type], o.name.lower())

        self.objects = sorted(objects, key=order)
        self.columns = columns  # by lower-cased table name
        self.references = references

    def tables(self) -> List[SchemaObject]:
        return [o for o in self.objects if o.type == "table"]

    def normalized(self) -> Dict["tuple[str, str]", str]:
        """Each object's definition with what SQLite keeps of comments and
        spacing taken out: what a comparison compares."""
        return {o.key: normalized_sql(o.sql) for o in self.objects}

    def fingerprint(self) -> str:
        text = "\n".join(f"{kind}\t{name}\t{sql}"
                         for (kind, name), sql in sorted(self.normalized().items()))
        return hashlib.sha256(text.encode("utf-8")).hexdigest()

    def differences(self, expected: "Schema") -> List["tuple[str, SchemaObject]"]:
        """How this schema differs from `expected`: ("missing", object of
        expected), ("not created by any migration", object of this one),
        ("changed", object of this one)."""
        mine, theirs = self.normalized(), expected.normalized()
        found = []
        for o in expected.objects:
            if o.key not in mine:
                found.append(("missing", o))
        for o in self.objects:
            if o.key not in theirs:
                found.append(("not created by any migration", o))
            elif theirs[o.key] != mine[o.key]:
                found.append(("changed", o))
        return found


def fingerprint_of(query: Callable[[str, tuple], List[tuple]], ignore: Sequence[str]) -> str:
    """A digest of the schema as the database holds it (its CREATE texts as
    stored, in a fixed order): one query, no parsing.  Equal only to a
    fingerprint taken of the same schema by this same function."""
    ignored = {name.lower() for name in ignore} | {GUARD_TABLE.lower()}
    rows = sorted((str(t), str(n), str(tbl), str(sql)) for t, n, tbl, sql
                  in query(SQL_SCHEMA_OBJECTS, ())
                  if str(n).lower() not in ignored and str(tbl).lower() not in ignored)
    text = "\n".join("\t".join(row) for row in rows)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


EMPTY_FINGERPRINT = hashlib.sha256(b"").hexdigest()


class Drift(namedtuple("Drift", "checked differences unknown")):
    """How a database's schema compares with what its applied migrations
    make.

    checked (bool): whether it could be compared
    differences (List[Tuple[str, SchemaObject]]): as Schema.differences
    unknown (Optional[str]): why it could not be compared
    """

    __slots__ = ()


def schema_known(query: Callable[[str, tuple], List[tuple]], book: Bookkeeping,
                 record: Record, ignore: Sequence[str]) -> bool:
    """Whether the schema is, by the tool's own note, what the applied
    migrations make (a fresh database is: none, and nothing)."""
    fingerprint = fingerprint_of(query, ignore)
    if not record.applied and fingerprint == EMPTY_FINGERPRINT:
        return True
    return book.read_state(query) == (book.digest(record), fingerprint)


def note_schema(query: Callable[[str, tuple], List[tuple]], book: Bookkeeping,
                record: Record, ignore: Sequence[str]) -> List[Entry]:
    """The entries that note the schema as it is now as the one the applied
    migrations make: to be written only after a run that began on a known
    schema, so that nothing but migrations changed it."""
    return book.state(book.digest(record), fingerprint_of(query, ignore))


def drift_of(query: Callable[[str, tuple], List[tuple]], book: Bookkeeping, record: Record,
             migrations: Sequence[Migration], ignore: Sequence[str]) -> Drift:
    """How the schema `query` reads compares with what the applied
    migrations make: at once when the tool's note says so, else by replaying
    them in memory and comparing.  Unknown (and no guess) when a file is
    gone or will not replay."""
    if schema_known(query, book, record, ignore):
        return Drift(True, [], None)
    applied = [m for m in migrations if m.key in record.applied]
    present = {m.key for m in applied}
    missing = [row.name for key, row in record.applied.items() if key not in present]
    if missing:
        return Drift(False, [], f"the file of {missing[0]} is gone, so the schema its"
                                " applied migrations make cannot be replayed")
    try:
        expected = replay_schema(applied)
    except MigrationFailed as exc:
        return Drift(False, [], str(exc))
    return Drift(True, read_schema(query, ignore).differences(expected), None)


_QUOTED_WORD = _pattern(r"'[^']*(?:''[^']*)*'|[\"`\[]([A-Za-z_][A-Za-z0-9_]*)[\"`\]]")


def normalized_sql(sql: str) -> str:
    """A definition as compared: comments, spacing and the quotes around
    plain names (which SQLite adds when it renames) taken out."""
    text = re.sub(r"\s+", " ", _without_comments(sql)).strip()
    text = _QUOTED_WORD.sub(lambda m: m.group(1) or m.group(0), text)
    return re.sub(r" ?([(),]) ?", r"\1", text)


def read_schema(query: Callable[[str, tuple], List[tuple]],
                ignore: Sequence[str] = ()) -> Schema:
    """The schema `query` reads, without the tables named in `ignore` (and
    their indexes and triggers): three queries, whatever its size."""
    ignored = {name.lower() for name in ignore} | {GUARD_TABLE.lower()}
    objects = [SchemaObject(str(t), str(n), str(tbl), str(sql))
               for t, n, tbl, sql in query(SQL_SCHEMA_OBJECTS, ())
               if str(n).lower() not in ignored and str(tbl).lower() not in ignored
               and t in _KIND_ORDER]
    ignored |= _shadow_tables(objects)
    objects = [o for o in objects if o.table.lower() not in ignored]
    columns: Dict[str, List[Column]] = {}
    for table, name, kind, notnull, default, pk in query(SQL_SCHEMA_COLUMNS, ()):
        if str(table).lower() not in ignored:
            columns.setdefault(str(table).lower(), []).append(
                Column(str(name), str(kind or ""), bool(notnull), default, int(pk or 0)))
    references = [Reference(str(c), str(col), str(p), str(a or "NO ACTION"))
                  for c, col, p, a in query(SQL_REFERENCES, ())
                  if str(c).lower() not in ignored]
    return Schema(objects, columns, references)


class _Replay:
    """An empty in-memory database that migrations are replayed into, with
    the same splitting and rules as a real run, to learn the schema they
    make.  A statement that cannot run there (a function that D1's newer
    SQLite has, data that only a real database holds) stops it: say which,
    and guess nothing."""

    def __init__(self) -> None:
        self.conn = sqlite3.connect(":memory:", isolation_level=None)

    def query(self, sql: str, params: tuple = ()) -> List[tuple]:
        return self.conn.execute(sql, params).fetchall()

    def run(self, migration: Migration, action: str = "apply") -> None:
        """One migration (or down script) in a savepoint: all or nothing, and
        inside a caller's savepoint too."""
        self.conn.execute("SAVEPOINT replay")
        try:
            for number, statement in prepare_statements(migration, action, replay=True):
                try:
                    for _ in self.conn.execute(statement.sql):
                        pass
                except (sqlite3.Error, ValueError) as exc:
                    raise MigrationFailed(migration.name, migration.path, str(exc), number,
                                          statement.line, statement.sql,
                                          action=action) from None
            self.conn.execute("RELEASE replay")
        except BaseException:
            if self.conn.in_transaction:
                self.conn.execute("ROLLBACK TO replay")
                self.conn.execute("RELEASE replay")
            raise

    def schema(self) -> Schema:
        return read_schema(self.query)

    def close(self) -> None:
        self.conn.close()


def replay_schema(migrations: Sequence[Migration]) -> Schema:
    """The schema the migrations make, in their order, from nothing."""
    replay = _Replay()
    try:
        for migration in migrations:
            try:
                replay.run(migration)
            except MigrationFailed as exc:
                raise exc.with_note(
                    "it was replayed on an empty in-memory database to learn the schema the"
                    " migrations make, and nothing is said of that schema") from None
        return replay.schema()
    finally:
        replay.close()


def baseline_matches(query: Callable[[str, tuple], List[tuple]], upto: List[Migration],
                     ignore: Sequence[str], where: str, force: bool) -> bool:
    """For baseline: whether the database's schema is the one `upto` makes.
    Raises (unless force) when it is not, or when that cannot be told."""
    last = upto[-1].name
    try:
        expected = replay_schema(upto)
    except MigrationFailed as exc:
        if force:
            return False
        raise MigrationError(
            f"Cannot tell whether {where} has the effect of the migrations up to {last}:"
            f" replaying them in memory failed ({exc}). Nothing was recorded; pass"
            f" {_opt('force')} to record them anyway.") from None
    differences = read_schema(query, ignore).differences(expected)
    if differences and not force:
        words = {"not created by any migration": "not made by these migrations"}
        shown = [f"{o.type} {o.name}: {words.get(kind, kind)}" for kind, o in differences]
        more = f"; and {len(shown) - 5} more" if len(shown) > 5 else ""
        raise MigrationError(
            f"The schema of {where} is not the one the migrations up to {last} make"
            f" ({'; '.join(shown[:5])}{more}); nothing was recorded. Bring the database in"
            f" line, baseline an earlier version, or pass {_opt('force')} to record them"
            " anyway.")
    return not differences


def down_findings(migrations: Sequence[Migration], folder: str) -> List[Finding]:
    """For `check`: each down script (migrations/down/<name>.sql), replayed
    in memory as up, down, up: a down script that fails, one that does not
    bring the schema back to what it was before its migration, and a
    migration that fails after its down script; each on the schema the
    migrations make, so that one incomplete script hides none after it.
    Stops quietly where a migration cannot be replayed (drop_findings says
    so)."""
    findings: List[Finding] = []
    replay = _Replay()
    try:
        for migration in migrations:
            path = os.path.join(folder, DOWN_DIR, migration.name + ".sql")
            down = Migration(migration.version, migration.name, path, key=migration.key) \
                if os.path.isfile(path) else None
            before = replay.schema() if down else None
            try:
                replay.run(migration)
            except (MigrationFailed, MigrationFileError):
                return findings
            if down is None:
                continue
            # Down, and up again, are tried in a savepoint that is rolled
            # back: each down script is checked on the migrations' own schema,
            # whatever the ones before it left undone.
            replay.conn.execute("SAVEPOINT down_check")
            try:
                findings += _down_finding(replay, migration, down, before)  # type: ignore
            finally:
                kept = replay.conn.in_transaction  # (a RAISE(ROLLBACK) takes it all)
                if kept:
                    replay.conn.execute("ROLLBACK TO down_check")
                    replay.conn.execute("RELEASE down_check")
            if not kept:
                return findings
    finally:
        replay.close()
    return findings


def _down_finding(replay: "_Replay", migration: Migration, down: Migration,
                  before: Schema) -> List[Finding]:
    """What is wrong with one down script, run after its migration on
    `replay`: it fails, it leaves the schema other than `before`, or the
    migration fails when applied again after it."""
    try:
        replay.run(down, "roll back")
    except MigrationFailed as exc:
        return [Finding("error", down.path, exc.line, "down-script-fails",
                        f"it fails after {migration.name}: {exc.reason}")]
    except MigrationFileError as exc:
        return [Finding("error", down.path, None, "down-script-fails", str(exc))]
    left = replay.schema().differences(before)
    if left:
        shown = "; ".join(f"{o.type} {o.name}: {_undone(kind)}" for kind, o in left[:4])
        return [Finding("error", down.path, None, "down-script-incomplete",
                        f"it does not undo {migration.name}: {shown}"
                        + (f" (and {len(left) - 4} more)" if len(left) > 4 else ""))]
    try:
        replay.run(migration)
    except MigrationFailed as exc:
        return [Finding("error", migration.path, exc.line, "up-after-down-fails",
                        f"it fails when applied again after its down script: {exc.reason}")]
    return []


def _undone(kind: str) -> str:
    """A schema difference after a down script, said of the down script."""
    return {"missing": "dropped by the migration, not created again",
            "not created by any migration": "created by the migration, not dropped",
            "changed": "changed by the migration, not changed back"}[kind]


# -- a rollback computed from two schemas ----------------------------------------
# What a migration with no down script did is the difference between the
# schema before it (the replay of the migrations before it) and now; the
# statements that undo it are computed here and run like a down script (or
# printed, for review).  A table is rebuilt as SQLite documents (create the
# new one, copy the shared columns, drop the old, rename), with foreign keys
# deferred, never switched off: D1 enforces them, and the row guard counts
# what the drop could take.

_CREATE_TABLE_HEAD = _pattern(
    rf"(?is)(\s*CREATE\s+(?:TEMP(?:ORARY)?\s+)?TABLE\s+(?:IF\s+NOT\s+EXISTS\s+)?)"
    rf"(?:{_SQL_NAME}\s*\.\s*)?{_SQL_NAME}")
ROLLBACK_TABLE_SUFFIX = "__apply_migrations_rollback"
# As SQLite's grammar has it: the word only counts after PRIMARY KEY.
_AUTOINCREMENT = _pattern(
    r"(?i)\bPRIMARY\s+KEY(?:\s+(?:ASC|DESC))?(?:\s+ON\s+CONFLICT\s+\w+)?\s+AUTOINCREMENT\b")
# Generated statements are printed for review, so the names are literals.
SQL_DROP_SEQUENCE = "DELETE FROM sqlite_sequence WHERE name = {name};"
SQL_COPY_SEQUENCE = ("INSERT INTO sqlite_sequence (name, seq) SELECT {name}, seq"
                     " FROM sqlite_sequence WHERE name = {source};")
# A statement that changes rows, and the table it changes (WITH ... left
# to the caller: its table is not read here).
_CHANGING_VERB = _pattern(r"(?i)\b(INSERT|REPLACE|UPDATE|DELETE)\b")
_ROW_CHANGE = _pattern(
    rf"(?is)\b(?:(?:INSERT|REPLACE)\s+(?:OR\s+\w+\s+)?INTO|UPDATE(?:\s+OR\s+\w+)?"
    rf"|DELETE\s+FROM)\s+(?:{_SQL_NAME}\s*\.\s*)?({_SQL_NAME})")


class RollbackPlan(namedtuple("RollbackPlan", "statements losses notes")):
    """The statements that turn one schema into another.

    statements (List[str]): each ending in ";"
    losses (List[str]): what they would lose (rows of a table dropped, values of a
        column dropped), each a phrase; refused unless the loss is meant
    notes (List[str]): what they cannot bring back (a table the migration dropped
        comes back empty)
    """

    __slots__ = ()

    def sql(self) -> str:
        return "".join(statement + "\n" for statement in self.statements)


def rollback_plan(current: Schema, target: Schema,
                  count: Callable[[str, Optional[str]], int]) -> RollbackPlan:
    """The statements that turn `current` into `target`, and what they would
    lose.  count(table, column) counts a table's rows (column None) or a
    column's non-NULL values, in the database they are for."""
    now, want = current.normalized(), target.normalized()
    by_key = {o.key: o for o in current.objects}
    statements: List[str] = []
    losses: List[str] = []
    notes: List[str] = []
    quote = quote_identifier
    renamed = _renamed_tables(current, target)
    rebuilt = set()
    rebuilds: List[str] = []  # FTS indexes, once the tables they read are back
    # What depends on tables goes first: triggers, views, then indexes.
    for kind in ("trigger", "view", "index"):
        for o in current.objects:
            if o.type == kind and want.get(o.key) != now[o.key]:
                statements.append(f"DROP {kind.upper()} IF EXISTS {quote(o.name)};")
    for old, new in renamed.items():
        statements.append(f"ALTER TABLE {quote(old)} RENAME TO {quote(new)};")
    for o in target.tables():
        source = next((old for old, new in renamed.items() if new.lower() == o.name.lower()),
                      o.name)
        mine = by_key.get(("table", source.lower()))
        if mine is None or (source == o.name and now[mine.key] == want[o.key]):
            continue
        if o.module or mine.module:
            continue  # not altered: made again (below)
        if source != o.name and normalized_sql(_renamed_sql(mine.sql, o.name)) == want[o.key]:
            continue  # the rename alone undoes it
        back, remade = _table_back(mine._replace(name=o.name), o, current, target, count,
                                   losses, notes)
        if remade:
            rebuilt.add(o.name.lower())  # its indexes and triggers went with the old table
        statements += back
    for o in current.tables():
        if o.key not in want and o.name not in renamed:
            rows = 0 if o.rebuilt_from_content else count(o.name, None)
            if rows:
                losses.append(f"the {_plural(rows, 'row')} of table {o.name}, which the"
                              " migration created")
            statements.append(f"DROP TABLE {quote(o.name)};")
    for o in target.tables():
        if ("table", o.name.lower()) not in now and o.name.lower() not in {
                n.lower() for n in renamed.values()}:
            statements.append(o.sql.rstrip().rstrip(";") + ";")
            rebuilds += _rebuilt(o)
            if not o.rebuilt_from_content:
                notes.append(f"table {o.name}, which the migration dropped, comes back empty")
    # A virtual table cannot be altered: one the migration changed (or a
    # table it turned into one, or back) is dropped and made again.
    for o in target.tables():
        mine = by_key.get(o.key)
        if mine is None or now[mine.key] == want[o.key] or not (o.module or mine.module):
            continue
        rows = 0 if mine.rebuilt_from_content else count(mine.name, None)
        if rows:
            losses.append(f"the {_plural(rows, 'row')} of table {mine.name}, which is made"
                          " again")
        statements.append(f"DROP TABLE {quote(mine.name)};")
        statements.append(o.sql.rstrip().rstrip(";") + ";")
        rebuilds += _rebuilt(o)
        if not o.rebuilt_from_content:
            notes.append(f"table {o.name}, which the migration changed, comes back empty")
    statements += rebuilds
    for kind in ("index", "view", "trigger"):
        for o in target.objects:
            if o.type == kind and (now.get(o.key) != want[o.key]
                                   or o.table.lower() in rebuilt):
                if o.table.lower() in rebuilt and now.get(o.key) == want[o.key]:
                    statements.append(f"DROP {kind.upper()} IF EXISTS {quote(o.name)};")
                statements.append(o.sql.rstrip().rstrip(";") + ";")
    return RollbackPlan(statements, losses, notes)


def _rebuilt(table: SchemaObject) -> List[str]:
    """For an FTS index over another table's rows, made again empty, its
    rebuild from them (once every table is back)."""
    if not table.rebuilt_from_content:
        return []
    name = quote_identifier(table.name)
    return [f"INSERT INTO {name} ({name}) VALUES ('rebuild');"]


def _renamed_tables(current: Schema, target: Schema) -> Dict[str, str]:
    """Tables the migration renamed: gone from one schema and new in the
    other with the same columns (name and type, in order)."""
    now = {o.name.lower(): o for o in current.tables() if not o.module}
    want = {o.name.lower(): o for o in target.tables() if not o.module}
    renamed: Dict[str, str] = {}
    for name, o in now.items():
        if name in want:
            continue
        shape = current.columns.get(name, [])
        for other, t in want.items():
            wanted = target.columns.get(other, [])
            if other not in now and other not in {n.lower() for n in renamed.values()} \
                    and wanted and shape[:len(wanted)] == wanted:
                renamed[o.name] = t.name  # perhaps with columns added since: dropped after
                break
    return renamed


def _renamed_sql(sql: str, name: str) -> str:
    return _CREATE_TABLE_HEAD.sub(lambda m: m.group(1) + quote_identifier(name), sql, count=1)


def _table_back(mine: SchemaObject, theirs: SchemaObject, current: Schema, target: Schema,
                count: Callable[[str, Optional[str]], int], losses: List[str],
                notes: List[str]) -> "tuple[List[str], bool]":
    """The statements that give table `mine` the definition `theirs`: a
    column dropped when that is all the migration did, else a rebuild that
    keeps the rows and the columns both have (and the renamed ones); and
    whether it is a rebuild (the table's indexes and triggers go with it)."""
    quote = quote_identifier
    now_columns = current.columns.get(mine.table.lower(), [])
    want_columns = target.columns.get(theirs.name.lower(), [])
    want_names = [c.name for c in want_columns]
    names = [c.name for c in now_columns]
    # Columns renamed by the migration: same place, same type, another name.
    renames = {}
    if len(names) == len(want_names):
        # (A name that both versions have is that column's, whatever its
        # place: copying it into another would move values silently.)
        renames = {n.name: w.name for n, w in zip(now_columns, want_columns)
                   if n.name != w.name and n[1:] == w[1:]
                   and n.name not in want_names and w.name not in names}
    extra = [n for n in names if n not in want_names and n not in renames]
    for column in extra:
        values = count(mine.table, column)
        if values:
            losses.append(f"the {_plural(values, 'value')} of column {mine.name}.{column},"
                          " which the migration added")
    rows_stay = True
    for w in want_columns:
        if w.name not in names and w.name not in renames.values():
            notes.append(f"column {theirs.name}.{w.name}, which the migration dropped, comes"
                         " back empty")
            if w.notnull and w.default is None and count(mine.table, None):
                # No value to give it: the rows cannot be copied back, and
                # allowed to (allow_data_loss), the table comes back empty.
                rows_stay = False
                losses.append(f"the rows of table {mine.name}: its column {w.name}, which the"
                              " migration dropped, is NOT NULL with no default")
    if renames and not extra and [c._replace(name=renames.get(c.name, c.name))
                                  for c in now_columns] == want_columns:
        return [f"ALTER TABLE {quote(mine.name)} RENAME COLUMN {quote(old)} TO {quote(new)};"
                for old, new in renames.items()], False
    if extra and not renames and [c for c in now_columns if c.name not in extra] == want_columns:
        # Only columns added: dropped again, the table (and what references
        # it) left in place.
        return [f"ALTER TABLE {quote(mine.name)} DROP COLUMN {quote(column)};"
                for column in extra], False
    kept = [n for n in names if n in want_names or n in renames]
    temporary = theirs.name + ROLLBACK_TABLE_SUFFIX
    statements = [
        "PRAGMA defer_foreign_keys = ON;",
        _created_as(theirs.sql, theirs.name, temporary) + ";",
    ]
    if rows_stay:
        statements.append(
            f"INSERT INTO {quote(temporary)} ({', '.join(quote(renames.get(n, n)) for n in kept)})"
            f" SELECT {', '.join(quote(n) for n in kept)} FROM {quote(mine.name)};")
    if _AUTOINCREMENT.search(_QUOTED_OR_COMMENT.sub(" x ", theirs.sql)):  # names, strings out
        # The copy would start the sequence again at the largest id kept: ids
        # of deleted rows would come back.  (The rename carries the row.)
        statements += [SQL_DROP_SEQUENCE.format(name=_sql_text(temporary)),
                       SQL_COPY_SEQUENCE.format(name=_sql_text(temporary),
                                                source=_sql_text(mine.name))]
    return statements + [
        f"DROP TABLE {quote(mine.name)};",
        f"ALTER TABLE {quote(temporary)} RENAME TO {quote(theirs.name)};",
    ], True


def _created_as(sql: str, name: str, new: str) -> str:
    """A table's CREATE statement for the same table named `new`, with the
    references to itself inside it (a CHECK that names its own table, as
    drizzle-kit writes them; a foreign key to itself) renamed too: SQLite's
    own ALTER TABLE ... RENAME does it, on a copy in memory.  Where that
    copy cannot be made, the name alone is changed."""
    scratch = sqlite3.connect(":memory:")
    try:
        scratch.execute(sql)
        scratch.execute(f"ALTER TABLE {quote_identifier(name)} RENAME TO {quote_identifier(new)}")
        return scratch.execute("SELECT sql FROM sqlite_master WHERE name = ?", (new,)
                               ).fetchone()[0]
    except (sqlite3.Error, TypeError):
        return _renamed_sql(sql, new).rstrip().rstrip(";")
    finally:
        scratch.close()


def _sql_text(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def compute_rollback(query: Callable[[str, tuple], List[tuple]], record: Record,
                     migrations: Sequence[Migration], key: Union[int, str],
                     ignore: Sequence[str]) -> RollbackPlan:
    """The rollback of the applied migration `key`, computed: the statements
    that turn the database's schema into the one the other applied
    migrations make, checked in memory to give exactly that.  Refused
    (MigrationError, nothing changed) when a file is gone, a replay fails,
    or the database has drifted: no rollback from a wrong picture."""
    applied = [m for m in migrations if m.key in record.applied]
    present = {m.key for m in applied}
    gone = [row.name for k, row in record.applied.items() if k not in present]
    name = next((m.name for m in applied if m.key == key), str(key))
    why = f"Cannot compute a rollback of {name}"
    if gone:
        raise MigrationError(f"{why}: the file of {gone[0]} is gone, so the schema before it"
                             " cannot be replayed; write a down script")
    try:
        now = replay_schema(applied)
        before = replay_schema([m for m in applied if m.key != key])
    except MigrationFailed as exc:
        raise MigrationError(f"{why}: {exc}") from None
    actual = read_schema(query, ignore)
    drifted = actual.differences(now)
    if drifted:
        kind, o = drifted[0]
        raise MigrationError(
            f"{why}: the database has drifted from what its migrations make ({o.type}"
            f" {o.name}: {kind}{f', and {len(drifted) - 1} more' if len(drifted) > 1 else ''});"
            " a computed rollback needs the schema its migrations make. Write a down script")

    def count(table: str, column: Optional[str]) -> int:
        sql = SQL_COUNT.format(counted=quote_identifier(column) if column else "*",
                               table=quote_identifier(table))
        return int(query(sql, ())[0][0])

    plan = _checked(rollback_plan(actual, before, count), applied, before, why)
    return _with_row_changes(plan, next(m for m in applied if m.key == key), before, now, why,
                             f", or remove the record alone with {_opt('record_only')}")


def down_script_plan(migrations: Sequence[Migration], key: Union[int, str]) -> RollbackPlan:
    """A down script for migration `key`, computed from the migrations alone
    (replayed in memory, up to it and up to just before it): no database,
    so nothing is known of rows, and none counted as lost."""
    upto = []
    for migration in migrations:
        upto.append(migration)
        if migration.key == key:
            break
    why = f"Cannot compute a down script for {upto[-1].name}"
    try:
        now, before = replay_schema(upto), replay_schema(upto[:-1])
    except MigrationFailed as exc:
        raise MigrationError(f"{why}: {exc}") from None
    plan = _checked(rollback_plan(now, before, lambda table, column: 0), upto, before, why)
    return _with_row_changes(plan, upto[-1], before, now, why)


def _with_row_changes(plan: RollbackPlan, migration: Migration, before: Schema, now: Schema,
                      why: str, instead: str = "") -> RollbackPlan:
    """The plan, with a note for each statement of the migration that
    changed rows of a table there before and after it: a computed rollback
    undoes the schema, not those.  Refused when that is all it did: its
    rollback would do nothing and say it had rolled back."""
    kept = ({o.name.lower() for o in before.tables()}
            & {o.name.lower() for o in now.tables()})
    kept |= {name.lower() for name in _renamed_tables(now, before)}  # renamed back
    changed = []
    for number, statement in enumerate(migration.statements("roll back"), 1):
        if statement.keyword == "WITH":
            # The statement after the common table expressions (SELECTs)
            words = _head_of(statement)
            verb, found = _CHANGING_VERB.search(words), _ROW_CHANGE.search(words)
            table = _unquote(found.group(1)) if found else None
            if verb and (table is None or table.lower() in kept):
                changed.append((number, f"WITH ... {verb.group(1).upper()}"
                                        + (f" {table}" if table else "")))
        elif statement.keyword in ("INSERT", "REPLACE", "UPDATE", "DELETE"):
            found = _ROW_CHANGE.match(_without_comments(statement.sql).lstrip())
            table = _unquote(found.group(1)) if found else ""
            if table.lower() in kept:
                changed.append((number, f"{statement.keyword} {table}"))
    if not changed:
        return plan
    if not plan.statements:
        number, what = changed[0]
        raise MigrationError(
            f"{why}: it changed rows, not the schema (statement {number}, {what}), and a"
            f" computed rollback undoes schema changes only; write a down script that undoes"
            f" them{instead}")
    return plan._replace(notes=plan.notes + [
        f"the rows that statement {number} ({what}) changed stay as they are (a computed"
        " rollback undoes the schema, and values only with the columns it drops)"
        for number, what in changed])


def _checked(plan: RollbackPlan, applied: Sequence[Migration], before: Schema,
             why: str) -> RollbackPlan:
    """The plan, once it is seen to give `before` from what `applied` make,
    in memory."""
    check = _Replay()
    try:
        for migration in applied:
            check.run(migration)
        try:
            check.conn.executescript("BEGIN;\n" + plan.sql() + "COMMIT;")
        except sqlite3.Error as exc:
            raise MigrationError(f"{why}: its computed statements fail in memory ({exc});"
                                 " write a down script") from None
        left = check.schema().differences(before)
    finally:
        check.close()
    if left:
        kind, o = left[0]
        raise MigrationError(f"{why}: the computed statements do not give the schema before"
                             f" it ({o.type} {o.name}: {kind}); write a down script")
    return plan


# -- writing a schema ----------------------------------------------------------

SCHEMA_FORMATS = ("sql", "json", "markdown", "mermaid")
SCHEMA_HEADER = "-- The schema the migrations make (apply_migrations.py schema). Do not edit.\n"


def render_schema(schema: Schema, form: str = "sql") -> str:
    """The schema as text: "sql" (every CREATE statement, in order), "json",
    "markdown" (a table per table, for people) or "mermaid" (an erDiagram,
    which GitHub draws)."""
    return {"sql": _schema_sql, "json": _schema_json, "markdown": _schema_markdown,
            "mermaid": _schema_mermaid}[form](schema)


def _schema_sql(schema: Schema) -> str:
    parts = [SCHEMA_HEADER]
    for o in schema.objects:
        if o.type in ("table", "view") and len(parts) > 1:
            parts.append("\n")
        parts.append(o.sql.rstrip().rstrip(";") + ";\n")
    return "".join(parts)


def _schema_json(schema: Schema) -> str:
    import json
    tables = {}
    for table in schema.tables():
        tables[table.name] = {
            "columns": [c._asdict() for c in schema.columns.get(table.name.lower(), [])],
            "foreign_keys": [{"column": r.column, "references": r.parent,
                              "on_delete": r.action}
                             for r in schema.references if r.child.lower() == table.name.lower()],
            "indexes": [o.name for o in schema.objects
                        if o.type == "index" and o.table.lower() == table.name.lower()],
        }
    return json.dumps({"objects": [o._asdict() for o in schema.objects], "tables": tables},
                      indent=2, ensure_ascii=False) + "\n"


def _schema_markdown(schema: Schema) -> str:
    lines = ["# Schema", ""]
    for table in schema.tables():
        name = table.name.lower()
        refs = {r.column: r for r in schema.references if r.child.lower() == name}
        lines += [f"## {_markdown_text(table.name)}", "",
                  "| Column | Type | Not null | Default | Primary key | References |",
                  "|---|---|---|---|---|---|"]
        for c in schema.columns.get(name, []):
            ref = refs.get(c.name)
            lines.append("| " + " | ".join(_markdown_text(str(v)) for v in (
                c.name, c.type, "yes" if c.notnull else "", "" if c.default is None else c.default,
                str(c.pk) if c.pk else "",
                f"{ref.parent} (ON DELETE {ref.action})" if ref else "")) + " |")
        indexes = [o for o in schema.objects if o.type == "index" and o.table.lower() == name]
        if indexes:
            lines += ["", "Indexes: " + ", ".join(_markdown_text(o.name) for o in indexes)]
        lines.append("")
    views = [o for o in schema.objects if o.type == "view"]
    if views:
        lines += ["## Views", ""] + [f"- {_markdown_text(o.name)}" for o in views] + [""]
    return "\n".join(lines)


def _markdown_text(text: str) -> str:
    return " ".join(text.replace("\\", "\\\\").replace("|", "\\|").split())


def _schema_mermaid(schema: Schema) -> str:
    names: Dict[str, str] = {}
    for table in schema.tables():
        base = _mermaid_word(table.name, "table")
        name, serial = base, 1
        while name in names.values():
            serial += 1
            name = f"{base}_{serial}"
        names[table.name.lower()] = name
    lines = ["erDiagram"]
    for table in schema.tables():
        lines.append(f"    {names[table.name.lower()]} {{")
        keyed = {r.column for r in schema.references if r.child.lower() == table.name.lower()}
        for c in schema.columns.get(table.name.lower(), []):
            keys = ", ".join(k for k, on in (("PK", c.pk), ("FK", c.name in keyed)) if on)
            lines.append(f"        {_mermaid_word(c.type, 'ANY')} {_mermaid_word(c.name, 'col')}"
                         + (f" {keys}" if keys else ""))
        lines.append("    }")
    for r in schema.references:
        child, parent = names.get(r.child.lower()), names.get(r.parent.lower())
        if child and parent:
            label = re.sub(r'["\n\r]', "", r.column) or "fk"
            lines.append(f'    {child} }}o--|| {parent} : "{label}"')
    return "\n".join(lines) + "\n"


def _mermaid_word(text: str, fallback: str) -> str:
    """A word Mermaid's erDiagram takes as a name or type."""
    word = re.sub(r"[^A-Za-z0-9_]", "_", text).strip("_") or fallback
    return word if word[0].isalpha() else f"{fallback}_{word}"


# ==========================================================================
# 14. The engine: runs migrations and rollbacks through a Target, written
#     once for every target.  A _Run reports each outcome at one point
#     (_Run.report).
# ==========================================================================


@contextmanager
def _ending(report: RunReport, interrupted: Callable[[_Stop], Interrupted]) -> Iterator[None]:
    """However a run ends, its report is finished: an error carries it
    (error.report), and a stop becomes the Interrupted that says what the
    run did."""
    try:
        yield
    except _Stop as stop:
        error = interrupted(stop)
        report.error, error.report = error, report
        raise error from None
    except MigrationError as exc:
        report.error, exc.report = exc, report
        raise
    finally:
        report.elapsed_ms = (time.perf_counter() - report.started) * 1000


def _apply_interrupted(report: RunReport, stop: _Stop, whole: bool) -> Interrupted:
    """The Interrupted that says what an apply did before a stop."""
    current = [o.name for o in report.having(INTERRUPTED, UNKNOWN, NOT_SENT)]
    if len(current) > 1:  # remote: one batch of several
        current = [f"{current[0]} to {current[-1]} (one batch)"]
    return Interrupted(stop.signum, 0 if whole else len(report.having(APPLIED)),
                       current[-1] if current else None, stop.state, whole)


class Migrator:
    """Applies, inspects and rolls back the migrations of one folder on one
    database: a file path (local SQLite) or a Target (D1Target for remote D1).

    Every migration runs in one transaction together with its tracking row:
    if any statement fails, its changes are rolled back, no record is
    written and the migration stays pending.  Reads (status) never write,
    and never create the database file or the tracking table.

    apply() and rollback() return a RunReport; on failure they raise a
    MigrationError whose `.report` says what the run did first.  Each
    migration's Outcome also goes to ``on_outcome`` as it becomes known, a
    restore point taken before the first change to ``on_restore_point``
    (("backup", path) or ("bookmark", D1's Time Travel bookmark)), and each
    warning to ``on_warning``.  Use it as a context manager, or call close().
    """

    def __init__(self, database: Union[str, "os.PathLike[str]", Target],
                 migrations_dir: Union[str, "os.PathLike[str]"] = DEFAULT_MIGRATIONS_DIR, *,
                 lock_timeout: float = DEFAULT_LOCK_TIMEOUT, foreign_keys: bool = False,
                 wrangler_table: Optional[str] = None,
                 log: Optional[Callable[[str], None]] = None,
                 on_slow_statement: Optional[Callable[[str, int, int, float], None]] = None,
                 on_outcome: Optional[Callable[[Outcome], None]] = None,
                 on_restore_point: Optional[Callable[[str, str], None]] = None,
                 on_warning: Optional[Callable[[str], None]] = None,
                 audit: Optional[Audit] = None):
        if isinstance(database, Target):
            self.target = database
        else:
            self.target = SQLiteTarget(os.fspath(database), lock_timeout=lock_timeout,
                                       foreign_keys=foreign_keys, log=log,
                                       on_slow_statement=on_slow_statement)
        self.migrations_dir = os.fspath(migrations_dir)
        self.book = Bookkeeping(wrangler_table, audit)  # audit: who, for the history
        self.on_outcome = on_outcome
        self.on_restore_point = on_restore_point
        self.on_warning = on_warning
        self._scan: Optional[FolderScan] = None
        self._stop_signal: Optional[int] = None

    @classmethod
    def from_options(cls, options: Options, *, log: Optional[Callable[[str], None]] = None,
                     on_slow_statement=None, on_outcome=None, on_restore_point=None,
                     on_warning=None) -> "Migrator":
        if options.remote is not None:
            target: Target = D1Target(D1Client(options.remote, log=log))
        else:
            target = SQLiteTarget(options.db_path, lock_timeout=options.lock_timeout,
                                  foreign_keys=options.foreign_keys, log=log,
                                  on_slow_statement=on_slow_statement,
                                  create_folder=options.wrangler_config is not None,
                                  d1_rules=options.wrangler_config is not None)
        return cls(target, options.migrations_dir, wrangler_table=options.wrangler_table,
                   on_outcome=on_outcome, on_restore_point=on_restore_point,
                   on_warning=on_warning, audit=options.audit)

    @property
    def database(self) -> str:
        """How messages name the database (a path, or "D1 database <id>")."""
        return self.target.name

    def close(self) -> None:
        self.target.close()

    def __enter__(self) -> "Migrator":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def request_stop(self, signum: int) -> None:
        """Stop at the next safe point (a signal handler may call this): the
        migration in progress is rolled back, one that committed stays, and
        the run raises Interrupted."""
        if self._stop_signal is None:
            self._stop_signal = signum
        self.target.request_stop(signum)

    # -- reading: the folder, the record, the state of each migration -----------

    def scan(self, nothing_done: str = "") -> FolderScan:
        """The migrations folder, scanned once; MigrationFileError when it
        holds something that makes its meaning unclear."""
        if self._scan is None:
            scan = scan_folder(self.migrations_dir, self.book.by_name)
            refusal = scan.refusal(nothing_done)
            if refusal is not None:
                raise refusal
            self._scan = scan
            if self.on_warning is not None:
                for warning in self.warnings:
                    self.on_warning(warning)
        return self._scan

    def migrations(self) -> List[Migration]:
        return self.scan().migrations

    @property
    def warnings(self) -> List[str]:
        """What the scan ignored, worded for a user."""
        return [f"Ignoring {f.path}: the name does not match NNNN_description.sql"
                for f in self.scan().findings if f.code == "bad-name"]

    def read(self) -> Record:
        """The database's record (the target must be open)."""
        return self.book.read(self.target.query, self.target.name)

    def status(self, migrations: Optional[List[Migration]] = None) -> List[MigrationStatus]:
        """Every migration's state, files and records merged (of `migrations`,
        default: the folder's).  Read-only: a missing database stays missing,
        and no table is created."""
        record = self.read() if self.target.open("read") else Record(None, None, {})
        return status_of(self.migrations() if migrations is None else migrations,
                         record.applied, self.book.by_name,
                         self.book.latest(self.target.query, self.target.name, record))

    def history(self, version: Optional[str] = None, event: Optional[str] = None,
                outcome: Optional[str] = None, since: Optional[str] = None,
                limit: Optional[int] = None) -> List[HistoryEvent]:
        """The history's events, newest first, filtered (see select_events).
        Read-only: [] when there is no database or no history."""
        if not self.target.open("read"):
            return []
        return select_events(self.book.history(self.target.query, self.target.name),
                             version, event, outcome, since, limit)

    def schema(self, from_migrations: bool = False) -> Schema:
        """The database's schema, or (from_migrations) the schema that all the
        migrations of the folder make, replayed in memory: no database needed."""
        if from_migrations:
            return replay_schema(self.migrations())
        if not self.target.open("read"):
            raise MigrationError(
                f"Database {self.target.name} does not exist, so it has no schema; pass"
                f" {_opt('from_migrations')} for the schema the migrations make, which needs"
                " no database")
        return read_schema(self.target.query, self.bookkeeping_tables())

    def bookkeeping_tables(self) -> List[str]:
        """The tables that are the record, not the schema."""
        return [TRACKING_TABLE, WRANGLER_TABLE, STATE_TABLE, HISTORY_TABLE,
                self.book.wrangler_table or WRANGLER_TABLE]

    def drift(self) -> Drift:
        """Whether the database's schema is the one its applied migrations
        make (see drift_of).  Read-only; a missing database has none."""
        if not self.target.open("read"):
            return Drift(True, [], None)
        return drift_of(self.target.query, self.book, self.read(), self.migrations(),
                        self.bookkeeping_tables())

    def plan(self, applied: Dict[int, AppliedRow], target: Optional[str] = None,
             allow_out_of_order: bool = False, done: str = "nothing was applied"
             ) -> List[Migration]:
        """plan_migrations over this folder's migrations."""
        return plan_migrations(self.migrations(), applied, target, allow_out_of_order, done,
                               self.migrations_dir, self.book.by_name)

    # -- writing -------------------------------------------------------------------

    def init(self) -> RunReport:
        """Create the database and the tracking table (and wrangler's);
        report.created says whether the table is new."""
        report = self._new_report("init")
        self.target.open("create")
        record = self.read()
        entries, report.synced = self.book.ensure(record)
        if entries:
            self.target.ensure(entries)
        report.created = record.own is None
        return report

    def apply(self, target: Optional[str] = None, *, allow_out_of_order: bool = False,
              single_transaction: bool = False, dry_run: bool = False,
              backup: Union[None, bool, str] = None, bookmark: bool = True,
              allow_row_loss: bool = False, commit_each: bool = False) -> RunReport:
        """Apply the pending migrations in order (up to `target`).

        Each runs with its tracking row, all or nothing.  On a failure the
        run stops: earlier migrations stay applied, the failing one leaves
        nothing, later ones are not tried.  Group commit (GROUP_COMMIT_SECONDS;
        on D1, small ones in one request) unless commit_each; each is reported
        once committed.  With single_transaction the whole run is one
        transaction: a failure leaves the database as it was; dry_run too,
        always rolled back.  With backup (True, or a path) a local database
        is copied first, when something is pending; a remote D1 database's
        Time Travel bookmark is taken first unless bookmark is False.  A
        migration that would take rows from a table it does not name,
        through a foreign key's ON DELETE action, fails unless allow_row_loss.
        """
        report = self._new_report("apply", dry_run, single_transaction)
        report.target = target
        run = _Run(self, report, target, allow_out_of_order, backup, bookmark, allow_row_loss,
                   commit_each=commit_each)
        whole = single_transaction or dry_run
        with _ending(report, lambda stop: _apply_interrupted(report, stop, whole)):
            scan = self.scan("Nothing was applied.")
            report.migrations = len(scan.migrations)
            report.warnings = self.warnings
            report.ignored = len(report.warnings)
            if commit_each and single_transaction:
                raise ConfigurationError(f"{_opt('commit_each')} and"
                                         f" {_opt('single_transaction')} exclude each other")
            if backup is not None and dry_run:
                raise ConfigurationError(f"{_opt('backup')} and {_opt('dry_run')} exclude each"
                                         " other: a dry run changes nothing")
            if backup is not None and not hasattr(self.target, "backup"):
                raise ConfigurationError(
                    f"{_opt('backup')} copies a local database file; a remote D1 database is"
                    " restored with Time Travel instead (the tool takes a bookmark before"
                    " each apply; wrangler d1 time-travel info / restore)")
            self.target.open("dry-run" if dry_run else "create")
            if whole:
                run.whole(commit=not dry_run)
            else:
                run.each()
            self._check_stop()
        return report

    def rollback(self, version: Optional[str] = None, *, force: bool = False,
                 bookmark: bool = True, allow_row_loss: bool = False,
                 allow_data_loss: bool = False, record_only: bool = False,
                 dry_run: bool = False) -> RunReport:
        """Undo one applied migration (default: the latest) and delete its
        tracking row, in one transaction: with its down script, if it has
        one, else with statements computed from the schema before it
        (report.computed; refused when they would lose data, unless
        allow_data_loss).  record_only removes the record alone; dry_run
        computes and changes nothing (report.sql holds what would run)."""
        report = self._new_report("rollback")
        chosen: List[AppliedRow] = []

        def interrupted(stop: _Stop) -> Interrupted:
            return Interrupted(stop.signum, 0, chosen[0].name if chosen else None, stop.state,
                               action="rollback")

        with _ending(report, interrupted):
            # A mistyped migrations folder would find no down script and
            # remove the record alone, leaving the schema as it is.
            self.scan("Nothing was rolled back.")
            if not self.target.open("change"):
                raise MigrationError(
                    f"Migration {version} not found in applied migrations" if version else
                    f"Nothing to roll back: database {self.target.name} does not exist")
            record = self.read()
            row = choose_rollback(record.applied, version, force, self.book.by_name)
            chosen.append(row)
            run = _Run(self, report, bookmark=bookmark, allow_row_loss=allow_row_loss,
                       allow_data_loss=allow_data_loss, record_only=record_only)
            step = run.rollback_step(row, record, version, force)
            report.planned = 1
            report.statements = len(step.statements)
            report.subject = (row.version, row.name)
            report.down_script = step.path
            report.sql = "".join(s.sql.rstrip() + "\n" for _, s in step.statements)
            if dry_run:
                return report
            known = self.target.cheap_reads and run.known(record)
            run.restore_point()
            self._check_stop()
            run.run([step], 0, ROLLED_BACK)
            # Only a computed rollback is known to leave the schema the
            # migrations before it make (it was tried in memory); a down
            # script may leave more or less, and --record-only leaves all.
            if known and report.having(ROLLED_BACK) and report.computed is not None:
                run.note_schema()
        return report

    def baseline(self, version: Optional[str] = None, force: bool = False) -> RunReport:
        """Record the migrations up to `version` (default: all) as applied
        without running them, for a database that already has their effect
        (built by hand, or by another tool).  Refused, unless force, when the
        database's schema is not the one those migrations make, or when that
        cannot be told: a baseline must not hide a missing table."""
        report = self._new_report("baseline")
        with _ending(report, lambda stop: Interrupted(stop.signum, action="baseline")):
            _baseline(self, report, version, force)
        return report

    def accept(self, version: str, reason: str) -> RunReport:
        """Record the checksum of an applied migration whose file was edited
        on purpose, and the reason, in the history: status stops reporting
        it as modified.  report.schema_effect says whether the applied
        migrations, as their files now are, still make the database's schema."""
        report = self._new_report("accept")
        with _ending(report, lambda stop: Interrupted(stop.signum, action="accept")):
            _accept(self, report, version, reason)
        return report

    def _new_report(self, action: str, dry_run: bool = False,
                    single_transaction: bool = False) -> RunReport:
        report = RunReport(action, self.target.name, self.migrations_dir, dry_run,
                           single_transaction)
        report.wrangler_table = self.book.wrangler_table
        return report

    def _check_stop(self) -> None:
        if self._stop_signal is not None:
            raise _Stop(self._stop_signal, None)


class _Run:
    """One apply or rollback in progress: the migration loop, written once
    for every target, and the one place where each outcome is reported
    (report(): into the RunReport, and to the Migrator's on_outcome)."""

    def __init__(self, migrator: Migrator, report: RunReport, target: Optional[str] = None,
                 allow_out_of_order: bool = False, backup: Union[None, bool, str] = None,
                 bookmark: bool = True, allow_row_loss: bool = False,
                 allow_data_loss: bool = False, record_only: bool = False,
                 commit_each: bool = False):
        self.migrator = migrator
        self.book = migrator.book
        self.db = migrator.target
        self.report_ = report
        self.target = target
        self.allow_out_of_order = allow_out_of_order
        self.backup = backup
        self.bookmark = bookmark
        self.allow_row_loss = allow_row_loss
        self.allow_data_loss = allow_data_loss
        self.record_only = record_only
        self.commit_each = commit_each

    def each(self) -> None:
        """Each pending migration in its own transaction."""
        migrator, report = self.migrator, self.report_
        record = migrator.read()
        steps = self._steps(record, [])  # every check before the first write
        if steps:
            self.restore_point()  # before the first write, the record's included
        # The record is created in the first step's transaction (one commit
        # fewer), or alone when nothing is pending.  What another process
        # applied meanwhile is found there, under the lock (Step.settled).
        entries, report.synced = self.book.ensure(record)
        if entries and not steps:
            self.db.ensure(entries)
        report.planned = len(steps)
        known = bool(steps) and self.db.cheap_reads and self.known(record)
        done = 0
        try:
            while done < len(steps):
                migrator._check_stop()
                done = self.run(steps, done, APPLIED, entries if done == 0 else (),
                                self._noted_schema if known else None)
        finally:
            # The note goes with the last commit; after a failure, alone.
            if known and report.having(APPLIED) and done < len(steps):
                self.note_schema()

    def _steps(self, record: Record, prepared: List[Step]) -> List[Step]:
        """The pending migrations, each prepared (split and checked) once: a
        bad file further down must not leave the run half done."""
        pending = self.migrator.plan(record.applied, self.target, self.allow_out_of_order)
        self._count_beyond(record.applied)
        known = {step.name: step for step in prepared}
        try:
            return [known.get(m.name) or self.apply_step(m) for m in pending]
        except MigrationFailed as exc:
            raise exc.with_note(
                "nothing was applied: every pending file is checked before any runs") from None

    def whole(self, commit: bool) -> None:
        """The whole run in one transaction: committed (single_transaction)
        or always rolled back (a dry run)."""
        migrator, report = self.migrator, self.report_
        record = migrator.read()
        pending = commit and migrator.plan(record.applied, self.target, self.allow_out_of_order)
        if pending:
            self.restore_point()  # a backup cannot be copied inside a write transaction
        known = bool(pending) and self.db.cheap_reads and self.known(record)
        entries, synced = self.book.ensure(migrator.read())
        steps: List[Step] = []
        ran: List[Tuple[Step, float]] = []

        def plan() -> List[Step]:  # under the target's lock
            applied = migrator.read().applied
            pending = migrator.plan(applied, self.target, self.allow_out_of_order)
            self._count_beyond(applied)
            steps.extend(self.apply_step(m) for m in pending)
            report.planned = len(steps)
            return steps

        try:
            self.db.run_all(entries, plan, commit, lambda step, ms: ran.append((step, ms)))
        except BaseException as exc:
            for index, (step, ms) in enumerate(ran, 1):
                self.report(step, index, UNDONE if commit else WOULD_APPLY, ms)
            current = steps[len(ran)] if len(ran) < len(steps) else None
            if isinstance(exc, _Stop):
                if current is not None and exc.state in _STOP_RESULTS:
                    self.report(current, len(ran) + 1, _STOP_RESULTS[exc.state], None)
                raise
            if not isinstance(exc, MigrationError):
                raise
            if isinstance(exc, MigrationFailed):
                exc = exc.with_note(
                    f"rolled back the whole run ({_opt('single_transaction')}):"
                    " nothing was applied" if commit else "dry run: nothing was changed")
            if isinstance(exc, D1Unsure):  # remote: the whole run, or none of it
                for index, step in enumerate(steps[len(ran):], len(ran) + 1):
                    self.report(step, index, UNKNOWN, None, exc)
            elif current is not None:
                self.report(current, len(ran) + 1, FAILED, None, exc)
            raise exc from None
        report.synced = synced if commit else []
        for index, (step, ms) in enumerate(ran, 1):
            self.report(step, index, APPLIED if commit else WOULD_APPLY, ms)
        if known and ran:
            self.note_schema()

    def apply_step(self, migration: Migration) -> Step:
        statements = prepare_statements(migration, "apply", self.db.d1_rules, self._warn)

        def settled() -> bool:
            applied = self.migrator.read().applied
            if migration.key in applied:
                return True
            self.migrator.plan(applied, self.target, self.allow_out_of_order,
                               done=f"{_plural(len(self.report_.having(APPLIED)), 'migration')}"
                                    " applied in this run before it")
            return False

        return Step("apply", migration.version, migration.name, migration.path, statements,
                    _leading_foreign_keys(statements),
                    lambda ms: self.book.record(migration, ms),
                    lambda ms: [self.book.set_duration(migration.version, ms)], settled,
                    self._guard(statements), migration.checksum)

    def rollback_step(self, row: AppliedRow, record: Record, version: Optional[str],
                      force: bool) -> Step:
        path = os.path.join(self.migrator.migrations_dir, DOWN_DIR, row.name + ".sql")
        # record_only removes the record alone, even when a down script exists
        exists = os.path.lexists(path) and not self.record_only
        statements: List[Tuple[int, Statement]] = []
        if exists:
            problem = _not_a_file(path)
            if problem:
                raise MigrationFileError(f"{path}: {problem[2]}. Nothing was rolled back.")
            try:
                statements = prepare_statements(
                Migration(row.version, row.name, path, key=self.book.key(row)),
                "roll back", self.db.d1_rules, self._warn)
            except MigrationFailed as exc:
                raise exc.with_note("nothing was rolled back") from None
        elif not self.record_only:
            statements = self._computed(row, record)

        def settled() -> bool:
            applied = self.migrator.read().applied
            if self.book.key(row) not in applied:
                return True  # rolled back meanwhile, or by the batch whose answer was lost
            if choose_rollback(applied, version, force, self.book.by_name) != row:
                raise MigrationError(
                    f"Another process changed the applied migrations of {self.db.name}"
                    " while this rollback started; nothing was rolled back. Run it again.")
            return False

        return Step("roll back", row.version, row.name, path if exists else None, statements,
                    _leading_foreign_keys(statements),
                    lambda ms: self.book.forget(row, record, ms), lambda ms: [], settled,
                    self._guard(statements), row.checksum or None)

    def _computed(self, row: AppliedRow, record: Record) -> List[Tuple[int, Statement]]:
        """A rollback without a down script: computed (compute_rollback)."""
        plan = compute_rollback(self.db.query, record, self.migrator.migrations(),
                                self.book.key(row), self.migrator.bookkeeping_tables())
        if plan.losses and not self.allow_data_loss:
            raise _losing(plan, row, self.report_)
        self.report_.computed = plan
        return list(enumerate(split_sql(plan.sql()), 1))

    def _guard(self, statements: List[Tuple[int, Statement]]) -> Callable:
        if self.allow_row_loss:
            return no_guard
        return guard_for(changes_of([statement for _, statement in statements]))

    def run(self, steps: List[Step], start: int, result: str, first: Sequence[Entry] = (),
            last: Optional[Callable[[], List[Entry]]] = None) -> int:
        """Steps from steps[start] through the target, as many as it commits
        together (one with commit_each), and their outcomes reported once
        they are committed; returns how many steps are done."""
        began = (time.time(), time.perf_counter())
        try:
            rest = steps[start:start + 1] if self.commit_each else steps[start:]
            ran = self.db.run(rest, first, last if start + len(rest) == len(steps) else None)
        except (MigrationError, _Stop) as exc:
            ran = Ran([], [], exc, began)
        index = start
        for step, ms in ran.done:
            index += 1
            self.report(step, index, result if ms is not None else SKIPPED, ms)
        for step, ms in ran.undone:
            index += 1
            self.report(step, index, UNDONE, ms)
        error = ran.error
        if error is None:
            return index
        step = steps[index] if index < len(steps) else None
        if isinstance(error, _Stop):
            if step is not None and error.state in _STOP_RESULTS:
                for number, step in enumerate(steps[index:index + error.steps], index + 1):
                    self.report(step, number, _STOP_RESULTS[error.state], None,
                                started=ran.began)
        elif step is not None and isinstance(error, D1Unsure):
            # remote: neither the answer nor the record says whether D1 ran it
            for number, step in enumerate(steps[index:index + error.steps], index + 1):
                self.report(step, number, UNKNOWN, None, error, started=ran.began)
        elif step is not None and isinstance(error, MigrationError):
            self.report(step, index + 1, FAILED, None, error, started=ran.began)
        raise error

    def report(self, step: Step, index: int, result: str, duration_ms: Optional[float],
               error: Optional[MigrationError] = None,
               started: "Optional[tuple[float, float]]" = None) -> None:
        """The one place an outcome becomes known: the report keeps it,
        on_outcome hears of it, and the history gets what no transaction
        of the step could tell it (a failure, an interruption).  `started`:
        when the step began, as time.time() and time.perf_counter()."""
        action = {"apply": "apply", "roll back": "rollback"}.get(step.action, step.action)
        outcome = Outcome(action, result, step.version, step.name, step.path, index,
                          self.report_.planned, duration_ms, error)
        self.report_.outcomes.append(outcome)
        # A database that cannot be written (locked, full, read-only) cannot
        # take the history either: trying would only wait out the lock again.
        unwritable = (DatabaseWriteError, DatabaseConnectError)
        if (result in (FAILED, INTERRUPTED) and not self.report_.dry_run
                and not isinstance(error, unwritable)
                and not isinstance(getattr(error, "__cause__", None), unwritable)):
            when, clock = started or (time.time(), None)
            self._tell_history(self.book.failed(
                action, "failed" if result == FAILED else "interrupted", step.version,
                step.name, step.checksum, when,
                None if clock is None else (time.perf_counter() - clock) * 1000, error))
        if self.migrator.on_outcome is not None:
            self.migrator.on_outcome(outcome)

    def _tell_history(self, entries: List[Entry]) -> None:
        """Write history entries in their own transaction.  A failure to do
        so is a warning: it must not hide what the run did."""
        try:
            self.db.write(entries)
        except _Stop:
            pass  # remote, after a stop: nothing more is sent
        except (MigrationError, sqlite3.Error) as exc:
            self._warn(f"The history of {self.db.name} could not be written: {exc}")

    def known(self, record: Record) -> bool:
        return schema_known(self.db.query, self.book, record, self.migrator.bookkeeping_tables())

    def note_schema(self) -> None:
        """After a run that began on a known schema: note the one it left
        (see note_schema).  Only where reads are cheap; a failure to note it
        only makes the next `status` replay."""
        if not self.db.cheap_reads:
            return
        try:
            self.db.ensure(self._noted_schema())
        except (MigrationError, sqlite3.Error, _Stop):
            pass

    def _noted_schema(self) -> List[Entry]:
        return note_schema(self.db.query, self.book, self.migrator.read(),
                           self.migrator.bookkeeping_tables())

    def _warn(self, warning: str) -> None:
        self.report_.warnings.append(warning)
        if self.migrator.on_warning is not None:
            self.migrator.on_warning(warning)

    def _count_beyond(self, applied: Dict[int, AppliedRow]) -> None:
        if self.target is not None:
            migrations = self.migrator.migrations()
            chosen = find_migration(self.target, migrations)
            place = {m.key: index for index, m in enumerate(migrations)}
            self.report_.beyond_target = sum(
                1 for m in migrations if m.key not in applied
                and chosen is not None and place[m.key] > place[chosen.key])

    def restore_point(self) -> None:
        """Before the first change: the copy of a local file the user asked
        for (backup), or a Time Travel bookmark of a remote D1 database
        (unless declined).  Each is a capability of its target alone."""
        report, tell = self.report_, self.migrator.on_restore_point
        if self.backup is not None:
            backup = self.backup
            report.backup = self.db.backup(  # type: ignore[attr-defined]
                None if backup is True else backup)
            if tell is not None:
                tell("backup", report.backup)
        take = getattr(self.db, "bookmark", None)
        if take is not None and self.bookmark:
            report.bookmark = take()
            report.restore_hint = self.db.restore_hint(report.bookmark)  # type: ignore
            if tell is not None:
                tell("bookmark", report.bookmark)
            self._tell_history(self.book.bookmarked(report.bookmark))


def _losing(plan: RollbackPlan, row: AppliedRow, report: RunReport) -> MigrationError:
    """The refusal of a computed rollback that would lose data; what was
    computed goes into the report with it, for a dry run to show."""
    report.computed = plan._replace(
        notes=[f"it would lose {loss}" for loss in plan.losses] + plan.notes)
    report.sql, report.subject = plan.sql(), (row.version, row.name)
    return MigrationError(
        f"The rollback computed for {row.name} (it has no down script) would lose"
        f" {'; '.join(plan.losses)}. Nothing was rolled back: pass"
        f" {_opt('allow_data_loss')} if that is meant, or write a down script")


def _plural(count: int, word: str) -> str:
    return f"{count} {word}{'' if count == 1 else 's'}"


def _baseline(migrator: Migrator, report: RunReport, version: Optional[str],
              force: bool) -> None:
    """Migrator.baseline, once its report is set up."""
    migrations = migrator.scan("Nothing was recorded.").migrations
    target = migrator.target
    if not target.open("change"):
        raise MigrationError(
            f"Database {target.name} does not exist; baseline records migrations as applied"
            " in a database that already has their effect. Nothing was recorded.")
    record = migrator.read()
    upto, todo = choose_baseline(migrations, record.applied, version, migrator.migrations_dir)
    matches = baseline_matches(target.query, upto, migrator.bookkeeping_tables(), target.name,
                               force)
    entries, report.synced = migrator.book.ensure(record)
    for m in todo:
        entries += migrator.book.baseline(m)
    report.planned = len(todo)
    try:
        target.write(entries)
    except (sqlite3.IntegrityError, D1Error) as exc:
        raise MigrationError(
            f"Recording the baseline in {target.name} failed ({exc}): another process may"
            " have applied one of these migrations meanwhile. Run status, then baseline"
            " again.") from None
    run = _Run(migrator, report)
    for index, m in enumerate(todo, 1):
        run.report(_event_step("baseline", m), index, BASELINED, None)
    if matches:
        run.note_schema()


def _accept(migrator: Migrator, report: RunReport, version: str, reason: str) -> None:
    """Migrator.accept, once its report is set up."""
    if not reason or not reason.strip():
        raise ConfigurationError(f"{_opt('reason')} is empty: say why the file was edited;"
                                 " it goes into the history")
    migrations = migrator.scan("Nothing was accepted.").migrations
    target = migrator.target
    if not target.open("change"):
        raise MigrationError(f"Database {target.name} does not exist; nothing to accept")
    record = migrator.read()
    migration, row = choose_accept(migrations, record.applied, version,
                                   migrator.migrations_dir)
    report.subject = (row.version, row.name)
    report.checksums = (row.checksum, migration.checksum)
    try:
        report.schema_effect = [
            f"{o.type} {o.name}: {kind}" for kind, o in read_schema(
                target.query, migrator.bookkeeping_tables()).differences(
                replay_schema([m for m in migrations if m.key in record.applied]))]
    except MigrationFailed as exc:
        report.warnings.append("Cannot tell what the edit changes in the schema: replaying"
                               f" the applied migrations failed ({exc})")
    report.planned = 1
    target.write(migrator.book.accept(row, migration, reason.strip()))
    run = _Run(migrator, report)
    run.report(_event_step("accept", migration), 1, ACCEPTED, None)
    if report.schema_effect == []:
        run.note_schema()


def _event_step(action: str, migration: Migration) -> Step:
    """A Step that runs nothing, for _Run.report to tell of a baseline or an
    accept as it tells of everything else."""
    return Step(action, migration.version, migration.name, migration.path, [], 0,
                None, None, None, None, migration.checksum)


# ==========================================================================
# 15. Output: what the command line shows, rendered from outcomes and
#     reports: text or JSON on stdout, errors on stderr, GitHub Actions
#     annotations and step summaries.  Writing never stops a run: a closed,
#     full or broken stdout is noted (Console.lost) and told at the end.
# ==========================================================================

STATE_MARKS = {"applied": "[X]", "pending": "[ ]", "modified": "[!]", "missing": "[?]"}
STATE_COLORS = {"applied": "32", "pending": "33", "modified": "31", "missing": "31"}
# How a progress line ends, by outcome; outcomes that end a run (failed,
# interrupted) are told by the error line instead.
PROGRESS_NOTES = {APPLIED: "", WOULD_APPLY: " (dry run)",
                  UNDONE: " (rolled back with the run)",
                  SKIPPED: " skipped: another process applied it meanwhile"}
# Settings whose command-line spelling is not --name-with-dashes.
CLI_SPELLING = {"remote": "--d1-remote", "dry_run": "--dry-run"}


def cli_spelling(name: str) -> str:
    return CLI_SPELLING.get(name) or "--" + name.replace("_", "-")


def _escape_workflow(text: str, property_value: bool = False) -> str:
    """Escape text for a GitHub Actions workflow command."""
    text = text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")
    if property_value:
        text = text.replace(":", "%3A").replace(",", "%2C")
    return text


def _markdown_cell(value: object) -> str:
    return "" if value is None else " ".join(str(value).replace("|", "\\|").splitlines())


def _one_line(text: str) -> str:
    return text.replace("\r", "\\r").replace("\n", "\\n")


def _is_tty(stream) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError, OSError):
        return False


def _write_all(raw: "io.RawIOBase", text: str, encoding: str, errors: str) -> None:
    """Unbuffered output (python -u, PYTHONUNBUFFERED) writes straight to the
    file: a write that a signal interrupts, or a pipe that takes part, returns
    short, and the text layer drops the rest without a word.  Here every
    byte goes, or the error says why."""
    if os.linesep != "\n":
        text = text.replace("\n", os.linesep)
    data = memoryview(text.encode(encoding, errors))
    while data:
        written = raw.write(data)
        if written is None:  # a non-blocking file that is full: wait for room
            time.sleep(0.01)
            continue
        data = data[written:]


class Console:
    """Where the command line's words go: text or JSON on stdout, errors on
    stderr, colour only on a terminal without NO_COLOR, GitHub Actions
    extras.  Every write goes through _write, which never raises."""

    def __init__(self, json: bool = False, quiet: bool = False, verbose: bool = False,
                 environ: Optional[Mapping[str, str]] = None):
        if environ is None:
            environ = os.environ
        self.json, self.quiet, self.verbose = json, quiet, verbose
        self.github = environ.get("GITHUB_ACTIONS") == "true"
        self.summary_path = environ.get("GITHUB_STEP_SUMMARY") or None
        self.workspace = environ.get("GITHUB_WORKSPACE") or None
        self.color = not environ.get("NO_COLOR") and environ.get("TERM") != "dumb"
        self.secrets: List[str] = []  # never printed, whatever a message says
        self.lost: Optional[str] = None  # why stdout could not be written, if it could not
        self._ticking = False
        self._flushed = 0.0
        self._stdout_tty = _is_tty(sys.stdout)
        encoding = (getattr(sys.stdout, "encoding", None) or "").lower().replace("-", "")
        self._utf8 = encoding == "utf8"
        self.ellipsis = "\u2026" if self._utf8 else "..."

    # -- writing -------------------------------------------------------------

    def _write(self, text: str, to_stderr: bool = False, flush: bool = True) -> None:
        stream = sys.stderr if to_stderr else sys.stdout
        if not to_stderr and self.lost is not None:
            return
        try:
            if stream is None:
                raise OSError("it is closed")
            raw = getattr(stream, "buffer", None)
            if isinstance(raw, io.RawIOBase):
                _write_all(raw, text, stream.encoding, stream.errors or "strict")
            else:
                stream.write(text)
                if flush:
                    stream.flush()
        except (OSError, ValueError) as exc:
            if not to_stderr:
                self._lose(exc)

    def _lose(self, exc: Exception) -> None:
        self.lost = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__

    def flush(self) -> None:
        """Push out what say() held back; a failure is noted as any write's."""
        if sys.stdout is not None and self.lost is None:
            try:
                sys.stdout.flush()
            except (OSError, ValueError) as exc:
                self._lose(exc)

    def paint(self, text: str, color: str, to_stderr: bool = False) -> str:
        if self.color and _is_tty(sys.stderr if to_stderr else sys.stdout):
            return f"\x1b[{color}m{text}\x1b[0m"
        return text

    def _end_tick(self) -> None:
        if self._ticking:
            self._write("\r\x1b[K")
            self._ticking = False

    def say(self, text: str) -> None:
        """Progress and results: stdout, unless --quiet or --json.  Flushed at
        once on a terminal; into a pipe or a CI log at most four times a
        second, so that a thousand quick migrations cost no thousand writes,
        while a slow one still shows up as it finishes."""
        if self.quiet or self.json:
            return
        self._end_tick()
        now = time.monotonic()
        flush = self._stdout_tty or now - self._flushed >= 0.25
        if flush:
            self._flushed = now
        self._write(text + "\n", flush=flush)

    def warn(self, text: str) -> None:
        if not self.quiet:
            self._write(f"{self.paint('Warning:', '33', True)} {self.redact(text)}\n", True)

    def log(self, line: str) -> None:
        self._end_tick()
        self._write(self.redact(line) + "\n", True)

    def tick(self, name: str, number: int, line: int, elapsed: float) -> None:
        """A live elapsed-time line for a long statement, on a terminal only."""
        self._ticking = True
        self._write(f"\r\x1b[K  {name}: statement {number} (line {line})"
                    f" running for {elapsed:.0f} s")

    def wants_ticks(self) -> bool:
        return not self.quiet and not self.json and self._stdout_tty

    def emit(self, payload: Dict[str, object]) -> None:
        """One JSON object on stdout; ASCII escapes where stdout is not
        UTF-8, so that it stays valid JSON whatever the encoding."""
        import json
        self._write(self.redact(json.dumps(payload, indent=2, ensure_ascii=not self._utf8))
                    + "\n")

    def redact(self, text: str) -> str:
        for secret in self.secrets:
            if secret:
                text = text.replace(secret, "***")
        return text

    def words(self, exc: MigrationError) -> str:
        """An error's message as the command line says it: its settings as
        options, on one line, with no secret in it."""
        return self.redact(_one_line(exc.message(cli_spelling)))

    def error(self, exc: MigrationError, partial: Optional[Dict[str, object]] = None) -> None:
        self._end_tick()
        if self.github:
            self.annotate(exc)
        message = self.words(exc)
        text = message if isinstance(exc, Interrupted) else \
            f"{self.paint('Error:', '31', True)} {message}"
        self._write(text + "\n", True)
        if self.json:
            self.emit({**(partial or {}), "error": self.error_payload(exc)})

    def error_payload(self, exc: MigrationError) -> Dict[str, object]:
        sql = getattr(exc, "sql", None)
        return {
            "type": type(exc).__name__,
            "message": self.words(exc),
            "migration": getattr(exc, "name", None),
            "file": getattr(exc, "path", None),
            "line": getattr(exc, "line", None),
            "statement": getattr(exc, "statement", None),
            "sql": self.redact(sql) if sql else sql,
            "exit_code": exc.exit_code,
        }

    def annotate(self, exc: MigrationError) -> None:
        """A workflow command that puts the error on the file and line in the
        pull request."""
        title = "Migration failed" if isinstance(exc, MigrationFailed) else \
            "apply_migrations.py failed"
        self.workflow_command("error", exc.message(cli_spelling), getattr(exc, "path", None),
                              getattr(exc, "line", None), title)

    def workflow_command(self, kind: str, message: str, path: Optional[str],
                         line: Optional[int], title: str) -> None:
        """`::error file=...,line=...,title=...::message`, the file relative to
        the workspace as GitHub needs it to mark the line in a pull request."""
        props = []
        if path:
            try:
                path = os.path.relpath(os.path.abspath(path), self.workspace or os.getcwd())
            except ValueError:  # another drive on Windows
                pass
            props.append(f"file={_escape_workflow(self.redact(path).replace(os.sep, '/'), True)}")
            if line:
                props.append(f"line={line}")
        props.append(f"title={_escape_workflow(title, True)}")
        self._write(f"::{kind} {','.join(props)}::{_escape_workflow(self.redact(message))}\n",
                    to_stderr=self.json)

    def step_summary(self, title: str, header: List[str], rows: List[List[object]]) -> None:
        """Append a markdown table to $GITHUB_STEP_SUMMARY, when it is set."""
        if not self.summary_path:
            return
        lines = [f"### {self.redact(title)}", "", "| " + " | ".join(header) + " |",
                 "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(self.redact(_markdown_cell(c)) for c in row) + " |"
                  for row in rows]
        try:
            with open(self.summary_path, "a", encoding="utf-8") as handle:
                handle.write("\n".join(lines) + "\n\n")
        except OSError as exc:
            self.warn(f"Cannot write GITHUB_STEP_SUMMARY {self.summary_path}: {exc.strerror}")


# What each command shows, rendered from its results.


def show_progress(console: Console, outcome: Outcome) -> None:
    """A line per migration as its outcome becomes known."""
    note = PROGRESS_NOTES.get(outcome.result)
    if note is None or outcome.action != "apply":
        return
    took = "" if outcome.result == SKIPPED else f" {format_ms(outcome.duration_ms or 0.0)}"
    console.say(f"[{outcome.position}/{outcome.total}] {outcome.name}"
                f" {console.ellipsis}{took}{note}")


def apply_payload(console: Console, report: RunReport) -> Dict[str, object]:
    def listed(results: Tuple[str, ...]) -> List[Dict[str, object]]:
        return [{"version": o.version, "name": o.name, "file": o.path,
                 "duration_ms": round(o.duration_ms or 0.0, 3)}
                for o in report.outcomes if o.result in results]

    payload: Dict[str, object] = {
        "database": report.database, "migrations_dir": report.migrations_dir,
        "dry_run": report.dry_run, "single_transaction": report.single_transaction,
        "applied": listed((APPLIED, WOULD_APPLY)),
        "outcomes": [{"version": o.version, "name": o.name, "file": o.path,
                      "result": o.result,
                      "duration_ms": None if o.duration_ms is None
                      else round(o.duration_ms, 3)} for o in report.outcomes],
    }
    if report.having(UNDONE):
        payload["rolled_back"] = listed((UNDONE,))
    if report.backup:
        payload["backup"] = report.backup
    if report.bookmark:
        payload["bookmark"] = report.bookmark
        payload["restore"] = report.restore_hint
    if report.synced:
        payload["recorded_for_wrangler"] = report.synced
    return payload


def show_apply(console: Console, report: RunReport) -> None:
    """The end of an apply, failed or not: the step summary, then the last
    line or the JSON object (an error's own line is the caller's)."""
    verb = "would apply" if report.dry_run else "applied"
    rows: List[List[object]] = [
        [o.version, o.name, "FAILED" if o.result == FAILED else o.result,
         console.words(o.error) if o.error else
         "" if o.duration_ms is None else format_ms(o.duration_ms)]
        for o in report.outcomes]
    if report.error is not None and not any(o.error for o in report.outcomes):
        rows.append(["", "", "FAILED", console.words(report.error)])
    done = report.having(APPLIED, WOULD_APPLY)
    title = (f"Migrations on {report.database}: failed" if report.error is not None else
             f"Migrations on {report.database}: {_plural(len(done), 'migration')} {verb}")
    console.step_summary(title, ["Version", "Name", "Result", "Duration"], rows)
    if report.error is not None:
        if report.bookmark and report.having(APPLIED, UNKNOWN):
            console.say(f"Before this run D1 was at Time Travel bookmark {report.bookmark};"
                        f" to go back to it: {report.restore_hint}")
        return
    show_synced(console, report)
    if console.json:
        console.emit({**apply_payload(console, report), "error": None})
        return
    skipped = report.having(SKIPPED)
    if not done and not skipped:
        console.say(_nothing_to_apply(report))
    elif report.dry_run:
        console.say(f"Dry run: {_plural(len(done), 'migration')} would apply cleanly to"
                f" {report.database}; nothing was changed.")
    else:
        mode = " in one transaction" if report.single_transaction else ""
        also = (f" {_plural(len(skipped), 'migration')} another process applied meanwhile"
                " were skipped.") if skipped else ""
        console.say(f"Applied {_plural(len(done), 'migration')}{mode} to {report.database}"
                f" in {format_ms(report.elapsed_ms)}.{also}")


def _nothing_to_apply(report: RunReport) -> str:
    ignored = (f" {_plural(report.ignored, '.sql file')} in it"
               f" {'was' if report.ignored == 1 else 'were'} ignored: see the warnings"
               " above.") if report.ignored else ""
    if report.beyond_target:
        return (f"Nothing to apply up to {cli_spelling('target')} {report.target}:"
                f" {_plural(report.beyond_target, 'migration')} after it"
                f" {'is' if report.beyond_target == 1 else 'are'} still pending in"
                f" {report.database}.{ignored}")
    return (f"Nothing to apply: {report.database} is up to date"
            f" ({_plural(report.migrations, 'migration')} in {report.migrations_dir}).{ignored}")


def show_synced(console: Console, report: RunReport) -> None:
    if report.synced and not console.json:
        console.say(f"Recorded {_plural(len(report.synced), 'migration')} applied earlier"
                f" in {report.wrangler_table} for wrangler: {', '.join(report.synced)}")


def show_status(console: Console, database: str, exists: bool, migrations_dir: str,
                states: List[MigrationStatus], drift: Optional[Drift] = None) -> Dict[str, int]:
    counts = {state: 0 for state in STATE_MARKS}
    for s in states:
        counts[s.state] += 1
    if console.json:
        console.emit({
            "database": database, "database_exists": exists,
            "migrations_dir": migrations_dir,
            "migrations": [{
                "version": s.version, "name": s.name, "file": s.path, "state": s.state,
                "checksum": s.checksum, "applied_at": s.applied_at,
                "duration_ms": s.duration_ms, "baseline": _is_baseline(s),
                "last_failure": None if _last_failure(s) is None else
                _event_payload(_last_failure(s)),  # type: ignore[arg-type]
            } for s in states],
            "summary": {**counts, "total": len(states)},
            "drift": None if drift is None else {
                "checked": drift.checked, "unknown": drift.unknown,
                "differences": [{"difference": kind, "type": o.type, "name": o.name,
                                 "table": o.table} for kind, o in drift.differences]},
        })
    else:
        console.say(f"Database:   {database}{'' if exists else ' (does not exist yet)'}")
        console.say(f"Migrations: {migrations_dir}")
        console.say("")
        width = max([len(s.name) for s in states] + [4])
        for s in states:
            detail = {
                "applied": f"applied {s.applied_at}",
                "pending": "pending",
                "modified": f"MODIFIED: applied {s.applied_at}, file changed since",
                "missing": f"MISSING: applied {s.applied_at}, file gone",
            }[s.state] + (" (baseline: recorded, not run)" if _is_baseline(s) else "")
            failure = _last_failure(s)
            if failure is not None:
                detail += (f"; its last attempt {failure.outcome} {failure.started_at}:"
                           f" {_failure_words(failure)}")
            mark = console.paint(STATE_MARKS[s.state], STATE_COLORS[s.state])
            console.say(f"{mark} {s.name:<{width}}  {detail}")
        if not states:
            console.say("(no migrations)")
        console.say("")
        console.say(", ".join(f"{state.capitalize()}: {n}" for state, n in counts.items()))
        show_drift(console, database, drift)
    console.step_summary(f"Migration status of {database}",
                      ["Version", "Name", "State", "Applied at"],
                      [[s.version, s.name, s.state, s.applied_at] for s in states])
    return counts


def _is_baseline(s: MigrationStatus) -> bool:
    return s.state != "pending" and s.last is not None and s.last.event == "baseline"


def _last_failure(s: MigrationStatus) -> Optional[HistoryEvent]:
    """The failed or interrupted attempt that left a migration pending."""
    last = s.last
    if s.state == "pending" and last is not None and last.event == "apply" \
            and last.outcome != "succeeded":
        return last
    return None


def _failure_words(event: HistoryEvent) -> str:
    where = [f"{label} {value}" for label, value in
             (("statement", event.statement), ("line", event.line)) if value is not None]
    return (event.error or event.outcome) + (f" ({', '.join(where)})" if where else "")


def _event_payload(event: HistoryEvent) -> Dict[str, object]:
    return dict(zip(HISTORY_COLUMNS, event))


def _who(event: HistoryEvent) -> str:
    who = "@".join(part for part in (event.os_user, event.host) if part)
    if event.ci_repository or event.ci_run:
        ci = " ".join(part for part in (
            event.ci_repository, event.ci_run and f"run {event.ci_run}",
            event.ci_commit and event.ci_commit[:12],
            event.ci_actor and f"by {event.ci_actor}") if part)
        who = f"{who} (GitHub Actions: {ci})" if who else f"GitHub Actions: {ci}"
    return who


def show_history(console: Console, database: str, events: List[HistoryEvent]) -> None:
    if console.json:
        console.emit({"database": database, "events": [_event_payload(e) for e in events]})
        return
    if not events:
        console.say(f"No history in {database} (or none that matches).")
        return
    for e in events:
        took = "" if e.duration_ms is None else f" {format_ms(e.duration_ms)}"
        what = e.detail if e.event == "bookmark" else e.name
        line = f"{e.started_at}  {e.event:<8}  {e.outcome:<11}  {what}{took}"
        if e.outcome != "succeeded":
            line += f": {_failure_words(e)}"
        elif e.event == "accept":
            line += f": {e.detail}"
        who = _who(e)
        console.say(line + (f"  [{who}]" if who else ""))


def show_history_stats(console: Console, database: str, per: List[HistoryStats],
                       overall: HistoryStats) -> None:
    def row(st: HistoryStats) -> Dict[str, object]:
        return {"version": st.version or None, "name": st.name or None,
                "applies": st.applies, "failures": st.failures,
                "interruptions": st.interruptions, "rollbacks": st.rollbacks,
                "success_rate": st.success_rate, "median_ms": st.median_ms,
                "slowest_ms": st.slowest_ms}

    def cells(st: HistoryStats) -> List[object]:
        return [st.name or "(all)", st.applies, st.failures, st.rollbacks,
                "-" if st.success_rate is None else f"{st.success_rate:.0%}",
                "-" if st.median_ms is None else format_ms(st.median_ms),
                "-" if st.slowest_ms is None else format_ms(st.slowest_ms)]

    header = ["Migration", "Applies", "Failures", "Rollbacks", "Success", "Median", "Slowest"]
    if console.json:
        console.emit({"database": database, "migrations": [row(st) for st in per],
                      "overall": row(overall)})
    else:
        table = [header] + [[str(c) for c in cells(st)] for st in per + [overall]]
        widths = [max(len(r[i]) for r in table) for i in range(len(header))]
        for r in table:
            console.say("  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                                  for i, (c, w) in enumerate(zip(r, widths))).rstrip())
    console.step_summary(f"Migration history of {database}", header,
                         [cells(st) for st in per + [overall]])


def show_baseline(console: Console, report: RunReport) -> None:
    names = [o.name for o in report.having(BASELINED)]
    if console.json:
        console.emit({"database": report.database, "baselined": names,
                      "recorded_for_wrangler": report.synced})
        return
    console.say(f"Recorded {_plural(len(names), 'migration')} as applied in"
                f" {report.database} without running them (baseline): {', '.join(names)}.")


def show_accept(console: Console, report: RunReport) -> None:
    version, name = report.subject
    old, new = report.checksums
    if console.json:
        console.emit({"database": report.database, "accepted": {"version": version,
                                                                "name": name},
                      "previous_checksum": old, "checksum": new,
                      "schema_differences": report.schema_effect})
        return
    console.say(f"Accepted the edited {name}: its checksum {old[:12]}… is now {new[:12]}…;"
                " the reason is in the history.")
    if report.schema_effect:
        console.say(f"Note: the applied migrations, as their files now are, no longer make"
                    f" the schema of {report.database} (status reports it as drift):")
        for difference in report.schema_effect:
            console.say(f"  {difference}")
    elif report.schema_effect == []:
        console.say("The applied migrations, as their files now are, still make the"
                    " database's schema.")


def show_drift(console: Console, database: str, drift: Optional[Drift]) -> None:
    if drift is None or (drift.checked and not drift.differences):
        return
    if not drift.checked:
        console.say(f"Drift: not checked: {drift.unknown}")
        return
    console.say(f"Drift: the schema of {database} is not what its applied migrations make:")
    for kind, o in drift.differences:
        owner = f" (on {o.table})" if o.type in ("index", "trigger") else ""
        console.say(f"  {o.type} {o.name}{owner}: {kind}")


def show_rollback(console: Console, report: RunReport, migrations_dir: str,
                  dry_run: bool = False) -> None:
    version, name = report.subject
    computed = report.computed
    notes = computed.notes if computed else []
    if console.json:
        payload: Dict[str, object] = {
            "database": report.database, "rolled_back": {"version": version, "name": name},
            "down_script": report.down_script, "computed": computed is not None,
            "statements": report.statements, "notes": notes}
        if dry_run:
            payload.update(dry_run=True, sql=report.sql)
        else:
            result = report.outcomes[-1].result
            payload.update(result=result, schema_changed=bool(report.statements)
                           and result == ROLLED_BACK)
        console.emit(payload)
        return
    if dry_run:
        source = (f"computed: {name} has no down script" if computed else
                  report.down_script or "its record alone: the schema stays as it is")
        console._write(f"-- The rollback of {name} ({source}); nothing was changed\n"
                       + "".join(f"-- Note: {note}\n" for note in notes) + report.sql)
        return
    outcome = report.outcomes[-1]
    if outcome.result == SKIPPED:
        console.say(f"Nothing rolled back: another process rolled back {name} meanwhile.")
    elif computed is not None:
        console.say(f"Rolled back {name}: ran {_plural(report.statements, 'statement')}"
                    " computed from the schema before it (it has no down script) and removed"
                    " its record.")
        for note in notes:
            console.say(f"Note: {note}")
    elif outcome.path:
        console.say(f"Rolled back {name}: ran {outcome.path}"
                    f" ({_plural(report.statements, 'statement')}) and removed its record.")
    else:
        console.say(f"Rolled back {name}: removed its record only; the schema was NOT"
                    " changed.")


def show_check(console: Console, migrations_dir: str, database: Optional[str], count: int,
               findings: List[Finding]) -> int:
    errors = sum(1 for f in findings if f.severity == "error")
    warnings = len(findings) - errors
    if console.json:
        console.emit({
            "migrations_dir": migrations_dir, "database": database,
            "findings": [f._asdict() for f in findings],
            "summary": {"files": count, "errors": errors, "warnings": warnings},
        })
    for f in findings:
        where = f"{f.path}:{f.line}" if f.line else f.path
        color = "31" if f.severity == "error" else "33"
        console.say(f"{where}: {console.paint(f.severity, color)}: {f.message} [{f.code}]")
        if console.github:
            console.workflow_command(f.severity, f.message, f.path, f.line,
                                  f"D1 check ({f.code})")
    console.say(f"{_plural(count, 'migration')} checked: {_plural(errors, 'error')},"
             f" {_plural(warnings, 'warning')}.")
    return errors


# ==========================================================================
# 16. Command line: the parser, one function per command, main().  Each
#     command gets the resolved Options and a Console, calls the engine, and
#     returns an exit code; main() turns MigrationError into one line.
# ==========================================================================

NEW_FILE_HEADER = """\
-- Migration number: {number} \u23f1\ufe0f {timestamp}
-- {description}
-- Environment: D1 (Cloudflare SQLite)

"""


def _migrator(options: Options, console: Console) -> Migrator:
    if options.remote is not None:
        console.secrets.append(options.remote.token)
    return Migrator.from_options(
        options, log=console.log if options.verbose else None,
        on_slow_statement=console.tick if console.wants_ticks() else None,
        on_outcome=lambda outcome: show_progress(console, outcome),
        on_restore_point=lambda kind, value: console.say(
            f"Backed up {options.db_path} to {value}" if kind == "backup" else
            f"D1 Time Travel bookmark before this run: {value}"),
        on_warning=console.warn)


@contextmanager
def _stop_on_signals(migrator: Migrator) -> Iterator[None]:
    """Ctrl-C and SIGTERM ask the migrator to stop at its next safe point
    (it rolls back what is in progress and raises Interrupted)."""
    import threading
    if threading.current_thread() is not threading.main_thread():
        yield  # only the main thread may set handlers; a caller's thread keeps its own
        return
    previous = {signum: signal.signal(signum, lambda signum, frame: migrator.request_stop(signum))
                for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def cmd_init(options: Options, console: Console) -> int:
    with _migrator(options, console) as migrator:
        report = migrator.init()
    if console.json:
        console.emit({"database": report.database, "table": TRACKING_TABLE,
                      "created": report.created, "recorded_for_wrangler": report.synced})
        return EXIT_OK
    if report.created:
        console.say(f"Initialized {TRACKING_TABLE} in {report.database}")
    elif not report.synced:
        console.say(f"{TRACKING_TABLE} already exists in {report.database}; nothing to do")
    show_synced(console, report)
    return EXIT_OK


def cmd_status(options: Options, console: Console) -> int:
    with _migrator(options, console) as migrator:
        states = migrator.status()
        drift = None if options.no_drift else migrator.drift()
        exists = options.remote is not None or os.path.exists(options.db_path)
        counts = show_status(console, migrator.database, exists, migrator.migrations_dir, states,
                             drift)
    if options.exit_code and (counts["pending"] or counts["modified"] or counts["missing"]
                              or (drift and drift.differences)):
        return EXIT_FAILED
    return EXIT_OK


def cmd_apply(options: Options, console: Console) -> int:
    with _migrator(options, console) as migrator, _stop_on_signals(migrator):
        try:
            report = migrator.apply(
                options.target, allow_out_of_order=options.allow_out_of_order,
                single_transaction=options.single_transaction, dry_run=options.dry_run,
                backup=options.backup, bookmark=options.bookmark,
                allow_row_loss=options.allow_row_loss, commit_each=options.commit_each)
        except MigrationError as exc:
            if exc.report is not None:
                show_apply(console, exc.report)
            raise
        _keep_schema_file(options, migrator, console)
        # Still under the handlers: a signal now, with the work done, must
        # not cut the report short or call it interrupted.
        show_apply(console, report)
    return EXIT_OK


def cmd_rollback(options: Options, console: Console) -> int:
    with _migrator(options, console) as migrator, _stop_on_signals(migrator):
        try:
            report = migrator.rollback(options.version, force=options.force,
                                       bookmark=options.bookmark,
                                       allow_row_loss=options.allow_row_loss,
                                       allow_data_loss=options.allow_data_loss,
                                       record_only=options.record_only, dry_run=options.dry_run)
        except MigrationError as exc:
            # A dry run refused for the data it would lose still shows what
            # it computed, for review (text only: JSON holds one object).
            if options.dry_run and not console.json and exc.report and exc.report.sql:
                show_rollback(console, exc.report, options.migrations_dir, dry_run=True)
            raise
        _keep_schema_file(options, migrator, console)
        show_rollback(console, report, options.migrations_dir, options.dry_run)  # (as apply)
    return EXIT_OK


def cmd_history(options: Options, console: Console) -> int:
    with _migrator(options, console) as migrator:
        events = migrator.history(options.version, options.event, options.outcome,
                                  options.since, options.limit)
        database = migrator.database
    if options.stats:
        per, overall = history_stats(events)
        show_history_stats(console, database, per, overall)
    else:
        show_history(console, database, events)
    return EXIT_OK


def cmd_baseline(options: Options, console: Console) -> int:
    with _migrator(options, console) as migrator:
        report = migrator.baseline(options.version, force=options.force)
    show_baseline(console, report)
    return EXIT_OK


def cmd_accept(options: Options, console: Console) -> int:
    with _migrator(options, console) as migrator:
        report = migrator.accept(str(options.version), str(options.reason or ""))
    for warning in report.warnings:
        console.warn(warning)
    show_accept(console, report)
    return EXIT_OK


def _write_file(path: str, text: str, what: str) -> None:
    """Write a file whole or not at all (a temporary file renamed over it)."""
    folder = os.path.dirname(path) or "."
    temporary = os.path.join(folder, f".{os.path.basename(path)}.{os.getpid()}.tmp")
    try:
        with open(temporary, "w", encoding="utf-8", newline="\n") as handle:
            handle.write(text)
        os.replace(temporary, path)
    except OSError as exc:
        try:
            os.remove(temporary)
        except OSError:
            pass
        raise MigrationError(f"Cannot write {what} {path}: {exc.strerror}") from None


def _keep_schema_file(options: Options, migrator: Migrator, console: Console) -> None:
    """apply and rollback --schema-file: the database's schema after them."""
    if options.schema_file and not options.dry_run:
        _write_file(options.schema_file, render_schema(migrator.schema()), "the schema file")
        console.say(f"Wrote the schema of {migrator.database} to {options.schema_file}")


def cmd_schema(options: Options, console: Console) -> int:
    with _migrator(options, console) as migrator:
        schema = migrator.schema(options.from_migrations)
        source = "the migrations" if options.from_migrations else migrator.database
    text = render_schema(schema, "json" if options.json else options.schema_format)
    if options.output:
        _write_file(options.output, text, "the schema file")
        if not options.json:
            console.say(f"Wrote the schema of {source} to {options.output}")
    else:
        console._write(text)
    return EXIT_OK


def cmd_check(options: Options, console: Console) -> int:
    migrations, findings = check_folder(options.migrations_dir,
                                        options.wrangler_table is not None)
    findings += drop_findings(migrations)
    findings += down_findings(migrations, options.migrations_dir)
    if options.schema_file:
        findings += _schema_file_findings(options.schema_file, migrations)
    database = None
    if options.check_database:
        with _migrator(options, console) as migrator:
            database = migrator.database
            for s in migrator.status(migrations):
                if s.state == "modified":
                    findings.append(Finding(
                        "error", s.path or s.name, None, "modified",
                        f"applied to {database} on {s.applied_at}, changed since; restore"
                        " it and put the change in a new migration"))
    findings.sort(key=lambda f: (f.path, f.line or 0))
    errors = show_check(console, options.migrations_dir, database, len(migrations), findings)
    return EXIT_FAILED if errors else EXIT_OK


def _schema_file_findings(path: str, migrations: List[Migration]) -> List[Finding]:
    """check --schema-file: the file must hold the schema the migrations make."""
    again = (f"write it with: python apply_migrations.py schema --from-migrations"
             f" --output {path}")
    try:
        expected = render_schema(replay_schema(migrations))
    except MigrationFailed as exc:
        return [Finding("error", path, None, "schema-file",
                        f"the schema the migrations make cannot be learned: {exc}")]
    try:
        with open(path, encoding="utf-8", newline="") as handle:
            written = handle.read()
    except OSError as exc:
        return [Finding("error", path, None, "schema-file",
                        f"cannot read it ({exc.strerror}); {again}")]
    if written.replace("\r\n", "\n") == expected:
        return []
    import difflib
    changed = [line for line in difflib.unified_diff(
        written.splitlines(), expected.splitlines(), lineterm="", n=0)
        if line[:1] in "+-" and not line.startswith(("+++", "---"))]
    shown = "; ".join(changed[:3]) + (f" (and {len(changed) - 3} more lines)"
                                      if len(changed) > 3 else "")
    return [Finding("error", path, None, "schema-file",
                    f"it is not the schema the migrations make ({shown}); {again}")]


def slugify(description: str) -> str:
    """"Add user indexes!" -> "add_user_indexes"."""
    return re.sub(r"[\W_]+", "_", description.lower()).strip("_")


def cmd_new_down(options: Options, console: Console) -> int:
    """new --down VERSION: the computed down script, written for review."""
    with _migrator(options, console) as migrator:
        migrations = migrator.migrations()
    migration = find_migration(str(options.down), migrations)
    if migration is None:
        raise ConfigurationError(f"{_opt('down')} {options.down}: no migration in"
                                 f" {options.migrations_dir} has that version or name")
    plan = down_script_plan(migrations, migration.key)
    folder = os.path.join(options.migrations_dir, DOWN_DIR)
    path = os.path.join(folder, migration.filename)
    text = (f"-- Down script of {migration.name}, computed by apply_migrations.py from the"
            " schema before it: review it before you commit it.\n"
            + "".join(f"-- Note: {note}\n" for note in plan.notes) + plan.sql())
    try:
        os.makedirs(folder, exist_ok=True)
        with open(path, "x", encoding="utf-8", newline="\n") as handle:
            handle.write(text)
    except FileExistsError:
        raise MigrationFileError(f"{path} already exists; not overwriting it") from None
    except OSError as exc:
        raise ConfigurationError(f"Cannot write {path}: {exc.strerror}") from None
    if console.json:
        console.emit({"file": path, "version": migration.version, "name": migration.name,
                      "statements": len(plan.statements), "notes": plan.notes})
    elif not console.quiet:
        console._write(path + "\n")
    return EXIT_OK


def cmd_new(options: Options, console: Console) -> int:
    if options.down is not None:
        if options.description:
            raise ConfigurationError(f"new {_opt('down')} writes a down script and takes no"
                                     " description")
        return cmd_new_down(options, console)
    description = options.description
    if not description:
        raise ConfigurationError('new: give the new migration a description ("Add user'
                                 f' indexes"), or pass {_opt("down")} VERSION')
    slug = slugify(description)
    if not slug:
        raise ConfigurationError(
            f"new: the description {description!r} has no letters or digits to name the file")
    folder = options.migrations_dir
    if os.path.isdir(folder):
        # Every number in front of a .sql file counts, also of a misnamed or
        # duplicate one: a number is never reused.
        numbers = scan_folder(folder, options.wrangler_table is not None).numbers
    else:
        try:
            os.makedirs(folder)
        except OSError as exc:
            raise ConfigurationError(
                f"Cannot create the migrations folder {folder}: {exc.strerror}") from None
        numbers = []
    number = f"{max(numbers, default=0) + 1:04d}"
    path = os.path.join(folder, f"{number}_{slug}.sql")
    header = NEW_FILE_HEADER.format(number=number, timestamp=utc_now(),
                                    description=" ".join(description.split()))
    try:
        with open(path, "x", encoding="utf-8", newline="\n") as handle:
            handle.write(header)
    except FileExistsError:
        raise MigrationFileError(f"{path} already exists; not overwriting it") from None
    except OSError as exc:
        raise ConfigurationError(
            f"Cannot create {path}: {exc.strerror}; use a shorter description") from None
    if console.json:
        console.emit({"file": path, "version": number, "name": f"{number}_{slug}"})
    elif not console.quiet:
        console._write(path + "\n")
    return EXIT_OK


class UsageError(SystemExit):
    """argparse's complaint about the command line, kept for --json."""

    def __init__(self, message: str):
        self.message = message
        super().__init__(EXIT_USAGE)


class HelpFormatter(argparse.HelpFormatter):
    """argparse's formatter, sized as shutil.get_terminal_size would size it,
    without importing shutil (see Start-up in the module docstring)."""

    def __init__(self, prog: str, **options) -> None:
        if options.get("width") is None:
            try:
                columns = int(os.environ["COLUMNS"])
            except (KeyError, ValueError):
                try:
                    columns = os.get_terminal_size(sys.__stdout__.fileno()).columns
                except (AttributeError, ValueError, OSError):
                    columns = 80
            options["width"] = columns - 2
        super().__init__(prog, **options)


class ArgumentParser(argparse.ArgumentParser):
    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str):
        self.print_usage(sys.stderr)
        text = f"{self.prog}: error: {message}"
        print(text, file=sys.stderr)
        raise UsageError(text)


def _add_change_options(command: argparse.ArgumentParser, whose: str, when: str) -> None:
    """The options that apply and rollback share (they change the schema);
    `whose` statements run, `when` foreign keys are checked."""
    command.add_argument("--allow-row-loss", action="store_true",
                         help=f"let {whose} foreign-key ON DELETE actions take rows from"
                              " tables it does not name (refused by default)")
    command.add_argument("--no-bookmark", action="store_true",
                         help="with --d1-remote: do not take a Time Travel bookmark first")
    command.add_argument("--foreign-keys", action="store_true",
                         help=f"enforce foreign keys as D1 does {when}"
                              " (the default with --wrangler-config)")
    command.add_argument("--no-foreign-keys", action="store_true",
                         help="with --wrangler-config: do not enforce them (D1 does)")
    command.add_argument("--schema-file", metavar="FILE",
                         help="then write the database's schema to FILE (as `schema` does)")


def build_parser() -> argparse.ArgumentParser:
    # argparse's own words stay English, as the tool's are (Start-up).
    argparse._ = str  # type: ignore[attr-defined]
    output = ArgumentParser(add_help=False)
    output.add_argument("--json", action="store_true",
                        help="print one JSON object on stdout and nothing else there")
    output.add_argument("--quiet", "-q", action="store_true", help="print errors only")
    output.add_argument("--verbose", "-v", action="store_true",
                        help="log each statement with its timing to stderr;"
                             " show tracebacks")
    folder = ArgumentParser(add_help=False)
    folder.add_argument("--migrations-dir", metavar="DIR",
                        help="folder of NNNN_description.sql files (default: ./migrations,"
                             " or the wrangler config's migrations_dir)")
    folder.add_argument("--wrangler-config", metavar="FILE",
                        help="wrangler.toml, wrangler.json or wrangler.jsonc: use its D1"
                             " database's local file, migrations_dir and migrations_table"
                             " (implies --wrangler)")
    folder.add_argument("--database", metavar="NAME",
                        help="with --wrangler-config: the D1 database's binding or"
                             " database_name (needed when there are several)")
    folder.add_argument("--persist-to", metavar="DIR",
                        help="with --wrangler-config: wrangler's --persist-to folder"
                             " (default: .wrangler/state beside the config)")
    folder.add_argument("--wrangler-env", metavar="NAME",
                        help="with --wrangler-config: the D1 databases of the config's"
                             " environment NAME (as wrangler --env NAME)")
    common = ArgumentParser(add_help=False, parents=[output, folder])
    common.add_argument("--env", choices=("dev", "production"), default="dev",
                        help=f"dev: ./{DEFAULT_DB_PATH}; production: the path in"
                             f" ${DB_PATH_VARIABLE} (default: dev)")
    common.add_argument("--db-path", metavar="PATH",
                        help="database file; overrides --env")
    common.add_argument("--lock-timeout", metavar="SECONDS", type=float,
                        default=DEFAULT_LOCK_TIMEOUT,
                        help="how long to wait for another process's write lock"
                             " (default: 60)")
    common.add_argument("--wrangler", action="store_true",
                        help=f"also keep wrangler's {WRANGLER_TABLE} table in step, in the"
                             " same transaction as each migration")
    common.add_argument("--wrangler-table", metavar="NAME",
                        help=f"as --wrangler, with this table instead of {WRANGLER_TABLE}")
    remote = common.add_argument_group(
        "remote D1", f"--d1-remote reads {D1_ACCOUNT_VARIABLE}, {D1_DATABASE_VARIABLE}"
                     f" and {D1_TOKEN_VARIABLE} from the environment")
    remote.add_argument("--d1-remote", action="store_true",
                        help="work on the remote Cloudflare D1 database over its HTTP API")
    remote.add_argument("--api-base", metavar="URL",
                        help=f"the API's base URL (default: ${D1_API_BASE_VARIABLE}, else"
                             f" {D1_API_BASE})")
    remote.add_argument("--http-timeout", metavar="SECONDS", type=float,
                        default=DEFAULT_HTTP_TIMEOUT,
                        help="how long to wait for each answer from D1 (default: 30)")
    remote.add_argument("--http-retries", metavar="N", type=int,
                        default=DEFAULT_HTTP_RETRIES,
                        help="retries of requests that are safe to repeat (default: 4)")

    parser = ArgumentParser(
        prog="apply_migrations.py",
        description="Schema migrations for SQLite and Cloudflare D1.",
        epilog="Exit codes: 0 success, 1 a migration or check failed, 2 usage or"
               " configuration error, 130 interrupted. See MIGRATION_SYSTEM.md.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.required = True

    init = commands.add_parser("init", parents=[common],
                               help="create the database and the tracking table")
    init.set_defaults(handler=cmd_init)

    status = commands.add_parser("status", parents=[common],
                                 help="show applied, pending, modified and missing migrations")
    status.add_argument("--exit-code", action="store_true",
                        help="exit 1 when anything is pending, modified or missing, or the"
                             " schema has drifted")
    status.add_argument("--no-drift", action="store_true",
                        help="do not compare the schema with what the migrations make")
    status.set_defaults(handler=cmd_status)

    apply = commands.add_parser("apply", parents=[common],
                                help="apply the pending migrations in order")
    apply.add_argument("--target", metavar="VERSION",
                       help="apply up to and including this version")
    apply.add_argument("--allow-out-of-order", action="store_true",
                       help="apply pending migrations numbered below the highest applied one")
    apply.add_argument("--single-transaction", action="store_true",
                       help="apply all pending migrations in one transaction: all or nothing")
    apply.add_argument("--commit-each", action="store_true",
                       help="commit after each migration (default: group commit, a commit"
                            f" every {GROUP_COMMIT_SECONDS:g} s; on D1, consecutive small"
                            " migrations in one request)")
    apply.add_argument("--dry-run", action="store_true",
                       help="run the pending migrations in a transaction that is rolled back")
    apply.add_argument("--backup", metavar="PATH", nargs="?", const=True,
                       help="copy the database first (default: beside it, with a UTC"
                            " timestamp in the name)")
    _add_change_options(apply, "a migration's", "and check them after each migration")
    apply.set_defaults(handler=cmd_apply)

    rollback = commands.add_parser("rollback", parents=[common],
                                   help="roll back one applied migration (default: the latest)")
    rollback.add_argument("--version", metavar="VERSION", dest="version",
                          help="0001, 0001_initial_schema or 0001_initial_schema.sql")
    rollback.add_argument("--force", action="store_true",
                          help="roll back even though later migrations are applied")
    rollback.add_argument("--dry-run", action="store_true",
                          help="print what would run (the down script, or the statements"
                               " computed without one) and change nothing")
    rollback.add_argument("--allow-data-loss", action="store_true",
                          help="let a rollback computed without a down script drop tables"
                               " or columns that hold data")
    rollback.add_argument("--record-only", action="store_true",
                          help="remove the record alone, leaving the schema as it is")
    _add_change_options(rollback, "the down script's", "while rolling back")
    rollback.set_defaults(handler=cmd_rollback)

    check = commands.add_parser(
        "check", parents=[output, folder],
        help="report what Cloudflare D1 would reject in the migrations (no database needed)")
    check.add_argument("--db-path", metavar="PATH",
                       help="also report applied migrations modified since, in this database")
    check.add_argument("--env", choices=("dev", "production"), default=None,
                       help="as --db-path, the database of this environment")
    check.add_argument("--lock-timeout", metavar="SECONDS", type=float,
                       default=DEFAULT_LOCK_TIMEOUT, help=argparse.SUPPRESS)
    check.add_argument("--schema-file", metavar="FILE",
                       help="also report when FILE is not the schema the migrations make")
    check.set_defaults(handler=cmd_check)

    schema = commands.add_parser(
        "schema", parents=[common],
        help="print the schema of the database, or that the migrations make")
    schema.add_argument("--from-migrations", action="store_true",
                        help="replay the migration files in memory instead (no database)")
    schema.add_argument("--format", dest="schema_format", choices=SCHEMA_FORMATS,
                        default="sql", help="sql (default), json, markdown or mermaid")
    schema.add_argument("--output", metavar="FILE", help="write it to FILE instead of stdout")
    schema.set_defaults(handler=cmd_schema)

    history = commands.add_parser(
        "history", parents=[common],
        help="list what happened: every apply, failure, rollback, baseline and accept")
    history.add_argument("--version", metavar="VERSION", dest="version",
                         help="only this migration (0001, or its name)")
    history.add_argument("--event", choices=HISTORY_EVENTS, help="only this kind of event")
    history.add_argument("--outcome", choices=HISTORY_OUTCOMES, help="only this outcome")
    history.add_argument("--since", metavar="WHEN",
                         help="only events since a UTC date or time (2026-12-01,"
                              " 2026-12-01T08:00) or an age (90m, 24h, 7d)")
    history.add_argument("--limit", metavar="N", type=int, help="at most N events, newest first")
    history.add_argument("--stats", action="store_true",
                         help="per migration and overall: applies, failures, rollbacks,"
                              " success rate, median and slowest duration")
    history.set_defaults(handler=cmd_history)

    baseline = commands.add_parser(
        "baseline", parents=[common],
        help="record migrations as applied without running them, for a database that"
             " already has their effect")
    baseline.add_argument("--version", metavar="VERSION", dest="version",
                          help="up to and including this migration (default: all)")
    baseline.add_argument("--force", action="store_true",
                          help="record them even though the schema is not what they make")
    baseline.set_defaults(handler=cmd_baseline)

    accept = commands.add_parser(
        "accept", parents=[common],
        help="record the new checksum of an applied migration whose file was edited on"
             " purpose")
    accept.add_argument("version", metavar="VERSION", help="0001, or the migration's name")
    accept.add_argument("--reason", metavar="TEXT", required=True,
                        help="why the file was edited (kept in the history)")
    accept.set_defaults(handler=cmd_accept)

    new = commands.add_parser("new", parents=[output, folder],
                              help="create the next NNNN_description.sql")
    new.add_argument("description", nargs="*", help='e.g. "Add user indexes"')
    new.add_argument("--down", metavar="VERSION",
                     help="instead: write migrations/down/<name>.sql for this migration,"
                          " computed from the schema before it")
    new.set_defaults(handler=cmd_new)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    """Run the command line; return the exit code."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.reconfigure(errors="backslashreplace")  # type: ignore[union-attr]
        except (AttributeError, ValueError):
            pass
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, or a usage error argparse printed
        code = exc.code if isinstance(exc.code, int) else EXIT_USAGE
        if isinstance(exc, UsageError) and "--json" in (sys.argv[1:] if argv is None else argv):
            # Scripts asked for JSON: give them the error as an object too.
            console = Console(json=True)
            console.emit({"error": console.error_payload(ConfigurationError(exc.message))})
        return code
    values = vars(args)
    if isinstance(values.get("description"), list):
        values["description"] = " ".join(values["description"]).strip()
    console = Console(json=args.json, quiet=args.quiet, verbose=args.verbose)
    try:
        try:
            code = args.handler(resolve_options(values, os.environ), console)
        except sqlite3.Error as exc:
            raise MigrationError(
                f"SQLite error: {exc} (rerun with --verbose for a traceback)") from exc
    except MigrationError as exc:
        if console.verbose:
            import traceback
            traceback.print_exc()
        report = exc.report
        console.error(exc, apply_payload(console, report)
                      if report is not None and report.action == "apply" else None)
        code = exc.exit_code
    except KeyboardInterrupt:
        console._write("Interrupted\n", True)
        code = EXIT_INTERRUPTED
    console.flush()
    if console.lost is not None:
        console._write(f"Error: Cannot write to standard output ({console.lost}); the command"
                       f" ran to its end{'' if code else ' and succeeded'}, but its output is"
                       " lost\n", True)
        _detach_stdout()
        code = code or EXIT_FAILED
    return code


def _detach_stdout() -> None:
    """Point stdout at the null device, so that Python's final flush of a
    broken pipe prints no traceback (as Python's documentation advises)."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (AttributeError, OSError, ValueError):
        pass


if __name__ == "__main__":
    sys.exit(main())
