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
3. else, with a **percentage rollout** (``rollout_percentage``, 0 to 100), the user's
   bucket is at most the percentage. The bucket is Unleash's: the 32-bit MurmurHash3
   (x86, seed 0) of ``"<group_id>:<stickiness value>"`` modulo 100, plus 1, so the
   same inputs land in the same bucket as in Unleash, and a user in at 30% stays in
   at 50%. ``group_id`` defaults to the flag's name;
4. else ``boolean``.

When the flag is true and has **variants**, it also answers one variant's name, chosen
as Unleash does: the MurmurHash3 (seed 86028157) of the same text modulo the weights'
total, plus 1, picks the first variant whose running total of weights reaches it.

The **stickiness** value is read from the user object, else the request's context:
``default`` (or empty) is ``user_id``, else ``session_id``, else a random draw; any
other name is that field. A percentage rollout leaves out a user without that field
(as Unleash does); a variant is then drawn at random.

Plain Python, no I/O: the clock and the random draw are passed in.
"""

from __future__ import annotations

import json
import math
from collections import deque
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
MAX_VARIANTS = 100  # variants of one spec
MAX_VARIANT_WEIGHT = 1_000  # one variant's weight (Unleash's scale: weights of 1000)
MAX_PAYLOAD = 4_096  # characters of a variant's payload
DEFAULT_STICKINESS = "default"  # user_id, else session_id, else random
RANDOM_STICKINESS = "random"
STRATEGY_SEED = 0  # Unleash's seeds: the rollout bucket and the variant bucket
VARIANT_SEED = 86028157
MAX_HISTORY = 100  # changes kept per flag, the oldest dropped first
MAX_DELETED_HISTORIES = 1_000  # deleted flags whose history is kept, the oldest dropped
# The size of every history together (as ``spec_size`` counts it): past it, the oldest
# changes of the flags changed least recently are dropped. 100 changes of a set of specs
# at its 3 MiB limit would be 300 MiB of memory and snapshot.
MAX_HISTORY_SIZE = 16 * 1024 * 1024
ANONYMOUS = "anonymous"  # the token id of a change made without a token

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
class Variant:
    """One answer a flag that is on may give: ``name``, chosen in proportion to ``weight``;
    ``payload`` is free text for the application (e.g. JSON)."""

    name: str
    weight: int
    payload: str = ""


@dataclass(frozen=True)
class FeatureSpec:
    """One flag: when it is true, and which variant it answers (see the module docstring)."""

    name: str
    boolean: bool = False
    rollout_start: datetime | None = None
    rollout_end: datetime | None = None
    user: tuple[UserCondition, ...] = ()
    rollout_percentage: int | None = None
    stickiness: str = ""  # empty: DEFAULT_STICKINESS
    group_id: str = ""  # empty: the flag's name
    variants: tuple[Variant, ...] = ()

    def evaluate(
        self,
        user: Mapping[str, Json],
        now: datetime,
        draw: Callable[[], float],
        context: Mapping[str, Json] | None = None,
    ) -> bool:
        """This flag for ``user`` at ``now``; ``draw()`` is a uniform [0, 1) random number;
        ``context`` may hold the stickiness field."""
        if any(condition.matches(user) for condition in self.user):
            return True
        if self.rollout_start is not None and self.rollout_end is not None:
            progress = rollout_progress(self.rollout_start, self.rollout_end, now)
            user_id = user_key(user.get("user_id"))
            place = draw() if user_id is None else rollout_place(self.name, user_id)
            if place < progress:
                return True
        if self.rollout_percentage is not None:
            value = stickiness_value(self.stickiness, user, context or {})
            if value is None and self.stickiness in ("", DEFAULT_STICKINESS, RANDOM_STICKINESS):
                value = str(draw())
            if value is not None and (
                normalized_value(self.bucket_group, value, 100, STRATEGY_SEED)
                <= self.rollout_percentage
            ):
                return True
        return self.boolean

    @property
    def bucket_group(self) -> str:
        """The group id hashed with the stickiness value: ``group_id``, else the name."""
        return self.group_id or self.name

    def variant(
        self,
        user: Mapping[str, Json],
        draw: Callable[[], float],
        context: Mapping[str, Json] | None = None,
    ) -> str:
        """The variant's name for ``user`` (of a flag that is on); empty without variants."""
        total = sum(v.weight for v in self.variants)
        if total <= 0:
            return ""
        value = stickiness_value(self.stickiness, user, context or {})
        target = normalized_value(
            self.bucket_group, str(draw()) if value is None else value, total, VARIANT_SEED
        )
        reached = 0
        for candidate in self.variants:
            reached += candidate.weight
            if candidate.weight and reached >= target:
                return candidate.name
        return ""  # not reached: the weights add up to the total


