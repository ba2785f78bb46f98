"""The gRPC API: servicers, interceptors (authentication, start-up gate, errors to status,
metrics), the in-process channel, and the one ingestion hand-off."""
