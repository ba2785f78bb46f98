"""Input limits, documented in the README. One place, so every API agrees."""

from __future__ import annotations

MAX_NAME_LENGTH = 256  # characters in a namespace, event name, goal name or user id
MAX_BATCH_EVENTS = 10_000  # events in one batch request or one stream message
MAX_RELAYED_EVENTS = 100_000  # events in one message of a sidecar to the api server
DEFAULT_SPOOL_MAX_EVENTS = 10_000_000  # events a sidecar's spool holds, undelivered
MAX_EVENTS_PER_PREDICTION = 1_000  # events named in one prediction request
MAX_SUBSCRIPTION_EVENT_NAMES = 1_000  # event names one subscription filters on
# The latest accepted events held for subscribers to read (one ring, shared by all).
DEFAULT_SUBSCRIBER_BUFFER_EVENTS = 10_000
MAX_SUBSCRIBER_BUFFER_EVENTS = 1_000_000  # a subscriber that falls behind re-reads it once
DEFAULT_MAX_SUBSCRIBERS = 1_000  # Subscribe and WatchFeatureSpecs streams open at once
DEFAULT_MAX_STREAMS = 2_000  # long-lived streams of any kind open at once
MAX_MESSAGE_BYTES = 4 * 1024 * 1024  # one gRPC message
# |value| of an event: sums of many such values stay finite and exact to the cent.
MAX_ABS_VALUE = 1e15
DEFAULT_NAMESPACE = "default"
