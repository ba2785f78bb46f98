"""Bloom filters: fixed-size and scalable (Almeida et al. 2007), persistable.

Keys are hashed once with 128-bit MurmurHash3 (``hash_key``); every filter and
every slice derives its bit positions from that one hash, so an event that
updates several counters pays for hashing once.

Positions: the first four are the hash's four 32-bit words, as with
independent hash functions. In a large slice the rest come from double hashing
(``words[0] + i * high``, with the hash's high 64-bit half). In a small slice
(up to 64 Kibit) double hashing has too few distinct patterns (measured at 1.4x
to 2x the target false-positive rate at a few hundred bits), so there the rest
are more independent words: MurmurHash3 of the hash, seeded 1, 2, ... (four
words each). A membership test stops at the first clear bit, so an absent key,
the common case in a scalable filter's older slices, costs about two probes per slice.

The positions are tested and set in C (``_bloombits.c``, in place in each slice's
bitarray): the same loops in Python cost several times what the rest of an event
does. A slice is handed to it as the tuple ``(array, bits, hashes)``; the array's bit
order is big-endian (bit i is bit 7 - i % 8 of byte i // 8), as the snapshots store it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import mmh3
from bitarray import bitarray

from kimball_grpc.core._bloombits import add as _add
from kimball_grpc.core._bloombits import contains as _contains
from kimball_grpc.core._bloombits import insert as _insert

LN2_SQUARED = math.log(2) ** 2

# Scalable filters grow by this factor and tighten each new slice's error by
# this ratio; Almeida et al. recommend r in [0.8, 0.9] for s = 2.
GROWTH_FACTOR = 2
TIGHTENING_RATIO = 0.8

# Positions are 32-bit words modulo the slice size, so a slice holds at most 2**32 bits.
MAX_SLICE_BITS = 1 << 32
# The most positions per key a slice may take (far above any optimal count: k = -log2 p).
MAX_HASHES = 4096
# The bit order of every slice's array (see the module docstring).
BIT_ORDER = "big"

DIGEST_BYTES = 16


class KeyHash:
    """A key's 128-bit MurmurHash3: the 16 bytes stored and handed to the filters."""

    __slots__ = ("digest",)

    def __init__(self, digest: bytes) -> None:
        self.digest = digest

    def __eq__(self, other: object) -> bool:
        return isinstance(other, KeyHash) and self.digest == other.digest

    def __hash__(self) -> int:
        return hash(self.digest)

    def __repr__(self) -> str:
        return f"KeyHash({self.digest.hex()})"


def hash_key(key: str) -> KeyHash:
    """The 128-bit MurmurHash3 (x64 variant) of ``key``."""
    return KeyHash(mmh3.hash_bytes(key))


def key_hashes(digests: bytes) -> list[KeyHash]:
    """The ``KeyHash`` of each 16-byte digest of ``digests``, end to end (a log entry's
    users)."""
    if len(digests) % DIGEST_BYTES:
        raise ValueError(f"{len(digests)} bytes is not a whole number of 16-byte digests")
    return [KeyHash(digests[i : i + DIGEST_BYTES]) for i in range(0, len(digests), DIGEST_BYTES)]


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

    __slots__ = ("array", "bits", "hashes", "probe")

    def __init__(self, bits: int, hashes: int, array: bitarray | None = None) -> None:
        if not 0 < bits <= MAX_SLICE_BITS:
            raise ValueError(f"a slice has 1 to {MAX_SLICE_BITS} bits, not {bits}")
        if not 0 < hashes <= MAX_HASHES:
            raise ValueError(f"a slice has 1 to {MAX_HASHES} hashes, not {hashes}")
        self.bits = bits
        self.hashes = hashes
        if array is None:
            array = bitarray(bits, BIT_ORDER)
            array.setall(0)
        elif len(array) != bits:
            raise ValueError(f"bit array has {len(array)} bits, expected {bits}")
        self.array = array
        # What the C functions take: one tuple, no attribute reads per call.
        self.probe = (array, bits, hashes)

    def __contains__(self, key_hash: KeyHash) -> bool:
        return _contains([self.probe], key_hash.digest)

    def add(self, key_hash: KeyHash) -> None:
        _add(self.probe, key_hash.digest)

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
    __slots__ = ("_probes", "_slice", "capacity", "error_probability", "items")

    def __init__(self, capacity: int, error_probability: float) -> None:
        self.capacity = capacity
        self.error_probability = error_probability
        bits = optimal_bits(capacity, error_probability)
        self._set_slice(BloomSlice(bits, optimal_hashes(bits, capacity)))
        self.items = 0

    def _set_slice(self, bloom_slice: BloomSlice) -> None:
        self._slice = bloom_slice
        self._probes = [bloom_slice.probe]

    def __contains__(self, key_hash: KeyHash) -> bool:
        return _contains(self._probes, key_hash.digest)

    def add_new(self, key_hash: KeyHash) -> None:
        """Add a key known to be absent (no membership test)."""
        _add(self._probes[0], key_hash.digest)
        self.items += 1

    def add_if_absent(self, key_hash: KeyHash) -> bool:
        """Add the key; True if it was not (as far as the filter can tell) present."""
        if _insert(self._probes, key_hash.digest):
            self.items += 1
            return True
        return False

    @property
    def nbytes(self) -> int:
        return self._slice.nbytes

    def copy(self) -> FixedBloomFilter:
        """An independent copy."""
        other = FixedBloomFilter.__new__(FixedBloomFilter)
        other.capacity = self.capacity
        other.error_probability = self.error_probability
        other._set_slice(self._slice.copy())
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
        f._set_slice(_restore_slice(state))
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
        # The slices' probes, newest first: it is the largest, so a present key is most
        # likely there.
        self._newest_first: list[tuple[bitarray, int, int]] = []
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
        self._newest_first.insert(0, bloom_slice.probe)

    def __contains__(self, key_hash: KeyHash) -> bool:
        return _contains(self._newest_first, key_hash.digest)

    def add_new(self, key_hash: KeyHash) -> None:
        """Add a key known to be absent (no membership test)."""
        if self._last_items >= self._capacities[-1]:
            self._grow()
        _add(self._newest_first[0], key_hash.digest)
        self._last_items += 1
        self.items += 1

    def add_if_absent(self, key_hash: KeyHash) -> bool:
        """Add the key; True if it was not (as far as the filter can tell) present."""
        if self._last_items < self._capacities[-1]:
            # Room in the newest slice: the test and the add in one call.
            if not _insert(self._newest_first, key_hash.digest):
                return False
            self._last_items += 1
            self.items += 1
            return True
        # Full: a new slice only for a key that is new.
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
    array = bitarray(endian=BIT_ORDER)
    array.frombytes(state.data)
    del array[state.bits :]
    return BloomSlice(state.bits, state.hashes, array)
