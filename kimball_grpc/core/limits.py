"""Input limits, documented in the README. One place, so every API agrees."""

from __future__ import annotations

MAX_NAME_LENGTH = 256  # characters in a namespace, event name, goal name or user id
MAX_BATCH_EVENTS = 10_000  # events in one batch request or one stream message
MAX_RELAYED_EVENTS = 100_000  # events in one message of a sidecar to the api server
DEFAULT_SPOOL_MAX_EVENTS = 10_000_000  # events a sidecar's spool holds, undelivered
MAX_EVENTS_PER_PREDICTION = 1_000  # events named in one prediction request
MAX_SUBSCRIPTION_EVENT_NAMES = 1_000  # event names one subscription filters on
MAX_MESSAGE_BYTES = 4 * 1024 * 1024  # one gRPC message
# |value| of an event: sums of many such values stay finite and exact to the cent.
MAX_ABS_VALUE = 1e15
DEFAULT_NAMESPACE = "default"
# How often Kimball's own clients (a sidecar's relay) ping a quiet connection; servers
# must allow pings at least this often.
KEEPALIVE_PING_SECONDS = 60
