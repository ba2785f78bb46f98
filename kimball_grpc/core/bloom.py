"""Bloom filters: fixed-size and scalable (Almeida et al. 2007), persistable.

Keys are hashed once with 128-bit MurmurHash3 (``hash_key``); every filter and
every slice derives its bit positions from that one hash, so an event that
updates several counters pays for hashing once.

Positions: the first four are the hash's four 32-bit words, as with
independent hash functions. In a large slice the rest come from double hashing
(``words[0] + i * high``, with the hash's high 64-bit half). In a small slice
(up to 64 Kibit) double hashing has too few distinct patterns (measured at 1.4x
to 2x the target false-positive rate at a few hundred bits), so there the rest
are more independent words: MurmurHash3 of the hash (``KeyHash.stretch``).
A membership test stops at the first clear bit, so an absent key, the
common case in a scalable filter's older slices, costs about two probes per slice.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass
from functools import cache

import mmh3
from bitarray import bitarray

LN2_SQUARED = math.log(2) ** 2

# Scalable filters grow by this factor and tighten each new slice's error by
# this ratio; Almeida et al. recommend r in [0.8, 0.9] for s = 2.
GROWTH_FACTOR = 2
TIGHTENING_RATIO = 0.8

# Positions are 32-bit words modulo the slice size, so a slice holds at most 2**32 bits.
MAX_SLICE_BITS = 1 << 32

_HALVES = struct.Struct("<2Q")
_hash_bytes = mmh3.hash_bytes
# Slices up to this many bits take independent positions (see the module docstring).
SMALL_SLICE_BITS = 1 << 16


class KeyHash:
    """A key's 128-bit MurmurHash3 (what is stored), split the ways positions need it."""

    __slots__ = ("digest", "high", "words")

    def __init__(self, digest: bytes) -> None:
        self.digest = digest
        self.words: tuple[int, ...] = _words_format(1).unpack(digest)
        self.high: int = _HALVES.unpack(digest)[1]

    @property
    def low(self) -> int:
        return _HALVES.unpack(self.digest)[0]

    def stretch(self, count: int) -> tuple[int, ...]:
        """At least ``count`` 32-bit words: the hash's own four, then MurmurHash3 of the hash."""
        words = self.words
        if len(words) < count:
            digest = self.digest
            data = digest
            for seed in range(1, -(-count // 4)):
                data += _hash_bytes(digest, seed)
            words = self.words = _words_format(len(data) // 16).unpack(data)
        return words

    def __eq__(self, other: object) -> bool:
        return isinstance(other, KeyHash) and self.digest == other.digest

    def __hash__(self) -> int:
        return hash(self.digest)

    def __repr__(self) -> str:
        return f"KeyHash({self.digest.hex()})"


@cache
def _words_format(blocks: int) -> struct.Struct:
    return struct.Struct(f"<{4 * blocks}I")


def hash_key(key: str) -> KeyHash:
    """The 128-bit MurmurHash3 (x64 variant) of ``key``."""
    return KeyHash(mmh3.hash_bytes(key))


def key_hashes(digests: bytes) -> list[KeyHash]:
    """The ``KeyHash`` of each 16-byte digest of ``digests``, end to end (a log entry's
    users): the words of all of them unpacked in two calls instead of two per key."""
    count, extra = divmod(len(digests), 16)
    if extra:
        raise ValueError(f"{len(digests)} bytes is not a whole number of 16-byte digests")
    words = _words_format(count).unpack(digests)
    highs = struct.unpack(f"<{2 * count}Q", digests)
    new = KeyHash.__new__
    out = []
    for i in range(count):
        key = new(KeyHash)
        key.digest = digests[16 * i : 16 * i + 16]
        key.words = words[4 * i : 4 * i + 4]
        key.high = highs[2 * i + 1]
        out.append(key)
    return out


def optimal_bits(capacity: int, error_probability: float) -> int:
    """m = -n ln p / (ln 2)^2, rounded up."""
    return max(1, math.ceil(-capacity * math.log(error_probability) / LN2_SQUARED))


def optimal_hashes(bits: int, capacity: int) -> int:
    """k = (m / n) ln 2, rounded, at least 1."""
    return max(1, round(bits / capacity * math.log(2)))


def first_slice_error_probability(error_probability: float) -> float:
    """A scalable filter's first slice error: p (1 - r), so that all slices sum to p."""
    return error_probability * (1 - TIGHTENING_RATIO)


def max_capacity(error_probability: float) -> int:
    """The most keys one slice can be sized for at this error (it holds MAX_SLICE_BITS)."""
    return math.floor(MAX_SLICE_BITS * LN2_SQUARED / -math.log(error_probability))


class BloomSlice:
    """One plain Bloom filter: ``bits`` bits, ``hashes`` positions per key."""

    __slots__ = ("array", "bits", "hashes")

    def __init__(self, bits: int, hashes: int, array: bitarray | None = None) -> None:
        if not 0 < bits <= MAX_SLICE_BITS:
            raise ValueError(f"a slice has 1 to {MAX_SLICE_BITS} bits, not {bits}")
        self.bits = bits
        self.hashes = hashes
        if array is None:
            array = bitarray(bits)
            array.setall(0)
        elif len(array) != bits:
            raise ValueError(f"bit array has {len(array)} bits, expected {bits}")
        self.array = array

    def contains(self, key_hash: KeyHash) -> bool:
        return self.contains_from(key_hash, 0)

    def contains_from(self, key_hash: KeyHash, start: int) -> bool:
        """Whether every position from the ``start``-th on is set (a caller that probed
        the first ones already skips them)."""
        array = self.array
        m = self.bits
        k = self.hashes
        words = key_hash.words
        # The hash's own words first: most absent keys stop there, before more hashing.
        for i in range(start, k if k < 4 else 4):
            if not array[words[i] % m]:
                return False
        if k <= 4:
            return True
        rest = start if start > 4 else 4
        if m > SMALL_SLICE_BITS:
            # Double hashing: (words[0] + i * high) % m, stepped by high % m (small ints).
            step = key_hash.high % m
            position = (words[0] + rest * step) % m
            for _ in range(rest, k):
                if not array[position]:
                    return False
                position += step
                if position >= m:
                    position -= m
            return True
        if len(words) < k:
            words = key_hash.stretch(k)
        for i in range(rest, k):
            if not array[words[i] % m]:
                return False
        return True

    def add(self, key_hash: KeyHash) -> None:
        array = self.array
        m = self.bits
        k = self.hashes
        words = key_hash.words
        if m > SMALL_SLICE_BITS:
            for word in words[: k if k < 4 else 4]:
                array[word % m] = 1
            if k > 4:
                step = key_hash.high % m
                position = (words[0] + 4 * step) % m
                for _ in range(4, k):
                    array[position] = 1
                    position += step
                    if position >= m:
                        position -= m
            return
        if len(words) < k:
            words = key_hash.stretch(k)
        for i in range(k):
            array[words[i] % m] = 1

    @property
    def nbytes(self) -> int:
        """Bytes of bit storage."""
        return (self.bits + 7) // 8

    def copy(self) -> BloomSlice:
        """An independent copy (the bits copied at C speed)."""
        return BloomSlice(self.bits, self.hashes, self.array.copy())


@dataclass(frozen=True)
class SliceState:
    """Serializable form of one slice."""

    capacity: int
    error_probability: float
    bits: int
    hashes: int
    items: int
    data: bytes


class FixedBloomFilter:
    """A Bloom filter sized once for ``capacity`` keys at ``error_probability``.

    Past capacity it keeps accepting keys and its false-positive rate rises,
    as configured (``bloom_fixed_size``).
    """

    kind = "bloom_fixed_size"
    __slots__ = ("_slice", "capacity", "error_probability", "items")

    def __init__(self, capacity: int, error_probability: float) -> None:
        self.capacity = capacity
        self.error_probability = error_probability
        bits = optimal_bits(capacity, error_probability)
        self._slice = BloomSlice(bits, optimal_hashes(bits, capacity))
        self.items = 0

    def __contains__(self, key_hash: KeyHash) -> bool:
        return self._slice.contains(key_hash)

    def add_new(self, key_hash: KeyHash) -> None:
        """Add a key known to be absent (no membership test)."""
        self._slice.add(key_hash)
        self.items += 1

    def add_if_absent(self, key_hash: KeyHash) -> bool:
        """Add the key; True if it was not (as far as the filter can tell) present."""
        if self._slice.contains(key_hash):
            return False
        self._slice.add(key_hash)
        self.items += 1
        return True

    @property
    def nbytes(self) -> int:
        return self._slice.nbytes

    def copy(self) -> FixedBloomFilter:
        """An independent copy."""
        other = FixedBloomFilter.__new__(FixedBloomFilter)
        other.capacity = self.capacity
        other.error_probability = self.error_probability
        other._slice = self._slice.copy()
        other.items = self.items
        return other

    def slice_states(self) -> list[SliceState]:
        s = self._slice
        return [
            SliceState(
                self.capacity,
                self.error_probability,
                s.bits,
                s.hashes,
                self.items,
                s.array.tobytes(),
            )
        ]

    @classmethod
    def from_slice_states(
        cls, capacity: int, error_probability: float, states: list[SliceState]
    ) -> FixedBloomFilter:
        if len(states) != 1:
            raise ValueError("a fixed filter has exactly one slice")
        f = cls(capacity, error_probability)
        state = states[0]
        f._slice = _restore_slice(state)
        f.items = state.items
        return f


class ScalableBloomFilter:
    """A Bloom filter that grows by adding slices (Almeida et al. 2007).

    Slice i holds ``initial_capacity * GROWTH_FACTOR**i`` keys at error
    ``p * (1 - r) * r**i``, so the compound false-positive rate stays at or
    under ``p`` however far the filter grows, and a quiet counter stays small.
    """

    kind = "bloom_scalable"
    __slots__ = (
        "_capacities",
        "_errors",
        "_last_items",
        "_newest_first",
        "_slices",
        "capacity",
        "error_probability",
        "items",
    )

    def __init__(self, initial_capacity: int, error_probability: float) -> None:
        self.capacity = initial_capacity
        self.error_probability = error_probability
        self._slices: list[BloomSlice] = []
        self._newest_first: list[tuple[bitarray, int, int, int, BloomSlice]] = []
        self._capacities: list[int] = []
        self._errors: list[float] = []
        self._last_items = 0
        self.items = 0
        self._grow()

    def _grow(self) -> None:
        index = len(self._slices)
        capacity = self.capacity * GROWTH_FACTOR**index
        error = first_slice_error_probability(self.error_probability) * TIGHTENING_RATIO**index
        # Past the largest slice a word can address, slices stop growing.
        capacity = min(capacity, max_capacity(error))
        bits = optimal_bits(capacity, error)
        self._add_slice(BloomSlice(bits, optimal_hashes(bits, capacity)))
        self._capacities.append(capacity)
        self._errors.append(error)
        self._last_items = 0

    def _add_slice(self, bloom_slice: BloomSlice) -> None:
        self._slices.append(bloom_slice)
        # The indexes of the second and third probes (the first again in a slice of fewer).
        k = bloom_slice.hashes
        second, third = min(1, k - 1), min(2, k - 1)
        self._newest_first.insert(
            0, (bloom_slice.array, bloom_slice.bits, second, third, bloom_slice)
        )

    def __contains__(self, key_hash: KeyHash) -> bool:
        # Newest first: it is the largest, so a present key is most likely there.
        # The first three probes are inlined: an absent key fails them in about seven
        # slices out of eight (the older ones are half full), without a call.
        words = key_hash.words
        first = words[0]
        for array, bits, second, third, bloom_slice in self._newest_first:
            if (
                array[first % bits]
                and array[words[second] % bits]
                and array[words[third] % bits]
                and bloom_slice.contains_from(key_hash, 3)
            ):
                return True
        return False

    def add_new(self, key_hash: KeyHash) -> None:
        """Add a key known to be absent (no membership test)."""
        if self._last_items >= self._capacities[-1]:
            self._grow()
        self._slices[-1].add(key_hash)
        self._last_items += 1
        self.items += 1

    def add_if_absent(self, key_hash: KeyHash) -> bool:
        """Add the key; True if it was not (as far as the filter can tell) present."""
        if key_hash in self:
            return False
        self.add_new(key_hash)
        return True

    @property
    def slice_count(self) -> int:
        return len(self._slices)

    @property
    def nbytes(self) -> int:
        return sum(s.nbytes for s in self._slices)

    def copy(self) -> ScalableBloomFilter:
        """An independent copy."""
        other = ScalableBloomFilter.__new__(ScalableBloomFilter)
        other.capacity = self.capacity
        other.error_probability = self.error_probability
        other._slices = []
        other._newest_first = []
        for s in self._slices:
            other._add_slice(s.copy())
        other._capacities = list(self._capacities)
        other._errors = list(self._errors)
        other._last_items = self._last_items
        other.items = self.items
        return other

    def slice_states(self) -> list[SliceState]:
        states = []
        for i, s in enumerate(self._slices):
            last = i == len(self._slices) - 1
            items = self._last_items if last else self._capacities[i]
            states.append(
                SliceState(
                    self._capacities[i], self._errors[i], s.bits, s.hashes, items, s.array.tobytes()
                )
            )
        return states

    @classmethod
    def from_slice_states(
        cls, capacity: int, error_probability: float, states: list[SliceState]
    ) -> ScalableBloomFilter:
        if not states:
            raise ValueError("a scalable filter has at least one slice")
        f = cls(capacity, error_probability)
        f._slices = []
        f._newest_first = []
        for state in states:
            f._add_slice(_restore_slice(state))
        f._capacities = [s.capacity for s in states]
        f._errors = [s.error_probability for s in states]
        f._last_items = states[-1].items
        f.items = sum(s.items for s in states)
        return f


BloomFilter = FixedBloomFilter | ScalableBloomFilter


def _restore_slice(state: SliceState) -> BloomSlice:
    array = bitarray()
    array.frombytes(state.data)
    del array[state.bits :]
    return BloomSlice(state.bits, state.hashes, array)
