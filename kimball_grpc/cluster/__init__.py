"""Cluster mode: the NATS JetStream parts (docs/scale-out.md). nats-py is imported only here."""
