"""Shared fixtures for the apply_migrations.py tests.

Every test works on real SQLite files in a temporary folder.

Set APPLY_MIGRATIONS_UNDER_TEST=/path/to/apply_migrations.py to run the whole
suite (in-process and subprocess tests alike) against another copy of the
tool, e.g. a deliberately broken one.
"""
from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Callable, Optional, Sequence, Tuple, Union

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
TOOL_PATH = Path(
    os.environ.get("APPLY_MIGRATIONS_UNDER_TEST", str(REPO_ROOT / "apply_migrations.py"))
).resolve()
BUNDLED_MIGRATIONS = REPO_ROOT / "migrations"

if str(TOOL_PATH.parent) not in sys.path:
    sys.path.insert(0, str(TOOL_PATH.parent))

import apply_migrations  # noqa: E402  (needs the sys.path entry above)

CliResult = Tuple[int, str, str]

# Removed from the environment of every run: the production database path
# (tests set it themselves) and GitHub Actions' variables, which make the
# tool add annotations to stdout and append to the step summary file.
ENV_CLEARED = ("D1_DATABASE_PATH", "GITHUB_ACTIONS", "GITHUB_STEP_SUMMARY", "GITHUB_WORKSPACE")


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """An empty project folder holding an empty migrations/ folder."""
    root = tmp_path / "project"
    (root / "migrations").mkdir(parents=True)
    return root


@pytest.fixture
def write_migration(project: Path) -> Callable[..., Path]:
    """write_migration(filename, content, folder="migrations") -> Path.

    content may be bytes (written as is) or text (UTF-8, line endings kept
    exactly as given: no newline translation).  folder is relative to the
    project and is created when missing ("migrations/down" for down scripts).
    """

    def write(filename: str, content: Union[str, bytes], folder: str = "migrations") -> Path:
        directory = project / folder
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / filename
        data = content if isinstance(content, bytes) else content.encode("utf-8")
        path.write_bytes(data)
        return path

    return write


@pytest.fixture
def run_cli(project: Path, monkeypatch: pytest.MonkeyPatch,
            capsys: pytest.CaptureFixture) -> Callable[..., CliResult]:
    """run_cli(argv, cwd=project) -> (exit code, stdout, stderr), in-process.

    The ENV_CLEARED variables are removed for the test; a test that needs
    D1_DATABASE_PATH sets it with monkeypatch after requesting this fixture.
    """
    for name in ENV_CLEARED:
        monkeypatch.delenv(name, raising=False)

    def run(argv: Sequence[str], cwd: Optional[Union[str, Path]] = None) -> CliResult:
        monkeypatch.chdir(str(cwd if cwd is not None else project))
        capsys.readouterr()  # drop anything printed before
        code = apply_migrations.main([str(a) for a in argv])
        out, err = capsys.readouterr()
        return code, out, err

    return run


@pytest.fixture
def run_subprocess(project: Path) -> Callable[..., CliResult]:
    """run_subprocess(argv, cwd=project, env=None) -> (exit code, stdout, stderr).

    Runs ``python apply_migrations.py *argv`` as a real process.  env, when
    given, is added to a copy of os.environ; a value of None removes that
    variable.  The ENV_CLEARED variables are removed unless env sets them.
    """

    def run(argv: Sequence[str], cwd: Optional[Union[str, Path]] = None,
            env: Optional[dict] = None) -> CliResult:
        environ = dict(os.environ)
        for name in ENV_CLEARED:
            environ.pop(name, None)
        environ["PYTHONIOENCODING"] = "utf-8"
        for key, value in (env or {}).items():
            if value is None:
                environ.pop(key, None)
            else:
                environ[key] = value
        proc = subprocess.run(
            [sys.executable, str(TOOL_PATH)] + [str(a) for a in argv],
            cwd=str(cwd if cwd is not None else project),
            env=environ,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            timeout=60,
        )
        return (proc.returncode, proc.stdout.decode("utf-8", "replace"),
                proc.stderr.decode("utf-8", "replace"))

    return run


@pytest.fixture
def foreign_keys_on_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    """SQLite built with SQLITE_DEFAULT_FOREIGN_KEYS=1: every new connection
    enforces foreign keys, as the tool's connection then does."""
    real_connect = sqlite3.connect

    def connect(*args, **kwargs):
        conn = real_connect(*args, **kwargs)
        conn.execute("PRAGMA foreign_keys = ON")
        return conn

    monkeypatch.setattr(sqlite3, "connect", connect)


@pytest.fixture
def remote_fake(run_cli, monkeypatch: pytest.MonkeyPatch):
    """A running fake D1 (tests/fake_d1.py), its variables set for --d1-remote."""
    from fake_d1 import FakeD1, remote_env
    with FakeD1() as server:
        for name, value in remote_env(server).items():
            monkeypatch.setenv(name, value)
        yield server


@pytest.fixture(scope="session")
def wrangler_bin() -> str:
    """The wrangler executable: $WRANGLER, else the copy `.ci/run` installs in
    .cache/wrangler; the test is skipped when neither (or Node) is there."""
    candidate = os.environ.get("WRANGLER") or str(
        REPO_ROOT / ".cache" / "wrangler" / "node_modules" / ".bin" / "wrangler")
    import shutil
    if not (os.path.isfile(candidate) and os.access(candidate, os.X_OK)
            and shutil.which("node")):
        pytest.skip("wrangler not installed: run `npm install --prefix .cache/wrangler"
                    " wrangler@4.86.0` (needs Node 20+) to run the D1 tests")
    return candidate
