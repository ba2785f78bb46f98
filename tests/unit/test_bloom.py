"""Bloom filters: accuracy, sizing, growth and persistence.

Every statistical test is deterministic: keys are fixed strings (``user-<i>``
inserted, ``absent-<i>`` queried), so a failure is reproducible, not flaky.
"""

from __future__ import annotations

import itertools
import math

import mmh3
import pytest

from kimball_grpc.core.bloom import (
    GROWTH_FACTOR,
    TIGHTENING_RATIO,
    BloomSlice,
    FixedBloomFilter,
    ScalableBloomFilter,
    SliceState,
    hash_key,
    key_hashes,
    optimal_bits,
    optimal_hashes,
)
from kimball_grpc.core.counter_config import DEFAULT_RULE, FilterType

USERS = 100_000
QUERIES = 400_000
FP_TOLERANCE = 1.2  # measured false-positive rate may be at most 1.2x the configured one


@pytest.fixture(scope="module")
def users() -> list[tuple[int, int]]:
    return [hash_key(f"user-{i}") for i in range(USERS)]


@pytest.fixture(scope="module")
def absent() -> list[tuple[int, int]]:
    """Keys never inserted anywhere in this module."""
    return [hash_key(f"absent-{i}") for i in range(QUERIES)]


@pytest.fixture(scope="module")
def default_grown(users):
    """The default counter filter fed every user twice in a row, as a live counter would be.

    Returns the filter, how many first sightings counted and how many repeats counted.
    """
    f = DEFAULT_RULE.new_filter()
    counted = repeats_counted = 0
    for h in users:
        counted += f.add_if_absent(h)
        repeats_counted += f.add_if_absent(h)
    return f, counted, repeats_counted


def fp_rate(f, queries) -> float:
    return sum(1 for q in queries if q in f) / len(queries)


def assert_false_positive_rate(measured: float, p: float, what: str) -> None:
    """``measured`` is at most FP_TOLERANCE times the configured rate ``p``."""
    assert measured <= FP_TOLERANCE * p, (
        f"{what}: measured FP {measured:.6f} = {measured / p:.3f}x configured"
    )


def optimum_bits(n: int, p: float) -> float:
    return -n * math.log(p) / math.log(2) ** 2


# --- hashing and sizing -------------------------------------------------------------


def test_hash_key_is_128_bit_murmur3():
    h = hash_key("user-1")
    assert h.digest == mmh3.hash_bytes("user-1")
    assert len(h.digest) == 16
    assert h == hash_key("user-1")
    assert hash_key("user-2") != h


@pytest.mark.parametrize(
    ("n", "p"),
    [(100, 0.01), (1_000, 0.001), (10_000, 0.01), (100_000, 0.01), (100_000, 0.001), (5_000, 0.2)],
)
def test_fixed_filter_bits_and_hashes_are_optimal(n, p):
    m_opt = optimum_bits(n, p)
    assert abs(optimal_bits(n, p) - m_opt) <= 0.01 * m_opt
    (state,) = FixedBloomFilter(n, p).slice_states()
    assert abs(state.bits - m_opt) <= 0.01 * m_opt
    assert state.hashes == round(state.bits / n * math.log(2))
    assert state.hashes == round(m_opt / n * math.log(2))
    assert state.hashes == optimal_hashes(state.bits, n)
    assert len(state.data) == (state.bits + 7) // 8


def test_scalable_slices_are_each_optimal_for_their_capacity_and_error():
    f = ScalableBloomFilter(16, 0.001)
    for i in range(5_000):
        f.add_new(hash_key(f"grow-{i}"))
    states = f.slice_states()
    assert len(states) > 5
    for s in states:
        m_opt = optimum_bits(s.capacity, s.error_probability)
        assert abs(s.bits - m_opt) <= 0.01 * m_opt
        assert s.hashes == round(s.bits / s.capacity * math.log(2))


# --- fixed filters ------------------------------------------------------------------


def test_fixed_filter_has_no_false_negatives_even_past_capacity():
    f = FixedBloomFilter(1_000, 0.01)
    keys = [hash_key(f"fn-{i}") for i in range(3_000)]
    for i, h in enumerate(keys):
        f.add_new(h)
        if i % 97 == 0:
            assert all(k in f for k in keys[: i + 1])
    assert all(k in f for k in keys)
    assert f.items == 3_000


def test_fixed_filter_keeps_accepting_past_capacity_and_degrades(absent):
    f = FixedBloomFilter(1_000, 0.01)
    for i in range(3_000):
        f.add_new(hash_key(f"past-{i}"))
    assert f.nbytes == FixedBloomFilter(1_000, 0.01).nbytes  # never grows
    assert fp_rate(f, absent[:20_000]) > 0.05  # as configured: fixed means fixed


