"""Shared oracles and Hypothesis strategies for the split_sql tests.

Not a test module (pytest does not collect it); test_splitter.py and
test_splitter_fuzz.py import it.  Nothing here uses apply_migrations'
own regular expressions: every check is either SQLite itself
(sqlite3.complete_statement, sqlite3.Connection.executescript) or a small,
obviously-correct scanner written for the tests.
"""

from __future__ import annotations

import re
import sqlite3
from typing import Callable, List, NamedTuple, Optional, Tuple

from hypothesis import strategies as st

import apply_migrations


SPLIT_REASONS = frozenset(
    {
        "unterminated string literal",
        'unterminated "quoted" identifier',
        "unterminated `quoted` identifier",
        "unterminated [bracketed] identifier",
        "unterminated /* comment",
        "CREATE TRIGGER has no END",
        "a NUL character is not allowed in SQL text",
    }
)

# --------------------------------------------------------------------------
# Oracles.

# One token of the text allowed between statements.  Deliberately a
# different (character-at-a-time, non-greedy) formulation from the module's.
_GAP_TOKEN = re.compile(r"[ \t\n\f\r]|--[^\n]*(?:\n|\Z)|/\*.*?\*/|;", re.DOTALL)
_WORD = re.compile("[A-Za-z0-9_$\x80-\U0010ffff]+")


def skip_gap(text: str, pos: int) -> int:
    """First offset at or after pos that is not whitespace, comment or ';'."""
    while pos < len(text):
        match = _GAP_TOKEN.match(text, pos)
        if match is None:
            break
        pos = match.end()
    return pos


def is_gap(piece: str) -> bool:
    return skip_gap(piece, 0) == len(piece)


class ReferenceError_(Exception):
    """The reference splitter found text that never completes."""


def reference_split(text: str) -> List[Tuple[int, int]]:
    """(start, end) of each statement, cut exactly where SQLite cuts.

    Walks the ';' characters and cuts at the first one where the text since
    the previous cut is sqlite3.complete_statement()-complete; that is the
    state machine of sqlite3_complete() run over the whole text (a cut puts
    it back in its start state).  Quadratic; for small texts only.
    """
    spans: List[Tuple[int, int]] = []
    cur = 0
    for k, char in enumerate(text):
        if char != ";" or k < cur:
            continue
        if sqlite3.complete_statement(text[cur : k + 1]):
            start = skip_gap(text, cur)
            if start <= k:  # not just an empty statement
                spans.append((start, k + 1))
            cur = k + 1
    start = skip_gap(text, cur)
    if start < len(text):
        if text.startswith("/*", start):
            raise ReferenceError_("unterminated comment")
        if not sqlite3.complete_statement(text[start:] + "\n;"):
            raise ReferenceError_("incomplete last statement")
        spans.append((start, len(text)))
    return spans


def expected_keyword(sql: str) -> Optional[str]:
    """The keyword the spec asks for, or None where the spec is silent."""
    match = _WORD.match(sql)
    if match is None:
        return ""
    word = match.group()
    if word[0].isdigit() or not word.isascii():
        return None  # a number, or non-ASCII case mapping: not specified
    return word.upper()


def check_split(text: str, statements: List[apply_migrations.Statement]) -> None:
    """Every property split_sql promises for text that splits without error."""
    n = len(text)
    # (a) In order, non-overlapping, sql is the slice, gaps are only
    # whitespace/comments/';', and the text is rebuilt byte for byte.
    pieces: List[str] = []
    previous_end = 0
    for stmt in statements:
        assert isinstance(stmt, apply_migrations.Statement)
        assert previous_end <= stmt.start < stmt.end <= n, (stmt, previous_end)
        assert stmt.sql == text[stmt.start : stmt.end]
        gap = text[previous_end : stmt.start]
        assert is_gap(gap), ("non-gap text outside statements", gap)
        pieces.append(gap)
        pieces.append(stmt.sql)
        previous_end = stmt.end
        # A statement starts at a token, not at whitespace, a comment or ';'.
        assert skip_gap(text, stmt.start) == stmt.start, stmt
        assert stmt.line == text.count("\n", 0, stmt.start) + 1, stmt
        keyword = expected_keyword(stmt.sql)
        if keyword is not None:
            assert stmt.keyword == keyword, stmt
        else:
            assert stmt.keyword, stmt
    tail = text[previous_end:]
    assert is_gap(tail), ("non-gap text after the last statement", tail)
    pieces.append(tail)
    assert "".join(pieces) == text

    for index, stmt in enumerate(statements):
        last = index == len(statements) - 1
        terminated = stmt.sql.endswith(";") and (
            not last or sqlite3.complete_statement(text[: stmt.end])
        )
        if not terminated:
            # Only the last statement may lack its ';'; it then runs to the
            # end of the text and SQLite completes it with a ';'.
            assert last and stmt.end == n, stmt
            assert sqlite3.complete_statement(stmt.sql + "\n;"), stmt
            assert not sqlite3.complete_statement(text), stmt
        else:
            # (b) complete on its own, and (every cut point) SQLite cuts here.
            assert sqlite3.complete_statement(stmt.sql), stmt
            assert sqlite3.complete_statement(text[: stmt.end]), stmt
        # (c) SQLite would not have ended the statement at an earlier ';'.
        for k in range(stmt.start, stmt.end - 1):
            if text[k] == ";":
                assert not sqlite3.complete_statement(text[stmt.start : k + 1]), (
                    "SQLite would end the statement at offset %d" % k,
                    stmt,
                )
    # And the cuts are exactly SQLite's.
    assert [(s.start, s.end) for s in statements] == reference_split(text)


