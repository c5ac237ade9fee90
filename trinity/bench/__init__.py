"""Benchmarks behind ``trinity bench ...``.

Each benchmark module exposes a config dataclass and a ``run_*`` function that prints
rich tables and returns (and writes) a JSON-able payload; :mod:`trinity.bench.report`
holds the table/JSON/machine-info helpers they share.
"""
