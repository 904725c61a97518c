"""A local D1 behind the D1 HTTP API, for the --d1-remote tests.

Starts tests/fixtures/d1_api_worker (see its README.md) with `wrangler dev
--local` (the `wrangler_bin` fixture in conftest.py finds wrangler), and talks
to it the way the Cloudflare API is talked to.  Nothing here reaches
Cloudflare.
"""
from __future__ import annotations

import json
import os
import queue
import re
import shutil
import signal
import subprocess
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

REPO_ROOT = Path(__file__).resolve().parent.parent
FIXTURE = REPO_ROOT / "tests" / "fixtures" / "d1_api_worker"
DATABASE_ID = "00000000-0000-4000-8000-0000000000d1"
ACCOUNT_ID = "0123456789abcdef0123456789abcdef"
READY = re.compile(r"Ready on (http://127\.0\.0\.1:\d+)")


def start_d1_api(wrangler: str, work: Path, token: str = "test-token",
                 variables: Optional[Dict[str, str]] = None,
                 timeout: float = 60.0) -> "Tuple[subprocess.Popen, str]":
    """Start the fixture Worker; returns (process, base URL).  `work` is a
    scratch folder (the Worker's copy and its state go there)."""
    work = Path(work)
    src = work / "worker"
    shutil.copytree(str(FIXTURE), str(src),
                    ignore=shutil.ignore_patterns(".wrangler", "README.md"))
    env = dict(os.environ, CI="true", WRANGLER_SEND_METRICS="false",
               WRANGLER_HIDE_BANNER="true", CLOUDFLARE_CF_FETCH_ENABLED="false",
               NO_COLOR="1", XDG_CONFIG_HOME=str(work / "xdg"))
    # The tool's variables must not leak into wrangler (it reads some of them).
    for name in ("CLOUDFLARE_API_TOKEN", "CLOUDFLARE_ACCOUNT_ID", "CLOUDFLARE_API_BASE_URL"):
        env.pop(name, None)
    argv = [wrangler, "dev", "--local", "--ip", "127.0.0.1", "--port", "0",
            "--persist-to", str(work / "state"), "--inspector-port", "0",
            "--show-interactive-dev-session=false", "--var", "API_TOKEN:" + token]
    for name, value in (variables or {}).items():
        argv += ["--var", f"{name}:{value}"]
    proc = subprocess.Popen(argv, cwd=str(src), env=env, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            universal_newlines=True, start_new_session=True)
    lines: "queue.Queue[Optional[str]]" = queue.Queue()

    def drain() -> None:  # also keeps the pipe from filling up
        for line in proc.stdout:  # type: ignore[union-attr]
            lines.put(line)
        lines.put(None)

    threading.Thread(target=drain, daemon=True).start()
    deadline, seen, base = time.monotonic() + timeout, [], None
    while base is None:
        try:
            line = lines.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            line = None
        if line is None:
            stop_d1_api(proc)
            raise RuntimeError("wrangler dev did not start:\n" + "".join(seen))
        seen.append(line)
        match = READY.search(line)
        base = match.group(1) if match else None
    urllib.request.urlopen(base + "/__health", timeout=5).read()
    return proc, base


def stop_d1_api(proc: subprocess.Popen) -> None:
    """Stop the server and its children (its own process group)."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(10)
    except ProcessLookupError:
        pass
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


HISTORY_TABLE = "schema_migrations_history"

class D1ApiError(Exception):
    def __init__(self, status: int, payload: object):
        self.status = status
        self.payload = payload
        super().__init__(f"HTTP {status}: {payload}")


class D1Api:
    """The HTTP API of one running fixture, as the tests use it directly."""

    def __init__(self, base: str, token: str, account: str = ACCOUNT_ID,
                 database: str = DATABASE_ID):
        self.base = base  # http://127.0.0.1:<port>
        self.api_base = base + "/client/v4"  # what --api-base takes
        self.token = token
        self.account = account
        self.database = database

    def post(self, kind: str, body: dict) -> list:
        """POST a body to /query or /raw; the `result` list, or D1ApiError."""
        url = f"{self.api_base}/accounts/{self.account}/d1/database/{self.database}/{kind}"
        request = urllib.request.Request(
            url, data=json.dumps(body).encode("utf-8"), method="POST",
            headers={"Authorization": f"Bearer {self.token}",
                     "Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                payload = json.loads(response.read().decode("utf-8"))
        except urllib.error.HTTPError as exc:
            raise D1ApiError(exc.code, json.loads(exc.read().decode("utf-8"))) from None
        assert payload["success"] is True, payload
        return payload["result"]

    def sql(self, sql: str, params: Sequence[object] = ()) -> list:
        """One {"sql": ...} request, as `wrangler d1 execute --remote` sends a file."""
        return self.post("query", {"sql": sql, "params": list(params)})

    def rows(self, sql: str, params: Sequence[object] = ()) -> List[tuple]:
        result = self.post("raw", {"sql": sql, "params": list(params)})
        return [tuple(row) for row in result[-1]["results"]["rows"]]

    def tables(self) -> List[str]:
        """User tables (the tracking tables included), sorted."""
        return [r[0] for r in self.rows(
            "SELECT name FROM sqlite_master WHERE type = 'table'"
            " AND name NOT LIKE '\\_cf\\_%' ESCAPE '\\' AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\'"
            " ORDER BY name")]

    def has_table(self, name: str) -> bool:
        return bool(self.rows("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?",
                              [name]))

    def tracking(self) -> List[tuple]:
        """(version, name) of schema_migrations, [] when it does not exist."""
        if not self.has_table("schema_migrations"):
            return []
        return self.rows("SELECT version, name FROM schema_migrations ORDER BY version")

    def wrangler_rows(self) -> List[str]:
        if not self.has_table("d1_migrations"):
            return []
        return [r[0] for r in self.rows("SELECT name FROM d1_migrations ORDER BY id")]

    def dump(self, history: bool = False) -> dict:
        """Everything a test could see change: the schema, and every row of
        every user table.  The tool's history grows with every attempt, by
        design, so it is left out unless asked for (see history())."""
        schema = [row for row in self.rows(
            "SELECT type, name, tbl_name, sql FROM sqlite_master"
            " WHERE name NOT LIKE '\\_cf\\_%' ESCAPE '\\' ORDER BY type, name")
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
        """Drop every user object (tracking tables included) in one batch:
        views and triggers go with their tables, indexes too."""
        objects = self.rows(
            "SELECT type, name FROM sqlite_master WHERE type IN ('table', 'view')"
            " AND name NOT LIKE '\\_cf\\_%' ESCAPE '\\' AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\'")
        if not objects:
            return
        statements = ["PRAGMA defer_foreign_keys = ON"]
        for kind, name in objects:
            quoted = '"' + name.replace('"', '""') + '"'
            statements.append(f"DROP {kind.upper()} IF EXISTS {quoted}")
        self.post("query", {"batch": [{"sql": s} for s in statements]})
        # AUTOINCREMENT counters (d1_migrations) start again too.
        if self.rows("SELECT 1 FROM sqlite_master WHERE name = 'sqlite_sequence'"):
            self.post("query", {"sql": "DELETE FROM sqlite_sequence"})
