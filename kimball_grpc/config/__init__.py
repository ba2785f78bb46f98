"""Configuration: command line, environment and config files, parsed once into typed settings."""
