"""Long Hypothesis runs of the split_sql properties (pytest -m slow).

The same oracles as test_splitter.py (SQLite's sqlite3_complete() and
executescript), many more and larger examples, plus properties that only
pay off at scale.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import List, Tuple

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import apply_migrations
from apply_migrations import Statement, split_sql

from _splitter_support import (
    Script,
    assert_same_execution,
    check_split,
    check_text,
    scripts,
    soup_chunks,
    wide_chunks,
    SOUP_ALPHABET,
    SOUP_CHUNKS,
)

pytestmark = pytest.mark.slow


def fuzz(examples: int) -> settings:
    return settings(
        max_examples=examples,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


def spans(statements: List[Statement]) -> List[Tuple[int, int]]:
    return [(s.start, s.end) for s in statements]


@fuzz(3000)
@given(scripts(max_statements=10))
def test_generated_scripts_split_as_built(script: Script) -> None:
    statements = split_sql(script.text)
    assert spans(statements) == script.spans
    assert [s.keyword for s in statements] == script.keywords
    check_split(script.text, statements)


@fuzz(1500)
@given(scripts(executable=True, min_statements=1, max_statements=10))
def test_generated_scripts_execute_like_executescript(script: Script) -> None:
    statements = split_sql(script.text)
    assert spans(statements) == script.spans
    assert_same_execution(script.text, statements)


@fuzz(5000)
@given(st.text(alphabet=SOUP_ALPHABET, max_size=300))
def test_arbitrary_text_splits_like_sqlite_or_raises(text: str) -> None:
    check_text(text)


@fuzz(5000)
@given(st.lists(st.sampled_from(SOUP_CHUNKS), max_size=150).map("".join))
def test_long_token_soup_splits_like_sqlite_or_raises(text: str) -> None:
    check_text(text)


@fuzz(3000)
@given(wide_chunks)
def test_any_characters_split_like_sqlite_or_raise(text: str) -> None:
    check_text(text)


@fuzz(2000)
@given(st.lists(st.one_of(scripts(max_statements=3).map(lambda s: s.text), soup_chunks), max_size=4))
def test_scripts_mixed_with_soup(pieces: List[str]) -> None:
    check_text("".join(pieces))


@fuzz(1000)
@given(scripts(min_statements=1), scripts())
def test_concatenation_splits_each_part(first: Script, second: Script) -> None:
    # After a script whose statements all end in ';', SQLite is back in its
    # start state: the second script splits exactly as it does alone.
    if not first.terminated:
        first_text = first.text + "\n;"
        first_spans = first.spans[:-1] + [(first.spans[-1][0], len(first_text))]
    else:
        first_text, first_spans = first.text, first.spans
    text = first_text + second.text
    shift = len(first_text)
    statements = split_sql(text)
    assert spans(statements) == first_spans + [(a + shift, b + shift) for a, b in second.spans]
    check_split(text, statements)


@fuzz(200)
@given(scripts(executable=True, min_statements=1, max_statements=8))
def test_big_scripts_split_in_linear_time(script: Script) -> None:
    # ~300 KB to 1 MB made of one generated script repeated: the statements
    # repeat with it, and splitting stays fast.
    unit = script.text if script.terminated else script.text + "\n;"
    copies = max(1, 300_000 // len(unit))
    text = unit * copies
    started = time.perf_counter()
    statements = split_sql(text)
    elapsed = time.perf_counter() - started
    per_copy = len(statements) // copies
    assert per_copy * copies == len(statements)
    assert per_copy == len(script.spans)
    first = spans(statements[:per_copy])
    for index in range(copies):
        offset = index * len(unit)
        assert spans(statements[index * per_copy:(index + 1) * per_copy]) == [
            (a + offset, b + offset) for a, b in first
        ]
    assert elapsed < 2.0, (elapsed, len(text))


# In a child process, because a backtracking regular expression cannot be
# interrupted: prints the spans, or the SQLSplitError's reason.
_CHILD = """
import json, sys
sys.path.insert(0, sys.argv[1])
import apply_migrations as m
text = sys.stdin.buffer.read().decode("utf-8")
try:
    print(json.dumps([[s.start, s.end] for s in m.split_sql(text)]))
except m.SQLSplitError as e:
    print(json.dumps(e.reason))
"""

# A long run of blanks, comments and ';' (where the END search works
# hardest), then a token that does not end the trigger.
_BODY_RUN = st.builds(
    lambda unit, count, follow: unit * count + follow,
    st.lists(st.sampled_from([" ", "\n", "\r\n", "\t", "\f", ";", "; ", "/* ; */", "-- c;\n", "/**/"]),
             min_size=1, max_size=4).map("".join),
    st.integers(1, 30000),
    st.sampled_from(["SELECT 3", "x", "END x", "end_", "'END;'", "CASE WHEN 1 THEN 2 END", "/* END; */ x",
                     "END -- c\n x"]),
)


@fuzz(60)
@given(_BODY_RUN, _BODY_RUN)
def test_long_runs_in_trigger_bodies_split_fast(first: str, second: str) -> None:
    # No run ends the trigger, so the whole text is one statement, which
    # SQLite agrees is complete; split in well under a second (5 s limit).
    text = "CREATE TRIGGER trg AFTER INSERT ON t BEGIN SELECT 1;" + first + ";" + second + ";END;"
    assert sqlite3.complete_statement(text)
    tool_dir = str(Path(apply_migrations.__file__).resolve().parent)
    try:
        proc = subprocess.run([sys.executable, "-c", _CHILD, tool_dir], input=text.encode("utf-8"),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=5)
    except subprocess.TimeoutExpired:
        pytest.fail("split_sql took more than 5 s on %d characters" % len(text))
    assert proc.returncode == 0, proc.stderr.decode("utf-8", "replace")
    assert json.loads(proc.stdout) == [[0, len(text)]]
