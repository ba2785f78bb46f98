"""Paging of reads that grow with the data, as Google's APIs page them (AIP-158).

A read's items have a total order by key (a tuple of strings). A page holds the first
items after the key its ``page_token`` carries, so paging is stable while data grows:
an item added during paging behind the cursor is not repeated and shifts nothing, one
added ahead of it shows up on a later page. A page also ends before it would pass the
server's answer size, so a page can hold fewer items than ``page_size``.

Tokens are opaque to clients: URL-safe base64 of JSON holding a digest of the request's
scope (method, namespace, filter) and the last key returned. A token is accepted only
with the scope it was given for.
"""

from __future__ import annotations

import base64
import binascii
import bisect
import hashlib
import itertools
import json
from collections.abc import Callable, Iterable, Iterator, MutableSequence, Sequence
from dataclasses import dataclass
from typing import TypeVar

from kimball_grpc.core.errors import InvalidArgument, ResourceExhausted
from kimball_grpc.core.limits import MAX_PAGE_SIZE, MAX_PAGE_TOKEN_CHARS
from kimball_grpc.core.steps import ITEMS_PER_STEP, Steps

Key = tuple[str, ...]
T = TypeVar("T")
M = TypeVar("M")

# Bytes of an answer that are not its items: the next_page_token field (a token of at
# most MAX_PAGE_TOKEN_CHARS) and small fields such as a version and a fingerprint.
ENVELOPE_BYTES = MAX_PAGE_TOKEN_CHARS + 128


_END = object()  # no more items


class AnswerTooLarge(ResourceExhausted):
    """An answer would be larger than the server sends (``max_response_bytes``)."""


@dataclass(frozen=True)
class PageRequest:
    """A checked ``page_size`` and ``page_token`` of one read."""

    scope: str  # digest of the read's method and parameters, carried in its tokens
    size: int  # at most this many items; 0: no count limit (the whole rest, or refused)
    after: Key | None  # the last key of the previous page; None: from the start

    def token(self, last: Key) -> str:
        """The ``next_page_token`` of a page that ended with the item keyed ``last``."""
        payload = json.dumps([self.scope, *last], ensure_ascii=False, separators=(",", ":"))
        return base64.urlsafe_b64encode(payload.encode()).decode().rstrip("=")


def page_request(scope: Sequence[str], page_size: int, page_token: str) -> PageRequest:
    """The page asked for by ``page_size`` and ``page_token`` in the read ``scope`` (the
    method and every parameter that selects items); ``InvalidArgument`` naming the field
    for a negative size or a token that is malformed or was given for another scope."""
    if page_size < 0:
        raise InvalidArgument(
            f"page_size must be 0 (the whole answer) or more, got {page_size}",
            page_size=str(page_size),
        )
    digest = hashlib.sha256("\x1f".join(scope).encode()).hexdigest()[:16]
    after = _token_key(page_token, digest) if page_token else None
    return PageRequest(digest, min(page_size, MAX_PAGE_SIZE), after)


def _token_key(token: str, digest: str) -> Key:
    def bad(why: str) -> InvalidArgument:
        return InvalidArgument(
            f"page_token {why}: send the next_page_token of the previous page, with the "
            f"request's other fields unchanged, or none for the first page",
            page_token=token[:64],
        )

    if len(token) > MAX_PAGE_TOKEN_CHARS or not token.isascii():
        raise bad("is not a page token")
    try:
        payload = base64.b64decode(token + "=" * (-len(token) % 4), altchars=b"-_", validate=True)
        fields = json.loads(payload.decode())
    except (binascii.Error, UnicodeDecodeError, ValueError, RecursionError):
        raise bad("is not a page token") from None
    if not (
        isinstance(fields, list) and len(fields) > 1 and all(isinstance(f, str) for f in fields)
    ):
        raise bad("is not a page token")
    if fields[0] != digest:
        raise bad("belongs to another request (another method, namespace or filter)")
    return tuple(fields[1:])


def name_key(name: str) -> Key:
    """The key of an item known by its name alone (a goal, a namespace, a feature spec)."""
    return (name,)


def itself(item: T) -> T:
    """An item as it is: the name of a name, the message of a message."""
    return item


def named_after(items: Sequence[T], name: Callable[[T], str], after: Key | None) -> Iterator[T]:
    """The ``items`` (sorted by ``name``) keyed ``(name,)`` above ``after``, in order."""
    start = 0 if after is None else bisect.bisect_right(items, after[0], key=name)
    return (items[index] for index in range(start, len(items)))


def page(
    ordered: Iterable[T],
    key: Callable[[T], Key],
    request: PageRequest,
    out: MutableSequence[M],
    add: Callable[[MutableSequence[M], T], int],
    max_bytes: int,
) -> Steps[str]:
    """The page that ``request`` asks for, into ``out`` (the answer's repeated field), and
    its ``next_page_token`` (empty on the last page), in steps of ``ITEMS_PER_STEP`` items
    (a whole answer may hold hundreds of thousands). ``ordered`` are the items whose ``key``
    is above ``request.after``, in key order; only as many are taken as the page holds,
    and one more. ``add(out, item)`` appends an item to ``out`` and gives its size in the
    answer: built in place, an answer is never copied whole.

    The answer stays within ``max_bytes``. A page (``request.size`` > 0) ends early rather
    than pass it. A whole answer (size 0) cannot, since a client that did not ask for pages
    would not look for the rest: past the limit it is ``AnswerTooLarge``, telling the
    client to page. So is one item that alone passes it.
    """
    items = iter(ordered)
    wanted = list(itertools.islice(items, request.size)) if request.size else items
    budget = max_bytes - ENVELOPE_BYTES
    last: T | None = None
    for taken, item in enumerate(wanted, start=1):
        budget -= add(out, item)
        if budget < 0:
            del out[-1]
            if not request.size:
                raise AnswerTooLarge(
                    f"the answer would be larger than this server's max_response_bytes "
                    f"({max_bytes} bytes): ask for it in pages with page_size (at most "
                    f"{MAX_PAGE_SIZE} items a page) and page_token",
                    limit="max_response_bytes",
                )
            if last is None:
                raise AnswerTooLarge(
                    f"one item alone is larger than this server's max_response_bytes "
                    f"({max_bytes} bytes)",
                    limit="max_response_bytes",
                )
            return request.token(key(last))
        last = item
        if taken % ITEMS_PER_STEP == 0:
            yield
    if request.size and last is not None and next(items, _END) is not _END:
        return request.token(key(last))
    return ""
