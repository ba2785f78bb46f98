"""The original service's stored feature specs, read and written; the Erlang external term
format under them.

Every vector here was written by Erlang/OTP itself (``erlang:term_to_binary``), the
first by the original service's own code (``support.original_state`` says how).
"""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime

import pytest
from support.original_state import ORIGINAL_DATA

from kimball_grpc.codec.erlang_external import ExternalTermError, decode_term, encode_term
from kimball_grpc.codec.erlang_terms import Atom
from kimball_grpc.codec.original_specs import (
    OriginalSpecsError,
    decode_original_specs,
    encode_original_specs,
)
from kimball_grpc.core.feature_flags import FeatureSpec, UserCondition, Variant, check_spec

# The same term as OTP 25's term_to_binary/1 writes it (Latin-1 atoms: ATOM_EXT).
ORIGINAL_DATA_OTP25 = (
    "g3QAAAABZAAMZmVhdHVyZV9tYXBzbAAAAAN0AAAABWQAB2Jvb2xlYW5kAAVmYWxzZWQABG5hbWVtAAAADG5ldy1j"
    "aGVja291dGQAC3JvbGxvdXRfZW5kYmmEjUhkAA1yb2xsb3V0X3N0YXJ0Ymla/wBkAAR1c2VyanQAAAAFZAAHYm9v"
    "bGVhbmQABHRydWVkAARuYW1lbQAAAARiZXRhZAALcm9sbG91dF9lbmRkAAl1bmRlZmluZWRkAA1yb2xsb3V0X3N0"
    "YXJ0ZAAJdW5kZWZpbmVkZAAEdXNlcmwAAAACbAAAAANtAAAABHBsYW5kAAE9bQAAAANwcm9qbAAAAANtAAAAAmlk"
    "ZAACaW5rAAMBAgNqanQAAAAFZAAHYm9vbGVhbmQABWZhbHNlZAAEbmFtZW0AAAADb2ZmZAALcm9sbG91dF9lbmRk"
    "AAl1bmRlZmluZWRkAA1yb2xsb3V0X3N0YXJ0ZAAJdW5kZWZpbmVkZAAEdXNlcmpq"
)
EMPTY = "g2o="  # [], what the original put in a ConfigMap it created
# enabled as the boolean; a float, null and an "in" list of a string and true as values.
ODD_VALUES = (
    "g3QAAAABZAAMZmVhdHVyZV9tYXBzbAAAAAF0AAAABWQAB2Jvb2xlYW5kAAdlbmFibGVkZAAEbmFtZW0AAAABeGQA"
    "C3JvbGxvdXRfZW5kZAAJdW5kZWZpbmVkZAANcm9sbG91dF9zdGFydGQACXVuZGVmaW5lZGQABHVzZXJsAAAAA2wA"
    "AAADbQAAAAFuZAABPUY/+AAAAAAAAGpsAAAAA20AAAABbWQAAT1kAARudWxsamwAAAADbQAAAAFvZAACaW5sAAAA"
    "Am0AAAABYWQABHRydWVqampq"
)
COMPRESSED = (
    "g1AAAADXeNpVjcEKwkAMRNNaEVE/Sbz5GyUlKbRks7LNgp/u0WRB1DmETN6QMQDoCM4zo9XCY8LHJnEzH3uCw5Sz"
    "MKpvrDgJE8GgmDhF6ElwKlkkVxtZHR2rEs+LRuzyIZthsX821I1L9OzaaM+8o7veby9oWr8gBYjaKvJzzgT9ouH7"
    "5tEjViqvrjdhMzYU"
)
# [1 bsl 70, -(1 bsl 40), -5, 70000, 3.25, {a, <<>>}]
NUMBERS = "g2wAAAAGbgkAAAAAAAAAAABAbgYBAAAAAAABYv////tiAAERcEZACgAAAAAAAGgCdwFhbQAAAABq"

