"""Fits of data that do not sit in memory at once: data sources, the chunked (exact) and online
(stochastic) runners. They take any pass the engine defines (see ARCHITECTURE.md)."""
