"""split_sql: examples, SQLite as the oracle, Hypothesis properties, speed.

The oracle throughout is SQLite itself: sqlite3.complete_statement (the
sqlite3_complete() state machine the splitter reproduces) and
Connection.executescript.  The longer fuzz run is test_splitter_fuzz.py
(pytest -m slow).
"""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import List

import pytest
from hypothesis import HealthCheck, given, settings

import apply_migrations
from apply_migrations import SQLSplitError, Statement, split_sql

from _splitter_support import (
    assert_same_execution,
    check_split,
    check_text,
    reference_split,
    scripts,
    soup_chunks,
    soup_text,
)

PROPERTY_SETTINGS = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def sqls(text: str) -> List[str]:
    statements = split_sql(text)
    check_split(text, statements)  # every example is also checked against SQLite
    return [s.sql for s in statements]


TRIGGER = (
    "CREATE TRIGGER trg AFTER INSERT ON t BEGIN\n"
    "  INSERT INTO log VALUES (CASE WHEN new.x = 1 THEN 'END;' ELSE 'x' END);\n"
    "  UPDATE t SET y = 'END; END;' WHERE x = (CASE x WHEN 1 THEN 2 END);\n"
    "END;"
)


# --------------------------------------------------------------------------
# ';' that does not end a statement.


@pytest.mark.parametrize(
    "text, expected",
    [
        pytest.param(
            "INSERT INTO t VALUES ('a;b');SELECT 2;",
            ["INSERT INTO t VALUES ('a;b');", "SELECT 2;"],
            id="single-quoted",
        ),
        pytest.param(
            "INSERT INTO t VALUES ('it''s; ok', ';''', '''');\nSELECT 2;",
            ["INSERT INTO t VALUES ('it''s; ok', ';''', '''');", "SELECT 2;"],
            id="single-quoted-with-escapes",
        ),
        pytest.param("SELECT '';SELECT ''';';", ["SELECT '';", "SELECT ''';';"], id="empty-and-quote-only"),
        pytest.param(
            'SELECT "a;b" FROM t; SELECT 2;', ['SELECT "a;b" FROM t;', "SELECT 2;"], id="double-quoted"
        ),
        pytest.param(
            'SELECT "a"";b" FROM t; SELECT 2;', ['SELECT "a"";b" FROM t;', "SELECT 2;"],
            id="double-quoted-with-escape",
        ),
        pytest.param("SELECT `a;b` FROM t; SELECT 2;", ["SELECT `a;b` FROM t;", "SELECT 2;"], id="backquoted"),
        pytest.param("SELECT [a;b] FROM t; SELECT 2;", ["SELECT [a;b] FROM t;", "SELECT 2;"], id="bracketed"),
        pytest.param(
            "SELECT [a';b] FROM t; SELECT 'x]' ;", ["SELECT [a';b] FROM t;", "SELECT 'x]' ;"],
            id="other-quotes-inside-brackets",
        ),
        pytest.param(
            "SELECT 1 -- c; d\n; SELECT 2;", ["SELECT 1 -- c; d\n;", "SELECT 2;"], id="line-comment"
        ),
        pytest.param(
            "SELECT 1 /* ; */; SELECT 2;", ["SELECT 1 /* ; */;", "SELECT 2;"], id="block-comment"
        ),
        pytest.param(
            "SELECT 1 /* multi\n; line ' \" */ + 2; SELECT 3;",
            ["SELECT 1 /* multi\n; line ' \" */ + 2;", "SELECT 3;"],
            id="multi-line-block-comment-with-quotes",
        ),
        pytest.param(
            "SELECT '--'; SELECT '/*'; SELECT 3;", ["SELECT '--';", "SELECT '/*';", "SELECT 3;"],
            id="comment-openers-in-strings",
        ),
        pytest.param(
            "SELECT 1 - 2; SELECT 4 / 2; SELECT 3-1;",
            ["SELECT 1 - 2;", "SELECT 4 / 2;", "SELECT 3-1;"],
            id="minus-and-slash-are-not-comments",
        ),
        pytest.param(
            "SELECT 1; -- SELECT 2;\n/* SELECT 3; */ SELECT 4;",
            ["SELECT 1;", "SELECT 4;"],
            id="commented-out-statements",
        ),
        pytest.param(";;; SELECT 1;;; ;\n;", ["SELECT 1;"], id="empty-statements"),
        pytest.param(
            "CREATE TABLE t(begin INTEGER, end INTEGER);\nINSERT INTO t(begin, end) VALUES (1, 2);",
            ["CREATE TABLE t(begin INTEGER, end INTEGER);", "INSERT INTO t(begin, end) VALUES (1, 2);"],
            id="begin-end-column-names",
        ),
        pytest.param(
            "CREATE TABLE trigger_log(x);SELECT 1;", ["CREATE TABLE trigger_log(x);", "SELECT 1;"],
            id="create-table-trigger-prefixed-name",
        ),
        pytest.param(
            "CREATE TEMP TABLE t(x); SELECT 1;", ["CREATE TEMP TABLE t(x);", "SELECT 1;"],
            id="create-temp-table",
        ),
        pytest.param(
            "CREATE TABLE t(x); CREATE TABLE \"trigger\"(y); SELECT 1;",
            ["CREATE TABLE t(x);", 'CREATE TABLE "trigger"(y);', "SELECT 1;"],
            id="quoted-trigger-is-a-name",
        ),
        pytest.param(
            "BEGIN;\nINSERT INTO t VALUES (1);\nEND;\nSELECT 1;",
            ["BEGIN;", "INSERT INTO t VALUES (1);", "END;", "SELECT 1;"],
            id="top-level-begin-end",
        ),
        pytest.param(
            "EXPLAIN SELECT 1; SELECT 2;", ["EXPLAIN SELECT 1;", "SELECT 2;"], id="explain-select"
        ),
    ],
)
def test_semicolons_that_do_not_end_statements(text: str, expected: List[str]) -> None:
    assert sqls(text) == expected


