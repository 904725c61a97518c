"""The shape the tool promises its maintainers and its Python callers: the
section map is the file's real order, the engine needs nothing of a target
but the Target interface, the wrangler config is read once, errors name the
settings as the caller knows them, and a D1 rule is one table entry that
both `check` and --d1-remote obey."""
from __future__ import annotations

import re
import sqlite3
from contextlib import closing
from typing import List

import pytest

from conftest import TOOL_PATH, apply_migrations
from fake_d1 import FakeD1, remote_env


# --------------------------------------------------------------------------
# The module's map


def test_the_section_map_is_the_files_order():
    source = TOOL_PATH.read_text(encoding="utf-8")
    doc = apply_migrations.__doc__
    mapped = re.findall(r"^ {1,2}(\d+)\. (\S[^.]*?) ?\.{2,}", doc, re.MULTILINE)
    mapped += [(n, t) for n, t in re.findall(r"^ {1,2}(\d+)\. (\S.*?) {2,}\S", doc, re.MULTILINE)
               if (n, t) not in mapped]
    mapped.sort(key=lambda item: int(item[0]))
    banners = re.findall(r"^# (\d+)\. (.+?)(?::|$)", source, re.MULTILINE)
    assert [int(n) for n, _ in banners] == list(range(1, len(banners) + 1))
    assert [int(n) for n, _ in mapped] == list(range(1, len(banners) + 1))
    for (number, mapped_title), (_, banner_title) in zip(mapped, banners):
        words = mapped_title.split()[0].lower().rstrip("'s")
        assert words in banner_title.lower(), (number, mapped_title, banner_title)


def test_the_public_api_is_all_there():
    for name in apply_migrations.__all__:
        assert hasattr(apply_migrations, name), name
    assert not [n for n in apply_migrations.__all__ if n.startswith("_")]


def test_no_class_or_function_is_longer_than_300_lines():
    import ast
    tree = ast.parse(TOOL_PATH.read_text(encoding="utf-8"))
    long = [(node.name, node.end_lineno - node.lineno + 1) for node in ast.walk(tree)
            if isinstance(node, (ast.ClassDef, ast.FunctionDef))
            and node.end_lineno - node.lineno + 1 > 300]
    assert long == []
    assert "type: ignore[override]" not in TOOL_PATH.read_text(encoding="utf-8")


# --------------------------------------------------------------------------
# The engine runs on the Target interface alone


class Recording(apply_migrations.Target):
    """A target that passes each interface call to a local one and
    remembers it: the engine must need nothing else."""

    def __init__(self, path: str):
        self.inner = apply_migrations.SQLiteTarget(path)
        self.name = self.inner.name
        self.calls: List[str] = []

    def _call(self, name, *args):
        self.calls.append(name)
        return getattr(self.inner, name)(*args)

    def open(self, mode):
        return self._call("open", mode)

    def query(self, sql, params=()):
        return self._call("query", sql, params)

    def ensure(self, entries):
        return self._call("ensure", entries)

    def write(self, entries):
        return self._call("write", entries)

    def run(self, steps, first=(), last=None):
        return self._call("run", steps, first, last)

    def run_all(self, ensure, plan, commit, on_ran):
        return self._call("run_all", ensure, plan, commit, on_ran)

    def request_stop(self, signum):
        return self._call("request_stop", signum)

    def close(self):
        return self._call("close")


def test_the_engine_needs_only_the_target_interface(project, write_migration):
    write_migration("0001_a.sql", "CREATE TABLE a (x);\n")
    write_migration("0002_b.sql", "CREATE TABLE b (x);\n")
    write_migration("0002_b.sql", "DROP TABLE b;\n", folder="migrations/down")
    db = str(project / "x.db")
    target = Recording(db)
    with apply_migrations.Migrator(target, project / "migrations") as migrator:
        assert [s.state for s in migrator.status()] == ["pending", "pending"]
        report = migrator.apply()
        assert [o.result for o in report.outcomes] == ["applied", "applied"]
        report = migrator.rollback()
        assert [(o.name, o.result, o.path is not None) for o in report.outcomes] == [
            ("0002_b", "rolled back", True)]
        report = migrator.rollback()  # computed: 0001 has no down script
        assert [(o.name, o.result) for o in report.outcomes] == [("0001_a", "rolled back")]
        assert report.computed is not None
        migrator.apply(single_transaction=True)
        migrator.apply(dry_run=True)
    assert {"open", "query", "ensure", "run", "run_all", "close"} <= set(target.calls)
    with closing(sqlite3.connect(db)) as conn:
        assert [r[0] for r in conn.execute("SELECT name FROM schema_migrations ORDER BY 1")] \
            == ["0001_a", "0002_b"]


def test_a_target_must_implement_the_whole_interface():
    class Half(apply_migrations.Target):
        name = "half"

        def open(self, mode):
            return True

    with pytest.raises(NotImplementedError):
        apply_migrations.Migrator(Half(), "migrations").status()


# --------------------------------------------------------------------------
# Options: resolved once; errors name settings as the caller knows them


