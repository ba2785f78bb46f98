"""Kimball: self-hosted analytics and prediction service, gRPC first."""
