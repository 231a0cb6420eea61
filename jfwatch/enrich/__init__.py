"""Enrichment: what the engine adds to parsed events before detection (where an address is)."""
