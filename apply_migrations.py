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

From the folder that holds this file, ``python -m apply_migrations`` runs the
same commands from cached bytecode, without compiling the whole file again
on every run (as the Makefile and the CI steps do).

--wrangler-config keeps wrangler's own record in step on its local D1 file;
--d1-remote does all of this on a Cloudflare D1 database over its HTTP API.

Standard library only; Python 3.8 or newer.  MIGRATION_SYSTEM.md is the manual.
"""
from __future__ import annotations

import argparse
import hashlib
import os
import re
import signal
import sqlite3
import sys
import time
from collections import namedtuple
from contextlib import contextmanager

# Hints are for type checkers only (annotations stay strings, see the
# __future__ import): importing typing would cost every start about 2 ms.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Callable, Dict, Iterator, List, Optional, Tuple

__version__ = "1.0.0"

# Where the tool keeps its own record of what ran.
TRACKING_TABLE = "schema_migrations"
TRACKING_COLUMNS = ("version", "name", "checksum", "applied_at", "duration_ms")

# <digits>_<description>.sql; the digits, as written, are the version.
MIGRATION_FILENAME = re.compile(r"([0-9]+)_(.+)\.sql\Z", re.DOTALL)
VERSION_TEXT = re.compile(r"[0-9]+\Z")
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

UTF8_BOM = b"\xef\xbb\xbf"
TRANSACTION_KEYWORDS = frozenset(
    ("BEGIN", "COMMIT", "END", "ROLLBACK", "SAVEPOINT", "RELEASE")
)

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
SQL_TABLE_COLUMNS = "SELECT name FROM pragma_table_info(?)"


# --------------------------------------------------------------------------
# Errors: the core raises these; main() turns them into one line and an exit
# code.


class MigrationError(Exception):
    """A failure reported to the user as one line."""

    exit_code = EXIT_FAILED


class ConfigurationError(MigrationError):
    """A bad option or environment: nothing was touched."""

    exit_code = EXIT_USAGE


class DatabaseConnectError(MigrationError):
    """The database could not be opened or is not a SQLite database."""

    exit_code = EXIT_USAGE

    def __init__(self, reason: str):
        super().__init__(f"Failed to connect to database: {reason}")


class DatabaseWriteError(MigrationError):
    """SQLite refused a write for a reason outside the migration (locked,
    read-only, disk full)."""


class CommitFailed(MigrationError):
    """COMMIT refused a transaction (a deferred foreign key); it was rolled back."""


class TrackingTableError(MigrationError):
    """The tracking table exists but is not one this tool can trust."""


class MigrationFileError(MigrationError):
    """A migration file or folder is unusable (name, encoding, duplicates)."""


class MigrationFailed(MigrationError):
    """A migration could not be applied or rolled back; it left nothing."""

    def __init__(self, name: str, path: str, reason: str,
                 statement: Optional[int] = None, line: Optional[int] = None,
                 sql: Optional[str] = None, action: str = "apply"):
        self.name = name
        self.path = path
        self.reason = reason
        self.statement = statement
        self.line = line
        self.sql = sql
        self.action = action
        self.note: Optional[str] = None  # what happened to the rest of the run
        super().__init__(reason)

    def __str__(self) -> str:
        where = [os.path.basename(self.path)]
        if self.statement is not None:
            where.append(f"statement {self.statement}")
        if self.line is not None:
            where.append(f"line {self.line}")
        note = f"; {self.note}" if self.note else ""
        return (f"Failed to {self.action} migration {self.name}: {self.reason}"
                f" ({', '.join(where)}){note}")


class Interrupted(MigrationError):
    """SIGINT or SIGTERM arrived; the current migration was rolled back."""

    def __init__(self, signum: int):
        self.signum = signum
        self.current: Optional[str] = None  # the migration that was rolled back
        self.applied = 0  # committed in this run before the signal
        self.whole_run = False  # True: one transaction held the whole run
        self.uncertain: Optional[str] = None  # a remote migration in flight
        self.rolling_back: Optional[str] = None  # the migration a rollback was undoing
        super().__init__("interrupted")

    @property
    def exit_code(self) -> int:  # type: ignore[override]
        return 128 + self.signum

    def __str__(self) -> str:
        done = f"{self.applied} migration{'s' if self.applied != 1 else ''}"
        if self.rolling_back:
            return (f"Interrupted: the rollback of {self.rolling_back} was undone;"
                    " it is still applied")
        if self.whole_run:
            return f"Interrupted: the whole run was rolled back; {done} applied in this run"
        if self.uncertain:
            return (f"Interrupted while {self.uncertain} was on its way to D1: D1 applied"
                    f" it wholly or not at all, and `status` shows which; {done} applied"
                    " before it in this run")
        if self.current:
            return f"Interrupted: {self.current} rolled back; {done} applied in this run"
        return f"Interrupted: {done} applied in this run"


class SQLSplitError(ValueError):
    """The SQL text ends inside a string, comment or trigger body."""

    def __init__(self, reason: str, offset: int, line: int):
        self.reason = reason
        self.offset = offset
        self.line = line
        super().__init__(f"{reason} (line {line})")


class InvalidUTF8(SQLSplitError):
    """The file's bytes are not UTF-8."""


# --------------------------------------------------------------------------
# Small data types.


# Named tuples with their field types in the docstring (typing.NamedTuple
# would import typing at every start).


class Statement(namedtuple("Statement", "sql line keyword start end")):
    """One SQL statement: its text (str), the line it starts on (int), its
    upper-cased first word ("CREATE", "BEGIN"; "" if none) and its start and
    end offsets in the file's text (int)."""

    __slots__ = ()


class AppliedRow(namedtuple("AppliedRow", TRACKING_COLUMNS)):
    """A tracking row: version, name, checksum, applied_at (str) and
    duration_ms (float)."""

    __slots__ = ()


if TYPE_CHECKING:
    # Tracking rows by the number of their version: "0001" and "1" are one
    # migration, so renaming 0001_x.sql to 1_x.sql does not make it pending.
    Applied = Dict[int, AppliedRow]


class MigrationStatus(namedtuple(
        "MigrationStatus", "version name path state checksum applied_at duration_ms")):
    """One migration as status shows it: version, name (str); path (None when
    the file is gone); state: applied, pending, modified or missing; checksum:
    the file's, or the recorded one when the file is gone; applied_at and
    duration_ms (None unless applied)."""

    __slots__ = ()


class RollbackResult(namedtuple("RollbackResult", "row down_path statements")):
    """What a rollback undid: the AppliedRow, the down file that ran (None:
    only the record was removed) and how many statements it had."""

    __slots__ = ()


# --------------------------------------------------------------------------
# Splitting SQL the way SQLite does.  The state machine is the one of
# sqlite3_complete() (SQLite's complete.c): a statement ends at a ';' outside
# quotes and comments, except inside CREATE [TEMP] TRIGGER, which ends only at
# a ';' that follows "; END".  Long stretches without a ';', quote or comment
# are consumed by one regular-expression step, so splitting is linear in the
# size of the text, and sqlite3.complete_statement confirms every piece.
# Most statements never meet that scanner: complete_statement, which is
# complete.c itself, is asked first about the next few ';'.

# Identifier characters as complete.c counts them (letters, digits, _, $ and
# everything beyond ASCII), written as "not the other ASCII characters": the
# same set, but a hundred times cheaper for `re` to compile than a range up to
# U+10FFFF, which matters for start-up.
_ID_CHAR = r"^\x00-\x23\x25-\x2f\x3a-\x40\x5b-\x5e\x60\x7b-\x7f"
_COMMENT = r"--[^\n]*(?:\n|\Z)|/\*[^*]*\*+(?:[^/*][^*]*\*+)*/"
_SPACE = r"[ \t\n\f\r]+"
_GAP = re.compile(rf"(?:{_SPACE}|{_COMMENT}|;)*")
# The scanner's patterns (_BODY to _TRIGGER_END) stay text until a statement
# needs the scanner (re caches what it compiles): most runs never do, and
# compiling them costs a millisecond of every start.
# Up to a few hundred tokens per match: `re` keeps a backtracking mark for
# each repetition, so an unbounded `*` over a quote-heavy 1 MB statement
# would hold ten times its size; _skip_body loops instead.
_BODY = (
    rf"""(?:[^;'"`\[/\-]+|'[^']*'|"[^"]*"|`[^`]*`|\[[^\]]*\]|{_COMMENT}|/(?!\*)|-(?!-)){{0,256}}"""
)
_HEAD_TOKEN = (
    rf"""(?s)(?:{_SPACE}|{_COMMENT})+|[{_ID_CHAR}]+|'[^']*'|"[^"]*"|`[^`]*`|\[[^\]]*\]|[^;]"""
)
# One whitespace character per step: with `[ \t\n\f\r]+` inside the `*`, a
# failed match would retry every way of cutting a run of blanks (exponential).
# ("[Ee][Nn][Dd]" rather than IGNORECASE, which is slow to compile here.)
# The head of a statement, read at once: its first word, and whether CREATE
# [TEMP] TRIGGER opens it (one blank at a time for the same reason as below).
_FIRST_WORD = re.compile(rf"[{_ID_CHAR}]+")
_TRIGGER_HEAD = (
    rf"[Cc][Rr][Ee][Aa][Tt][Ee](?:[ \t\n\f\r]|{_COMMENT}"
    rf"|[Tt][Ee][Mm][Pp](?:[Oo][Rr][Aa][Rr][Yy])?(?![{_ID_CHAR}]))*?"
    rf"(?<![{_ID_CHAR}])[Tt][Rr][Ii][Gg][Gg][Ee][Rr](?![{_ID_CHAR}])"
)
_TRIGGER_END = (
    rf"(?:[ \t\n\f\r;]|{_COMMENT})*[Ee][Nn][Dd](?![{_ID_CHAR}])(?:[ \t\n\f\r]|{_COMMENT})*(;|\Z)"
)
_IDENTIFIER = rf"[{_ID_CHAR}]+\Z"
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
    body = re.compile(_BODY)
    while True:
        end = body.match(text, pos).end()
        if end == pos or end >= n or text[end] == ";":
            return end
        pos = end


# How many of the ';' after a statement's head are put to SQLite's own
# complete.c before the scanner takes over: enough for nearly every statement,
# few enough that a statement full of ';' in strings costs a bounded few scans.
_COMPLETE_TRIES = 8


def _statement_by_sqlite(text: str, start: int, pos: int) -> Optional[str]:
    """The statement starting at start, through its ';', found by asking
    sqlite3.complete_statement about each next ';' in turn: the first that
    completes the text ends the statement, at C speed.  None when the
    statement has no ';' of its own or too many inside it; the scanner then
    finds the end, or the unterminated string, comment or trigger."""
    semicolon = text.find(";", pos)
    for _ in range(_COMPLETE_TRIES):
        if semicolon < 0:
            return None
        candidate = text[start:semicolon + 1]
        if sqlite3.complete_statement(candidate):
            return candidate
        semicolon = text.find(";", semicolon + 1)
    return None


def _line_at(text: str, offset: int) -> int:
    return text.count("\n", 0, offset) + 1


def _unterminated(text: str, pos: int) -> SQLSplitError:
    return SQLSplitError(_UNTERMINATED[text[pos]], pos, _line_at(text, pos))


def _end_by_scanning(text: str, start: int) -> int:
    """The end of the statement starting at start, read token by token the
    way complete.c reads it; raises SQLSplitError where the text ends inside
    a string, identifier, comment or trigger body."""
    n = len(text)
    pos = start
    state = _START
    head_token = re.compile(_HEAD_TOKEN)
    first_word = _FIRST_WORD.match(text, pos)
    word = first_word.group().lower() if first_word else ""
    if first_word and word != "explain":
        # The common case at once: any first word but EXPLAIN decides.
        trigger = re.compile(_TRIGGER_HEAD).match(text, pos) if word == "create" else None
        state = _TRIGGER if trigger else _NORMAL
        pos = trigger.end() if trigger else first_word.end()
    # Otherwise read tokens while they can still make this a CREATE TRIGGER.
    while state not in (_NORMAL, _TRIGGER) and pos < n and text[pos] != ";":
        token = head_token.match(text, pos).group()
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
    if state == _TRIGGER:
        while True:
            pos = _skip_body(text, pos)
            if pos >= n:
                raise SQLSplitError("CREATE TRIGGER has no END", start, _line_at(text, start))
            if text[pos] != ";":
                raise _unterminated(text, pos)
            pos += 1
            end_match = re.compile(_TRIGGER_END).match(text, pos)
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
        complete = text[start:end]
    else:
        end = n
        complete = text[start:end] + "\n;"
    if not sqlite3.complete_statement(complete):
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
        keyword = first_word.group().upper() if first_word else ""
        sql = _statement_by_sqlite(text, start, first_word.end() if first_word else start)
        if sql is None:
            sql = text[start:_end_by_scanning(text, start)]
        end = start + len(sql)
        line += text.count("\n", counted, start)
        counted = start
        statements.append(Statement(sql, line, keyword, start, end))
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