def normalized_value(group_id: str, value: str, normalizer: int, seed: int) -> int:
    """Unleash's bucket, 1 to ``normalizer``: the 32-bit MurmurHash3 (x86, unsigned) of
    ``"<group_id>:<value>"`` with ``seed``, modulo ``normalizer``, plus 1."""
    return mmh3.hash(f"{group_id}:{value}".encode(), seed, signed=False) % normalizer + 1


def stickiness_value(
    stickiness: str, user: Mapping[str, Json], context: Mapping[str, Json]
) -> str | None:
    """The text a user is bucketed by: the ``stickiness`` field of ``user``, else of
    ``context``; for the default stickiness ``user_id``, else ``session_id``; None if
    there is none (or the stickiness is random)."""
    if stickiness == RANDOM_STICKINESS:
        return None
    fields = ("user_id", "session_id") if stickiness in ("", DEFAULT_STICKINESS) else (stickiness,)
    for name in fields:
        for source in (user, context):
            value = user_key(source.get(name))
            if value is not None:
                return value
    return None


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
    _check_bucketing(spec)
    return spec


def _check_bucketing(spec: FeatureSpec) -> None:
    """The percentage rollout, stickiness, group id and variants of ``spec``."""
    percentage = spec.rollout_percentage
    if percentage is not None and not 0 <= percentage <= 100:
        raise InvalidArgument(
            f"rollout_percentage must be 0 to 100, not {percentage}",
            key="rollout_percentage",
            flag=spec.name,
        )
    if (spec.stickiness or spec.group_id) and percentage is None and not spec.variants:
        key = "stickiness" if spec.stickiness else "group_id"
        raise InvalidArgument(
            f"{key} applies to a percentage rollout or variants: set rollout_percentage "
            f"or variants, or leave {key} empty",
            key=key,
            flag=spec.name,
        )
    if spec.stickiness:
        try:
            check_name("stickiness", spec.stickiness)
        except InvalidArgument as exc:
            raise InvalidArgument(
                f"{exc.message} (use {DEFAULT_STICKINESS!r}, {RANDOM_STICKINESS!r} or the "
                f"name of a user or context field, e.g. 'user_id')",
                key="stickiness",
                flag=spec.name,
            ) from None
    if spec.group_id:
        check_text("group_id", spec.group_id)
    if len(spec.variants) > MAX_VARIANTS:
        raise InvalidArgument(f"a spec holds at most {MAX_VARIANTS} variants", key="variants")
    seen: set[str] = set()
    for index, variant in enumerate(spec.variants):
        where = {"variant": str(index), "flag": spec.name}
        try:
            check_name("name", variant.name)
        except InvalidArgument as exc:
            raise InvalidArgument(f"variant {index}: {exc.message}", **where) from None
        if variant.name in seen:
            raise InvalidArgument(f"variant {index}: {variant.name!r} is named twice", **where)
        seen.add(variant.name)
        if not 0 <= variant.weight <= MAX_VARIANT_WEIGHT:
            raise InvalidArgument(
                f"variant {index}: weight must be 0 to {MAX_VARIANT_WEIGHT}, not {variant.weight}",
                **where,
            )
        if len(variant.payload) > MAX_PAYLOAD:
            raise InvalidArgument(
                f"variant {index}: a payload holds at most {MAX_PAYLOAD} characters", **where
            )
    if spec.variants and not any(v.weight for v in spec.variants):
        raise InvalidArgument(
            "variants need a weight above 0 (at least one of them)", key="variants"
        )


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


@dataclass(frozen=True)
class SpecChange:
    """One change of a flag: when (None if logged before history was kept), by which token
    (``token_id``, empty if unknown), and its spec before and after (None: there was none,
    or it was deleted)."""

    time: datetime | None
    token_id: str
    old: FeatureSpec | None
    new: FeatureSpec | None

    @property
    def size(self) -> int:
        """About the bytes this change takes (``spec_size`` of both specs)."""
        return len(self.token_id) + sum(spec_size(s) for s in (self.old, self.new) if s) + 16


