"""Helpers shared by the unit, integration and system tests (fixtures live in conftest.py)."""