def quote_identifier(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def utc_now() -> str:
    # Not time.strftime: its locale round trip costs 5 us a call, a tracking row each.
    return "%04d-%02d-%02dT%02d:%02d:%02dZ" % time.gmtime()[:6]


class Migration:
    """One migration file.  Its bytes are read once, when first needed."""

    __slots__ = ("version", "number", "name", "path", "_data", "_checksum")

    def __init__(self, version: str, name: str, path: str):
        self.version = version
        self.number = int(version)
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

    def statements(self) -> List[Statement]:
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
            raise MigrationFailed(self.name, self.path, exc.reason, line=exc.line) from None

    def __repr__(self) -> str:
        return f"Migration({self.name!r})"


def _read_file(path: str) -> bytes:
    try:
        with open(path, "rb") as handle:
            return handle.read()
    except OSError as exc:
        raise MigrationFileError(f"Cannot read {path}: {exc.strerror}") from None


def discover(migrations_dir: str) -> "tuple[List[Migration], List[str]]":
    """The migrations in a folder, ordered by number, and warnings.

    Only files directly in the folder count.  Two files with the same number
    are an error; a *.sql file whose name does not fit the pattern is a
    warning; anything else is ignored.
    """
    try:
        entries = sorted(os.scandir(migrations_dir), key=lambda e: e.name)
    except FileNotFoundError:
        raise ConfigurationError(
            f"Migrations folder {migrations_dir} does not exist;"
            " create it or pass --migrations-dir"
        ) from None
    except NotADirectoryError:
        raise ConfigurationError(
            f"Migrations folder {migrations_dir} is not a folder; pass --migrations-dir"
        ) from None
    except OSError as exc:
        raise ConfigurationError(
            f"Cannot read migrations folder {migrations_dir}: {exc.strerror}"
        ) from None
    migrations: List[Migration] = []
    warnings: List[str] = []
    by_number: Dict[int, Migration] = {}
    for entry in entries:
        if not entry.name.lower().endswith(".sql") or not entry.is_file():
            continue
        match = MIGRATION_FILENAME.match(entry.name)
        if not match:
            warnings.append(
                f"Ignoring {os.path.join(migrations_dir, entry.name)}: the name does"
                " not match NNNN_description.sql"
            )
            continue
        if not _is_utf8_name(entry.name):
            raise MigrationFileError(
                f"The file name {os.path.join(migrations_dir, entry.name)!r} is not valid"
                " UTF-8, so it cannot be recorded; rename the file. Nothing was applied.")
        migration = Migration(
            match.group(1), entry.name[:-4], os.path.join(migrations_dir, entry.name)
        )
        twin = by_number.get(migration.number)
        if twin is not None:
            raise MigrationFileError(
                f"Two migrations have the number {migration.number}: {twin.filename}"
                f" and {migration.filename}; renumber one of them. Nothing was applied."
            )
        by_number[migration.number] = migration
        migrations.append(migration)
    migrations.sort(key=lambda m: m.number)
    return migrations, warnings


def _is_utf8_name(name: str) -> bool:
    """False for a file name whose bytes are not UTF-8 (Python decodes them
    to lone surrogates, which neither SQLite nor JSON can store)."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


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
            " wait for it to finish or raise --lock-timeout"
        )
    if "readonly" in lowered or "read-only" in lowered:
        return DatabaseWriteError(
            f"Cannot write to database {db_path} ({message}); check the permissions"
            " of the file and of its folder"
        )
    if "disk is full" in lowered:
        return DatabaseWriteError(
            f"Cannot write to database {db_path} ({message}); the disk or the database"
            " size limit was reached, nothing of the current migration was kept"
        )
    if "disk i/o error" in lowered:
        return DatabaseWriteError(
            f"Cannot write to database {db_path} ({message}); the disk failed to read"
            " or write, nothing of the current migration was kept: check the disk"
        )
    if "not a database" in lowered or "malformed" in lowered:
        return DatabaseConnectError(f"{db_path} is not a usable SQLite database ({message})")
    if "unable to open" in lowered:
        return DatabaseConnectError(f"cannot open {db_path} ({message})")
    return None


# --------------------------------------------------------------------------
# wrangler's configuration: where its local D1 database and migrations are.


class WranglerDatabase(namedtuple(
        "WranglerDatabase", "name database_id db_path migrations_dir migrations_table")):
    """One D1 database of a wrangler config: the binding or database_name it
    was chosen by, the remote database's id ("" when the config has none), the
    local SQLite file `wrangler ... --local` uses, its migrations folder and
    tracking table (all str)."""

    __slots__ = ()


# Patterns only `check` and the wrangler config readers use stay text until
# then (re caches what it compiles): the script is started for every command,
# and compiling them all would cost a millisecond of each start.
_JSONC_COMMENT = r'(?s)"(?:\\.|[^"\\])*"|//[^\n]*|/\*.*?\*/'
_JSONC_TRAILING_COMMA = r'"(?:\\.|[^"\\])*"|,(?=\s*[}\]])'


def _parse_jsonc(text: str) -> dict:
    """JSON with comments and trailing commas, as wrangler.jsonc allows.
    Comments go first, so that a comma before a comment counts as trailing."""
    import json

    def keep_strings(match):
        return match.group(0) if match.group(0).startswith('"') else ""

    text = re.sub(_JSONC_COMMENT, keep_strings, text)
    return json.loads(re.sub(_JSONC_TRAILING_COMMA, keep_strings, text))


_TOML_KEY_VALUE = (
    r"""\s*([A-Za-z0-9_-]+)\s*=\s*("(?:\\.|[^"\\])*"|'[^']*'|true|false|[-+0-9.]+)\s*(?:#.*)?\Z""")


def _parse_toml_subset(text: str) -> dict:
    """The part of wrangler.toml this tool needs, for Pythons without tomllib
    (3.8 to 3.10): top-level keys and [[d1_databases]] tables of plain values."""
    import json
    root: dict = {}
    current: Optional[dict] = root
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("["):
            header = re.sub(r"\s+", "", line.split("#", 1)[0])
            if header == "[[d1_databases]]":
                current = {}
                root.setdefault("d1_databases", []).append(current)
            else:
                current = None  # a section this tool does not read
            continue
        if current is None:
            continue
        match = re.match(_TOML_KEY_VALUE, line)
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
    try:
        if path.endswith(".toml"):
            try:
                import tomllib  # Python 3.11+  # novm
            except ImportError:
                return _parse_toml_subset(text)
            return tomllib.loads(text)
        return _parse_jsonc(text)
    except ValueError as exc:  # json and tomllib errors both derive from it
        raise ConfigurationError(f"Cannot parse wrangler config {path}: {exc}") from None


def miniflare_object_id(name: str) -> str:
    """The Durable Object id miniflare names a local D1 database's file after
    (its idFromName for the D1DatabaseObject namespace)."""
    import hmac
    key = hashlib.sha256(b"miniflare-D1DatabaseObject").digest()
    first = hmac.new(key, name.encode("utf-8"), hashlib.sha256).digest()[:16]
    return (first + hmac.new(key, first, hashlib.sha256).digest()[:16]).hex()


def wrangler_database(config_path: str, database: Optional[str] = None,
                      persist_to: Optional[str] = None) -> WranglerDatabase:
    """Find a D1 database of a wrangler config, by binding or database_name."""
    config = read_wrangler_config(config_path)
    entries = [e for e in config.get("d1_databases") or [] if isinstance(e, dict)]
    if database is not None:
        chosen = [e for e in entries if database in (e.get("binding"), e.get("database_name"))]
    else:
        chosen = entries if len(entries) == 1 else []
    names = ", ".join(str(e.get("binding") or e.get("database_name")) for e in entries)
    if not chosen:
        if database is None and entries:
            raise ConfigurationError(
                f"{config_path} has several D1 databases ({names}); choose one with --database")
        raise ConfigurationError(
            f"{config_path} has no D1 database {database or ''}".rstrip()
            + (f" (it has: {names})" if names else " ([[d1_databases]] is empty)"))
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
        os.path.join(folder, entry.get("migrations_dir") or DEFAULT_MIGRATIONS_DIR),
        entry.get("migrations_table") or WRANGLER_TABLE,
    )


# --------------------------------------------------------------------------
# What Cloudflare D1 rejects or treats differently, found before deploy.

D1_MAX_STATEMENT_BYTES = 100_000
# D1 authorizes only these PRAGMAs (checked against D1's engine) and answers
# "not authorized" to the rest (journal_mode, user_version, synchronous, ...).
D1_PRAGMAS = frozenset((
    "foreign_keys", "defer_foreign_keys", "foreign_key_check", "foreign_key_list",
    "table_info", "table_xinfo", "table_list", "index_info", "index_xinfo",
    "index_list", "quick_check", "optimize", "case_sensitive_like",
    "recursive_triggers", "legacy_alter_table", "ignore_check_constraints",
    "reverse_unordered_selects",
))
# Text until `check` runs, as the wrangler config patterns above.
# check's patterns read a statement whose comments are spaces (_without_comments).
# A name as SQL spells it: quoted, or a bare word.
_SQL_NAME = r'(?:"[^"]*(?:""[^"]*)*"|`[^`]*(?:``[^`]*)*`|\[[^\]]*\]|[^\s.;(]+)'
_PRAGMA_NAME = rf"(?i)PRAGMA\s+(?:{_SQL_NAME}\s*\.\s*)?[\"`\[]?(\w+)"
# Every spelling SQLite reads as "off" (sqlite3GetBoolean), quoted or not.
_FOREIGN_KEYS_OFF = (
    rf"(?i)PRAGMA\s+(?:{_SQL_NAME}\s*\.\s*)?[\"`\[]?foreign_keys[\"`\]]?\s*(?:=\s*|\(\s*)"
    r"(['\"]?)(?:0+|off|false|no)\1\s*\)?\s*;?\s*\Z")
_TEMP_OBJECT = (
    r"(?i)CREATE\s+(?:TEMP(?:ORARY)?\s+(TABLE|VIEW|TRIGGER)\b"
    r"|(?:UNIQUE\s+|VIRTUAL\s+)?(TABLE|VIEW|TRIGGER|INDEX)\s+(?:IF\s+NOT\s+EXISTS\s+)?"
    r"[\"`\[]?temp[\"`\]]?\s*\.)")
# Quoted text is matched whole, so that a comment marker inside it is text.
_QUOTED_OR_COMMENT = (r"""'[^']*(?:''[^']*)*'|"[^"]*(?:""[^"]*)*"|`[^`]*(?:``[^`]*)*`"""
                      rf"|\[[^\]]*\]|({_COMMENT})")
# The only wrapper wrangler removes: exactly this text, case and all.
WRANGLER_WRAPPER = ("BEGIN TRANSACTION;", "COMMIT;")
_CF_RESERVED_NAME = (
    r"(?i)(?:CREATE\s+(?:TEMP\s+|TEMPORARY\s+)?(?:UNIQUE\s+)?(?:VIRTUAL\s+)?"
    r"(?:TABLE|INDEX|VIEW|TRIGGER)\s+(?:IF\s+NOT\s+EXISTS\s+)?"
    rf"|ALTER\s+TABLE\s+(?:{_SQL_NAME}\s*\.\s*)?{_SQL_NAME}\s+RENAME\s+TO\s+)"
    r"(?:[\w\"`\[\]]+\s*\.\s*)?[\"`\[]?(_cf_\w*)")


class Finding(namedtuple("Finding", "severity path line code message")):
    """One problem `check` found: severity ("error" or "warning"), path, line
    (None for the whole file), code and message: where, how bad, and what to
    do."""

    __slots__ = ()


