"""--d1-remote against a local D1 behind the D1 HTTP API.

One `wrangler dev` server (tests/fixtures/d1_api_worker, started by
tests/d1_api.py) serves the whole module; every test starts from an empty
database (all user tables dropped through the API).  Requests go through
FaultProxy, a small HTTP proxy in this file that records every request the
tool sends and can answer 429/503, fail after forwarding, or answer late.

The tool runs as a subprocess (the real CLI with its environment variables)
or through main(argv) in-process where a test needs fast retries.
"""
from __future__ import annotations

import json
import re
import shutil
import socket
import threading
import time
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Callable, Dict, List, Optional

import pytest

from conftest import BUNDLED_MIGRATIONS, apply_migrations
from d1_api import ACCOUNT_ID, DATABASE_ID, D1Api, D1ApiError, start_d1_api, stop_d1_api

pytestmark = pytest.mark.wrangler

# Distinctive, so that any appearance in the output is the token and nothing else.
TOKEN = "d1tok-7Q2xVf9-SECRET-Lm4Kp8-zz91"
WRONG_TOKEN = "d1tok-WRONG-3Hh6Rr1-Nn0Bb5-qq27"
# The space: "schema_migrations_history" is another table.
TRACKING_INSERT = 'INSERT INTO "schema_migrations" '
TRACKING_DELETE = 'DELETE FROM "schema_migrations" '
HISTORY_INSERT = 'INSERT INTO "schema_migrations_history" '
PROBE_MARK = "rolled back on purpose"  # the tool's always-failing last entry


# --------------------------------------------------------------------------
# Servers


@pytest.fixture(scope="module")
def d1_server(wrangler_bin: str, tmp_path_factory) -> D1Api:
    """The module's D1 API server (token TOKEN)."""
    proc, base = start_d1_api(str(wrangler_bin), tmp_path_factory.mktemp("d1"), token=TOKEN)
    try:
        yield D1Api(base, TOKEN)
    finally:
        stop_d1_api(proc)


@pytest.fixture
def d1(d1_server: D1Api) -> D1Api:
    """The module's server, emptied for this test."""
    d1_server.wipe()
    assert d1_server.tables() == []
    return d1_server