EXPECTED = [
    FeatureSpec(
        "new-checkout",
        False,
        datetime(2026, 1, 5, tzinfo=UTC),
        datetime(2026, 2, 5, 12, 30, tzinfo=UTC),
    ),
    FeatureSpec(
        "beta",
        True,
        user=(UserCondition("plan", "=", "pro"), UserCondition("id", "in", [1, 2, 3])),
    ),
    FeatureSpec("off"),
]


@pytest.mark.parametrize("data", [ORIGINAL_DATA, ORIGINAL_DATA_OTP25])
def test_the_originals_configmap_data_is_read(data):
    assert decode_original_specs(data.encode()) == (EXPECTED, [])


def test_specs_are_written_byte_for_byte_as_the_original_wrote_them():
    assert encode_original_specs(EXPECTED) == ORIGINAL_DATA


def test_raw_terms_as_in_a_bucket_and_the_empty_list_are_read():
    raw = base64.b64decode(ORIGINAL_DATA)
    assert decode_original_specs(raw) == (EXPECTED, [])
    assert decode_original_specs(EMPTY.encode()) == ([], [])
    assert decode_original_specs(base64.b64decode(COMPRESSED)) == decode_original_specs(
        ODD_VALUES.encode()
    )


def test_values_as_the_originals_json_library_decoded_them():
    (spec,), problems = decode_original_specs(ODD_VALUES.encode())
    assert problems == []
    assert spec == FeatureSpec(
        "x",
        True,
        user=(
            UserCondition("n", "=", 1.5),
            UserCondition("m", "=", None),
            UserCondition("o", "in", ["a", True]),
        ),
    )
    assert decode_original_specs(encode_original_specs([spec]).encode()) == ([spec], [])


def test_the_earlier_json_form_is_read():
    text = json.dumps(
        [
            {"name": "a", "boolean": True, "rollout_start": 1767571200, "rollout_end": 1767574800},
            {"name": "b", "user": [["country", "in", ["se", "no"]]]},
        ]
    )
    specs, problems = decode_original_specs(text.encode())
    assert problems == []
    assert specs[0].rollout_end == datetime(2026, 1, 5, 1, tzinfo=UTC)
    assert specs[1].user == (UserCondition("country", "in", ["se", "no"]),)


def test_rollouts_are_whole_seconds_never_narrower():
    spec = FeatureSpec(
        "r",
        rollout_start=datetime(2026, 1, 1, 0, 0, 0, 600_000, tzinfo=UTC),
        rollout_end=datetime(2026, 1, 1, 0, 0, 0, 900_000, tzinfo=UTC),
    )
    (read,), _ = decode_original_specs(encode_original_specs([spec]).encode())
    assert read.rollout_start == datetime(2026, 1, 1, tzinfo=UTC)
    assert read.rollout_end == datetime(2026, 1, 1, 0, 0, 1, tzinfo=UTC)


def _data(*maps: dict) -> bytes:
    return encode_term({Atom("feature_maps"): list(maps)})


def _spec_map(name: bytes = b"ok", **fields: object) -> dict:
    return {Atom("name"): name, Atom("boolean"): Atom("true")} | {
        Atom(k): v for k, v in fields.items()
    }


