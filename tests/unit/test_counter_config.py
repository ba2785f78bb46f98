"""Counter configuration: rule matching and rule validation."""

from __future__ import annotations

import pytest

from kimball_grpc.core.bloom import FixedBloomFilter, ScalableBloomFilter
from kimball_grpc.core.counter_config import (
    DEFAULT_RULE,
    CounterConfig,
    CounterRule,
    DateCohort,
    FilterType,
    parse_rule,
)
from kimball_grpc.core.errors import ConfigError

GOOD = {"pattern": ".*", "type": "bloom_scalable", "size": 100, "error_probability": 0.01}


def rule(**changes: object) -> dict[str, object]:
    return {**GOOD, **changes}


# --- matching -----------------------------------------------------------------------


def test_first_matching_rule_wins():
    config = CounterConfig.from_mappings(
        [
            rule(pattern="^checkout", type="bloom_fixed_size", size=10),
            rule(pattern="checkout", size=20),
            rule(pattern=".*", size=30),
        ]
    )
    assert config.rule_for("checkout_done").size == 10
    assert config.rule_for("checkout_done").filter_type is FilterType.FIXED
    assert config.rule_for("cart_checkout").size == 20
    assert config.rule_for("signup").size == 30


def test_patterns_are_searched_not_fully_matched():
    config = CounterConfig.from_mappings([rule(pattern="sign", size=7)])
    assert config.rule_for("user_signup_done").size == 7
    assert config.rule_for("sign").size == 7
    assert config.rule_for("SIGNUP") is DEFAULT_RULE  # case-sensitive


def test_anchored_patterns_anchor():
    config = CounterConfig.from_mappings([rule(pattern="^a$", size=7)])
    assert config.rule_for("a").size == 7
    assert config.rule_for("ab") is DEFAULT_RULE


def test_no_match_gives_the_default_rule():
    config = CounterConfig.from_mappings([rule(pattern="^only_this$")])
    assert config.rule_for("something_else") is DEFAULT_RULE
    assert CounterConfig().rule_for("anything") is DEFAULT_RULE
    assert CounterConfig.from_mappings([]).rule_for("") is DEFAULT_RULE


def test_default_rule_is_scalable_at_one_in_a_thousand():
    assert DEFAULT_RULE.filter_type is FilterType.SCALABLE
    assert DEFAULT_RULE.error_probability == 0.001
    assert DEFAULT_RULE.date_cohort is None
    assert DEFAULT_RULE.size >= 1
    f = DEFAULT_RULE.new_filter()
    assert isinstance(f, ScalableBloomFilter)
    assert (f.capacity, f.error_probability) == (DEFAULT_RULE.size, 0.001)


def test_rules_build_their_filters():
    fixed = CounterRule(".*", FilterType.FIXED, 500, 0.02).new_filter()
    assert isinstance(fixed, FixedBloomFilter)
    assert (fixed.capacity, fixed.error_probability) == (500, 0.02)
    scalable = CounterRule(".*", FilterType.SCALABLE, 50, 0.02).new_filter()
    assert isinstance(scalable, ScalableBloomFilter)
    assert (scalable.capacity, scalable.error_probability) == (50, 0.02)


def test_rules_keep_their_order():
    raws = [rule(pattern=f"e{i}", size=i) for i in range(1, 6)]
    config = CounterConfig.from_mappings(raws)
    assert [r.size for r in config.rules] == [1, 2, 3, 4, 5]