def check_statements(path: str, statements: List[Statement]) -> List[Finding]:
    """The D1 findings in one file's statements."""
    findings: List[Finding] = []

    def add(severity: str, statement: Statement, code: str, message: str) -> None:
        findings.append(Finding(severity, path, statement.line, code, message))

    wrapped = (len(statements) >= 2 and statements[0].keyword == "BEGIN"
               and statements[-1].keyword in ("COMMIT", "END"))
    exact_wrapper = wrapped and (statements[0].sql, statements[-1].sql) == WRANGLER_WRAPPER
    for index, statement in enumerate(statements):
        keyword, sql = statement.keyword, statement.sql
        words = _without_comments(sql) if keyword in ("PRAGMA", "CREATE", "ALTER") else sql
        if keyword in TRANSACTION_KEYWORDS:
            if wrapped and index in (0, len(statements) - 1) and exact_wrapper:
                add("warning", statement, "transaction-wrapper",
                    f"{keyword} around the whole file: D1 rejects it, but this tool"
                    " and wrangler remove exactly this wrapper before sending the file")
            elif wrapped and index in (0, len(statements) - 1):
                add("error", statement, "transaction-statement",
                    f"{keyword} around the whole file: D1 rejects it, and wrangler removes"
                    " only the exact text `BEGIN TRANSACTION;` ... `COMMIT;`; drop the"
                    " wrapper (each migration already runs in a transaction)")
            else:
                add("error", statement, "transaction-statement",
                    f"{keyword} is rejected by D1, which runs each migration in its own"
                    " transaction; remove it")
        elif keyword == "PRAGMA":
            name = re.match(_PRAGMA_NAME, words)
            if name and name.group(1).lower() not in D1_PRAGMAS:
                add("error", statement, "unauthorized-pragma",
                    f"PRAGMA {name.group(1).lower()} is not authorized on D1;"
                    " remove it")
            elif re.match(_FOREIGN_KEYS_OFF, words):
                add("error", statement, "foreign-keys-off",
                    "PRAGMA foreign_keys = OFF has no effect on D1, which always enforces"
                    " foreign keys (a DROP TABLE of a parent can delete child rows);"
                    " use PRAGMA defer_foreign_keys = ON instead")
        elif keyword in ("ATTACH", "DETACH", "VACUUM"):
            add("error", statement, "unauthorized-statement",
                f"{keyword} is not authorized on D1; remove it")
        size = len(sql.encode("utf-8"))
        if size > D1_MAX_STATEMENT_BYTES:
            add("error", statement, "statement-too-long",
                f"the statement is {size:,} bytes; D1 refuses statements over"
                f" {D1_MAX_STATEMENT_BYTES:,} bytes, split it (e.g. one INSERT per"
                " batch of rows)")
        temporary = re.match(_TEMP_OBJECT, words) if keyword == "CREATE" else None
        if temporary:
            kind = (temporary.group(1) or temporary.group(2)).upper()
            add("error", statement, "temporary-object",
                f"D1 does not allow TEMP {kind}s; create a regular one, or drop it at"
                " the end of the migration")
        reserved = re.match(_CF_RESERVED_NAME, words) if keyword in ("CREATE", "ALTER") else None
        if reserved:
            add("error", statement, "reserved-name",
                f"the name {reserved.group(1)} starts with _cf_, which D1 reserves;"
                " rename it")
    if statements and not is_terminated(statements[-1]):
        add("error", statements[-1], "missing-semicolon",
            "the last statement has no ';': wrangler appends its own INSERT to the file"
            " and the migration fails on D1; end it with ';'")
    return findings


def _without_comments(sql: str) -> str:
    """sql with each comment made one space, as SQLite reads it."""
    if "--" not in sql and "/*" not in sql:
        return sql
    return re.sub(_QUOTED_OR_COMMENT, lambda m: " " if m.group(1) else m.group(0), sql)


def is_terminated(statement: Statement) -> bool:
    """Whether a statement ends with its own ';' (only the last one of a file
    may not; a ';' inside its trailing comment does not count)."""
    return statement.sql.endswith(";") and sqlite3.complete_statement(statement.sql)


def check_folder(migrations_dir: str) -> "tuple[List[Migration], List[Finding]]":
    """Every finding in a migrations folder: names, numbers, encoding, SQL
    that D1 rejects.  Reads files only; needs no database."""
    findings: List[Finding] = []
    try:
        names = sorted(os.listdir(migrations_dir))
    except OSError as exc:
        raise ConfigurationError(
            f"Cannot read migrations folder {migrations_dir}: {exc.strerror}") from None
    migrations: List[Migration] = []
    by_number: Dict[int, Migration] = {}
    for name in names:
        path = os.path.join(migrations_dir, name)
        if not name.lower().endswith(".sql") or not os.path.isfile(path):
            continue
        match = MIGRATION_FILENAME.match(name)
        if not match or not _is_utf8_name(name):
            findings.append(Finding(
                "error", path, None, "bad-name",
                "the name does not match NNNN_description.sql: apply_migrations.py"
                " ignores it, but wrangler would try to apply it; rename it"))
            continue
        migration = Migration(match.group(1), name[:-4], path)
        twin = by_number.get(migration.number)
        if twin is not None:
            findings.append(Finding(
                "error", path, None, "duplicate-number",
                f"the number {migration.number} is also used by {twin.filename};"
                " renumber one of them"))
            continue
        by_number[migration.number] = migration
        migrations.append(migration)
        try:
            statements = split_sql(decode_sql(migration.data))
        except SQLSplitError as exc:
            code = "invalid-utf8" if isinstance(exc, InvalidUTF8) else "incomplete-sql"
            findings.append(Finding("error", path, exc.line, code, exc.reason))
            continue
        findings.extend(check_statements(path, statements))
    migrations.sort(key=lambda m: m.number)
    return migrations, findings


# --------------------------------------------------------------------------
# The Migrator: owns the connection, knows nothing of argparse or stdout.


# A migration's statements ready to run, each with its 1-based number in the file.
if TYPE_CHECKING:
    Prepared = List[Tuple[int, Statement]]


class ApplyResult(namedtuple("ApplyResult", "applied backup_path")):
    """The Migrations applied in this run (with dry_run: what would be), and
    the backup's path (None without one)."""

    __slots__ = ()


_FOREIGN_KEYS_PRAGMA = re.compile(r"PRAGMA\s+(?:main\s*\.\s*)?foreign_keys\b", re.IGNORECASE)
SLOW_STATEMENT_SECONDS = 2.0