def spec_size(spec: FeatureSpec) -> int:
    """About the bytes a spec takes: its texts, JSON values and fixed fields."""
    texts = [spec.name, spec.stickiness, spec.group_id]
    texts += [c.property + json.dumps(c.value) for c in spec.user]
    texts += [v.name + v.payload for v in spec.variants]
    return sum(len(t) for t in texts) + 8 * (len(spec.user) + len(spec.variants)) + 32


@dataclass
class FeatureFlags:
    """Every spec, by name, a version that goes up with each change (for copies), and each
    flag's recent changes (``MAX_HISTORY`` per flag; ``MAX_DELETED_HISTORIES`` deleted
    flags keep theirs; ``MAX_HISTORY_SIZE`` for all of them)."""

    specs: dict[str, FeatureSpec] = field(default_factory=dict)
    version: int = 0
    # By flag, the least recently changed first; each oldest change first.
    history: dict[str, deque[SpecChange]] = field(default_factory=dict)
    history_size: int = 0  # the sum of the changes' sizes

    def check_room(self, name: str, maximum: int) -> None:
        """``LimitExceeded`` if a new spec ``name`` would make more than ``maximum`` specs
        (checked before a put is logged: applying a logged put never fails)."""
        if name not in self.specs and len(self.specs) >= maximum:
            raise FEATURE_SPECS.exceeded(maximum, name=name)

    def put(self, spec: FeatureSpec, when: datetime | None = None, token_id: str = "") -> None:
        """Create or replace (a checked spec), recorded in its history."""
        self._record(spec.name, SpecChange(when, token_id, self.specs.get(spec.name), spec))
        self.specs[spec.name] = spec
        self.version += 1

    def delete(self, name: str, when: datetime | None = None, token_id: str = "") -> None:
        old = self.specs.pop(name, None)
        if old is not None:
            self.version += 1
            self._record(name, SpecChange(when, token_id, old, None))
            self._forget_deleted()

    def _record(self, name: str, change: SpecChange) -> None:
        changes = self.history.pop(name, None) or deque()  # re-inserted: changed last
        self.history[name] = changes
        changes.append(change)
        self.history_size += change.size
        if len(changes) > MAX_HISTORY:
            self.history_size -= changes.popleft().size
        while self.history_size > MAX_HISTORY_SIZE:
            oldest = next(iter(self.history))  # the flag changed least recently
            if oldest == name and len(changes) == 1:
                break  # the change just made is kept, whatever its size
            self._drop_oldest(oldest)

    def _drop_oldest(self, name: str) -> None:
        changes = self.history[name]
        self.history_size -= changes.popleft().size
        if not changes:
            del self.history[name]

    def _forget_deleted(self) -> None:
        deleted = [name for name in self.history if name not in self.specs]
        for name in deleted[: max(0, len(deleted) - MAX_DELETED_HISTORIES)]:
            self.history_size -= sum(c.size for c in self.history.pop(name))

    def changes(self, name: str) -> list[SpecChange]:
        """The recorded changes of flag ``name``, newest first; ``NotFound`` if the flag
        neither exists nor has a history."""
        changes = self.history.get(name)
        if changes is None:
            self.get(name)
            return []
        return list(reversed(changes))

    @property
    def history_changes(self) -> int:
        """The changes held in every flag's history (bounded, for a metric)."""
        return sum(len(changes) for changes in self.history.values())

    def histories(self) -> dict[str, list[SpecChange]]:
        """Every flag's changes, oldest first (a copy, for a snapshot)."""
        return {name: list(changes) for name, changes in self.history.items()}

    def restore_histories(self, histories: Mapping[str, Iterable[SpecChange]]) -> None:
        """Take ``histories`` (as ``histories`` gave them) as the recorded changes."""
        self.history = {name: deque(changes) for name, changes in histories.items()}
        self.history_size = sum(c.size for changes in self.history.values() for c in changes)

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
        self,
        user: Mapping[str, Json],
        now: datetime,
        draw: Callable[[], float],
        context: Mapping[str, Json] | None = None,
    ) -> tuple[dict[str, bool], dict[str, str]]:
        """Every flag for ``user`` at ``now``, and the variant of each flag that is on and
        has variants."""
        features: dict[str, bool] = {}
        variants: dict[str, str] = {}
        for name, spec in sorted(self.specs.items()):
            on = features[name] = spec.evaluate(user, now, draw, context)
            if on and spec.variants:
                variants[name] = spec.variant(user, draw, context)
        return features, variants
