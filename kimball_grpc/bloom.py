"""Bloom filters: fixed-size and scalable (Almeida et al. 2007), persistable.

Keys are hashed once with 128-bit MurmurHash3 (``hash_key``); every filter and
every slice derives its bit positions from that one hash, so an event that
updates several counters pays for hashing once.

In a large slice the k positions are two arithmetic progressions (double
hashing): ``start + i * step``, which bitarray sets or counts in one C call per
progression (a stepped slice). A small slice has too few distinct progressions
for that: its false-positive rate was measured at 1.4x to 2x the target. There
each position comes from its own 32-bit word of the stretched hash
(``KeyHash.words``), as with independent hash functions.
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

# Slices below this many bits use independent positions (see the module docstring).
SMALL_SLICE_BITS = 1 << 14


class KeyHash:
    """A key's 128-bit MurmurHash3 as two unsigned 64-bit halves (what is stored).

    ``words`` stretches it into more independent bits for small slices, once
    per key however many counters the key touches.
    """

    __slots__ = ("_words", "high", "low")

    def __init__(self, low: int, high: int) -> None:
        self.low = low
        self.high = high
        self._words: tuple[int, ...] = ()

    def words(self, count: int) -> tuple[int, ...]:
        """At least ``count`` 32-bit words derived from the hash."""
        words = self._words
        if len(words) < count:
            data = self.low.to_bytes(8, "little") + self.high.to_bytes(8, "little")
            blocks = -(-count // 4)
            stretched = b"".join(mmh3.hash_bytes(data, seed) for seed in range(1, blocks + 1))
            words = self._words = _words_format(blocks).unpack(stretched)
        return words

    def __eq__(self, other: object) -> bool:
        return isinstance(other, KeyHash) and (self.low, self.high) == (other.low, other.high)

    def __hash__(self) -> int:
        return hash((self.low, self.high))

    def __repr__(self) -> str:
        return f"KeyHash({self.low:#018x}, {self.high:#018x})"


@cache
def _words_format(blocks: int) -> struct.Struct:
    return struct.Struct(f"<{4 * blocks}I")


def hash_key(key: str) -> KeyHash:
    """The 128-bit MurmurHash3 of ``key``."""
    return KeyHash(*mmh3.hash64(key, signed=False))


def optimal_bits(capacity: int, error_probability: float) -> int:
    """m = -n ln p / (ln 2)^2, rounded up."""
    return max(1, math.ceil(-capacity * math.log(error_probability) / LN2_SQUARED))


def optimal_hashes(bits: int, capacity: int) -> int:
    """k = (m / n) ln 2, rounded, at least 1."""
    return max(1, round(bits / capacity * math.log(2)))


class BloomSlice:
    """One plain Bloom filter: ``bits`` bits, ``hashes`` positions per key."""

    __slots__ = (
        "_first",
        "_independent",
        "_second",
        "_span_first",
        "_span_second",
        "array",
        "bits",
        "hashes",
    )

    def __init__(self, bits: int, hashes: int, array: bitarray | None = None) -> None:
        self.bits = bits
        self.hashes = hashes
        self._independent = bits < SMALL_SLICE_BITS
        self._first = (hashes + 1) // 2
        self._second = hashes - self._first
        self._span_first = max(1, bits // self._first)
        self._span_second = max(1, bits // max(1, self._second))
        if array is None:
            array = bitarray(bits)
            array.setall(0)
        elif len(array) != bits:
            raise ValueError(f"bit array has {len(array)} bits, expected {bits}")
        self.array = array

    def _progressions(self, key_hash: KeyHash) -> list[tuple[int, int, int]]:
        """The (start, stop, step) slices covering this key's positions."""
        h1 = key_hash.low
        h2 = key_hash.high
        m = self.bits
        out = _progression(m, h1 % m, 1 + (h1 >> 32) % self._span_first, self._first)
        if self._second:
            out += _progression(m, h2 % m, 1 + (h2 >> 32) % self._span_second, self._second)
        return out

    def contains(self, key_hash: KeyHash) -> bool:
        array = self.array
        if self._independent:
            m = self.bits
            words = key_hash.words(self.hashes)
            for i in range(self.hashes):  # noqa: SIM110 - hot path: no generator
                if not array[words[i] % m]:
                    return False
            return True
        count = array.count
        total = 0
        for start, stop, step in self._progressions(key_hash):
            total += count(1, start, stop, step)
        return total == self.hashes

    def add(self, key_hash: KeyHash) -> None:
        array = self.array
        if self._independent:
            m = self.bits
            words = key_hash.words(self.hashes)
            for i in range(self.hashes):
                array[words[i] % m] = 1
            return
        for start, stop, step in self._progressions(key_hash):
            array[start:stop:step] = 1

    @property
    def nbytes(self) -> int:
        """Bytes of bit storage."""
        return (self.bits + 7) // 8


def _progression(m: int, start: int, step: int, count: int) -> list[tuple[int, int, int]]:
    """Slices for positions start + i*step mod m, i < count; step <= m/count wraps once at most."""
    stop = start + count * step
    if stop <= m:
        return [(start, stop, step)]
    before_wrap = -(-(m - start) // step)
    restart = start + before_wrap * step - m
    return [(start, m, step), (restart, restart + (count - before_wrap) * step, step)]


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

    def __init__(self, initial_capacity: int, error_probability: float) -> None:
        self.capacity = initial_capacity
        self.error_probability = error_probability
        self._slices: list[BloomSlice] = []
        self._capacities: list[int] = []
        self._errors: list[float] = []
        self._last_items = 0
        self.items = 0
        self._grow()

    def _grow(self) -> None:
        index = len(self._slices)
        capacity = self.capacity * GROWTH_FACTOR**index
        error = self.error_probability * (1 - TIGHTENING_RATIO) * TIGHTENING_RATIO**index
        bits = optimal_bits(capacity, error)
        self._slices.append(BloomSlice(bits, optimal_hashes(bits, capacity)))
        self._capacities.append(capacity)
        self._errors.append(error)
        self._last_items = 0

    def __contains__(self, key_hash: KeyHash) -> bool:
        # Newest first: it is the largest, so a present key is most likely there.
        for s in reversed(self._slices):  # noqa: SIM110 - hot path: no generator
            if s.contains(key_hash):
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
        f._slices = [_restore_slice(s) for s in states]
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
