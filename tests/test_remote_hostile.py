"""--d1-remote against answers and settings a hostile or broken network gives,
against tests/fake_d1.py (no Node, no network), one section each (numbered as
the review that found them); the tests of a section failed before its fix, but
for a few that guard what must not change:

  1. A stop (SIGINT/SIGTERM) while the client waits to send again (a 429's
     Retry-After) sends nothing more: apply says the migration was not sent,
     rollback that it is still applied (the tool as a real process).
  2. An error answer whose body is cut short or stalls is a lost answer: the
     record decides, never a traceback.
  3. A lost answer whose re-read of the record fails too leaves the outcome
     unknown (reported so, with the Time Travel hint), never "failed"; a stop
     during that re-read's wait too.
  4. Account id, database id and token that cannot go into a URL or a header:
     one line, exit 2, nothing sent, the token never shown.
  5. Rows whose length is not their columns' count: one line, not a traceback.
  6. --http-timeout beyond its range: one line, exit 2.
  7. Any 2xx with D1's body is an answer (a 201 is not a lost answer).
  8. A duration from D1 that is not a number of 0 ms or more is not stored
     or shown; the JSON output stays JSON.
  9. An error that is not SQLite's names no statement, and a page that is not
     D1's does not blame the credentials.
"""
from __future__ import annotations

import json
import signal
import socket
import threading
import time
from typing import List, Optional

import pytest

from conftest import apply_migrations  # noqa: F401  (the tool under test, imported first)
from fake_d1 import Action, FakeD1, drop, remote_env, respond
from test_remote_faults import (  # noqa: F401  (remote_cli is a fixture)
    M1, M2, M3, TOKEN, assert_one_line_error, batch_of, finish, interrupted_line, is_probe,
    is_rollback_batch, remote_cli, start_tool, tracked, when)

needs_posix = pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs POSIX signals")


class _Cut(BaseException):
    """Ends a request the fake answered with a truncated body."""


class CuttingFakeD1(FakeD1):
    """FakeD1 with one more scripted action, `cut(...)`: the status line and
    headers promise a body that never wholly comes (the connection closes,
    after `delay` seconds)."""

    _handler = threading.local()

    def _serve(self, h) -> None:
        self._handler.h = h
        try:
            super()._serve(h)
        except _Cut:
            pass

    def _take(self, record: dict) -> Optional[Action]:
        action = super()._take(record)
        if action is None or action.kind not in ("cut", "trickle"):
            return action
        if action.kind == "trickle":  # a body that comes a byte at a time
            status = action.status or 200
            record["status"] = status
            h = self._handler.h
            body = b'{"success": true, "errors": [], "messages": [], "result": []}'
            h.send_response(status)
            h.send_header("Content-Type", "application/json")
            h.send_header("Content-Length", str(len(body)))
            h.end_headers()
            try:
                for byte in body:
                    h.wfile.write(bytes([byte]))
                    h.wfile.flush()
                    time.sleep(action.seconds)
            except OSError:
                pass  # the tool gave up and went
            raise _Cut()
        if action.execute:
            self.execute(record["kind"], record["body"])
        record["status"] = action.status
        h = self._handler.h
        h.send_response(action.status)
        h.send_header("Content-Type", "text/html")
        h.send_header("Content-Length", "1000")
        h.end_headers()
        h.wfile.write(b"<html>")
        h.wfile.flush()
        time.sleep(action.seconds)
        try:
            h.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        raise _Cut()


def cut(status: int, execute: bool = False, delay: float = 0.0, match=None) -> Action:
    return Action("cut", status, execute=execute, seconds=delay, match=match)


@pytest.fixture
def fake() -> FakeD1:
    """The fake D1 of remote_cli here: TOKEN, and the `cut` action."""
    with CuttingFakeD1(token=TOKEN) as server:
        yield server


def three(write_migration, down: bool = False) -> None:
    write_migration("0001_items.sql", M1)
    write_migration("0002_tags.sql", M2)
    write_migration("0003_three.sql", M3)
    if down:
        write_migration("0003_three.sql", "DELETE FROM items WHERE name = 'three';\n",
                        folder="migrations/down")


