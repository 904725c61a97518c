"""--d1-remote against answers and settings a hostile or broken network gives,
against tests/fake_d1.py (no Node, no network), one section each (numbered as
the review that found them); the tests of a section failed before its fix, but
for a few that guard what must not change:

  4. Account id, database id and token that cannot go into a URL or a header:
     one line, exit 2, nothing sent, the token never shown.
  6. --http-timeout beyond its range: one line, exit 2.
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
        if action is None or action.kind != "cut":
            return action
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
# 6. --http-timeout in range


@pytest.mark.parametrize("value", ["1e10", "1e300", "3601"])
def test_http_timeout_beyond_range_is_one_line_exit_2(write_migration, fake, remote_cli,
                                                      value):
    write_migration("0001_items.sql", M1)
    code, out, err = remote_cli("status", "--http-timeout", value)
    assert code == 2, (code, err)
    assert_one_line_error(err, "--http-timeout")
    assert fake.request_count == 0


def test_http_timeout_at_the_bound_is_accepted(write_migration, fake, remote_cli):
    write_migration("0001_items.sql", M1)
    code, out, err = remote_cli("status", "--http-timeout", "3600")
    assert code == 0, err
