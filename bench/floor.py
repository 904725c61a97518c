#!/usr/bin/env python3
"""The floor for bench/bench.py: the least a Python program can do to get
the same result as apply_migrations.py, with Python's sqlite3 and nothing
else (no splitting, no checks, no argparse, no output per migration).

    python bench/floor.py apply  DB DIR [--single] [--nosync]
    python bench/floor.py status DB DIR

apply: creates the same schema_migrations table as the tool (in its own
commit, as the tool does), then per file ``BEGIN IMMEDIATE; <file>`` through
one executescript call, the tracking row through a parameterised INSERT and
``COMMIT``, so the transaction spans the file and its row.  (executescript
commits an open transaction before it starts, so the BEGIN is inside the
script.)  --single: one executescript of ``BEGIN IMMEDIATE;``, every file
each followed by its tracking row as a literal INSERT, and ``COMMIT;``.
--nosync: PRAGMA synchronous=OFF, a diagnostic only (how much is fsync).

status: the tracking rows, a SHA256 of every file, one line per file: the
work any status or no-op apply has to do.

SQLite defaults otherwise, as in the tool: rollback journal, synchronous FULL.
"""
import hashlib
import os
import sqlite3
import sys
import time

# Byte for byte the tool's table (sqlite_master keeps the text from the name on).
CREATE_TRACKING = """\
CREATE TABLE IF NOT EXISTS "schema_migrations" (
    version     TEXT PRIMARY KEY NOT NULL,
    name        TEXT NOT NULL,
    checksum    TEXT NOT NULL,
    applied_at  TEXT NOT NULL,
    duration_ms REAL NOT NULL
)"""
INSERT_ROW = (
    'INSERT INTO "schema_migrations" (version, name, checksum, applied_at, duration_ms)'
    " VALUES (?, ?, ?, ?, ?)"
)


def migration_files(folder):
    # Generated names are zero-padded, so name order is number order.
    return sorted(n for n in os.listdir(folder) if n.endswith(".sql"))


def read(folder, name):
    with open(os.path.join(folder, name), "rb") as handle:
        return handle.read()


def now():
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def apply(db, folder, single=False, nosync=False):
    conn = sqlite3.connect(db, isolation_level=None)
    if nosync:
        conn.execute("PRAGMA synchronous=OFF")
    conn.execute(CREATE_TRACKING)
    names = migration_files(folder)
    if single:
        parts = ["BEGIN IMMEDIATE;"]
        for name in names:
            data = read(folder, name)
            parts.append(data.decode("utf-8"))
            parts.append(
                "\n;INSERT INTO \"schema_migrations\" (version, name, checksum, applied_at,"
                " duration_ms) VALUES ('%s', '%s', '%s', '%s', 0);"
                % (name.split("_", 1)[0], name[:-4].replace("'", "''"),
                   hashlib.sha256(data).hexdigest(), now())
            )
        parts.append("COMMIT;")
        conn.executescript("\n".join(parts))
    else:
        for name in names:
            data = read(folder, name)
            started = time.perf_counter()
            conn.executescript("BEGIN IMMEDIATE;\n" + data.decode("utf-8") + "\n;")
            duration_ms = (time.perf_counter() - started) * 1000.0
            conn.execute(INSERT_ROW, (name.split("_", 1)[0], name[:-4],
                                      hashlib.sha256(data).hexdigest(), now(),
                                      round(duration_ms, 3)))
            conn.execute("COMMIT")
    conn.close()
    return len(names)


def status(db, folder):
    conn = sqlite3.connect(db, isolation_level=None)
    applied = {row[0]: row[2] for row in conn.execute(
        'SELECT version, name, checksum, applied_at, duration_ms FROM "schema_migrations"')}
    conn.close()
    lines = []
    for name in migration_files(folder):
        version = name.split("_", 1)[0]
        checksum = hashlib.sha256(read(folder, name)).hexdigest()
        recorded = applied.get(version)
        state = "pending" if recorded is None else (
            "applied" if recorded == checksum else "modified")
        lines.append("%s %s" % (state, name))
    sys.stdout.write("\n".join(lines) + "\n")


def main(argv):
    if len(argv) < 3 or argv[0] not in ("apply", "status"):
        sys.stderr.write(__doc__)
        return 2
    command, db, folder = argv[:3]
    flags = set(argv[3:])
    if command == "status":
        status(db, folder)
    else:
        apply(db, folder, single="--single" in flags, nosync="--nosync" in flags)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