def history_rows(fake: FakeD1) -> List[tuple]:
    return [row for row in fake.history() if row[0] != "bookmark"]


def is_migration_batch(record: dict) -> bool:
    return not is_probe(record) and any(
        entry["sql"].startswith('INSERT INTO "schema_migrations" ') for entry in batch_of(record))


def strict_json(text: str) -> dict:
    def refuse(constant: str):
        raise ValueError(f"not JSON: {constant}")
    return json.loads(text, parse_constant=refuse)


# --------------------------------------------------------------------------
# 1. A stop while waiting to send again sends nothing more


def signal_during_retry_wait(fake, project, argv, predicate, signum):
    """Run the tool; the first request matching `predicate` gets a 429 with
    Retry-After 30; signal once the tool has it.  (time of the signal,
    (code, out, err))."""
    answered = threading.Event()

    def then(record):
        answered.set()
        return respond(429, None, headers={"Retry-After": "30"})

    when(fake, predicate, then)
    proc = start_tool(fake, project, argv)
    try:
        assert answered.wait(20), "the request never came"
        time.sleep(0.5)  # the answer reaches the tool, which starts its wait
        stopped_at = time.monotonic()
        proc.send_signal(signum)
    except BaseException:
        proc.kill()
        raise
    return stopped_at, finish(proc)


@needs_posix
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
@pytest.mark.parametrize("extra", [[], ["--commit-each"]], ids=["group", "commit-each"])
def test_stop_while_waiting_to_resend_a_migration_batch_sends_nothing_more(
        project, write_migration, fake, signum, extra):
    three(write_migration)
    stopped_at, (code, out, err) = signal_during_retry_wait(
        fake, project, ["apply", "--d1-remote", *extra], is_migration_batch, signum)
    assert code == 128 + signum, (code, err)
    line = interrupted_line(err)
    assert "Interrupted before 0001_items" in line and "was sent to D1" in line, line
    assert "0 migrations applied in this run" in line, line
    assert [r for r in fake.requests if r["time"] > stopped_at] == []
    assert [r["status"] for r in fake.requests if is_migration_batch(r)] == [429]
    assert tracked(fake) == [] and not fake.has_table("items")


@needs_posix
def test_stop_while_waiting_to_resend_a_rollback_sends_nothing_more(
        project, write_migration, fake, run_subprocess):
    three(write_migration, down=True)
    code, out, err = run_subprocess(["apply", "--d1-remote"], env=remote_env(fake))
    assert code == 0, err
    stopped_at, (code, out, err) = signal_during_retry_wait(
        fake, project, ["rollback", "--d1-remote"], is_rollback_batch, signal.SIGINT)
    assert code == 130, (code, out, err)
    line = interrupted_line(err)
    assert "before the rollback of 0003_three was sent" in line, line
    assert "still applied" in line, line
    assert [r for r in fake.requests if r["time"] > stopped_at] == []
    assert tracked(fake) == ["0001", "0002", "0003"]
    assert fake.rows("SELECT count(*) FROM items WHERE name = 'three'") == [(1,)]


# --------------------------------------------------------------------------
# 2. An error answer cut short, or stalled, is a lost answer


CUT_ANSWERS = [
    pytest.param(502, True, 0.0, ["0001", "0002", "0003"], id="502-cut-after-commit"),
    pytest.param(400, False, 0.0, ["0001", "0002", "0003"], id="400-cut-not-run"),
    pytest.param(503, True, 2.5, ["0001", "0002", "0003"], id="503-stalled-after-commit"),
]


@pytest.mark.parametrize("status, execute, delay, applied", CUT_ANSWERS)
@pytest.mark.parametrize("extra", [[], ["--commit-each"]], ids=["group", "commit-each"])
def test_error_answer_cut_short_to_a_migration_batch_is_a_lost_answer(
        write_migration, fake, remote_cli, status, execute, delay, applied, extra):
    three(write_migration)
    fake.push(cut(status, execute, delay, match=is_migration_batch))
    code, out, err = remote_cli("apply", "--json", "--http-timeout", "1", *extra)
    assert "Traceback" not in err, err
    assert code == 0, err
    assert tracked(fake) == applied
    assert fake.rows("SELECT name FROM items") == [("two",), ("three",)]  # each once
    assert [o["result"] for o in strict_json(out)["outcomes"]] == ["applied"] * 3


