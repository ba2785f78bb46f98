"""The core: Bloom filters, counters, goals, predictions, feature flags and the engine.

Plain Python with no I/O: it imports only the standard library, mmh3 and bitarray.
"""
