"""Request JSON to protobuf: protobuf's ``json_format``, with a direct build for plain JSON.

``json_format.ParseDict`` defines the conversion, but it costs about 15-20 µs per
event, more than the engine spends on one. Most request JSON is plain: objects
keyed by proto field names holding strings, booleans, numbers and nested plain
objects. For exactly that JSON the message constructor gives the same message,
some 30 times faster, so it is built that way. Anything else (camelCase names,
nulls, timestamps, enums, quoted numbers, ...) goes to ``ParseDict``, which then
accepts or refuses it as it always does.
"""

from __future__ import annotations

import functools
import math

from google.protobuf import json_format
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message

_STRING = (str,)
_BOOL = (bool,)
_INT = (int,)
_DOUBLE = (int, float)
# The JSON types (exact classes: bool is not a number here) each scalar field takes as is.
_PLAIN_TYPES: dict[int, tuple[type, ...]] = {
    FieldDescriptor.TYPE_STRING: _STRING,
    FieldDescriptor.TYPE_BOOL: _BOOL,
    FieldDescriptor.TYPE_INT32: _INT,
    FieldDescriptor.TYPE_INT64: _INT,
    FieldDescriptor.TYPE_UINT32: _INT,
    FieldDescriptor.TYPE_UINT64: _INT,
    FieldDescriptor.TYPE_SINT32: _INT,
    FieldDescriptor.TYPE_SINT64: _INT,
    FieldDescriptor.TYPE_DOUBLE: _DOUBLE,
}
_LARGEST_EXACT_INT = 2**53  # beyond it ParseDict and float() could round differently

_NUMBERS = frozenset(
    {
        FieldDescriptor.TYPE_DOUBLE,
        FieldDescriptor.TYPE_FLOAT,
        FieldDescriptor.TYPE_INT32,
        FieldDescriptor.TYPE_INT64,
        FieldDescriptor.TYPE_UINT32,
        FieldDescriptor.TYPE_UINT64,
        FieldDescriptor.TYPE_SINT32,
        FieldDescriptor.TYPE_SINT64,
    }
)


class RequestJsonError(ValueError):
    """JSON that does not make a request message (a 400)."""

    def __init__(self, what: str, **details: object) -> None:
        super().__init__(what)
        self.what = what
        self.details = details


def message_from_json(data: dict, message_type: type[Message]) -> Message:
    """The ``message_type`` message for the parsed JSON object ``data``, as ParseDict reads it."""
    if _is_plain(data, message_type.DESCRIPTOR):
        try:
            return message_type(**data)
        except (TypeError, ValueError):
            pass  # e.g. an int out of its field's range: ParseDict says what is wrong
    _refuse_booleans_as_numbers(data, message_type.DESCRIPTOR)
    try:
        return json_format.ParseDict(data, message_type())
    except (json_format.ParseError, OverflowError, RecursionError) as exc:
        # OverflowError: a number too large for its field (e.g. 400 digits for a double).
        raise RequestJsonError(f"The request does not match the API: {exc}") from None


def _is_plain(data: dict, descriptor: Descriptor) -> bool:
    """Whether the constructor builds from ``data`` exactly the message ParseDict would."""
    plan = _plain_fields(descriptor)
    for key, value in data.items():
        spec = plan.get(key)
        if spec is None:
            return False
        allowed, nested, repeated = spec
        if repeated:
            if value.__class__ is not list:  # a map's JSON is an object: ParseDict's
                return False
            items = value
        else:
            items = (value,)
        for item in items:
            kind = item.__class__
            if nested is not None:
                if kind is not dict or not _is_plain(item, nested):
                    return False
            elif kind not in allowed:
                return False
            elif kind is float:
                if not math.isfinite(item):
                    return False
            elif allowed is _DOUBLE and kind is int and abs(item) > _LARGEST_EXACT_INT:
                return False
    return True


@functools.cache
def _plain_fields(
    descriptor: Descriptor,
) -> dict[str, tuple[tuple[type, ...], Descriptor | None, bool]]:
    """Per proto field name that can take plain JSON: (JSON types, nested message, repeated)."""
    plan = {}
    for field in descriptor.fields:
        oneof = field.containing_oneof
        if oneof is not None and len(oneof.fields) > 1:
            continue  # ParseDict refuses two members of a oneof; the constructor does not
        nested = field.message_type
        if nested is not None:
            if nested.full_name.startswith("google.protobuf."):
                continue  # well-known types have their own JSON forms (timestamps, ...)
            plan[field.name] = ((dict,), nested, field.is_repeated)
        elif field.type in _PLAIN_TYPES:
            plan[field.name] = (_PLAIN_TYPES[field.type], None, field.is_repeated)
    return plan


def _refuse_booleans_as_numbers(data: dict, descriptor: Descriptor) -> None:
    """protobuf's JSON parser reads true as 1.0; a JSON number field must get a number."""
    for name, value in data.items():
        field = descriptor.fields_by_name.get(name) or descriptor.fields_by_camelcase_name.get(name)
        if field is None:
            continue  # ParseDict reports unknown fields
        items = value if field.is_repeated and isinstance(value, list) else [value]
        for item in items:
            if field.type in _NUMBERS and isinstance(item, bool):
                raise RequestJsonError(f"{name} must be a number", **{name: item})
            if field.message_type is not None and isinstance(item, dict):
                _refuse_booleans_as_numbers(item, field.message_type)