class Migrator:
    """Applies, inspects and rolls back the migrations of one folder on one
    SQLite database.

    Every migration runs in one transaction together with its tracking row:
    if any statement fails, its changes are rolled back, no record is written
    and the migration stays pending.  Reads (status) never write, and never
    create the database file or the tracking table.

    Output goes only through the optional callbacks: ``log`` gets one line per
    statement with its timing, ``on_slow_statement`` is called a few times a
    second while one statement has run longer than two seconds.
    """

    def __init__(
        self,
        db_path: str,
        migrations_dir: str = DEFAULT_MIGRATIONS_DIR,
        *,
        lock_timeout: float = DEFAULT_LOCK_TIMEOUT,
        foreign_keys: bool = False,
        wrangler_table: Optional[str] = None,
        log: Optional[Callable[[str], None]] = None,
        on_slow_statement: Optional[Callable[[str, int, int, float], None]] = None,
    ):
        self.db_path = db_path
        self.migrations_dir = migrations_dir
        self.lock_timeout = lock_timeout
        self.foreign_keys = foreign_keys
        self.log = log
        self.on_slow_statement = on_slow_statement
        self.warnings: List[str] = []
        self.synced: List[str] = []  # recorded for wrangler after the fact
        self.table = quote_identifier(TRACKING_TABLE)
        # With a wrangler table, wrangler's record is kept in step with ours.
        self.wrangler_table = wrangler_table
        self._wrangler = quote_identifier(wrangler_table) if wrangler_table else None
        self._sql_insert = SQL_INSERT_APPLIED.format(table=self.table)
        self._sql_insert_wrangler = SQL_INSERT_WRANGLER.format(table=self._wrangler)
        self._conn: Optional[sqlite3.Connection] = None
        self._migrations: Optional[List[Migration]] = None
        self._stop_signal: Optional[int] = None
        self._data_version: Optional[int] = None
        self._applied: Applied = {}  # as last read, inside the write lock
        self._foreign_keys_default = 0
        # What the progress handler reports while a statement runs long.
        self._running: Optional[tuple] = None
        self._next_tick = 0.0

    # -- connection and transactions ------------------------------------

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def __enter__(self) -> "Migrator":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def _connect(self, readonly: bool = False, memory: bool = False
                 ) -> Optional[sqlite3.Connection]:
        """Open the database; None when reading one that does not exist.

        memory opens an empty in-memory database instead (a dry run against
        a database that does not exist yet must not create it).
        """
        if self._conn is not None:
            return self._conn
        path = self.db_path
        if os.path.isdir(path):
            raise DatabaseConnectError(f"{path} is a directory, not a database file")
        if readonly and not os.path.exists(path):
            return None
        # Also for a dry run's in-memory stand-in: a real run would stop here.
        folder = os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(folder):
            raise DatabaseConnectError(
                f"the folder {os.path.dirname(path) or folder} of database {path}"
                " does not exist"
            )
        if memory:
            target = ":memory:"
        else:
            # Read-write, which never creates the database, where read-only
            # would leave something behind: a journal left by a crash must be
            # rolled back before anything can be read; and reading a WAL
            # database creates -wal and -shm files, which only a read-write
            # connection removes when it closes last.  Either way only reads
            # are issued.
            leaves_files = readonly and (
                os.path.exists(path + "-journal")
                or (_in_wal_mode(path) and not os.path.exists(path + "-wal")))
            target = _sqlite_uri(path, "rw" if leaves_files else "ro" if readonly else "rwc")
        try:
            conn = sqlite3.connect(
                target,
                uri=not memory,
                isolation_level=None,  # we issue BEGIN/COMMIT/ROLLBACK ourselves
                timeout=self.lock_timeout,
                check_same_thread=False,
                # Migration statements run once each: caching them only costs.
                cached_statements=0,
            )
        except sqlite3.Error as exc:
            raise DatabaseConnectError(f"cannot open {path} ({exc})") from None
        try:
            # Waits for a lock happen in _wait_for_lock, where Ctrl-C is
            # noticed: SQLite's own wait would hold it until the wait ends.
            busy_ms = conn.execute("PRAGMA busy_timeout").fetchone()[0]
            conn.execute("PRAGMA busy_timeout = 0")
            # Reading the schema surfaces "file is not a database" here, once,
            # instead of in the middle of a command.
            self._wait_for_lock("SELECT count(*) FROM sqlite_master", conn)
            if self.foreign_keys and not readonly:
                conn.execute("PRAGMA foreign_keys = ON")
            self._foreign_keys_default = conn.execute("PRAGMA foreign_keys").fetchone()[0]
            if readonly:
                # A reader's few short queries after this one wait as SQLite
                # waits, up to lock_timeout.
                conn.execute(f"PRAGMA busy_timeout = {busy_ms}")
        except sqlite3.Error as exc:
            conn.close()
            raise _describe_sqlite_error(exc, path) or DatabaseConnectError(
                f"cannot read {path} ({exc})"
            ) from None
        except BaseException:
            conn.close()
            raise
        conn.set_progress_handler(self._progress, PROGRESS_STEPS)
        self._conn = conn
        return conn

    @contextmanager
    def transaction(self, immediate: bool = False, commit: bool = True
                    ) -> Iterator[sqlite3.Connection]:
        """BEGIN, yield, COMMIT; ROLLBACK on any exception (Ctrl-C too), re-raise.

        IMMEDIATE takes the write lock at BEGIN, waiting up to lock_timeout,
        so what is read inside cannot change before this transaction ends.
        With commit=False the block is always rolled back (a dry run).
        """
        conn = self._conn
        assert conn is not None
        if immediate:
            self._wait_for_lock("BEGIN IMMEDIATE")
        else:
            self._execute_admin("BEGIN")
        try:
            yield conn
            # Inside the try: a COMMIT that fails (a deferred foreign key, a
            # lock that outlasts lock_timeout) leaves the transaction open.
            if commit:
                try:
                    self._wait_for_lock("COMMIT")
                except sqlite3.Error as exc:
                    raise CommitFailed(f"{exc} at COMMIT") from exc
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        if not commit:
            self._execute_admin("ROLLBACK")

    def _wait_for_lock(self, sql: str, conn: Optional[sqlite3.Connection] = None) -> None:
        """BEGIN IMMEDIATE or COMMIT, the two statements that wait for other
        connections (a writer; readers finishing), and the first read,
        retried for up to lock_timeout in short steps.  The writing
        connection has no busy timeout of its own: SQLite's wait would hold
        a Ctrl-C until it ends, this one notices it within milliseconds.
        (Inside the write lock nothing else waits: SQLite does not fail a
        statement whose cache spill finds readers, it keeps the pages in
        memory.)"""
        execute = (conn or self._conn).execute  # type: ignore[union-attr]
        deadline: Optional[float] = None
        pause = 0.001
        while True:
            try:
                execute(sql)
                return
            except sqlite3.OperationalError as exc:
                if not _is_busy(exc):
                    raise _describe_sqlite_error(exc, self.db_path) or exc from None
            if deadline is None:
                deadline = time.monotonic() + self.lock_timeout
            self.check_stop()
            if time.monotonic() >= deadline:
                raise self._lock_timeout_error()
            time.sleep(min(pause, max(0.0, deadline - time.monotonic())))
            pause = min(pause * 2, 0.05)

    def _lock_timeout_error(self) -> DatabaseWriteError:
        return DatabaseWriteError(
            f"Database {self.db_path} stayed locked by another process for"
            f" {self.lock_timeout:g} s (--lock-timeout); nothing of the current"
            " migration was kept. Retry when the other migration run or program"
            " has finished.")

    def _execute_admin(self, sql: str, params: tuple = ()) -> sqlite3.Cursor:
        """Run the tool's own SQL; database-level failures become one clear error."""
        try:
            return self._conn.execute(sql, params)  # type: ignore[union-attr]
        except sqlite3.Error as exc:
            if self._stop_signal is not None:
                raise Interrupted(self._stop_signal) from None
            described = _describe_sqlite_error(exc, self.db_path)
            if described is None:
                raise
            if "locked" in str(exc):
                described = self._lock_timeout_error()
            raise described from None

    # -- interruption and progress ------------------------------------------

    def request_stop(self, signum: int) -> None:
        """Signal handler: stop at the next safe point.

        It only takes note: a running statement is aborted by SQLite's
        progress handler, and the loops check between statements and
        between migrations, so the migration in progress is rolled back and
        one that has committed is counted as applied.  Later signals change
        nothing.
        """
        if self._stop_signal is None:
            self._stop_signal = signum

    def check_stop(self) -> None:
        if self._stop_signal is not None:
            raise Interrupted(self._stop_signal)

    def _progress(self) -> bool:
        """SQLite's progress handler: True aborts the running statement."""
        if self._stop_signal is not None:
            return True
        if self._running is not None:
            now = time.perf_counter()
            if now >= self._next_tick:
                self._next_tick = now + 0.25
                name, number, line, started = self._running
                self.on_slow_statement(name, number, line, now - started)  # type: ignore[misc]
        return False

    # -- reading -------------------------------------------------------------

    def migrations(self) -> List[Migration]:
        if self._migrations is None:
            self._migrations, warnings = discover(self.migrations_dir)
            self.warnings.extend(warnings)
        return self._migrations

    def _read_applied(self) -> Optional[Applied]:
        """The tracking rows by version; None when there is no tracking table.

        In wrangler mode, migrations recorded only by wrangler count as
        applied too, with an empty checksum (wrangler keeps none).
        """
        applied = self._read_own_rows()
        if self._wrangler is None:
            return applied
        wrangler_rows = self._read_wrangler_rows()
        if wrangler_rows is None:
            return applied
        applied = applied if applied is not None else {}
        for name, applied_at in wrangler_rows.items():
            match = MIGRATION_FILENAME.match(name)
            if match and int(match.group(1)) not in applied:
                applied[int(match.group(1))] = AppliedRow(
                    match.group(1), name[:-4], "",
                    str(applied_at).replace(" ", "T") + "Z", 0.0)
        return applied

    def _read_wrangler_rows(self) -> Optional[Dict[str, str]]:
        """wrangler's tracking rows, name -> applied_at; None if no table."""
        if not self._fetch(SQL_TABLE_COLUMNS, (self.wrangler_table,)):
            return None
        try:
            return dict(self._fetch(SQL_SELECT_WRANGLER.format(table=self._wrangler)))
        except (sqlite3.Error, MigrationError) as exc:
            raise TrackingTableError(
                f"Table {self.wrangler_table} in {self.db_path} is not wrangler's"
                f" migrations table ({exc}); nothing was changed") from None

    def _fetch(self, sql: str, params: tuple = ()) -> List[tuple]:
        """Rows of one read query: the primitive a remote target replaces."""
        return self._conn.execute(sql, params).fetchall()  # type: ignore[union-attr]

    def _read_own_rows(self) -> Optional[Applied]:
        columns = tuple(row[0] for row in self._fetch(SQL_TABLE_COLUMNS, (TRACKING_TABLE,)))
        if not columns:
            return None
        if columns != TRACKING_COLUMNS:
            raise TrackingTableError(
                f"Table {TRACKING_TABLE} in {self.db_path} has the columns"
                f" ({', '.join(columns)}), not ({', '.join(TRACKING_COLUMNS)});"
                " another tool or a hand edit made it (dbmate and golang-migrate use"
                " the same name). Nothing was changed; migrate this database with"
                " the tool that owns the table, or rename the table."
            )
        applied: Applied = {}
        for raw in self._fetch(SQL_SELECT_APPLIED.format(table=self.table)):
            row = AppliedRow(*raw)
            if not isinstance(row.version, str) or not VERSION_TEXT.match(row.version) \
                    or None in raw:
                raise TrackingTableError(
                    f"Table {TRACKING_TABLE} in {self.db_path} has an invalid row"
                    f" {tuple(raw)!r}: version must be digits and no column may be"
                    " empty. Nothing was changed; fix or delete that row by hand."
                )
            twin = applied.get(int(row.version))
            if twin is not None:
                raise TrackingTableError(
                    f"Table {TRACKING_TABLE} in {self.db_path} records version"
                    f" {int(row.version)} twice ({twin.name}, {row.name}); nothing was"
                    " changed. Delete the wrong row by hand."
                )
            applied[int(row.version)] = row
        return applied

    def _refresh_applied(self) -> bool:
        """Inside the write lock: re-read the tracking rows if another
        connection has committed since they were last read (PRAGMA
        data_version changes then); True if it had."""
        version = self._conn.execute("PRAGMA data_version").fetchone()[0]  # type: ignore[union-attr]
        if version == self._data_version:
            return False
        self._data_version = version
        self._applied = self._read_applied() or {}
        return True

    def status(self) -> List[MigrationStatus]:
        """Every migration's state, files and records merged, by number.

        Read-only: a missing database stays missing, and no table is created.
        """
        migrations = self.migrations()
        applied: Applied = {}
        if self._connect(readonly=True) is not None:
            applied = self._read_applied() or {}
        result = []
        for m in migrations:
            row = applied.pop(m.number, None)
            if row is None:
                result.append(MigrationStatus(m.version, m.name, m.path, "pending",
                                              m.checksum, None, None))
            else:
                state = "applied" if row.checksum in ("", m.checksum) else "modified"
                result.append(MigrationStatus(m.version, m.name, m.path, state,
                                              m.checksum, row.applied_at, row.duration_ms))
        for row in applied.values():
            result.append(MigrationStatus(row.version, row.name, None, "missing",
                                          row.checksum, row.applied_at, row.duration_ms))
        result.sort(key=lambda s: (int(s.version), s.name))
        return result

    def exists(self) -> bool:
        """Whether the database is there (status says when it is not)."""
        return os.path.exists(self.db_path)

    @staticmethod
    def find(version: str, candidates):
        """The item of candidates (each with .version and .name) that version
        names: "0001", "1", "0001_initial_schema" or "0001_initial_schema.sql"."""
        wanted = os.path.basename(version[:-4] if version.endswith(".sql") else version)
        for item in candidates:
            if wanted == item.name or wanted == item.version:
                return item
        if VERSION_TEXT.match(wanted):
            for item in candidates:
                if int(item.version) == int(wanted):
                    return item
        return None

    def plan(self, applied: Applied, target: Optional[str] = None,
             allow_out_of_order: bool = False) -> List[Migration]:
        """The migrations to apply, in order, after the checks that must pass
        before any of them runs: nothing applied was modified, nothing pending
        is numbered below what is applied, the target exists."""
        migrations = self.migrations()
        modified = [m for m in migrations if m.number in applied
                    and applied[m.number].checksum not in ("", m.checksum)]
        if modified:
            raise MigrationFileError(
                "Applied migrations were modified since they were applied:"
                f" {', '.join(m.name for m in modified)}. Nothing was applied. Restore"
                " each file as it was applied (git checkout -- <file>) and put the"
                " change in a new migration; `status` lists them as modified."
            )
        pending = [m for m in migrations if m.number not in applied]
        if target is not None:
            chosen = self.find(target, migrations)
            if chosen is None:
                raise ConfigurationError(
                    f"--target {target}: no migration in {self.migrations_dir} has"
                    " that version or name"
                )
            pending = [m for m in pending if m.number <= chosen.number]
        if pending and applied and not allow_out_of_order:
            highest = max(applied.values(), key=lambda row: int(row.version))
            early = [m for m in pending if m.number < int(highest.version)]
            if early:
                raise MigrationFileError(
                    f"Migration {early[0].name} is pending but {highest.name}, which has"
                    " a higher number, is already applied; nothing was applied. Renumber"
                    " the new migration above it, or apply it anyway with"
                    " --allow-out-of-order."
                )
        return pending

    # -- writing -------------------------------------------------------------

    def init(self) -> bool:
        """Create the database and the tracking table; False if it was there."""
        self._connect()
        with self.transaction(immediate=True):
            existed = self._read_own_rows() is not None
            self._ensure_tracking_table()
        return not existed

    def _ensure_tracking_table(self) -> Applied:
        """Create the tracking table(s) if missing; return the applied rows.

        In wrangler mode, migrations this tool applied before wrangler's table
        was kept are recorded there too, so wrangler does not run them again.
        """
        if self._read_own_rows() is None:
            self._execute_admin(SQL_CREATE_TRACKING.format(table=self.table))
        if self._wrangler is not None:
            self._execute_admin(SQL_CREATE_WRANGLER.format(table=self._wrangler))
            known = self._read_wrangler_rows() or {}
            for row in (self._read_own_rows() or {}).values():
                if row.checksum and row.name + ".sql" not in known:
                    self._execute_admin(SQL_RECORD_WRANGLER.format(table=self._wrangler),
                                        (row.name + ".sql",))
                    self.synced.append(row.name)
        return self._read_applied() or {}

    def backup(self, path: Optional[str] = None) -> str:
        """Copy the database with SQLite's online backup API; return the copy's path."""
        if path is None:
            stem, ext = os.path.splitext(self.db_path)
            stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
            path = f"{stem}-backup-{stamp}{ext or '.db'}"
            serial = 1
            while os.path.exists(path):  # two runs within one second
                serial += 1
                path = f"{stem}-backup-{stamp}-{serial}{ext or '.db'}"
        if os.path.exists(path):
            raise MigrationError(
                f"Backup file {path} already exists; nothing was applied. Move it away"
                " or name another with --backup PATH"
            )
        try:
            copy = sqlite3.connect(path)
            try:
                self._conn.backup(copy)  # type: ignore[union-attr]
            finally:
                copy.close()
        except (sqlite3.Error, OSError) as exc:
            if os.path.exists(path):
                os.remove(path)
            raise MigrationError(
                f"Backup of {self.db_path} to {path} failed ({exc}); nothing was applied"
            ) from None
        return path

    def apply(
        self,
        target: Optional[str] = None,
        allow_out_of_order: bool = False,
        single_transaction: bool = False,
        dry_run: bool = False,
        backup: bool = False,
        backup_path: Optional[str] = None,
        on_applied: Optional[Callable[[int, int, Migration, float], None]] = None,
        on_backup: Optional[Callable[[str], None]] = None,
    ) -> ApplyResult:
        """Apply the pending migrations in order.

        Each one commits together with its tracking row.  On a failure the run
        stops: earlier migrations stay applied, the failing one leaves nothing
        and later ones are not tried.  With single_transaction the whole run is
        one transaction, and a failure leaves the database as it was.  A
        dry_run does the same and always rolls back.  With backup, the database
        is copied first (only when something is pending).
        """
        self.migrations()
        self._connect(memory=dry_run and not os.path.exists(self.db_path))
        self._refuse_old_orphans("applied")
        done: List[Migration] = []
        current: Optional[Migration] = None
        whole_run = single_transaction or dry_run
        copied: Optional[str] = None

        def report(duration: float, total: int) -> None:
            done.append(current)  # type: ignore[arg-type]
            if on_applied:
                on_applied(len(done), total, current, duration)  # type: ignore[arg-type]

        try:
            if whole_run:
                # The backup API cannot copy from a connection inside a write
                # transaction (it reports SQLITE_LOCKED for ever), so the copy
                # comes first, when a plain read shows there is work to do.
                if backup and self.plan(self._read_applied() or {}, target,
                                        allow_out_of_order):
                    copied = self.backup(backup_path)
                    if on_backup:
                        on_backup(copied)
                with self.transaction(immediate=True, commit=not dry_run):
                    pending = self.plan(self._ensure_tracking_table(), target,
                                        allow_out_of_order)
                    prepared = [(m, self._prepare(m)) for m in pending]
                    if not self.foreign_keys:
                        self._refuse_leading_foreign_keys(prepared, dry_run)
                    for current, statements in prepared:
                        report(self._run(current, statements), len(prepared))
                    current = None
                    self.check_stop()
                return ApplyResult(done, copied)

            with self.transaction(immediate=True):
                self._applied = self._ensure_tracking_table()
                pending = self.plan(self._applied, target, allow_out_of_order)
                self._data_version = self._conn.execute(  # type: ignore[union-attr]
                    "PRAGMA data_version").fetchone()[0]
            # Check every pending file before running any: a bad file
            # further down must not leave the run half done.
            try:
                prepared = [(m, self._prepare(m)) for m in pending]
            except MigrationFailed as exc:
                exc.note = "nothing was applied: every pending file is checked before any runs"
                raise
            if prepared and backup:
                copied = self.backup(backup_path)
                if on_backup:
                    on_backup(copied)
            for current, statements in prepared:
                self.check_stop()
                duration = self._apply_one(current, statements, target, allow_out_of_order)
                if duration is not None:
                    report(duration, len(prepared))
                current = None  # committed: a signal from here on stops before the next
            self.check_stop()
            return ApplyResult(done, copied)
        except Interrupted as exc:
            exc.current = current.name if current else None
            exc.applied = 0 if whole_run else len(done)
            exc.whole_run = whole_run
            raise
        except CommitFailed as exc:
            raise CommitFailed(
                f"Failed to commit the run to {self.db_path}: {exc}; rolled back the whole"
                " run (--single-transaction): nothing was applied") from exc
        except MigrationFailed as exc:
            if whole_run:
                exc.note = (
                    "dry run: nothing was changed" if dry_run else
                    "rolled back the whole run (--single-transaction): nothing was applied"
                )
            raise

    def _apply_one(self, migration: Migration, statements: Prepared,
                   target: Optional[str], allow_out_of_order: bool) -> Optional[float]:
        """One migration in its own transaction; None if another process
        applied it meanwhile."""
        try:
            with self._leading_pragmas_first(migration, statements) as hoisted, \
                    self.transaction(immediate=True):
                changed = self._refresh_applied()
                # Another process may have migrated meanwhile: follow what it did.
                if migration.number in self._applied:
                    return None
                if changed:
                    self.plan(self._applied, target, allow_out_of_order)
                duration = self._run(migration, statements, skip=hoisted)
            return duration
        except CommitFailed as exc:
            raise MigrationFailed(migration.name, migration.path,
                                  f"{exc}; it was rolled back") from exc

    @contextmanager
    def _leading_pragmas_first(self, migration: Optional[Migration], statements: Prepared,
                               action: str = "apply") -> Iterator[int]:
        """Run a file's leading PRAGMA foreign_keys before its transaction;
        yield how many statements that was, and restore the setting after.

        PRAGMA foreign_keys is a no-op inside a transaction, so a file that
        starts with it (the table-rebuild recipe) gets it before BEGIN, as
        SQLite documents.  D1 ignores it; so does --foreign-keys.
        """
        hoisted = 0 if self.foreign_keys else _leading_foreign_keys_pragmas(statements)
        try:
            if hoisted:
                self._execute_statements(migration, statements[:hoisted],  # type: ignore[arg-type]
                                         action=action)
            yield hoisted
        finally:
            if hoisted:
                self._conn.execute(  # type: ignore[union-attr]
                    f"PRAGMA foreign_keys = {self._foreign_keys_default}")

    @staticmethod
    def _refuse_leading_foreign_keys(prepared: List["tuple[Migration, Prepared]"],
                                     dry_run: bool) -> None:
        """One transaction for the whole run cannot honour a file's leading
        PRAGMA foreign_keys (SQLite ignores it inside a transaction), so it
        would not do what a normal apply does: say so instead."""
        for migration, statements in prepared:
            if _leading_foreign_keys_pragmas(statements):
                number, statement = statements[0]
                option = "--dry-run" if dry_run else "--single-transaction"
                raise MigrationFailed(
                    migration.name, migration.path,
                    f"it starts with PRAGMA foreign_keys, which SQLite honours only"
                    f" outside a transaction, so {option} cannot run it as apply does;"
                    f" apply without {option}", number, statement.line, statement.sql)

    def _prepare(self, migration: Migration) -> Prepared:
        """Split a file and refuse transaction control inside it.

        A file wrapped whole in BEGIN ... COMMIT keeps its meaning: the two
        are dropped and the rest runs in the tool's own transaction.
        """
        statements = migration.statements()
        numbered = list(enumerate(statements, 1))
        if (len(statements) >= 2 and statements[0].keyword == "BEGIN"
                and statements[-1].keyword in ("COMMIT", "END")):
            numbered = numbered[1:-1]
        for number, statement in numbered:
            if statement.keyword in TRANSACTION_KEYWORDS:
                raise MigrationFailed(
                    migration.name, migration.path,
                    f"{statement.keyword} is not allowed inside a migration: each file"
                    " already runs in its own transaction (a BEGIN ... COMMIT around the"
                    " whole file is accepted); nothing was applied",
                    number, statement.line, statement.sql,
                )
        return numbered

    def _execute_statements(self, migration: Migration, statements: Prepared,
                            action: str = "apply") -> None:
        # One cursor for all: Connection.execute would make one per statement.
        execute = self._conn.cursor().execute  # type: ignore[union-attr]
        instrumented = self.log is not None or self.on_slow_statement is not None
        number, statement = 0, None
        try:
            # Every statement runs to its last row, as executescript and D1
            # run it: a SELECT can fail on a later row (malformed JSON).
            if not instrumented:
                for number, statement in statements:
                    for _ in execute(statement.sql):
                        pass
                    if self._stop_signal is not None:
                        raise Interrupted(self._stop_signal)
                return
            for number, statement in statements:
                self.check_stop()
                started = time.perf_counter()
                if self.on_slow_statement is not None:
                    self._running = (migration.name, number, statement.line, started)
                    self._next_tick = started + SLOW_STATEMENT_SECONDS
                for _ in execute(statement.sql):
                    pass
                self._running = None
                self.check_stop()
                if self.log is not None:
                    self.log(_describe_statement(migration.name, number, statement,
                                                 time.perf_counter() - started))
        except (sqlite3.Error, sqlite3.Warning, ValueError) as exc:
            self._running = None
            if self._stop_signal is not None:
                raise Interrupted(self._stop_signal) from None
            described = _describe_sqlite_error(exc, self.db_path)
            reason = str(described) if isinstance(described, DatabaseWriteError) else str(exc)
            raise MigrationFailed(
                migration.name, migration.path, reason, number,
                statement.line, statement.sql, action=action,  # type: ignore[union-attr]
            ) from exc

    def _run(self, migration: Migration, statements: Prepared, skip: int = 0) -> float:
        """Execute a migration's statements and write its tracking row inside
        the caller's transaction.  Returns the duration in milliseconds."""
        started = time.perf_counter()
        self._execute_statements(migration, statements[skip:] if skip else statements)
        if self.foreign_keys:
            self._check_foreign_keys(migration)
        duration_ms = (time.perf_counter() - started) * 1000.0
        self._execute_admin(
            self._sql_insert,
            (migration.version, migration.name, migration.checksum, utc_now(),
             round(duration_ms, 3)),
        )
        if self._wrangler is not None:
            self._execute_admin(self._sql_insert_wrangler,
                                (migration.filename,))
        return duration_ms

    def _foreign_key_violations(self) -> Optional[str]:
        """PRAGMA foreign_key_check, as text for a message; None if clean."""
        try:
            broken = self._execute_admin("PRAGMA foreign_key_check").fetchall()
        except sqlite3.Error:
            # The progress handler aborts a long check on Ctrl-C.
            self.check_stop()
            raise
        if not broken:
            return None
        shown = ", ".join(f"{table} rowid {rowid} -> {parent}"
                          for table, rowid, parent, _ in broken[:5])
        return shown + (f" and {len(broken) - 5} more" if len(broken) > 5 else "")

    def _refuse_old_orphans(self, done: str) -> None:
        """With --foreign-keys the check runs after each file, so it must
        hold before the first: otherwise old orphans would be blamed on it."""
        broken = self._foreign_key_violations() if self.foreign_keys else None
        if broken:
            raise MigrationError(
                f"Database {self.db_path} already has rows whose foreign keys point"
                f" nowhere ({broken}); --foreign-keys checks after each migration,"
                f" so fix these rows first. Nothing was {done}.")

    def _check_foreign_keys(self, migration: Migration, action: str = "apply") -> None:
        broken = self._foreign_key_violations()
        if broken:
            raise MigrationFailed(
                migration.name, migration.path,
                f"it leaves rows whose foreign keys point nowhere: {broken}"
                " (PRAGMA foreign_key_check; D1 enforces foreign keys)", action=action,
            )

    def rollback(self, version: Optional[str] = None, force: bool = False) -> RollbackResult:
        """Undo one applied migration: run its down script, if there is one,
        and delete its tracking row, in one transaction."""
        # A mistyped --migrations-dir would find no down script and remove
        # the record alone, leaving the schema as it is.
        self.migrations()
        if not os.path.exists(self.db_path):
            raise MigrationError(
                f"Migration {version} not found in applied migrations" if version else
                f"Nothing to roll back: database {self.db_path} does not exist"
            )
        self._connect()
        # Chosen before the transaction too, so that a down script's leading
        # PRAGMA foreign_keys can run before BEGIN, as a migration's does.
        row = self._choose_rollback(self._read_applied() or {}, version, force)
        down, statements = self._down_script(row)
        try:
            with self._leading_pragmas_first(down, statements, "roll back") as hoisted, \
                    self.transaction(immediate=True):
                if self._choose_rollback(self._read_applied() or {}, version, force) != row:
                    raise MigrationError(
                        f"Another process changed the applied migrations of {self.db_path}"
                        " while this rollback started; nothing was rolled back. Run it again.")
                self._refuse_old_orphans("rolled back")
                if down is not None:
                    self._execute_statements(down, statements[hoisted:], action="roll back")
                    if self.foreign_keys:
                        self._check_foreign_keys(down, action="roll back")
                self._execute_admin(SQL_DELETE_APPLIED.format(table=self.table),
                                    (row.version,))
                if self._wrangler is not None and self._read_wrangler_rows() is not None:
                    self._execute_admin(SQL_DELETE_WRANGLER.format(table=self._wrangler),
                                        (row.name + ".sql",))
        except CommitFailed as exc:
            raise MigrationFailed(row.name, down.path if down else self.migrations_dir,
                                  f"{exc}; it was rolled back", action="roll back") from exc
        except Interrupted as exc:
            exc.rolling_back = row.name
            raise
        return RollbackResult(row, down.path if down else None, len(statements))

    def _choose_rollback(self, applied: Applied, version: Optional[str],
                         force: bool) -> AppliedRow:
        """The applied migration `version` names (default: the latest), once
        no later one stands in the way."""
        rows = sorted(applied.values(), key=lambda r: int(r.version))
        if version is None:
            if not rows:
                raise MigrationError("Nothing to roll back: no migrations have been applied")
            row = rows[-1]
        else:
            row = self.find(version, rows)
            if row is None:
                raise MigrationError(f"Migration {version} not found in applied migrations")
        later = [r.name for r in rows if int(r.version) > int(row.version)]
        if later and not force:
            raise MigrationError(
                f"Cannot roll back {row.name}: later migrations are still applied"
                f" ({', '.join(later)}). Roll those back first, or pass --force"
                " to roll back only this one."
            )
        return row

    def _down_script(self, row: AppliedRow) -> "tuple[Optional[Migration], Prepared]":
        """The migration's down script and its statements, if it has one."""
        path = os.path.join(self.migrations_dir, DOWN_DIR, row.name + ".sql")
        if not os.path.isfile(path):
            return None, []
        down = Migration(row.version, row.name, path)
        try:
            return down, self._prepare(down)
        except MigrationFailed as exc:
            raise MigrationFailed(row.name, exc.path, exc.reason, exc.statement,
                                  exc.line, exc.sql, action="roll back") from None