# --------------------------------------------------------------------------
# Triggers.


@pytest.mark.parametrize(
    "trigger",
    [
        pytest.param(TRIGGER, id="upper"),
        pytest.param(TRIGGER.lower(), id="lower"),
        pytest.param(
            "Create Trigger trg After Insert On t Begin\n"
            "  Insert Into log Values (Case When new.x = 1 Then 'END;' Else 'x' End);\n"
            "eNd;",
            id="mixed-case",
        ),
        pytest.param(TRIGGER.replace("CREATE TRIGGER", "CREATE TEMP TRIGGER"), id="temp"),
        pytest.param(TRIGGER.replace("CREATE TRIGGER", "create temporary trigger"), id="temporary"),
        pytest.param(TRIGGER.replace("CREATE TRIGGER", "CREATE\n/* c */ TEMP -- c\n TRIGGER"),
                     id="comments-in-head"),
        pytest.param(
            "CREATE TRIGGER IF NOT EXISTS trg AFTER INSERT ON t FOR EACH ROW WHEN new.x <> 'END;' BEGIN\n"
            "  SELECT CASE WHEN 1 THEN CASE WHEN 2 THEN 3 END END;\n"
            "  SELECT 'end;' /* ; END; */; -- ; END;\n"
            "END;",
            id="nested-case-and-commented-end",
        ),
        pytest.param(
            "CREATE TRIGGER trg AFTER INSERT ON t BEGIN SELECT 1;/* a */ -- b\n\tEND/* c */\n;",
            id="comments-between-semicolon-end-and-semicolon",
        ),
        pytest.param(
            "CREATE TRIGGER trg AFTER INSERT ON t BEGIN SELECT 1;; ;END;", id="empty-statements-before-end"
        ),
        pytest.param(
            "CREATE TRIGGER trg AFTER INSERT ON t BEGIN SELECT endx; SELECT x.end; SELECT 1; END;",
            id="end-like-identifiers",
        ),
        pytest.param(
            "CREATE TRIGGER trg AFTER INSERT ON t BEGIN SELECT 1; END x; END;",
            id="semicolon-end-followed-by-a-token",
        ),
        pytest.param(
            "CREATE TRIGGER trg AFTER INSERT ON t BEGIN SELECT 1; endx; SELECT 2; END;",
            id="semicolon-then-word-starting-with-end",
        ),
        pytest.param(
            "CREATE TRIGGER trg AFTER INSERT ON t BEGIN SELECT 1; \"END\"; END;",
            id="quoted-end-is-not-end",
        ),
        pytest.param(
            "EXPLAIN CREATE TRIGGER trg AFTER INSERT ON t BEGIN SELECT 1; END;", id="explain-create-trigger"
        ),
        pytest.param(
            "EXPLAIN QUERY PLAN CREATE TRIGGER trg AFTER INSERT ON t BEGIN SELECT 1; END;",
            id="explain-query-plan-create-trigger",
        ),
        pytest.param(
            "CREATE TRIGGER trg AFTER INSERT ON t BEGIN\r\n  SELECT 'a\r\n;b';\r\nEND;", id="crlf"
        ),
    ],
)
def test_trigger_is_one_statement(trigger: str) -> None:
    text = "SELECT 0;\n" + trigger + "\nSELECT 1;"
    assert sqls(text) == ["SELECT 0;", trigger, "SELECT 1;"]
    statements = split_sql(text)
    assert statements[1].keyword in ("CREATE", "EXPLAIN")
    assert statements[1].line == 2


