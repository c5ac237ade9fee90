"""Durable storage of the pool: per-collection write-ahead log and snapshots, and the catalog."""
