"""Feature flags: specs, their validation, and evaluation for a user.

A spec says when its flag is true for a user, in order:

1. a **user condition** matches: ``[property, "=", value]`` (the user's property
   equals the JSON value) or ``[property, "in", [values]]`` (it equals one of them);
2. else, with a **rollout** (``rollout_start`` to ``rollout_end``), the user is in
   the rollout's progress: the share of time elapsed, 0 before the start and 1
   after the end. The user's place is a hash of the flag's name and the user's
   ``user_id`` into [0, 1): the flag is true once progress passes it, so it never
   flips back to false as the rollout advances (sticky). A user without
   ``user_id`` gets a random draw, as the original did;
3. else ``boolean``.

Plain Python, no I/O: the clock and the random draw are passed in.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import mmh3

from kimball_grpc.core.errors import InvalidArgument, NotFound
from kimball_grpc.core.limits import FEATURE_SPECS
from kimball_grpc.core.names import check_name, check_text

COMPARATORS = ("=", "in")
MAX_CONDITIONS = 100  # user conditions in one spec
MAX_IN_VALUES = 1_000  # values of one "in" condition

Json = Any


@dataclass(frozen=True)
class UserCondition:
    """``property`` of the user object compared with ``value`` (JSON values)."""

    property: str
    comparator: str  # "=" or "in"
    value: Json

    def matches(self, user: Mapping[str, Json]) -> bool:
        if self.property not in user:
            return False
        given = user[self.property]
        if self.comparator == "=":
            return json_equal(given, self.value)
        return any(json_equal(given, v) for v in self.value)


@dataclass(frozen=True)
class FeatureSpec:
    """One flag: when it is true (see the module docstring)."""

    name: str
    boolean: bool = False
    rollout_start: datetime | None = None
    rollout_end: datetime | None = None
    user: tuple[UserCondition, ...] = ()

    def evaluate(self, user: Mapping[str, Json], now: datetime, draw: Callable[[], float]) -> bool:
        """This flag for ``user`` at ``now``; ``draw()`` is a uniform [0, 1) random number."""
        if any(condition.matches(user) for condition in self.user):
            return True
        if self.rollout_start is not None and self.rollout_end is not None:
            progress = rollout_progress(self.rollout_start, self.rollout_end, now)
            user_id = user_key(user.get("user_id"))
            place = draw() if user_id is None else rollout_place(self.name, user_id)
            if place < progress:
                return True
        return self.boolean


def rollout_progress(start: datetime, end: datetime, now: datetime) -> float:
    """The share of the rollout elapsed at ``now``: 0 before ``start``, 1 from ``end``."""
    if now <= start:
        return 0.0
    if now >= end:
        return 1.0
    return (now - start) / (end - start)


def rollout_place(flag: str, user_id: str) -> float:
    """A user's fixed place in [0, 1) in a flag's rollout (64 bits of MurmurHash3)."""
    digest = mmh3.hash64(f"{flag}\x00{user_id}".encode(), signed=False)[0]
    return digest / 2**64


def user_key(value: Json) -> str | None:
    """A ``user_id`` as text (a whole number as ``42``, not ``42.0``); None unless it is a
    non-empty string or a number."""
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        return None
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() else repr(value)
    return str(value) or None


def feature_usage(user: Mapping[str, Json], context: Mapping[str, Json]) -> tuple[str, str, str]:
    """(namespace, event name, user id) to count when the context names a ``feature`` and
    the user has a ``user_id``: that use of the flag counts as an event;
    ``("", "", "")`` when not both.
    ``InvalidArgument`` naming ``context.feature``, ``context.namespace`` or
    ``user.user_id`` if one cannot name an event."""
    feature = context.get("feature")
    user_id = user_key(user.get("user_id"))
    if feature is None or user_id is None:
        return ("", "", "")
    namespace = context.get("namespace", "")
    for key, value, required, check in (
        ("context.feature", feature, True, check_name),
        ("context.namespace", namespace, False, check_name),
        ("user.user_id", user_id, True, check_text),
    ):
        if not isinstance(value, str):
            raise InvalidArgument(f"{key} must be a string", key=key)
        check(key, value, required=required)
    return (namespace, feature, user_id)


def json_equal(a: Json, b: Json) -> bool:
    """Equality of JSON values: numbers by value (1 == 1.0), but a boolean is not a number."""
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if isinstance(a, int | float) and isinstance(b, int | float):
        return a == b
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(json_equal(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(json_equal(a[k], b[k]) for k in a)
    return type(a) is type(b) and a == b


def check_spec(spec: FeatureSpec) -> FeatureSpec:
    """``spec`` if it can be used, else ``InvalidArgument`` naming what is wrong."""
    check_name("name", spec.name)
    if (spec.rollout_start is None) != (spec.rollout_end is None):
        missing = "rollout_end" if spec.rollout_end is None else "rollout_start"
        raise InvalidArgument(
            "a rollout needs both rollout_start and rollout_end", key=missing, flag=spec.name
        )
    if spec.rollout_start is not None and spec.rollout_end is not None:
        for key, when in (("rollout_start", spec.rollout_start), ("rollout_end", spec.rollout_end)):
            if when.tzinfo is None:
                raise InvalidArgument(f"{key} must carry a time zone", key=key)
        if spec.rollout_end <= spec.rollout_start:
            raise InvalidArgument(
                "rollout_end must be after rollout_start",
                rollout_start=spec.rollout_start.isoformat(),
                rollout_end=spec.rollout_end.isoformat(),
            )
    if len(spec.user) > MAX_CONDITIONS:
        raise InvalidArgument(f"a spec holds at most {MAX_CONDITIONS} user conditions", key="user")
    for index, condition in enumerate(spec.user):
        _check_condition(index, condition)
    return spec


def _check_condition(index: int, condition: UserCondition) -> None:
    where = {"condition": str(index)}
    try:
        check_name("property", condition.property)
    except InvalidArgument as exc:
        raise InvalidArgument(f"user condition {index}: {exc.message}", **where) from None
    if condition.comparator not in COMPARATORS:
        raise InvalidArgument(
            f"user condition {index}: unknown comparator {condition.comparator!r} "
            f'(use "=" or "in")',
            comparator=str(condition.comparator),
            **where,
        )
    if condition.comparator == "in":
        if not isinstance(condition.value, list):
            raise InvalidArgument(f'user condition {index}: "in" needs a list of values', **where)
        if len(condition.value) > MAX_IN_VALUES:
            raise InvalidArgument(
                f'user condition {index}: "in" takes at most {MAX_IN_VALUES} values', **where
            )
    if not _finite(condition.value):
        raise InvalidArgument(f"user condition {index}: numbers must be finite", **where)


def _finite(value: Json) -> bool:
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, list):
        return all(_finite(v) for v in value)
    if isinstance(value, dict):
        return all(_finite(v) for v in value.values())
    return True


@dataclass
class FeatureFlags:
    """Every spec, by name, and a version that goes up with each change (for copies)."""

    specs: dict[str, FeatureSpec] = field(default_factory=dict)
    version: int = 0

    def check_room(self, name: str, maximum: int) -> None:
        """``LimitExceeded`` if a new spec ``name`` would make more than ``maximum`` specs
        (checked before a put is logged: applying a logged put never fails)."""
        if name not in self.specs and len(self.specs) >= maximum:
            raise FEATURE_SPECS.exceeded(maximum, name=name)

    def put(self, spec: FeatureSpec) -> None:
        """Create or replace (a checked spec)."""
        self.specs[spec.name] = spec
        self.version += 1

    def delete(self, name: str) -> None:
        if self.specs.pop(name, None) is not None:
            self.version += 1

    def get(self, name: str) -> FeatureSpec:
        spec = self.specs.get(name)
        if spec is None:
            raise NotFound(f"no feature spec named {name!r}", name=name)
        return spec

    def listed(self) -> list[FeatureSpec]:
        """Every spec, by name."""
        return [self.specs[name] for name in sorted(self.specs)]

    def replace_all(self, specs: Iterable[FeatureSpec], version: int) -> None:
        """Become a copy: ``specs`` at ``version`` (a sidecar's copy, a restored state)."""
        self.specs = {spec.name: spec for spec in specs}
        self.version = version

    def evaluate(
        self, user: Mapping[str, Json], now: datetime, draw: Callable[[], float]
    ) -> dict[str, bool]:
        """Every flag for ``user`` at ``now``."""
        return {name: spec.evaluate(user, now, draw) for name, spec in sorted(self.specs.items())}
