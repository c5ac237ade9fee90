"""The pool on Ray Serve: one ``PoolReplica`` deployment per replica (each the single-process pool
with its own data directory) behind a ``PoolRouter`` ingress that places collections (replicated
or sharded), fans searches out and merges top-k lists; optionally PD gateway replicas on the same
HTTP proxy (:mod:`trinity.pool.ray.gateway`).  See docs/ray.md.

Ray is optional (``pip install 'trinity[ray]'``); nothing here imports it until it is used.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from trinity.pool.ray.endpoints import gateway_url, pool_url

if TYPE_CHECKING:
    from trinity.gateway.config import GatewayConfig
    from trinity.pool.config import PoolConfig
    from trinity.pool.ray.config import RayConfig

__all__ = ["MISSING_RAY", "deploy", "gateway_url", "pool_url", "require_ray", "undeploy"]

MISSING_RAY = "Ray Serve is not installed: pip install 'trinity[ray]'"


def require_ray() -> None:
    """Raise a one-line :class:`RuntimeError` naming the extra when ``ray[serve]`` is missing."""
    try:
        import ray  # noqa: F401
        from ray import serve  # noqa: F401
    except ImportError:
        raise RuntimeError(MISSING_RAY) from None


def deploy(pool: PoolConfig, cfg: RayConfig | None = None, *, gateway: GatewayConfig | None = None,
           num_gateway_replicas: int | None = None) -> str:
    """Deploy the pool on the Ray cluster of ``cfg.address`` (``cfg`` defaults to ``pool.ray``; none: a
    local one), and gateway replicas on the same proxy (:func:`gateway_url`); returns the pool's URL."""
    require_ray()
    from trinity.pool.ray.deploy import deploy as _deploy

    return _deploy(pool, cfg, gateway=gateway, num_gateway_replicas=num_gateway_replicas)


def undeploy(cfg: RayConfig | None = None) -> None:
    require_ray()
    from trinity.pool.ray.deploy import undeploy as _undeploy

    _undeploy(cfg)
