"""Clients of Trinity's services: the async vector-pool client used by the gateway and the demo."""

from trinity.client.pool import CacheLookup, PoolClient, PoolError, SearchHit, SearchResult

__all__ = ["CacheLookup", "PoolClient", "PoolError", "SearchHit", "SearchResult"]
