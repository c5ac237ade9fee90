"""Trinity's vector index layer: FAISS-shaped Flat, IVF and graph indexes on blocked storage,
plus the primitives the continuous-batching engine drives (assign, scan, running top-k)."""

from trinity.index.blocks import BlockedLists
from trinity.index.flat import FlatIndex
from trinity.index.graph import GraphIndex
from trinity.index.ivf import IVFIndex
from trinity.index.metric import Metric, get_metric
from trinity.index.persist import IndexFormatError, load_index, save_index
from trinity.index.probes import ProbeChunk
from trinity.index.scan import scan
from trinity.index.topk import RunningTopK
from trinity.index.warmup import warmup

__all__ = [
    "BlockedLists", "FlatIndex", "GraphIndex", "IVFIndex", "IndexFormatError", "Metric", "ProbeChunk",
    "RunningTopK", "get_metric", "load_index", "save_index", "scan", "warmup",
]
