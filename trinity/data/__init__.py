"""Real-data layer: docstring passages and their all-MiniLM-L6-v2 embeddings.

See ``docs/corpus.md``. Importing this package is cheap: torch and
sentence-transformers load only when an :class:`Embedder` first encodes.
"""

from trinity.data.corpus import CORPUS_VERSION, sample_queries, stdlib_passages
from trinity.data.embed import MODEL_NAME, Embedder, default_cache_dir, load_embedded_corpus

__all__ = [
    "CORPUS_VERSION",
    "MODEL_NAME",
    "Embedder",
    "default_cache_dir",
    "load_embedded_corpus",
    "sample_queries",
    "stdlib_passages",
]