def _leading_foreign_keys_pragmas(statements: Prepared) -> int:
    """How many statements at the start of a file are PRAGMA foreign_keys."""
    count = 0
    while (count < len(statements) and statements[count][1].keyword == "PRAGMA"
           and _FOREIGN_KEYS_PRAGMA.match(statements[count][1].sql)):
        count += 1
    return count


def _describe_statement(name: str, number: int, statement: Statement, seconds: float) -> str:
    text = " ".join(statement.sql.split())
    if len(text) > 80:
        text = text[:77] + "..."
    return f"{name} statement {number} (line {statement.line}): {format_ms(seconds * 1000)}  {text}"


def format_ms(ms: float) -> str:
    if ms < 1000:
        return f"{ms:.1f} ms"
    return f"{ms / 1000:.1f} s"


# --------------------------------------------------------------------------
# Cloudflare D1 over its HTTP API: the same Migrator, with each migration sent
# as one batch that D1 runs as one transaction.

D1_API_BASE = "https://api.cloudflare.com/client/v4"
D1_ACCOUNT_VARIABLE = "CLOUDFLARE_ACCOUNT_ID"
D1_DATABASE_VARIABLE = "D1_DATABASE_ID"
D1_TOKEN_VARIABLE = "CLOUDFLARE_API_TOKEN"
D1_API_BASE_VARIABLE = "CLOUDFLARE_API_BASE_URL"
DEFAULT_HTTP_TIMEOUT = 30.0
DEFAULT_HTTP_RETRIES = 4
# A statement that always fails with a message of its own: appended to a batch
# it makes D1 roll the batch back, which a dry run and the search for a
# failing statement need.
D1_SENTINEL_TABLE = "apply_migrations: rolled back on purpose"
SQL_SENTINEL = f"SELECT * FROM {quote_identifier(D1_SENTINEL_TABLE)}"
SQL_SET_DURATION = "UPDATE {table} SET duration_ms = ? WHERE version = ?"


class D1Error(MigrationError):
    """D1 refused a request; nothing of it was committed."""

    def __init__(self, message: str, code: Optional[int] = None,
                 status: Optional[int] = None):
        self.code = code
        self.status = status
        super().__init__(message)


class D1Unsure(D1Error):
    """The request may or may not have reached D1 (a timeout, a dropped
    connection, a 5xx): only the tracking table can tell whether it ran."""


def d1_sql(statement: Statement) -> str:
    """A statement as sent to D1.  D1's server-side splitter, which sees
    each batch entry too, has cut trigger bodies whose BEGIN or END is not in
    upper case ("incomplete input"): upper-case those two words of a
    CREATE TRIGGER.  SQLite reads keywords in any case, so nothing else
    changes; the file and its checksum are untouched."""
    if statement.keyword != "CREATE":
        return statement.sql
    sql = statement.sql
    words = [m for m in re.finditer(_HEAD_TOKEN, sql) if re.match(_IDENTIFIER, m.group())]
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


