"""Subscriptions: filters, and a slow subscriber that never slows publishing."""

from __future__ import annotations

import asyncio
import random

from kimball_grpc.codec.proto_mapping import subscribe_response_wire
from kimball_grpc.core.events import AcceptedEvent, Event
from kimball_grpc.generated.kimball.v1 import kimball_pb2 as pb
from kimball_grpc.streaming.subscriptions import EventFilter, Subscription, SubscriptionHub


def accepted(sequence: int, name: str = "e", namespace: str = "default") -> AcceptedEvent:
    return AcceptedEvent(sequence, Event(event_name=name, user_id="u", namespace=namespace))


def sequences(entries: list[bytes]) -> list[int]:
    """The sequence numbers of what a subscription took, as a subscriber reads them."""
    response = pb.SubscribeResponse.FromString(subscribe_response_wire(entries, 0, True))
    return [e.sequence for e in response.events]


async def next_sequence(subscription: Subscription) -> int:
    (sequence,) = sequences(await subscription.next())
    return sequence


def test_filters_match_namespace_names_and_prefix() -> None:
    event = Event(event_name="checkout_paid", user_id="u", namespace="shop")
    assert EventFilter().matches(event)
    assert EventFilter(namespace="shop", event_name_prefix="checkout_").matches(event)
    assert EventFilter(event_names=frozenset({"checkout_paid", "x"})).matches(event)
    assert not EventFilter(namespace="default").matches(event)
    assert not EventFilter(event_names=frozenset({"x"})).matches(event)
    assert not EventFilter(event_name_prefix="view").matches(event)


async def test_full_queue_drops_the_oldest_and_counts_it() -> None:
    hub = SubscriptionHub(max_queue=3)
    slow = hub.subscribe(EventFilter())
    hub.publish([accepted(i) for i in range(1, 6)])
    assert slow.dropped == 2
    got = [await next_sequence(slow) for _ in range(3)]
    assert got == [3, 4, 5]


async def test_waiting_subscriber_wakes_on_publish() -> None:
    hub = SubscriptionHub()
    subscription = hub.subscribe(EventFilter(event_names=frozenset({"wanted"})))
    waiting = asyncio.create_task(subscription.next())
    await asyncio.sleep(0)
    hub.publish([accepted(1, "other"), accepted(2, "wanted")])
    assert sequences(await asyncio.wait_for(waiting, 5)) == [2]
    hub.unsubscribe(subscription)
    assert hub.subscriber_count == 0


async def test_a_filtered_subscriber_counts_only_the_matching_events_it_missed() -> None:
    hub = SubscriptionHub(max_queue=4)
    shop = hub.subscribe(EventFilter(namespace="shop"))
    buys = hub.subscribe(EventFilter(event_names=frozenset({"buy"})))
    prefixed = hub.subscribe(EventFilter(namespace="shop", event_name_prefix="b"))
    # 10 events, 4 of them in "shop" (1, 4, 7, 10), 2 of those "buy" (4, 10).
    hub.publish(
        [
            accepted(i, "buy" if i in (4, 10) else "view", "shop" if i % 3 == 1 else "blog")
            for i in range(1, 11)
        ]
    )
    # The ring holds 7..10: "shop" missed 1 and 4, read 7 and 10; "buy" missed 4 only.
    assert (shop.dropped, buys.dropped, prefixed.dropped) == (2, 1, 1)
    assert [await next_sequence(shop) for _ in range(2)] == [7, 10]
    assert await next_sequence(buys) == 10
    assert await next_sequence(prefixed) == 10


async def test_dropped_grows_over_each_overrun_and_not_for_events_before_subscribing() -> None:
    hub = SubscriptionHub(max_queue=3)
    hub.subscribe(EventFilter())  # keeps the ring's history while the next one starts
    hub.publish([accepted(i, namespace="shop") for i in range(1, 4)])
    late = hub.subscribe(EventFilter(namespace="shop"))
    hub.publish([accepted(i, namespace="shop") for i in range(4, 6)])
    assert late.dropped == 0  # 1..3 came before it; 4 and 5 are held
    assert await next_sequence(late) == 4
    hub.publish([accepted(i, namespace="shop") for i in range(6, 11)])
    assert late.dropped == 3  # 5, 6 and 7 overwritten unread
    assert [await next_sequence(late) for _ in range(3)] == [8, 9, 10]
    hub.publish([accepted(i, namespace="blog") for i in range(11, 20)])
    assert late.dropped == 3  # nothing of "shop" missed


async def test_what_a_subscriber_reads_plus_what_it_dropped_is_every_matching_event() -> None:
    rng = random.Random(7)
    hub = SubscriptionHub(max_queue=16)
    filters = [
        EventFilter(),
        EventFilter(namespace="a"),
        EventFilter(event_names=frozenset({"x", "y"})),
        EventFilter(namespace="b", event_name_prefix="x"),
    ]
    subscriptions = [hub.subscribe(f) for f in filters]
    published: list[AcceptedEvent] = []
    read: list[list[int]] = [[] for _ in filters]
    sequence = 0
    for _ in range(300):
        batch = []
        for _ in range(rng.randint(1, 12)):
            sequence += 1
            batch.append(accepted(sequence, rng.choice(("x", "xa", "y", "z")), rng.choice("abc")))
        hub.publish(batch)
        published.extend(batch)
        for i, subscription in enumerate(subscriptions):
            pace = rng.random()
            if pace < 0.3:
                continue  # away: the ring may overwrite what it has not looked at
            if pace < 0.6:
                assert subscription.dropped >= 0  # looks, reads nothing
                continue
            read[i].extend(sequences(subscription.poll(rng.randint(1, 8))))
    for i, subscription in enumerate(subscriptions):
        while got := subscription.poll(5):
            read[i].extend(sequences(got))
        matching = [a.sequence for a in published if filters[i].matches(a.event)]
        assert read[i] == sorted(read[i]) and set(read[i]) <= set(matching)
        assert len(read[i]) + subscription.dropped == len(matching), filters[i]
        assert subscription.unseen > 0 and subscription.lost > 0, filters[i]


def test_each_event_is_encoded_once_for_every_subscriber() -> None:
    hub = SubscriptionHub()
    everyone = [hub.subscribe(EventFilter()) for _ in range(3)]
    hub.publish([accepted(i) for i in range(1, 6)])
    taken = [subscription.poll(10) for subscription in everyone]
    assert sequences(taken[0]) == [1, 2, 3, 4, 5]
    # The same bytes objects: encoded by the first subscriber, shared with the others.
    assert all(a is b for other in taken[1:] for a, b in zip(taken[0], other, strict=True))


def test_a_batch_stops_at_its_limit_and_at_about_a_mebibyte() -> None:
    hub = SubscriptionHub()
    subscription = hub.subscribe(EventFilter())
    hub.publish([accepted(i, "n" * 200_000) for i in range(1, 13)])
    assert [len(subscription.poll(3)) for _ in range(2)] == [3, 3]
    # 200 kB events: the batch that passes 1 MiB is the last to grow.
    assert len(subscription.poll(1000)) == 6


def test_events_up_to_the_resume_point_are_skipped() -> None:
    hub = SubscriptionHub()
    subscription = hub.subscribe(EventFilter(), after=3)
    hub.publish([accepted(i) for i in range(2, 7)])
    assert sequences(subscription.poll(10)) == [4, 5, 6]
