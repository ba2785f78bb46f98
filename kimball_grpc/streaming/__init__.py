"""Accepted events on their way out: live subscriptions, forwarding to event targets, and
watches of feature spec changes."""
