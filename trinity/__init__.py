"""Trinity: one shared, continuously batched vector-search pool for prefill/decode
disaggregated LLM serving."""

import os

# NOTE: torch, numba and faiss each keep an OpenMP thread pool.  With OpenMP's default
# active spin-waiting, the idle pool of one library burns the cores the next one needs
# (measured on 2 cores: IVF search 3-4x slower).  Passive waiting must be chosen before
# any OpenMP runtime starts, hence here; an explicit user setting wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"