@pytest.mark.parametrize("kind", ["raw", "bookmark"])
def test_error_answer_cut_short_to_a_read_is_retried(write_migration, fake, remote_cli, kind):
    three(write_migration)
    fake.push(cut(503, delay=2.5 if kind == "bookmark" else 0.0, match=kind))
    code, out, err = remote_cli("apply", "--http-timeout", "1")
    assert "Traceback" not in err, err
    assert code == 0, err
    assert tracked(fake) == ["0001", "0002", "0003"]


def test_every_answer_to_a_batch_cut_short_is_one_line(write_migration, fake, remote_cli):
    three(write_migration)
    # the first batch, and each time it is sent again
    fake.script.extend([cut(400, match=is_migration_batch)] * 3)
    code, out, err = remote_cli("apply", "--commit-each", "--http-retries", "2")
    assert code == 1, err
    assert_one_line_error(err, "0001_items", "cut short")
    assert tracked(fake) == [] and not fake.has_table("items")


# --------------------------------------------------------------------------
# 3. A lost answer whose re-read fails too: unknown, never failed


def lose_answer_then_fail_reads(fake: FakeD1, predicate, reads: int = 20,
                                execute: bool = True, retry_after: Optional[str] = None,
                                read_failed: Optional[threading.Event] = None) -> None:
    """The first request matching `predicate` runs (if execute) and its answer
    is lost; the next `reads` reads of the record get a 503."""
    state = {"lost": False, "reads": 0}

    def entry(record):
        fake.script.appendleft(entry)
        if not state["lost"] and predicate(record):
            state["lost"] = True
            return drop(execute=execute)
        if state["lost"] and record["kind"] == "raw" and state["reads"] < reads:
            state["reads"] += 1
            if read_failed is not None:
                read_failed.set()
            headers = {"Retry-After": retry_after} if retry_after else None
            return respond(503, "<html>503</html>", headers=headers)
        return None

    fake.push(entry)


@pytest.mark.parametrize("execute", [True, False], ids=["committed", "not-run"])
@pytest.mark.parametrize("extra", [[], ["--commit-each"]], ids=["group", "commit-each"])
def test_lost_answer_and_failed_reread_is_unknown_not_failed(
        write_migration, fake, remote_cli, execute, extra):
    three(write_migration)
    lose_answer_then_fail_reads(fake, is_migration_batch, execute=execute)
    code, out, err = remote_cli("apply", "--json", "--http-retries", "1", *extra)
    assert code == 1, err
    line = assert_one_line_error(err, "wholly or not at all", "`status` shows which")
    assert "0001_items" in line, line
    payload = strict_json(out)
    results = [o["result"] for o in payload["outcomes"]]
    assert "failed" not in results and results[0] == "unknown", results
    if not extra:  # the group: all three went in the one batch
        assert results == ["unknown"] * 3, results
        assert "0001_items to 0003_three (one batch)" in line, line
    assert payload["bookmark"] and payload["restore"]
    assert [row for row in history_rows(fake) if row[1] == "failed"] == []
    assert tracked(fake) == (["0001", "0002", "0003"] if execute and not extra else
                             ["0001"] if execute else [])


def test_lost_answer_and_failed_reread_shows_the_time_travel_hint(write_migration, fake,
                                                                  remote_cli):
    three(write_migration)
    lose_answer_then_fail_reads(fake, is_migration_batch)
    code, out, err = remote_cli("apply", "--http-retries", "1")
    assert code == 1, err
    assert_one_line_error(err, "wholly or not at all")
    assert "to go back to it: wrangler d1 time-travel restore" in out, out


