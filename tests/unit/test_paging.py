"""Paging (AIP-158) in the core: page tokens, the order of pages, the answer size limit."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime

import pytest
from support.in_process import weekly_counters

from kimball_grpc.core.counters import counter_key
from kimball_grpc.core.engine import Engine
from kimball_grpc.core.errors import InvalidArgument
from kimball_grpc.core.events import Event, prepare_event
from kimball_grpc.core.limits import MAX_PAGE_SIZE, MAX_PAGE_TOKEN_CHARS
from kimball_grpc.core.paging import (
    ENVELOPE_BYTES,
    AnswerTooLarge,
    itself,
    name_key,
    named_after,
    page,
    page_request,
)
from kimball_grpc.core.records import EventRecord
from kimball_grpc.core.steps import ITEMS_PER_STEP, finish

SCOPE = ("ListThings", "default")


def one_page(
    items, size: int = 0, token: str = "", max_bytes: int = 10**9, scope=SCOPE
) -> tuple[list[str], str]:
    """A page of string ``items``, each item as many bytes as it has characters."""
    request = page_request(scope, size, token)
    ordered = named_after(sorted(items), itself, request.after)
    out: list[str] = []
    token = finish(page(ordered, name_key, request, out, add_name, max_bytes))
    return out, token


def add_name(out: list[str], name: str) -> int:
    out.append(name)
    return len(name)


@pytest.mark.parametrize("count", [0, 1, ITEMS_PER_STEP, 10 * ITEMS_PER_STEP + 3])
def test_a_page_is_built_in_steps_that_let_other_requests_in(count: int) -> None:
    # A whole answer of 200,000 counters takes about a second: the server answers other
    # requests between steps of ITEMS_PER_STEP items.
    names = [f"n{i:06d}" for i in range(count)]
    request = page_request(SCOPE, 0, "")
    out: list[str] = []
    steps = page(iter(names), name_key, request, out, add_name, 10**9)
    pauses = 0
    while True:
        try:
            next(steps)
        except StopIteration as done:
            assert (out, done.value) == (names, "")
            break
        pauses += 1
    assert pauses == count // ITEMS_PER_STEP


def every_page(items, size: int, max_bytes: int = 10**9) -> list[list[str]]:
    """Every page of ``items`` (a callable: read again for each page, as data may grow)."""
    pages, token = [], ""
    while True:
        got, token = one_page(items(), size, token, max_bytes)
        pages.append(got)
        if not token:
            return pages


def test_pages_hold_every_item_once_in_order_and_the_last_has_no_token() -> None:
    names = [f"n{i:03d}" for i in range(25)]
    pages = every_page(lambda: reversed(names), 10)
    assert [len(p) for p in pages] == [10, 10, 5]
    assert [n for p in pages for n in p] == names


def test_a_last_page_that_is_exactly_full_has_no_token() -> None:
    names = [f"n{i}" for i in range(10)]
    assert one_page(names, 10) == (names, "")
    assert every_page(lambda: names, 5) == [names[:5], names[5:]]


def test_no_page_size_is_the_whole_answer_from_the_token_on() -> None:
    names = [f"n{i:02d}" for i in range(30)]
    first, token = one_page(names, 7)
    assert first == names[:7]
    assert one_page(names, 0, token) == (names[7:], "")
    assert one_page(names) == (names, "")
    assert one_page([]) == ([], "")


def test_items_added_while_paging_are_neither_repeated_nor_shift_pages() -> None:
    names = {"b", "d", "f", "h"}
    seen, token = one_page(sorted(names), 2)
    assert seen == ["b", "d"]
    names |= {"a", "c", "e"}  # two behind the cursor, one ahead of it
    rest, token = one_page(sorted(names), 2, token)
    assert (rest, bool(token)) == (["e", "f"], True)
    assert one_page(sorted(names), 2, token) == (["h"], "")


def test_a_page_size_above_the_maximum_is_taken_as_the_maximum() -> None:
    assert page_request(SCOPE, MAX_PAGE_SIZE * 100, "").size == MAX_PAGE_SIZE
    assert page_request(SCOPE, MAX_PAGE_SIZE, "").size == MAX_PAGE_SIZE
    names = [f"n{i:05d}" for i in range(MAX_PAGE_SIZE + 1)]
    got, token = one_page(names, 2**31 - 1)
    assert (len(got), bool(token)) == (MAX_PAGE_SIZE, True)


def test_a_negative_page_size_is_refused_naming_it() -> None:
    with pytest.raises(InvalidArgument) as refused:
        page_request(SCOPE, -1, "")
    assert "page_size" in refused.value.message
    assert refused.value.details == {"page_size": "-1"}


def _encoded(payload: object) -> str:
    return base64.urlsafe_b64encode(json.dumps(payload).encode()).decode().rstrip("=")


@pytest.mark.parametrize(
    "token",
    [
        "not a token!",
        "AAAA",  # base64 of bytes that are not UTF-8 JSON
        _encoded({"a": 1}),
        _encoded(["only-a-scope"]),
        _encoded(["x", 1]),
        _encoded(["x", None]),
        "A" * (MAX_PAGE_TOKEN_CHARS + 1),
        "Ã©Ã©",
        _encoded([[[[]]]]),
    ],
    ids=[
        "text",
        "not-json",
        "object",
        "no-key",
        "number",
        "null",
        "too-long",
        "not-ascii",
        "nested",
    ],
)
def test_a_malformed_token_is_refused_naming_page_token(token: str) -> None:
    with pytest.raises(InvalidArgument) as refused:
        page_request(SCOPE, 10, token)
    assert refused.value.message.startswith("page_token is not a page token")
    assert list(refused.value.details) == ["page_token"]


def test_a_token_of_another_scope_is_refused_naming_page_token() -> None:
    _, token = one_page(["a", "b", "c"], 1)
    assert token
    for other in [("ListThings", "shop"), ("ListOthers", "default"), ("ListThings",)]:
        with pytest.raises(InvalidArgument) as refused:
            page_request(other, 1, token)
        assert "page_token belongs to another request" in refused.value.message
    assert one_page(["a", "b", "c"], 1, token)[0] == ["b"]


def test_a_token_is_opaque_url_safe_text() -> None:
    _, token = one_page(["é/+?&", "z"], 1)
    assert token.isascii() and token.replace("-", "").replace("_", "").isalnum()
    assert "é" not in token


def test_a_page_ends_before_it_would_pass_the_size_limit() -> None:
    names = [f"name{i:02d}" for i in range(20)]  # 6 bytes each
    limit = ENVELOPE_BYTES + 6 * 7 + 3  # room for 7 items
    pages = every_page(lambda: names, 10, max_bytes=limit)
    assert [len(p) for p in pages] == [7, 7, 6]
    assert [n for p in pages for n in p] == names


def test_a_whole_answer_past_the_limit_is_refused_telling_the_client_to_page() -> None:
    names = [f"name{i:02d}" for i in range(20)]
    limit = ENVELOPE_BYTES + 6 * 20
    assert one_page(names, max_bytes=limit) == (names, "")
    with pytest.raises(AnswerTooLarge) as refused:
        one_page(names, max_bytes=limit - 1)
    assert refused.value.grpc_code == "RESOURCE_EXHAUSTED"
    assert "max_response_bytes" in refused.value.message
    assert "page_size" in refused.value.message
    assert refused.value.details == {"limit": "max_response_bytes"}


def test_one_item_larger_than_the_limit_is_refused_even_in_pages() -> None:
    with pytest.raises(AnswerTooLarge, match="one item alone"):
        one_page(["x" * 100], 10, max_bytes=ENVELOPE_BYTES + 99)


def _event(name: str, when: datetime | None = None) -> EventRecord:
    return prepare_event(Event(name, "u1", datetime=when), (2024, 2))


WEEKS = [  # ISO 2022-W52, 2023-W01, 2023-W10, 2024-W02: years and weeks of two digits
    datetime(2022, 12, 30, tzinfo=UTC),
    datetime(2023, 1, 2, tzinfo=UTC),
    datetime(2023, 3, 6, tzinfo=UTC),
    datetime(2024, 1, 10, tzinfo=UTC),
]


def weekly_engine(names: list[str]) -> Engine:
    engine = Engine(weekly_counters("^w", 100, 0.01))
    for name in names:
        for when in WEEKS:
            engine.apply(_event(name, when))
    return engine


def test_counter_keys_order_counters_as_analytics_lists_them() -> None:
    engine = weekly_engine(["zeta", "w2", "alpha", "w10", "w1"])
    listed = engine.counters("default")
    assert len(listed) == 1 + 5 + 3 * 4
    assert sorted(listed, key=counter_key) == listed
    assert list(engine.counters_after("default", "", None)) == listed


@pytest.mark.parametrize(
    "after",
    [
        None,
        ("0",),
        ("1",),
        ("1", ""),
        ("1", "w"),
        ("1", "w1"),
        ("1", "w1", "x"),
        ("1", "zz"),
        ("2",),
        ("2", "w10"),
        ("2", "w10", "2023"),
        ("2", "w10", "2023", "01"),
        ("2", "w10", "abc", "-"),
        ("2", "w2", "2024", "02"),
        ("3",),
        ("",),
        ("1\x00",),
    ],
)
@pytest.mark.parametrize("prefix", ["", "w", "w1", "wx", "alpha", "zeta"])
def test_counters_after_a_key_are_those_above_it_in_order(after, prefix: str) -> None:
    engine = weekly_engine(["zeta", "w2", "alpha", "w10", "w1", "w"])
    everything = engine.counters("default")
    expected = [
        c
        for c in everything
        if (after is None or counter_key(c) > after)
        and (not prefix or (c.kind.value != "internal" and c.name.startswith(prefix)))
    ]
    assert list(engine.counters_after("default", prefix, after)) == expected


def test_counters_added_between_reads_take_their_place() -> None:
    engine = weekly_engine(["m", "c"])
    assert [c.name for c in engine.counters_after("default", "", ("1", "c"))] == ["m"]
    for name in ["a", "d", "z", "wa"]:
        engine.apply(_event(name, WEEKS[0]))
    after_c = [c.name for c in engine.counters_after("default", "", ("1", "c"))]
    assert after_c == ["d", "m", "wa", "z", "wa"]
    assert list(engine.counters_after("elsewhere", "", None)) == []