def check_text(text: str) -> Optional[apply_migrations.SQLSplitError]:
    """split_sql either raises SQLSplitError where SQLite never completes
    the text, or satisfies check_split."""
    try:
        statements = apply_migrations.split_sql(text)
    except apply_migrations.SQLSplitError as error:
        assert error.reason in SPLIT_REASONS, error.reason
        assert 0 <= error.offset < len(text), error.offset
        assert error.line == text.count("\n", 0, error.offset) + 1
        try:
            reference_split(text)
        except ReferenceError_:
            return error
        raise AssertionError("split_sql raised %r; SQLite splits the text" % error)
    check_split(text, statements)
    return None


def assert_same_execution(text: str, statements: List[apply_migrations.Statement]) -> None:
    """Statement by statement == executescript, on two in-memory databases."""
    one = sqlite3.connect(":memory:", isolation_level=None)
    whole = sqlite3.connect(":memory:", isolation_level=None)
    try:
        for conn in (one, whole):
            conn.execute("CREATE TABLE log(id INTEGER PRIMARY KEY, v)")
            conn.execute("CREATE TABLE audit(id INTEGER PRIMARY KEY, v)")
        for stmt in statements:
            one.execute(stmt.sql)
        whole.executescript(text)
        assert dump(one) == dump(whole)
    finally:
        one.close()
        whole.close()


def dump(conn: sqlite3.Connection) -> List[object]:
    out: List[object] = []
    for master in ("sqlite_master", "sqlite_temp_master"):
        rows = conn.execute(
            "SELECT type, name, tbl_name, sql FROM %s ORDER BY type, name" % master
        ).fetchall()
        out.append(rows)
    for table in ("log", "audit"):
        out.append(conn.execute("SELECT id, v FROM %s ORDER BY id" % table).fetchall())
    out.append(conn.in_transaction)
    return out


# --------------------------------------------------------------------------
# Strategies.


def random_case(draw: Callable, word: str) -> str:
    style = draw(st.sampled_from(["upper", "lower", "title", "mixed"]))
    if style == "upper":
        return word.upper()
    if style == "lower":
        return word.lower()
    if style == "title":
        return word.title()
    flips = draw(st.lists(st.booleans(), min_size=len(word), max_size=len(word)))
    return "".join(c.upper() if f else c.lower() for c, f in zip(word, flips))


# Content of string literals and quoted identifiers: everything that would
# end a statement or open a comment if it were not quoted.
_LITERAL_CHUNKS = [
    ";", ";;", "END;", "end;", "; END;", "--", "/*", "*/", "\"", "`", "[", "]",
    "''", "x", "abc", " ", "\t", "BEGIN", "CASE", "CREATE TRIGGER", "é", "\u2028",
]


@st.composite
def string_literal(draw: Callable, nl: str = "\n") -> str:
    chunks = draw(st.lists(st.sampled_from(_LITERAL_CHUNKS + [nl]), max_size=6))
    return "'" + "".join(chunks).replace("'", "''") + "'"


@st.composite
def quoted_identifier(draw: Callable, stem: str) -> str:
    """A quoted identifier that contains ';' and is unique thanks to stem."""
    inner = stem + draw(st.sampled_from([";", "; END;", ";--", ";/*", " ; "]))
    style = draw(st.sampled_from(["dq", "bq", "br"]))
    if style == "dq":
        return '"' + inner.replace('"', '""') + '"'
    if style == "bq":
        return "`" + inner + "`"
    return "[" + inner + "]"


