"""Quick tests of tests/fake_d1.py, the in-process fake of D1's HTTP API."""
from __future__ import annotations

import http.client
import json
import time
import urllib.error
import urllib.request

import pytest

from fake_d1 import (D1ApiError, FakeD1, drop, fake_d1, malformed, rate_limited,  # noqa: F401
                     remote_env, respond, sleep, split_statements)


def call(fake, kind="query", body=None, token=None, database=None, account=None,
         method="POST", data=None, path=None, timeout=5):
    """(status, headers, parsed JSON body) of one request to the fake."""
    url = path or (f"{fake.api_base}/accounts/{account or fake.account}/d1/database/"
                   f"{database or fake.database}/{kind}")
    if data is None and body is not None:
        data = json.dumps(body).encode("utf-8")
    request = urllib.request.Request(url, data=data, method=method, headers={
        "Authorization": f"Bearer {token or fake.token}", "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            status, headers, raw = response.status, response.headers, response.read()
    except urllib.error.HTTPError as exc:
        with exc:
            status, headers, raw = exc.code, exc.headers, exc.read()
    return status, headers, json.loads(raw.decode("utf-8"))


def error(payload):
    assert payload["success"] is False and payload["result"] is None, payload
    return payload["errors"][0]["code"], payload["errors"][0]["message"]


def test_query_shape_and_several_statements(fake_d1):
    status, _, payload = call(fake_d1, body={"sql": "CREATE TABLE t (a, b);\n"
                                                    "INSERT INTO t VALUES (1, 'x'); -- done\n"
                                                    "SELECT a, b FROM t;"})
    assert status == 200 and payload["success"] is True and payload["errors"] == []
    assert len(payload["result"]) == 3
    last = payload["result"][-1]
    assert last["results"] == [{"a": 1, "b": "x"}] and last["success"] is True
    assert payload["result"][1]["meta"]["changes"] == 1
    assert payload["result"][1]["meta"]["last_row_id"] == 1
    assert set(last["meta"]) >= {"duration", "changes", "last_row_id", "rows_read",
                                 "rows_written", "changed_db", "size_after", "served_by"}
    assert fake_d1.tables() == ["t"] and fake_d1.rows("SELECT * FROM t") == [(1, "x")]


def test_raw_shape(fake_d1):
    fake_d1.sql("CREATE TABLE t (a, b); INSERT INTO t VALUES (1, NULL), (2, 'y')")
    status, _, payload = call(fake_d1, "raw", {"sql": "SELECT a, b FROM t WHERE a >= ?",
                                               "params": [1]})
    assert status == 200
    assert payload["result"][0]["results"] == {"columns": ["a", "b"],
                                               "rows": [[1, None], [2, "y"]]}


def test_batch_failing_midway_leaves_nothing(fake_d1):
    status, _, payload = call(fake_d1, body={"batch": [
        {"sql": "CREATE TABLE t (a)"}, {"sql": "INSERT INTO t VALUES (?)", "params": [1]},
        {"sql": "INSERT INTO missing VALUES (1)"}]})
    assert status == 400
    assert error(payload) == (7500, "no such table: missing: SQLITE_ERROR")
    assert fake_d1.tables() == []


def test_constraint_error_message(fake_d1):
    fake_d1.sql("CREATE TABLE schema_migrations (version TEXT PRIMARY KEY, name TEXT);"
                "INSERT INTO schema_migrations VALUES ('0001', 'a')")
    status, _, payload = call(fake_d1, body={
        "sql": "INSERT INTO schema_migrations VALUES (?, ?)", "params": ["0001", "b"]})
    assert status == 400 and error(payload) == (
        7500, "UNIQUE constraint failed: schema_migrations.version: SQLITE_CONSTRAINT")
    assert fake_d1.tracking() == [("0001", "a")]


def test_auth_and_unknown_ids(fake_d1):
    assert error(call(fake_d1, body={"sql": "SELECT 1"}, token="wrong")[2]) == (
        10000, "Authentication error")
    request = urllib.request.Request(f"{fake_d1.api_base}/accounts/{fake_d1.account}/d1/"
                                     f"database/{fake_d1.database}/query", data=b"{}")
    with pytest.raises(urllib.error.HTTPError) as caught:  # no Authorization at all
        urllib.request.urlopen(request, timeout=5)
    caught.value.close()
    assert caught.value.code == 403
    status, _, payload = call(fake_d1, body={"sql": "SELECT 1"}, account="other")
    assert status == 403 and error(payload)[0] == 10000
    status, _, payload = call(fake_d1, body={"sql": "SELECT 1"}, database="nope")
    assert status == 404 and error(payload) == (7404, "Couldn't find a D1 DB with the uuid nope")
    status, _, payload = call(fake_d1, path=fake_d1.api_base + "/elsewhere", body={})
    assert status == 404 and error(payload)[0] == 7003


def test_malformed_bodies(fake_d1):
    status, _, payload = call(fake_d1, body={"sql": "SELECT 1; SELECT ?", "params": [1]})
    assert status == 400 and error(payload)[0] == 7400
    assert error(call(fake_d1, data=b"{not json")[2])[0] == 7400
    assert error(call(fake_d1, body={"query": "SELECT 1"})[2])[0] == 7400
    assert error(call(fake_d1, body={"sql": " -- nothing\n ; "})[2]) == (
        7500, "No SQL statements detected.")


def test_statement_too_long():
    with FakeD1(max_statement_bytes=40) as fake:
        fake.sql("CREATE TABLE t (a)")
        ok = "INSERT INTO t VALUES ('" + "é" * 7 + "');"  # 40 UTF-8 bytes
        assert fake.sql(ok)
        status, _, payload = call(fake, body={"sql": ok.replace("');", "x');")})
        assert status == 400 and error(payload) == (7500, "statement too long: SQLITE_TOOBIG")


def test_splitter_follows_sqlite_rules():
    sql = ("CREATE TABLE t (a); -- a; comment\n/* b; */ INSERT INTO t VALUES ('x;''y');\n"
           "CREATE TRIGGER tr AFTER INSERT ON t begin SELECT 1; SELECT 2; end;\n"
           'SELECT "q;" , [r;] ; ;; SELECT 3')
    assert split_statements(sql) == [
        "CREATE TABLE t (a);", "-- a; comment\n/* b; */ INSERT INTO t VALUES ('x;''y');",
        "CREATE TRIGGER tr AFTER INSERT ON t begin SELECT 1; SELECT 2; end;",
        'SELECT "q;" , [r;] ;', "SELECT 3"]


@pytest.mark.parametrize("sql", ["BEGIN", "BEGIN TRANSACTION", "COMMIT", "SAVEPOINT s",
                                 "ATTACH ':memory:' AS other", "PRAGMA journal_mode = WAL",
                                 "PRAGMA user_version", "CREATE TABLE _cf_x (a)",
                                 "CREATE TEMP TABLE tt (a)"])
def test_not_authorized(fake_d1, sql):
    status, _, payload = call(fake_d1, body={"sql": "CREATE TABLE t (a);" + sql})
    assert status == 400 and error(payload) == (7500, "not authorized: SQLITE_AUTH")
    assert fake_d1.tables() == []


def test_foreign_keys_stay_on(fake_d1):
    status, _, payload = call(fake_d1, body={"sql": "PRAGMA foreign_keys = OFF"})
    assert status == 200
    fake_d1.sql("CREATE TABLE p (id INTEGER PRIMARY KEY);"
                "CREATE TABLE c (p INTEGER REFERENCES p(id) ON DELETE CASCADE);"
                "CREATE TABLE d (p INTEGER REFERENCES p(id));"
                "INSERT INTO p VALUES (1), (2); INSERT INTO c VALUES (1); INSERT INTO d VALUES (2)")
    status, _, payload = call(fake_d1, body={"sql": "PRAGMA foreign_keys = OFF; DELETE FROM p"
                                                    " WHERE id = 2"})
    assert status == 400 and error(payload) == (
        7500, "FOREIGN KEY constraint failed: SQLITE_CONSTRAINT")
    fake_d1.sql("PRAGMA foreign_keys = OFF; DELETE FROM p WHERE id = 1")
    assert fake_d1.rows("SELECT * FROM c") == []  # cascaded
    assert fake_d1.post("raw", {"sql": "PRAGMA foreign_keys"})[0]["results"]["rows"] == [[1]]


def test_respond_after_executing(fake_d1):
    fake_d1.push(respond(503, execute=True))
    status, _, payload = call(fake_d1, body={"sql": "CREATE TABLE t (a)"})
    assert status == 503 and error(payload)[0] == 7500
    assert fake_d1.tables() == ["t"]
    assert [r["status"] for r in fake_d1.requests] == [503]


def test_rate_limited(fake_d1):
    fake_d1.script.extend([rate_limited("2"), malformed(b'{"success": true, "result": "x"}')])
    status, headers, payload = call(fake_d1, body={"sql": "CREATE TABLE t (a)"})
    assert status == 429 and headers["Retry-After"] == "2" and error(payload)[0] == 971
    assert fake_d1.tables() == []
    status, _, payload = call(fake_d1, body={"sql": "CREATE TABLE t (a)"})
    assert (status, payload) == (200, {"success": True, "result": "x"})
    assert fake_d1.tables() == []  # the malformed answer did not execute either
    assert call(fake_d1, body={"sql": "SELECT 1"})[0] == 200 and len(fake_d1.script) == 0


def test_drop_closes_without_answer(fake_d1):
    fake_d1.script.extend([drop(), drop(execute=True)])
    for _ in range(2):
        with pytest.raises((http.client.RemoteDisconnected, ConnectionError,
                            urllib.error.URLError)):
            call(fake_d1, body={"sql": "CREATE TABLE t (a)"})
    assert fake_d1.tables() == ["t"]  # only the second one ran
    assert [r["status"] for r in fake_d1.requests] == [None, None]
    assert call(fake_d1, body={"sql": "SELECT 1"})[0] == 200


def test_sleep_delay_callable_and_match(fake_d1):
    seen = []
    fake_d1.script.extend([sleep(0.2), lambda record: seen.append(record["kind"]),
                           respond(500, match="raw")])
    started = time.monotonic()
    assert call(fake_d1, body={"sql": "SELECT 1"})[0] == 200
    assert time.monotonic() - started >= 0.2
    assert call(fake_d1, body={"sql": "SELECT 1"})[0] == 200 and seen == ["query"]
    assert call(fake_d1, body={"sql": "SELECT 1"})[0] == 200  # waits for a /raw
    assert call(fake_d1, "raw", {"sql": "SELECT 1"})[0] == 500
    fake_d1.delay = 0.1
    started = time.monotonic()
    assert call(fake_d1, body={"sql": "SELECT 1"})[0] == 200
    assert time.monotonic() - started >= 0.1


def test_bookmarks(fake_d1):
    def bookmark():
        status, _, payload = call(fake_d1, "time_travel/bookmark", method="GET")
        assert status == 200 and payload["success"] is True
        return payload["result"]["bookmark"]

    first = bookmark()
    fake_d1.sql("SELECT 1")
    assert bookmark() == first
    fake_d1.sql("CREATE TABLE t (a)")
    second = bookmark()
    assert second != first
    status, _, payload = call(fake_d1, f"time_travel/restore?bookmark={first}", data=b"")
    assert status == 200 and payload["result"]["bookmark"] == first
    assert [r["kind"] for r in fake_d1.requests] == ["bookmark"] * 3 + ["restore"]


def test_requests_are_recorded(fake_d1):
    before = time.monotonic()
    call(fake_d1, body={"sql": "SELECT ?", "params": [7]})
    call(fake_d1, "raw", {"sql": "SELECT nope"})
    call(fake_d1, body={"sql": "SELECT 1"}, token="bad")
    assert fake_d1.request_count == 3
    first, second, third = fake_d1.requests
    assert (first["method"], first["kind"], first["body"], first["status"]) == (
        "POST", "query", {"sql": "SELECT ?", "params": [7]}, 200)
    assert first["path"].endswith("/query") and before <= first["time"] <= second["time"]
    assert (second["kind"], second["status"], third["status"]) == ("raw", 400, 403)
    fake_d1.reset_requests()
    assert fake_d1.request_count == 0


def test_direct_helpers_and_env(fake_d1):
    fake_d1.sql("CREATE TABLE schema_migrations (version TEXT PRIMARY KEY, name TEXT);"
                "INSERT INTO schema_migrations VALUES ('0002', 'b'), ('0001', 'a');"
                "CREATE TABLE d1_migrations (id INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT);"
                "INSERT INTO d1_migrations (name) VALUES ('0001_a.sql')")
    assert fake_d1.tracking() == [("0001", "a"), ("0002", "b")]
    assert fake_d1.wrangler_rows() == ["0001_a.sql"]
    dump = fake_d1.dump()
    assert sorted(dump["data"]) == ["d1_migrations", "schema_migrations"]
    assert not any(row[1].startswith(("_cf_", "sqlite_")) for row in dump["schema"])
    with pytest.raises(D1ApiError) as caught:
        fake_d1.sql("SELECT * FROM _cf_KV")
    assert caught.value.status == 400
    fake_d1.wipe()
    assert fake_d1.tables() == [] and fake_d1.tracking() == [] and fake_d1.wrangler_rows() == []
    assert remote_env(fake_d1) == {
        "CLOUDFLARE_ACCOUNT_ID": fake_d1.account, "D1_DATABASE_ID": fake_d1.database,
        "CLOUDFLARE_API_TOKEN": "test-token", "CLOUDFLARE_API_BASE_URL": fake_d1.api_base}
