"""An in-process fake of Cloudflare D1's HTTP API, for tests (standard library only).

FakeD1 serves, on 127.0.0.1 in a daemon thread, what tests/fixtures/d1_api_worker
(the wrangler-based stand-in, see its README.md) serves, without Node:

  POST {api_base}/accounts/{account}/d1/database/{database}/query   rows as objects
  POST {api_base}/accounts/{account}/d1/database/{database}/raw     {"columns", "rows"}
  GET  .../time_travel/bookmark   an opaque bookmark that changes after each committed write
  POST .../time_travel/restore?bookmark=...   answers success; restores nothing

Modelled: the v4 envelope and error codes of worker.js (7400 malformed, 7500 SQL
error / no statements / SQLITE_TOOBIG, 10000 auth, 7404 database, 7003 route);
splitting `sql` with sqlite3_complete's rules (the worker's state machine); one
transaction per request (all or nothing); D1's rules: foreign keys always on
(`PRAGMA foreign_keys = OFF` is a no-op), BEGIN/COMMIT/SAVEPOINT/ATTACH/DETACH,
TEMP objects, `_cf_` names and PRAGMAs outside D1's list not authorized.  A
`_cf_KV` table exists, as on remote D1.  Fault injection (scripted answers,
dropped connections, delays) and a record of every request.

Not modelled: the remote splitter's trigger bug, the 100-parameter and 2 MB
limits, D1's newer SQLite (the fake runs the local sqlite3), `meta` beyond rough
numbers, real Time Travel, rate limits other than scripted ones.
"""
from __future__ import annotations

import collections
import http.client
import json
import os
import re
import socket
import sqlite3
import tempfile
import threading
import time
import traceback
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable, Dict, List, NamedTuple, Optional, Sequence, Union
from urllib.parse import parse_qs, urlsplit

# the ids and the exception of the wrangler-backed helper (stdlib only, beside this file)
from d1_api import ACCOUNT_ID, DATABASE_ID, D1ApiError  # noqa: F401

try:
    import pytest
except ImportError:  # usable outside pytest too
    pytest = None

ROUTE = re.compile(r"^/client/v4/accounts/([^/]+)/d1/database/([^/]+)/"
                   r"(query|raw|time_travel/bookmark|time_travel/restore)/?$")
KINDS = {"time_travel/bookmark": "bookmark", "time_travel/restore": "restore"}
METHODS = {"query": "POST", "raw": "POST", "bookmark": "GET", "restore": "POST"}
ALLOWED_PRAGMAS = frozenset(
    "foreign_keys defer_foreign_keys foreign_key_check foreign_key_list table_info"
    " table_xinfo table_list index_info index_xinfo index_list quick_check optimize"
    " case_sensitive_like recursive_triggers legacy_alter_table ignore_check_constraints"
    " reverse_unordered_selects".split())
_DENIED = {sqlite3.SQLITE_TRANSACTION, getattr(sqlite3, "SQLITE_SAVEPOINT", 32),
           sqlite3.SQLITE_ATTACH, sqlite3.SQLITE_DETACH, sqlite3.SQLITE_CREATE_TEMP_INDEX,
           sqlite3.SQLITE_CREATE_TEMP_TABLE, sqlite3.SQLITE_CREATE_TEMP_TRIGGER,
           sqlite3.SQLITE_CREATE_TEMP_VIEW}
# actions whose first argument names a table, index, trigger or view
_NAMED = {1, 2, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 20, 23, 29, 30}

# ---------------------------------------------------------------------------
# Splitting, as worker.js (the state machine of sqlite3_complete())

_TOKEN = re.compile(r"""(?P<semi>;)
  | (?P<ws>\s+ | --[^\n]*(?:\n|\Z) | /\*.*?(?:\*/|\Z))
  | (?P<word>[A-Za-z_\x80-\U0010ffff][A-Za-z0-9_$\x80-\U0010ffff]*)
  | '(?:[^']|'')*'? | "(?:[^"]|"")*"? | `(?:[^`]|``)*`? | \[[^\]]*\]? | .""", re.X | re.S)
_WORDS = {"CREATE": 4, "TEMP": 5, "TEMPORARY": 5, "TRIGGER": 6, "END": 7, "EXPLAIN": 3}
# states 0..7 x token classes (0 ";", 1 space, 2 other, 3 EXPLAIN, 4 CREATE, 5 TEMP, 6 TRIGGER, 7 END)
_TRANS = ((1, 0, 2, 3, 4, 2, 2, 2), (1, 1, 2, 3, 4, 2, 2, 2), (1, 2, 2, 2, 2, 2, 2, 2),
          (1, 3, 3, 2, 4, 2, 2, 2), (1, 4, 2, 2, 2, 4, 5, 2), (6, 5, 5, 5, 5, 5, 5, 5),
          (6, 6, 5, 5, 5, 5, 5, 7), (1, 7, 5, 5, 5, 5, 5, 5))


