"""Strict reader for Erlang term files such as ``app.config``.

A file is a sequence of terms, each ended by ``.`` (as ``file:consult/1`` reads them).
Tuples become ``tuple``, lists ``list``, maps ``dict``, atoms (``true``/``false`` too)
:class:`Atom`, strings ``str``, binaries ``bytes`` (UTF-8) and numbers ``int``/``float``.
Anything else (pids, funs, records, variables, operators) raises :class:`ErlangTermError`
naming the 1-based line and column; every character, tab included, is one column.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

__all__ = ["Atom", "ErlangTermError", "parse_term", "parse_terms"]

_LOWER = frozenset("abcdefghijklmnopqrstuvwxyz")
_UPPER = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZ_")
_DIGITS = frozenset("0123456789")
_NUMERAL = _DIGITS | {"_"}
_ALNUM = _LOWER | _UPPER | _DIGITS
_NAME = _ALNUM | {"@"}
_OCTAL = frozenset("01234567")
_HEX = frozenset("0123456789abcdefABCDEF")
_SPACE = frozenset(" \t\r\n\f\v")
_MAX_DEPTH = 100  # nesting limit, far below Python's recursion limit
_PUNCT = ("=>", "<<", ">>", "[", "]", "{", "}", ",", "#", "/", "-")
# Single-character escapes: \b \d (DEL) \e (ESC) \f \n \r \s (space) \t \v.
_ESCAPES = dict(zip("bdefnrstv", "\b\x7f\x1b\f\n\r \t\v", strict=True))
# Erlang's reserved words: valid atoms only when quoted.
_RESERVED_WORDS = (
    "after and andalso band begin bnot bor bsl bsr bxor case catch cond div end fun if let not"
    " of or orelse receive rem try when xor"
)
_RESERVED = frozenset(_RESERVED_WORDS.split())


class ErlangTermError(ValueError):
    """Malformed term text; ``str()`` reads ``path:line:column: problem``."""

    def __init__(self, problem: str, line: int, column: int, path: str | None = None) -> None:
        self.path: str | None = path
        self.line = line
        self.column = column
        self.problem = problem
        super().__init__(
            f"{path}:{line}:{column}: {problem}" if path else f"{line}:{column}: {problem}"
        )


@dataclass(frozen=True)
class Atom:
    """An Erlang atom, kept distinct from strings (``true``/``false`` included)."""

    name: str


@dataclass(frozen=True)
class _Token:
    """A token: ``kind`` is the punctuation itself, or atom/string/integer/float/dot/eof."""

    kind: str
    value: object
    source: str  # the token's text as written
    line: int
    column: int

    def describe(self) -> str:
        """Describe the token for an error message."""
        if self.kind == "eof":
            return "end of input"
        if self.kind in ("atom", "string", "integer", "float"):
            return f"{self.kind} {self.source}"
        return f"'{self.source}'"


class _Lexer:
    """Hand-written scanner turning term text into tokens, tracking line and column."""

    def __init__(self, text: str, path: str | None) -> None:
        self.text, self.path = text, path
        self.pos, self.line, self.column = 0, 1, 1

    def peek(self, offset: int = 0) -> str:
        """Return the character ``offset`` ahead, or ``""`` past the end."""
        index = self.pos + offset
        return self.text[index] if index < len(self.text) else ""

    def advance(self) -> str:
        """Consume and return one character."""
        char = self.text[self.pos]
        self.pos += 1
        if char == "\n":
            self.line, self.column = self.line + 1, 1
        else:
            self.column += 1
        return char

    def run(self, allowed: frozenset[str]) -> str:
        """Consume the longest run of characters from ``allowed``."""
        start = self.pos
        while self.peek() in allowed:
            self.advance()
        return self.text[start : self.pos]

    def tokens(self) -> Iterator[_Token]:
        """Yield tokens lazily, ending with ``eof`` placed just after the last token."""
        end = (1, 1)
        while True:
            while self.peek() in _SPACE or self.peek() == "%":
                if self.advance() == "%":
                    while self.peek() not in ("\n", ""):
                        self.advance()
            start, line, column = self.pos, self.line, self.column
            if not self.peek():
                yield _Token("eof", None, "", *end)
                return
            kind, value = self.scan(line, column)
            end = (self.line, self.column)
            yield _Token(kind, value, self.text[start : self.pos], line, column)

    def scan(self, line: int, column: int) -> tuple[str, object]:
        """Scan one token at the current non-blank character: ``(kind, value)``."""
        char = self.peek()
        if char in _LOWER:
            name = self.run(_NAME)
            if name in _RESERVED:
                raise ErlangTermError(
                    f"reserved word '{name}' is not a term", line, column, self.path
                )
            return "atom", name
        if char in _UPPER:
            problem = f"variables are not allowed: {self.run(_NAME)}"
        elif char in _DIGITS:
            return self.number(line, column)
        elif char in "\"'":
            return ("string" if char == '"' else "atom"), self.quoted(line, column)
        elif char == "$" and self.peek(1) == "{" and self.peek(2) in _UPPER:
            self.advance()
            self.advance()
            problem = (
                f"${{{self.run(_NAME)}}} is a variable of a release template (sys.config.src), "
                "filled in when an Erlang release starts: write its value instead"
            )
        elif char == "$" and self.peek(1):
            self.advance()
            return "integer", ord(self.escape() if self.advance() == "\\" else self.peek(-1))
        elif char == ".":
            self.advance()
            if self.peek() in _SPACE or self.peek() in ("%", ""):
                return "dot", "."
            problem = "'.' must be followed by whitespace"
        else:
            punct = next((p for p in _PUNCT if self.text.startswith(p, self.pos)), None)
            if punct:
                self.pos, self.column = self.pos + len(punct), self.column + len(punct)
                return punct, punct
            problem = f"unexpected character {char!r}"
        raise ErlangTermError(problem, line, column, self.path)

    def number(self, line: int, column: int) -> tuple[str, object]:
        """Scan an integer (``42``, ``16#FF``, ``1_000``) or a float (``1.0e-3``)."""
        literal, kind, value = self.run(_NUMERAL), "integer", None
        try:
            if self.peek() == "#":
                digits = self.advance() + self.run(_ALNUM)
                base, literal = int(literal), literal + digits
                if 2 <= base <= 36 and all(c == "_" or int(c, 36) < base for c in digits[1:]):
                    value = int(digits[1:], base)
            elif self.peek() == "." and self.peek(1) in _DIGITS:
                kind, literal = "float", literal + self.advance() + self.run(_NUMERAL)
                if self.peek() in ("e", "E"):
                    literal += self.advance()
                    literal += self.advance() if self.peek() in ("+", "-") else ""
                    literal += self.run(_NUMERAL)
                value = float(literal) if math.isfinite(float(literal)) else None
            else:
                value = int(literal)
        except ValueError:
            value = None
        if value is None or self.peek() in _NAME:
            literal += self.run(_NAME)
            raise ErlangTermError(f"invalid number '{literal}'", line, column, self.path)
        return kind, value

    def quoted(self, line: int, column: int) -> str:
        """Scan a ``"string"`` or ``'quoted atom'``, decoding escapes."""
        quote, parts = self.advance(), []
        while (char := self.peek()) != quote:
            if not char:
                noun = "string" if quote == '"' else "quoted atom"
                raise ErlangTermError(f"unterminated {noun}", line, column, self.path)
            self.advance()
            parts.append(self.escape() if char == "\\" else char)
        self.advance()
        return "".join(parts)

    def escape(self) -> str:
        """Decode the escape sequence after a backslash, as Erlang does."""
        line, column = self.line, self.column - 1
        if not self.peek():
            raise ErlangTermError("unterminated escape sequence", line, column, self.path)
        char = self.advance()
        if char in _OCTAL:
            digits = char + "".join(self.advance() for _ in range(2) if self.peek() in _OCTAL)
            return chr(int(digits, 8))
        if char == "^" and self.peek():
            return chr(ord(self.advance()) & 31)
        if char != "x":
            return _ESCAPES.get(char, char)
        if self.peek() == "{":
            self.advance()
            digits = self.run(_HEX)
            closed = self.peek() == "}"
            if closed:
                self.advance()
        else:
            digits = "".join(self.advance() for _ in range(2) if self.peek() in _HEX)
            closed = len(digits) == 2
        code = int(digits, 16) if closed and digits else -1
        if not 0 <= code <= 0x10FFFF or 0xD800 <= code <= 0xDFFF:
            raise ErlangTermError("invalid escape sequence", line, column, self.path)
        return chr(code)


class _Parser:
    """Recursive-descent parser over the lazily scanned token stream."""

    def __init__(self, text: str, path: str | None) -> None:
        self.path = path
        self.tokens = _Lexer(text, path).tokens()
        self.tok = next(self.tokens)
        self.depth = 0
        self.lines: dict[int, int] = {}  # id of each tuple, list and map -> its first line

    def advance(self) -> _Token:
        """Consume and return the current token."""
        token = self.tok
        if token.kind != "eof":
            self.tok = next(self.tokens)
        return token

    def error(self, problem: str, token: _Token) -> ErlangTermError:
        """Build an error located at ``token``."""
        return ErlangTermError(problem, token.line, token.column, self.path)

    def fail(self, expected: str) -> ErlangTermError:
        """Build an "expected X but found Y" error at the current token."""
        return self.error(f"expected {expected} but found {self.tok.describe()}", self.tok)

    def expect(self, kind: str, expected: str) -> _Token:
        """Consume a token of ``kind`` or fail saying what was ``expected``."""
        if self.tok.kind != kind:
            raise self.fail(expected)
        return self.advance()

    def form(self) -> object:
        """Parse one term followed by its terminating ``.``."""
        term = self.term()
        self.expect("dot", "'.'")
        return term

    def term(self) -> object:
        """Parse a single term."""
        kind = self.tok.kind
        if kind in ("atom", "integer", "float"):
            value = self.advance().value
            return Atom(str(value)) if kind == "atom" else value
        if kind == "-":
            self.advance()
            if self.tok.kind not in ("integer", "float"):
                raise self.fail("a number after '-'")
            return -self.advance().value  # type: ignore[operator]
        if kind == "string":
            return self.string()
        if kind in ("[", "{", "#"):
            line = self.tok.line
            if kind == "#":
                container: object = self.map()
            else:
                items = self.sequence("]" if kind == "[" else "}", self.term)
                container = items if kind == "[" else tuple(items)
            self.lines[id(container)] = line
            return container
        if kind == "<<":
            return b"".join(self.sequence(">>", self.segment))
        raise self.fail("a term")

    def string(self) -> str:
        """Parse one or more adjacent string literals, concatenated."""
        parts: list[str] = []
        while self.tok.kind == "string":
            parts.append(str(self.advance().value))
        return "".join(parts)

    def sequence(self, close: str, item: Callable[[], object]) -> list:
        """Parse ``item, item, ...`` (possibly nothing) up to ``close``, after the opener."""
        self.depth += 1
        if self.depth > _MAX_DEPTH:
            raise self.error(f"terms nested more than {_MAX_DEPTH} deep", self.tok)
        self.advance()
        items: list = []
        if self.tok.kind != close:
            items.append(item())
            while self.tok.kind == ",":
                self.advance()
                items.append(item())
        self.expect(close, f"',' or '{close}'")
        self.depth -= 1
        return items

    def map(self) -> dict:
        """Parse ``#{key => value, ...}``; keys must be hashable and distinct."""
        self.advance()
        if self.tok.kind != "{":
            found = self.tok.describe()
            raise self.error(f"expected '{{' after '#' but found {found} (no records)", self.tok)
        result: dict = {}
        for token, key, value in self.sequence("}", self.association):
            try:
                if key in result:
                    raise self.error("duplicate map key", token)
            except TypeError:
                raise self.error("map key is not hashable", token) from None
            result[key] = value
        return result

    def association(self) -> tuple[_Token, object, object]:
        """Parse ``key => value``, remembering where the key started."""
        token, key = self.tok, self.term()
        self.expect("=>", "'=>'")
        return token, key, self.term()

    def segment(self) -> bytes:
        """Parse a binary segment: ``"text"`` or ``"text"/utf8`` (both UTF-8 encoded)."""
        if self.tok.kind != "string":
            raise self.fail("a string")
        text = self.string()
        if self.tok.kind == "/":
            self.advance()
            if self.tok.kind != "atom" or self.tok.value != "utf8":
                raise self.fail("utf8")
            self.advance()
        return text.encode("utf-8")


def parse_terms(text: str, path: str | None = None) -> list[object]:
    """Parse every ``.``-terminated term in ``text``; ``path`` only labels errors."""
    return parse_terms_with_lines(text, path)[0]


def parse_terms_with_lines(
    text: str, path: str | None = None
) -> tuple[list[object], Callable[[object], int | None]]:
    """As ``parse_terms``, plus a function giving the line where a tuple, list or map
    of the result starts (for messages about what a valid term means)."""
    parser = _Parser(text, path)
    terms: list[object] = []
    while parser.tok.kind != "eof":
        terms.append(parser.form())
    lines = parser.lines
    return terms, lambda container: lines.get(id(container))


def parse_term(text: str, path: str | None = None) -> object:
    """Parse exactly one ``.``-terminated term; only blanks and comments may follow."""
    parser = _Parser(text, path)
    term = parser.form()
    parser.expect("eof", "end of input after '.'")
    return term
