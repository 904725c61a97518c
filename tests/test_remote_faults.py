"""--d1-remote under faults, against tests/fake_d1.py (no Node, no network).

What is tested here, one section each:

  1. SIGINT / SIGTERM during `apply --d1-remote` (the tool as a real process):
     it stops before the next batch and never leaves a batch half known.
  2. Retry-After on a 429 is honoured.
  3. A batch refused on the tracking table's key because another run applied
     that migration meanwhile is skipped (exit 0).
  4. Unexpected answers from the API: never a traceback, never a silent
     wrong result, never a migration applied twice.
  5. Bad remote settings: one line, exit 2, nothing sent.
  6. The API token never appears in any output.
  7. A dry run changes nothing on D1 and exits as a real run would.

The fake runs in this process; the tool runs either in-process through
main(argv) (with D1Client.backoff cut to 10 ms, see `remote_cli`) or as a
subprocess (section 1, where a real signal must arrive).
"""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import pytest

from conftest import ENV_CLEARED, TOOL_PATH, apply_migrations
from fake_d1 import FakeD1, drop, rate_limited, remote_env, respond

# Distinctive, so that any appearance in the output is the token and nothing else.
TOKEN = "d1tok-Fk93QzR7-SECRET-wV2mL8pX"
# The space: "schema_migrations_history" is another table.
TRACKING_INSERT = 'INSERT INTO "schema_migrations" '
TRACKING_DELETE = 'DELETE FROM "schema_migrations" '
HISTORY_INSERT = 'INSERT INTO "schema_migrations_history" '
PROBE_MARK = "rolled back on purpose"  # the tool's always-failing last entry of a probe

M1 = "CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT NOT NULL);\n"
M2 = ("INSERT INTO items (name) VALUES ('two');\n"
      "CREATE TABLE tags (item_id INTEGER NOT NULL REFERENCES items (id), tag TEXT);\n")
M3 = "INSERT INTO items (name) VALUES ('three');\n"
M_BAD = ("CREATE TABLE bad_a (id INTEGER PRIMARY KEY);\n"
         "INSERT INTO no_such_table VALUES (1);\n")
APPLIED_COUNT = re.compile(r"(\d+) migrations? applied in this run")


# --------------------------------------------------------------------------
# The fake, and what the tool sent it


@pytest.fixture
def fake() -> FakeD1:
    """A running fake D1 whose API token is TOKEN."""
    with FakeD1(token=TOKEN) as server:
        yield server


def batch_of(record: dict) -> List[dict]:
    body = record.get("body")
    if record["kind"] != "query" or not isinstance(body, dict):
        return []
    return body.get("batch") or []


def is_probe(record: dict) -> bool:
    return any(PROBE_MARK in entry["sql"] for entry in batch_of(record))


def is_batch(version: str) -> Callable[[dict], bool]:
    """Matches the batch that applies migration `version` (its statements and
    its tracking row), not the probes that look for a failing statement."""

    def match(record: dict) -> bool:
        return not is_probe(record) and any(
            entry["sql"].startswith(TRACKING_INSERT) and entry.get("params")
            and entry["params"][0] == version for entry in batch_of(record))

    return match


def is_rollback_batch(record: dict) -> bool:
    return not is_probe(record) and any(
        entry["sql"].startswith(TRACKING_DELETE) for entry in batch_of(record))


def sends(fake: FakeD1, version: str) -> List[dict]:
    return [r for r in fake.requests if is_batch(version)(r)]


def when(fake: FakeD1, predicate: Callable[[dict], bool],
         then: Callable[[dict], object]) -> None:
    """Script: requests pass untouched until one matches `predicate`; that
    one gets then(record), an Action or None (answer normally).  `then` runs
    in the fake's server thread, before the request is handled."""

    def entry(record: dict):
        if predicate(record):
            return then(record)
        fake.script.appendleft(entry)  # keep waiting at the head of the script
        return None

    fake.script.append(entry)


def wait_until(condition: Callable[[], bool], what: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.005)


def tracked(fake: FakeD1) -> List[str]:
    return [version for version, _ in fake.tracking()]


# --------------------------------------------------------------------------
# Running the tool


