"""Encodings: engine state and records to bytes, protobuf messages to core types, Erlang
term files, and the error details attached to gRPC statuses."""
