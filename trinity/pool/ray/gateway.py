"""PD gateway replicas on Ray Serve: the gateway's own FastAPI app (``trinity.gateway.app.create_app``)
as a Serve application on its own route prefix, behind the same HTTP proxy as the pool and pointed
at it.  As the pool's router does, each replica builds its app in ``__serve_build_asgi_app__``;
Ray Serve then runs the app's lifespan with uvicorn's own ``LifespanOn`` (connecting to the pool and
the LLM instances, creating the caches) before the replica takes requests, and its shutdown when
the replica stops.  Answers (SSE streams included) carry ``x-trinity-gateway-replica``.
Imports Ray: load it only after :func:`trinity.pool.ray.require_ray`."""

from __future__ import annotations

from typing import Any

from ray import serve
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from trinity.gateway.app import create_app
from trinity.gateway.config import GatewayConfig
from trinity.pool.config import PoolConfig
from trinity.pool.ray.endpoints import gateway_url, pool_url

__all__ = ["REPLICA_HEADER", "GatewayReplica", "build_gateway_app", "deploy_gateway"]

REPLICA_HEADER = "x-trinity-gateway-replica"


class ReplicaHeader:
    """Adds ``x-trinity-gateway-replica: <Serve replica id>`` to every HTTP answer."""

    def __init__(self, app: ASGIApp, replica: str) -> None:
        self.app, self.header = app, (REPLICA_HEADER.encode(), replica.encode())

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def tagged(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", ()), self.header]}
            await send(message)

        await self.app(scope, receive, tagged)


@serve.ingress()
class GatewayReplica:
    """One gateway replica: the gateway app, built and started in the replica's own process."""

    def __init__(self, cfg: GatewayConfig, embedder: Any = None) -> None:
        self.cfg, self.embedder = cfg, embedder
        self.replica = serve.get_replica_context().replica_id.unique_id

    async def __serve_build_asgi_app__(self) -> ASGIApp:
        app = create_app(self.cfg, self.embedder)
        app.add_middleware(ReplicaHeader, replica=self.replica)
        return app


def build_gateway_app(gateway: GatewayConfig, replicas: int, pool: PoolConfig, embedder: Any = None
                      ) -> serve.Application:
    cfg = pool.ray
    logs = {"enable_access_log": cfg.access_log, "log_level": pool.log_level.upper()}
    deployment = serve.deployment(GatewayReplica).options(
        name="gateway", num_replicas=replicas, max_ongoing_requests=max(cfg.max_ongoing_requests,
                                                                        gateway.max_concurrency),
        health_check_period_s=cfg.health_check_period_s, graceful_shutdown_timeout_s=30.0, logging_config=logs,
        ray_actor_options={"num_cpus": cfg.num_cpus_per_gateway})
    return deployment.bind(gateway, embedder)


def deploy_gateway(pool: PoolConfig, gateway: GatewayConfig, replicas: int, embedder: Any = None) -> str:
    """Deploy ``replicas`` gateway replicas next to the pool deployed with ``pool`` (Serve running);
    returns their base URL on the proxy (OpenAI clients: ``<url>/v1``).  ``gateway.pool_url`` becomes
    the pool on the proxy, ``pool_api_key`` one of the pool's keys unless set; ``gateway.host`` and
    ``port`` are not used (the proxy serves both); ``embedder`` as in ``create_app``."""
    key = gateway.pool_api_key or (min(pool.api_keys) if pool.api_keys else None)
    gateway = gateway.model_copy(update={"pool_url": pool_url(pool, internal=True), "pool_api_key": key})
    serve.run(build_gateway_app(gateway, replicas, pool, embedder), name=pool.ray.gateway_app_name,
              route_prefix=pool.ray.gateway_route_prefix, blocking=False)
    return gateway_url(pool)