@pytest.fixture
def remote_cli(run_cli, fake: FakeD1, monkeypatch, capsys):
    """remote_cli(command, *args) -> (code, out, err): main(argv) in this
    process on the fake, with the retry backoff cut from 1 s to 10 ms.  An
    exception out of main() is returned as a process would show it: exit 1
    and a traceback on stderr."""
    for name, value in remote_env(fake).items():
        monkeypatch.setenv(name, value)
    original = apply_migrations.D1Client.__init__

    def fast_init(self, *args, **kwargs):
        original(self, *args, **kwargs)
        self.backoff = 0.01

    monkeypatch.setattr(apply_migrations.D1Client, "__init__", fast_init)

    def run(command: str, *args: str) -> Tuple[int, str, str]:
        try:
            return run_cli([command, "--d1-remote", *args])
        except Exception:  # what a real process would print
            out, err = capsys.readouterr()
            return 1, out, err + traceback.format_exc()

    return run


def tool_env(fake: FakeD1, extra: Optional[Dict[str, str]] = None) -> Dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ENV_CLEARED}
    env.update(remote_env(fake))
    env["PYTHONIOENCODING"] = "utf-8"
    env.update(extra or {})
    return env


def start_tool(fake: FakeD1, cwd: Path, argv: Sequence[str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(TOOL_PATH), *argv], cwd=str(cwd),
                            env=tool_env(fake), stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def finish(proc: subprocess.Popen, timeout: float = 30) -> Tuple[int, str, str]:
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        raise AssertionError(f"the tool did not stop: {err.decode('utf-8', 'replace')}")
    return proc.returncode, out.decode("utf-8", "replace"), err.decode("utf-8", "replace")


def error_lines(err: str) -> List[str]:
    return [line for line in err.splitlines() if line.strip()]


def assert_one_line_error(err: str, *needles: str) -> str:
    assert "Traceback" not in err, err
    lines = error_lines(err)
    assert len(lines) == 1, err
    assert lines[0].startswith("Error: "), err
    for needle in needles:
        assert needle in lines[0], err
    return lines[0]


def interrupted_line(err: str) -> str:
    assert "Traceback" not in err, err
    lines = error_lines(err)
    assert lines and lines[-1].startswith("Interrupted"), err
    return lines[-1]


# --------------------------------------------------------------------------
# 1. SIGINT and SIGTERM during apply --d1-remote


SIGNALS = pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM],
                                  ids=["SIGINT", "SIGTERM"])


def three_migrations(write_migration) -> None:
    write_migration("0001_items.sql", M1)
    write_migration("0002_tags.sql", M2)
    write_migration("0003_three.sql", M3)


def hold(fake: FakeD1, predicate: Callable[[dict], bool], action=None) -> threading.Event:
    """Hold the first request that matches until the returned event is set;
    then answer it normally, or with `action`."""
    release = threading.Event()

    def then(record):
        release.wait(20)
        return action

    when(fake, predicate, then)
    return release


def signal_while_held(fake: FakeD1, project: Path, signum: int,
                      release: threading.Event) -> Tuple[float, Tuple[int, str, str]]:
    """Start `apply --d1-remote`, signal it once 0002's batch is held at the
    fake, give the handler 0.2 s, then release the batch: the time of the
    signal, and the tool's (code, stdout, stderr)."""
    # One batch per migration, so that 0002's is alone in flight.
    proc = start_tool(fake, project, ["apply", "--d1-remote", "--http-timeout", "10",
                                      "--commit-each"])
    try:
        wait_until(lambda: sends(fake, "0002"), "the batch of 0002")
        stopped_at = time.monotonic()
        proc.send_signal(signum)
        time.sleep(0.2)
    except BaseException:
        proc.kill()
        raise
    finally:
        release.set()
    return stopped_at, finish(proc)


@SIGNALS
def test_signal_while_a_batch_is_in_flight_lets_it_finish_and_sends_nothing_more(
        project, write_migration, fake, signum):
    three_migrations(write_migration)
    release = hold(fake, is_batch("0002"))
    # let the handler run while the request is in flight
    stopped_at, (code, out, err) = signal_while_held(fake, project, signum, release)
    assert code == 128 + signum, (code, err)
    line = interrupted_line(err)
    # the batch in flight was let finish, and D1 committed it
    batch = sends(fake, "0002")
    assert len(batch) == 1 and batch[0]["status"] == 200
    assert tracked(fake) == ["0001", "0002"]
    assert fake.rows("SELECT name FROM items") == [("two",)]
    count = APPLIED_COUNT.search(line)
    assert count, line
    assert int(count.group(1)) == len(fake.tracking()), line
    # no migration was started after the stop ...
    assert not sends(fake, "0003")
    # ... and no request at all was sent after it: the one in flight was the last
    after = [(r["kind"], batch_of(r) or r["body"]) for r in fake.requests
             if r["time"] > stopped_at]
    assert after == [], f"sent after the stop: {after}"
    assert fake.requests[-1] is batch[0]