def test_lost_rollback_answer_and_failed_reread_is_unknown_not_failed(
        write_migration, fake, remote_cli):
    three(write_migration, down=True)
    code, out, err = remote_cli("apply")
    assert code == 0, err
    lose_answer_then_fail_reads(fake, is_rollback_batch)
    code, out, err = remote_cli("rollback", "--http-retries", "1")
    assert code == 1, err
    assert_one_line_error(err, "rollback of 0003_three", "wholly or not at all",
                          "whether it is still applied")
    assert [row for row in history_rows(fake) if row[1] == "failed"] == []
    assert tracked(fake) == ["0001", "0002"]  # it did run


@needs_posix
@pytest.mark.parametrize("command", ["apply", "rollback"])
def test_stop_while_waiting_to_reread_after_a_lost_answer_is_unknown(
        project, write_migration, fake, run_subprocess, command):
    three(write_migration, down=True)
    if command == "rollback":
        code, out, err = run_subprocess(["apply", "--d1-remote"], env=remote_env(fake))
        assert code == 0, err
    read_failed = threading.Event()
    lose_answer_then_fail_reads(fake, is_rollback_batch if command == "rollback"
                                else is_migration_batch, retry_after="30",
                                read_failed=read_failed)
    proc = start_tool(fake, project, [command, "--d1-remote"])
    try:
        assert read_failed.wait(20), "the record was never read"
        time.sleep(0.5)
        stopped_at = time.monotonic()
        proc.send_signal(signal.SIGINT)
    except BaseException:
        proc.kill()
        raise
    code, out, err = finish(proc)
    assert code == 130, (code, out, err)
    line = interrupted_line(err)
    assert "on its way to D1" in line and "wholly or not at all" in line, line
    assert [r for r in fake.requests if r["time"] > stopped_at] == []
    assert [row for row in history_rows(fake) if row[1] == "failed"] == []


# --------------------------------------------------------------------------
# 4. Ids and token that cannot go into a URL or a header


BAD_VARIABLES = [
    pytest.param("CLOUDFLARE_API_TOKEN", TOKEN + "\nX-Other: 1", id="token-newline"),
    pytest.param("CLOUDFLARE_API_TOKEN", TOKEN + "\x07", id="token-control"),
    pytest.param("CLOUDFLARE_API_TOKEN", TOKEN + "\u20ac", id="token-not-latin1"),
    pytest.param("CLOUDFLARE_API_TOKEN", TOKEN + "\u00e9", id="token-not-ascii"),
    pytest.param("CLOUDFLARE_API_TOKEN", TOKEN[:8] + " " + TOKEN[8:], id="token-space"),
    pytest.param("CLOUDFLARE_ACCOUNT_ID", "acc\u20ac", id="account-not-ascii"),
    pytest.param("CLOUDFLARE_ACCOUNT_ID", "abc\ndef", id="account-newline"),
    pytest.param("CLOUDFLARE_ACCOUNT_ID", "abc/../def", id="account-slash"),
    pytest.param("D1_DATABASE_ID", "abc def", id="database-space"),
    pytest.param("D1_DATABASE_ID", "abc/def", id="database-slash"),
    pytest.param("D1_DATABASE_ID", "00000000-0000-4000-8000-0000000000d1?x=1", id="database-?"),
    pytest.param("D1_DATABASE_ID", "00000000-0000-4000-8000-0000000000d1#x", id="database-#"),
    pytest.param("CLOUDFLARE_API_BASE_URL", "http://127.0.0.1:99999/client/v4",
                 id="api-base-port"),
    pytest.param("CLOUDFLARE_API_BASE_URL", "http://127.0.0.1 x/", id="api-base-space"),
]


@pytest.mark.parametrize("command", ["apply", "status", "rollback"])
@pytest.mark.parametrize("variable, value", BAD_VARIABLES)
def test_unusable_remote_variable_is_one_line_exit_2_before_any_request(
        write_migration, fake, remote_cli, monkeypatch, command, variable, value):
    write_migration("0001_items.sql", M1)
    monkeypatch.setenv(variable, value)
    code, out, err = remote_cli(command, "--http-retries", "0")
    assert code == 2, (code, err)
    line = assert_one_line_error(err)
    assert variable in line or (variable == "CLOUDFLARE_API_BASE_URL" and "URL" in line), line
    assert TOKEN not in out + err and TOKEN[6:20] not in out + err
    assert fake.request_count == 0


