#!/usr/bin/env python3
"""apply_migrations.py: schema migrations for SQLite and Cloudflare D1.

Migrations are the files named ``NNNN_description.sql`` directly inside the
migrations folder, applied in the order of their number.  Each file runs in
one transaction together with the row that records it in
``schema_migrations`` (version, name, SHA256 checksum, time, duration), so a
migration is either wholly applied and recorded or not at all.

    python apply_migrations.py init     --env dev
    python apply_migrations.py status   --env dev
    python apply_migrations.py apply    --env dev [--verbose]
    python apply_migrations.py rollback --version 0001_initial_schema --env dev

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
from contextlib import contextmanager
from typing import Callable, Dict, Iterator, List, NamedTuple, Optional

__version__ = "1.0.0"

# Where the tool keeps its own record of what ran.
TRACKING_TABLE = "schema_migrations"
TRACKING_COLUMNS = ("version", "name", "checksum", "applied_at", "duration_ms")

# <digits>_<description>.sql; the digits, as written, are the version.
MIGRATION_FILENAME = re.compile(r"(\d+)_(.+)\.sql\Z", re.DOTALL)
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
        where = [os.path.basename(path)]
        if statement is not None:
            where.append(f"statement {statement}")
        if line is not None:
            where.append(f"line {line}")
        super().__init__(
            f"Failed to {action} migration {name}: {reason} ({', '.join(where)})"
        )


class Interrupted(MigrationError):
    """SIGINT or SIGTERM arrived; the current migration was rolled back."""

    def __init__(self, signum: int):
        self.signum = signum
        self.current: Optional[str] = None
        self.applied = 0
        super().__init__("interrupted")

    @property
    def exit_code(self) -> int:  # type: ignore[override]
        return 128 + self.signum

    def __str__(self) -> str:
        done = f"{self.applied} migration{'s' if self.applied != 1 else ''}"
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


# --------------------------------------------------------------------------
# Small data types.


class Statement(NamedTuple):
    """One SQL statement: its text, where it starts and its first keyword."""

    sql: str
    line: int
    keyword: str  # upper-cased first word ("CREATE", "BEGIN"), or ""
    start: int
    end: int


class AppliedRow(NamedTuple):
    version: str
    name: str
    checksum: str
    applied_at: str
    duration_ms: float


class MigrationStatus(NamedTuple):
    version: str
    name: str
    path: Optional[str]  # None when the file is gone
    state: str  # applied, pending, modified or missing
    checksum: str  # the file's, or the recorded one when the file is gone
    applied_at: Optional[str]
    duration_ms: Optional[float]


class RollbackResult(NamedTuple):
    row: AppliedRow
    down_path: Optional[str]  # None: only the record was removed
    statements: int


# --------------------------------------------------------------------------
# Splitting SQL the way SQLite does.  The state machine is the one of
# sqlite3_complete() (SQLite's complete.c): a statement ends at a ';' outside
# quotes and comments, except inside CREATE [TEMP] TRIGGER, which ends only at
# a ';' that follows "; END".  Long stretches without a ';', quote or comment
# are consumed by one regular-expression step, so splitting is linear in the
# size of the text, and sqlite3.complete_statement confirms every piece.

_ID_CHAR = "A-Za-z0-9_$\x80-\U0010ffff"
_COMMENT = r"--[^\n]*(?:\n|\Z)|/\*[^*]*\*+(?:[^/*][^*]*\*+)*/"
_SPACE = r"[ \t\n\f\r]+"
_GAP = re.compile(rf"(?:{_SPACE}|{_COMMENT}|;)*")
_BODY = re.compile(
    rf"""(?:[^;'"`\[/\-]+|'[^']*'|"[^"]*"|`[^`]*`|\[[^\]]*\]|{_COMMENT}|/(?!\*)|-(?!-))*"""
)
_HEAD_TOKEN = re.compile(
    rf"""(?:{_SPACE}|{_COMMENT})+|[{_ID_CHAR}]+|'[^']*'|"[^"]*"|`[^`]*`|\[[^\]]*\]|[^;]""",
    re.DOTALL,
)
_TRIGGER_END = re.compile(
    rf"(?:{_SPACE}|{_COMMENT}|;)*END(?![{_ID_CHAR}])(?:{_SPACE}|{_COMMENT})*(;|\Z)",
    re.IGNORECASE,
)
_UNTERMINATED = {
    "'": "unterminated string literal",
    '"': 'unterminated "quoted" identifier',
    "`": "unterminated `quoted` identifier",
    "[": "unterminated [bracketed] identifier",
    "/": "unterminated /* comment",
}

# complete.c's states that matter while reading the head of a statement.
_START, _NORMAL, _EXPLAIN, _CREATE, _TRIGGER = range(5)


def _line_at(text: str, offset: int) -> int:
    return text.count("\n", 0, offset) + 1


def _unterminated(text: str, pos: int) -> SQLSplitError:
    return SQLSplitError(_UNTERMINATED[text[pos]], pos, _line_at(text, pos))


def split_sql(text: str) -> List[Statement]:
    """Split SQL text into statements exactly where SQLite would.

    Whitespace, comments and empty statements between statements belong to
    no statement.  The last statement may lack its ';'.  Raises SQLSplitError
    when the text ends inside a string, identifier, comment or trigger body.
    """
    statements: List[Statement] = []
    n = len(text)
    line, counted = 1, 0
    pos = _GAP.match(text).end()
    while pos < n:
        start = pos
        keyword = ""
        state = _START
        # Read tokens only while they can still make this a CREATE TRIGGER.
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
            if not keyword:
                keyword = word.upper() if word else "?"
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
                pos = _BODY.match(text, pos).end()
                if pos >= n:
                    raise SQLSplitError(
                        "CREATE TRIGGER has no END", start, _line_at(text, start)
                    )
                if text[pos] != ";":
                    raise _unterminated(text, pos)
                pos += 1
                end_match = _TRIGGER_END.match(text, pos)
                if end_match:
                    pos = end_match.end() - len(end_match.group(1))
                    break
        else:
            pos = _BODY.match(text, pos).end()
        if pos < n:
            if text[pos] != ";":
                raise _unterminated(text, pos)
            end = pos + 1
            complete = text[start:end]
        else:
            end = n
            complete = text[start:end] + "\n;"
        sql = text[start:end]
        line += text.count("\n", counted, start)
        counted = start
        if not sqlite3.complete_statement(complete):
            raise SQLSplitError("incomplete statement", start, line)
        statements.append(Statement(sql, line, keyword if keyword != "?" else "", start, end))
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


def decode_sql(data: bytes, path: str) -> str:
    """Decode a migration file as UTF-8, skipping a BOM; line endings stay."""
    skip = len(UTF8_BOM) if data.startswith(UTF8_BOM) else 0
    try:
        return data[skip:].decode("utf-8") if skip else data.decode("utf-8")
    except UnicodeDecodeError as exc:
        offset = skip + exc.start
        line = data.count(b"\n", 0, offset) + 1
        raise MigrationFileError(
            f"{path} is not valid UTF-8: byte 0x{data[offset]:02x} at byte offset"
            f" {offset} (line {line}); save it as UTF-8. Nothing was applied."
        ) from None


def quote_identifier(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def utc_now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


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
        """The file's statements, or MigrationFailed naming the file and line."""
        text = decode_sql(self.data, self.path)
        try:
            return split_sql(text)
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


def _sqlite_uri(path: str, mode: str) -> str:
    """A file: URI for path; only the characters URIs give a meaning are escaped."""
    escaped = path.replace("%", "%25").replace("?", "%3f").replace("#", "%23")
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
    if "disk is full" in lowered or "disk i/o error" in lowered:
        return DatabaseWriteError(
            f"Cannot write to database {db_path} ({message}); the disk or the database"
            " size limit was reached, nothing of the current migration was kept"
        )
    if "not a database" in lowered or "malformed" in lowered:
        return DatabaseConnectError(f"{db_path} is not a usable SQLite database ({message})")
    if "unable to open" in lowered:
        return DatabaseConnectError(f"cannot open {db_path} ({message})")
    return None


# --------------------------------------------------------------------------
# The Migrator: owns the connection, knows nothing of argparse or stdout.


class Migrator:
    """Applies, inspects and rolls back the migrations of one folder on one
    SQLite database.

    Every migration runs in one transaction together with its tracking row:
    if any statement fails, its changes are rolled back, no record is written
    and the migration stays pending.  Reads (status) never write, and never
    create the database file or the tracking table.
    """

    def __init__(
        self,
        db_path: str,
        migrations_dir: str = DEFAULT_MIGRATIONS_DIR,
        *,
        lock_timeout: float = DEFAULT_LOCK_TIMEOUT,
        log: Optional[Callable[[str], None]] = None,
    ):
        self.db_path = db_path
        self.migrations_dir = migrations_dir
        self.lock_timeout = lock_timeout
        self.log = log  # receives one line per statement, with its timing
        self.warnings: List[str] = []
        self.table = quote_identifier(TRACKING_TABLE)
        self._conn: Optional[sqlite3.Connection] = None
        self._migrations: Optional[List[Migration]] = None
        self._stop_signal: Optional[int] = None
        self._data_version: Optional[int] = None

    # -- connection and transactions ------------------------------------

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def __enter__(self) -> "Migrator":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def _connect(self, readonly: bool = False) -> Optional[sqlite3.Connection]:
        """Open the database; None when reading one that does not exist."""
        if self._conn is not None:
            return self._conn
        path = self.db_path
        if os.path.isdir(path):
            raise DatabaseConnectError(f"{path} is a directory, not a database file")
        if readonly and not os.path.exists(path):
            return None
        folder = os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(folder):
            raise DatabaseConnectError(
                f"the folder {os.path.dirname(path) or folder} of database {path} does not exist"
            )
        try:
            conn = sqlite3.connect(
                _sqlite_uri(path, "ro" if readonly else "rwc"),
                uri=True,
                isolation_level=None,  # we issue BEGIN/COMMIT/ROLLBACK ourselves
                timeout=self.lock_timeout,
                check_same_thread=False,
            )
        except sqlite3.Error as exc:
            raise DatabaseConnectError(f"cannot open {path} ({exc})") from None
        try:
            # Reading the schema surfaces "file is not a database" here, once,
            # instead of in the middle of a command.
            conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
        except sqlite3.Error as exc:
            conn.close()
            raise _describe_sqlite_error(exc, path) or DatabaseConnectError(
                f"cannot read {path} ({exc})"
            ) from None
        conn.set_progress_handler(self._should_stop, PROGRESS_STEPS)
        self._conn = conn
        return conn

    @contextmanager
    def transaction(self, immediate: bool = False) -> Iterator[sqlite3.Connection]:
        """BEGIN, yield, COMMIT; ROLLBACK on any exception (Ctrl-C too), re-raise.

        IMMEDIATE takes the write lock at BEGIN, waiting up to lock_timeout,
        so what is read inside cannot change before this transaction commits.
        """
        conn = self._conn
        assert conn is not None
        self._execute_admin("BEGIN IMMEDIATE" if immediate else "BEGIN")
        try:
            yield conn
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        self._execute_admin("COMMIT")

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
                described = DatabaseWriteError(
                    f"Database {self.db_path} stayed locked by another process for"
                    f" {self.lock_timeout:g} s (--lock-timeout); nothing was changed."
                    " Retry when the other migration run or program has finished."
                )
            raise described from None

    # -- interruption ------------------------------------------------------

    def request_stop(self, signum: int) -> None:
        """Signal handler: roll back the current migration and stop.

        Raising here stops Python code at once; inside a running statement
        the progress handler aborts it, and the loop turns that into the
        same Interrupted error.  Later signals are ignored while that unwinds.
        """
        if self._stop_signal is None:
            self._stop_signal = signum
            raise Interrupted(signum)

    def _should_stop(self) -> bool:
        return self._stop_signal is not None

    # -- reading -------------------------------------------------------------

    def migrations(self) -> List[Migration]:
        if self._migrations is None:
            self._migrations, warnings = discover(self.migrations_dir)
            self.warnings.extend(warnings)
        return self._migrations

    def _read_applied(self) -> Optional[Dict[str, AppliedRow]]:
        """The tracking rows by version; None when there is no tracking table."""
        conn = self._conn
        assert conn is not None
        columns = tuple(row[0] for row in conn.execute(SQL_TABLE_COLUMNS, (TRACKING_TABLE,)))
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
        applied: Dict[str, AppliedRow] = {}
        for raw in conn.execute(SQL_SELECT_APPLIED.format(table=self.table)):
            row = AppliedRow(*raw)
            if not isinstance(row.version, str) or not row.version.isdigit() or None in raw:
                raise TrackingTableError(
                    f"Table {TRACKING_TABLE} in {self.db_path} has an invalid row"
                    f" {tuple(raw)!r}: version must be digits and no column may be"
                    " empty. Nothing was changed; fix or delete that row by hand."
                )
            if row.version in applied:
                raise TrackingTableError(
                    f"Table {TRACKING_TABLE} in {self.db_path} records version"
                    f" {row.version} twice; nothing was changed. Delete the wrong row by hand."
                )
            applied[row.version] = row
        return applied

    def _refresh_applied(self) -> Optional[Dict[str, AppliedRow]]:
        """Re-read the tracking table only if another connection has written
        since the last read (PRAGMA data_version), inside the current lock."""
        version = self._conn.execute("PRAGMA data_version").fetchone()[0]  # type: ignore[union-attr]
        if version == self._data_version:
            return None
        self._data_version = version
        return self._read_applied() or {}

    def status(self) -> List[MigrationStatus]:
        """Every migration's state, files and records merged, by number.

        Read-only: a missing database stays missing, and no table is created.
        """
        migrations = self.migrations()
        applied: Dict[str, AppliedRow] = {}
        if self._connect(readonly=True) is not None:
            applied = self._read_applied() or {}
        result = []
        for m in migrations:
            row = applied.pop(m.version, None)
            if row is None:
                result.append(MigrationStatus(m.version, m.name, m.path, "pending",
                                              m.checksum, None, None))
            else:
                state = "applied" if row.checksum == m.checksum else "modified"
                result.append(MigrationStatus(m.version, m.name, m.path, state,
                                              m.checksum, row.applied_at, row.duration_ms))
        for row in applied.values():
            result.append(MigrationStatus(row.version, row.name, None, "missing",
                                          row.checksum, row.applied_at, row.duration_ms))
        result.sort(key=lambda s: (int(s.version), s.name))
        return result

    # -- writing -------------------------------------------------------------

    def init(self) -> bool:
        """Create the database and the tracking table; False if it was there."""
        self._connect()
        with self.transaction(immediate=True):
            existed = self._read_applied() is not None
            if not existed:
                self._execute_admin(SQL_CREATE_TRACKING.format(table=self.table))
        return not existed

    def _ensure_tracking_table(self) -> Dict[str, AppliedRow]:
        applied = self._read_applied()
        if applied is None:
            self._execute_admin(SQL_CREATE_TRACKING.format(table=self.table))
            applied = {}
        return applied

    def find(self, version: str, candidates) -> Optional[object]:
        """The item of candidates (having .version and .name) that version
        names: "0001", "1", "0001_initial_schema" or "0001_initial_schema.sql"."""
        wanted = version[:-4] if version.endswith(".sql") else version
        wanted = os.path.basename(wanted)
        for item in candidates:
            if wanted == item.name or wanted == item.version:
                return item
        if wanted.isdigit():
            for item in candidates:
                if int(item.version) == int(wanted):
                    return item
        return None

    def plan(self, applied: Dict[str, AppliedRow], target: Optional[str] = None,
             allow_out_of_order: bool = False) -> List[Migration]:
        """The migrations to apply, in order, after the checks that must pass
        before any of them runs."""
        migrations = self.migrations()
        modified = [m for m in migrations
                    if m.version in applied and applied[m.version].checksum != m.checksum]
        if modified:
            names = ", ".join(m.name for m in modified)
            raise MigrationFileError(
                f"Applied migrations were modified since they were applied: {names}."
                " Nothing was applied. Restore each file as it was applied"
                " (git checkout -- <file>) and put the change in a new migration;"
                " `status` lists them as modified."
            )
        pending = [m for m in migrations if m.version not in applied]
        if target is not None:
            chosen = self.find(target, migrations)
            if chosen is None:
                raise ConfigurationError(
                    f"--target {target}: no migration file has that version or name"
                    f" in {self.migrations_dir}"
                )
            pending = [m for m in pending if m.number <= chosen.number]  # type: ignore[attr-defined]
        if pending and applied and not allow_out_of_order:
            highest = max(applied.values(), key=lambda row: int(row.version))
            early = [m for m in pending if m.number < int(highest.version)]
            if early:
                raise MigrationFileError(
                    f"Migration {early[0].name} is pending but {highest.name}, which has a"
                    " higher number, is already applied; nothing was applied. Renumber"
                    " the new migration above it, or apply it anyway with"
                    " --allow-out-of-order."
                )
        return pending

    def apply(
        self,
        target: Optional[str] = None,
        allow_out_of_order: bool = False,
        single_transaction: bool = False,
        on_applied: Optional[Callable[[int, int, Migration, float], None]] = None,
    ) -> List[Migration]:
        """Apply the pending migrations in order; return those applied.

        Each one commits together with its tracking row.  On a failure the run
        stops: earlier migrations stay applied, the failing one leaves nothing
        and later ones are not tried.  With single_transaction the whole run
        is one transaction and a failure leaves the database as it was.
        """
        self.migrations()
        self._connect()
        done: List[Migration] = []
        current: Optional[Migration] = None
        try:
            if single_transaction:
                with self.transaction(immediate=True):
                    pending = self.plan(self._ensure_tracking_table(), target,
                                        allow_out_of_order)
                    prepared = [(m, self._prepare(m)) for m in pending]
                    for current, statements in prepared:
                        duration = self._run(current, statements)
                        done.append(current)
                        if on_applied:
                            on_applied(len(done), len(prepared), current, duration)
                    current = None
                return done

            with self.transaction(immediate=True):
                applied = self._ensure_tracking_table()
                pending = self.plan(applied, target, allow_out_of_order)
                self._data_version = self._conn.execute(  # type: ignore[union-attr]
                    "PRAGMA data_version").fetchone()[0]
            # Check every pending file before running any: a bad file
            # further down must not leave the run half done.
            prepared = [(m, self._prepare(m)) for m in pending]
            for current, statements in prepared:
                with self.transaction(immediate=True):
                    changed = self._refresh_applied()
                    if changed is not None:
                        # Another process migrated meanwhile: follow what it did.
                        if current.version in changed:
                            continue
                        self.plan(changed, target, allow_out_of_order)
                    duration = self._run(current, statements)
                done.append(current)
                current = None
                if on_applied:
                    on_applied(len(done), len(prepared), done[-1], duration)
            return done
        except Interrupted as exc:
            exc.current = current.name if current else None
            exc.applied = 0 if single_transaction else len(done)
            raise

    def _prepare(self, migration: Migration) -> List[Statement]:
        """Split a file and refuse transaction control inside it.

        A file wrapped whole in BEGIN ... COMMIT keeps its meaning: the two
        are dropped and the rest runs in the tool's own transaction.
        """
        statements = migration.statements()
        if (len(statements) >= 2 and statements[0].keyword == "BEGIN"
                and statements[-1].keyword in ("COMMIT", "END")):
            statements = statements[1:-1]
        for number, statement in enumerate(statements, 1):
            if statement.keyword in TRANSACTION_KEYWORDS:
                raise MigrationFailed(
                    migration.name, migration.path,
                    f"{statement.keyword} is not allowed inside a migration: each file"
                    " already runs in its own transaction (a BEGIN ... COMMIT around the"
                    " whole file is accepted); nothing of it was run",
                    number, statement.line, statement.sql,
                )
        return statements

    def _run(self, migration: Migration, statements: List[Statement]) -> float:
        """Execute a migration's statements and write its tracking row inside
        the caller's transaction.  Returns the duration in milliseconds."""
        execute = self._conn.execute  # type: ignore[union-attr]
        log = self.log
        started = time.perf_counter()
        for number, statement in enumerate(statements, 1):
            try:
                if log is None:
                    execute(statement.sql)
                else:
                    before = time.perf_counter()
                    execute(statement.sql)
                    log(_describe_statement(migration.name, number, statement,
                                            time.perf_counter() - before))
            except (sqlite3.Error, sqlite3.Warning, ValueError) as exc:
                if self._stop_signal is not None:
                    raise Interrupted(self._stop_signal) from None
                described = _describe_sqlite_error(exc, self.db_path)
                reason = str(described) if isinstance(described, DatabaseWriteError) else str(exc)
                raise MigrationFailed(migration.name, migration.path, reason,
                                      number, statement.line, statement.sql) from exc
        duration_ms = (time.perf_counter() - started) * 1000.0
        self._execute_admin(
            SQL_INSERT_APPLIED.format(table=self.table),
            (migration.version, migration.name, migration.checksum, utc_now(),
             round(duration_ms, 3)),
        )
        return duration_ms

    def rollback(self, version: Optional[str] = None, force: bool = False) -> RollbackResult:
        """Undo one applied migration: run its down script, if there is one,
        and delete its tracking row, in one transaction."""
        if self._connect(readonly=True) is None:
            raise MigrationError(
                f"Migration {version} not found in applied migrations"
                if version else f"Nothing to roll back: database {self.db_path} does not exist"
            )
        self.close()
        self._connect()
        with self.transaction(immediate=True):
            applied = self._read_applied() or {}
            rows = sorted(applied.values(), key=lambda r: int(r.version))
            if version is None:
                if not rows:
                    raise MigrationError("Nothing to roll back: no migrations have been applied")
                row = rows[-1]
            else:
                found = self.find(version, rows)
                if found is None:
                    raise MigrationError(f"Migration {version} not found in applied migrations")
                row = found  # type: ignore[assignment]
            later = [r.name for r in rows if int(r.version) > int(row.version)]
            if later and not force:
                raise MigrationError(
                    f"Cannot roll back {row.name}: later migrations are still applied"
                    f" ({', '.join(later)}). Roll those back first, or pass --force"
                    " to roll back only this one."
                )
            down_path = os.path.join(self.migrations_dir, DOWN_DIR, row.name + ".sql")
            statements: List[Statement] = []
            if os.path.isfile(down_path):
                down = Migration(row.version, row.name, down_path)
                try:
                    statements = self._prepare(down)
                except MigrationFailed as exc:
                    raise MigrationFailed(row.name, down_path, exc.reason, exc.statement,
                                          exc.line, exc.sql, action="roll back") from None
                self._run_down(row, down_path, statements)
            else:
                down_path = None  # type: ignore[assignment]
            self._execute_admin(SQL_DELETE_APPLIED.format(table=self.table), (row.version,))
        return RollbackResult(row, down_path, len(statements))

    def _run_down(self, row: AppliedRow, path: str, statements: List[Statement]) -> None:
        for number, statement in enumerate(statements, 1):
            try:
                self._conn.execute(statement.sql)  # type: ignore[union-attr]
            except (sqlite3.Error, sqlite3.Warning, ValueError) as exc:
                if self._stop_signal is not None:
                    raise Interrupted(self._stop_signal) from None
                raise MigrationFailed(row.name, path, str(exc), number, statement.line,
                                      statement.sql, action="roll back") from exc


def _describe_statement(name: str, number: int, statement: Statement, seconds: float) -> str:
    first_line = " ".join(statement.sql.split())
    if len(first_line) > 80:
        first_line = first_line[:77] + "..."
    return f"{name} statement {number} (line {statement.line}): {format_ms(seconds * 1000)}  {first_line}"


def format_ms(ms: float) -> str:
    if ms < 1000:
        return f"{ms:.1f} ms"
    return f"{ms / 1000:.1f} s"


# --------------------------------------------------------------------------
# The command line.


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


def _ellipsis() -> str:
    encoding = (getattr(sys.stdout, "encoding", None) or "").lower().replace("-", "")
    return "\u2026" if encoding == "utf8" else "..."


def _plural(count: int, word: str) -> str:
    return f"{count} {word}{'' if count == 1 else 's'}"


def _make_migrator(args: argparse.Namespace) -> Migrator:
    log = None
    if args.verbose:
        def log(line: str) -> None:
            print(line, file=sys.stderr, flush=True)
    return Migrator(resolve_db_path(args), args.migrations_dir,
                    lock_timeout=args.lock_timeout, log=log)


def _print_warnings(migrator: Migrator) -> None:
    for warning in migrator.warnings:
        print(f"Warning: {warning}", file=sys.stderr)


def cmd_init(args: argparse.Namespace) -> int:
    with _make_migrator(args) as migrator:
        created = migrator.init()
    if created:
        print(f"Initialized {TRACKING_TABLE} in {migrator.db_path}")
    else:
        print(f"{TRACKING_TABLE} already exists in {migrator.db_path}; nothing to do")
    return EXIT_OK


STATE_MARKS = {"applied": "[X]", "pending": "[ ]", "modified": "[!]", "missing": "[?]"}


def cmd_status(args: argparse.Namespace) -> int:
    with _make_migrator(args) as migrator:
        states = migrator.status()
        _print_warnings(migrator)
        exists = os.path.exists(migrator.db_path)
    print(f"Database:   {migrator.db_path}{'' if exists else ' (does not exist yet)'}")
    print(f"Migrations: {migrator.migrations_dir}")
    print()
    width = max([len(s.name) for s in states] + [4])
    for s in states:
        detail = ""
        if s.state == "applied":
            detail = f"applied {s.applied_at}"
        elif s.state == "modified":
            detail = f"MODIFIED: applied {s.applied_at}, file changed since"
        elif s.state == "missing":
            detail = f"MISSING: applied {s.applied_at}, file gone"
        else:
            detail = "pending"
        print(f"{STATE_MARKS[s.state]} {s.name:<{width}}  {detail}")
    if not states:
        print("(no migrations)")
    counts = {state: 0 for state in STATE_MARKS}
    for s in states:
        counts[s.state] += 1
    print()
    print(", ".join(f"{state.capitalize()}: {count}" for state, count in counts.items()))
    return EXIT_OK


def cmd_apply(args: argparse.Namespace) -> int:
    migrator = _make_migrator(args)
    ellipsis = _ellipsis()
    started = time.perf_counter()

    def on_applied(index: int, total: int, migration: Migration, duration_ms: float) -> None:
        print(f"[{index}/{total}] {migration.name} {ellipsis} {format_ms(duration_ms)}",
              flush=True)

    def on_signal(signum, frame):
        migrator.request_stop(signum)

    with migrator:
        migrations = migrator.migrations()
        _print_warnings(migrator)
        previous = {signum: signal.signal(signum, on_signal)
                    for signum in (signal.SIGINT, signal.SIGTERM)}
        try:
            done = migrator.apply(
                target=args.target,
                allow_out_of_order=args.allow_out_of_order,
                single_transaction=args.single_transaction,
                on_applied=on_applied,
            )
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)
    if not done:
        print(f"Nothing to apply: {migrator.db_path} is up to date"
              f" ({_plural(len(migrations), 'migration')} in {migrator.migrations_dir}).")
    else:
        mode = " in one transaction" if args.single_transaction else ""
        total_ms = (time.perf_counter() - started) * 1000
        print(f"Applied {_plural(len(done), 'migration')}{mode} to {migrator.db_path}"
              f" in {format_ms(total_ms)}.")
    return EXIT_OK


def cmd_rollback(args: argparse.Namespace) -> int:
    with _make_migrator(args) as migrator:
        result = migrator.rollback(args.version, force=args.force)
    name = result.row.name
    if result.down_path:
        print(f"Rolled back {name}: ran {result.down_path}"
              f" ({_plural(result.statements, 'statement')}) and removed its record.")
    else:
        print(f"Rolled back {name}: removed its record only. There is no down script at"
              f" {os.path.join(args.migrations_dir, DOWN_DIR, name + '.sql')}, so the"
              " schema was NOT changed.")
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--env", choices=("dev", "production"), default="dev",
                        help=f"dev: ./{DEFAULT_DB_PATH}; production: the path in"
                             f" ${DB_PATH_VARIABLE} (default: dev)")
    common.add_argument("--db-path", metavar="PATH",
                        help="database file; overrides --env")
    common.add_argument("--migrations-dir", metavar="DIR", default=DEFAULT_MIGRATIONS_DIR,
                        help="folder of NNNN_description.sql files (default: ./migrations)")
    common.add_argument("--lock-timeout", metavar="SECONDS", type=float,
                        default=DEFAULT_LOCK_TIMEOUT,
                        help="how long to wait for another process's write lock"
                             " (default: 60)")
    common.add_argument("--verbose", "-v", action="store_true",
                        help="log each statement with its timing to stderr;"
                             " show tracebacks")

    parser = argparse.ArgumentParser(
        prog="apply_migrations.py",
        description="Schema migrations for SQLite and Cloudflare D1.",
        epilog="See MIGRATION_SYSTEM.md for the manual.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.required = True

    init = commands.add_parser("init", parents=[common],
                               help="create the database and the tracking table")
    init.set_defaults(handler=cmd_init)

    status = commands.add_parser("status", parents=[common],
                                 help="show applied, pending, modified and missing migrations")
    status.set_defaults(handler=cmd_status)

    apply = commands.add_parser("apply", parents=[common],
                                help="apply the pending migrations in order")
    apply.add_argument("--target", metavar="VERSION",
                       help="apply up to and including this version")
    apply.add_argument("--allow-out-of-order", action="store_true",
                       help="apply pending migrations numbered below the highest applied one")
    apply.add_argument("--single-transaction", action="store_true",
                       help="apply all pending migrations in one transaction: all or nothing")
    apply.set_defaults(handler=cmd_apply)

    rollback = commands.add_parser("rollback", parents=[common],
                                   help="roll back one applied migration (default: the latest)")
    rollback.add_argument("--version", metavar="VERSION", dest="version",
                          help="0001, 0001_initial_schema or 0001_initial_schema.sql")
    rollback.add_argument("--force", action="store_true",
                          help="roll back even though later migrations are applied")
    rollback.set_defaults(handler=cmd_rollback)
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
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    try:
        return args.handler(args)
    except MigrationError as exc:
        if args.verbose:
            import traceback
            traceback.print_exc()
        print(str(exc) if isinstance(exc, Interrupted) else f"Error: {exc}",
              file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("Interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except sqlite3.Error as exc:
        if args.verbose:
            import traceback
            traceback.print_exc()
        print(f"Error: SQLite error: {exc} (rerun with --verbose for details)",
              file=sys.stderr)
        return EXIT_FAILED


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BrokenPipeError:
        # `apply_migrations.py status | head` must not end in a traceback.
        sys.stderr.close()
        sys.exit(EXIT_FAILED)
