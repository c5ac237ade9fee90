"""The router's HTTP app: the single-process pool's API (docs/api.md), served by fanning out to
the pool replicas.  Requests that one replica can answer pass through as bytes; its answer
(status, body, ``Retry-After``) comes back unchanged."""

from __future__ import annotations

from fastapi import FastAPI, Request
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from trinity.errors import ErrorCode
from trinity.pool.auth import KeyChecker
from trinity.pool.errors import FastJSONResponse, error_response, install_error_handlers
from trinity.pool.protocol import GetVectors, IdsRequest
from trinity.pool.ray import catalog, ops, search, writes
from trinity.pool.ray.asgi import Exchange
from trinity.pool.ray.router import Router

__all__ = ["build_router_app"]

_PASSED = (b"content-type", b"retry-after", b"www-authenticate")


def reply(ex: Exchange) -> Response:
    headers = {k.decode(): v.decode() for k, v in ex.headers if k.lower() in _PASSED}
    return Response(ex.body, status_code=ex.status, headers=headers)


class KeysAndSize:
    """API keys (401) and the body size cap (413), as the single-process pool checks them."""

    def __init__(self, app: ASGIApp, keys: frozenset[str], limit: int) -> None:
        self.app, self.auth, self.limit = app, KeyChecker(keys), limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            length = dict(scope["headers"]).get(b"content-length", b"0")
            if not self.auth.allowed(scope):
                resp = error_response(ErrorCode.UNAUTHENTICATED, "missing or invalid API key", "authorization",
                                      {"WWW-Authenticate": 'Bearer realm="trinity"'})
                return await resp(scope, receive, send)
            if not length.isdigit() or int(length) > self.limit:
                resp = error_response(ErrorCode.BODY_TOO_LARGE, f"request body exceeds {self.limit} bytes", "body")
                return await resp(scope, receive, send)
        await self.app(scope, receive, send)


def build_router_app(router: Router) -> FastAPI:
    app = FastAPI(title="Trinity vector pool (Ray Serve)", version="1.0", default_response_class=FastJSONResponse,
                  openapi_url=None, docs_url=None, redoc_url=None)
    install_error_handlers(app, router.pool.retry_after_s)
    app.add_middleware(KeysAndSize, keys=router.pool.api_keys, limit=router.pool.max_body_bytes)
    _ops_routes(app, router)
    _collection_routes(app, router)
    _cache_routes(app, router)
    return app


def _ops_routes(app: FastAPI, router: Router) -> None:
    own = CollectorRegistry()
    own.register(ops.RouterCollector(router.replicas))

    @app.get("/health")
    async def health() -> Response:
        return reply(await ops.health(router))

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(await ops.metrics(router, own), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/stats")
    async def stats() -> Response:
        return reply(await ops.stats(router))

    @app.get("/openapi.json")
    async def openapi() -> Response:
        return reply(await router.read_one(list(range(len(router.replicas))), "GET", "/openapi.json"))


def _collection_routes(app: FastAPI, router: Router) -> None:  # noqa: C901 - one closure per route
    every = list(range(len(router.replicas)))

    async def placed(name: str, request: Request):
        p = await router.placement(name)
        if p is None:  # NOTE: the pool's own 404 (or whatever a replica answers)
            return None, reply(await router.read_one(every, request.method, request.url.path, await request.body()))
        return p, None

    @app.post("/v1/collections", status_code=201)
    async def create(request: Request) -> Response:
        return reply(await catalog.create(router, await request.body()))

    @app.get("/v1/collections")
    async def list_collections() -> Response:
        return reply(await catalog.list_all(router))

    @app.api_route("/v1/collections/{name}", methods=["GET", "DELETE"])
    async def one(name: str, request: Request) -> Response:
        p, missing = await placed(name, request)
        if missing is not None:
            return missing
        return reply(await (catalog.describe if request.method == "GET" else catalog.drop)(router, name, p))

    @app.post("/v1/collections/{name}/train")
    async def train(name: str, request: Request) -> Response:
        p, missing = await placed(name, request)
        return missing or reply(await catalog.train(router, name, p))

    @app.put("/v1/collections/{name}/vectors")
    async def upsert(name: str, request: Request) -> Response:
        p, missing = await placed(name, request)
        return missing or reply(await writes.upsert(router, name, p, await request.body()))

    @app.post("/v1/collections/{name}/vectors/get")
    async def get_points(name: str, body: GetVectors, request: Request) -> Response:
        p, missing = await placed(name, request)
        return missing or reply(await catalog.get_points(router, name, p, body, await request.body()))

    @app.post("/v1/collections/{name}/vectors/delete")
    async def delete(name: str, body: IdsRequest, request: Request) -> Response:
        p, missing = await placed(name, request)
        return missing or reply(await writes.delete(router, name, p, body))

    @app.post("/v1/collections/{name}/search")
    async def run_search(name: str, request: Request) -> Response:
        p, missing = await placed(name, request)
        return missing or reply(await search.search(router, name, p, await request.body()))


def _cache_routes(app: FastAPI, router: Router) -> None:
    @app.post("/v1/caches", status_code=201)
    async def create(request: Request) -> Response:
        raw = await request.body()
        home = ops.cache_home(router, ops.cache_name(raw) or "")
        return reply((await router.write_all("POST", "/v1/caches", {home: raw}))[home])

    @app.get("/v1/caches")
    async def list_caches() -> Response:
        return reply(await ops.list_caches(router))

    @app.api_route("/v1/caches/{name}{rest:path}", methods=["GET", "POST", "DELETE"])
    async def one(name: str, rest: str, request: Request) -> Response:
        home = ops.cache_home(router, name)
        raw, path = await request.body(), request.url.path
        if request.method == "GET" or rest == "/lookup":
            return reply(await router.read_one([home], request.method, path, raw))
        return reply((await router.write_all(request.method, path, {home: raw}))[home])
