"""The pool's routes, one module per resource: collections, vectors, search, caches, ops."""
