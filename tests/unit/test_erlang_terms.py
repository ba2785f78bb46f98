"""Tests for the strict Erlang term reader used for ``app.config`` files."""

from __future__ import annotations

import pytest
from support import app_configs

from kimball_grpc.codec.erlang_terms import Atom, ErlangTermError, parse_term, parse_terms

A = Atom


def features(*entries: object) -> list[object]:
    """The ``[{features, [...]}]`` shape every app.config has."""
    return [(A("features"), list(entries))]


def error_for(text: str, parse=parse_terms) -> ErlangTermError:
    """Parse ``text`` as ``app.config`` and return the error it raises."""
    with pytest.raises(ErlangTermError) as info:
        parse(text, path="app.config")
    return info.value


def assert_error(text: str, line: int, column: int, problem: str, parse=parse_terms) -> None:
    """The error names the file, the line and column, and contains ``problem``."""
    error = error_for(text, parse)
    assert (error.path, error.line, error.column) == ("app.config", line, column)
    assert problem in error.problem
    assert str(error) == f"app.config:{line}:{column}: {error.problem}"


# --- the app.config examples --------------------------------------------------------------


def test_site_and_cluster_names() -> None:
    assert parse_term(app_configs.SITE_AND_CLUSTER) == features(
        (A("site"), "Site name"), (A("cluster"), "Cluster name")
    )


def test_counter_rules_with_maps() -> None:
    rule = {
        A("pattern"): ".*",
        A("type"): A("bloom_fixed_size"),
        A("date_cohort"): A("weekly"),
        A("size"): 10000,
        A("error_probability"): 0.01,
    }
    assert parse_term(app_configs.WEEKLY_FIXED_COUNTERS) == features(
        (A("counters"), {A("init"): [rule]})
    )


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("[{features, [ {api_auth, disable} ]}].", (A("api_auth"), A("disable"))),
        (
            '[{features, [ {api_auth, enable}, {api_auth_tokens, [<<"SECRET_TOKEN">>]} ]}].',
            [(A("api_auth"), A("enable")), (A("api_auth_tokens"), [b"SECRET_TOKEN"])],
        ),
        (
            '[{features, [ {external_grpc_event_targets, [{"127.0.0.1", 8079}]} ]}].',
            (A("external_grpc_event_targets"), [("127.0.0.1", 8079)]),
        ),
        (
            "[{features, [ {external_grpc_prediction_targets,"
            ' [{"service name", "127.0.0.1", 8079}]} ]}].',
            (A("external_grpc_prediction_targets"), [("service name", "127.0.0.1", 8079)]),
        ),
        ("[{features, [ {counter_startup_delay, 1} ]}].", (A("counter_startup_delay"), 1)),
    ],
)
def test_single_line_configs(text: str, expected: object) -> None:
    entries = expected if isinstance(expected, list) else [expected]
    assert parse_term(text, path="app.config") == features(*entries)


# --- the term language ----------------------------------------------------------------------


def test_file_is_a_sequence_of_terms() -> None:
    assert parse_terms("a.\n{b, 1}.  [c]. % done\n") == [A("a"), (A("b"), 1), [A("c")]]
    assert parse_terms("") == []
    assert parse_terms("  % only a comment\n\n") == []


def test_comments_and_whitespace() -> None:
    text = "% leading comment\n[\t{a, % the key\n  1}%tight\r\n ] % after\n. % end\n"
    assert parse_term(text) == [(A("a"), 1)]


def test_atoms() -> None:
    assert parse_term("[true, false, a_b@host, x9, 'Atoms With Spaces', 'it\\'s', ''].") == [
        A("true"),
        A("false"),
        A("a_b@host"),
        A("x9"),
        A("Atoms With Spaces"),
        A("it's"),
        A(""),
    ]
    assert parse_term("[ok, 'ok', \"ok\"].") == [A("ok"), A("ok"), "ok"]
    assert A("ok") != "ok"


def test_strings_escapes_and_concatenation() -> None:
    assert parse_term(r'"tab\tnl\n quote\" backslash\\ apos\' sp\s del\d".') == (
        "tab\tnl\n quote\" backslash\\ apos' sp  del\x7f"
    )
    assert parse_term(r'"\101\x42\x{43}\x{1F600}\^g\z".') == "ABC\U0001f600\x07z"
    assert parse_term('"a" "b"\n  % between\n "c".') == "abc"
    assert parse_term('"".') == ""
    assert parse_term('"line one\nline two".') == "line one\nline two"
    assert parse_term('"héllo".') == "héllo"


def test_binaries() -> None:
    assert parse_term('[<<"SECRET">>, <<"é"/utf8>>, <<"é">>, <<>>, <<"a" "b">>].') == [
        b"SECRET",
        "é".encode(),
        "é".encode(),
        b"",
        b"ab",
    ]
    assert parse_term('<<"ab", "c"/utf8, "d">>.') == b"abcd"


def test_numbers() -> None:
    assert parse_term(
        "[0, 42, -7, - 3, 1_000, 16#FF, 2#1010, -16#ff, 36#Zz, $a, $\\n, $ , -$a, ${]."
    ) == [0, 42, -7, -3, 1000, 255, 10, -255, 1295, 97, 10, 32, -97, 123]
    values = parse_term("[0.01, 1.0e-3, -2.5, 2.5E+2, 3.0e2, 0.0].")
    assert values == [0.01, 1.0e-3, -2.5, 250.0, 300.0, 0.0]
    assert all(isinstance(v, float) for v in values)


def test_empty_containers() -> None:
    assert parse_term("[[], {}, #{}, <<>>].") == [[], (), {}, b""]


