"""Feature specs in the form the original service stored them, read and written.

The original kept its whole set as one Erlang term, ``#{feature_maps => [Spec]}``,
each ``Spec`` a map::

    #{name => <<"flag">>, boolean => true | false,
      rollout_start => Seconds | undefined, rollout_end => Seconds | undefined,
      user => [[<<"property">>, '=' | in, Value]]}

(``Seconds`` since 1970, UTC; ``Value`` a JSON value as its JSON library decoded it:
strings binaries, ``true``/``false``/``null`` atoms, objects maps with binary keys).
A spec with a percentage rollout or variants, which the original did not have, adds
the keys ``rollout_percentage => Integer``, ``stickiness => <<"field">>``,
``group_id => <<"group">>`` and ``variants => [#{name => <<"v">>, weight =>
Integer, payload => <<"text">>}]``, each only when set: sidecars reading the
ConfigMap keep them, and a spec without them is written as the original wrote it.
``erlang:term_to_binary`` of it is the whole object in S3 and GCS
(``<prefix>/features_store``); base64 of that is the ``data`` key of its ConfigMap
and the content of the file its sidecars read. Earlier versions wrote the list of
specs as JSON text instead; that is read too.

Reading checks each spec as the API would: a spec that cannot be used is left out
and named in the problems returned, the others are kept.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
from collections.abc import Iterable
from datetime import UTC, datetime

from kimball_grpc.codec.erlang_external import ExternalTermError, decode_term, encode_term
from kimball_grpc.codec.erlang_terms import Atom
from kimball_grpc.core.errors import InvalidArgument
from kimball_grpc.core.feature_flags import FeatureSpec, Json, UserCondition, Variant, check_spec

__all__ = ["OriginalSpecsError", "decode_original_specs", "encode_original_specs"]

_TRUE = {Atom("true"), Atom("enabled"), b"true", b"enabled", True}
_FALSE = {Atom("false"), Atom("disabled"), Atom("undefined"), b"false", b"disabled", False}
_UNSET = (Atom("undefined"), b"undefined", None)


class OriginalSpecsError(ValueError):
    """Data that holds no set of specs at all (not one spec of it can be read)."""


def decode_original_specs(data: bytes) -> tuple[list[FeatureSpec], list[str]]:
    """The specs in ``data`` (raw ``term_to_binary``, its base64, or JSON) and a problem
    for each spec left out; ``OriginalSpecsError`` if ``data`` is none of those."""
    term = _term(data)
    if isinstance(term, dict) and Atom("bloom") in term:
        raise OriginalSpecsError(
            "this is one of the original's counters (a Bloom filter), not its feature specs: "
            "counters cannot be imported (their filters hash user ids with Erlang's phash2, "
            "which no Kimball counter can take in)"
        )
    if isinstance(term, dict):
        term = _get(term, "feature_maps", [] if not term else None)
    if not isinstance(term, list):
        raise OriginalSpecsError("the data holds no list of feature specs")
    specs: dict[str, FeatureSpec] = {}
    problems: list[str] = []
    for index, item in enumerate(term):
        try:
            spec = _spec(item)
        except InvalidArgument as exc:
            problems.append(f"spec {index + 1} ({_name_of(item)}): {exc.message}")
            continue
        specs[spec.name] = spec  # a later one of a name replaces an earlier, as there
    return list(specs.values()), problems


def encode_original_specs(specs: Iterable[FeatureSpec]) -> str:
    """Base64 of ``term_to_binary(#{feature_maps => [...]})``: the ConfigMap's ``data``.

    Rollout times are kept to whole seconds, as the original kept them: a start is
    rounded down, an end up (the window never shrinks to nothing)."""
    maps = [
        {
            Atom("name"): spec.name.encode(),
            Atom("boolean"): Atom("true" if spec.boolean else "false"),
            Atom("rollout_start"): _seconds(spec.rollout_start, math.floor),
            Atom("rollout_end"): _seconds(spec.rollout_end, math.ceil),
            Atom("user"): [
                [c.property.encode(), Atom(c.comparator), _to_term(c.value)] for c in spec.user
            ],
        }
        | _bucketing_terms(spec)
        for spec in specs
    ]
    return base64.b64encode(encode_term({Atom("feature_maps"): maps})).decode("ascii")


def _bucketing_terms(spec: FeatureSpec) -> dict[Atom, object]:
    """The keys of the percentage rollout and the variants that ``spec`` sets."""
    terms: dict[Atom, object] = {}
    if spec.rollout_percentage is not None:
        terms[Atom("rollout_percentage")] = spec.rollout_percentage
    if spec.stickiness:
        terms[Atom("stickiness")] = spec.stickiness.encode()
    if spec.group_id:
        terms[Atom("group_id")] = spec.group_id.encode()
    if spec.variants:
        terms[Atom("variants")] = [
            {
                Atom("name"): v.name.encode(),
                Atom("weight"): v.weight,
                Atom("payload"): v.payload.encode(),
            }
            for v in spec.variants
        ]
    return terms


def _term(data: bytes) -> object:
    text = data.strip()
    if not text:
        raise OriginalSpecsError("the data is empty")
    if text[:1] in (b"[", b"{"):
        try:
            return _to_term(json.loads(text))
        except (ValueError, RecursionError) as exc:
            raise OriginalSpecsError(f"the data is not valid JSON: {exc}") from None
    if not data.startswith(bytes([131])):
        try:
            data = base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError):
            raise OriginalSpecsError(
                "the data is neither an Erlang term, its base64, nor JSON"
            ) from None
    try:
        return decode_term(data)
    except ExternalTermError as exc:
        raise OriginalSpecsError(f"the data is not a readable Erlang term: {exc}") from None


def _get(term: dict, key: str, default: object) -> object:
    """A key of a map, as an atom or as a binary (the original took both)."""
    return term.get(Atom(key), term.get(key.encode(), default))


def _name_of(item: object) -> str:
    name = _get(item, "name", None) if isinstance(item, dict) else None
    return repr(name.decode("utf-8", "replace")) if isinstance(name, bytes) else "no name"


def _spec(item: object) -> FeatureSpec:
    if not isinstance(item, dict):
        raise InvalidArgument("a spec must be a map")
    name = _get(item, "name", None)
    if not isinstance(name, bytes):
        raise InvalidArgument("name must be a binary", key="name")
    boolean = _get(item, "boolean", Atom("false"))
    if boolean not in _TRUE and boolean not in _FALSE:
        raise InvalidArgument(f"boolean must be true or false, got {boolean!r}", key="boolean")
    user = _get(item, "user", [])
    if user in _UNSET:
        user = []
    if not isinstance(user, list):
        raise InvalidArgument("user must be a list of conditions", key="user")
    return check_spec(
        FeatureSpec(
            _text(name, "name"),
            boolean in _TRUE,
            _rollout(_get(item, "rollout_start", None), "rollout_start"),
            _rollout(_get(item, "rollout_end", None), "rollout_end"),
            tuple(_condition(index, c) for index, c in enumerate(user)),
            _whole(_get(item, "rollout_percentage", None), "rollout_percentage"),
            _binary_text(_get(item, "stickiness", b""), "stickiness"),
            _binary_text(_get(item, "group_id", b""), "group_id"),
            tuple(_variant(index, v) for index, v in enumerate(_list(item, "variants"))),
        )
    )


def _whole(value: object, key: str) -> int | None:
    if value in _UNSET:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidArgument(f"{key} must be a whole number", key=key)
    return value


def _binary_text(value: object, key: str) -> str:
    if not isinstance(value, bytes):
        raise InvalidArgument(f"{key} must be a binary", key=key)
    return _text(value, key)


def _list(item: dict, key: str) -> list:
    value = _get(item, key, [])
    if not isinstance(value, list):
        raise InvalidArgument(f"{key} must be a list", key=key)
    return value


def _variant(index: int, item: object) -> Variant:
    if not isinstance(item, dict):
        raise InvalidArgument(f"variant {index}: must be a map", key="variants")
    weight = _whole(_get(item, "weight", None), f"variant {index} weight")
    return Variant(
        _binary_text(_get(item, "name", None), f"variant {index} name"),
        0 if weight is None else weight,
        _binary_text(_get(item, "payload", b""), f"variant {index} payload"),
    )


def _text(value: bytes, key: str) -> str:
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidArgument(f"{key} is not UTF-8", key=key) from None


def _rollout(value: object, key: str) -> datetime | None:
    if value in _UNSET:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidArgument(f"{key} must be whole seconds or undefined", key=key)
    try:
        return datetime.fromtimestamp(value, UTC)
    except (OverflowError, OSError, ValueError):
        raise InvalidArgument(f"{key} is out of range: {value}", key=key) from None


def _condition(index: int, item: object) -> UserCondition:
    if not (isinstance(item, list | tuple) and len(item) == 3):
        raise InvalidArgument(f"user condition {index}: must be [property, comparator, value]")
    prop, comparator, value = item
    if not isinstance(prop, bytes):
        raise InvalidArgument(f"user condition {index}: the property must be a binary")
    if isinstance(comparator, bytes):
        comparator = Atom(_text(comparator, "comparator"))
    if not isinstance(comparator, Atom):
        raise InvalidArgument(f"user condition {index}: the comparator must be = or in")
    return UserCondition(_text(prop, "property"), comparator.name, _to_json(value, index))


def _to_json(value: object, index: int) -> Json:
    if isinstance(value, bytes):
        return _text(value, f"user condition {index} value")
    if isinstance(value, Atom):
        if value.name in ("true", "false"):
            return value.name == "true"
        if value.name == "null":
            return None
        raise InvalidArgument(f"user condition {index}: the value holds the atom {value.name}")
    if isinstance(value, int | float):
        return value
    if isinstance(value, list):
        return [_to_json(v, index) for v in value]
    if isinstance(value, dict):
        out = {}
        for key, v in value.items():
            if not isinstance(key, bytes | Atom):
                raise InvalidArgument(f"user condition {index}: an object key is not a string")
            name = key.name if isinstance(key, Atom) else _text(key, "key")
            out[name] = _to_json(v, index)
        return out
    raise InvalidArgument(f"user condition {index}: the value is not a JSON value")


def _to_term(value: Json) -> object:
    if isinstance(value, str):
        return value.encode()
    if isinstance(value, bool):
        return Atom("true" if value else "false")
    if value is None:
        return Atom("null")
    if isinstance(value, list):
        return [_to_term(v) for v in value]
    if isinstance(value, dict):
        return {k.encode(): _to_term(v) for k, v in value.items()}
    return value


def _seconds(when: datetime | None, rounding) -> object:
    return Atom("undefined") if when is None else int(rounding(when.timestamp()))
