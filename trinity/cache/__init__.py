"""Semantic prompt/answer caches served from the shared vector pool."""

from trinity.cache.semantic import CacheMetrics, LookupResult, OverloadedError, SemanticCache

__all__ = ["CacheMetrics", "LookupResult", "OverloadedError", "SemanticCache"]