@pytest.mark.slow
@pytest.mark.parametrize("p", [0.01, 0.001])
def test_fixed_filter_false_positive_rate_at_capacity(users, absent, p):
    f = FixedBloomFilter(USERS, p)
    for h in users:
        f.add_new(h)
    what = f"FixedBloomFilter({USERS}, {p}) at capacity, {len(absent)} queries"
    assert_false_positive_rate(fp_rate(f, absent), p, what)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("capacity", "p"), [(16, 0.01), (16, 0.001), (16, 0.0002), (64, 0.001), (1_000, 0.001)]
)
def test_small_fixed_filter_false_positive_rate_at_capacity(capacity, p):
    """Small filters too: a rule may say size => 16, and (16, 0.0002) is the first slice
    of the default scalable filter. Averaged over many filters, since a small filter's
    rate varies a lot with its contents. An ideal Bloom filter (independent uniform bit
    positions) of these sizes has an exact expected rate of 1.01-1.08x p.
    """
    # Enough queries to expect ~600 false positives: the count's noise is then ~4%, well
    # inside the 20% margin (with ~100 expected, an ideal filter fails by chance).
    per_trial = 1_000
    trials = math.ceil(600 / (p * per_trial))
    hits = 0
    for t in range(trials):
        f = FixedBloomFilter(capacity, p)
        for i in range(capacity):
            f.add_new(hash_key(f"small-{t}-{i}"))
        hits += sum(1 for q in range(per_trial) if hash_key(f"query-{t}-{q}") in f)
    what = f"FixedBloomFilter({capacity}, {p}) at capacity, {trials} filters x {per_trial} queries"
    assert_false_positive_rate(hits / (trials * per_trial), p, what)


# --- scalable filters ---------------------------------------------------------------


def test_default_rule_is_a_small_scalable_filter():
    f = DEFAULT_RULE.new_filter()
    assert isinstance(f, ScalableBloomFilter)
    assert DEFAULT_RULE.filter_type is FilterType.SCALABLE
    assert f.error_probability == 0.001
    assert f.slice_count == 1
    assert f.nbytes <= 64  # a quiet event costs a few dozen bytes


@pytest.mark.slow
def test_unique_count_within_one_percent_for_100k_distinct_users(default_grown, users):
    f, counted, repeats_counted = default_grown
    assert abs(counted - USERS) <= 0.01 * USERS, f"counted {counted} of {USERS}"
    assert counted == f.items
    assert repeats_counted == 0
    # A second full pass: every key is a repeat, none counts (and none is missing).
    assert not any(f.add_if_absent(h) for h in users)
    assert f.items == counted


@pytest.mark.slow
def test_default_filter_grown_6250x_keeps_compound_false_positive_rate(default_grown, absent):
    f, _, _ = default_grown
    p = f.error_probability
    assert f.slice_count == 13  # 16 * (2**13 - 1) >= 100,000 > 16 * (2**12 - 1)
    queries = absent[:200_000]
    what = f"default ScalableBloomFilter(16, {p}) grown to {f.items}, {len(queries)} queries"
    assert_false_positive_rate(fp_rate(f, queries), p, what)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("initial", "n", "p"),
    [
        (1_000, 100_000, 0.01),
        (1_000, 100_000, 0.001),
        (16, 1_600, 0.01),
        (16, 1_600, 0.001),
    ],
)
def test_scalable_filter_grown_100x_keeps_compound_false_positive_rate(
    users, absent, initial, n, p
):
    f = ScalableBloomFilter(initial, p)
    for h in users[:n]:
        f.add_new(h)
    assert f.slice_count > 1
    queries = absent[:200_000]
    what = f"ScalableBloomFilter({initial}, {p}) grown to {n}, {len(queries)} queries"
    assert_false_positive_rate(fp_rate(f, queries), p, what)


def test_scalable_filter_adds_slices_as_it_grows_and_tightens_its_error():
    p = 0.001
    f = ScalableBloomFilter(16, p)
    keys = [hash_key(f"slices-{i}") for i in range(1_600)]
    for h in keys[:16]:
        f.add_new(h)
    assert f.slice_count == 1
    small = f.nbytes
    f.add_new(keys[16])
    assert f.slice_count == 2
    assert f.nbytes > small
    for h in keys[17:]:
        f.add_new(h)
    assert f.items == 1_600
    assert f.slice_count == 7  # 16 * (2**7 - 1) >= 1,600 > 16 * (2**6 - 1)

    states = f.slice_states()
    assert [s.capacity for s in states] == [16 * GROWTH_FACTOR**i for i in range(7)]
    errors = [s.error_probability for s in states]
    for i, e in enumerate(errors):
        assert e == pytest.approx(p * (1 - TIGHTENING_RATIO) * TIGHTENING_RATIO**i)
    assert all(later < earlier for earlier, later in itertools.pairwise(errors))
    assert sum(errors) < p  # the compound bound
    assert [s.items for s in states[:-1]] == [s.capacity for s in states[:-1]]
    assert sum(s.items for s in states) == 1_600
    assert all(h in f for h in keys)


