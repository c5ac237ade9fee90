"""Deploy the pool on a Ray cluster: ``deploy(pool_config, ray_config)`` (Python) and ``run`` behind
``trinity serve --ray``.  One ``pool-replica-<i>`` deployment per replica (one Ray Serve replica
each, so replica ``i`` always holds shard ``i`` and its own data directory; Ray restarts it when it
dies) and a ``pool-router`` ingress behind Ray Serve's HTTP proxy; optionally gateway replicas on
the same proxy (:mod:`trinity.pool.ray.gateway`).  Imports Ray: load it only after
:func:`trinity.pool.ray.require_ray`."""

from __future__ import annotations

import signal
import threading
from typing import TYPE_CHECKING

import ray
from ray import serve

from trinity.pool.config import PoolConfig
from trinity.pool.ray.config import RayConfig
from trinity.pool.ray.endpoints import gateway_url, load_gateway_config, pool_url
from trinity.pool.ray.ingress import build_router_app
from trinity.pool.ray.links import Replicas
from trinity.pool.ray.replica import PoolReplica
from trinity.pool.ray.router import Router

if TYPE_CHECKING:
    from trinity.gateway.config import GatewayConfig

__all__ = ["PoolRouter", "build_app", "connect", "deploy", "run", "undeploy"]

@serve.ingress()
class PoolRouter:
    """The HTTP ingress: places collections, fans requests out to the replicas, merges answers."""

    def __init__(self, pool: PoolConfig, cfg: RayConfig, *replicas: object) -> None:
        self.router = Router(pool, cfg, Replicas(replicas))

    async def __serve_build_asgi_app__(self):
        await self.router.refresh()
        return build_router_app(self.router)


def build_app(pool: PoolConfig, cfg: RayConfig) -> serve.Application:
    """The Ray Serve application: ``cfg.num_replicas`` pool replicas and the router in front."""
    logs = {"enable_access_log": cfg.access_log, "log_level": pool.log_level.upper()}
    replicas = []
    for i in range(cfg.num_replicas):
        deployment = serve.deployment(PoolReplica).options(
            name=f"pool-replica-{i}", num_replicas=1, max_ongoing_requests=cfg.max_ongoing_requests,
            health_check_period_s=cfg.health_check_period_s, health_check_timeout_s=max(10.0, cfg.health_check_period_s),
            graceful_shutdown_timeout_s=60.0, logging_config=logs,
            ray_actor_options={"num_cpus": cfg.num_cpus_per_replica, "num_gpus": cfg.num_gpus_per_replica})
        replicas.append(deployment.bind(pool, i))
    router = serve.deployment(PoolRouter).options(
        name="pool-router", num_replicas=cfg.num_routers, max_ongoing_requests=cfg.max_ongoing_requests * 4,
        logging_config=logs, ray_actor_options={"num_cpus": 0})
    return router.bind(pool, cfg, *replicas)


def connect(cfg: RayConfig) -> bool:
    """Join ``cfg.address`` (an existing cluster; ``auto``: this node's), or start a local one (True)."""
    if ray.is_initialized():
        return False
    if cfg.address:
        ray.init(address=cfg.address, log_to_driver=False)
        return False
    ray.init(num_cpus=cfg.num_local_cpus, include_dashboard=False, log_to_driver=False)
    return True


def check_local_cpus(cfg: RayConfig, gateways: int) -> None:
    """Refuse a layout the local cluster cannot place (Ray Serve would wait for it for ever)."""
    need = cfg.num_replicas * cfg.num_cpus_per_replica + gateways * cfg.num_cpus_per_gateway
    have = ray.cluster_resources().get("CPU", 0.0)
    if need > have:
        ray.shutdown()
        raise ValueError(f"the local Ray cluster has {have:g} CPUs and the deployment reserves {need:g} "
                         f"({cfg.num_replicas} pool replicas x {cfg.num_cpus_per_replica:g}, {gateways} gateway "
                         f"replicas x {cfg.num_cpus_per_gateway:g}): lower --ray-num-cpus-per-replica or "
                         "--ray-num-cpus-per-gateway, or raise --ray-num-local-cpus")


def deploy(pool: PoolConfig, cfg: RayConfig | None = None, *, gateway: GatewayConfig | None = None,
           num_gateway_replicas: int | None = None) -> str:
    """Deploy (or update) the pool on the cluster and return its base URL once every replica is up.

    ``cfg`` replaces ``pool.ray``.  Gateway replicas (``num_gateway_replicas``; default
    ``cfg.gateway_replicas``, or 1 when ``gateway`` is given; ``gateway`` defaults to
    ``cfg.gateway_config``) follow on the same proxy at :func:`~trinity.pool.ray.endpoints.gateway_url`."""
    pool = pool if cfg is None else pool.model_copy(update={"ray": cfg})
    cfg = pool.ray
    n = num_gateway_replicas if num_gateway_replicas is not None else cfg.gateway_replicas or int(gateway is not None)
    if n and gateway is None:
        gateway = load_gateway_config(cfg)
    if connect(cfg):
        check_local_cpus(cfg, n)
    serve.start(http_options={"host": pool.host, "port": pool.port},
                logging_config={"enable_access_log": cfg.access_log, "log_level": pool.log_level.upper()})
    serve.run(build_app(pool, cfg), name=cfg.app_name, route_prefix=cfg.route_prefix, blocking=False)
    if n:
        from trinity.pool.ray.gateway import deploy_gateway

        deploy_gateway(pool, gateway, n)
    return pool_url(pool)


def undeploy(cfg: RayConfig | None = None) -> None:
    """Delete the gateway replicas (if any), then the pool (each replica snapshots its collections)."""
    cfg = cfg or RayConfig()
    serve.delete(cfg.gateway_app_name)  # NOTE: a no-op when there is none
    serve.delete(cfg.app_name)


def run(pool: PoolConfig, gateway: GatewayConfig | None = None) -> None:
    """``trinity serve --ray``: deploy ``pool.ray`` (and gateway replicas), serve until SIGINT / SIGTERM,
    then undeploy."""
    cfg = pool.ray
    pool.check_bind()
    url = deploy(pool, gateway=gateway, num_gateway_replicas=cfg.gateway_replicas)
    print(f"trinity pool on Ray Serve: {url} ({cfg.num_replicas} replicas, default placement {cfg.placement})",
          flush=True)
    if cfg.gateway_replicas:
        print(f"trinity gateway on Ray Serve: {gateway_url(pool)} ({cfg.gateway_replicas} replicas; OpenAI "
              f"clients: {gateway_url(pool)}/v1)", flush=True)
    print("Ctrl-C stops it", flush=True)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    apps = f"{cfg.gateway_app_name} and {cfg.app_name}" if cfg.gateway_replicas else cfg.app_name
    print(f"shutting down: undeploying {apps} (pool replicas snapshot their collections)", flush=True)
    undeploy(cfg)
    if not cfg.address:
        serve.shutdown()
        ray.shutdown()
