"""The vector pool as an HTTP service (FastAPI): durable collections, search, semantic caches.

Entry points: :func:`trinity.serving.app.create_app` and ``trinity serve``
(:mod:`trinity.serving.server`).  Nothing is imported here so that light users of the
package do not pay for FastAPI or torch.
"""