class FaultProxy:
    """Forwards the tool's requests to the D1 API server, records them, and
    applies the faults a test asks for (each rule matches a number of times):

    "429"         answer 429 without forwarding (D1 did not run it)
    "503-before"  answer 503 without forwarding
    "503-after"   forward (D1 commits it), then answer 503
    "late"        forward, then wait `seconds` before answering
    "reply"       answer the given (status, body) without forwarding
    """

    def __init__(self, upstream: str):
        self.upstream = upstream
        self.requests: List[dict] = []  # {"kind", "body", "action"}
        self.rules: List[dict] = []
        self.lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def do_POST(self):
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                body = json.loads(raw.decode("utf-8"))
                kind = self.path.rstrip("/").rsplit("/", 1)[-1]
                action, seconds, canned = proxy._choose(kind, body)
                with proxy.lock:
                    proxy.requests.append({"kind": kind, "body": body, "action": action})
                if action == "reply":
                    return self._reply(*canned)
                if action == "429":
                    return self._reply(429, _envelope_error(971, "Please wait and consider"
                                                                 " throttling your request speed"))
                if action == "503-before":
                    return self._reply(503, _envelope_error(7500, "Service unavailable"))
                status, data = proxy._forward(self.path, raw, self.headers)
                if action == "503-after":
                    return self._reply(503, _envelope_error(7500, "Service unavailable"))
                if action == "late":
                    time.sleep(seconds)
                self._reply(status, data)

            def do_GET(self):  # Time Travel bookmarks: forwarded and recorded
                kind = self.path.rstrip("/").rsplit("/", 1)[-1]
                with proxy.lock:
                    proxy.requests.append({"kind": kind, "body": {}, "action": "forward"})
                self._reply(*proxy._forward(self.path, None, self.headers))

            def _reply(self, status: int, data: bytes) -> None:
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except OSError:  # the client gave up (timeout test)
                    pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.02,),
                                       daemon=True)
        self.thread.start()
        self.api_base = f"http://127.0.0.1:{self.server.server_address[1]}/client/v4"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def fault(self, match: Callable[[str, dict], bool], action: str, times: int = 1,
              seconds: float = 0.0, reply: Optional[tuple] = None) -> None:
        """action "reply" answers (status, body bytes) without forwarding."""
        self.rules.append({"match": match, "action": action, "left": times,
                           "seconds": seconds, "reply": reply})

    def _choose(self, kind: str, body: dict):
        with self.lock:
            for rule in self.rules:
                if rule["left"] > 0 and rule["match"](kind, body):
                    rule["left"] -= 1
                    return rule["action"], rule["seconds"], rule["reply"]
        return "forward", 0.0, None

    def _forward(self, path: str, raw: bytes, headers):
        request = urllib.request.Request(
            self.upstream + path, data=raw, method="POST" if raw is not None else "GET",
            headers={"Authorization": headers.get("Authorization", ""),
                     "Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()

    # -- what was sent -------------------------------------------------------

    def batches(self, include_probes: bool = False) -> List[List[str]]:
        """The SQL of every /query batch that reached the proxy, in order;
        without the tool's always-rolled-back probe batches."""
        out = []
        for r in self.requests:
            if r["kind"] != "query" or "batch" not in r["body"]:
                continue
            sqls = [e["sql"] for e in r["body"]["batch"]]
            if include_probes or not any(PROBE_MARK in s for s in sqls):
                out.append(sqls)
        return out

    def all_sql(self) -> str:
        """Every SQL text sent, joined (to search for what must not be sent)."""
        parts = []
        for r in self.requests:
            body = r["body"]
            parts += [e["sql"] for e in body.get("batch", [])]
            if "sql" in body:
                parts.append(body["sql"])
        return "\n".join(parts)

    def migration_sends(self, version: str) -> List[dict]:
        """The requests that carried `version`'s migration batch (not probes)."""
        return [r for r in self.requests if is_migration_batch(version)(r["kind"], r["body"])]


def _envelope_error(code: int, message: str) -> bytes:
    return json.dumps({"success": False, "errors": [{"code": code, "message": message}],
                       "messages": [], "result": None}).encode("utf-8")


def is_migration_batch(version: str) -> Callable[[str, dict], bool]:
    """Matches the batch that applies migration `version` (its statements and
    its tracking row), not the probes that find a failing statement."""

    def match(kind: str, body: dict) -> bool:
        entries = body.get("batch") or []
        return (kind == "query"
                and not any(PROBE_MARK in e["sql"] for e in entries)
                and any(e["sql"].startswith(TRACKING_INSERT) and e.get("params")
                        and e["params"][0] == version for e in entries))

    return match


def reads_tracking(requests: List[dict]) -> bool:
    """Whether these requests read the tracking rows."""
    return any(r["kind"] == "raw" and 'FROM "schema_migrations"' in r["body"]["sql"]
               for r in requests)


def is_read(kind: str, body: dict) -> bool:
    return kind == "raw"


@pytest.fixture
def proxy(d1: D1Api) -> FaultProxy:
    proxy = FaultProxy(d1.base)
    try:
        yield proxy
    finally:
        proxy.close()


# --------------------------------------------------------------------------
# Running the tool


def remote_env(token: str = TOKEN) -> Dict[str, Optional[str]]:
    return {"CLOUDFLARE_ACCOUNT_ID": ACCOUNT_ID, "D1_DATABASE_ID": DATABASE_ID,
            "CLOUDFLARE_API_TOKEN": token, "CLOUDFLARE_API_BASE_URL": None}


@pytest.fixture
def remote(run_subprocess, proxy: FaultProxy):
    """remote(command, *args, env=...) -> (code, out, err): the CLI as a
    subprocess, on the D1 server through the proxy."""

    def run(command: str, *args: str, env: Optional[dict] = None, api_base: Optional[str] = None):
        environ = remote_env()
        environ.update(env or {})
        return run_subprocess([command, "--d1-remote", "--api-base", api_base or proxy.api_base,
                               *args], env=environ)

    return run


@pytest.fixture
def remote_inproc(run_cli, proxy: FaultProxy, monkeypatch):
    """remote_inproc(command, *args) -> (code, out, err): main(argv) in this
    process, with the retry backoff cut from 1 s to 10 ms."""
    for name, value in remote_env().items():
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, value)
    original = apply_migrations.D1Client.__init__

    def fast_init(self, *args, **kwargs):
        original(self, *args, **kwargs)
        self.backoff = 0.01

    monkeypatch.setattr(apply_migrations.D1Client, "__init__", fast_init)

    def run(command: str, *args: str):
        return run_cli([command, "--d1-remote", "--api-base", proxy.api_base, *args])

    return run


def closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/client/v4"


def error_lines(err: str) -> List[str]:
    return [line for line in err.splitlines() if line.strip()]


def assert_one_line_error(err: str, *needles: str) -> str:
    lines = error_lines(err)
    assert len(lines) == 1, err
    assert lines[0].startswith("Error: "), err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in lines[0], err
    return lines[0]


# A small project: three migrations, the second adds rows.
M1 = "CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT NOT NULL);\n"
M2 = ("CREATE TABLE tags (item_id INTEGER NOT NULL REFERENCES items (id), tag TEXT);\n"
      "INSERT INTO items (name) VALUES ('one');\n"
      "INSERT INTO items (name) VALUES ('two');\n")
M3_BAD = ("-- 0003: four statements, the third fails\n"
          "CREATE TABLE bad_a (id INTEGER PRIMARY KEY);\n"
          "INSERT INTO bad_a VALUES (1);\n"
          "\n"
          "INSERT INTO no_such_table VALUES (1);\n"
          "CREATE TABLE bad_b (id INTEGER);\n")
M3_BAD_LINE = 5


# --------------------------------------------------------------------------
# 1. The bundled migrations: apply, status, rollback with a down script


def created_tables(path: Path) -> List[str]:
    return re.findall(r"CREATE TABLE(?: IF NOT EXISTS)? (\w+)", path.read_text("utf-8"),
                      re.IGNORECASE)


def test_bundled_migrations_apply_status_and_rollback(project: Path, remote, d1: D1Api,
                                                      proxy: FaultProxy, run_subprocess):
    shutil.rmtree(str(project / "migrations"))
    shutil.copytree(str(BUNDLED_MIGRATIONS), str(project / "migrations"))
    paths = sorted((project / "migrations").glob("*.sql"))
    files = [p.stem for p in paths]
    tables = [t for p in paths for t in created_tables(p)]
    latest, latest_tables = files[-1], created_tables(paths[-1])
    assert latest_tables, "the latest bundled migration creates no table"

    code, out, err = remote("apply")
    assert code == 0, err
    assert f"Applied {len(files)} migration" in out
    assert set(tables) <= set(d1.tables())
    assert [name for _, name in d1.tracking()] == files
    # Each migration traveled as one batch together with its tracking row.
    for name in files:
        sends = proxy.migration_sends(name.split("_")[0])
        assert len(sends) == 1
        sqls = [e["sql"] for e in sends[0]["body"]["batch"]]
        assert len(sqls) >= 2 and sqls[-1].startswith(TRACKING_INSERT)
    assert d1.rows("SELECT count(*) FROM sqlite_master WHERE type = 'index'"
                   " AND name = 'idx_trade_orders_broker'") == [(1,)]

    # status, through CLOUDFLARE_API_BASE_URL this time
    env = dict(remote_env(), CLOUDFLARE_API_BASE_URL=proxy.api_base)
    code, out, err = run_subprocess(["status", "--d1-remote"], env=env)
    assert code == 0, err
    assert DATABASE_ID in out
    assert f"[X] {latest}" in out and "Applied: %d," % len(files) in out
    assert "Pending: 0" in out
    code, out, err = run_subprocess(["status", "--d1-remote", "--json", "--exit-code"], env=env)
    assert code == 0, err
    status = json.loads(out)
    assert status["database_exists"] is True
    assert [m["state"] for m in status["migrations"]] == ["applied"] * len(files)
    assert status["summary"]["applied"] == len(files)

    # rollback with a down script: its effect and the row's removal, one batch
    down = "".join(f"DROP TABLE IF EXISTS {t};\n" for t in reversed(latest_tables))
    (project / "migrations" / "down").mkdir(exist_ok=True)
    (project / "migrations" / "down" / f"{latest}.sql").write_text(down, "utf-8")
    before = len(proxy.batches())
    code, out, err = remote("rollback", "--json")
    assert code == 0, err
    result = json.loads(out)
    assert result["rolled_back"]["name"] == latest
    assert result["schema_changed"] is True and result["statements"] == len(latest_tables)
    assert set(d1.tables()) & set(tables) == set(tables) - set(latest_tables)
    assert latest not in [name for _, name in d1.tracking()]
    # (besides the history's row of the bookmark, in a batch of its own)
    sent = [b for b in proxy.batches()[before:] if not b[-1].startswith(HISTORY_INSERT)]
    assert len(sent) == 1, sent
    assert sent[0][:-2] == [f"DROP TABLE IF EXISTS {t};" for t in reversed(latest_tables)]
    assert sent[0][-2].startswith(HISTORY_INSERT)
    assert sent[0][-1].startswith(TRACKING_DELETE)

    code, out, err = remote("status", "--json")
    assert code == 0, err
    assert json.loads(out)["migrations"][-1]["state"] == "pending"


def test_rollback_without_down_script_is_computed_on_d1(write_migration, remote, d1: D1Api):
    write_migration("0001_items.sql", M1)
    write_migration("0002_tags.sql", "ALTER TABLE items ADD COLUMN tag TEXT;\n"
                    "CREATE INDEX items_tag ON items (tag);\n"
                    "INSERT INTO items (name) VALUES ('one');\n")
    assert remote("apply")[0] == 0
    code, out, err = remote("rollback", "--dry-run")
    assert code == 0, err
    assert out.splitlines()[1:] == [
        "-- Note: the rows that statement 3 (INSERT items) changed stay as they are (a computed"
        " rollback undoes the schema, and values only with the columns it drops)",
        'DROP INDEX IF EXISTS "items_tag";', 'ALTER TABLE "items" DROP COLUMN "tag";']
    code, out, err = remote("rollback")
    assert code == 0, err
    assert "computed from the schema before it" in out
    assert [name for _, name in d1.tracking()] == ["0001_items"]
    assert d1.rows("SELECT name FROM pragma_table_info('items')") == [("id",), ("name",)]
    assert d1.rows("SELECT name FROM items") == [("one",)]  # the rows stay
    code, out, err = remote("rollback", "--version", "0001", "--record-only")
    assert code == 0, err
    assert "NOT changed" in out
    assert d1.tracking() == [] and d1.has_table("items")


# --------------------------------------------------------------------------
# 2. Triggers: lower-case begin/end, CASE ... END, 'END;' in a string, CRLF

TRIGGER_FILE = (
    "-- triggers, CRLF line endings\r\n"
    "CREATE TABLE accounts (id INTEGER PRIMARY KEY, balance INTEGER NOT NULL);\r\n"
    "CREATE TABLE audit (account_id INTEGER, kind TEXT, note TEXT);\r\n"
    "create trigger accounts_audit after update of balance on accounts\r\n"
    "begin\r\n"
    "  insert into audit (account_id, kind, note) values (\r\n"
    "    new.id,\r\n"
    "    case when new.balance < old.balance then 'debit'\r\n"
    "         when new.balance > old.balance then 'credit'\r\n"
    "         else 'same' end,\r\n"
    "    'END;');\r\n"
    "  update accounts set balance = balance where 0;\r\n"
    "end;\r\n"
    "create trigger accounts_new after insert on accounts\r\n"
    "begin\r\n"
    "  insert into audit values (new.id, case new.balance when 0 then 'empty' else 'open' end,"
    " 'x;y');\r\n"
    "end;\r\n"
    "INSERT INTO accounts VALUES (1, 100);\r\n"
)


def test_trigger_heavy_crlf_migration_applies_and_fires(write_migration, remote, d1: D1Api,
                                                        proxy: FaultProxy):
    write_migration("0001_triggers.sql", TRIGGER_FILE)
    code, out, err = remote("apply")
    assert code == 0, err
    assert sorted(r[0] for r in d1.rows(
        "SELECT name FROM sqlite_master WHERE type = 'trigger'")) == [
        "accounts_audit", "accounts_new"]
    # one statement per batch entry: 5 statements + the history's row and the tracking row
    (batch,) = [b for b in proxy.batches() if b[-1].startswith(TRACKING_INSERT)]
    # (after the record's tables, created in the first migration's batch)
    batch = [sql for sql in batch if not sql.startswith("CREATE TABLE IF NOT EXISTS")]
    assert len(batch) == 7
    # the trigger goes whole, its body's delimiters upper-cased for D1's
    # splitter and nothing else changed (same text apart from case, CRLF kept)
    assert batch[2].startswith("create trigger accounts_audit after update of balance on accounts\r\nBEGIN\r\n")
    assert batch[2].endswith("\r\nEND;")
    assert batch[2].lower() in TRIGGER_FILE.lower()
    # the insert in the migration fired the second trigger
    assert d1.rows("SELECT * FROM audit") == [(1, "open", "x;y")]
    # fire the first one through the API
    d1.sql("UPDATE accounts SET balance = 40 WHERE id = 1")
    d1.sql("UPDATE accounts SET balance = 90 WHERE id = 1")
    assert d1.rows("SELECT kind, note FROM audit WHERE kind != 'open' ORDER BY rowid") == [
        ("debit", "END;"), ("credit", "END;")]


@pytest.fixture(scope="module")
def d1_splitter_bug(wrangler_bin: str, tmp_path_factory) -> D1Api:
    """A second server that splits `sql` like remote D1's server-side splitter."""
    proc, base = start_d1_api(str(wrangler_bin), tmp_path_factory.mktemp("d1bug"), token=TOKEN,
                              variables={"REMOTE_SPLITTER_BUG": "1"})
    try:
        yield D1Api(base, TOKEN)
    finally:
        stop_d1_api(proc)


def test_remote_splitter_bug_breaks_the_whole_file_as_one_sql(d1_splitter_bug: D1Api):
    """What `wrangler d1 migrations apply --remote` does (the file's text as
    one "sql") fails on D1's splitter with the trigger file."""
    d1_splitter_bug.wipe()
    with pytest.raises(D1ApiError) as failed:
        d1_splitter_bug.sql(TRIGGER_FILE)
    assert "incomplete input" in json.dumps(failed.value.payload)
    assert d1_splitter_bug.tables() == []


def test_apply_survives_remote_splitter_bug(d1_splitter_bug: D1Api, write_migration,
                                            run_subprocess):
    """The splitter imitated here also cuts each batch entry (the API says an
    entry may hold several statements); the tool sends a trigger's BEGIN and
    END in upper case, which that splitter recognises."""
    d1_splitter_bug.wipe()
    write_migration("0001_triggers.sql", TRIGGER_FILE)
    code, out, err = run_subprocess(
        ["apply", "--d1-remote", "--api-base", d1_splitter_bug.api_base], env=remote_env())
    assert code == 0, err
    assert d1_splitter_bug.has_table("audit")
    assert d1_splitter_bug.rows("SELECT count(*) FROM sqlite_master WHERE type = 'trigger'"
                                ) == [(2,)]


# --------------------------------------------------------------------------
# 3. A failing statement in the middle of a batch


def test_failure_mid_batch_leaves_d1_unchanged(write_migration, remote, d1: D1Api,
                                               proxy: FaultProxy):
    write_migration("0001_items.sql", M1)
    write_migration("0002_tags.sql", M2)
    write_migration("0003_bad.sql", M3_BAD)
    code, out, err = remote("apply", "--target", "0002")
    assert code == 0, err
    applied_state = d1.dump()

    code, out, err = remote("apply")
    assert code == 1
    line = assert_one_line_error(err, "0003_bad", "no such table: no_such_table")
    assert f"(0003_bad.sql, statement 3, line {M3_BAD_LINE})" in line
    # earlier migrations stay applied; nothing of 0003 (tables, rows, record)
    assert d1.dump() == applied_state
    assert [v for v, _ in d1.tracking()] == ["0001", "0002"]
    assert not d1.has_table("bad_a") and not d1.has_table("bad_b")
    # 0003 was sent once as one batch, with its history and tracking rows
    (sent,) = proxy.migration_sends("0003")
    assert len(sent["body"]["batch"]) == 6
    # and the history tells of its failure (after the bookmark, and the two applied)
    assert d1.history()[-1] == ("apply", "failed", "0003_bad")

    # the same with --json: the error names statement and line
    code, out, err = remote("apply", "--json")
    assert code == 1
    payload = json.loads(out)["error"]
    assert (payload["migration"], payload["statement"], payload["line"]) == (
        "0003_bad", 3, M3_BAD_LINE)
    assert payload["sql"].startswith("INSERT INTO no_such_table")
    assert d1.dump() == applied_state


def test_single_transaction_and_dry_run_change_nothing_on_failure(write_migration, remote,
                                                                  d1: D1Api):
    write_migration("0001_items.sql", M1)
    assert remote("apply")[0] == 0
    write_migration("0002_tags.sql", M2)
    write_migration("0003_bad.sql", M3_BAD)
    before = d1.dump()

    code, out, err = remote("apply", "--single-transaction")
    assert code == 1
    assert_one_line_error(err, "0003_bad", f"(0003_bad.sql, statement 3, line {M3_BAD_LINE})",
                          "nothing was applied")
    assert d1.dump() == before

    code, out, err = remote("apply", "--dry-run")
    assert code == 1
    assert_one_line_error(err, "0003_bad", f"(0003_bad.sql, statement 3, line {M3_BAD_LINE})",
                          "dry run")
    assert d1.dump() == before


def test_dry_run_that_succeeds_changes_nothing(write_migration, remote, d1: D1Api):
    write_migration("0001_items.sql", M1)
    write_migration("0002_tags.sql", M2)
    before = d1.dump()  # empty: not even the tracking table
    code, out, err = remote("apply", "--dry-run")
    assert code == 0, err
    assert "would apply cleanly" in out
    assert d1.dump() == before

    assert remote("apply", "--target", "0001")[0] == 0
    before = d1.dump()
    code, out, err = remote("apply", "--dry-run", "--json")
    assert code == 0, err
    assert [a["name"] for a in json.loads(out)["applied"]] == ["0002_tags"]
    assert d1.dump() == before

    # what the dry run left out is really there to apply
    code, out, err = remote("apply", "--single-transaction")
    assert code == 0, err
    assert d1.rows("SELECT name FROM items ORDER BY id") == [("one",), ("two",)]
    assert [v for v, _ in d1.tracking()] == ["0001", "0002"]


# --------------------------------------------------------------------------
# 4. What D1 rejects is refused before anything is sent

TOO_LONG = "INSERT INTO big VALUES ('{}');\n"


def long_insert(total_bytes: int) -> str:
    """An INSERT of exactly total_bytes bytes (its ';' included)."""
    filler = total_bytes - len(TOO_LONG.format("").strip())
    return TOO_LONG.format("x" * filler)


@pytest.mark.parametrize("bad, statement, line, message", [
    ("CREATE TABLE b1 (a);\nBEGIN;\nCREATE TABLE b2 (a);\n", 2, 2,
     "BEGIN is not allowed inside a migration"),
    ("CREATE TABLE big (v TEXT);\n" + long_insert(100_001), 2, 2,
     "D1 would reject it: the statement is 100,001 bytes"),
    ("CREATE TABLE b1 (a);\n\nCREATE TABLE _cf_x (a);\n", 2, 3,
     "D1 would reject it: the name _cf_x starts with _cf_"),
], ids=["begin-in-the-middle", "statement-too-long", "cf-table"])
def test_what_d1_rejects_is_refused_before_sending(write_migration, remote, d1: D1Api,
                                                   proxy: FaultProxy, bad, statement, line,
                                                   message):
    write_migration("0001_ok.sql", "CREATE TABLE ok_table (a);\n")
    write_migration("0002_bad.sql", bad)
    code, out, err = remote("apply")
    assert code == 1
    assert_one_line_error(err, "0002_bad", message,
                          f"(0002_bad.sql, statement {statement}, line {line})")
    # every pending file was checked before the first was sent
    assert not d1.has_table("ok_table")
    assert d1.tracking() == []
    assert "ok_table" not in proxy.all_sql()
    assert proxy.migration_sends("0001") == [] and proxy.migration_sends("0002") == []
    assert all(not sqls or sqls[0].startswith("CREATE TABLE IF NOT EXISTS")
               for sqls in proxy.batches(include_probes=True))


def test_statement_of_exactly_100000_bytes_is_sent(write_migration, remote, d1: D1Api):
    write_migration("0001_big.sql", "CREATE TABLE big (v TEXT);\n" + long_insert(100_000))
    code, out, err = remote("apply")
    assert code == 0, err
    assert d1.rows("SELECT length(v) FROM big") == [(100_000 - len("INSERT INTO big VALUES ('');"),)]


def test_whole_file_transaction_wrapper_is_removed(write_migration, remote, d1: D1Api,
                                                   proxy: FaultProxy):
    write_migration("0001_wrapped.sql", "BEGIN TRANSACTION;\nCREATE TABLE w (a);\n"
                                        "INSERT INTO w VALUES (1);\nCOMMIT;\n")
    code, out, err = remote("apply")
    assert code == 0, err
    assert d1.rows("SELECT a FROM w") == [(1,)]
    (sent,) = proxy.migration_sends("0001")
    # after the record's tables (created in the first migration's batch)
    sqls = [e["sql"] for e in sent["body"]["batch"]
            if not e["sql"].startswith("CREATE TABLE IF NOT EXISTS")]
    assert sqls[:2] == ["CREATE TABLE w (a);", "INSERT INTO w VALUES (1);"]
    assert len(sqls) == 4  # and the history's row, and the tracking row


# --------------------------------------------------------------------------
# 5. The token never appears; missing variables are caught before any request


def assert_no_token(out: str, err: str, *tokens: str) -> None:
    for token in tokens or (TOKEN,):
        assert token not in out and token not in err, (out, err)
        assert token[6:20] not in out + err  # no part of it either


def test_token_never_printed(write_migration, remote, d1: D1Api, project: Path):
    write_migration("0001_items.sql", M1)
    write_migration("0002_tags.sql", M2)
    (project / "migrations" / "down").mkdir()
    (project / "migrations" / "down" / "0002_tags.sql").write_text("DROP TABLE tags;\n")
    runs = [
        remote("apply", "--verbose", "--target", "0001"),
        remote("apply", "--json", "--verbose"),
        remote("status", "--verbose"),
        remote("status", "--json"),
        remote("rollback", "--verbose"),
        remote("apply", "--verbose"),
        remote("rollback", "--json", "--verbose"),
    ]
    assert [code for code, _, _ in runs] == [0] * 7, runs
    assert "POST" in runs[0][2]  # --verbose does log the requests
    write_migration("0003_bad.sql", M3_BAD)
    for args in (["--verbose"], ["--json"], ["--json", "--verbose"],
                 ["--single-transaction", "--verbose"], ["--dry-run", "--json", "--verbose"]):
        code, out, err = remote("apply", *args)
        assert code == 1, (args, err)
        assert "0003_bad" in err
        runs.append((code, out, err))
    for code, out, err in runs:
        assert_no_token(out, err)


def test_wrong_token_is_one_line_error_without_the_token(write_migration, remote, d1: D1Api,
                                                         proxy: FaultProxy):
    write_migration("0001_items.sql", M1)
    env = {"CLOUDFLARE_API_TOKEN": WRONG_TOKEN}
    for command in ("apply", "status", "rollback"):
        code, out, err = remote(command, env=env)
        assert code == 2, (command, err)
        assert_one_line_error(err, "CLOUDFLARE_API_TOKEN")
        assert_no_token(out, err, TOKEN, WRONG_TOKEN)
    code, out, err = remote("apply", "--json", env=env)
    assert code == 2
    assert json.loads(out)["error"]["exit_code"] == 2
    assert "CLOUDFLARE_API_TOKEN" in json.loads(out)["error"]["message"]
    assert_no_token(out, err, TOKEN, WRONG_TOKEN)
    code, out, err = remote("apply", "--json", "--verbose", env=env)
    assert code == 2
    assert_no_token(out, err, TOKEN, WRONG_TOKEN)
    # the token did reach the server (so it was really refused there)
    assert proxy.requests
    assert not d1.has_table("items") and d1.tracking() == []


def test_token_echoed_by_the_server_is_redacted(write_migration, remote, d1: D1Api,
                                                proxy: FaultProxy):
    """Whatever D1 answers is printed with the token masked."""
    write_migration("0001_items.sql", M1)
    echo = f"token {TOKEN} cannot run this"
    proxy.fault(is_migration_batch("0001"), "reply",
                reply=(400, _envelope_error(7500, echo)))
    code, out, err = remote("apply", "--json", "--verbose")
    assert code == 1
    assert "token *** cannot run this" in json.loads(out)["error"]["message"]
    assert_no_token(out, err)
    proxy.fault(is_read, "reply", reply=(403, _envelope_error(10000, echo)))
    code, out, err = remote("status")
    assert code == 2
    assert_one_line_error(err, "token *** cannot run this", "CLOUDFLARE_API_TOKEN")
    assert_no_token(out, err)
    assert d1.tracking() == []


@pytest.mark.parametrize("command, variable", [
    ("apply", "CLOUDFLARE_ACCOUNT_ID"), ("apply", "D1_DATABASE_ID"),
    ("apply", "CLOUDFLARE_API_TOKEN"), ("status", "D1_DATABASE_ID"),
    ("rollback", "CLOUDFLARE_API_TOKEN")])
def test_missing_variable_is_one_line_error_before_any_request(write_migration, run_subprocess,
                                                               variable, command):
    write_migration("0001_items.sql", M1)
    env = remote_env()
    env[variable] = None
    started = time.monotonic()
    code, out, err = run_subprocess([command, "--d1-remote", "--api-base", closed_port_url(),
                                     "--http-retries", "3"], env=env)
    assert code == 2
    assert_one_line_error(err, f"{variable} is not set")
    assert "cannot reach" not in err
    assert time.monotonic() - started < 5  # no retries ran (they sleep 1+2+4 s)
    assert_no_token(out, err)
    # blank counts as missing
    env[variable] = "  "
    code, out, err = run_subprocess([command, "--d1-remote", "--api-base", closed_port_url()],
                                    env=env)
    assert code == 2
    assert_one_line_error(err, f"{variable} is not set")


# --------------------------------------------------------------------------
# 6. Network faults (fault-injecting proxy)


def test_429_is_retried_on_reads_and_on_a_migration_batch(write_migration, remote_inproc,
                                                          d1: D1Api, proxy: FaultProxy):
    write_migration("0001_items.sql", M1)
    write_migration("0002_tags.sql", M2)
    proxy.fault(is_read, "429", times=2)
    proxy.fault(is_migration_batch("0002"), "429", times=2)
    code, out, err = remote_inproc("apply", "--http-retries", "2")
    assert code == 0, err
    assert "Applied 2 migrations" in out
    assert [r["action"] for r in proxy.requests[:3]] == ["429", "429", "forward"]
    assert [r["action"] for r in proxy.migration_sends("0002")] == ["429", "429", "forward"]
    assert [v for v, _ in d1.tracking()] == ["0001", "0002"]
    assert d1.rows("SELECT count(*) FROM items") == [(2,)]


def test_429_beyond_the_retries_fails_cleanly(write_migration, remote_inproc, d1: D1Api,
                                              proxy: FaultProxy):
    write_migration("0001_items.sql", M1)
    proxy.fault(is_migration_batch("0001"), "429", times=3)
    code, out, err = remote_inproc("apply", "--http-retries", "2")
    assert code == 1
    assert_one_line_error(err, "0001_items", "HTTP 429", "3 attempts")
    assert len(proxy.migration_sends("0001")) == 3
    assert d1.tracking() == [] and not d1.has_table("items")


def test_503_after_d1_committed_is_not_applied_twice(write_migration, remote_inproc,
                                                     d1: D1Api, proxy: FaultProxy):
    write_migration("0001_items.sql", M1)
    write_migration("0002_tags.sql", M2)
    write_migration("0003_more.sql", "INSERT INTO items (name) VALUES ('three');\n")
    proxy.fault(is_migration_batch("0002"), "503-after")
    code, out, err = remote_inproc("apply", "--http-retries", "2", "--commit-each")
    assert code == 0, err
    assert "Applied 3 migrations" in out
    sends = proxy.migration_sends("0002")
    assert [r["action"] for r in sends] == ["503-after"]  # never resent
    # ... because the tracking table was read again right after the 503
    after = proxy.requests[proxy.requests.index(sends[0]) + 1:
                           proxy.requests.index(proxy.migration_sends("0003")[0])]
    assert reads_tracking(after)
    assert d1.tracking() == [("0001", "0001_items"), ("0002", "0002_tags"),
                             ("0003", "0003_more")]
    assert d1.rows("SELECT name FROM items ORDER BY id") == [("one",), ("two",), ("three",)]


def test_503_before_d1_ran_it_is_resent_once(write_migration, remote_inproc, d1: D1Api,
                                             proxy: FaultProxy):
    write_migration("0001_items.sql", M1)
    write_migration("0002_tags.sql", M2)
    proxy.fault(is_migration_batch("0002"), "503-before")
    code, out, err = remote_inproc("apply", "--http-retries", "2", "--commit-each")
    assert code == 0, err
    sends = proxy.migration_sends("0002")
    assert [r["action"] for r in sends] == ["503-before", "forward"]
    between = proxy.requests[proxy.requests.index(sends[0]) + 1:proxy.requests.index(sends[1])]
    assert reads_tracking(between)
    assert [v for v, _ in d1.tracking()] == ["0001", "0002"]
    assert d1.rows("SELECT count(*) FROM items") == [(2,)]


def test_503_on_every_send_gives_up_without_applying(write_migration, remote_inproc,
                                                     d1: D1Api, proxy: FaultProxy):
    write_migration("0001_items.sql", M1)
    proxy.fault(is_migration_batch("0001"), "503-before", times=10)
    code, out, err = remote_inproc("apply", "--http-retries", "2")
    assert code == 1
    assert_one_line_error(err, "0001_items", "it was not applied")
    assert len(proxy.migration_sends("0001")) == 3
    assert d1.tracking() == []


def test_timeout_after_d1_committed_is_not_applied_twice(write_migration, remote_inproc,
                                                         d1: D1Api, proxy: FaultProxy):
    write_migration("0001_items.sql", M1)
    write_migration("0002_tags.sql", M2)
    proxy.fault(is_migration_batch("0002"), "late", seconds=2.0)
    started = time.monotonic()
    code, out, err = remote_inproc("apply", "--http-retries", "2", "--http-timeout", "1")
    assert code == 0, err
    assert time.monotonic() - started < 1.9  # it did not wait for the late answer
    assert "Applied 2 migrations" in out
    assert [r["action"] for r in proxy.migration_sends("0002")] == ["late"]
    assert [v for v, _ in d1.tracking()] == ["0001", "0002"]
    assert d1.rows("SELECT count(*) FROM items") == [(2,)]


def test_rollback_503_after_d1_committed(write_migration, remote_inproc, d1: D1Api,
                                         proxy: FaultProxy, project: Path):
    write_migration("0001_items.sql", M1)
    write_migration("0002_tags.sql", M2)
    write_migration("0002_tags.sql", "DROP TABLE tags;\nDELETE FROM items WHERE name = 'two';\n",
                    folder="migrations/down")
    assert remote_inproc("apply")[0] == 0
    proxy.fault(lambda kind, body: kind == "query" and any(
        e["sql"].startswith(TRACKING_DELETE) for e in body.get("batch", [])), "503-after")
    code, out, err = remote_inproc("rollback", "--http-retries", "2")
    assert code == 0, err
    assert "Rolled back 0002_tags" in out
    assert [v for v, _ in d1.tracking()] == ["0001"]
    assert d1.rows("SELECT name FROM items") == [("one",)]
    assert not d1.has_table("tags")


def test_rollback_503_before_d1_ran_it_is_sent_again(write_migration, remote_inproc,
                                                     d1: D1Api, proxy: FaultProxy):
    """As a migration's batch: the record says D1 did not run it, so it is
    sent again (once more), and rolls back."""
    write_migration("0001_items.sql", M1)
    assert remote_inproc("apply")[0] == 0
    proxy.fault(lambda kind, body: kind == "query" and any(
        e["sql"].startswith(TRACKING_DELETE) for e in body.get("batch", [])), "503-before")
    code, out, err = remote_inproc("rollback", "--http-retries", "2", "--record-only")
    assert code == 0, err
    assert "Rolled back 0001_items: removed its record only" in out
    assert d1.tracking() == []
    deletes = [r for r in proxy.requests if r["kind"] == "query" and any(
        e["sql"].startswith(TRACKING_DELETE) for e in r["body"].get("batch", []))]
    assert [r["action"] for r in deletes] == ["503-before", "forward"]


def test_connection_refused_is_one_line_error_after_retries(write_migration, run_subprocess):
    write_migration("0001_items.sql", M1)
    url = closed_port_url()
    started = time.monotonic()
    code, out, err = run_subprocess(["apply", "--d1-remote", "--api-base", url,
                                     "--http-retries", "1"], env=remote_env())
    elapsed = time.monotonic() - started
    assert code in (1, 2)
    assert_one_line_error(err, "cannot reach " + url, "gave up after 2 attempts")
    assert elapsed >= 1.0  # it did retry (after the 1 s backoff)
    assert_no_token(out, err)


# --------------------------------------------------------------------------
# 7. --wrangler keeps d1_migrations in step, in the same batch


def test_wrangler_table_kept_in_step_remotely(write_migration, remote, d1: D1Api,
                                              proxy: FaultProxy):
    write_migration("0001_items.sql", M1)
    write_migration("0002_tags.sql", M2)
    write_migration("0002_tags.sql", "DROP TABLE tags;\n", folder="migrations/down")
    code, out, err = remote("apply", "--wrangler")
    assert code == 0, err
    assert d1.wrangler_rows() == ["0001_items.sql", "0002_tags.sql"]
    for version, filename in (("0001", "0001_items.sql"), ("0002", "0002_tags.sql")):
        (sent,) = proxy.migration_sends(version)  # both in one batch (group commit)
        batch = sent["body"]["batch"]
        (at,) = [i for i, entry in enumerate(batch)
                 if entry["sql"].startswith('INSERT INTO "d1_migrations"')
                 and entry["params"] == [filename]]
        assert batch[at - 1]["sql"].startswith(TRACKING_INSERT)
        assert batch[at - 1]["params"][0] == version

    code, out, err = remote("rollback", "--wrangler")
    assert code == 0, err
    assert d1.wrangler_rows() == ["0001_items.sql"]
    assert not d1.has_table("tags")
    sent = proxy.batches()[-1]
    assert sent[0] == "DROP TABLE tags;"
    assert sent[1].startswith(HISTORY_INSERT)
    assert sent[2].startswith(TRACKING_DELETE)
    assert sent[3].startswith('DELETE FROM "d1_migrations"')

    # a failing migration leaves no row in either table (0002 applies again first)
    write_migration("0003_bad.sql", M3_BAD)
    assert remote("apply", "--wrangler")[0] == 1
    assert d1.wrangler_rows() == ["0001_items.sql", "0002_tags.sql"]
    assert [v for v, _ in d1.tracking()] == ["0001", "0002"]


def test_wrangler_rows_count_as_applied_and_are_backfilled(write_migration, remote,
                                                           d1: D1Api):
    write_migration("0001_items.sql", M1)
    write_migration("0002_tags.sql", M2)
    # applied without --wrangler, then run with it: d1_migrations catches up
    assert remote("apply", "--target", "0001")[0] == 0
    assert remote("apply", "--wrangler", "--target", "0001")[0] == 0
    assert d1.wrangler_rows() == ["0001_items.sql"]
    # wrangler applied 0002 itself (its row only): not applied again
    d1.sql("CREATE TABLE tags (item_id INTEGER, tag TEXT)")
    d1.sql("INSERT INTO d1_migrations (name) VALUES ('0002_tags.sql')")
    code, out, err = remote("apply", "--wrangler")
    assert code == 0, err
    assert "Nothing to apply" in out
    assert d1.rows("SELECT count(*) FROM items") == [(0,)]


# --------------------------------------------------------------------------
# What D1 accepts is sent (issue 16)

DRIZZLE_REBUILD = (
    "PRAGMA foreign_keys=OFF;--> statement-breakpoint\n"
    "CREATE TABLE `__new_items` (`id` integer PRIMARY KEY NOT NULL, `name` text NOT NULL,"
    " `note` text);\n--> statement-breakpoint\n"
    "INSERT INTO `__new_items`(\"id\", \"name\") SELECT \"id\", \"name\" FROM `items`;"
    "--> statement-breakpoint\n"
    "DROP TABLE `items`;--> statement-breakpoint\n"
    "ALTER TABLE `__new_items` RENAME TO `items`;--> statement-breakpoint\n"
    "PRAGMA foreign_keys=ON;\n")


def test_drizzle_rebuild_with_foreign_keys_off_applies_with_a_warning(write_migration,
                                                                     remote_inproc, d1: D1Api):
    # D1 accepts PRAGMA foreign_keys = OFF and ignores it: the tool sends it
    # too, and warns what it does not do.
    write_migration("0001_items.sql", M1 + "INSERT INTO items (name) VALUES ('one');\n")
    write_migration("0002_rebuild.sql", DRIZZLE_REBUILD)
    code, out, err = remote_inproc("apply")
    assert code == 0, err
    warnings = [line for line in err.splitlines() if line.startswith("Warning:")]
    assert len(warnings) == 1 and "0002_rebuild.sql:1:" in warnings[0] \
        and "[foreign-keys-off]" in warnings[0], err
    assert [name for _, name in d1.tracking()] == ["0001_items", "0002_rebuild"]
    assert d1.rows("SELECT id, name, note FROM items") == [(1, "one", None)]


def test_seeded_rebuild_that_would_cascade_is_refused_by_d1_itself(write_migration,
                                                                   remote_inproc, d1: D1Api):
    # On D1's own engine: the drizzle rebuild of a parent whose children
    # cascade would delete them; the guard fails the batch, D1 keeps it all.
    write_migration("0001_schema.sql",
                    "CREATE TABLE users (id INTEGER PRIMARY KEY, email TEXT NOT NULL);\n"
                    "CREATE TABLE sessions (id INTEGER PRIMARY KEY, user_id INTEGER NOT NULL"
                    " REFERENCES users (id) ON DELETE CASCADE);\n"
                    "INSERT INTO users VALUES (1, 'a@example.com');\n"
                    "INSERT INTO sessions VALUES (10, 1), (11, 1);\n")
    assert remote_inproc("apply")[0] == 0
    before = d1.dump()
    write_migration("0002_rebuild.sql",
                    "PRAGMA foreign_keys=OFF;--> statement-breakpoint\n"
                    "CREATE TABLE `__new_users` (`id` integer PRIMARY KEY NOT NULL,"
                    " `email` text NOT NULL, `note` text);\n--> statement-breakpoint\n"
                    "INSERT INTO `__new_users`(\"id\", \"email\") SELECT \"id\", \"email\""
                    " FROM `users`;--> statement-breakpoint\n"
                    "DROP TABLE `users`;--> statement-breakpoint\n"
                    "ALTER TABLE `__new_users` RENAME TO `users`;--> statement-breakpoint\n"
                    "PRAGMA foreign_keys=ON;\n")
    code, out, err = remote_inproc("apply")
    assert code == 1
    assert ("it would take rows from a table it does not name, through a foreign key's ON"
            " DELETE action (D1 always enforces them): sessions (ON DELETE CASCADE from users),"
            " 2 rows before; it was rolled back.") in err, err
    assert d1.dump() == before