class D1Client:
    """POSTs SQL to D1's /query and /raw endpoints with urllib.

    Requests that cannot change anything twice (reads, CREATE ... IF NOT
    EXISTS) are retried with backoff on timeouts, dropped connections, 429
    and 5xx.  A write that may have reached D1 is never resent here: it raises
    D1Unsure and the caller asks the tracking table what happened.
    """

    def __init__(self, api_base: str, account_id: str, database_id: str, token: str,
                 *, timeout: float = DEFAULT_HTTP_TIMEOUT,
                 retries: int = DEFAULT_HTTP_RETRIES,
                 log: Optional[Callable[[str], None]] = None):
        self.api_base = api_base.rstrip("/")
        self.account_id = account_id
        self.database_id = database_id
        self._token = token
        self.timeout = timeout
        self.retries = retries
        self.log = log
        self.backoff = 1.0  # seconds before the first retry; doubles each time

    def describe(self) -> str:
        return f"D1 database {self.database_id}"

    def _redact(self, text: str) -> str:
        return text.replace(self._token, "***") if self._token else text

    def _post_once(self, kind: str, body: dict) -> "tuple[Optional[int], object]":
        """One POST: (HTTP status, parsed JSON or None).  Raises _Transient."""
        import json
        import socket
        import urllib.error
        import urllib.request
        import http.client
        url = (f"{self.api_base}/accounts/{self.account_id}/d1/database/"
               f"{self.database_id}/{kind}")
        request = urllib.request.Request(
            url, data=json.dumps(body).encode("utf-8"), method="POST",
            headers={"Authorization": f"Bearer {self._token}",
                     "Content-Type": "application/json",
                     "User-Agent": f"apply_migrations.py/{__version__}"})
        started = time.perf_counter()
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                status, raw = response.status, response.read()
        except urllib.error.HTTPError as exc:
            status, raw = exc.code, exc.read()
            if status == 429 or status >= 500:
                delay = exc.headers.get("Retry-After") if exc.headers else None
                raise _Transient(f"HTTP {status} from D1", maybe_ran=status != 429,
                                 delay=float(delay) if delay and VERSION_TEXT.match(delay) else None)
        except urllib.error.URLError as exc:
            reason = exc.reason
            never_sent = isinstance(reason, (ConnectionRefusedError, socket.gaierror))
            raise _Transient(f"cannot reach {self.api_base} ({reason})",
                             maybe_ran=not never_sent) from None
        except (socket.timeout, TimeoutError):
            raise _Transient(f"no answer from D1 within {self.timeout:g} s"
                             " (--http-timeout)", maybe_ran=True) from None
        except (ConnectionError, http.client.HTTPException, OSError) as exc:
            raise _Transient(f"connection to D1 failed ({exc})", maybe_ran=True) from None
        if self.log:
            self.log(f"POST .../{kind}: HTTP {status} in"
                     f" {format_ms((time.perf_counter() - started) * 1000)}")
        try:
            return status, json.loads(raw.decode("utf-8"))
        except ValueError:
            return status, None

    def request(self, kind: str, body: dict, idempotent: bool) -> list:
        """POST with retries where safe; the `result` list of the envelope."""
        delay = self.backoff
        for attempt in range(self.retries + 1):
            try:
                status, payload = self._post_once(kind, body)
                break
            except _Transient as transient:
                if transient.maybe_ran and not idempotent:
                    raise D1Unsure(self._redact(transient.reason)) from None
                if attempt == self.retries:
                    raise D1Error(self._redact(
                        f"{transient.reason}; gave up after {attempt + 1} attempts")) from None
                time.sleep(min(transient.delay or delay, 60.0))
                delay *= 2
        if isinstance(payload, dict) and payload.get("success") is True:
            return payload.get("result") or []
        errors = payload.get("errors") if isinstance(payload, dict) else None
        if errors:
            first = errors[0]
            message = "; ".join(f"{e.get('message')} [code {e.get('code')}]" for e in errors)
            code = first.get("code")
        else:
            message, code = f"HTTP {status} with no D1 answer in the body", None
        if status in (401, 403) or code == 10000:
            raise ConfigurationError(self._redact(
                f"D1 refused the credentials ({message}): check {D1_TOKEN_VARIABLE}"
                f" (a token with D1 edit permission) and {D1_ACCOUNT_VARIABLE}"))
        if status == 404:
            raise ConfigurationError(self._redact(
                f"D1 database {self.database_id} not found in account {self.account_id}"
                f" ({message}); check {D1_DATABASE_VARIABLE} and {D1_ACCOUNT_VARIABLE}"))
        raise D1Error(self._redact(message), code=code, status=status)

    def batch(self, statements: List["tuple[str, list]"], idempotent: bool = False) -> list:
        """Run statements as one batch, one D1 transaction; per-statement results."""
        return self.request("query", {"batch": [{"sql": sql, "params": params}
                                                for sql, params in statements]},
                            idempotent)

    def rows(self, sql: str, params: tuple = ()) -> List[tuple]:
        result = self.request("raw", {"sql": sql, "params": list(params)}, idempotent=True)
        return [tuple(row) for row in (result[0]["results"].get("rows") or [])] if result else []


class _Transient(Exception):
    def __init__(self, reason: str, maybe_ran: bool, delay: Optional[float] = None):
        self.reason = reason
        self.maybe_ran = maybe_ran
        self.delay = delay
        super().__init__(reason)


class D1RemoteMigrator(Migrator):
    """A Migrator for a remote D1 database: the plan, checks, splitting and
    tracking table are the Migrator's; each migration travels as one batch
    of its statements and its tracking row, which D1 commits together or not
    at all.  D1 has no lock to take: two runs racing for a migration both send
    it, and the second batch fails on the tracking row's primary key and
    leaves nothing, so each migration is still applied once."""

    def __init__(self, client: D1Client, migrations_dir: str = DEFAULT_MIGRATIONS_DIR,
                 *, wrangler_table: Optional[str] = None,
                 log: Optional[Callable[[str], None]] = None):
        super().__init__(client.describe(), migrations_dir,
                         wrangler_table=wrangler_table, log=log)
        self.client = client

    # The local primitives, replaced by requests.
    def _connect(self, readonly: bool = False, memory: bool = False):  # type: ignore[override]
        return self

    def close(self) -> None:
        pass

    def exists(self) -> bool:
        return True

    @contextmanager
    def transaction(self, immediate: bool = False, commit: bool = True):  # type: ignore[override]
        yield None  # every request is its own transaction on D1

    def _fetch(self, sql: str, params: tuple = ()) -> List[tuple]:
        return self.client.rows(sql, params)

    def _execute_admin(self, sql: str, params: tuple = ()):  # type: ignore[override]
        # Only idempotent statements come here (CREATE ... IF NOT EXISTS,
        # INSERT OR IGNORE), so they may be retried.
        return self.client.batch([(sql, list(params))], idempotent=True)

    def backup(self, path: Optional[str] = None) -> str:
        raise ConfigurationError(
            "--backup copies a local database file; a remote D1 database is restored"
            " with Time Travel instead (wrangler d1 time-travel info / restore)")

    def _prepare_for_d1(self, migration: Migration) -> Prepared:
        """Split and check a file as D1 will see it, refusing what D1 rejects."""
        numbered = self._prepare(migration)
        for finding in check_statements(migration.path, [s for _, s in numbered]):
            # Statements travel one per batch entry, so a missing final ';'
            # is harmless here.
            if finding.severity == "error" and finding.code != "missing-semicolon":
                number = next((n for n, s in numbered if s.line == finding.line), None)
                raise MigrationFailed(
                    migration.name, migration.path,
                    f"D1 would reject it: {finding.message}; nothing was sent",
                    number, finding.line)
        return numbered

    def _entries(self, migration: Migration, numbered: Prepared) -> List["tuple[str, list]"]:
        entries = [(d1_sql(statement), []) for _, statement in numbered]
        entries.append((SQL_INSERT_APPLIED.format(table=self.table),
                        [migration.version, migration.name, migration.checksum,
                         utc_now(), 0.0]))
        if self._wrangler is not None:
            entries.append((SQL_INSERT_WRANGLER.format(table=self._wrangler),
                            [migration.filename]))
        return entries

    def _rolled_back_on_purpose(self, entries: List["tuple[str, list]"]) -> Optional[D1Error]:
        """Run entries plus the sentinel: None if all of them succeed (and
        the sentinel rolls them back), else the error of the first that fails."""
        try:
            self.client.batch(entries + [(SQL_SENTINEL, [])], idempotent=True)
        except D1Error as exc:
            return None if D1_SENTINEL_TABLE in str(exc) else exc
        raise MigrationError("D1 committed a batch that was meant to fail; stopping")

    def _locate(self, migration: Migration, numbered: Prepared, error: D1Error,
                action: str = "apply", before: List["tuple[str, list]"] = ()
                ) -> MigrationFailed:  # type: ignore[assignment]
        """D1 names no statement when a batch fails: find it by bisection,
        with batches that are always rolled back (each replaying `before`,
        the entries that ran ahead of this migration in the same batch)."""
        before = list(before)
        entries = [(d1_sql(s), []) for _, s in numbered]
        if self._rolled_back_on_purpose(before + entries) is None:
            return MigrationFailed(migration.name, migration.path,
                                   f"{error} (recording it in {TRACKING_TABLE} failed)",
                                   action=action)
        good, bad = 0, len(entries)
        while bad - good > 1:
            middle = (good + bad) // 2
            if self._rolled_back_on_purpose(before + entries[:middle]) is None:
                good = middle
            else:
                bad = middle
        number, statement = numbered[bad - 1]
        return MigrationFailed(migration.name, migration.path, str(error), number,
                               statement.line, statement.sql, action=action)

    def apply(self, target: Optional[str] = None, allow_out_of_order: bool = False,
              single_transaction: bool = False, dry_run: bool = False,
              backup: bool = False, backup_path: Optional[str] = None,
              on_applied=None, on_backup=None) -> ApplyResult:
        if backup:
            self.backup(backup_path)
        # Every check before the first write: a refused run sends nothing.
        pending = self.plan(self._read_applied() or {}, target, allow_out_of_order)
        prepared = [(m, self._prepare_for_d1(m)) for m in pending]
        if not dry_run:
            self._ensure_tracking_table()
        done: List[Migration] = []
        if not prepared:
            return ApplyResult(done, None)
        if dry_run or single_transaction:
            self._apply_as_one(prepared, dry_run, on_applied)
            return ApplyResult([m for m, _ in prepared], None)
        for migration, numbered in prepared:
            try:
                duration = self._send(migration, numbered, target, allow_out_of_order)
            except Interrupted as exc:
                exc.uncertain = migration.name
                exc.applied = len(done)
                raise
            if duration is None:
                continue  # another run applied it meanwhile
            done.append(migration)
            if on_applied:
                on_applied(len(done), len(prepared), migration, duration)
        return ApplyResult(done, None)

    def _apply_as_one(self, prepared: List["tuple[Migration, Prepared]"], dry_run: bool,
                      on_applied) -> None:
        header = [(SQL_CREATE_TRACKING.format(table=self.table), [])]
        if self._wrangler is not None:
            header.append((SQL_CREATE_WRANGLER.format(table=self._wrangler), []))
        entries = list(header)
        for migration, numbered in prepared:
            entries += self._entries(migration, numbered)
        started = time.perf_counter()
        try:
            if dry_run:
                error = self._rolled_back_on_purpose(entries)
                if error is not None:
                    raise error
            else:
                self.client.batch(entries)
        except D1Error as exc:
            failure = self._first_failure(header, prepared, exc)
            failure.note = ("dry run: nothing was changed" if dry_run else
                            "rolled back the whole run (--single-transaction):"
                            " nothing was applied")
            raise failure from None
        each = (time.perf_counter() - started) * 1000 / len(prepared)
        for index, (migration, _) in enumerate(prepared, 1):
            if on_applied:
                on_applied(index, len(prepared), migration, each)

    def _first_failure(self, header: List["tuple[str, list]"],
                       prepared: List["tuple[Migration, Prepared]"],
                       error: D1Error) -> MigrationFailed:
        """Which migration of a one-batch run failed: growing prefixes of
        whole migrations are tried, and rolled back, until one fails."""
        entries = list(header)
        for migration, numbered in prepared:
            before = list(entries)
            entries += self._entries(migration, numbered)
            failed = self._rolled_back_on_purpose(entries)
            if failed is not None:
                return self._locate(migration, numbered, failed, before=before)
        return MigrationFailed(prepared[-1][0].name, prepared[-1][0].path, str(error))

    def _send(self, migration: Migration, numbered: Prepared, target: Optional[str],
              allow_out_of_order: bool) -> Optional[float]:
        """One migration as one batch.  Returns D1's duration, or None when
        another run applied it first."""
        for attempt in range(self.client.retries + 1):
            try:
                result = self.client.batch(self._entries(migration, numbered))
            except D1Unsure as unsure:
                # It may have run: D1 committed all of it or none, and the
                # tracking table says which.
                if migration.number in (self._read_applied() or {}):
                    return 0.0
                if attempt == self.client.retries:
                    raise MigrationFailed(migration.name, migration.path,
                                          f"{unsure}; it was not applied") from None
                time.sleep(self.client.backoff * 2 ** attempt)
                continue
            except D1Error as exc:
                applied = self._read_applied() or {}
                if migration.number in applied:
                    return None  # the tracking row's key refused a second copy
                self.plan(applied, target, allow_out_of_order)
                raise self._locate(migration, numbered, exc) from None
            duration = sum(float((r.get("meta") or {}).get("duration") or 0)
                           for r in result[:len(numbered)])
            try:
                self._execute_admin(SQL_SET_DURATION.format(table=self.table),
                                    (round(duration, 3), migration.version))
            except D1Error:
                pass  # only the recorded duration is lost
            return duration
        return None

    def rollback(self, version: Optional[str] = None, force: bool = False) -> RollbackResult:
        row = self._choose_rollback(self._read_applied() or {}, version, force)
        down, numbered = self._down_script(row)
        entries = [(d1_sql(s), []) for _, s in numbered]
        entries.append((SQL_DELETE_APPLIED.format(table=self.table), [row.version]))
        if self._wrangler is not None:
            entries.append((SQL_DELETE_WRANGLER.format(table=self._wrangler),
                            [row.name + ".sql"]))
        try:
            self.client.batch(entries)
        except D1Unsure as unsure:
            if int(row.version) in (self._read_applied() or {}):
                raise D1Error(f"{unsure}; D1 did not roll back {row.name}, it is still"
                              " applied: run rollback again") from None
        except D1Error as exc:
            if down is None:
                raise
            raise self._locate(down, numbered, exc, action="roll back") from None
        return RollbackResult(row, down.path if down else None, len(numbered))