def split_statements(sql: str) -> List[str]:
    """The statements of `sql` (trimmed, each with its ";"); pieces holding only
    spaces, comments and ";" are dropped."""
    out, state, start, has_token = [], 0, 0, False
    for m in _TOKEN.finditer(sql):
        cls = (0 if m.lastgroup == "semi" else 1 if m.lastgroup == "ws" else
               _WORDS.get(m.group().upper(), 2) if m.lastgroup == "word" else 2)
        has_token = has_token or cls >= 2
        state = _TRANS[state][cls]
        if cls == 0 and state == 1:
            if has_token:
                out.append(sql[start:m.end()].strip())
            start, has_token = m.end(), False
    if has_token:
        out.append(sql[start:].strip())
    return out


# ---------------------------------------------------------------------------
# Scripted actions

class Action(NamedTuple):
    """What to do with one request instead of (or before) answering it normally.
    `match` (a kind such as "query", or fn(record) -> bool) makes the action wait
    at the head of the script until a request matches; others pass untouched."""
    kind: str  # "respond", "drop" or "sleep"
    status: Optional[int] = None
    body: bytes = b""
    headers: Optional[Dict[str, str]] = None
    execute: bool = False
    seconds: float = 0.0
    match: Union[None, str, Callable] = None

    def matches(self, record: dict) -> bool:
        m = self.match
        return m is None or (record["kind"] == m if isinstance(m, str) else bool(m(record)))


def _envelope_error(code: int, message: str) -> dict:
    return {"success": False, "errors": [{"code": code, "message": message}],
            "messages": [], "result": None}


def _to_bytes(body: Union[bytes, str, dict, list]) -> bytes:
    text = body if isinstance(body, (bytes, str)) else json.dumps(body)
    return text.encode("utf-8") if isinstance(text, str) else text


def respond(status: int, body: Union[bytes, str, dict, list, None] = None,
            headers: Optional[Dict[str, str]] = None, execute: bool = False,
            match=None) -> Action:
    """Answer (status, body) instead; execute=True runs and commits the SQL first.
    The default body is an error envelope (code 7500, the status's phrase)."""
    if body is None:
        body = _envelope_error(7500, http.client.responses.get(status, "Error"))
    return Action("respond", status, _to_bytes(body), dict(headers or {}), execute, match=match)


def malformed(body: Union[bytes, str, dict, list], status: int = 200, execute: bool = False,
              match=None) -> Action:
    """An answer that is not the expected envelope (still labelled JSON)."""
    return respond(status, body, execute=execute, match=match)


def rate_limited(retry_after: Optional[str] = "2", match=None) -> Action:
    """429 with Retry-After (unless None) and Cloudflare's error body; nothing runs."""
    headers = {} if retry_after is None else {"Retry-After": str(retry_after)}
    return respond(429, _envelope_error(971, "Please wait and consider throttling your"
                                             " request speed"), headers, match=match)


def drop(execute: bool = False, match=None) -> Action:
    """Close the connection without answering (execute=True: after committing)."""
    return Action("drop", execute=execute, match=match)


def sleep(seconds: float, match=None) -> Action:
    """Wait `seconds`, then handle the request normally."""
    return Action("sleep", seconds=seconds, match=match)


# ---------------------------------------------------------------------------

HISTORY_TABLE = "schema_migrations_history"

