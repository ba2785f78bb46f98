"""Answers as JSON text, encoded in steps: a 30 MB answer must not hold the event loop.

A rendered answer (``response_shapes``) is plain JSON values, except that a long array
among the values of the answer's top-level object may be an ``Each``: its items rendered
one by one as they are encoded. ``json_in_steps`` encodes ``ITEMS_PER_STEP`` items of
such an array per step, and every other value at once, as ``json.dumps`` would (same
separators, ASCII only).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

from kimball_grpc.core.steps import ITEMS_PER_STEP, Steps

Json = Any


class Each(NamedTuple):
    """A JSON array of ``render(item)`` for each of ``items``, rendered as it is encoded."""

    items: Sequence[Any]
    render: Callable[[Any], Json]


def json_in_steps(value: Json) -> Steps[str]:
    """``value`` as JSON text, its top-level ``Each`` values rendered and encoded in steps."""
    if not isinstance(value, dict):
        return json.dumps(value)
    parts = ["{"]
    for i, (key, item) in enumerate(value.items()):
        parts.append(f"{', ' if i else ''}{json.dumps(key)}: ")
        if isinstance(item, Each):
            yield from _array_in_steps(item, parts)
        else:
            parts.append(json.dumps(item))
    parts.append("}")
    return "".join(parts)


def _array_in_steps(array: Each, parts: list[str]) -> Steps[None]:
    parts.append("[")
    for start in range(0, len(array.items), ITEMS_PER_STEP):
        chunk = [array.render(item) for item in array.items[start : start + ITEMS_PER_STEP]]
        if start:
            parts.append(", ")
        parts.append(json.dumps(chunk)[1:-1])  # the items without the brackets
        yield
    parts.append("]")