@pytest.mark.parametrize(
    "text, expected",
    [
        pytest.param(
            "CREATE TABLE t(x); CREATE INDEX i ON t(x); SELECT 1;",
            ["CREATE TABLE t(x);", "CREATE INDEX i ON t(x);", "SELECT 1;"],
            id="create-without-trigger",
        ),
        pytest.param(
            "EXPLAIN EXPLAIN CREATE TRIGGER; SELECT 1;",
            ["EXPLAIN EXPLAIN CREATE TRIGGER;", "SELECT 1;"],
            id="explain-explain-is-not-trigger",
        ),
        pytest.param(
            "CREATE TRIGGER$ x; CREATE TEMP_ TRIGGER; CREATE TEMP TRIGGER2; SELECT 1;",
            ["CREATE TRIGGER$ x;", "CREATE TEMP_ TRIGGER;", "CREATE TEMP TRIGGER2;", "SELECT 1;"],
            id="keywords-glued-to-identifier-characters",
        ),
        pytest.param(
            "SELECT trigger FROM t; SELECT 1;", ["SELECT trigger FROM t;", "SELECT 1;"],
            id="trigger-word-later-in-statement",
        ),
        pytest.param(
            "CREATE VIEW v AS SELECT 1 AS trigger; SELECT 1;",
            ["CREATE VIEW v AS SELECT 1 AS trigger;", "SELECT 1;"],
            id="create-view-with-trigger-column",
        ),
    ],
)
def test_not_a_trigger(text: str, expected: List[str]) -> None:
    assert sqls(text) == expected


def test_two_triggers_back_to_back() -> None:
    first = "CREATE TRIGGER a AFTER INSERT ON t BEGIN SELECT 1; END;"
    second = "create trigger b after delete on t begin select case 1 when 1 then 'end;' end; end;"
    assert sqls(first + second) == [first, second]


# --------------------------------------------------------------------------
# Line endings, the last statement, empty input.


def test_crlf_string_literal_keeps_crlf() -> None:
    text = "INSERT INTO log(v) VALUES ('a\r\nb;\r\nc');\r\nSELECT 1;\r\n"
    statements = split_sql(text)
    check_split(text, statements)
    assert [s.sql for s in statements] == ["INSERT INTO log(v) VALUES ('a\r\nb;\r\nc');", "SELECT 1;"]
    assert [s.line for s in statements] == [1, 4]
    conn = sqlite3.connect(":memory:")
    conn.execute("CREATE TABLE log(v)")
    conn.execute(statements[0].sql)
    assert conn.execute("SELECT v FROM log").fetchall() == [("a\r\nb;\r\nc",)]


@pytest.mark.parametrize(
    "text, expected",
    [
        pytest.param("SELECT 1; SELECT 2", ["SELECT 1;", "SELECT 2"], id="no-semicolon"),
        pytest.param("SELECT 1", ["SELECT 1"], id="only-statement"),
        pytest.param("SELECT 1; SELECT 2 -- done", ["SELECT 1;", "SELECT 2 -- done"], id="ends-in-line-comment"),
        pytest.param("SELECT 1 -- a; b", ["SELECT 1 -- a; b"], id="ends-in-line-comment-with-semicolon"),
        pytest.param("SELECT 1\n-- done\n", ["SELECT 1\n-- done\n"], id="trailing-comment-and-newline"),
        pytest.param("SELECT 1 /* done; */  \n", ["SELECT 1 /* done; */  \n"], id="trailing-block-comment"),
        pytest.param("SELECT 1\r\n--", ["SELECT 1\r\n--"], id="ends-in-bare-dashes"),
        pytest.param("SELECT 1; -- trailing", ["SELECT 1;"], id="comment-after-last-semicolon"),
        pytest.param("SELECT 1;\n  \n\t", ["SELECT 1;"], id="whitespace-after-last-semicolon"),
        pytest.param(
            "CREATE TRIGGER trg AFTER INSERT ON t BEGIN SELECT 1; END",
            ["CREATE TRIGGER trg AFTER INSERT ON t BEGIN SELECT 1; END"],
            id="trigger-without-final-semicolon",
        ),
        pytest.param(
            "SELECT 0;\ncreate trigger trg after insert on t begin select 1; end -- no newline",
            ["SELECT 0;", "create trigger trg after insert on t begin select 1; end -- no newline"],
            id="trigger-ends-in-line-comment",
        ),
    ],
)
def test_last_statement_without_semicolon(text: str, expected: List[str]) -> None:
    assert sqls(text) == expected


