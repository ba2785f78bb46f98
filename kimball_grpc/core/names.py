"""Checks of names and values every API shares: namespaces, event, goal and flag names,
user ids, event values.

Names are shown to people (the web UI, metrics labels, answers), so they hold no
invisible formatting characters (Unicode category Cf): a U+200B ZERO WIDTH SPACE inside
``payment`` makes a second name that looks the same, U+202E RIGHT-TO-LEFT OVERRIDE shows
a name reversed. A few Cf characters are how scripts and emoji are written, and are taken
where, and only where, they do that job (the contexts Unicode's identifier rules give
them, UAX #31 section 2.3, and emoji sequences):

- U+200D ZERO WIDTH JOINER between two emoji: one picture (a family, a profession);
- U+200C ZERO WIDTH NON-JOINER and U+200D right after a virama (Devanagari, Bengali,
  Tamil, ...), and U+200C between two Arabic-script letters (Persian, Urdu);
- tag characters U+E0020 to U+E007E closed by U+E007F after U+1F3F4 (the flags of
  England, Scotland and Wales).

User ids are never shown (they are hashed at once) and may hold Cf characters; control
characters and unpaired surrogates are refused everywhere.
"""

from __future__ import annotations

import unicodedata

from kimball_grpc.core.errors import InvalidArgument
from kimball_grpc.core.limits import DEFAULT_NAMESPACE, MAX_ABS_VALUE, MAX_NAME_LENGTH

ZWNJ = "\u200c"
ZWJ = "\u200d"
_EMOJI_PRESENTATION = "\ufe0f"  # VARIATION SELECTOR-16, between an emoji and its joiner
_SKIN_TONES = frozenset(map(chr, range(0x1F3FB, 0x1F400)))  # the emoji modifiers
_BLACK_FLAG = "\U0001f3f4"
_TAGS = range(0xE0020, 0xE007F)  # the characters of a tag sequence, before its end
_CANCEL_TAG = "\U000e007f"
_VIRAMA = 9  # the canonical combining class of every virama
# The blocks of the Arabic script (Arabic, Supplement, Extended-A/B, Presentation Forms).
_ARABIC_BLOCKS = (
    range(0x0600, 0x0700),
    range(0x0750, 0x0780),
    range(0x0870, 0x0900),
    range(0xFB50, 0xFE00),
    range(0xFE70, 0xFF00),
)


def check_name(field: str, value: str, *, required: bool = True) -> str:
    """A name as given (a namespace, an event, goal, flag or property name), or
    ``InvalidArgument`` naming ``field``."""
    if value.__class__ is str and 0 < len(value) <= MAX_NAME_LENGTH and value.isprintable():
        return value  # the common case, checked in one expression
    return _checked(field, value, required, names=True)


def check_text(field: str, value: str, *, required: bool = True) -> str:
    """Text that is never shown as a name (a user id; a name already stored, which was
    taken when only control characters were refused), or ``InvalidArgument``."""
    if value.__class__ is str and 0 < len(value) <= MAX_NAME_LENGTH and value.isprintable():
        return value
    return _checked(field, value, required, names=False)


def _checked(field: str, value: str, required: bool, *, names: bool) -> str:
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
    # Separators and unassigned code points are fine; control characters (C0, DEL, C1)
    # and unpaired surrogates are not.
    for index, char in enumerate(value):
        category = unicodedata.category(char)
        if category in ("Cc", "Cs"):
            raise InvalidArgument(
                f"{field} contains control characters or unpaired surrogates",
                **{field: repr(value)},
            )
        if names and category == "Cf" and not _format_in_place(value, index):
            name = unicodedata.name(char, "a format character")
            raise InvalidArgument(
                f"{field} contains U+{ord(char):04X} ({name}), an invisible formatting "
                f"character: names may hold it only inside an emoji or a word of a script "
                f"that needs it",
                **{field: repr(value)},
            )
    return value


def _format_in_place(value: str, index: int) -> bool:
    """Whether the Cf character at ``index`` does its job there (see the module's rules)."""
    char = value[index]
    before = value[index - 1] if index > 0 else ""
    after = value[index + 1] if index + 1 < len(value) else ""
    if char in (ZWJ, ZWNJ) and before and unicodedata.combining(before) == _VIRAMA:
        return True
    if char == ZWJ:
        return _is_emoji_end(before) and _is_emoji(after)
    if char == ZWNJ:
        return _is_arabic_letter(before) and _is_arabic_letter(after)
    if ord(char) in _TAGS or char == _CANCEL_TAG:
        return _in_tag_sequence(value, index)
    return False


def _is_emoji(char: str) -> bool:
    return bool(char) and unicodedata.category(char) == "So"


def _is_emoji_end(char: str) -> bool:
    """An emoji, or what may end one before a joiner: VS16 or a skin tone."""
    return bool(char) and (
        char == _EMOJI_PRESENTATION or char in _SKIN_TONES or unicodedata.category(char) == "So"
    )


def _is_arabic_letter(char: str) -> bool:
    return (
        bool(char)
        and unicodedata.category(char).startswith("L")
        and any(ord(char) in block for block in _ARABIC_BLOCKS)
    )


def _in_tag_sequence(value: str, index: int) -> bool:
    """Whether ``index`` is inside U+1F3F4, tags, U+E007F (a subdivision flag)."""
    start = index
    while start > 0 and ord(value[start - 1]) in _TAGS:
        start -= 1
    end = index if value[index] == _CANCEL_TAG else index + 1
    while end < len(value) and ord(value[end]) in _TAGS:
        end += 1
    return (
        start > 0
        and value[start - 1] == _BLACK_FLAG
        and end > start
        and end < len(value)
        and value[end] == _CANCEL_TAG
    )


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
