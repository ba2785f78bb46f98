"""The Bloom filters' bit positions, set and tested in C: the same bits as the Python rule.

The oracle below is the rule of bloom.py's docstring, in Python (the code the C module
replaced): every slice must set exactly its positions. tests/fixtures/bloom/filters.json
holds filters written by that Python code (commit c8d65ab): restored, they answer as they
did; rebuilt from the same keys, they hold the same bytes. Wrong inputs to the C functions
raise and change nothing.
"""

from __future__ import annotations

import base64
import json
import mmap
import struct
import zlib
from pathlib import Path

import mmh3
import pytest
from bitarray import bitarray

from kimball_grpc.core import _bloombits
from kimball_grpc.core.bloom import (
    BloomSlice,
    FixedBloomFilter,
    ScalableBloomFilter,
    SliceState,
    hash_key,
)

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "bloom" / "filters.json"
SMALL_SLICE_BITS = 1 << 16


def oracle_positions(digest: bytes, bits: int, hashes: int) -> list[int]:
    """The positions of a key hash in a slice: its four 32-bit words, then double hashing
    with its high 64-bit half in a large slice, or in a small one the words of MurmurHash3
    of the hash seeded 1, 2, ..."""
    words = list(struct.unpack("<4I", digest))
    high = struct.unpack("<2Q", digest)[1]
    first = [w % bits for w in words[: min(hashes, 4)]]
    if bits > SMALL_SLICE_BITS:
        return first + [(words[0] + i * high) % bits for i in range(4, hashes)]
    seed = 1
    while len(words) < hashes:
        words += struct.unpack("<4I", mmh3.hash_bytes(digest, seed))
        seed += 1
    return first + [w % bits for w in words[4:hashes]]


def bits_set(array: bitarray) -> set[int]:
    return {i for i, bit in enumerate(array) if bit}


@pytest.mark.parametrize(
    ("bits", "hashes"),
    [
        (1, 1),
        (7, 3),
        (300, 4),
        (300, 5),
        (2_876, 7),
        (5_014, 14),  # a small scalable slice: three blocks of stretch
        (SMALL_SLICE_BITS, 10),  # the largest small slice
        (SMALL_SLICE_BITS + 1, 10),  # the smallest large one
        (143_776, 10),
        (143_776, 3),
    ],
)
def test_a_slice_sets_and_tests_exactly_the_rule_s_positions(bits, hashes):
    for i in range(40):
        key = hash_key(f"position-{bits}-{i}")
        expected = set(oracle_positions(key.digest, bits, hashes))
        s = BloomSlice(bits, hashes)
        assert key not in s
        s.add(key)
        assert key in s
        assert bits_set(s.array) == expected
        # Any one position clear: not a member.
        for position in expected:
            s.array[position] = 0
            assert key not in s
            s.array[position] = 1


