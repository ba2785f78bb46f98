"""Input limits, documented in the README. One place, so every API agrees."""

from __future__ import annotations

MAX_NAME_LENGTH = 256  # characters in a namespace, event name, goal name or user id
MAX_BATCH_EVENTS = 10_000  # events in one batch request or one stream message
MAX_RELAYED_EVENTS = 100_000  # events in one message of a sidecar to the api server
DEFAULT_SPOOL_MAX_EVENTS = 10_000_000  # events a sidecar's spool holds, undelivered
MAX_EVENTS_PER_PREDICTION = 1_000  # events named in one prediction request
MAX_SUBSCRIPTION_EVENT_NAMES = 1_000  # event names one subscription filters on
MAX_MESSAGE_BYTES = 4 * 1024 * 1024  # one gRPC request message (and one REST body)
# One answer of a paged read (analytics, the lists) and the gRPC send limit: the setting
# max_response_bytes, from at least MAX_MESSAGE_BYTES (every other answer, such as the
# feature specs to sidecars, fits in that) to gRPC's own ceiling.
DEFAULT_MAX_RESPONSE_BYTES = 64 * 1024 * 1024
MAX_RESPONSE_BYTES_CEILING = 2**31 - 1
MAX_PAGE_SIZE = 10_000  # items in one page; a larger page_size is taken as this
MAX_PAGE_TOKEN_CHARS = 4096  # a token holds one key: names of at most 256 characters
# |value| of an event: sums of many such values stay finite and exact to the cent.
MAX_ABS_VALUE = 1e15
DEFAULT_NAMESPACE = "default"