# --------------------------------------------------------------------------
# The command line: parses, calls the Migrator, turns results and errors into
# text, JSON and exit codes.

STATE_MARKS = {"applied": "[X]", "pending": "[ ]", "modified": "[!]", "missing": "[?]"}
STATE_COLORS = {"applied": "32", "pending": "33", "modified": "31", "missing": "31"}
NEW_FILE_HEADER = """\
-- Migration number: {number} \u23f1\ufe0f {timestamp}
-- {description}
-- Environment: D1 (Cloudflare SQLite)

"""


def resolve_target(args: argparse.Namespace) -> "tuple[str, str, Optional[str]]":
    """The database path, migrations folder and wrangler table (or None) the
    options name; checked before any I/O.  A wrangler config supplies what the
    command line leaves out."""
    wrangler_table = getattr(args, "wrangler_table", None)
    if wrangler_table is None and getattr(args, "wrangler", False):
        wrangler_table = WRANGLER_TABLE
    config = getattr(args, "wrangler_config", None)
    if config:
        found = wrangler_database(config, args.database, args.persist_to)
        return (args.db_path or found.db_path,
                args.migrations_dir or found.migrations_dir,
                wrangler_table or found.migrations_table)
    return resolve_db_path(args), resolve_migrations_dir(args), wrangler_table


def check_wrangler_options(args: argparse.Namespace) -> None:
    """--database and --persist-to only qualify --wrangler-config; alone they
    would be ignored, and `--database app.db` would quietly use another file."""
    if getattr(args, "wrangler_config", None):
        return
    for option, value in (("--database", getattr(args, "database", None)),
                          ("--persist-to", getattr(args, "persist_to", None))):
        if value is not None:
            hint = f" For a database file, pass --db-path {value}." \
                if option == "--database" else ""
            raise ConfigurationError(
                f"{option} {value} needs --wrangler-config: it selects within the"
                f" wrangler config, and no config was given.{hint}")


def resolve_migrations_dir(args: argparse.Namespace) -> str:
    if args.migrations_dir:
        return args.migrations_dir
    if args.wrangler_config:
        return wrangler_database(args.wrangler_config, args.database,
                                 args.persist_to).migrations_dir
    return DEFAULT_MIGRATIONS_DIR


def resolve_db_path(args: argparse.Namespace, environ=None) -> str:
    """--db-path, else the environment's database; checked before any I/O."""
    environ = os.environ if environ is None else environ
    if args.db_path:
        return args.db_path
    if args.env == "production":
        path = environ.get(DB_PATH_VARIABLE, "").strip()
        if not path:
            raise ConfigurationError(
                f"{DB_PATH_VARIABLE} is not set: --env production reads the database"
                f" path from it. Set {DB_PATH_VARIABLE}=/path/to/db or pass --db-path."
            )
        return path
    return DEFAULT_DB_PATH


def _plural(count: int, word: str) -> str:
    return f"{count} {word}{'' if count == 1 else 's'}"


def _escape_workflow(text: str, property_value: bool = False) -> str:
    """Escape text for a GitHub Actions workflow command."""
    text = text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")
    if property_value:
        text = text.replace(":", "%3A").replace(",", "%2C")
    return text


def _markdown_cell(value: object) -> str:
    return "" if value is None else " ".join(str(value).replace("|", "\\|").splitlines())


