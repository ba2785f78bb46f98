"""Feature flags in the core: conditions, sticky rollouts, validation, usage."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from kimball_grpc.core.errors import InvalidArgument, NotFound
from kimball_grpc.core.feature_flags import (
    FeatureFlags,
    FeatureSpec,
    UserCondition,
    check_spec,
    feature_usage,
    json_equal,
)

START = datetime(2026, 1, 1, tzinfo=UTC)
END = START + timedelta(days=10)


def never() -> float:
    raise AssertionError("no random draw expected")


def spec(**fields: object) -> FeatureSpec:
    return check_spec(FeatureSpec(**{"name": "flag", **fields}))  # type: ignore[arg-type]


def test_a_matching_user_condition_turns_the_flag_on():
    beta = spec(
        user=(
            UserCondition("plan", "=", "pro"),
            UserCondition("country", "in", ["NL", "BE"]),
        )
    )
    assert beta.evaluate({"plan": "pro"}, START, never)
    assert beta.evaluate({"country": "BE"}, START, never)
    assert not beta.evaluate({"plan": "free", "country": "FR"}, START, never)
    assert not beta.evaluate({}, START, never)  # a missing property matches nothing
    assert spec(boolean=True).evaluate({}, START, never)  # no condition: the boolean


def test_conditions_compare_json_values():
    assert json_equal(1, 1.0)
    assert not json_equal(True, 1)  # a boolean is not a number
    assert not json_equal("1", 1)
    assert json_equal({"a": [1, "x"]}, {"a": [1.0, "x"]})
    admin = spec(user=(UserCondition("admin", "=", True),))
    assert admin.evaluate({"admin": True}, START, never)
    assert not admin.evaluate({"admin": 1}, START, never)


def test_a_rollout_grows_with_time_and_never_flips_back_for_a_user():
    rollout = spec(rollout_start=START, rollout_end=END)
    users = [{"user_id": f"user-{i}"} for i in range(2000)]
    on_before: set[str] = set()
    for day in range(11):
        now = START + timedelta(days=day)
        on = {u["user_id"] for u in users if rollout.evaluate(u, now, never)}
        assert on_before <= on, f"day {day}: a user went back to false"
        assert abs(len(on) / len(users) - day / 10) < 0.04, (day, len(on))
        on_before = on
    assert on_before == {u["user_id"] for u in users}  # everyone at the end
    # Before the start nobody is in: the boolean decides.
    assert not rollout.evaluate(users[0], START - timedelta(days=1), never)
    assert spec(boolean=True, rollout_start=START, rollout_end=END).evaluate(
        users[0], START - timedelta(days=1), never
    )


def test_rollout_places_differ_per_flag_and_numbers_are_user_ids():
    a = spec(name="a", rollout_start=START, rollout_end=END)
    b = spec(name="b", rollout_start=START, rollout_end=END)
    middle = START + timedelta(days=5)
    users = [{"user_id": f"u{i}"} for i in range(400)]
    assert [a.evaluate(u, middle, never) for u in users] != [
        b.evaluate(u, middle, never) for u in users
    ]
    assert a.evaluate({"user_id": 42}, middle, never) == a.evaluate(
        {"user_id": "42"}, middle, never
    )


def test_a_user_without_user_id_gets_a_random_draw():
    rollout = spec(rollout_start=START, rollout_end=END)
    middle = START + timedelta(days=5)  # progress 0.5
    assert rollout.evaluate({}, middle, lambda: 0.49)
    assert not rollout.evaluate({}, middle, lambda: 0.51)


@pytest.mark.parametrize(
    ("fields", "fragment"),
    [
        ({"name": ""}, "name"),
        ({"rollout_start": START}, "both rollout_start and rollout_end"),
        ({"rollout_end": END}, "both rollout_start and rollout_end"),
        ({"rollout_start": END, "rollout_end": START}, "after rollout_start"),
        ({"rollout_start": START, "rollout_end": START}, "after rollout_start"),
        ({"user": (UserCondition("plan", ">", 3),)}, "unknown comparator '>'"),
        ({"user": (UserCondition("plan", "in", "pro"),)}, '"in" needs a list'),
        ({"user": (UserCondition("", "=", 1),)}, "property"),
        ({"user": (UserCondition("n", "=", float("nan")),)}, "finite"),
    ],
)
def test_a_bad_spec_is_refused_saying_why(fields, fragment):
    with pytest.raises(InvalidArgument) as refused:
        spec(**fields)
    assert fragment in refused.value.message


def test_a_good_spec_beside_the_bad_ones_is_taken():
    good = spec(
        rollout_start=START,
        rollout_end=END,
        user=(UserCondition("plan", "in", ["pro"]), UserCondition("beta", "=", True)),
    )
    assert good.name == "flag"


def test_the_set_of_specs_counts_its_changes():
    flags = FeatureFlags()
    flags.put(spec(name="b"))
    flags.put(spec(name="a", boolean=True))
    flags.put(spec(name="a"))  # replaced
    assert [s.name for s in flags.listed()] == ["a", "b"]
    assert flags.version == 3
    flags.delete("b")
    assert flags.version == 4
    with pytest.raises(NotFound):
        flags.get("b")
    assert flags.evaluate({}, START, never) == ({"a": False}, {})


def test_usage_is_counted_only_with_a_feature_and_a_user_id():
    assert feature_usage({"user_id": "u1"}, {"feature": "checkout"}) == ("", "checkout", "u1")
    assert feature_usage({"user_id": 7}, {"feature": "f", "namespace": "shop"}) == (
        "shop",
        "f",
        "7",
    )
    assert feature_usage({}, {"feature": "checkout"}) == ("", "", "")
    assert feature_usage({"user_id": "u1"}, {}) == ("", "", "")
    with pytest.raises(InvalidArgument, match="feature"):
        feature_usage({"user_id": "u1"}, {"feature": 3})