# --------------------------------------------------------------------------
# 5. Rows of another length than their columns


ODD_ROWS = [
    pytest.param([], [[1, 2, 3]], id="no-columns-three-values"),
    pytest.param([], [[]], id="no-columns-empty-row"),
    pytest.param(["a", "b"], [[1]], id="two-columns-one-value"),
    pytest.param(["a"], [[1, 2]], id="one-column-two-values"),
]


@pytest.mark.parametrize("command", ["status", "apply", "rollback", "history"])
@pytest.mark.parametrize("columns, rows", ODD_ROWS)
def test_rows_of_another_length_than_their_columns_are_one_line(
        write_migration, fake, remote_cli, command, columns, rows):
    three(write_migration, down=True)
    if command in ("rollback", "history"):
        code, out, err = remote_cli("apply")
        assert code == 0, err
    body = {"success": True, "errors": [], "messages": [],
            "result": [{"results": {"columns": columns, "rows": rows}, "success": True,
                        "meta": {"duration": 0.1}}]}
    fake.push(respond(200, body, match="raw"))
    code, out, err = remote_cli(command)
    assert code == 1, (code, err)
    assert_one_line_error(err, "not D1's")


# --------------------------------------------------------------------------
# 6. --http-timeout in range


@pytest.mark.parametrize("value", ["1e10", "1e300", "3601"])
def test_http_timeout_beyond_range_is_one_line_exit_2(write_migration, fake, remote_cli,
                                                      value):
    write_migration("0001_items.sql", M1)
    code, out, err = remote_cli("status", "--http-timeout", value)
    assert code == 2, (code, err)
    assert_one_line_error(err, "--http-timeout")
    assert fake.request_count == 0


@pytest.mark.parametrize("status, said", [(200, "no answer from D1 within 1 s"),
                                          (400, "HTTP 400 from D1 with its body cut short")])
def test_an_answer_that_trickles_is_bounded_by_the_http_timeout(write_migration, fake,
                                                                remote_cli, status, said):
    """Each byte comes within the socket's timeout, the whole answer would
    take 6 s: --http-timeout 1 bounds the answer, not each read (an error
    answer's too)."""
    write_migration("0001_items.sql", M1)
    fake.push(Action("trickle", status, seconds=0.1))
    started = time.monotonic()
    code, out, err = remote_cli("status", "--http-timeout", "1", "--http-retries", "0")
    took = time.monotonic() - started
    assert code != 0 and "Traceback" not in err, err
    assert said in err, err
    assert took < 4, took


def test_http_timeout_at_the_bound_is_accepted(write_migration, fake, remote_cli):
    write_migration("0001_items.sql", M1)
    code, out, err = remote_cli("status", "--http-timeout", "3600")
    assert code == 0, err


# --------------------------------------------------------------------------
# 7. Any 2xx with D1's body is an answer


@pytest.mark.parametrize("status", [201, 202])
@pytest.mark.parametrize("extra", [[], ["--commit-each"]], ids=["group", "commit-each"])
def test_2xx_with_d1s_body_is_an_answer(write_migration, fake, remote_cli, status, extra):
    three(write_migration)

    def executed(record):
        code, payload = fake.execute("query", record["body"])
        return respond(status if code == 200 else code, payload)

    fake.push(executed_every(fake, is_migration_batch, executed))
    code, out, err = remote_cli("apply", "--json", *extra)
    assert code == 0, err
    payload = strict_json(out)
    assert [o["result"] for o in payload["outcomes"]] == ["applied"] * 3
    # each sent once: no resend of a batch whose answer was there
    assert len([r for r in fake.requests if is_migration_batch(r)]) == (3 if extra else 1)
    assert tracked(fake) == ["0001", "0002", "0003"]


def executed_every(fake: FakeD1, predicate, then):
    def entry(record):
        fake.script.appendleft(entry)
        return then(record) if predicate(record) else None
    return entry


# --------------------------------------------------------------------------
# 8. Durations from D1 that are not a number of 0 ms or more


@pytest.mark.parametrize("duration", [float("inf"), float("nan"), -5, -1e6, "12ms", True,
                                      1e300, None])
