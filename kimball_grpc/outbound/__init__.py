"""Clients of other servers: channels with back-off, external prediction targets, and a
sidecar's calls to its api server."""
