"""Distance metrics.

Every index scores candidates internally as a *similarity* (higher is better) so that a
single set of kernels and one running top-k direction serve all metrics.  A
:class:`Metric` knows how to map vectors and queries into that space and how to map
internal scores back to the values the user expects (FAISS conventions: inner product
for ``ip``/``cosine``, squared L2 distance for ``l2``), including the heap sentinel
used to pad results.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Metric:
    """A metric and its conventions.

    Attributes:
        name: ``"ip"``, ``"l2"`` or ``"cosine"``.
        higher_is_better: direction of the *user-visible* value in ``D``.
        sentinel: the worst possible user-visible value; pads ``D`` where ``I == -1``.
    """

    name: str
    higher_is_better: bool
    sentinel: float

    @property
    def normalizes(self) -> bool:
        """Whether vectors and queries are L2-normalised on the way in (cosine)."""
        return self.name == "cosine"

    @property
    def uses_norms(self) -> bool:
        """Whether stored vectors carry an auxiliary ``-||x||^2`` term (L2)."""
        return self.name == "l2"

    def prepare_vectors(self, x: torch.Tensor) -> torch.Tensor:
        """Map database vectors into the internal scoring space."""
        return _normalize(x) if self.normalizes else x

    def vector_aux(self, x: torch.Tensor) -> torch.Tensor:
        """Per-vector additive term: ``-||x||^2`` for L2, zeros otherwise."""
        if self.uses_norms:
            return -(x.float() * x.float()).sum(dim=1)
        return torch.zeros(x.shape[0], dtype=torch.float32, device=x.device)

    def prepare_queries(self, q: torch.Tensor) -> torch.Tensor:
        """Map queries so that ``dot(q', x) + aux(x)`` is the internal similarity.

        NOTE: for L2, ``-||q - x||^2 = 2 q.x - ||x||^2 - ||q||^2``; the ``-||q||^2`` term
        is constant per query, so it is dropped while ranking and restored in
        :meth:`to_user`.
        """
        if self.normalizes:
            return _normalize(q)
        if self.uses_norms:
            return q * 2.0
        return q

    def query_offset(self, q: torch.Tensor) -> torch.Tensor:
        """Per-query constant restored by :meth:`to_user` (``||q||^2`` for L2)."""
        if self.uses_norms:
            return (q.float() * q.float()).sum(dim=1)
        return torch.zeros(q.shape[0], dtype=torch.float32, device=q.device)

    def to_user(self, scores: torch.Tensor, offset: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """Convert internal similarities to user-visible values; pad invalid slots."""
        out = (offset[:, None] - scores).clamp_min_(0.0) if self.uses_norms else scores.clone()
        return out.masked_fill_(~valid, self.sentinel)


_METRICS = {
    "ip": Metric("ip", higher_is_better=True, sentinel=-math.inf),
    "cosine": Metric("cosine", higher_is_better=True, sentinel=-math.inf),
    "l2": Metric("l2", higher_is_better=False, sentinel=math.inf),
}

#: Internal scores are similarities; this is their heap sentinel (an empty slot).
SCORE_SENTINEL = -math.inf


def get_metric(metric: str | Metric) -> Metric:
    """Resolve a metric name (``ip``, ``l2``, ``cosine``) or pass a :class:`Metric` through."""
    if isinstance(metric, Metric):
        return metric
    try:
        return _METRICS[str(metric).lower()]
    except KeyError:
        raise ValueError(f"unknown metric {metric!r}: expected one of {sorted(_METRICS)}") from None


def _normalize(x: torch.Tensor) -> torch.Tensor:
    norms = torch.linalg.vector_norm(x.float(), dim=1, keepdim=True).clamp_min_(1e-12)
    return (x.float() / norms).to(x.dtype)
