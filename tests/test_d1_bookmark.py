"""D1's Time Travel as the remote backup (issue 16): before a remote apply or
rollback changes anything, the tool takes D1's bookmark, prints it, puts it
in the JSON, and on a failure says how to go back to it; a bookmark that D1
refuses stops the run before anything is sent, unless --no-bookmark.
Against the in-process fake of D1's API (tests/fake_d1.py)."""
from __future__ import annotations

import json

import pytest

from fake_d1 import FakeD1, respond

M1 = "CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT);\n"
M2 = "INSERT INTO items (name) VALUES ('two');\n"
M3_BAD = "INSERT INTO nowhere VALUES (1);\n"


@pytest.fixture
def fake(remote_fake):
    return remote_fake


def bookmark_requests(fake: FakeD1):
    return [r for r in fake.requests if r["kind"] == "bookmark"]


def writes(fake: FakeD1):
    return [r for r in fake.requests if r["kind"] == "query"]


def test_apply_takes_a_bookmark_first_and_reports_it(fake, run_cli, write_migration):
    write_migration("0001_items.sql", M1)
    write_migration("0002_two.sql", M2)
    before = fake.bookmark
    code, out, err = run_cli(["apply", "--d1-remote"])
    assert code == 0, err
    assert out.splitlines()[0] == f"D1 Time Travel bookmark before this run: {before}"
    asked = bookmark_requests(fake)
    assert len(asked) == 1
    assert fake.requests.index(asked[0]) < fake.requests.index(writes(fake)[0])
    assert fake.bookmark != before  # the run changed the database after it

    write_migration("0003_three.sql", "INSERT INTO items (name) VALUES ('three');\n")
    before = fake.bookmark
    code, out, err = run_cli(["apply", "--d1-remote", "--json"])
    assert code == 0, err
    payload = json.loads(out)
    assert payload["bookmark"] == before
    assert f"--bookmark={before}" in payload["restore"]
    assert "rewinds the whole database" in payload["restore"]


@pytest.mark.parametrize("argv", [["apply", "--d1-remote"], ["apply", "--d1-remote", "--dry-run"],
                                  ["status", "--d1-remote"]],
                         ids=["nothing-pending", "dry-run", "status"])
def test_no_bookmark_where_nothing_changes(fake, run_cli, write_migration, argv):
    write_migration("0001_items.sql", M1)
    if "--dry-run" not in argv and argv[0] == "apply":
        assert run_cli(["apply", "--d1-remote", "--no-bookmark"])[0] == 0
    fake.reset_requests()
    code, out, err = run_cli(argv)
    assert code == 0, err
    assert bookmark_requests(fake) == []
    assert "bookmark" not in out


def test_a_failure_says_how_to_go_back(fake, run_cli, write_migration):
    write_migration("0001_items.sql", M1)
    write_migration("0002_two.sql", M2)
    write_migration("0003_bad.sql", M3_BAD)
    before = fake.bookmark
    code, out, err = run_cli(["apply", "--d1-remote"])
    assert code == 1
    assert (f"Before this run D1 was at Time Travel bookmark {before}; to go back to it:"
            f" wrangler d1 time-travel restore <database name> --bookmark={before}") in out
    assert [name for _, name in fake.tracking()] == ["0001_items", "0002_two"]
    before = fake.bookmark  # the history's row of the failure moved it on
    code, out, err = run_cli(["apply", "--d1-remote", "--json"])
    assert code == 1
    assert json.loads(out)["bookmark"] == before


def test_the_restore_hint_names_the_database_of_the_wrangler_config(fake, run_cli, project,
                                                                    write_migration,
                                                                    monkeypatch):
    (project / "wrangler.toml").write_text(
        f'[[d1_databases]]\nbinding = "DB"\ndatabase_name = "prod-db"\n'
        f'database_id = "{fake.database}"\n')
    monkeypatch.delenv("D1_DATABASE_ID")
    write_migration("0001_items.sql", M1)
    code, out, err = run_cli(["apply", "--d1-remote", "--wrangler-config", "wrangler.toml",
                              "--json"])
    assert code == 0, err
    assert "wrangler d1 time-travel restore DB --bookmark=" in json.loads(out)["restore"]


@pytest.mark.parametrize("refusal", [
    respond(500, match="bookmark"),
    respond(404, match="bookmark"),
    respond(200, body={"success": True, "result": {}}, match="bookmark"),
], ids=["500", "404", "no-bookmark-in-the-answer"])
def test_a_refused_bookmark_stops_before_anything_is_sent(fake, run_cli, write_migration,
                                                          refusal, monkeypatch):
    import apply_migrations
    original = apply_migrations.D1Client.__init__

    def fast(self, *args, **kwargs):
        original(self, *args, **kwargs)
        self.backoff = 0.01

    monkeypatch.setattr(apply_migrations.D1Client, "__init__", fast)
    write_migration("0001_items.sql", M1)
    for _ in range(10):  # every retry gets the same answer
        fake.push(refusal)
    code, out, err = run_cli(["apply", "--d1-remote"])
    assert code == 1
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: D1 did not give a Time Travel"
                                                   " bookmark (")
    assert lines[0].endswith("no bookmark was taken and nothing was changed. Retry, or pass"
                             " --no-bookmark to go on without one")
    assert writes(fake) == [] and fake.tracking() == []

    fake.script.clear()
    fake.reset_requests()
    code, out, err = run_cli(["apply", "--d1-remote", "--no-bookmark"])
    assert code == 0, err
    assert bookmark_requests(fake) == []
    assert [name for _, name in fake.tracking()] == ["0001_items"]


def test_rollback_takes_a_bookmark_first(fake, run_cli, write_migration):
    write_migration("0001_items.sql", M1)
    write_migration("0001_items.sql", "DROP TABLE items;\n", folder="migrations/down")
    assert run_cli(["apply", "--d1-remote", "--no-bookmark"])[0] == 0
    before = fake.bookmark
    fake.reset_requests()
    code, out, err = run_cli(["rollback", "--d1-remote"])
    assert code == 0, err
    assert f"D1 Time Travel bookmark before this run: {before}" in out
    asked = bookmark_requests(fake)
    assert len(asked) == 1 and fake.requests.index(asked[0]) < fake.requests.index(
        writes(fake)[0])
    assert fake.tracking() == []