class Console:
    """Where the CLI's words go: text or JSON on stdout, errors on stderr,
    colour only on a terminal without NO_COLOR, GitHub Actions extras."""

    def __init__(self, args: argparse.Namespace):
        self.json = getattr(args, "json", False)
        self.quiet = getattr(args, "quiet", False)
        self.verbose = getattr(args, "verbose", False)
        self.github = os.environ.get("GITHUB_ACTIONS") == "true"
        self.summary_path = os.environ.get("GITHUB_STEP_SUMMARY") or None
        self.partial: Dict[str, object] = {}  # what a failed command did, for JSON
        self.secrets: List[str] = []  # never printed, whatever an error says
        self._ticking = False
        self._flushed = 0.0
        self._stdout_tty = self.is_tty(sys.stdout)
        self.ellipsis = "\u2026" if self._utf8(sys.stdout) else "..."

    @staticmethod
    def _utf8(stream) -> bool:
        return (getattr(stream, "encoding", None) or "").lower().replace("-", "") == "utf8"

    @staticmethod
    def is_tty(stream) -> bool:
        try:
            return stream.isatty()
        except (AttributeError, ValueError):
            return False

    def paint(self, text: str, color: str, stream=None) -> str:
        stream = stream or sys.stdout
        if self.is_tty(stream) and not os.environ.get("NO_COLOR") \
                and os.environ.get("TERM") != "dumb":
            return f"\x1b[{color}m{text}\x1b[0m"
        return text

    def _end_tick(self) -> None:
        if self._ticking:
            sys.stdout.write("\r\x1b[K")
            self._ticking = False

    def say(self, text: str) -> None:
        """Progress and results: stdout, unless --quiet or --json.

        Flushed at once on a terminal; into a pipe or a CI log at most four
        times a second, so that a thousand quick migrations cost no thousand
        writes, while a slow one still shows up as it finishes."""
        if not self.quiet and not self.json:
            self._end_tick()
            print(text)
            now = time.monotonic()
            if now - self._flushed >= 0.25 or self._stdout_tty:
                sys.stdout.flush()
                self._flushed = now

    def warn(self, text: str) -> None:
        if not self.quiet:
            print(f"{self.paint('Warning:', '33', sys.stderr)} {text}", file=sys.stderr)

    def log(self, line: str) -> None:
        self._end_tick()
        print(line, file=sys.stderr, flush=True)

    def tick(self, name: str, number: int, line: int, elapsed: float) -> None:
        """A live elapsed-time line for a long statement, on a terminal only."""
        self._ticking = True
        sys.stdout.write(f"\r\x1b[K  {name}: statement {number} (line {line})"
                         f" running for {elapsed:.0f} s")
        sys.stdout.flush()

    def wants_ticks(self) -> bool:
        return not self.quiet and not self.json and self.is_tty(sys.stdout)

    def emit(self, payload: Dict[str, object]) -> None:
        import json
        print(self.redact(json.dumps(payload, indent=2, ensure_ascii=False)), flush=True)

    def redact(self, text: str) -> str:
        for secret in self.secrets:
            text = text.replace(secret, "***")
        return text

    def error(self, exc: MigrationError) -> None:
        self._end_tick()
        if self.github:
            self.annotate(exc)
        message = str(exc).replace("\r", "\\r").replace("\n", "\\n")  # one line
        text = message if isinstance(exc, Interrupted) else \
            f"{self.paint('Error:', '31', sys.stderr)} {message}"
        print(self.redact(text), file=sys.stderr, flush=True)
        if self.json:
            self.emit({**self.partial, "error": error_payload(exc)})

    def annotate(self, exc: MigrationError) -> None:
        """A workflow command that puts the error on the file and line in the
        pull request."""
        title = "Migration failed" if isinstance(exc, MigrationFailed) else \
            "apply_migrations.py failed"
        self.workflow_command("error", str(exc), getattr(exc, "path", None),
                              getattr(exc, "line", None), title)

    def workflow_command(self, kind: str, message: str, path: Optional[str],
                         line: Optional[int], title: str) -> None:
        """`::error file=…,line=…,title=…::message`, the file relative to the
        workspace as GitHub needs it to mark the line in a pull request."""
        props = []
        if path:
            workspace = os.environ.get("GITHUB_WORKSPACE") or os.getcwd()
            try:
                path = os.path.relpath(os.path.abspath(path), workspace)
            except ValueError:  # another drive on Windows
                pass
            props.append(f"file={_escape_workflow(path.replace(os.sep, '/'), True)}")
            if line:
                props.append(f"line={line}")
        props.append(f"title={_escape_workflow(title, True)}")
        stream = sys.stderr if self.json else sys.stdout
        print(f"::{kind} {','.join(props)}::{_escape_workflow(self.redact(message))}",
              file=stream, flush=True)

    def step_summary(self, title: str, header: List[str], rows: List[List[object]]) -> None:
        """Append a markdown table to $GITHUB_STEP_SUMMARY, when it is set."""
        if not self.summary_path:
            return
        lines = [f"### {title}", "", "| " + " | ".join(header) + " |",
                 "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(_markdown_cell(c) for c in row) + " |" for row in rows]
        try:
            with open(self.summary_path, "a", encoding="utf-8") as handle:
                handle.write("\n".join(lines) + "\n\n")
        except OSError as exc:
            self.warn(f"Cannot write GITHUB_STEP_SUMMARY {self.summary_path}: {exc.strerror}")


def error_payload(exc: MigrationError) -> Dict[str, object]:
    return {
        "type": type(exc).__name__,
        "message": str(exc),
        "migration": getattr(exc, "name", None),
        "file": getattr(exc, "path", None),
        "line": getattr(exc, "line", None),
        "statement": getattr(exc, "statement", None),
        "sql": getattr(exc, "sql", None),
        "exit_code": exc.exit_code,
    }


def make_d1_client(args: argparse.Namespace, console: Console) -> D1Client:
    """The remote D1 database the environment names; each missing variable
    is a one-line error before anything is sent."""
    environ = os.environ
    account = environ.get(D1_ACCOUNT_VARIABLE, "").strip()
    database = environ.get(D1_DATABASE_VARIABLE, "").strip()
    if not database and args.wrangler_config:
        database = wrangler_database(args.wrangler_config, args.database,
                                     args.persist_to).database_id
    token = environ.get(D1_TOKEN_VARIABLE, "").strip()
    for variable, value, what in (
            (D1_ACCOUNT_VARIABLE, account, "your Cloudflare account id"),
            (D1_DATABASE_VARIABLE, database,
             "the D1 database's id (or pass --wrangler-config with its database_id)"),
            (D1_TOKEN_VARIABLE, token, "an API token with D1 edit permission")):
        if not value:
            raise ConfigurationError(f"{variable} is not set: --d1-remote needs {what}.")
    console.secrets.append(token)
    return D1Client(
        args.api_base or environ.get(D1_API_BASE_VARIABLE, "").strip() or D1_API_BASE,
        account, database, token, timeout=args.http_timeout, retries=args.http_retries,
        log=console.log if args.verbose else None)


def _make_migrator(args: argparse.Namespace, console: Console) -> Migrator:
    if getattr(args, "d1_remote", False):
        wrangler_table = getattr(args, "wrangler_table", None)
        if wrangler_table is None and (args.wrangler or args.wrangler_config):
            wrangler_table = (wrangler_database(args.wrangler_config, args.database,
                                                args.persist_to).migrations_table
                              if args.wrangler_config else WRANGLER_TABLE)
        return D1RemoteMigrator(make_d1_client(args, console), resolve_migrations_dir(args),
                                wrangler_table=wrangler_table)
    db_path, migrations_dir, wrangler_table = resolve_target(args)
    if getattr(args, "wrangler_config", None) and args.command in ("init", "apply") \
            and not getattr(args, "dry_run", False):
        # wrangler creates its state folder on first use; so does this tool.
        os.makedirs(os.path.dirname(db_path) or ".", exist_ok=True)
    return Migrator(
        db_path,
        migrations_dir,
        lock_timeout=args.lock_timeout,
        foreign_keys=getattr(args, "foreign_keys", False),
        wrangler_table=wrangler_table,
        log=console.log if args.verbose else None,
        on_slow_statement=console.tick if console.wants_ticks() else None,
    )


def _warn_all(console: Console, migrator: Migrator) -> None:
    for warning in migrator.warnings:
        console.warn(warning)


def cmd_init(args: argparse.Namespace, console: Console) -> int:
    with _make_migrator(args, console) as migrator:
        created = migrator.init()
    if console.json:
        console.emit({"database": migrator.db_path, "table": TRACKING_TABLE,
                      "created": created, "recorded_for_wrangler": migrator.synced})
        return EXIT_OK
    if created:
        console.say(f"Initialized {TRACKING_TABLE} in {migrator.db_path}")
    elif not migrator.synced:
        console.say(f"{TRACKING_TABLE} already exists in {migrator.db_path}; nothing to do")
    _say_synced(console, migrator)
    return EXIT_OK


def _say_synced(console: Console, migrator: Migrator) -> None:
    if migrator.synced:
        console.say(f"Recorded {_plural(len(migrator.synced), 'migration')} applied earlier"
                    f" in {migrator.wrangler_table} for wrangler: {', '.join(migrator.synced)}")


def cmd_status(args: argparse.Namespace, console: Console) -> int:
    with _make_migrator(args, console) as migrator:
        states = migrator.status()
    _warn_all(console, migrator)
    exists = migrator.exists()
    counts = {state: 0 for state in STATE_MARKS}
    for s in states:
        counts[s.state] += 1
    if console.json:
        console.emit({
            "database": migrator.db_path,
            "database_exists": exists,
            "migrations_dir": migrator.migrations_dir,
            "migrations": [{
                "version": s.version, "name": s.name, "file": s.path, "state": s.state,
                "checksum": s.checksum, "applied_at": s.applied_at,
                "duration_ms": s.duration_ms,
            } for s in states],
            "summary": {**counts, "total": len(states)},
        })
    else:
        console.say(f"Database:   {migrator.db_path}"
                    f"{'' if exists else ' (does not exist yet)'}")
        console.say(f"Migrations: {migrator.migrations_dir}")
        console.say("")
        width = max([len(s.name) for s in states] + [4])
        for s in states:
            detail = {
                "applied": f"applied {s.applied_at}",
                "pending": "pending",
                "modified": f"MODIFIED: applied {s.applied_at}, file changed since",
                "missing": f"MISSING: applied {s.applied_at}, file gone",
            }[s.state]
            mark = console.paint(STATE_MARKS[s.state], STATE_COLORS[s.state])
            console.say(f"{mark} {s.name:<{width}}  {detail}")
        if not states:
            console.say("(no migrations)")
        console.say("")
        console.say(", ".join(f"{state.capitalize()}: {n}" for state, n in counts.items()))
    console.step_summary(
        f"Migration status of {migrator.db_path}",
        ["Version", "Name", "State", "Applied at"],
        [[s.version, s.name, s.state, s.applied_at] for s in states],
    )
    if args.exit_code and (counts["pending"] or counts["modified"] or counts["missing"]):
        return EXIT_FAILED
    return EXIT_OK


@contextmanager
def _stop_on_signals(migrator: Migrator) -> Iterator[None]:
    """Ctrl-C and SIGTERM ask the migrator to stop at its next safe point
    (it rolls back what is in progress and raises Interrupted)."""
    previous = {signum: signal.signal(signum, lambda signum, frame: migrator.request_stop(signum))
                for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def cmd_apply(args: argparse.Namespace, console: Console) -> int:
    if args.dry_run and args.backup is not None:
        raise ConfigurationError("--backup and --dry-run exclude each other:"
                                 " a dry run changes nothing")
    migrator = _make_migrator(args, console)
    verb = "would apply" if args.dry_run else "applied"
    applied: List[Dict[str, object]] = []
    console.partial = {"database": migrator.db_path, "migrations_dir": migrator.migrations_dir,
                       "dry_run": args.dry_run, "single_transaction": args.single_transaction,
                       "applied": applied}
    started = time.perf_counter()

    def on_applied(index: int, total: int, migration: Migration, duration_ms: float) -> None:
        applied.append({"version": migration.version, "name": migration.name,
                        "file": migration.path, "duration_ms": round(duration_ms, 3)})
        note = " (dry run)" if args.dry_run else ""
        console.say(f"[{index}/{total}] {migration.name} {console.ellipsis}"
                    f" {format_ms(duration_ms)}{note}")

    def on_backup(path: str) -> None:
        console.partial["backup"] = path
        console.say(f"Backed up {migrator.db_path} to {path}")

    failure: Optional[MigrationError] = None
    with migrator:
        migrations = migrator.migrations()
        _warn_all(console, migrator)
        try:
            with _stop_on_signals(migrator):
                result = migrator.apply(
                    target=args.target,
                    allow_out_of_order=args.allow_out_of_order,
                    single_transaction=args.single_transaction,
                    dry_run=args.dry_run,
                    backup=args.backup is not None,
                    backup_path=args.backup or None,
                    on_applied=on_applied,
                    on_backup=on_backup,
                )
        except MigrationError as exc:
            failure = exc
    rows: List[List[object]] = [[a["version"], a["name"], verb, format_ms(a["duration_ms"])]
                                for a in applied]  # type: ignore[arg-type]
    if failure is not None:
        if args.dry_run or args.single_transaction:
            # One transaction held the run: what ran in it was rolled back too.
            rows = [[r[0], r[1], "rolled back", r[3]] for r in rows]
        if args.single_transaction and not args.dry_run:
            # (A dry run's list stays: what a real run would have applied.)
            console.partial["rolled_back"] = applied[:]
            applied.clear()
        name = getattr(failure, "name", None) or getattr(failure, "current", None) or ""
        rows.append(["", name, "FAILED", str(failure)])
        console.step_summary(f"Migrations on {migrator.db_path}: failed", 
                             ["Version", "Name", "Result", "Duration"], rows)
        raise failure
    done = result.applied
    _say_synced(console, migrator)
    console.step_summary(
        f"Migrations on {migrator.db_path}: {_plural(len(done), 'migration')} {verb}",
        ["Version", "Name", "Result", "Duration"], rows)
    if console.json:
        console.emit({**console.partial, "error": None})
    elif not done:
        console.say(f"Nothing to apply: {migrator.db_path} is up to date"
                    f" ({_plural(len(migrations), 'migration')} in {migrator.migrations_dir}).")
    elif args.dry_run:
        console.say(f"Dry run: {_plural(len(done), 'migration')} would apply cleanly to"
                    f" {migrator.db_path}; nothing was changed.")
    else:
        mode = " in one transaction" if args.single_transaction else ""
        total_ms = (time.perf_counter() - started) * 1000
        console.say(f"Applied {_plural(len(done), 'migration')}{mode} to {migrator.db_path}"
                    f" in {format_ms(total_ms)}.")
    return EXIT_OK


def cmd_rollback(args: argparse.Namespace, console: Console) -> int:
    with _make_migrator(args, console) as migrator, _stop_on_signals(migrator):
        result = migrator.rollback(args.version, force=args.force)
    name = result.row.name
    if console.json:
        console.emit({
            "database": migrator.db_path,
            "rolled_back": {"version": result.row.version, "name": name},
            "down_script": result.down_path,
            "statements": result.statements,
            "schema_changed": result.down_path is not None,
        })
    elif result.down_path:
        console.say(f"Rolled back {name}: ran {result.down_path}"
                    f" ({_plural(result.statements, 'statement')}) and removed its record.")
    else:
        console.say(f"Rolled back {name}: removed its record only. There is no down script"
                    f" at {os.path.join(migrator.migrations_dir, DOWN_DIR, name + '.sql')},"
                    " so the schema was NOT changed.")
    return EXIT_OK


def cmd_check(args: argparse.Namespace, console: Console) -> int:
    migrations_dir = resolve_migrations_dir(args)
    migrations, findings = check_folder(migrations_dir)
    database = None
    if args.db_path or args.env:
        args.env = args.env or "dev"
        migrator = _make_migrator(args, console)
        database = migrator.db_path
        migrator._migrations = migrations
        with migrator:
            for s in migrator.status():
                if s.state == "modified":
                    findings.append(Finding(
                        "error", s.path or s.name, None, "modified",
                        f"applied to {database} on {s.applied_at}, changed since; restore"
                        " it and put the change in a new migration"))
    findings.sort(key=lambda f: (f.path, f.line or 0))
    errors = sum(1 for f in findings if f.severity == "error")
    warnings = len(findings) - errors
    if console.json:
        console.emit({
            "migrations_dir": migrations_dir,
            "database": database,
            "findings": [f._asdict() for f in findings],
            "summary": {"files": len(migrations), "errors": errors, "warnings": warnings},
        })
    for f in findings:
        where = f"{f.path}:{f.line}" if f.line else f.path
        color = "31" if f.severity == "error" else "33"
        console.say(f"{where}: {console.paint(f.severity, color)}: {f.message} [{f.code}]")
        if console.github:
            console.workflow_command(f.severity, f.message, f.path, f.line,
                                     f"D1 check ({f.code})")
    console.say(f"{_plural(len(migrations), 'migration')} checked: {_plural(errors, 'error')},"
                f" {_plural(warnings, 'warning')}.")
    return EXIT_FAILED if errors else EXIT_OK


def slugify(description: str) -> str:
    """"Add user indexes!" -> "add_user_indexes"."""
    return re.sub(r"[\W_]+", "_", description.lower()).strip("_")


def cmd_new(args: argparse.Namespace, console: Console) -> int:
    description = " ".join(args.description).strip()
    slug = slugify(description)
    if not slug:
        raise ConfigurationError(
            f"new: the description {description!r} has no letters or digits to name the file"
        )
    folder = resolve_migrations_dir(args)
    if os.path.isdir(folder):
        # Every number in front of a .sql file counts, also of a misnamed or
        # duplicate one: a number is never reused.
        numbers = [int(match.group(1)) for match in
                   (re.match(r"([0-9]+)", name) for name in os.listdir(folder)
                    if name.lower().endswith(".sql")) if match]
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
    elif console.quiet:
        pass
    else:
        print(path)
    return EXIT_OK


class UsageError(SystemExit):
    """argparse's complaint about the command line, kept for --json."""

    def __init__(self, message: str):
        self.message = message
        super().__init__(EXIT_USAGE)


class HelpFormatter(argparse.HelpFormatter):
    """argparse's formatter, sized as shutil.get_terminal_size would size it,
    without importing shutil: argparse builds a formatter for every option
    it adds, and shutil brings the compression modules along on every run."""

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

    def error(self, message: str):  # type: ignore[override]
        self.print_usage(sys.stderr)
        text = f"{self.prog}: error: {message}"
        print(text, file=sys.stderr)
        raise UsageError(text)


def build_parser() -> argparse.ArgumentParser:
    # argparse's own words stay English, as the tool's are: each of its
    # gettext lookups would import locale and search the disk for catalogs
    # that CPython does not ship, about 2 ms of every start.
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
                        help="exit 1 when anything is pending, modified or missing")
    status.set_defaults(handler=cmd_status)

    apply = commands.add_parser("apply", parents=[common],
                                help="apply the pending migrations in order")
    apply.add_argument("--target", metavar="VERSION",
                       help="apply up to and including this version")
    apply.add_argument("--allow-out-of-order", action="store_true",
                       help="apply pending migrations numbered below the highest applied one")
    apply.add_argument("--single-transaction", action="store_true",
                       help="apply all pending migrations in one transaction: all or nothing")
    apply.add_argument("--dry-run", action="store_true",
                       help="run the pending migrations in a transaction that is rolled back")
    apply.add_argument("--backup", metavar="PATH", nargs="?", const="",
                       help="copy the database first (default: beside it, with a UTC"
                            " timestamp in the name)")
    apply.add_argument("--foreign-keys", action="store_true",
                       help="enforce foreign keys as D1 does and check them after each migration")
    apply.set_defaults(handler=cmd_apply)

    rollback = commands.add_parser("rollback", parents=[common],
                                   help="roll back one applied migration (default: the latest)")
    rollback.add_argument("--version", metavar="VERSION", dest="version",
                          help="0001, 0001_initial_schema or 0001_initial_schema.sql")
    rollback.add_argument("--force", action="store_true",
                          help="roll back even though later migrations are applied")
    rollback.add_argument("--foreign-keys", action="store_true",
                          help="enforce foreign keys as D1 does while rolling back")
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
    check.set_defaults(handler=cmd_check)

    new = commands.add_parser("new", parents=[output, folder],
                              help="create the next NNNN_description.sql")
    new.add_argument("description", nargs="+", help='e.g. "Add user indexes"')
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
            Console(argparse.Namespace(json=True)).emit(
                {"error": error_payload(ConfigurationError(exc.message))})
        return code
    console = Console(args)
    try:
        try:
            check_wrangler_options(args)
            return args.handler(args, console)
        except sqlite3.Error as exc:
            raise MigrationError(
                f"SQLite error: {exc} (rerun with --verbose for a traceback)") from exc
    except MigrationError as exc:
        if console.verbose:
            import traceback
            traceback.print_exc()
        console.error(exc)
        return exc.exit_code
    except KeyboardInterrupt:
        print("Interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BrokenPipeError:
        # `apply_migrations.py status | head` must not end in a traceback.
        sys.stderr.close()
        sys.exit(EXIT_FAILED)