# --- validation: good input next to bad input ---------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (
            rule(),
            CounterRule(".*", FilterType.SCALABLE, 100, 0.01),
        ),
        (
            rule(type="bloom_fixed_size", size=10_000, date_cohort="weekly"),
            CounterRule(".*", FilterType.FIXED, 10_000, 0.01, DateCohort.WEEKLY),
        ),
        (rule(size=1), CounterRule(".*", FilterType.SCALABLE, 1, 0.01)),
        (rule(error_probability=1e-9), CounterRule(".*", FilterType.SCALABLE, 100, 1e-9)),
        (rule(error_probability=0.999), CounterRule(".*", FilterType.SCALABLE, 100, 0.999)),
        (rule(pattern="^(a|b)+$"), CounterRule("^(a|b)+$", FilterType.SCALABLE, 100, 0.01)),
        (rule(pattern=""), CounterRule("", FilterType.SCALABLE, 100, 0.01)),
        (rule(date_cohort=None), CounterRule(".*", FilterType.SCALABLE, 100, 0.01)),
        (
            rule(type="bloom_fixed_size", size=300_000_000, error_probability=0.01),
            CounterRule(".*", FilterType.FIXED, 300_000_000, 0.01),
        ),
    ],
    ids=[
        "scalable",
        "readme-weekly-fixed",
        "size-1",
        "tiny-p",
        "big-p",
        "regex",
        "empty",
        "none",
        "fixed-just-under-512MiB",
    ],
)
def test_valid_rule_is_accepted(raw, expected):
    parsed = parse_rule(1, raw)
    assert parsed == expected
    assert isinstance(parsed.error_probability, float)
    assert CounterConfig.from_mappings([raw]).rules == (expected,)


@pytest.mark.parametrize(
    ("raw", "problem"),
    [
        (rule(pattern="("), "not a valid regular expression"),
        (rule(pattern="[a-"), "not a valid regular expression"),
        (rule(pattern=42), "pattern must be a string"),
        ({k: v for k, v in GOOD.items() if k != "pattern"}, "missing key 'pattern'"),
        ({k: v for k, v in GOOD.items() if k != "type"}, "missing key 'type'"),
        ({k: v for k, v in GOOD.items() if k != "size"}, "missing key 'size'"),
        (
            {k: v for k, v in GOOD.items() if k != "error_probability"},
            "missing key 'error_probability'",
        ),
        (rule(error_probability=0), "error_probability"),
        (rule(error_probability=0.0), "error_probability"),
        (rule(error_probability=-0.1), "error_probability"),
        (rule(error_probability=1), "error_probability"),
        (rule(error_probability=1.0), "error_probability"),
        (rule(error_probability=1.5), "error_probability"),
        (rule(error_probability="0.01"), "error_probability"),
        (rule(error_probability=None), "error_probability"),
        (rule(error_probability=True), "error_probability"),
        (rule(error_probability=float("nan")), "error_probability"),
        (rule(error_probability=float("inf")), "error_probability"),
        (rule(size=0), "size"),
        (rule(size=-5), "size"),
        (rule(size=1.5), "size"),
        (rule(size=100.0), "size"),
        (rule(size="100"), "size"),
        (rule(size=True), "size"),
        (rule(size=None), "size"),
        (
            rule(type="bloom_fixed_size", size=500_000_000, error_probability=0.01),
            "needs more than 4294967296 bits",
        ),
        (rule(size=400_000_000, error_probability=0.01), "needs more than 4294967296 bits"),
        (rule(type="bloom"), "type 'bloom' is unknown"),
        (rule(type="BLOOM_SCALABLE"), "is unknown"),
        (rule(date_cohort="daily"), "date_cohort 'daily' is unknown"),
        (rule(date_cohort="Weekly"), "date_cohort"),
        (rule(colour="blue"), "unknown key 'colour'"),
        (["pattern", ".*"], "expected a map"),
        ("pattern", "expected a map"),
        (None, "expected a map"),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_invalid_rule_is_refused_naming_rule_and_problem(raw, problem):
    with pytest.raises(ConfigError) as info:
        CounterConfig.from_mappings([rule(pattern="^fine$"), raw])
    message = str(info.value)
    assert message.startswith("counter rule 2: "), message
    assert problem in message, message
    assert info.value.message == message
    assert info.value.details == {"rule": "2"}
    assert info.value.grpc_code == "FAILED_PRECONDITION"


def test_invalid_rule_message_shows_the_bad_value():
    with pytest.raises(ConfigError, match=r"size .* got 0"):
        parse_rule(3, rule(size=0))
    with pytest.raises(ConfigError, match=r"error_probability .* got 1\.5"):
        parse_rule(3, rule(error_probability=1.5))
    with pytest.raises(ConfigError, match=r"counter rule 3: pattern '\(' is not a valid"):
        parse_rule(3, rule(pattern="("))


def test_first_invalid_rule_is_the_one_named():
    with pytest.raises(ConfigError, match=r"^counter rule 1: "):
        CounterConfig.from_mappings([rule(size=0), rule(type="nope")])
