"""Answers encoded in steps are the JSON ``json.dumps`` writes, however long their arrays."""

from __future__ import annotations

import json

import pytest

from gateway.json_steps import Each, json_in_steps
from kimball_grpc.core.steps import ITEMS_PER_STEP, finish


def render(n: int) -> dict:
    return {"name": f"é-{n}", "count": n, "nested": [{"events": ["a", "b"], "count": n}]}


@pytest.mark.parametrize(
    "size", [0, 1, ITEMS_PER_STEP - 1, ITEMS_PER_STEP, ITEMS_PER_STEP + 1, 3 * ITEMS_PER_STEP]
)
def test_an_array_rendered_in_steps_is_what_json_dumps_writes(size: int) -> None:
    items = list(range(size))
    lazy = {"before": [1, 2], "counts": Each(items, render), "after": {"x": None}}
    whole = {"before": [1, 2], "counts": [render(n) for n in items], "after": {"x": None}}

    steps = json_in_steps(lazy)
    taken = 0
    while True:
        try:
            next(steps)
            taken += 1
        except StopIteration as done:
            text = done.value
            break

    assert text == json.dumps(whole)
    assert taken == -(-size // ITEMS_PER_STEP)  # one step per ITEMS_PER_STEP items


@pytest.mark.parametrize("value", [{}, {"a": 'ü\n"', "b": 1.5, "c": [True, None]}, [1, 2], "x"])
def test_answers_without_arrays_to_render_are_encoded_at_once(value: object) -> None:
    assert finish(json_in_steps(value)) == json.dumps(value)