@SIGNALS
def test_signal_while_waiting_to_resend_a_refused_batch_stops_without_sending(
        project, write_migration, fake, signum):
    """503 that D1 did not run: the tool reads the record (not applied),
    then waits D1Client.backoff (1 s in a subprocess) to send again."""
    three_migrations(write_migration)
    fake.push(respond(503, execute=False, match=is_batch("0002")))
    proc = start_tool(fake, project, ["apply", "--d1-remote", "--http-timeout", "10",
                                      "--commit-each"])

    def record_read_after_refusal() -> bool:
        refused = sends(fake, "0002")
        if not refused:
            return False
        later = fake.requests[fake.requests.index(refused[0]) + 1:]
        reads = [r for r in later if r["kind"] == "raw" and r["status"] is not None]
        return len(reads) >= 2  # the tracking table's columns, then its rows

    try:
        wait_until(record_read_after_refusal, "the record read after the 503")
        stopped_at = time.monotonic()
        proc.send_signal(signum)
    except BaseException:
        proc.kill()
        raise
    code, out, err = finish(proc)
    assert code == 128 + signum, (code, err)
    line = interrupted_line(err)
    assert "0002_tags" in line, line
    assert any(words in line for words in
               ("not sent", "not applied", "before 0002_tags was sent")), line
    count = APPLIED_COUNT.search(line)
    assert count and int(count.group(1)) == 1, line
    # sent once (refused), never again; nothing at all after the stop
    assert [r["status"] for r in sends(fake, "0002")] == [503]
    assert [r for r in fake.requests if r["time"] > stopped_at] == []
    assert tracked(fake) == ["0001"]
    assert not fake.has_table("tags") and fake.rows("SELECT count(*) FROM items") == [(0,)]


LOST_ANSWERS = [
    pytest.param(drop(execute=True), "applied", id="dropped-after-commit"),
    pytest.param(respond(503, execute=True), "applied", id="503-after-commit"),
    pytest.param(drop(execute=False), "pending", id="dropped-before-running"),
]


@pytest.mark.parametrize("lost, state", LOST_ANSWERS)
@SIGNALS
def test_signal_pending_when_the_answer_is_lost_says_status_tells(
        project, write_migration, fake, run_subprocess, signum, lost, state):
    three_migrations(write_migration)
    release = hold(fake, is_batch("0002"), lost)
    # the stop is pending before the answer is lost
    stopped_at, (code, out, err) = signal_while_held(fake, project, signum, release)
    assert code == 128 + signum, (code, err)
    line = interrupted_line(err)
    assert "0002_tags" in line and "wholly or not at all" in line and "status" in line, line
    count = APPLIED_COUNT.search(line)
    assert count and int(count.group(1)) == 1, line
    # the lost batch was the last request: no resend, no read, nothing
    assert len(sends(fake, "0002")) == 1
    assert [r for r in fake.requests if r["time"] > stopped_at] == []
    assert fake.requests[-1] is sends(fake, "0002")[0]
    # status tells which
    code, out, err = run_subprocess(["status", "--d1-remote", "--json"], env=remote_env(fake))
    assert code == 0, err
    states = {m["version"]: m["state"] for m in json.loads(out)["migrations"]}
    assert states == {"0001": "applied", "0002": state, "0003": "pending"}
    assert tracked(fake) == (["0001", "0002"] if state == "applied" else ["0001"])


# --------------------------------------------------------------------------
# 2. Retry-After


def test_retry_after_of_a_429_on_a_migration_batch_is_honoured(write_migration, fake,
                                                                remote_cli):
    write_migration("0001_items.sql", M1)
    write_migration("0002_tags.sql", M2)
    fake.push(rate_limited(retry_after="2", match=is_batch("0002")))
    code, out, err = remote_cli("apply")
    assert code == 0, err
    first, again = sends(fake, "0002")
    assert (first["status"], again["status"]) == (429, 200)
    # the very next request is the batch again, 2 s later (the backoff is 10 ms)
    assert fake.requests[fake.requests.index(first) + 1] is again
    assert again["time"] - first["time"] >= 1.9
    assert tracked(fake) == ["0001", "0002"]
    assert fake.rows("SELECT name FROM items") == [("two",)]


