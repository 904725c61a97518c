"""Smoke test of the benchmark's correctness (not of speed): the generated
migrations apply with the tool and with both floors to the same schema and
the same data, and the generator is deterministic."""
import importlib.util
import os
import sqlite3
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOOL = os.path.join(REPO, "apply_migrations.py")
FLOOR = os.path.join(REPO, "bench", "floor.py")


def _load_bench():
    spec = importlib.util.spec_from_file_location("bench_bench", os.path.join(REPO, "bench", "bench.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _dump(db):
    """sqlite_master, the tracking rows less their times, and every table's rows."""
    conn = sqlite3.connect(db)
    try:
        schema = conn.execute(
            "SELECT type, name, tbl_name, sql FROM sqlite_master"
            " WHERE name NOT IN ('schema_migrations_state', 'schema_migrations_history')"
            " ORDER BY type, name").fetchall()
        tracking = conn.execute(
            'SELECT version, name, checksum FROM "schema_migrations" ORDER BY version').fetchall()
        data = {}
        for (table,) in conn.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table'"
                " AND name NOT IN ('schema_migrations', 'schema_migrations_state',"
                " 'schema_migrations_history', 'sqlite_sequence') ORDER BY name"):
            data[table] = conn.execute('SELECT * FROM "%s" ORDER BY 1' % table).fetchall()
        return schema, tracking, data
    finally:
        conn.close()


def test_generated_migrations_apply_identically_with_tool_and_floor(tmp_path):
    bench = _load_bench()
    n = 50  # triggers at 10..50, views at 25 and 50
    folder = str(tmp_path / "migrations")
    meta = bench.generate(n, folder, seed=123)
    assert meta["files"] == n and meta["statements"] > n
    names = sorted(os.listdir(folder))
    assert len(names) == n and names[0].startswith("0001_") and names[-1].startswith("0050_")
    texts = {name: open(os.path.join(folder, name)).read() for name in names}
    assert "CREATE TRIGGER" in texts[names[9]] and "CREATE VIEW" in texts[names[24]]
    assert any("WITH " in t and "UPDATE " in t for t in texts.values())

    again = str(tmp_path / "again")
    bench.generate(n, again, seed=123)
    assert all(open(os.path.join(again, name)).read() == texts[name] for name in names)

    dbs = {}
    for label, cmd in (
            ("tool", [TOOL, "apply", "--migrations-dir", folder, "--db-path"]),
            ("tool_single", [TOOL, "apply", "--single-transaction", "--migrations-dir", folder,
                             "--db-path"]),
            ("floor", [FLOOR, "apply"]),
            ("floor_single", [FLOOR, "apply"])):
        db = str(tmp_path / (label + ".db"))
        if label.startswith("floor"):
            cmd = cmd + [db, folder] + (["--single"] if label.endswith("single") else [])
        else:
            cmd = cmd + [db]
        subprocess.run([sys.executable] + cmd, cwd=REPO, check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        dbs[label] = _dump(db)

    schema, tracking, data = dbs["tool"]
    assert len(tracking) == n
    assert sum(1 for row in schema if row[0] == "trigger") == n // 10
    assert sum(1 for row in schema if row[0] == "view") == n // 25
    assert data["audit_log"], "the triggers fired"
    for label, dumped in dbs.items():
        assert dumped[0] == schema, label + ": sqlite_master differs from the tool's"
        assert dumped[1] == tracking, label + ": tracking rows differ"
        assert dumped[2] == data, label + ": data differs"
