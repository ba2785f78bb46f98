"""Names: printable text and emoji are taken; invisible formatting characters only where a
script or an emoji needs them; user ids are opaque and may hold them."""

from __future__ import annotations

import pytest

from kimball_grpc.codec.state_codec import decode_records, encode_records
from kimball_grpc.core.bloom import hash_key
from kimball_grpc.core.errors import InvalidArgument
from kimball_grpc.core.names import check_name, check_text
from kimball_grpc.core.records import EventRecord, GoalRecord

TAKEN = {
    "plain": "checkout_step_2",
    "spaces and accents": "café visité",
    "family emoji (ZWJ between emoji)": "\U0001f468\u200d\U0001f469\u200d\U0001f467",
    "rainbow flag (VS16 before the ZWJ)": "\U0001f3f3\ufe0f\u200d\U0001f308",
    "astronaut with a skin tone": "\U0001f9d1\U0001f3fd\u200d\U0001f680",
    "flag of England (tag sequence)": "\U0001f3f4\U000e0067\U000e0062\U000e0065\U000e006e"
    "\U000e0067\U000e007f",
    "Devanagari ZWJ after a virama": "\u0915\u094d\u200d\u0937",
    "Devanagari ZWNJ after a virama": "\u0915\u094d\u200c\u0937",
    "Persian ZWNJ between letters": "\u0645\u06cc\u200c\u062e\u0648\u0627\u0647\u0645",
}

REFUSED = {
    "zero width space": ("pay\u200bment", "U+200B"),
    "right-to-left override": ("\u202etxt.exe", "U+202E"),
    "soft hyphen": ("pay\u00adment", "U+00AD"),
    "byte order mark": ("\ufeffpayment", "U+FEFF"),
    "word joiner": ("pay\u2060ment", "U+2060"),
    "ZWJ between Latin letters": ("pay\u200dment", "U+200D"),
    "ZWNJ between Latin letters": ("pay\u200cment", "U+200C"),
    "ZWJ at the end of an emoji": ("\U0001f468\u200d", "U+200D"),
    "tags without their flag": ("a\U000e0067\U000e007f", "U+E0067"),
    "a flag's tags never closed": ("\U0001f3f4\U000e0067\U000e0062", "U+E0067"),
    "control character": ("sign\nup", "control characters"),
}


@pytest.mark.parametrize("name", TAKEN.values(), ids=TAKEN.keys())
def test_names_written_with_format_characters_where_they_belong_are_taken(name):
    assert check_name("event_name", name) == name


@pytest.mark.parametrize(("name", "said"), REFUSED.values(), ids=REFUSED.keys())
def test_names_hiding_format_characters_are_refused_naming_field_and_character(name, said):
    with pytest.raises(InvalidArgument) as refused:
        check_name("event_name", name)

    assert refused.value.message.startswith("event_name ")
    assert said in refused.value.message
    assert refused.value.details == {"event_name": repr(name)}


def test_user_ids_are_opaque_and_may_hold_format_characters_but_not_control_ones():
    assert check_text("user_id", "pay\u200bment") == "pay\u200bment"
    with pytest.raises(InvalidArgument, match="control characters"):
        check_text("user_id", "a\x00b")


def test_names_stored_before_format_characters_were_refused_still_load():
    """A log or snapshot written when only control characters were refused must restore."""
    stored = [
        GoalRecord("shop\u200b", "pay\u202ement"),
        EventRecord("shop\u200b", "pay\u200bment", hash_key("u1"), 2024, 10, None, False),
    ]

    for record in stored:
        assert decode_records(encode_records([record])) == [record]
