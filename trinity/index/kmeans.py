"""Lloyd's k-means on torch (CPU or CUDA), used to train IVF coarse quantizers."""

from __future__ import annotations

import torch

_ASSIGN_ROWS = 16384  # rows per assignment GEMM; bounds the score buffer


def nearest(x: torch.Tensor, centroids: torch.Tensor, c_aux: torch.Tensor) -> torch.Tensor:
    """Index of the best centroid per row, by ``x . c + c_aux`` (internal similarity)."""
    out = torch.empty(x.shape[0], dtype=torch.long, device=x.device)
    for s in range(0, x.shape[0], _ASSIGN_ROWS):
        scores = torch.mm(x[s:s + _ASSIGN_ROWS].float(), centroids.t()) + c_aux
        out[s:s + _ASSIGN_ROWS] = scores.argmax(dim=1)
    return out


def kmeans(x: torch.Tensor, k: int, *, niter: int = 20, seed: int = 0, spherical: bool = False,
           max_points_per_centroid: int = 64) -> torch.Tensor:
    """Return ``(k, d)`` float32 centroids of ``x``.

    Subsamples to ``k * max_points_per_centroid`` points (as FAISS does) and re-seeds
    empty clusters from random points.  ``spherical`` normalises centroids (cosine).
    """
    n = x.shape[0]
    if n < k:
        raise ValueError(f"train: need at least nlist={k} training vectors, got {n}")
    g = torch.Generator(device="cpu").manual_seed(seed)
    if n > k * max_points_per_centroid:
        x = x[torch.randperm(n, generator=g)[: k * max_points_per_centroid].to(x.device)]
        n = x.shape[0]
    x = x.float()
    centroids = x[torch.randperm(n, generator=g)[:k].to(x.device)].clone()
    for _ in range(niter):
        # NOTE: nearest in L2 is argmax of 2 x.c - ||c||^2, one GEMM per row chunk.
        assign = nearest(x, 2.0 * centroids, -(centroids * centroids).sum(1))
        counts = torch.bincount(assign, minlength=k)
        sums = torch.zeros_like(centroids).index_add_(0, assign, x)
        empty = counts == 0
        centroids = sums / counts.clamp_min(1).unsqueeze(1).float()
        if bool(empty.any()):
            refill = torch.randint(0, n, (int(empty.sum()),), generator=g).to(x.device)
            centroids[empty] = x[refill]
        if spherical:
            centroids = centroids / centroids.norm(dim=1, keepdim=True).clamp_min(1e-12)
    return centroids.contiguous()
