"""Subscriptions: filters, and a slow subscriber that never slows publishing."""

from __future__ import annotations

import asyncio

from kimball_grpc.core.events import AcceptedEvent, Event
from kimball_grpc.streaming.subscriptions import EventFilter, SubscriptionHub


def accepted(sequence: int, name: str = "e", namespace: str = "default") -> AcceptedEvent:
    return AcceptedEvent(sequence, Event(event_name=name, user_id="u", namespace=namespace))


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
    got = [(await slow.next()).sequence for _ in range(3)]
    assert got == [3, 4, 5]


async def test_waiting_subscriber_wakes_on_publish_and_ends_on_close() -> None:
    hub = SubscriptionHub()
    subscription = hub.subscribe(EventFilter(event_names=frozenset({"wanted"})))
    waiting = asyncio.create_task(subscription.next())
    await asyncio.sleep(0)
    hub.publish([accepted(1, "other"), accepted(2, "wanted")])
    assert (await asyncio.wait_for(waiting, 5)).sequence == 2
    closing = asyncio.create_task(subscription.next())
    await asyncio.sleep(0)
    hub.close_all()
    assert await asyncio.wait_for(closing, 5) is None
    assert hub.subscriber_count == 0
    assert await hub.subscribe(EventFilter()).next() is None
