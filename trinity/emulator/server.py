"""OpenAI-compatible HTTP front of an emulated prefill/decode engine (``trinity emulate``).

EMULATOR, NOT AN LLM: the text is deterministic filler; token counts (a real tokenizer),
timing, continuous batching, request validation, vLLM's metrics and the KV-connector
handshakes (NIXL, P2P NCCL, Mooncake) are modelled. Routes: ``/v1/completions``,
``/v1/chat/completions`` (SSE streaming or not), ``/v1/models``, ``/health``, ``/metrics``,
and test hooks under ``/debug/`` (``requests``, ``faults``, ``state``). Every error is
OpenAI-shaped, unknown routes included.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from trinity.emulator.connectors import ConnectorConfig
from trinity.emulator.engine import EmulatedEngine, EngineConfig
from trinity.emulator.faults import FaultConfig, Faults, RequestLog
from trinity.emulator.generate import Generator, error
from trinity.emulator.metrics import EmulatorMetrics
from trinity.protocol import openai as wire

__all__ = ["EmulatorConfig", "create_app", "run"]


@dataclass(frozen=True)
class EmulatorConfig:
    """Everything ``trinity emulate`` configures."""

    engine: EngineConfig = field(default_factory=EngineConfig)
    faults: FaultConfig = field(default_factory=FaultConfig)
    connector: ConnectorConfig = field(default_factory=ConnectorConfig)
    served_model_names: tuple[str, ...] = ()  # vLLM's --served-model-name (default: the model)
    enable_auto_tool_choice: bool = True  # vLLM's --enable-auto-tool-choice (hermes-style calls)
    default_completion_max_tokens: int = 16  # OpenAI/vLLM default for /v1/completions
    default_chat_max_tokens: int = 256  # NOTE: vLLM uses the whole remaining context; too slow here.
    request_log_size: int = 2000

    @property
    def served_names(self) -> tuple[str, ...]:
        return self.served_model_names or (self.engine.model,)


def _debug_routes(app: FastAPI, cfg: EmulatorConfig, state: dict[str, Any], faults: Faults, log: RequestLog) -> None:
    @app.get("/debug/requests")
    async def debug_requests() -> list[dict[str, Any]]:
        return log.entries()

    @app.delete("/debug/requests")
    async def debug_clear() -> dict[str, Any]:
        log.clear()
        return {"cleared": True}

    @app.get("/debug/faults")
    async def get_faults() -> dict[str, Any]:
        return faults.as_dict()

    @app.post("/debug/faults")
    async def set_faults(request: Request) -> Response:
        try:
            changes = await request.json()
            if changes.pop("reset", False):
                faults.reset()
            faults.update(changes)
        except (ValueError, TypeError, AttributeError) as exc:
            return error(f"faults: {exc}", 400)
        return JSONResponse(faults.as_dict())

    @app.get("/debug/state")
    async def debug_state() -> dict[str, Any]:
        e = state["engine"]
        return {"role": cfg.engine.role, "engine_id": e.engine_id, "running": e.num_running,
                "waiting": e.num_waiting, "config": asdict(cfg.engine), "connector": asdict(cfg.connector)}


def create_app(config: EmulatorConfig | None = None) -> FastAPI:
    """Build the emulator app; the engine loop starts with the app's lifespan."""
    cfg = config or EmulatorConfig()
    metrics = EmulatorMetrics(cfg.engine.role, cfg.served_names[0], cfg.engine.max_model_len)
    faults, log = Faults(cfg.faults), RequestLog(cfg.request_log_size)
    state: dict[str, Any] = {}

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        state["engine"] = EmulatedEngine(cfg.engine, metrics)
        state["engine"].start()
        yield
        await state["engine"].stop()

    app = FastAPI(title=f"Trinity emulated {cfg.engine.role} engine (not a real LLM)", lifespan=lifespan)
    wire.install_error_handlers(app)
    wire.add_openai_routes(app, Generator(cfg, state, faults, log))

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [{
            "id": name, "object": "model", "created": 0, "owned_by": "trinity-emulator", "root": cfg.engine.model,
            "max_model_len": cfg.engine.max_model_len} for name in cfg.served_names]}

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "role": cfg.engine.role, "emulated": True, "kv_connector": cfg.connector.kind}

    @app.get("/metrics")
    async def prom() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    _debug_routes(app, cfg, state, faults, log)
    app.state.emulator_config = cfg
    return app


def run(config: EmulatorConfig, host: str, port: int, log_level: str = "warning") -> None:
    """Serve ``config`` on ``host:port`` until interrupted."""
    import uvicorn

    cfg = replace(config, engine=replace(config.engine, host=host, port=port))
    uvicorn.run(create_app(cfg), host=host, port=port, log_level=log_level, access_log=False)