@pytest.mark.parametrize(
    ("bad", "fragment"),
    [
        (_spec_map(b""), "name"),
        (_spec_map(b"\xff"), "not UTF-8"),
        ({Atom("boolean"): Atom("true")}, "name must be a binary"),
        (_spec_map(boolean=Atom("maybe")), "boolean must be true or false"),
        (_spec_map(rollout_start=5), "rollout needs both"),
        (_spec_map(rollout_start=10, rollout_end=5), "after rollout_start"),
        (_spec_map(rollout_start=1.5, rollout_end=5), "whole seconds"),
        (_spec_map(rollout_start=0, rollout_end=10**20), "out of range"),
        (_spec_map(user=[[b"p", Atom(">"), 1]]), "unknown comparator"),
        (_spec_map(user=[[b"p", Atom("in"), 1]]), '"in" needs a list'),
        (_spec_map(user=[[b"p", Atom("=")]]), "[property, comparator, value]"),
        (_spec_map(user=[[b"p", Atom("="), (1, 2)]]), "not a JSON value"),
        (_spec_map(user=[[b"p", Atom("="), Atom("maybe")]]), "the atom maybe"),
        (_spec_map(user=Atom("none")), "user must be a list"),
        (b"not a map", "a spec must be a map"),
        (_spec_map(rollout_percentage=101), "rollout_percentage must be 0 to 100"),
        (_spec_map(rollout_percentage=b"30"), "rollout_percentage must be a whole number"),
        (_spec_map(variants=[{Atom("name"): b"v", Atom("weight"): -1}]), "weight must be 0"),
        (_spec_map(variants=Atom("none")), "variants must be a list"),
    ],
)
def test_an_unusable_spec_is_left_out_and_named_the_rest_kept(bad, fragment):
    specs, problems = decode_original_specs(_data(_spec_map(b"kept"), bad))
    assert [s.name for s in specs] == ["kept"]
    assert len(problems) == 1 and "spec 2" in problems[0] and fragment in problems[0]


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        (b"", "empty"),
        (b"%%% not base64", "neither"),
        (b"[1, 2", "not valid JSON"),
        (base64.b64encode(b"\x83\x77"), "not a readable Erlang term"),
        (encode_term(Atom("nothing")), "no list of feature specs"),
        (encode_term({Atom("other"): []}), "no list of feature specs"),
        (encode_term({Atom("bloom"): (Atom("bloom"),), Atom("value"): {}}), "counters cannot"),
    ],
)
def test_data_holding_no_set_of_specs_is_refused(data, fragment):
    with pytest.raises(OriginalSpecsError, match=fragment):
        decode_original_specs(data)


def test_numbers_and_tuples_as_erlang_writes_them():
    term = [1 << 70, -(1 << 40), -5, 70000, 3.25, (Atom("a"), b"")]
    assert decode_term(base64.b64decode(NUMBERS)) == term
    assert encode_term(term) == base64.b64decode(NUMBERS)


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        (b"", "version byte"),
        (b"\x83", "ends early"),
        (b"\x83a\x01\x00", "1 bytes after the term"),
        (b"\x83X", "unsupported term tag 88"),  # a pid
        (b"\x83m\xff\xff\xff\xffab", "more than the bytes left"),
        (b"\x83l\x00\x00\x00\x01a\x01a\x02", "improper list"),
        (b"\x83t\x00\x00\x00\x01ja\x01", "a list or a map"),
        (b"\x83" + b"l\x00\x00\x00\x01" * 200 + b"j" * 201, "nested deeper"),
        (b"\x83P\xff\xff\xff\xff", "claims"),
        (b"\x83P\x00\x00\x00\x05garbage", "does not inflate"),
        (b"\x83n\x01\x00", "ends early"),
    ],
)
def test_bad_terms_are_refused_naming_the_offset(data, fragment):
    with pytest.raises(ExternalTermError, match=fragment):
        decode_term(data)


@pytest.mark.parametrize("value", ["text", True, None, object()])
def test_values_with_no_erlang_term_are_refused(value):
    with pytest.raises(TypeError):
        encode_term([value])


def test_percentage_rollouts_and_variants_are_kept_by_the_configmap_form():
    spec = check_spec(
        FeatureSpec(
            "pricing",
            rollout_percentage=30,
            stickiness="org_id",
            group_id="g",
            variants=(Variant("monthly", 1, '{"x": 1}'), Variant("yearly", 3)),
        )
    )
    plain = FeatureSpec("plain", True)
    assert decode_original_specs(encode_original_specs([spec, plain]).encode()) == (
        [spec, plain],
        [],
    )
    written = decode_term(base64.b64decode(encode_original_specs([plain])))
    keys = {key.name for key in written[Atom("feature_maps")][0]}
    assert keys == {"name", "boolean", "rollout_start", "rollout_end", "user"}  # as before