@st.composite
def separator(draw: Callable, nl: str, comments: bool = True) -> str:
    """Whitespace or a comment between two tokens (short runs only)."""
    options = [" ", "  ", "\t", nl, nl + "    ", " " + nl + "\t"]
    if comments:
        options += [
            " /* c; END; */ ",
            "/**/",
            "/* " + nl + " ; ' \" ` [ */",
            " -- c; END; 'x" + nl,
            "--" + nl,
        ]
    return draw(st.sampled_from(options))


@st.composite
def gap(draw: Callable, nl: str, allow_semicolon: bool = True) -> str:
    options = [" ", nl, nl + nl, "\t", "\f", "-- gap; END;" + nl, "/* gap; */", nl + "/*" + nl + "*/" + nl]
    if allow_semicolon:
        options += [";", " ; ", ";" + nl + ";"]
    return "".join(draw(st.lists(st.sampled_from(options), max_size=3)))


class Script(NamedTuple):
    text: str
    spans: List[Tuple[int, int]]  # expected (start, end) of each statement
    keywords: List[str]
    terminated: bool  # False: the last statement has no ';'


def _trigger_body_statement(draw: Callable, nl: str) -> str:
    kw = lambda word: random_case(draw, word)  # noqa: E731
    sep = lambda: draw(separator(nl))  # noqa: E731
    lit = draw(string_literal(nl))
    kind = draw(st.integers(0, 3))
    if kind == 0:  # nested CASE ... END, 'END;' in strings
        return (
            kw("insert") + " INTO audit(v) VALUES (" + kw("case") + sep()
            + kw("when") + " new.v = 'END;' " + kw("then") + " 'e'" + sep()
            + kw("else") + " " + kw("case") + sep() + kw("when")
            + " new.v LIKE '%;%' " + kw("then") + " 's' " + kw("else") + " "
            + lit + " " + kw("end") + sep() + kw("end") + ")"
        )
    if kind == 1:
        return kw("insert") + " INTO audit(v) SELECT " + lit + " || new.v"
    if kind == 2:
        return kw("update") + " audit SET v = v || ';'" + sep() + kw("where") + " 0"
    return (
        kw("insert") + " INTO audit(v) VALUES (" + kw("case") + " " + kw("when")
        + " 1 " + kw("then") + " 'END' " + kw("else") + " 'x;' " + kw("end") + ")"
    )


def _statements(draw: Callable, index: int, nl: str, executable: bool) -> List[Tuple[str, str]]:
    """One or a few statements, each (text without its ';', keyword)."""
    kw = lambda word: random_case(draw, word)  # noqa: E731
    sep = lambda: draw(separator(nl))  # noqa: E731
    kinds = ["insert", "quoted", "begin_end_columns", "trigger", "arith", "transaction", "explain", "unicode"]
    if not executable:
        kinds.append("leading_literal")
    kind = draw(st.sampled_from(kinds))
    if kind == "insert":
        count = draw(st.integers(1, 3))
        values = ", ".join("(%s)" % draw(string_literal(nl)) for _ in range(count))
        return [(kw("insert") + sep() + kw("into") + " log(v) " + kw("values") + " " + values, "INSERT")]
    if kind == "quoted":
        table = draw(quoted_identifier("t%d" % index))
        column = draw(quoted_identifier("c%d" % index))
        return [(kw("create") + " " + kw("table") + " " + table + "(" + column + " TEXT, x" + sep() + ")", "CREATE")]
    if kind == "begin_end_columns":
        # begin/end as column names are not trigger syntax.
        return [
            (kw("create") + " " + kw("table") + " tbe%d(" % index + kw("begin") + " INTEGER," + sep()
             + kw("end") + " INTEGER)", "CREATE"),
            (kw("insert") + " INTO tbe%d(" % index + kw("begin") + ", " + kw("end") + ") VALUES (1, 2)", "INSERT"),
        ]
    if kind == "trigger":
        temp = draw(st.sampled_from(["", "temp ", "TEMPORARY ", "Temp "]))
        when = draw(st.sampled_from(["", " WHEN new.v <> 'END;'", " when new.v NOT LIKE '%end;%'"]))
        body = ""
        for _ in range(draw(st.integers(1, 3))):
            # SQLite rejects empty statements inside a trigger body, but
            # sqlite3_complete() does not care.
            ends = [";", " ;", nl + ";"] if executable else [";", " ;", ";;", "; ;"]
            body += sep() + _trigger_body_statement(draw, nl) + draw(st.sampled_from(ends))
        return [(
            kw("create") + " " + temp + kw("trigger") + sep() + "trg%d " % index + kw("after") + " "
            + kw("insert") + " " + kw("on") + " log " + kw("for each row") + when + sep()
            + kw("begin") + body + sep() + kw("end"),
            "CREATE",
        )]
    if kind == "arith":  # '-' and '/' that are not comments
        return [(kw("insert") + " " + kw("into") + " log(v) " + kw("values") + " (10 - 2 / 1 -1 /2)", "INSERT")]
    if kind == "transaction":
        # Top-level BEGIN and END (= COMMIT) are ordinary statements.
        if draw(st.booleans()):
            last = draw(st.sampled_from(["end", "commit", "end transaction"]))
            return [
                (kw("begin"), "BEGIN"),
                (kw("insert") + " INTO log(v) VALUES ('tx; END;')", "INSERT"),
                (kw(last), last.split()[0].upper()),
            ]
        return [
            (kw("savepoint") + " sp%d" % index, "SAVEPOINT"),
            (kw("release") + " sp%d" % index, "RELEASE"),
        ]
    if kind == "explain":
        # EXPLAIN CREATE TRIGGER is a trigger for sqlite3_complete too;
        # executing it changes nothing.
        return [(
            kw("explain") + " " + kw("create") + " " + kw("trigger") + " xtrg%d AFTER INSERT ON log " % index
            + kw("begin") + " SELECT 'END;'; SELECT " + kw("case") + " 1 WHEN 1 THEN 1 " + kw("end") + ";"
            + sep() + kw("end"),
            "EXPLAIN",
        )]
    if kind == "leading_literal":
        return [(draw(string_literal(nl)) + " || 'a;b'", "")]
    # unicode identifiers (characters >= 0x80 are identifier characters)
    return [(kw("create") + " " + kw("table") + " té%d(ñ)" % index, "CREATE")]


