"""Checks of names and values every API shares: namespaces, event, goal and flag names,
user ids, event values."""

from __future__ import annotations

import unicodedata

from kimball_grpc.core.errors import InvalidArgument
from kimball_grpc.core.limits import DEFAULT_NAMESPACE, MAX_ABS_VALUE, MAX_NAME_LENGTH


def check_name(field: str, value: str, *, required: bool = True) -> str:
    """A name as given, or ``InvalidArgument`` naming ``field``."""
    if value.__class__ is str and 0 < len(value) <= MAX_NAME_LENGTH and value.isprintable():
        return value  # the common case, checked in one expression
    if not isinstance(value, str):
        raise InvalidArgument(f"{field} must be a string", **{field: repr(value)})
    if not value:
        if required:
            raise InvalidArgument(f"{field} is required and must not be empty", key=field)
        return value
    if len(value) > MAX_NAME_LENGTH:
        raise InvalidArgument(
            f"{field} is longer than {MAX_NAME_LENGTH} characters", **{field: value[:64] + "..."}
        )
    # Format characters (emoji joiners), separators and unassigned code points are fine
    # in a name; control characters (C0, DEL, C1) and unpaired surrogates are not.
    if any(unicodedata.category(c) in ("Cc", "Cs") for c in value):
        raise InvalidArgument(
            f"{field} contains control characters or unpaired surrogates",
            **{field: repr(value)},
        )
    return value


def check_value(value: float) -> float:
    """An event value, or ``InvalidArgument``: a finite number within +-MAX_ABS_VALUE."""
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not (
            abs(value) <= MAX_ABS_VALUE  # NaN fails this too
        )
    ):
        raise InvalidArgument(
            f"value must be a finite number between -{MAX_ABS_VALUE:g} and {MAX_ABS_VALUE:g}",
            value=repr(value),
        )
    return value


def check_namespace(namespace: str) -> str:
    """The namespace, ``default`` when empty."""
    return check_name("namespace", namespace, required=False) or DEFAULT_NAMESPACE