def test_retry_after_of_a_429_on_a_read_is_honoured(write_migration, fake, remote_cli):
    write_migration("0001_items.sql", M1)
    fake.push(rate_limited(retry_after="1", match="raw"))
    code, out, err = remote_cli("status", "--json")
    assert code == 0, err
    first, again = fake.requests[:2]
    assert (first["kind"], first["status"], again["kind"], again["status"]) == (
        "raw", 429, "raw", 200)
    assert again["time"] - first["time"] >= 0.95
    assert [m["state"] for m in json.loads(out)["migrations"]] == ["pending"]


# --------------------------------------------------------------------------
# 3. Another run applied the migration meanwhile: its batch fails on the key


def test_batch_refused_because_another_run_applied_it_is_skipped(write_migration, fake,
                                                                  remote_cli):
    write_migration("0001_events.sql", "CREATE TABLE events (what TEXT NOT NULL);\n")
    # no statement of its own can fail a second time: only the tracking row's key does
    write_migration("0002_log.sql", "INSERT INTO events (what) VALUES ('0002');\n")
    write_migration("0003_log.sql", "INSERT INTO events (what) VALUES ('0003');\n")
    other_run = []

    def apply_it_first(record):
        # exactly what this run sends, committed first as another run's batch
        other_run.append(fake.post("query", record["body"]))
        return None  # then this run's batch runs, and fails on the key

    when(fake, is_batch("0002"), apply_it_first)
    code, out, err = remote_cli("apply", "--json", "--commit-each")
    assert other_run, "the other run did not happen"
    assert [r["status"] for r in sends(fake, "0002")] == [400]  # refused on the key
    assert code == 0, err
    assert "Traceback" not in err
    payload = json.loads(out)
    assert payload["error"] is None
    assert [(o["version"], o["result"]) for o in payload["outcomes"]] == [
        ("0001", "applied"), ("0002", "skipped"), ("0003", "applied")]
    assert [a["version"] for a in payload["applied"]] == ["0001", "0003"]
    assert tracked(fake) == ["0001", "0002", "0003"]
    assert sorted(fake.rows("SELECT what FROM events")) == [("0002",), ("0003",)]


# --------------------------------------------------------------------------
# 4. Unexpected answers from the API


HTML_502 = (b"<html><head><title>502 Bad Gateway</title></head>"
            b"<body><center><h1>502 Bad Gateway</h1></center></body></html>")
UNEXPECTED = [
    pytest.param(200, b"this is not JSON", id="200-not-json"),
    pytest.param(200, b"", id="200-empty-body"),
    pytest.param(200, {"success": True, "result": "x"}, id="200-result-is-a-string"),
    pytest.param(200, {"success": True}, id="200-success-without-result"),
    pytest.param(200, {"success": True, "result": None}, id="200-result-null"),
    pytest.param(200, {"success": True, "result": []}, id="200-result-empty-list"),
    pytest.param(200, {"result": [{"results": 5}]}, id="200-no-success"),
    pytest.param(200, {"success": True, "result": [{"results": 5}]}, id="200-results-not-rows"),
    pytest.param(200, [1, 2, 3], id="200-json-list"),
    pytest.param(502, HTML_502, id="502-html-page"),
    pytest.param(502, b"", id="502-empty-body"),
]


def unexpected(status: int, body, match, execute: bool = False):
    headers = {"Content-Type": "text/html"} if isinstance(body, bytes) and body else None
    return respond(status, body, headers=headers, execute=execute, match=match)


@pytest.fixture
def first_applied(write_migration, fake, remote_cli):
    """0001 applied, 0002 (a new table and a row) pending; requests forgotten."""
    write_migration("0001_items.sql", M1)
    write_migration("0002_tags.sql", M2)
    code, out, err = remote_cli("apply", "--target", "0001")
    assert code == 0, err
    assert tracked(fake) == ["0001"]
    fake.reset_requests()


@pytest.mark.parametrize("status, body", UNEXPECTED)
def test_unexpected_answer_to_the_reads_of_status(first_applied, fake, remote_cli, status,
                                                  body):
    fake.script.extend([unexpected(status, body, "raw")] * 20)  # every read, every retry
    code, out, err = remote_cli("status", "--http-retries", "1")
    assert "Traceback" not in err, err
    assert code != 0, f"exit 0 with a wrong answer:\n{out}"
    assert_one_line_error(err)
    assert fake.requests and fake.requests[0]["status"] == status