def test_nested_and_map_keys() -> None:
    value = parse_term('#{ {a, 1} => [x], "s" => #{}, 7 => <<"b">>, k => {} }.')
    assert value == {(A("a"), 1): [A("x")], "s": {}, 7: b"b", A("k"): ()}


# --- errors: each names the file, line and column ------------------------------------------


def test_error_message_format() -> None:
    text = '[{features, [\n    {site, "x"}\n]}}].\n'
    assert str(error_for(text)) == "app.config:3:3: expected ',' or ']' but found '}'"
    with pytest.raises(ErlangTermError, match=r"^1:3: expected "):
        parse_term("[a")
    assert isinstance(error_for("[a"), ValueError)


# Each error names the file, the line and column where reading stopped, and the problem:
# (what is wrong, the reader, text, line, column, problem).
ERRORS = [
    ("string", parse_terms, '[{site,\n  "Site name}].\n', 2, 3, "unterminated string"),
    ("string", parse_terms, "[{'quoted, atom}].", 1, 3, "unterminated quoted atom"),
    ("string", parse_terms, '["abc\\', 1, 6, "unterminated escape"),
    ("dot", parse_terms, "[{features, []}]\n\n", 1, 17, "expected '.' but found end of input"),
    ("dot", parse_terms, "a.\n[b]  % no dot\n", 2, 4, "expected '.' but found end of input"),
    ("dot", parse_term, "[a]", 1, 4, "expected '.'"),
    ("dot", parse_term, "% nothing\n", 1, 1, "expected a term but found end of input"),
    (
        "bracket",
        parse_terms,
        '[{features, [\n  {site, "x"]\n]}].',
        2,
        13,
        "expected ',' or '}' but found ']'",
    ),
    ("bracket", parse_terms, "[{a, b}.", 1, 8, "expected ',' or ']' but found '.'"),
    ("bracket", parse_terms, "{a, b}}.", 1, 7, "expected '.' but found '}'"),
    ("bracket", parse_terms, "[a, b", 1, 6, "expected ',' or ']' but found end of input"),
    ("bracket", parse_terms, "[a,]. ", 1, 4, "expected a term but found ']'"),
    ("bracket", parse_terms, "#{a => 1.", 1, 9, "expected ',' or '}' but found '.'"),
    ("token", parse_terms, "[{pid, <0.42.0>}].", 1, 8, "unexpected character '<'"),
    ("token", parse_terms, "[\n  {f, fun erlang:now/0}].", 2, 7, "reserved word 'fun'"),
    ("token", parse_terms, "#rec{a = 1}.", 1, 2, "expected '{' after '#' but found atom rec"),
    ("token", parse_terms, "[X].", 1, 2, "variables are not allowed: X"),
    ("token", parse_terms, "[_ignored].", 1, 2, "variables are not allowed"),
    (
        "template",
        parse_terms,
        "[{kernel, [\n  {logger_level, ${LOG_LEVEL}}]}].",
        2,
        18,
        "${LOG_LEVEL} is a variable of a release template (sys.config.src)",
    ),
    ("token", parse_terms, "[a | b].", 1, 4, "unexpected character '|'"),
    ("token", parse_terms, "[16#FG].", 1, 2, "invalid number '16#FG'"),
    ("token", parse_terms, "[1.0e].", 1, 2, "invalid number '1.0e'"),
    ("token", parse_terms, "[12abc].", 1, 2, "invalid number '12abc'"),
    ("token", parse_terms, "[1.0e999].", 1, 2, "invalid number"),
    ("token", parse_terms, '"\\x{110000}".', 1, 2, "invalid escape sequence"),
    ("token", parse_terms, '"\\xg".', 1, 2, "invalid escape sequence"),
    ("token", parse_terms, "[a].[b].", 1, 4, "'.' must be followed by whitespace"),
    ("token", parse_terms, "- a.", 1, 3, "expected a number after '-' but found atom a"),
    ("token", parse_terms, "<<97>>.", 1, 3, "expected a string but found integer 97"),
    ("token", parse_terms, '<<"x"/latin1>>.', 1, 7, "expected utf8 but found atom latin1"),
    ("token", parse_terms, "#{a := 1}.", 1, 5, "unexpected character ':'"),
    ("map key", parse_terms, "#{a => 1,\n  a => 2}.", 2, 3, "duplicate map key"),
    ("map key", parse_terms, "#{[a] => 1}.", 1, 3, "map key is not hashable"),
    ("garbage", parse_term, "[a]. b.\n", 1, 6, "expected end of input after '.' but found atom b"),
    ("garbage", parse_terms, "[a].\n\n  junk", 3, 7, "expected '.' but found end of input"),
    ("garbage", parse_terms, "[a] junk.", 1, 5, "expected '.' but found atom junk"),
    ("garbage", parse_terms, "[a]. )", 1, 6, "unexpected character ')'"),
]


@pytest.mark.parametrize(
    ("parse", "text", "line", "column", "problem"),
    [pytest.param(*case, id=kind) for kind, *case in ERRORS],
)
def test_errors_name_the_file_line_and_column(parse, text, line, column, problem) -> None:
    assert_error(text, line, column, problem, parse)


def test_nesting_limit() -> None:
    deep = "[" * 100 + "]" * 100 + "."
    assert len(repr(parse_term(deep))) == 200
    assert_error("\n" + "[" * 101 + "]" * 101 + ".", 2, 101, "nested more than 100 deep")


def test_path_is_optional() -> None:
    with pytest.raises(ErlangTermError) as info:
        parse_terms("\n  [a")
    assert info.value.path is None
    assert str(info.value) == "2:5: expected ',' or ']' but found end of input"
