"""Input limits, documented in the README. One place, so every API agrees."""

from __future__ import annotations

from typing import NamedTuple

from kimball_grpc.core.errors import LimitExceeded

MAX_NAME_LENGTH = 256  # characters in a namespace, event name, goal name or user id
MAX_BATCH_EVENTS = 10_000  # events in one batch request or one stream message
MAX_RELAYED_EVENTS = 100_000  # events in one message of a sidecar to the api server
DEFAULT_SPOOL_MAX_EVENTS = 10_000_000  # events a sidecar's spool holds, undelivered
MAX_EVENTS_PER_PREDICTION = 1_000  # events named in one prediction request
MAX_SUBSCRIPTION_EVENT_NAMES = 1_000  # event names one subscription filters on
# The latest accepted events held for subscribers to read (one ring, shared by all).
DEFAULT_SUBSCRIBER_BUFFER_EVENTS = 10_000
# At most: about 40 MB of events, and a subscriber that falls a whole ring behind looks at
# it once, in one go.
MAX_SUBSCRIBER_BUFFER_EVENTS = 100_000
MAX_MESSAGE_BYTES = 4 * 1024 * 1024  # one gRPC message
# |value| of an event: sums of many such values stay finite and exact to the cent.
MAX_ABS_VALUE = 1e15
DEFAULT_NAMESPACE = "default"


class Limit(NamedTuple):
    """A limit on something clients can make grow. Past it, requests are refused with
    ``LimitExceeded`` (RESOURCE_EXHAUSTED) and counted by ``name``."""

    name: str  # the label of kimball_limit_refusals_total and ErrorInfo's "limit"
    noun: str  # what is limited, singular: "namespace"
    setting: str  # the environment variable that sets it ("" for a fixed limit)
    default: int

    def exceeded(self, maximum: int, scope: str = "", **details: str) -> LimitExceeded:
        """The refusal: "namespace limit reached: 10000 namespaces (KIMBALL_MAX_NAMESPACES)";
        ``scope`` follows the count (" in namespace 'shop'")."""
        how = f" ({self.setting})" if self.setting else ""
        return LimitExceeded(
            f"{self.noun} limit reached: {maximum} {self.noun}s{scope}{how}",
            limit=self.name,
            setting=self.setting,
            **details,
        )


# Long-lived streams open at once (an idle one holds about 30 KB): of any kind, and
# subscriptions (Subscribe, WatchFeatureSpecs) among them.
STREAMS = Limit("streams", "stream", "KIMBALL_MAX_STREAMS", 2_000)
SUBSCRIBERS = Limit("subscribers", "subscriber", "KIMBALL_MAX_SUBSCRIBERS", 1_000)
STREAM_LIMITS = (STREAMS, SUBSCRIBERS)
LIMITS = STREAM_LIMITS  # every limit that refusals are counted by