@pytest.mark.parametrize("status, body", UNEXPECTED)
def test_unexpected_answer_to_the_reads_of_apply(first_applied, fake, remote_cli, status,
                                                 body):
    fake.script.extend([unexpected(status, body, "raw")] * 20)
    code, out, err = remote_cli("apply", "--http-retries", "1")
    assert "Traceback" not in err, err
    assert code != 0, f"exit 0 with a wrong answer:\n{out}"
    assert_one_line_error(err)
    # nothing applied twice, and 0002 was not applied blind
    assert tracked(fake) == ["0001"]
    assert not fake.has_table("tags")
    assert fake.rows("SELECT count(*) FROM items") == [(0,)]


@pytest.mark.parametrize("status, body", UNEXPECTED)
def test_unexpected_answer_to_a_migration_batch_d1_did_not_run(first_applied, fake,
                                                               remote_cli, status, body):
    """D1 did not run the batch: the tool must not say it applied it."""
    fake.script.extend([unexpected(status, body, is_batch("0002"))] * 20)
    code, out, err = remote_cli("apply", "--http-retries", "1")
    assert "Traceback" not in err, err
    assert sends(fake, "0002"), "the batch was never sent"
    assert tracked(fake) == ["0001"]  # D1 never ran it: not recorded ...
    assert not fake.has_table("tags")
    # ... so the tool must not claim it applied
    assert code != 0, f"exit 0, but 0002 is not applied:\n{out}"
    assert_one_line_error(err, "0002_tags")


@pytest.mark.parametrize("status, body", UNEXPECTED)
def test_unexpected_answer_to_a_migration_batch_d1_committed(first_applied, fake,
                                                             remote_cli, status, body):
    """D1 ran and committed the batch, and the answer is garbage: 0002 is
    recorded exactly once, and the tool's word agrees with D1."""
    fake.push(unexpected(status, body, is_batch("0002"), execute=True))
    code, out, err = remote_cli("apply", "--json", "--http-retries", "1")
    assert "Traceback" not in err, err
    assert tracked(fake) == ["0001", "0002"]
    assert fake.rows("SELECT name FROM items") == [("two",)]  # its effect, once
    assert len(sends(fake, "0002")) == 1  # never sent twice
    payload = json.loads(out)
    if code == 0:
        assert [(o["version"], o["result"]) for o in payload["outcomes"]] == [
            ("0002", "applied")]
    else:
        assert_one_line_error(err)
        assert payload["error"] is not None


# --------------------------------------------------------------------------
# 5. Bad remote settings: one line, exit 2, nothing sent


BAD_OPTIONS = [
    pytest.param(["--http-retries", "-1"], "--http-retries", id="retries--1"),
    pytest.param(["--http-retries", "1000"], "--http-retries", id="retries-1000"),
    pytest.param(["--http-timeout", "0"], "--http-timeout", id="timeout-0"),
    pytest.param(["--http-timeout", "-1"], "--http-timeout", id="timeout--1"),
    pytest.param(["--http-timeout", "nan"], "--http-timeout", id="timeout-nan"),
    pytest.param(["--http-timeout", "inf"], "--http-timeout", id="timeout-inf"),
    pytest.param(["--api-base", ""], "--api-base", id="api-base-empty"),
    pytest.param(["--api-base", "   "], "--api-base", id="api-base-blank"),
    pytest.param(["--api-base", "ftp://x"], "ftp://x", id="api-base-ftp"),
    pytest.param(["--api-base", "api.cloudflare.com"], "api.cloudflare.com",
                 id="api-base-no-scheme"),
]


@pytest.mark.parametrize("command", ["apply", "status", "rollback"])
@pytest.mark.parametrize("args, needle", BAD_OPTIONS)
def test_bad_remote_option_is_one_line_exit_2_before_any_request(
        write_migration, fake, remote_cli, command, args, needle):
    write_migration("0001_items.sql", M1)
    code, out, err = remote_cli(command, *args)
    assert code == 2, (code, err)
    assert_one_line_error(err, needle)
    assert fake.request_count == 0