@pytest.mark.parametrize(
    "text",
    ["", " ", "\n\r\n\t\f ", "-- only a comment", "-- c\n", "/* c */", "/* a */ -- b\n", ";", ";;\n;",
     " ; /* ; */ -- ;\n ;", "/**/", "/***/", "/* ** / */"],
)
def test_no_statements(text: str) -> None:
    assert split_sql(text) == []


# --------------------------------------------------------------------------
# Lines and keywords.


@pytest.mark.parametrize("newline", ["\n", "\r\n"])
def test_line_numbers(newline: str) -> None:
    text = (
        "\n\nSELECT 1;\n/* x\n y */ SELECT 2; -- z\n\n  SELECT\n3; SELECT 4;\n"
        "INSERT INTO t VALUES ('a\nb');\nSELECT 5"
    ).replace("\n", newline)
    statements = split_sql(text)
    check_split(text, statements)
    assert [s.line for s in statements] == [3, 5, 7, 8, 9, 11]
    assert statements[2].sql == "SELECT" + newline + "3;"


@pytest.mark.parametrize(
    "text, keyword",
    [
        ("select 1;", "SELECT"),
        ("  \n Insert INTO t VALUES (1);", "INSERT"),
        ("create temp trigger trg after insert on t begin select 1; end;", "CREATE"),
        ("begin;", "BEGIN"),
        ("BEGIN IMMEDIATE;", "BEGIN"),
        ("end;", "END"),
        ("Commit", "COMMIT"),
        ("pragma foreign_keys = on;", "PRAGMA"),
        ("WITH x AS (SELECT 1) SELECT * FROM x;", "WITH"),
        ("VALUES(1);", "VALUES"),
        ("select/**/1;", "SELECT"),
        ("SELECT'a';", "SELECT"),
        ("explain query plan select 1;", "EXPLAIN"),
        ("'abc';", ""),
        ("[x] = 1;", ""),
        ('"t".x;', ""),
        ("(SELECT 1);", ""),
    ],
)
def test_keyword(text: str, keyword: str) -> None:
    (statement,) = split_sql(text)
    assert statement.keyword == keyword
    assert isinstance(statement, Statement)


# --------------------------------------------------------------------------
# Errors.


