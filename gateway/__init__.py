"""The REST gateway: the original HTTP API (``/v0/...``) translated onto gRPC methods."""
