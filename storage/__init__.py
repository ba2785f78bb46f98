"""Durable storage: one blob interface with local, S3 and GCS backends, the write-ahead log
and snapshots."""
