"""Request JSON to protobuf: protobuf's ``json_format``, with a direct build for plain JSON,
and errors that name the field and the JSON type it takes.

``json_format.ParseDict`` defines the conversion, but it costs about 15-20 µs per
event, more than the engine spends on one. Most request JSON is plain: objects
keyed by proto field names holding strings, booleans, numbers and nested plain
objects. For exactly that JSON the message constructor gives the same message,
some 30 times faster, so it is built that way. Anything else (camelCase names,
nulls, timestamps, enums, quoted numbers, ...) is first checked against the message's
fields, so that a wrong type is refused naming the field and what it takes
(``user_id must be a string, got a number``) rather than in the parser's words, then
goes to ``ParseDict``.
"""

from __future__ import annotations

import functools
import json
import math

from google.protobuf import json_format
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp

from kimball_grpc.core.events import Event

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
_LARGEST_DOUBLE = 2**1024 - 2**970 - 1  # the largest integer float() converts

# The range of each integer type: a JSON number outside it is refused naming the range.
_INTEGER_RANGES = {
    FieldDescriptor.TYPE_INT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_SINT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_SFIXED32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_INT64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_SINT64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_SFIXED64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_UINT32: (0, 2**32 - 1),
    FieldDescriptor.TYPE_FIXED32: (0, 2**32 - 1),
    FieldDescriptor.TYPE_UINT64: (0, 2**64 - 1),
    FieldDescriptor.TYPE_FIXED64: (0, 2**64 - 1),
}
_FLOATS = (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT)
_TEXTS = (FieldDescriptor.TYPE_STRING, FieldDescriptor.TYPE_BYTES)
_DATE_TIME = "an RFC 3339 date-time such as 2024-01-07T23:30:00Z"


class RequestJsonError(ValueError):
    """JSON that does not make a request message (a 400)."""

    def __init__(self, what: str, **details: object) -> None:
        super().__init__(what)
        self.what = what
        self.details = details


class LongNumber:
    """A JSON integer with more digits than Python converts (4,300 by default): kept as
    its length so that the field holding it is named, not a server error."""

    __slots__ = ("digits",)

    def __init__(self, digits: int) -> None:
        self.digits = digits


def parse_json(text: bytes | str) -> object:
    """JSON text to Python, as ``json.loads`` (and its errors: ``ValueError``, including
    ``JSONDecodeError`` and ``UnicodeDecodeError``; ``RecursionError``), except that an
    integer too long to convert becomes a ``LongNumber``."""
    try:
        return json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise
    except ValueError:  # an integer past int()'s digit limit: read again, keeping it
        return json.loads(text, parse_int=_integer)


def _integer(text: str) -> int | LongNumber:
    try:
        return int(text)
    except ValueError:
        return LongNumber(len(text.lstrip("-")))


def message_from_json(data: dict, message_type: type[Message]) -> Message:
    """The ``message_type`` message for the parsed JSON object ``data``, as ParseDict reads
    it; ``RequestJsonError`` naming the field otherwise."""
    if _is_plain(data, message_type.DESCRIPTOR):
        try:
            return message_type(**data)
        except (TypeError, ValueError):
            pass  # e.g. an int out of its field's range: the checks below say what is wrong
    try:
        problem = _object_problem(data, message_type.DESCRIPTOR, "")
        if problem is not None:
            raise problem
        return json_format.ParseDict(data, message_type())
    except (json_format.ParseError, OverflowError) as exc:
        raise RequestJsonError(f"The request does not match the API: {exc}") from None
    except RecursionError:
        raise RequestJsonError("The request is nested too deeply") from None


_EVENT_FIELDS = frozenset(("namespace", "event_name", "user_id", "value", "ensure_goal"))


def plain_events(data: dict) -> list[Event] | None:
    """The events of a ``TrackEventsRequest``'s JSON, exactly as ``message_from_json`` then
    ``event_from_proto`` make them, without the message between (a REST worker's ingest
    path: about 0.5 µs per event instead of 1.4); None unless every event is plain JSON
    of ASCII strings, finite numbers and booleans, without ``datetime`` (then the message
    path reads it and names what is wrong)."""
    events = data.get("events")
    if len(data) != 1 or events.__class__ is not list:
        return None
    out = []
    for event in events:
        if event.__class__ is not dict or not _EVENT_FIELDS.issuperset(event):
            return None
        namespace = event.get("namespace", "")
        name = event.get("event_name", "")
        user = event.get("user_id", "")
        if not (namespace.__class__ is name.__class__ is user.__class__ is str):
            return None
        if not (namespace.isascii() and name.isascii() and user.isascii()):
            return None  # e.g. a lone surrogate: the message refuses it
        value = event.get("value")
        if value.__class__ is int and abs(value) <= _LARGEST_EXACT_INT:
            value = float(value)
        elif value is not None and not (value.__class__ is float and math.isfinite(value)):
            return None
        goal = event.get("ensure_goal", False)
        if goal.__class__ is not bool:
            return None
        out.append(Event(name, user, namespace, value, None, goal))
    return out


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


def _object_problem(data: dict, descriptor: Descriptor, path: str) -> RequestJsonError | None:
    """The first field of ``data`` whose JSON ParseDict would refuse (or read wrongly: a
    boolean as a number), as an error naming it; None if every field has a type it takes."""
    fields = _json_fields(descriptor)
    for key, value in data.items():
        where = f"{path}.{key}" if path else key
        field = fields.get(key)
        if field is None:
            return RequestJsonError(
                f"{key} is not a field of this request",
                field=where,
                known=sorted(descriptor.fields_by_name),
            )
        if value is None:
            continue  # null: the field is not set
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            if value.__class__ is not dict:
                return _wrong(key, where, "an object", value)
            entry = field.message_type.fields_by_name["value"]
            for name, item in value.items():
                problem = _value_problem(entry, item, name, f"{where}.{name}")
                if problem is not None:
                    return problem
        elif field.is_repeated:
            if value.__class__ is not list:
                return _wrong(key, where, "a list", value)
            for index, item in enumerate(value):
                problem = _value_problem(field, item, f"{key}[{index}]", f"{where}[{index}]")
                if problem is not None:
                    return problem
        else:
            problem = _value_problem(field, value, key, where)
            if problem is not None:
                return problem
    return None