@pytest.mark.parametrize("extra", [[], ["--commit-each"]], ids=["group", "commit-each"])
def test_a_duration_that_is_not_a_number_of_ms_is_not_kept(write_migration, fake, remote_cli,
                                                           duration, extra):
    three(write_migration)

    def odd_duration(record):
        code, payload = fake.execute("query", record["body"])
        if code == 200:
            for result in payload["result"]:
                result["meta"]["duration"] = duration
        return respond(code, payload)

    fake.push(executed_every(fake, is_migration_batch, odd_duration))
    code, out, err = remote_cli("apply", "--json", *extra)
    assert code == 0, err
    for outcome in strict_json(out)["outcomes"]:
        assert outcome["result"] == "applied"
        assert 0 <= outcome["duration_ms"] < 86_400_000, outcome
    kept = fake.rows("SELECT duration_ms FROM schema_migrations")
    assert all(ms is None or 0 <= ms < 86_400_000 for (ms,) in kept), kept
    code, out, err = remote_cli("status", "--json")
    assert code == 0, err
    for migration in strict_json(out)["migrations"]:
        ms = migration["duration_ms"]
        assert ms is None or 0 <= ms < 86_400_000, migration
    code, out, err = remote_cli("history", "--json")
    assert code == 0, err
    strict_json(out)


# --------------------------------------------------------------------------
# 9. Errors that are not SQLite's


HTML_400 = respond(400, "<html>Bad Request</html>", headers={"Content-Type": "text/html"})


@pytest.mark.parametrize("extra", [[], ["--commit-each"]], ids=["group", "commit-each"])
def test_a_page_that_is_not_d1s_names_no_statement(write_migration, fake, remote_cli, extra):
    three(write_migration)
    fake.push(executed_every(fake, is_migration_batch, lambda record: HTML_400))
    code, out, err = remote_cli("apply", *extra)
    assert code == 1, err
    line = assert_one_line_error(err, "0001_items", "HTTP 400")
    assert "statement" not in line and "recording it" not in line, line
    assert not [r for r in fake.requests if is_probe(r)]  # no search for a statement
    assert tracked(fake) == []


def test_429_until_retries_run_out_names_no_statement(write_migration, fake, remote_cli):
    three(write_migration)
    fake.push(executed_every(fake, is_migration_batch, lambda record: respond(
        429, None, headers={"Retry-After": "0"})))
    code, out, err = remote_cli("apply", "--commit-each", "--http-retries", "1")
    assert code == 1, err
    line = assert_one_line_error(err, "0001_items", "429")
    assert "statement" not in line and "recording it" not in line, line
    assert not [r for r in fake.requests if is_probe(r)]


def test_413_names_no_statement(write_migration, fake, remote_cli):
    three(write_migration)
    fake.push(executed_every(fake, is_migration_batch, lambda record: respond(
        413, "<html>413 Request Entity Too Large</html>")))
    code, out, err = remote_cli("apply", "--commit-each")
    assert code == 1, err
    line = assert_one_line_error(err, "0001_items", "413")
    assert "statement" not in line and "recording it" not in line, line


def test_a_403_page_that_is_not_d1s_does_not_blame_the_credentials(write_migration, fake,
                                                                   remote_cli):
    three(write_migration)
    fake.push(executed_every(fake, is_migration_batch, lambda record: respond(
        403, "<html>Attention Required! | Cloudflare</html>",
        headers={"Content-Type": "text/html"})))
    code, out, err = remote_cli("apply", "--commit-each")
    assert code == 1, err
    line = assert_one_line_error(err, "0001_items", "HTTP 403")
    assert "credentials" not in line and "CLOUDFLARE_API_TOKEN" not in line, line


def test_a_403_from_d1_still_blames_the_credentials(write_migration, fake, remote_cli,
                                                    monkeypatch):
    three(write_migration)
    monkeypatch.setenv("CLOUDFLARE_API_TOKEN", "wrong-token")
    code, out, err = remote_cli("status")
    assert code == 2, err
    assert_one_line_error(err, "credentials", "CLOUDFLARE_API_TOKEN")