def test_the_wrangler_config_is_read_once_per_command(project, write_migration, run_cli,
                                                      monkeypatch):
    config = project / "wrangler.toml"
    config.write_text('name = "x"\n\n[[d1_databases]]\nbinding = "DB"\n'
                      'database_name = "db"\ndatabase_id = "abc"\n')
    write_migration("0001_a.sql", "CREATE TABLE a (x);\n")
    reads = []
    real = apply_migrations.read_wrangler_config
    monkeypatch.setattr(apply_migrations, "read_wrangler_config",
                        lambda path: reads.append(path) or real(path))
    for command in (["init"], ["status"], ["apply"], ["apply", "--dry-run"], ["rollback"],
                    ["check"]):
        reads.clear()
        code, out, err = run_cli([*command, "--wrangler-config", str(config)])
        assert code == 0, (command, err)
        assert len(reads) == 1, (command, reads)


def test_errors_name_settings_as_python_or_as_options(project, write_migration, run_cli):
    write_migration("0001_a.sql", "CREATE TABLE a (x);\n")
    db = project / "locked.db"
    with closing(sqlite3.connect(str(db), isolation_level=None)) as holder:
        holder.execute("CREATE TABLE t (x)")
        holder.execute("BEGIN IMMEDIATE")
        with apply_migrations.Migrator(db, project / "migrations", lock_timeout=0.2) as migrator:
            with pytest.raises(apply_migrations.DatabaseWriteError) as locked:
                migrator.apply()
        code, out, err = run_cli(["apply", "--db-path", str(db), "--lock-timeout", "0.2"])
        holder.execute("ROLLBACK")
    error = locked.value
    assert error.options == ["lock_timeout"]
    assert "(lock_timeout)" in str(error) and "--lock-timeout" not in str(error)
    assert "(--lock-timeout)" in error.message(apply_migrations.cli_spelling)
    assert code == 1 and "(--lock-timeout)" in err and "(lock_timeout)" not in err
    assert error.report is not None and error.report.error is error

    # A core refusal: out of order, with the option to get past it.
    write_migration("0003_c.sql", "CREATE TABLE c (x);\n")
    with apply_migrations.Migrator(project / "y.db", project / "migrations") as migrator:
        migrator.apply()
    write_migration("0002_b.sql", "CREATE TABLE b (x);\n")
    with apply_migrations.Migrator(project / "y.db", project / "migrations") as migrator:
        with pytest.raises(apply_migrations.MigrationFileError) as early:
            migrator.apply()
        assert "allow_out_of_order" in str(early.value)
        report = migrator.apply(allow_out_of_order=True)
    assert [o.name for o in report.applied] == ["0002_b"]


def test_library_errors_are_documented_classes_with_exit_codes(project):
    with pytest.raises(apply_migrations.ConfigurationError) as missing:
        apply_migrations.Migrator(project / "x.db", project / "nowhere").status()
    assert missing.value.exit_code == 2
    assert "migrations_dir" in str(missing.value)
    with pytest.raises(apply_migrations.ConfigurationError) as nan:
        apply_migrations.Migrator(project / "x.db", lock_timeout=float("nan"))
    assert "lock_timeout" in str(nan.value)
    assert not (project / "x.db").exists()


# --------------------------------------------------------------------------
# A D1 rule is one table entry, obeyed by check and by --d1-remote


def _drop_table(statement, words, where):
    return "DROP TABLE is not allowed here (a test rule)" \
        if re.match(r"(?i)DROP\s+TABLE", words) else None


@pytest.mark.parametrize("blocks_remote", [True, False])
def test_a_new_d1_rule_is_one_entry(project, write_migration, run_cli, monkeypatch,
                                    blocks_remote):
    rule = apply_migrations.D1Rule("no-drop-table", "error", blocks_remote,
                                   frozenset(("DROP",)), _drop_table)
    monkeypatch.setattr(apply_migrations, "D1_RULES", apply_migrations.D1_RULES + (rule,))
    write_migration("0001_a.sql", "CREATE TABLE a (x);\n")
    write_migration("0002_b.sql", "CREATE TABLE b (x);\nDROP TABLE a;\n")

    code, out, err = run_cli(["check"])
    assert code == 1
    assert "0002_b.sql:2: error: DROP TABLE is not allowed here (a test rule)" \
           " [no-drop-table]" in out

    with FakeD1() as fake:
        for name, value in remote_env(fake).items():
            monkeypatch.setenv(name, value)
        code, out, err = run_cli(["apply", "--d1-remote"])
        tracked = [name for _, name in fake.tracking()]
        sent = [r for r in fake.requests if r["kind"] == "query"]
    if blocks_remote:
        assert code == 1
        assert "D1 would reject it: DROP TABLE is not allowed here (a test rule)" \
               " (0002_b.sql, statement 2, line 2); nothing was applied" in err
        assert tracked == [] and sent == []
    else:
        assert code == 0, err
        assert tracked == ["0001_a", "0002_b"]


def test_every_rule_has_a_code_severity_and_a_check():
    codes = [rule.code for rule in apply_migrations.D1_RULES]
    assert len(codes) == len(set(codes))
    for rule in apply_migrations.D1_RULES:
        assert rule.severity in ("error", "warning")
        assert callable(rule.match)
        assert rule.keywords is None or all(k.isupper() for k in rule.keywords)
