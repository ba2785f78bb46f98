"""Percentage rollouts, stickiness and variants, bucketed as Unleash buckets them, and the
per-flag change history; old specs answer as before."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from kimball_grpc.codec.state_codec import (
    decode_records,
    encode_records,
    spec_from_state,
    spec_to_state,
)
from kimball_grpc.core import feature_flags
from kimball_grpc.core.errors import InvalidArgument, NotFound
from kimball_grpc.core.feature_flags import (
    MAX_DELETED_HISTORIES,
    MAX_HISTORY,
    FeatureFlags,
    FeatureSpec,
    UserCondition,
    Variant,
    check_spec,
    normalized_value,
)
from kimball_grpc.core.records import FeatureSpecRecord
from kimball_grpc.generated.kimball.storage.v1 import state_pb2 as spb

NOW = datetime(2026, 6, 1, tzinfo=UTC)


def never() -> float:
    raise AssertionError("no random draw expected")


def users(n: int) -> list[str]:
    return [f"user-{i}" for i in range(n)]


# The values Unleash's own client tests expect of its normalized number (the Ruby client's
# Unleash::Strategy::Util.get_normalized_number): group "gr1" and id "123" land in bucket 73,
# group "groupX" and id "999" in bucket 25.
@pytest.mark.parametrize(
    ("group", "user_id", "bucket"), [("gr1", "123", 73), ("groupX", "999", 25)]
)
def test_buckets_are_unleash_buckets(group, user_id, bucket):
    assert normalized_value(group, user_id, 100, 0) == bucket
    at = check_spec(FeatureSpec("f", rollout_percentage=bucket, group_id=group))
    below = check_spec(FeatureSpec("f", rollout_percentage=bucket - 1, group_id=group))
    assert at.evaluate({"user_id": user_id}, NOW, never) is True
    assert below.evaluate({"user_id": user_id}, NOW, never) is False


def test_the_group_id_defaults_to_the_flag_name():
    spec = check_spec(FeatureSpec("gr1", rollout_percentage=73))
    assert spec.evaluate({"user_id": "123"}, NOW, never) is True
    assert spec.evaluate({"user_id": "123"}, NOW, never) == (
        normalized_value("gr1", "123", 100, 0) <= 73
    )
    assert (
        check_spec(FeatureSpec("gr1", rollout_percentage=72)).evaluate(
            {"user_id": "123"}, NOW, never
        )
        is False
    )


def test_a_user_in_at_30_percent_stays_in_as_it_grows():
    def enabled(percentage: int) -> set[str]:
        spec = check_spec(FeatureSpec("checkout", rollout_percentage=percentage))
        return {u for u in users(4000) if spec.evaluate({"user_id": u}, NOW, never)}

    at_0, at_30, at_50, at_100 = enabled(0), enabled(30), enabled(50), enabled(100)
    assert at_0 == set() and len(at_100) == 4000
    assert at_30 < at_50
    assert 0.27 < len(at_30) / 4000 < 0.33 and 0.47 < len(at_50) / 4000 < 0.53


def test_the_stickiness_field_comes_from_the_user_else_the_context():
    spec = check_spec(FeatureSpec("f", rollout_percentage=50, stickiness="org"))
    orgs = [f"org-{i}" for i in range(200)]
    in_user = [spec.evaluate({"user_id": "same", "org": o}, NOW, never) for o in orgs]
    in_context = [spec.evaluate({"user_id": "same"}, NOW, never, {"org": o}) for o in orgs]
    assert in_user == in_context
    assert in_user == [normalized_value("f", o, 100, 0) <= 50 for o in orgs]
    assert 60 < sum(in_user) < 140  # bucketed by org, not by the one user id


def test_a_user_without_the_stickiness_field_is_outside_the_rollout():
    spec = check_spec(FeatureSpec("f", rollout_percentage=100, stickiness="org"))
    assert spec.evaluate({"user_id": "u"}, NOW, never) is False
    with_boolean = check_spec(FeatureSpec("f", True, rollout_percentage=100, stickiness="org"))
    assert with_boolean.evaluate({"user_id": "u"}, NOW, never) is True


def test_default_stickiness_is_user_id_then_session_id_then_random():
    spec = check_spec(FeatureSpec("f", rollout_percentage=50))
    assert spec.evaluate({"session_id": "s1"}, NOW, never) == (
        normalized_value("f", "s1", 100, 0) <= 50
    )
    assert spec.evaluate({"user_id": 123, "session_id": "s1"}, NOW, never) == (
        normalized_value("f", "123", 100, 0) <= 50
    )
    draws = iter([0.25, 0.75])
    answers = {spec.evaluate({}, NOW, lambda: next(draws)) for _ in range(2)}
    assert answers == {
        normalized_value("f", str(d), 100, 0) <= 50 for d in (0.25, 0.75)
    }  # one draw per answer


def test_the_percentage_adds_to_conditions_time_rollout_and_boolean():
    spec = check_spec(
        FeatureSpec(
            "f",
            user=(UserCondition("plan", "=", "pro"),),
            rollout_start=NOW,
            rollout_end=NOW + timedelta(days=1),
            rollout_percentage=0,
        )
    )
    assert spec.evaluate({"user_id": "u", "plan": "pro"}, NOW, never) is True
    assert spec.evaluate({"user_id": "u"}, NOW + timedelta(days=2), never) is True
    assert spec.evaluate({"user_id": "u"}, NOW - timedelta(days=1), never) is False


def test_variants_follow_their_weights_and_stick_to_the_user():
    spec = check_spec(
        FeatureSpec("f", True, variants=(Variant("blue", 200), Variant("green", 800, "{}")))
    )
    flags = FeatureFlags()
    flags.put(spec)
    chosen = [flags.evaluate({"user_id": u}, NOW, never)[1]["f"] for u in users(5000)]
    assert chosen == [flags.evaluate({"user_id": u}, NOW, never)[1]["f"] for u in users(5000)]
    assert 0.17 < chosen.count("blue") / 5000 < 0.23
    assert chosen.count("blue") + chosen.count("green") == 5000


def test_a_variant_is_unleashs_choice():
    variants = (Variant("a", 0), Variant("b", 300), Variant("c", 700))
    spec = check_spec(FeatureSpec("f", True, variants=variants, group_id="g"))
    for user in users(300):
        target = normalized_value("g", user, 1000, 86028157)
        expected = "b" if target <= 300 else "c"  # a weight of 0 is never chosen
        assert spec.variant({"user_id": user}, never) == expected


def test_only_a_flag_that_is_on_answers_a_variant():
    flags = FeatureFlags()
    flags.put(check_spec(FeatureSpec("off", variants=(Variant("v", 1),))))
    flags.put(check_spec(FeatureSpec("on", True)))
    assert flags.evaluate({"user_id": "u"}, NOW, never) == ({"off": False, "on": True}, {})


def test_an_old_spec_evaluates_as_before():
    spec = check_spec(FeatureSpec("f", False, NOW, NOW + timedelta(days=10)))
    draws = iter([0.05])
    assert spec.evaluate({}, NOW + timedelta(days=1), lambda: next(draws)) is True  # one draw


@pytest.mark.parametrize(
    ("spec", "fragment"),
    [
        (FeatureSpec("f", rollout_percentage=101), "rollout_percentage must be 0 to 100"),
        (FeatureSpec("f", rollout_percentage=-1), "rollout_percentage must be 0 to 100"),
        (FeatureSpec("f", variants=(Variant("v", -1),)), "weight must be 0 to 1000"),
        (FeatureSpec("f", variants=(Variant("v", 1001),)), "weight must be 0 to 1000"),
        (FeatureSpec("f", variants=(Variant("v", 0),)), "weight above 0"),
        (FeatureSpec("f", variants=(Variant("v", 1), Variant("v", 2))), "named twice"),
        (FeatureSpec("f", variants=(Variant("", 1),)), "variant 0: name"),
        (FeatureSpec("f", variants=(Variant("v", 1, "x" * 5000),)), "payload"),
        (FeatureSpec("f", stickiness="org"), "stickiness applies to a percentage rollout"),
        (FeatureSpec("f", group_id="g"), "group_id applies to a percentage rollout"),
        (FeatureSpec("f", rollout_percentage=5, stickiness="org\nid"), "stickiness"),
    ],
)
def test_a_bad_spec_is_refused_naming_the_problem(spec, fragment):
    with pytest.raises(InvalidArgument, match=fragment.replace("(", r"\(")):
        check_spec(spec)


def full_spec() -> FeatureSpec:
    return check_spec(
        FeatureSpec(
            "f",
            True,
            rollout_percentage=40,
            stickiness="org",
            group_id="g",
            variants=(Variant("a", 1, '{"x": 1}'), Variant("b", 3)),
        )
    )


def test_new_fields_round_trip_through_stored_state_and_records():
    spec = full_spec()
    assert spec_from_state(spec_to_state(spec)) == spec
    zero = check_spec(FeatureSpec("z", rollout_percentage=0))  # 0 is not "no rollout"
    assert spec_from_state(spec_to_state(zero)) == zero
    records = [FeatureSpecRecord("f", spec, NOW, "0a1b2c3d"), FeatureSpecRecord("f", None, NOW)]
    assert decode_records(encode_records(records)) == records


def test_records_logged_before_history_still_load():
    old = spb.RecordBatch()
    old.spec_changes.add(name="f", spec=spb.FeatureSpecState(name="f", boolean=True))
    old.spec_changes.add(name="g")
    assert decode_records(old.SerializeToString()) == [
        FeatureSpecRecord("f", FeatureSpec("f", True), None, ""),
        FeatureSpecRecord("g", None, None, ""),
    ]


def test_history_records_each_change_newest_first():
    flags = FeatureFlags()
    first, second = FeatureSpec("f"), FeatureSpec("f", True)
    flags.put(first, NOW, "aaaaaaaa")
    flags.put(second, NOW + timedelta(seconds=1), "anonymous")
    flags.delete("f", NOW + timedelta(seconds=2), "bbbbbbbb")
    changes = flags.changes("f")
    assert [(c.token_id, c.old, c.new) for c in changes] == [
        ("bbbbbbbb", second, None),
        ("anonymous", first, second),
        ("aaaaaaaa", None, first),
    ]
    assert changes[0].time == NOW + timedelta(seconds=2)
    with pytest.raises(NotFound):
        flags.changes("never")


def test_history_is_bounded_per_flag_and_for_deleted_flags():
    flags = FeatureFlags()
    for i in range(MAX_HISTORY + 5):
        flags.put(FeatureSpec("f", bool(i % 2)), NOW, str(i))
    assert len(flags.changes("f")) == MAX_HISTORY
    assert flags.changes("f")[-1].token_id == "5"  # the oldest five dropped
    for i in range(MAX_DELETED_HISTORIES + 3):
        flags.put(FeatureSpec(f"d{i}"), NOW)
        flags.delete(f"d{i}", NOW)
    assert len(flags.history) == MAX_DELETED_HISTORIES + 1  # and "f", which exists
    with pytest.raises(NotFound):
        flags.changes("d0")
    assert len(flags.changes(f"d{MAX_DELETED_HISTORIES + 2}")) == 2


def test_the_example_in_the_api_docs_answers_as_shown():
    spec = check_spec(
        FeatureSpec(
            "new_pricing",
            rollout_percentage=30,
            stickiness="org_id",
            variants=(Variant("monthly", 500), Variant("yearly", 500)),
        )
    )
    hooli, acme = {"user_id": "u1", "org_id": "hooli"}, {"user_id": "u1", "org_id": "acme"}
    assert normalized_value("new_pricing", "hooli", 100, 0) == 27
    assert normalized_value("new_pricing", "acme", 100, 0) == 90
    assert spec.evaluate(hooli, NOW, never) is True and spec.variant(hooli, never) == "yearly"
    assert spec.evaluate(acme, NOW, never) is False


def test_history_is_bounded_in_size_dropping_the_least_recently_changed_first(monkeypatch):
    monkeypatch.setattr(feature_flags, "MAX_HISTORY_SIZE", 20_000)
    big = (UserCondition("country", "in", [f"c{i:04d}" for i in range(500)]),)
    flags = FeatureFlags()
    flags.put(FeatureSpec("old"), NOW, "first")
    for i in range(6):
        flags.put(FeatureSpec("big", bool(i % 2), user=big), NOW, str(i))
    assert flags.history_size <= 20_000
    assert "old" not in flags.history  # its change was the oldest of the least recent flag
    kept = flags.changes("big")
    assert 1 < len(kept) < 6 and kept[0].token_id == "5"  # the newest kept, the oldest gone
    assert flags.history_size == sum(c.size for c in kept)
    flags.put(FeatureSpec("huge", user=(UserCondition("p", "in", ["x" * 30_000]),)), NOW)
    assert [c.new.name for c in flags.changes("huge")] == ["huge"]  # kept, alone
    assert flags.history_size == flags.changes("huge")[0].size
