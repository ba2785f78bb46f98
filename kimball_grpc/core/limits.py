"""Limits, in one place so every API agrees: fixed input limits, and the configurable
limits on how far clients can make the state grow (documented in operations.md)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

from kimball_grpc.core.errors import LimitExceeded

MAX_NAME_LENGTH = 256  # characters in a namespace, event name, goal name or user id
MAX_BATCH_EVENTS = 10_000  # events in one batch request or one stream message
MAX_RELAYED_EVENTS = 100_000  # events in one message of a sidecar to the api server
DEFAULT_SPOOL_MAX_EVENTS = 10_000_000  # events a sidecar's spool holds, undelivered
MAX_EVENTS_PER_PREDICTION = 1_000  # events named in one prediction request
MAX_SUBSCRIPTION_EVENT_NAMES = 1_000  # event names one subscription filters on
MAX_EVENTS_PER_SUBSCRIBE_RESPONSE = 1_000  # events a subscriber may ask for per response
# A response of several events stops growing past this size (far below a client's 4 MB
# receive limit, whatever the events' sizes).
SUBSCRIBE_RESPONSE_BYTES = 1024 * 1024
# A subscriber asking for several events per response gets those that arrive this soon
# after the first in the same response.
SUBSCRIBE_BATCH_WAIT_S = 0.005
MAX_MESSAGE_BYTES = 4 * 1024 * 1024  # one gRPC request message (and one REST body)
# One answer of a paged read (analytics, the lists) and the gRPC send limit: the setting
# max_response_bytes, from at least MAX_MESSAGE_BYTES (every other answer, such as the
# feature specs to sidecars, fits in that) to gRPC's own ceiling.
DEFAULT_MAX_RESPONSE_BYTES = 64 * 1024 * 1024
MAX_RESPONSE_BYTES_CEILING = 2**31 - 1
MAX_PAGE_SIZE = 10_000  # items in one page; a larger page_size is taken as this
MAX_PAGE_TOKEN_CHARS = 4096  # a token holds one key: names of at most 256 characters
# The latest accepted events held for subscribers to read (one ring, shared by all).
DEFAULT_SUBSCRIBER_BUFFER_EVENTS = 10_000
# At most: about 40 MB of events, and a subscriber that falls a whole ring behind looks at
# it once, in one go.
MAX_SUBSCRIBER_BUFFER_EVENTS = 100_000
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


# The defaults keep a server at every limit at once within 2 GiB and its snapshot under
# 5 s (measured by bench/bench_limits.py; figures in docs/benchmarks.md).
NAMESPACES = Limit("namespaces", "namespace", "KIMBALL_MAX_NAMESPACES", 1_000)
EVENT_NAMES = Limit("event_names", "event name", "KIMBALL_MAX_EVENT_NAMES", 10_000)  # per ns
COUNTERS = Limit("counters", "counter", "KIMBALL_MAX_COUNTERS", 200_000)  # named and weekly
GOALS = Limit("goals", "goal", "KIMBALL_MAX_GOALS", 100)  # per namespace
FEATURE_SPECS = Limit("feature_specs", "feature spec", "KIMBALL_MAX_FEATURE_SPECS", 10_000)
STATE_LIMITS = (NAMESPACES, EVENT_NAMES, COUNTERS, GOALS, FEATURE_SPECS)
# Fixed: the whole set of feature specs travels to sidecars in one gRPC message (4 MiB).
FEATURE_SPEC_BYTES = Limit("feature_spec_bytes", "feature spec size", "", 3 * 1024 * 1024)
# Long-lived streams open at once (an idle one holds about 30 KB): of any kind, and
# subscriptions (Subscribe, WatchFeatureSpecs) among them.
STREAMS = Limit("streams", "stream", "KIMBALL_MAX_STREAMS", 2_000)
SUBSCRIBERS = Limit("subscribers", "subscriber", "KIMBALL_MAX_SUBSCRIBERS", 1_000)
STREAM_LIMITS = (STREAMS, SUBSCRIBERS)
# Every limit that refusals are counted by.
LIMITS = (*STATE_LIMITS, FEATURE_SPEC_BYTES, *STREAM_LIMITS)


@dataclass(frozen=True)
class StateLimits:
    """The configured value of each limit of ``STATE_LIMITS``, by its name."""

    namespaces: int = NAMESPACES.default
    event_names: int = EVENT_NAMES.default
    counters: int = COUNTERS.default
    goals: int = GOALS.default
    feature_specs: int = FEATURE_SPECS.default


# How often Kimball's own clients (a sidecar's relay) ping a quiet connection; servers
# must allow pings at least this often.
KEEPALIVE_PING_SECONDS = 60
