"""The vector pool service: one shared, durable, continuously batched vector-search pool over HTTP.

``app`` (FastAPI app and lifespan), ``routes/`` (one module per resource), ``protocol`` (wire
models), ``storage/`` (WAL, snapshots, catalog, durable collections), ``config`` (PoolConfig),
``cli`` (``trinity serve``).
"""
