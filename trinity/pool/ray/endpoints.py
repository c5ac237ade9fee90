"""Where the pool and the gateway replicas answer on Ray Serve's proxy, and the gateway replicas'
config; apart from :mod:`trinity.pool.ray.config`, which the pool's config tree imports."""

from __future__ import annotations

from typing import TYPE_CHECKING

from trinity.config import config_error

if TYPE_CHECKING:
    from trinity.gateway.config import GatewayConfig
    from trinity.pool.config import PoolConfig
    from trinity.pool.ray.config import RayConfig

__all__ = ["gateway_url", "load_gateway_config", "pool_url"]


def load_gateway_config(cfg: RayConfig) -> GatewayConfig:
    """The gateway replicas' :class:`GatewayConfig`: ``cfg.gateway_config`` under ``TRINITY_GATEWAY_*``
    (``pool_url`` is set at deploy time to the pool on the proxy)."""
    from trinity.gateway.cli import build_config

    try:
        return build_config(cfg.gateway_config)
    except (ValueError, TypeError, OSError) as exc:
        where = cfg.gateway_config or "TRINITY_GATEWAY_* variables"
        raise ValueError(f"gateway replicas ({where}): {config_error(exc)}") from None


def _url(host: str, port: int, prefix: str) -> str:
    return f"http://{f'[{host}]' if ':' in host else host}:{port}{prefix.rstrip('/')}"


def pool_url(pool: PoolConfig, *, internal: bool = False) -> str:
    """The pool's base URL on the proxy; ``internal``: as a process on any node of the cluster reaches
    it (every node runs a proxy on the same port, so a wildcard bind is reached on loopback)."""
    wildcard = internal and pool.host in ("0.0.0.0", "::", "")
    return _url("127.0.0.1" if wildcard else pool.host, pool.port, pool.ray.route_prefix)


def gateway_url(pool: PoolConfig) -> str:
    """The gateway replicas' base URL on the proxy (OpenAI clients: ``<url>/v1``)."""
    return _url(pool.host, pool.port, pool.ray.gateway_route_prefix)
