"""Tests for the strict Erlang term reader used for ``app.config`` files."""

from __future__ import annotations

import pytest

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
    text = """[{features, [
    {site, "Site name"},
    {cluster, "Cluster name"}
]}].
"""
    assert parse_term(text) == features((A("site"), "Site name"), (A("cluster"), "Cluster name"))


def test_counter_rules_with_maps() -> None:
    text = """[{features, [
    {counters, #{
        init => [
            #{pattern => ".*",
              type => bloom_fixed_size,
              date_cohort => weekly,
              size => 10000,
              error_probability => 0.01}
        ]
    }}
]}].
"""
    rule = {
        A("pattern"): ".*",
        A("type"): A("bloom_fixed_size"),
        A("date_cohort"): A("weekly"),
        A("size"): 10000,
        A("error_probability"): 0.01,
    }
    assert parse_term(text) == features((A("counters"), {A("init"): [rule]}))


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
        "[0, 42, -7, - 3, 1_000, 16#FF, 2#1010, -16#ff, 36#Zz, $a, $\\n, $ , -$a]."
    ) == [0, 42, -7, -3, 1000, 255, 10, -255, 1295, 97, 10, 32, -97]
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


def test_unterminated_string() -> None:
    assert_error('[{site,\n  "Site name}].\n', 2, 3, "unterminated string")
    assert_error("[{'quoted, atom}].", 1, 3, "unterminated quoted atom")
    assert_error('["abc\\', 1, 6, "unterminated escape")


def test_missing_final_dot() -> None:
    assert_error("[{features, []}]\n\n", 1, 17, "expected '.' but found end of input")
    assert_error("a.\n[b]  % no dot\n", 2, 4, "expected '.' but found end of input")
    assert_error("[a]", 1, 4, "expected '.'", parse=parse_term)
    assert_error("% nothing\n", 1, 1, "expected a term but found end of input", parse=parse_term)


def test_unbalanced_brackets() -> None:
    assert_error('[{features, [\n  {site, "x"]\n]}].', 2, 13, "expected ',' or '}' but found ']'")
    assert_error("[{a, b}.", 1, 8, "expected ',' or ']' but found '.'")
    assert_error("{a, b}}.", 1, 7, "expected '.' but found '}'")
    assert_error("[a, b", 1, 6, "expected ',' or ']' but found end of input")
    assert_error("[a,]. ", 1, 4, "expected a term but found ']'")
    assert_error("#{a => 1.", 1, 9, "expected ',' or '}' but found '.'")


def test_bad_tokens() -> None:
    assert_error("[{pid, <0.42.0>}].", 1, 8, "unexpected character '<'")
    assert_error("[\n  {f, fun erlang:now/0}].", 2, 7, "reserved word 'fun'")
    assert_error("#rec{a = 1}.", 1, 2, "expected '{' after '#' but found atom rec")
    assert_error("[X].", 1, 2, "variables are not allowed: X")
    assert_error("[_ignored].", 1, 2, "variables are not allowed")
    assert_error("[a | b].", 1, 4, "unexpected character '|'")
    assert_error("[16#FG].", 1, 2, "invalid number '16#FG'")
    assert_error("[1.0e].", 1, 2, "invalid number '1.0e'")
    assert_error("[12abc].", 1, 2, "invalid number '12abc'")
    assert_error("[1.0e999].", 1, 2, "invalid number")
    assert_error('"\\x{110000}".', 1, 2, "invalid escape sequence")
    assert_error('"\\xg".', 1, 2, "invalid escape sequence")
    assert_error("[a].[b].", 1, 4, "'.' must be followed by whitespace")
    assert_error("- a.", 1, 3, "expected a number after '-' but found atom a")
    assert_error("<<97>>.", 1, 3, "expected a string but found integer 97")
    assert_error('<<"x"/latin1>>.', 1, 7, "expected utf8 but found atom latin1")
    assert_error("#{a := 1}.", 1, 5, "unexpected character ':'")


def test_nesting_limit() -> None:
    deep = "[" * 100 + "]" * 100 + "."
    assert len(repr(parse_term(deep))) == 200
    assert_error("\n" + "[" * 101 + "]" * 101 + ".", 2, 101, "nested more than 100 deep")


def test_map_key_problems() -> None:
    assert_error("#{a => 1,\n  a => 2}.", 2, 3, "duplicate map key")
    assert_error("#{[a] => 1}.", 1, 3, "map key is not hashable")


def test_trailing_garbage() -> None:
    assert_error(
        "[a]. b.\n", 1, 6, "expected end of input after '.' but found atom b", parse=parse_term
    )
    assert_error("[a].\n\n  junk", 3, 7, "expected '.' but found end of input")
    assert_error("[a] junk.", 1, 5, "expected '.' but found atom junk")
    assert_error("[a]. )", 1, 6, "unexpected character ')'")


def test_path_is_optional() -> None:
    with pytest.raises(ErlangTermError) as info:
        parse_terms("\n  [a")
    assert info.value.path is None
    assert str(info.value) == "2:5: expected ',' or ']' but found end of input"