@pytest.mark.parametrize("command", ["apply", "status", "rollback"])
@pytest.mark.parametrize("variable, value", [
    ("CLOUDFLARE_ACCOUNT_ID", None), ("D1_DATABASE_ID", None), ("CLOUDFLARE_API_TOKEN", None),
    ("CLOUDFLARE_ACCOUNT_ID", ""), ("D1_DATABASE_ID", " "), ("CLOUDFLARE_API_TOKEN", ""),
    ("CLOUDFLARE_API_BASE_URL", ""), ("CLOUDFLARE_API_BASE_URL", "  "),
    ("CLOUDFLARE_API_BASE_URL", "ftp://x"),
])
def test_bad_remote_variable_is_one_line_exit_2_before_any_request(
        write_migration, fake, remote_cli, monkeypatch, command, variable, value):
    write_migration("0001_items.sql", M1)
    if value is None:
        monkeypatch.delenv(variable)
    else:
        monkeypatch.setenv(variable, value)
    code, out, err = remote_cli(command)
    assert code == 2, (code, err)
    line = assert_one_line_error(err)
    assert variable in line or (value and value.strip() and value in line), line
    assert TOKEN not in out + err
    assert fake.request_count == 0


# --------------------------------------------------------------------------
# 6. The token never appears


ECHO = {"success": False, "errors": [{"code": 7500, "message": f"bad token {TOKEN} here"}],
        "messages": [], "result": None}
OUTPUT_MODES = [
    pytest.param(["--json"], {}, id="json"),
    pytest.param(["--verbose"], {}, id="verbose"),
    pytest.param(["--json", "--verbose"], {}, id="json-verbose"),
    pytest.param([], {"GITHUB_ACTIONS": "true"}, id="github"),
    pytest.param(["--json", "--verbose"], {"GITHUB_ACTIONS": "true"}, id="github-json-verbose"),
]


@pytest.fixture
def applied_with_down(write_migration, fake, remote_cli):
    """0001 and 0002 applied, 0002 with a down script, 0003 pending."""
    write_migration("0001_items.sql", M1)
    write_migration("0002_tags.sql", M2)
    write_migration("0002_tags.sql", "DROP TABLE tags;\n", folder="migrations/down")
    code, out, err = remote_cli("apply")
    assert code == 0, err
    write_migration("0003_three.sql", M3)
    fake.reset_requests()


def echo_on(command: str):
    """Where the token comes back: the first read (status), the migration
    batch (apply), the rollback batch (rollback)."""
    return {"status": "raw", "apply": is_batch("0003"), "rollback": is_rollback_batch}[command]


@pytest.mark.parametrize("args, env", OUTPUT_MODES)
@pytest.mark.parametrize("command", ["apply", "status", "rollback"])
def test_token_echoed_by_d1_never_printed(applied_with_down, fake, remote_cli, monkeypatch,
                                          tmp_path, command, args, env):
    summary = tmp_path / "summary.md"
    summary.write_text("")
    for name, value in {**env, "GITHUB_STEP_SUMMARY": str(summary)}.items():
        monkeypatch.setenv(name, value)
    fake.push(respond(400, body=ECHO, match=echo_on(command)))
    code, out, err = remote_cli(command, *args)
    assert code == 1, (code, out, err)
    assert fake.requests and any(r["status"] == 400 for r in fake.requests)  # it was echoed
    written = summary.read_text()
    for where, text in (("stdout", out), ("stderr", err), ("summary", written)):
        assert TOKEN not in text, f"the token is in {where}:\n{text}"
        assert TOKEN[6:20] not in text, f"part of the token is in {where}:\n{text}"
    assert "bad token *** here" in err
    if "--json" in args:
        assert "bad token *** here" in json.loads(out[out.index("{"):])["error"]["message"]
    if env.get("GITHUB_ACTIONS"):
        stream = err if "--json" in args else out
        annotation = [line for line in stream.splitlines() if line.startswith("::error")]
        assert annotation and "bad token *** here" in annotation[0], stream
    if command == "apply":  # the summary table names the failure
        assert "bad token *** here" in written
    # nothing changed on D1
    assert tracked(fake) == ["0001", "0002"] and fake.has_table("tags")


def test_token_in_the_authorization_header_only(applied_with_down, fake, remote_cli):
    code, out, err = remote_cli("status", "--verbose", "--json")
    assert code == 0, err
    assert fake.requests
    for record in fake.requests:
        assert record["headers"]["Authorization"] == f"Bearer {TOKEN}"
        assert TOKEN not in json.dumps(record["body"])
    assert TOKEN not in out + err