@pytest.mark.parametrize("bits", [2**32, 2**32 - 5])
def test_the_largest_slices_take_the_rule_s_positions(bits):
    """Positions up to 2**32 - 1, 512 MiB into the buffer. The buffer is an anonymous
    mapping (the C functions take any writable buffer): only the pages written are ever
    allocated."""
    with mmap.mmap(-1, (bits + 7) // 8) as buffer:
        for i in range(5):
            digest = hash_key(f"large-{i}").digest
            expected = oracle_positions(digest, bits, 20)
            assert _bloombits.contains([(buffer, bits, 20)], digest) is False
            _bloombits.add((buffer, bits, 20), digest)
            assert _bloombits.contains([(buffer, bits, 20)], digest) is True
            for position in expected:
                assert buffer[position // 8] & (0x80 >> position % 8)
                buffer[position // 8] = 0
            assert _bloombits.contains([(buffer, bits, 20)], digest) is False


def _restored(entry: dict):
    states = [
        SliceState(
            s["capacity"],
            s["error_probability"],
            s["bits"],
            s["hashes"],
            s["items"],
            zlib.decompress(base64.b64decode(s["data"])),
        )
        for s in entry["slices"]
    ]
    cls = FixedBloomFilter if entry["kind"] == "bloom_fixed_size" else ScalableBloomFilter
    return cls, states


def _answers(f, entry: dict) -> str:
    inserted = range(0, entry["inserted"], entry["queries"]["inserted_every"])
    queries = [f"fixture-user-{i}" for i in inserted]
    queries += [f"fixture-absent-{i}" for i in range(entry["queries"]["absent"])]
    return "".join("1" if hash_key(q) in f else "0" for q in queries)


FILTERS = json.loads(FIXTURE.read_text())


@pytest.mark.parametrize("entry", FILTERS, ids=[f"{e['kind']}-{e['capacity']}" for e in FILTERS])
def test_filters_written_before_the_c_module_answer_and_store_the_same(entry):
    cls, states = _restored(entry)
    restored = cls.from_slice_states(entry["capacity"], entry["error_probability"], states)
    assert _answers(restored, entry) == entry["answers"]
    assert restored.slice_states() == states
    rebuilt = cls(entry["capacity"], entry["error_probability"])
    for i in range(entry["inserted"]):
        rebuilt.add_if_absent(hash_key(f"fixture-user-{i}"))
    assert rebuilt.slice_states() == states


# --- wrong inputs: an exception, nothing changed ------------------------------------------


def _slice(bits: int = 1_000, hashes: int = 7) -> tuple[bitarray, int, int]:
    array = bitarray(bits, "big")
    array.setall(0)
    return (array, bits, hashes)


DIGEST = hash_key("user").digest


@pytest.mark.parametrize(
    ("probe", "error"),
    [
        ((bitarray(992, "big"), 1_000, 7), ValueError),  # 124 bytes: too small
        ((bytes(125), 1_000, 7), BufferError),  # read-only
        (("not an array", 1_000, 7), TypeError),
        ((bitarray(1_000, "big"), 0, 7), ValueError),
        ((bitarray(1_000, "big"), -5, 7), ValueError),
        ((bitarray(1_000, "big"), 2**32 + 1, 7), ValueError),
        ((bitarray(1_000, "big"), 1_000, 0), ValueError),
        ((bitarray(1_000, "big"), 1_000, 4_097), ValueError),
        ((bitarray(1_000, "big"), 1_000, 2**70), ValueError),
        ((bitarray(1_000, "big"), 1_000.0, 7), TypeError),
        ((bitarray(1_000, "big"), 1_000), TypeError),  # too short a tuple
        ([bitarray(1_000, "big"), 1_000, 7], TypeError),  # not a tuple
    ],
)
def test_a_wrong_slice_is_refused_with_an_exception(probe, error):
    with pytest.raises(error):
        _bloombits.add(probe, DIGEST)
    with pytest.raises(error):
        _bloombits.contains([probe], DIGEST)
    with pytest.raises(error):
        _bloombits.insert([probe], DIGEST)


@pytest.mark.parametrize(
    "digest", [DIGEST[:15], DIGEST + b"\0", bytearray(DIGEST), DIGEST.hex(), None, 5]
)
def test_a_wrong_key_hash_is_refused_and_changes_nothing(digest):
    probe = _slice()
    with pytest.raises(TypeError, match="16 bytes"):
        _bloombits.add(probe, digest)
    with pytest.raises(TypeError, match="16 bytes"):
        _bloombits.contains([probe], digest)
    with pytest.raises(TypeError, match="16 bytes"):
        _bloombits.insert([probe], digest)
    assert not probe[0].any()


def test_wrong_slice_lists_and_argument_counts_are_refused():
    probe = _slice()
    with pytest.raises(TypeError):
        _bloombits.contains((probe,), DIGEST)
    with pytest.raises(TypeError):
        _bloombits.insert([], DIGEST)
    with pytest.raises(TypeError):
        _bloombits.insert((probe,), DIGEST)
    with pytest.raises(TypeError):
        _bloombits.add(probe)
    with pytest.raises(TypeError):
        _bloombits.contains([probe], DIGEST, 0)
    assert not probe[0].any()


def test_insert_refused_for_a_later_slice_adds_nothing():
    newest = _slice()
    with pytest.raises(ValueError):
        _bloombits.insert([newest, (bitarray(10, "big"), 1_000, 7)], DIGEST)
    assert not newest[0].any()


def test_insert_adds_to_the_first_slice_only_a_key_no_slice_holds():
    newest, older = _slice(), _slice(500, 5)
    _bloombits.add(older, DIGEST)
    assert _bloombits.insert([newest, older], DIGEST) is False
    assert not newest[0].any()
    other = hash_key("someone else").digest
    assert _bloombits.insert([newest, older], other) is True
    assert bits_set(newest[0]) == set(oracle_positions(other, 1_000, 7))
    assert _bloombits.contains([newest, older], other) is True
