"""Sidecar mode: a relay next to applications that spools events on disk and streams them
to the api server, forwards reads, and answers feature flags from its own copy."""