def secret_failure() -> "apply_migrations.MigrationFailed":
    return apply_migrations.MigrationFailed(
        "0002_tags", os.path.join("migrations", "0002_tags.sql"),
        f"D1 said: no such token {TOKEN} [code 7500]", statement=2, line=3,
        sql=f"INSERT INTO secrets VALUES ('{TOKEN}');")


@pytest.mark.parametrize("json_mode", [False, True], ids=["text", "json"])
@pytest.mark.parametrize("github", [False, True], ids=["plain", "github"])
def test_console_never_prints_a_secret(capsys, tmp_path, json_mode, github):
    summary = tmp_path / "summary.md"
    environ = {"GITHUB_STEP_SUMMARY": str(summary)}
    if github:
        environ["GITHUB_ACTIONS"] = "true"
    console = apply_migrations.Console(json=json_mode, verbose=True, environ=environ)
    console.secrets = [TOKEN]
    exc = secret_failure()
    assert TOKEN in str(exc) and TOKEN in exc.sql  # the error itself holds it
    capsys.readouterr()
    console.error(exc, {"database": f"D1 database {TOKEN}"})
    console.warn(f"warning about {TOKEN}")
    console.log(f"POST {TOKEN}")
    console.step_summary(f"Migrations {TOKEN}", ["Version", "Result"],
                         [["0002", console.words(exc)], ["0003", f"raw {TOKEN}"]])
    out, err = capsys.readouterr()
    written = summary.read_text()
    for where, text in (("stdout", out), ("stderr", err), ("summary", written)):
        assert TOKEN not in text, f"the token is in {where}:\n{text}"
    assert "no such token ***" in err
    if json_mode:
        payload = json.loads(out[out.index("{"):])
        assert "no such token ***" in payload["error"]["message"]
        assert payload["error"]["sql"] == "INSERT INTO secrets VALUES ('***');"
        assert payload["database"] == "D1 database ***"
    if github:
        stream = err if json_mode else out
        annotation = [line for line in stream.splitlines() if line.startswith("::error")]
        assert len(annotation) == 1 and "no such token ***" in annotation[0], stream
    assert "raw ***" in written and "Migrations ***" in written


# --------------------------------------------------------------------------
# 7. A dry run changes nothing on D1 and exits as a real run would


DRY_RUNS = [
    pytest.param([], [("0001_items.sql", M1), ("0002_tags.sql", M2)], 0, id="fresh-clean"),
    pytest.param([], [("0001_items.sql", M1), ("0002_bad.sql", M_BAD)], 1, id="fresh-failing"),
    pytest.param([("0001_items.sql", M1)], [("0002_tags.sql", M2), ("0003_three.sql", M3)], 0,
                 id="partly-applied-clean"),
    pytest.param([("0001_items.sql", M1)], [("0002_tags.sql", M2), ("0003_bad.sql", M_BAD)], 1,
                 id="partly-applied-failing"),
    pytest.param([("0001_items.sql", M1)], [], 0, id="up-to-date"),
    pytest.param([], [], 0, id="fresh-no-migrations"),
]


@pytest.mark.parametrize("before, pending, expected", DRY_RUNS)
def test_dry_run_changes_nothing_on_d1_and_exits_as_a_real_run(
        write_migration, fake, remote_cli, before, pending, expected):
    for name, sql in before:
        write_migration(name, sql)
    if before:
        code, out, err = remote_cli("apply")
        assert code == 0, err
    for name, sql in pending:
        write_migration(name, sql)
    dump, bookmark = fake.dump(), fake.bookmark
    fake.reset_requests()
    code, out, err = remote_cli("apply", "--dry-run", "--json")
    assert "Traceback" not in err, err
    assert fake.dump() == dump
    assert fake.bookmark == bookmark  # D1 committed no write at all
    assert code == expected, err
    payload = json.loads(out)
    assert payload["dry_run"] is True
    if expected == 0:
        assert [a["name"] for a in payload["applied"]] == [n[:-4] for n, _ in pending]
        assert all(o["result"] == "would apply" for o in payload["outcomes"])
    else:
        assert_one_line_error(err, "_bad")
    # the real run exits the same way (and does change D1 when something is pending)
    real, _, err = remote_cli("apply")
    assert real == expected, err
    if pending:
        assert fake.dump() != dump