@pytest.mark.parametrize(
    "text, reason, line, offset_of",
    [
        ("SELECT 1;\nSELECT 'abc;", "unterminated string literal", 2, "'"),
        ("SELECT 'it''s;", "unterminated string literal", 1, "'"),
        ("'abc", "unterminated string literal", 1, "'"),
        ('SELECT 1;\r\nSELECT 2;\r\nSELECT "abc;', 'unterminated "quoted" identifier', 3, '"'),
        ("SELECT `abc;", "unterminated `quoted` identifier", 1, "`"),
        ("SELECT 1;\n\n\nSELECT [abc;", "unterminated [bracketed] identifier", 4, "["),
        ("SELECT 1 /* abc;", "unterminated /* comment", 1, "/*"),
        ("SELECT 1;\n/* abc;", "unterminated /* comment", 2, "/*"),
        ("/*", "unterminated /* comment", 1, "/*"),
        ("CREATE TRIGGER trg AFTER INSERT ON t BEGIN SELECT 1;", "CREATE TRIGGER has no END", 1, "CREATE"),
        (
            "SELECT 1;\n\ncreate temp trigger trg after insert on t begin\nselect 1; end x;",
            "CREATE TRIGGER has no END", 3, "create",
        ),
        (
            "SELECT 1;\r\nCREATE TRIGGER trg AFTER INSERT ON t BEGIN SELECT CASE WHEN 1 THEN 2 END; ",
            "CREATE TRIGGER has no END", 2, "CREATE",
        ),
        ("CREATE TRIGGER trg AFTER INSERT ON t BEGIN SELECT 1 END;", "CREATE TRIGGER has no END", 1, "CREATE"),
        ("CREATE TRIGGER trg AFTER INSERT ON t BEGIN SELECT 'END;';", "CREATE TRIGGER has no END", 1, "CREATE"),
        (
            "CREATE TRIGGER trg AFTER INSERT ON t BEGIN\nSELECT 1;\nSELECT 'END; END;",
            "unterminated string literal", 3, "'",
        ),
        ("CREATE TRIGGER trg AFTER INSERT ON t BEGIN SELECT 1; /* END;", "unterminated /* comment", 1, "/*"),
    ],
)
def test_split_errors(text: str, reason: str, line: int, offset_of: str) -> None:
    with pytest.raises(SQLSplitError) as info:
        split_sql(text)
    error = info.value
    assert error.reason == reason
    assert error.line == line
    assert error.offset == text.rindex(offset_of)
    assert isinstance(error, ValueError)
    assert "line %d" % line in str(error)
    # SQLite agrees that the text never completes.
    assert check_text(text) is not None


@pytest.mark.parametrize(
    "text, line",
    [("SELECT 1;\x00", 1), ("SELECT '\x00';", 1), ("SELECT 1;\r\n\x00\n", 2), ("-- \x00", 1)],
)
def test_nul_character_is_a_split_error(text: str, line: int) -> None:
    # SQLite would take a NUL for the end of the text and silently drop the
    # rest; sqlite3.complete_statement raises a plain ValueError.  split_sql
    # must raise its own error so that callers report it (this once leaked
    # the ValueError and `apply` ended in a traceback).
    with pytest.raises(SQLSplitError) as info:
        split_sql(text)
    assert info.value.offset == text.index("\x00")
    assert info.value.line == line
    assert "NUL" in info.value.reason


# --------------------------------------------------------------------------
# Execution: statement by statement == executescript.


def test_example_script_executes_like_executescript() -> None:
    text = textwrap.dedent(
        """\
        -- header; with a semicolon
        CREATE TABLE t(begin INTEGER, end INTEGER, note TEXT);
        create temp trigger t_ins after insert on log begin
            insert into audit(v) values (case when new.v = 'END;' then 'end!' else
                case when new.v like '%;%' then 'semi' else 'plain' end end);
            update t set note = 'END; END;' where begin = 1;
        end;
        INSERT INTO t(begin, end, note) VALUES (1, 2, 'x;y');
        INSERT INTO log(v) VALUES ('END;'), ('a;b'), ('c'), ('it''s; /* not */ -- a comment');
        /* block; */ ;;
        BEGIN; INSERT INTO log(v) VALUES ('"dq;ok"'); END;
        INSERT INTO log(v) VALUES ('[br;ok]') -- no semicolon, trailing comment"""
    )
    text = text.replace("\n", "\r\n")
    statements = split_sql(text)
    check_split(text, statements)
    assert len(statements) == 8
    assert_same_execution(text, statements)
    conn = sqlite3.connect(":memory:", isolation_level=None)
    conn.execute("CREATE TABLE log(id INTEGER PRIMARY KEY, v)")
    conn.execute("CREATE TABLE audit(id INTEGER PRIMARY KEY, v)")
    for statement in statements:
        conn.execute(statement.sql)
    assert [v for (v,) in conn.execute("SELECT v FROM audit ORDER BY id")] == [
        "end!", "semi", "plain", "semi", "semi", "semi"]
    assert conn.execute("SELECT note FROM t").fetchall() == [("END; END;",)]


@PROPERTY_SETTINGS
@given(scripts(executable=True, min_statements=1))
def test_generated_scripts_execute_like_executescript(script) -> None:
    statements = split_sql(script.text)
    assert [(s.start, s.end) for s in statements] == script.spans
    assert_same_execution(script.text, statements)


# --------------------------------------------------------------------------
# Properties.


@PROPERTY_SETTINGS
@given(scripts())
def test_generated_scripts_split_as_built(script) -> None:
    statements = split_sql(script.text)
    assert [(s.start, s.end) for s in statements] == script.spans
    assert [s.keyword for s in statements] == script.keywords
    check_split(script.text, statements)