def _value_problem(
    field: FieldDescriptor, value: object, name: str, where: str
) -> RequestJsonError | None:
    """Whether one value (a field's, or one item of a list) has a type its field takes."""
    if value is None:
        return RequestJsonError(f"{name} must not be null", field=where)
    nested = field.message_type
    if nested is not None:
        return _message_problem(nested, value, name, where)
    kind = field.type
    if kind in _TEXTS:
        return None if value.__class__ is str else _wrong(name, where, "a string", value)
    if kind == FieldDescriptor.TYPE_BOOL:
        return None if value.__class__ is bool else _wrong(name, where, "true or false", value)
    if kind == FieldDescriptor.TYPE_ENUM:
        if value.__class__ in (str, int):
            return None
        return _wrong(name, where, "the name of a value", value)
    if kind in _FLOATS:
        return _float_problem(value, name, where)
    if kind in _INTEGER_RANGES:
        return _integer_problem(value, _INTEGER_RANGES[kind], name, where)
    return None


def _message_problem(
    nested: Descriptor, value: object, name: str, where: str
) -> RequestJsonError | None:
    full_name = nested.full_name
    if full_name == "google.protobuf.Timestamp":
        if value.__class__ is not str:
            return _wrong(name, where, _DATE_TIME, value)
        try:
            Timestamp().FromJsonString(value)
        except ValueError:
            return RequestJsonError(f"{name} must be {_DATE_TIME}", field=where)
        return None
    if full_name == "google.protobuf.Struct" and value.__class__ is not dict:
        return _wrong(name, where, "an object", value)
    if full_name in ("google.protobuf.Struct", "google.protobuf.Value"):
        return _any_json_problem(value, name, where)
    if full_name.startswith("google.protobuf."):
        return None  # the other well-known types: ParseDict decides
    if value.__class__ is not dict:
        return _wrong(name, where, "an object", value)
    return _object_problem(value, nested, where)


def _any_json_problem(value: object, name: str, where: str) -> RequestJsonError | None:
    """In JSON taken as it is (a Struct, a Value): a number a double cannot hold."""
    if isinstance(value, LongNumber) or (value.__class__ is int and abs(value) > _LARGEST_DOUBLE):
        return _wrong(name, where, "a number that fits a double", value)
    if value.__class__ is dict:
        items = ((f"{where}.{k}", k, v) for k, v in value.items())
    elif value.__class__ is list:
        items = ((f"{where}[{i}]", f"{name}[{i}]", v) for i, v in enumerate(value))
    else:
        return None
    for path, key, item in items:
        problem = _any_json_problem(item, key, path)
        if problem is not None:
            return problem
    return None


def _float_problem(value: object, name: str, where: str) -> RequestJsonError | None:
    if value.__class__ is float:
        return None if math.isfinite(value) else _wrong(name, where, "a finite number", value)
    if value.__class__ is int and abs(value) <= _LARGEST_DOUBLE:
        return None
    if value.__class__ is int or isinstance(value, LongNumber):
        return _wrong(name, where, "a number that fits a double", value)
    if value.__class__ is str:
        try:
            float(value)  # ParseDict takes numbers in strings, and "NaN", "Infinity"
        except ValueError:
            if value not in ("NaN", "Infinity", "-Infinity"):
                return _wrong(name, where, "a number", value)
        return None
    return _wrong(name, where, "a number", value)


def _integer_problem(
    value: object, bounds: tuple[int, int], name: str, where: str
) -> RequestJsonError | None:
    low, high = bounds
    expected = f"a whole number from {low} to {high}"
    number: object = value
    if value.__class__ is str:
        try:
            number = int(value)
        except ValueError:
            try:
                number = float(value)  # ParseDict takes "1e3"
            except ValueError:
                return _wrong(name, where, expected, value)
    if number.__class__ is float:
        if not number.is_integer():  # also NaN and infinities
            return _wrong(name, where, expected, value)
        number = int(number)
    if number.__class__ is not int or not low <= number <= high:
        return _wrong(name, where, expected, value)
    return None


def _wrong(name: str, where: str, expected: str, value: object) -> RequestJsonError:
    """``<name> must be <expected>, got <the JSON type of value>``, naming the field."""
    return RequestJsonError(f"{name} must be {expected}, got {_json_type(value)}", field=where)


def _json_type(value: object) -> str:
    if isinstance(value, LongNumber):
        return f"a number of {value.digits} digits"
    if value.__class__ is bool:
        return "a boolean"
    if value.__class__ is float and not math.isfinite(value):
        return "a number too large"
    if value.__class__ in (int, float):
        return "a number out of range" if abs(value) > _LARGEST_DOUBLE else "a number"
    if value.__class__ is str:
        return "a string"
    if value.__class__ is list:
        return "a list"
    if value.__class__ is dict:
        return "an object"
    return "null" if value is None else type(value).__name__


@functools.cache
def _json_fields(descriptor: Descriptor) -> dict[str, FieldDescriptor]:
    """A message's fields by the names JSON may use: the proto name and the JSON name."""
    fields = {field.json_name: field for field in descriptor.fields}
    fields.update(descriptor.fields_by_name)
    return fields