@st.composite
def scripts(draw: Callable, executable: bool = False, min_statements: int = 0,
            max_statements: int = 5) -> Script:
    """A script and the exact (start, end) and keyword of its statements."""
    nl = draw(st.sampled_from(["\n", "\r\n"]))
    groups = draw(st.integers(min_statements, max_statements))
    terminated_last = draw(st.booleans())
    items: List[Tuple[str, str]] = []
    for index in range(groups):
        items.extend(_statements(draw, index, nl, executable))
    text = draw(gap(nl))
    spans: List[Tuple[int, int]] = []
    for position, (sql, _) in enumerate(items):
        if position:
            text += draw(gap(nl))
        start = len(text)
        text += sql
        if position == len(items) - 1 and not terminated_last:
            text += draw(st.sampled_from(
                ["", " ", nl, "-- trailing; END;", " /* ; */", nl + "-- no newline", "--"]
            ))
            spans.append((start, len(text)))
            return Script(text, spans, [k for _, k in items], False)
        text += draw(st.sampled_from(["", " ", nl, " /* ; */ "])) + ";"
        spans.append((start, len(text)))
    text += draw(gap(nl))
    return Script(text, spans, [k for _, k in items], True)


# Arbitrary text biased towards everything the splitter cares about.
SOUP_ALPHABET = ";'\"`[]-/*\n\r\t abcEND BEGIN CREATE TRIGGER CASE temp"
SOUP_CHUNKS = [
    ";", "'", '"', "`", "[", "]", "-", "--", "/", "*", "/*", "*/", "\n", "\r\n",
    "\r", " ", "\t", "\f", "x", "1", "é", "$", "_", "(", ")", ",",
    "END", "end", "End", "BEGIN", "begin", "CREATE", "create", "TRIGGER",
    "trigger", "TEMP", "temporary", "EXPLAIN", "explain", "CASE", "case",
    "'a;b'", "'it''s;'", '"q;"', "`b;`", "[s;]", "/* ; */", "-- ;\n", "'END;'",
    "CREATE TRIGGER t AFTER INSERT ON x BEGIN ", "; END;", ";END", "endx", "xend",
    "; endx;", ";END_ ;", "; End$;", "; END x;", ";\n-- c\nEND\n",
]

soup_text = st.text(alphabet=SOUP_ALPHABET, max_size=80)
soup_chunks = st.lists(st.sampled_from(SOUP_CHUNKS), max_size=40).map("".join)

# Anything SQLite accepts in a C string: no NUL, no lone surrogates.
any_character = st.characters(exclude_categories=("Cs",), exclude_characters="\x00")
wide_chunks = st.lists(
    st.one_of(st.sampled_from(SOUP_CHUNKS), any_character), max_size=120
).map("".join)