@PROPERTY_SETTINGS
@given(soup_text)
def test_arbitrary_text_splits_like_sqlite_or_raises(text: str) -> None:
    check_text(text)


@PROPERTY_SETTINGS
@given(soup_chunks)
def test_token_soup_splits_like_sqlite_or_raises(text: str) -> None:
    check_text(text)


def test_reference_splitter_sanity() -> None:
    # The oracle itself must be able to tell good splits from bad ones.
    assert reference_split("SELECT ';'; SELECT 2") == [(0, 11), (12, 20)]
    assert reference_split(TRIGGER + "SELECT 1;") == [(0, len(TRIGGER)), (len(TRIGGER), len(TRIGGER) + 9)]
    wrong = [Statement("SELECT ';", 1, "SELECT", 0, 9), Statement("'; SELECT 2", 1, "", 9, 20)]
    with pytest.raises(AssertionError):
        check_split("SELECT ';'; SELECT 2", wrong)


# --------------------------------------------------------------------------
# Speed: splitting is linear in the size of the text.


def _timed_split(text: str) -> float:
    started = time.perf_counter()
    statements = split_sql(text)
    elapsed = time.perf_counter() - started
    assert len(statements) == 1
    assert statements[0].sql == text
    assert statements[0].start == 0 and statements[0].end == len(text)
    return elapsed


def test_large_single_line_insert_is_fast() -> None:
    rows = ",".join("(%d,'name %d;x','it''s',NULL,-1.5)" % (i, i) for i in range(40000))
    text = "INSERT INTO big(id, name, note, other, score) VALUES " + rows + ";"
    assert len(text) >= 1_400_000
    assert "\n" not in text
    assert _timed_split(text) < 2.0


def test_large_string_literal_is_fast() -> None:
    literal = "'" + "a;b''c; -- /* ;" * 70000 + "'"
    text = "INSERT INTO t VALUES (" + literal + ")"
    assert len(text) >= 1_000_000
    assert text.count(";") >= 200000
    assert _timed_split(text) < 2.0


def test_large_trigger_is_fast() -> None:
    body = "".join("    INSERT INTO log VALUES (%d, 'END;', CASE WHEN 1 THEN 2 END);\n" % i for i in range(15000))
    text = "CREATE TRIGGER trg AFTER INSERT ON t BEGIN\n" + body + "END;"
    assert len(text) >= 900_000
    assert _timed_split(text) < 2.0


@pytest.mark.parametrize(
    "after",
    [
        pytest.param("; " + " " * 40, id="blanks-after-semicolon"),
        pytest.param("; END " + " " * 40, id="blanks-after-semicolon-end"),
        pytest.param(";\n" + "\n\t  " * 10, id="blank-lines-after-semicolon"),
        pytest.param("; END" + " \n" * 20, id="blank-lines-after-semicolon-end"),
        pytest.param("; " + "; " * 30000, id="run-of-semicolons"),
        pytest.param(";" + " /* c */ ;\n" * 10000, id="run-of-semicolons-and-comments"),
    ],
)
def test_trigger_end_search_is_linear(after: str) -> None:
    # Regression: a ';' in a trigger body followed by a run of blanks that
    # does not lead to END made the END search backtrack exponentially
    # (40 blanks: 2**39 steps), and every ';' of a run of ';' rescanned the
    # rest of the run (quadratic).
    text = (
        "CREATE TRIGGER trg AFTER INSERT ON t BEGIN SELECT 1" + after
        + "SELECT 2; END;"
    )
    # In a child process: a regular expression cannot be interrupted.
    tool_dir = str(Path(apply_migrations.__file__).resolve().parent)
    code = (
        "import sys; sys.path.insert(0, sys.argv[1]); import apply_migrations as m; "
        "t = sys.stdin.buffer.read().decode('utf-8'); "
        "s = m.split_sql(t); assert [x.sql for x in s] == [t], s"
    )
    try:
        proc = subprocess.run([sys.executable, "-c", code, tool_dir], input=text.encode("utf-8"),
                              timeout=2.5, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    except subprocess.TimeoutExpired:
        pytest.fail("split_sql took more than 2.5 s on a %d-character trigger" % len(text))
    assert proc.returncode == 0, proc.stderr.decode("utf-8", "replace")
