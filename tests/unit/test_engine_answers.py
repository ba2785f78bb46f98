"""The engine's answers on a known workload are pinned: a change made for speed must
count exactly as before (the same users, the same Bloom filter bits, so the same false
positives too)."""

from __future__ import annotations

import hashlib
import random
from datetime import UTC, datetime, timedelta

from kimball_grpc.core.counter_config import CounterConfig
from kimball_grpc.core.engine import Engine
from kimball_grpc.core.events import Event, prepare_event

# Computed on commit 76475fc (before the speed work of issue 17).
EXPECTED_COUNTS = "44f6fc265f123cb4f94049568ba173542f633eba1a826104589ca94775fcadbd"
EXPECTED_BITS = "05e4b882b904c31bac06771dbe4e5cc85775665a81f15dbfd76fc1c1fc386793"


def _workload_engine() -> Engine:
    """30,000 events of 6,000 users over 12 names (skewed), two of them goals, one
    weekly; a filter small enough to grow many slices and to give false positives."""
    config = CounterConfig.from_mappings(
        [
            {
                "pattern": "^w",
                "type": "bloom_scalable",
                "size": 4,
                "error_probability": 0.05,
                "date_cohort": "weekly",
            },
            {
                "pattern": "^fixed",
                "type": "bloom_fixed_size",
                "size": 300,
                "error_probability": 0.01,
            },
        ]
    )
    engine = Engine(config)
    rng = random.Random(17)
    names = ["w_visit", "fixed_view", *(f"e{i}" for i in range(8)), "buy", "signup"]
    start = datetime(2026, 1, 5, tzinfo=UTC)
    for i in range(30_000):
        user = f"u{int(6_000 * rng.random() ** 2)}"
        name = names[min(int(len(names) * rng.random() ** 1.5), len(names) - 1)]
        when = start + timedelta(hours=i // 100)
        value = round(rng.random() * 10, 2) if i % 7 == 0 else None
        event = Event(
            name, user, "ns" if i % 5 else "other", value, when, name in ("buy", "signup")
        )
        engine.apply_event(prepare_event(event, (2026, 1)))
    return engine


def _fingerprints(engine: Engine) -> tuple[str, str]:
    counts = hashlib.sha256()
    bits = hashlib.sha256()
    for namespace in engine.namespaces():
        for c in engine.counters(namespace):
            tallies = sorted(c.event_counts.items()), sorted(c.single_event_counts.items())
            counts.update(
                repr(
                    (
                        namespace,
                        c.name,
                        c.kind.value,
                        c.iso_year,
                        c.iso_week,
                        c.count,
                        round(c.value_sum, 6),
                        tallies,
                    )
                ).encode()
            )
            for state in c.filter.slice_states():
                bits.update(state.data)
        counts.update(repr(engine.event_predictions(namespace)).encode())
        for user in ("u0", "u1", "u17", "u4000", "nobody"):
            counts.update(repr(engine.events_for_user(namespace, user)).encode())
    return counts.hexdigest(), bits.hexdigest()


def test_counts_and_filter_bits_are_as_before() -> None:
    counts, bits = _fingerprints(_workload_engine())
    assert counts == EXPECTED_COUNTS
    assert bits == EXPECTED_BITS