@pytest.mark.parametrize(("initial", "p"), [(16, 0.001), (100, 0.05), (1, 0.5)])
def test_scalable_filter_has_no_false_negatives(initial, p):
    f = ScalableBloomFilter(initial, p)
    keys = [hash_key(f"sfn-{initial}-{i}") for i in range(5_000)]
    for i, h in enumerate(keys):
        f.add_if_absent(h)
        assert h in f
        if i % 499 == 0:
            assert all(k in f for k in keys[: i + 1])
    assert all(k in f for k in keys)


def test_add_if_absent_reports_new_keys_and_counts_items():
    for f in (FixedBloomFilter(100, 0.01), ScalableBloomFilter(4, 0.01)):
        a, b = hash_key("a"), hash_key("b")
        assert f.add_if_absent(a) is True
        assert f.add_if_absent(a) is False
        assert f.add_if_absent(b) is True
        assert f.items == 2


# --- persistence --------------------------------------------------------------------


def _same_membership(a, b, keys) -> None:
    assert [k in a for k in keys] == [k in b for k in keys]


def test_fixed_filter_round_trips_through_slice_states(absent):
    f = FixedBloomFilter(2_000, 0.01)
    keys = [hash_key(f"rt-{i}") for i in range(1_500)]
    for h in keys:
        f.add_new(h)
    states = f.slice_states()
    g = FixedBloomFilter.from_slice_states(2_000, 0.01, states)
    assert g.slice_states() == states
    assert g.items == f.items == 1_500
    assert g.nbytes == f.nbytes
    _same_membership(f, g, keys + absent[:20_000])
    assert all(k in g for k in keys)
    more = [hash_key(f"rt-more-{i}") for i in range(500)]
    assert [f.add_if_absent(h) for h in more] == [g.add_if_absent(h) for h in more]
    assert g.slice_states() == f.slice_states()


@pytest.mark.parametrize("inserted", [1, 16, 17, 48, 49, 1_000])
def test_scalable_filter_round_trips_through_slice_states(absent, inserted):
    """Including exactly at a slice boundary (16, 48): the next key must grow the copy too."""
    f = ScalableBloomFilter(16, 0.001)
    keys = [hash_key(f"srt-{i}") for i in range(inserted)]
    for h in keys:
        f.add_new(h)
    states = f.slice_states()
    assert all(isinstance(s, SliceState) for s in states)
    g = ScalableBloomFilter.from_slice_states(16, 0.001, states)
    assert g.slice_states() == states
    assert [s.data for s in g.slice_states()] == [s.data for s in states]
    assert (g.items, g.slice_count, g.nbytes) == (f.items, f.slice_count, f.nbytes)
    _same_membership(f, g, keys + absent[:20_000])
    more = [hash_key(f"srt-more-{i}") for i in range(200)]
    assert [f.add_if_absent(h) for h in more] == [g.add_if_absent(h) for h in more]
    assert g.slice_states() == f.slice_states()
    assert g.slice_count == f.slice_count


def test_restoring_bad_slice_states_is_refused():
    f = ScalableBloomFilter(16, 0.001)
    with pytest.raises(ValueError):
        ScalableBloomFilter.from_slice_states(16, 0.001, [])
    with pytest.raises(ValueError):
        FixedBloomFilter.from_slice_states(16, 0.001, f.slice_states() * 2)
    (state,) = f.slice_states()
    truncated = SliceState(
        state.capacity,
        state.error_probability,
        state.bits,
        state.hashes,
        state.items,
        state.data[:-2],
    )
    with pytest.raises(ValueError):
        ScalableBloomFilter.from_slice_states(16, 0.001, [truncated])


def test_bloom_slice_rejects_wrong_sized_array():
    from bitarray import bitarray

    with pytest.raises(ValueError):
        BloomSlice(100, 7, bitarray(99))


@pytest.mark.parametrize("hashes", [0, -1, 4097])
def test_bloom_slice_rejects_a_number_of_hashes_out_of_range(hashes):
    with pytest.raises(ValueError, match="hashes"):
        BloomSlice(100, hashes)


def test_key_hashes_of_digests_end_to_end_are_those_of_each_key() -> None:
    keys = [hash_key(f"user-{i}") for i in range(5)]
    unpacked = key_hashes(b"".join(k.digest for k in keys))
    assert unpacked == keys
    assert all(type(k.digest) is bytes for k in unpacked)
    assert key_hashes(b"") == []


def test_key_hashes_refuses_a_partial_digest() -> None:
    with pytest.raises(ValueError, match="16-byte digests"):
        key_hashes(bytes(33))
