"""Counter configuration: ordered rules choosing each counter's Bloom filter.

The first rule whose pattern matches the event name (``re.search``) applies;
no match gives ``DEFAULT_RULE``: a scalable filter that starts small.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum

from kimball_grpc.core.bloom import (
    MAX_SLICE_BITS,
    BloomFilter,
    FixedBloomFilter,
    ScalableBloomFilter,
    first_slice_error_probability,
    max_capacity,
)
from kimball_grpc.core.errors import ConfigError


class FilterType(StrEnum):
    FIXED = "bloom_fixed_size"
    SCALABLE = "bloom_scalable"


class DateCohort(StrEnum):
    WEEKLY = "weekly"


@dataclass(frozen=True)
class CounterRule:
    """One validated rule."""

    pattern: str
    filter_type: FilterType
    size: int
    error_probability: float
    date_cohort: DateCohort | None = None

    def new_filter(self) -> BloomFilter:
        if self.filter_type is FilterType.FIXED:
            return FixedBloomFilter(self.size, self.error_probability)
        return ScalableBloomFilter(self.size, self.error_probability)


# A quiet event costs a few dozen bytes; a busy one grows at p = 0.001.
DEFAULT_RULE = CounterRule(".*", FilterType.SCALABLE, 16, 0.001)
# The global counter (one per namespace) sees every user: starting it at 4,096
# users (9 KiB) spares it the eight smallest slices every membership test visits.
GLOBAL_RULE = CounterRule("", FilterType.SCALABLE, 4096, 0.001)

_KEYS = {"pattern", "type", "size", "error_probability", "date_cohort"}
_REQUIRED = ("pattern", "type", "size", "error_probability")


class CounterConfig:
    """Ordered rules with their compiled patterns."""

    def __init__(self, rules: Sequence[CounterRule] = ()) -> None:
        self.rules = tuple(rules)
        self._compiled = [(re.compile(r.pattern), r) for r in self.rules]

    def rule_for(self, event_name: str) -> CounterRule:
        for regex, rule in self._compiled:
            if regex.search(event_name):
                return rule
        return DEFAULT_RULE

    @classmethod
    def from_mappings(cls, raw_rules: Sequence[Mapping[str, object]]) -> CounterConfig:
        """Validate raw rules (from a config file); ``ConfigError`` names rule and problem."""
        return cls([parse_rule(i, raw) for i, raw in enumerate(raw_rules, start=1)])


def parse_rule(index: int, raw: Mapping[str, object]) -> CounterRule:
    """One rule from its raw mapping; ``index`` (1-based) is used in error messages."""

    def fail(problem: str) -> ConfigError:
        return ConfigError(f"counter rule {index}: {problem}", rule=str(index))

    if not isinstance(raw, Mapping):
        raise fail(f"expected a map of settings, got {type(raw).__name__}")
    unknown = sorted(set(raw) - _KEYS)
    if unknown:
        raise fail(f"unknown key {unknown[0]!r} (known: {', '.join(sorted(_KEYS))})")
    for key in _REQUIRED:
        if key not in raw:
            raise fail(f"missing key {key!r}")
    pattern = raw["pattern"]
    if not isinstance(pattern, str):
        raise fail("pattern must be a string")
    try:
        re.compile(pattern)
    except re.error as exc:
        raise fail(f"pattern {pattern!r} is not a valid regular expression: {exc}") from None
    try:
        filter_type = FilterType(raw["type"])
    except ValueError:
        raise fail(
            f"type {raw['type']!r} is unknown (use bloom_fixed_size or bloom_scalable)"
        ) from None
    size = raw["size"]
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise fail(f"size must be a whole number of users >= 1, got {size!r}")
    p = raw["error_probability"]
    if (
        isinstance(p, bool)
        or not isinstance(p, int | float)
        or not math.isfinite(p)
        or not (0 < p < 1)
    ):
        raise fail(f"error_probability must be between 0 and 1 (exclusive), got {p!r}")
    cohort = raw.get("date_cohort")
    date_cohort = None
    if cohort is not None:
        try:
            date_cohort = DateCohort(cohort)
        except ValueError:
            raise fail(f"date_cohort {cohort!r} is unknown (use weekly, or omit it)") from None
    first_slice_error = p if filter_type is FilterType.FIXED else first_slice_error_probability(p)
    if size > max_capacity(first_slice_error):
        raise fail(
            f"size {size} at error_probability {p} needs more than {MAX_SLICE_BITS} bits "
            f"(512 MiB) in one filter; at most {max_capacity(first_slice_error)} users"
        )
    return CounterRule(pattern, filter_type, size, float(p), date_cohort)
