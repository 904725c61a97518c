"""The documentation is true: every command shown in README.md and
MIGRATION_SYSTEM.md runs, as written, and gives the exit code it promises.

Each document runs in its own scratch copy of the repository, its ```bash
blocks in order (state carries over, as for a reader following along), and
the `run:` lines of its ```yaml blocks (GitHub Actions steps).  Paths under
/path/to/ are placed inside the scratch folder.  A trailing `# exits N`
comment sets the expected exit code; otherwise it is 0.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import List, Tuple

import pytest

import apply_migrations
from d1_api import start_d1_api, stop_d1_api

REPO = Path(__file__).resolve().parent.parent
DOCS = ["README.md", "MIGRATION_SYSTEM.md"]
FENCE = re.compile(r"^```(\w*)[ \t]*\n(.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)
EXPECTED_EXIT = re.compile(r"#\s*exits?\s+(\d+)")
README_TEST_COMMAND = "python -m pip install -r requirements-dev.txt && python -m pytest"

# Commands that are not run as written, and why.
NOT_RUN = {
    # Running the test suite from inside the test suite would recurse;
    # test_ci_runs_the_readme_test_command checks .ci/run runs exactly this.
    README_TEST_COMMAND: None,
    "make test": None,
    # The full benchmark takes minutes; its quick mode runs the same code.
    "python bench/bench.py": "python bench/bench.py --quick",
    "make bench": "make bench BENCH_ARGS=--quick",
}


def doc_commands(doc: str) -> List[Tuple[int, str, int]]:
    """(line in the document, command, expected exit code) for every command."""
    text = (REPO / doc).read_text(encoding="utf-8")
    commands = []
    for block in FENCE.finditer(text):
        language, body = block.group(1), block.group(2)
        first_line = text.count("\n", 0, block.start(2)) + 1
        if language == "bash":
            for offset, line in enumerate(body.splitlines()):
                stripped = line.strip()
                if not stripped or stripped.startswith("#"):
                    continue
                expected = EXPECTED_EXIT.search(stripped)
                command = re.sub(r"\s+#.*$", "", stripped) if " #" in stripped else stripped
                commands.append((first_line + offset, command,
                                 int(expected.group(1)) if expected else 0))
        elif language == "yaml":
            for offset, line in enumerate(body.splitlines()):
                match = re.match(r"\s*(?:-\s+)?run:\s+(.*\S)\s*$", line)
                if match and match.group(1) != "|":
                    commands.append((first_line + offset, match.group(1), 0))
    return commands


def make_sandbox(root: Path) -> Tuple[Path, dict]:
    """A scratch copy of the repository and the environment to run in."""
    work = root / "repo"
    work.mkdir()
    for name in ("apply_migrations.py", "Makefile", "requirements.txt",
                 "requirements-dev.txt"):
        shutil.copy2(REPO / name, work / name)
    for folder in ("migrations", "bench", "examples"):
        if (REPO / folder).is_dir():
            shutil.copytree(REPO / folder, work / folder,
                            ignore=shutil.ignore_patterns("results", "__pycache__"))
    (work / "path" / "to").mkdir(parents=True)
    shutil.copytree(REPO / "migrations", work / "path" / "to" / "migrations")
    # `python` and `python3` in the documents mean the interpreter under test.
    shims = root / "bin"
    shims.mkdir()
    for name in ("python", "python3"):
        (shims / name).symlink_to(sys.executable)
    (root / "runner_temp").mkdir()
    env = {key: value for key, value in os.environ.items()
           if not key.startswith(("GITHUB_", "D1_", "NO_COLOR", "CLOUDFLARE_"))}
    env.update(PATH=f"{shims}{os.pathsep}{env.get('PATH', '')}",
               RUNNER_TEMP=str(root / "runner_temp"), PYTHONDONTWRITEBYTECODE="1")
    return work, env


def start_local_d1(request: pytest.FixtureRequest, commands, root: Path, env: dict):
    """For documents with --d1-remote commands: the local D1 engine behind
    the HTTP API, accepting the token the document exports.  None (and the
    remote commands are skipped) when wrangler is not installed."""
    if not any("--d1-remote" in command for _, command, _ in commands):
        return None
    try:
        wrangler = request.getfixturevalue("wrangler_bin")
    except pytest.skip.Exception:
        return None
    token = next(re.match(r"export CLOUDFLARE_API_TOKEN=(\S+)", c).group(1)
                 for _, c, _ in commands if c.startswith("export CLOUDFLARE_API_TOKEN="))
    server, base = start_d1_api(wrangler, root / "d1", token=token)
    request.addfinalizer(lambda: stop_d1_api(server))
    env["CLOUDFLARE_API_BASE_URL"] = base + "/client/v4"
    return server


@pytest.mark.parametrize("doc", DOCS)
def test_every_documented_command_runs(doc: str, tmp_path: Path,
                                       request: pytest.FixtureRequest) -> None:
    work, env = make_sandbox(tmp_path)
    commands = doc_commands(doc)
    assert commands, f"{doc} shows no commands"
    remote = start_local_d1(request, commands, tmp_path, env)
    ran = 0
    for line, command, expected in commands:
        if "--d1-remote" in command and remote is None:
            continue  # wrangler is not installed: the D1 tests say how to get it
        if command in NOT_RUN:
            if NOT_RUN[command] is None:
                continue
            command = NOT_RUN[command]
        command = command.replace("/path/to/", f"{work}/path/to/")
        # `export` lines set the environment of the commands after them.
        export = re.match(r"export\s+(\w+)=(.*)$", command)
        if export:
            env[export.group(1)] = export.group(2).strip("\"'")
            continue
        result = subprocess.run(["bash", "-c", command], cwd=work, env=env,
                                capture_output=True, text=True, timeout=120)
        assert result.returncode == expected, (
            f"{doc}:{line}: `{command}` exited {result.returncode}, expected {expected}\n"
            f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}")
        assert "Traceback" not in result.stderr, f"{doc}:{line}: {result.stderr}"
        ran += 1
    assert ran >= 5


def test_the_python_api_example_runs(tmp_path: Path) -> None:
    """The manual's Python API example: its ```python blocks, each a file
    named by its first line, run with pytest beside the tool and the
    bundled migrations."""
    text = (REPO / "MIGRATION_SYSTEM.md").read_text(encoding="utf-8")
    section = text.split("## Python API", 1)[1].split("\n## ", 1)[0]
    blocks = [body for language, body in FENCE.findall(section) if language == "python"]
    assert len(blocks) >= 2
    work = tmp_path / "project"
    shutil.copytree(REPO / "migrations", work / "migrations")
    shutil.copy2(REPO / "apply_migrations.py", work / "apply_migrations.py")
    for body in blocks:
        name = re.match(r"# (\S+\.py)\n", body)
        assert name, body[:40]
        (work / name.group(1)).write_text(body, encoding="utf-8")
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"],
                            cwd=work, capture_output=True, text=True, timeout=120,
                            env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"})
    assert result.returncode == 0, result.stdout + result.stderr
    assert re.search(r"\b3 passed\b", result.stdout), result.stdout


def test_readme_setup_is_two_commands() -> None:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    setup = text.split("## Set-up", 1)[1]
    block = FENCE.search(setup)
    assert block and block.group(1) == "bash"
    assert block.group(2).strip().splitlines() == [
        "python apply_migrations.py apply --env dev",
        README_TEST_COMMAND,
    ]


def test_ci_runs_the_readme_test_command() -> None:
    script = (REPO / ".ci" / "run").read_text(encoding="utf-8")
    install, test = README_TEST_COMMAND.split(" && ")
    assert install in script.splitlines()
    assert test in script.splitlines()


def test_manual_shows_the_real_tracking_table() -> None:
    manual = (REPO / "MIGRATION_SYSTEM.md").read_text(encoding="utf-8")
    ddl = apply_migrations.SQL_CREATE_TRACKING.format(
        table=apply_migrations.quote_identifier(apply_migrations.TRACKING_TABLE))
    assert ddl in manual


def test_manual_workflow_steps_are_the_real_ones() -> None:
    workflow = (REPO / ".github" / "workflows" / "ci.yml").read_text(encoding="utf-8")
    manual_runs = [c for _, c, _ in doc_commands("MIGRATION_SYSTEM.md")
                   if "$RUNNER_TEMP/ci.db" in c]
    assert manual_runs
    for command in manual_runs:
        assert f"run: {command}" in workflow


def test_guarantee_tests_exist() -> None:
    """Every test the Guarantees section names exists."""
    manual = (REPO / "MIGRATION_SYSTEM.md").read_text(encoding="utf-8")
    section = manual.split("## Guarantees", 1)[1].split("\n## ", 1)[0]
    named = re.findall(r"`(test_\w+\.py)(?:::(\w+))?`", section)
    assert named
    for module, function in named:
        source = (REPO / "tests" / module).read_text(encoding="utf-8")
        if function:
            assert re.search(rf"def {function}\b", source), f"{module}::{function} is missing"