class FakeD1:
    """A fake D1 database behind the D1 HTTP API (see the module docstring)."""

    def __init__(self, token: str = "test-token", account: Optional[str] = ACCOUNT_ID,
                 database: Optional[str] = DATABASE_ID, db_path: Optional[str] = None,
                 max_statement_bytes: int = 100000):
        self.token, self.account, self.database = token, account, database
        self.max_statement_bytes = max_statement_bytes
        self._tmp = None if db_path else tempfile.TemporaryDirectory(prefix="fake-d1-")
        self.db_path = str(db_path or os.path.join(self._tmp.name, "d1.sqlite"))
        # actions, or fn(record) -> None | Action, each used by one request, in order
        self.script: "collections.deque" = collections.deque()
        self.delay = 0.0  # seconds to wait before handling every request
        self.requests: List[dict] = []
        self.errors: List[str] = []  # tracebacks of the fake's own failures
        self._lock, self._script_lock = threading.RLock(), threading.Lock()
        self._nonce = uuid.uuid4().hex  # marks the fake's own statements
        self._version = 0
        self._server: Optional[ThreadingHTTPServer] = None
        self.base = self.api_base = ""
        self._init_db()

    # -- server ---------------------------------------------------------------

    def start(self) -> "FakeD1":
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def do_GET(self):
                fake._serve(self)

            do_POST = do_PUT = do_DELETE = do_PATCH = do_GET

        class Server(ThreadingHTTPServer):
            daemon_threads = True

            def handle_error(self, request, client_address):  # quiet
                pass

        self._server = Server(("127.0.0.1", 0), Handler)
        self.base = f"http://127.0.0.1:{self._server.server_address[1]}"
        self.api_base = self.base + "/client/v4"
        threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._tmp is not None:
            with self._lock:
                self._tmp.cleanup()

    def __enter__(self) -> "FakeD1":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def push(self, action) -> None:
        self.script.append(action)

    def _take(self, record: dict) -> Optional[Action]:
        with self._script_lock:
            if not self.script or (isinstance(self.script[0], Action)
                                   and not self.script[0].matches(record)):
                return None
            head = self.script.popleft()
        return head if isinstance(head, Action) else head(record)

    @property
    def request_count(self) -> int:
        return len(self.requests)

    def reset_requests(self) -> None:
        self.requests[:] = []

    @property
    def bookmark(self) -> str:
        return f"{self._version:08x}-00000000-00000000-{self._nonce}"

    # -- one HTTP request -------------------------------------------------------

    def _serve(self, h: BaseHTTPRequestHandler) -> None:
        arrival = time.monotonic()
        url = urlsplit(h.path)
        raw = h.rfile.read(int(h.headers.get("Content-Length") or 0))
        route = ROUTE.match(url.path)
        kind = KINDS.get(route.group(3), route.group(3)) if route else "unknown"
        body = None
        if kind in ("query", "raw"):
            try:
                body = json.loads(raw.decode("utf-8"))
            except ValueError:
                pass
        record = {"method": h.command, "path": url.path, "query": parse_qs(url.query),
                  "kind": kind, "body": body, "headers": dict(h.headers), "time": arrival,
                  "status": None, "action": None}
        self.requests.append(record)
        try:
            if self.delay:
                time.sleep(self.delay)
            action = self._take(record)
            record["action"] = action
            if action is not None and action.kind == "sleep":
                time.sleep(action.seconds)
                action = None
            if action is None or action.execute:
                status, data, headers = self._answer(h, route, kind, raw, record["query"])
            if action is not None and action.kind == "respond":
                status, data, headers = action.status, action.body, action.headers or {}
            if action is not None and action.kind == "drop":
                h.close_connection = True
                try:
                    h.connection.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                return
        except Exception:
            self.errors.append(traceback.format_exc())
            status, data, headers = 500, _to_bytes(_envelope_error(500, "fake_d1 failed")), {}
        record["status"] = status
        headers = {"Content-Type": "application/json", **headers}
        try:
            h.send_response(status)
            for name, value in headers.items():
                h.send_header(name, value)
            h.send_header("Content-Length", str(len(data)))
            h.end_headers()
            h.wfile.write(data)
        except OSError:  # the client gave up
            pass

    def _answer(self, h, route, kind, raw, query):
        """(status, body bytes, headers) as the API would answer."""
        def fail(status, code, message):
            return status, _to_bytes(_envelope_error(code, message)), {}

        if route is None:
            return fail(404, 7003, "No route for the URI")
        if h.command != METHODS[kind]:
            return fail(405, 10405, "Method not allowed")
        if h.headers.get("Authorization", "") != f"Bearer {self.token}" or not self.token:
            return fail(403, 10000, "Authentication error")
        account, database = route.group(1), route.group(2)
        if self.account and account != self.account:
            return fail(403, 10000, "Authentication error")
        if self.database and database != self.database:
            return fail(404, 7404, f"Couldn't find a D1 DB with the uuid {database}")
        if kind in ("query", "raw"):
            status, payload = self.execute(kind, raw)
            return status, _to_bytes(payload), {}
        result = {"bookmark": self.bookmark}
        if kind == "restore":
            if not query.get("bookmark"):
                return fail(400, 7400, "The request is malformed: bookmark is required")
            result = {"bookmark": query["bookmark"][0], "previous_bookmark": self.bookmark,
                      "message": "Restored (fake: nothing was changed)"}
        return 200, _to_bytes({"success": True, "result": result, "errors": [],
                               "messages": []}), {}

    # -- SQL --------------------------------------------------------------------

    def execute(self, kind: str, body: Union[bytes, str, dict]) -> "tuple[int, dict]":
        """Run a /query or /raw body as the API does; (status, envelope)."""
        def fail(code, message):
            return 400, _envelope_error(code, message)

        if isinstance(body, (bytes, str)):
            try:
                body = json.loads(body)
            except ValueError:
                return fail(7400, "The request is malformed: invalid JSON body")
        if isinstance(body, dict) and isinstance(body.get("batch"), list):
            queries = body["batch"]
        elif isinstance(body, dict) and isinstance(body.get("sql"), str):
            queries = [body]
        else:
            return fail(7400, "The request is malformed: expected {sql, params} or {batch: [...]}")
        statements = []
        for q in queries:
            if not isinstance(q, dict) or not isinstance(q.get("sql"), str):
                return fail(7400, "The request is malformed: sql must be a string")
            params = [] if q.get("params") is None else q["params"]
            if not isinstance(params, list):
                return fail(7400, "The request is malformed: params must be an array")
            if any(p is not None and not isinstance(p, (str, int, float)) for p in params):
                return fail(7400, "The request is malformed: Type is not supported")
            parts = split_statements(q["sql"])
            if len(parts) > 1 and params:
                return fail(7400, "The request is malformed: params with multiple"
                                  " statements is not supported")
            for part in parts:
                if 0 < self.max_statement_bytes < len(part.encode("utf-8")):
                    return fail(7500, "statement too long: SQLITE_TOOBIG")
                statements.append((part, params))
        if not statements:
            return fail(7500, "No SQL statements detected.")
        with self._lock:
            return self._run(kind, statements)

    def _run(self, kind, statements):
        conn = sqlite3.connect(self.db_path, isolation_level=None, check_same_thread=False)
        enforce = [False]
        conn.set_authorizer(lambda *a: self._authorize(enforce[0], *a))
        ctl = lambda sql: conn.execute(f"{sql} /* fake-d1 {self._nonce} */")  # noqa: E731
        stats = "SELECT * FROM pragma_schema_version, pragma_page_count, pragma_page_size"
        try:
            ctl("PRAGMA foreign_keys = ON")
            ctl("BEGIN")
            schema_before = ctl(stats).fetchone()[0]
            out, changed = [], False
            for sql, params in statements:
                started, changes_before = time.perf_counter(), conn.total_changes
                enforce[0] = True
                try:
                    cur = conn.execute(sql, params)
                    columns = [d[0] for d in cur.description or ()]
                    rows = [[list(v) if isinstance(v, bytes) else v for v in r]
                            for r in cur.fetchall()]
                finally:
                    enforce[0] = False
                schema, pages, page_size = ctl(stats).fetchone()
                changes = max(cur.rowcount, 0)
                changed_db = conn.total_changes > changes_before or schema != schema_before
                changed, schema_before = changed or changed_db, schema
                meta = {"duration": (time.perf_counter() - started) * 1000.0, "changes": changes,
                        "last_row_id": cur.lastrowid or 0, "rows_read": len(rows),
                        "rows_written": conn.total_changes - changes_before,
                        "changed_db": changed_db, "size_after": pages * page_size,
                        "served_by": "fake-d1"}
                results = ({"columns": columns, "rows": rows} if kind == "raw" else
                           [dict(zip(columns, r)) for r in rows])
                out.append({"results": results, "success": True, "meta": meta})
            ctl("COMMIT")
            self._version += changed
            return 200, {"success": True, "errors": [], "messages": [], "result": out}
        except (sqlite3.Error, sqlite3.Warning, OverflowError) as exc:
            if conn.in_transaction:
                ctl("ROLLBACK")
            return 400, _envelope_error(7500, _message(exc))
        finally:
            conn.close()

    @staticmethod
    def _authorize(enforce, action, arg1, arg2, dbname, source):
        if not enforce:
            return sqlite3.SQLITE_OK
        named = arg2 if action == sqlite3.SQLITE_ALTER_TABLE else arg1
        if (action in _DENIED
                or (action == sqlite3.SQLITE_PRAGMA and arg1.lower() not in ALLOWED_PRAGMAS)
                or (action in _NAMED or action == sqlite3.SQLITE_ALTER_TABLE)
                and (named or "").lower().startswith("_cf_")):
            return sqlite3.SQLITE_DENY
        return sqlite3.SQLITE_OK

    # -- direct access (not through HTTP, not recorded) ------------------------------

    def post(self, kind: str, body: dict) -> list:
        """Run a body as the API would (D1's rules, one transaction) without HTTP:
        its `result` list, or D1ApiError(status, envelope)."""
        status, payload = self.execute(kind, body)
        if status != 200:
            raise D1ApiError(status, payload)
        return payload["result"]

    def sql(self, sql: str, params: Sequence[object] = ()) -> list:
        return self.post("query", {"sql": sql, "params": list(params)})

    def rows(self, sql: str, params: Sequence[object] = ()) -> List[tuple]:
        """Rows straight from the SQLite file (no D1 rules)."""
        with self._lock:
            conn = sqlite3.connect(self.db_path)
            try:
                return [tuple(r) for r in conn.execute(sql, tuple(params)).fetchall()]
            finally:
                conn.close()

    _USER = ("name NOT LIKE '\\_cf\\_%' ESCAPE '\\' AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\'")

    def tables(self) -> List[str]:
        return [r[0] for r in self.rows(
            f"SELECT name FROM sqlite_master WHERE type = 'table' AND {self._USER} ORDER BY name")]

    def has_table(self, name: str) -> bool:
        return bool(self.rows("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?",
                              [name]))

    def tracking(self) -> List[tuple]:
        """(version, name) of schema_migrations, [] when it does not exist."""
        return (self.rows("SELECT version, name FROM schema_migrations ORDER BY version")
                if self.has_table("schema_migrations") else [])

    def wrangler_rows(self) -> List[str]:
        return ([r[0] for r in self.rows("SELECT name FROM d1_migrations ORDER BY id")]
                if self.has_table("d1_migrations") else [])

    def dump(self, history: bool = False) -> dict:
        """The schema and every row; the tool's history (which grows with
        every attempt, by design) only when asked for."""
        schema = [row for row in self.rows("SELECT type, name, tbl_name, sql FROM sqlite_master"
                                           f" WHERE {self._USER} ORDER BY type, name")
                  if history or row[2] != HISTORY_TABLE]
        data = {}
        for table in self.tables():
            if table == HISTORY_TABLE and not history:
                continue
            quoted = '"' + table.replace('"', '""') + '"'
            data[table] = sorted(self.rows(f"SELECT * FROM {quoted}"), key=repr)
        return {"schema": schema, "data": data}

    def history(self) -> List[tuple]:
        """(event, outcome, name) of each row of the tool's history, oldest first."""
        if not self.has_table(HISTORY_TABLE):
            return []
        return self.rows(f"SELECT event, outcome, name FROM {HISTORY_TABLE} ORDER BY id")

    def wipe(self) -> None:
        """Start again from an empty database (a new file)."""
        with self._lock:
            for suffix in ("", "-journal", "-wal", "-shm"):
                if os.path.exists(self.db_path + suffix):
                    os.remove(self.db_path + suffix)
            self._init_db()
            self._version += 1

    def _init_db(self) -> None:
        conn = sqlite3.connect(self.db_path, isolation_level=None)
        try:  # remote D1 databases hold this table, which the user cannot touch
            conn.execute("CREATE TABLE IF NOT EXISTS _cf_KV"
                         " (key TEXT PRIMARY KEY, value BLOB) WITHOUT ROWID")
        finally:
            conn.close()


def _message(exc: Exception) -> str:
    """D1's form: "<sqlite message>: SQLITE_<CODE>"."""
    text = str(exc)
    if isinstance(exc, sqlite3.IntegrityError):
        code = "SQLITE_CONSTRAINT"
    elif text.startswith("not authorized"):
        code = "SQLITE_AUTH"
    else:
        code = "_".join((getattr(exc, "sqlite_errorname", None) or "SQLITE_ERROR")
                        .split("_")[:2])
    return f"{text}: {code}"


def remote_env(fake: FakeD1) -> Dict[str, str]:
    """The variables the tool's --d1-remote needs to reach `fake` (merge them into
    a copy of os.environ for a subprocess)."""
    return {"CLOUDFLARE_ACCOUNT_ID": fake.account or ACCOUNT_ID,
            "D1_DATABASE_ID": fake.database or DATABASE_ID,
            "CLOUDFLARE_API_TOKEN": fake.token,
            "CLOUDFLARE_API_BASE_URL": fake.api_base}


if pytest is not None:
    @pytest.fixture
    def fake_d1():
        """A running FakeD1 with an empty database (import it into a test module)."""
        with FakeD1() as fake:
            yield fake
