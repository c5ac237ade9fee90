"""``PoolConfig``: everything one pool server process is configured with, scheduler included.

Sources, highest first: flags, ``TRINITY_*`` variables (``TRINITY_API_KEYS`` comma separated,
``TRINITY_DATA_DIR``, ``TRINITY_SCHEDULER__TARGET_ITERATION_MS``, ...), ``--config FILE``
(TOML or JSON; a ``[scheduler]`` table for the engine, a ``[ray]`` table for ``trinity serve --ray``:
``TRINITY_RAY__NUM_REPLICAS``, ...), defaults.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Annotated, Any

from pydantic import Field, field_validator
from pydantic_settings import NoDecode, SettingsConfigDict

from trinity.config import Settings
from trinity.engine import SchedulerConfig
from trinity.pool.ray.config import RayConfig

__all__ = ["DEFAULT_DEADLINES_MS", "PoolConfig", "is_loopback", "parse_stage_deadlines"]

DEFAULT_MAX_BODY_BYTES = 64 << 20
DEFAULT_DEADLINES_MS = (100.0, 1000.0, 10_000.0)
_STAGES = ("decode", "prefill", "background")


def pool_scheduler() -> SchedulerConfig:
    """The engine defaults of a pool: server-side deadlines per stage and sojourn admission."""
    return SchedulerConfig(default_deadline_ms=DEFAULT_DEADLINES_MS, admission_share=0.25)


def parse_stage_deadlines(text: str) -> tuple[float, float, float]:
    """``"decode=100,prefill=1000,background=10000"`` (ms; stages left out keep the default)."""
    out = dict(zip(_STAGES, DEFAULT_DEADLINES_MS))
    for part in (p.strip() for p in text.split(",") if p.strip()):
        stage, _, value = part.partition("=")
        if stage.strip() not in out:
            raise ValueError(f"default_deadline_ms: unknown stage {stage.strip()!r}; expected {', '.join(_STAGES)}")
        try:
            out[stage.strip()] = float(value)
        except ValueError:
            raise ValueError(f"default_deadline_ms: {part!r} is not stage=milliseconds") from None
    return tuple(out[s] for s in _STAGES)


def is_loopback(host: str) -> bool:
    """Whether ``host`` only accepts connections from this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class PoolConfig(Settings):
    """The pool server: HTTP, storage, caches, and the engine's :class:`SchedulerConfig`."""

    model_config = SettingsConfigDict(env_prefix="TRINITY_")

    host: str = Field("127.0.0.1", description="Bind address; non-loopback requires API keys.")
    port: int = Field(8077, ge=0, le=65535, description="Port.")
    data_dir: Path = Field(Path.home() / ".local" / "share" / "trinity",
                           description="Collections, WALs and the catalog; one server per directory.")
    api_keys: Annotated[frozenset[str], NoDecode] = Field(
        frozenset(), description="Accepted API keys (TRINITY_API_KEYS, comma separated); none: loopback only.")
    max_inflight: int = Field(1024, ge=1, description="Searches in flight at the HTTP layer before 429.")
    snapshot_every: int = Field(10_000, ge=1, description="WAL records per collection between snapshots.")
    snapshot_wal_bytes: int = Field(256 << 20, ge=1, description="... or WAL bytes, whichever comes first.")
    fsync: bool = Field(True, description="fsync the WAL before acknowledging a write (never off in production).")
    max_body_bytes: int = Field(DEFAULT_MAX_BODY_BYTES, ge=1, description="Request body cap (413 beyond it).")
    body_timeout_s: float = Field(10.0, gt=0, description="Time to receive a request body (408 beyond it).")
    embed_device: str | None = Field(None, description="torch device of the text embedder (default: auto).")
    cache_sweep_s: float = Field(1.0, gt=0, description="TTL sweep period of the semantic caches.")
    retry_after_s: int = Field(1, ge=0, description="Retry-After of 429 / 503 / 507 answers.")
    log_level: str = Field("info", pattern="^(debug|info|warning|error)$", description="debug | info | warning | error")
    scheduler: SchedulerConfig = Field(pool_scheduler(), description="The search engine.")
    ray: RayConfig = Field(RayConfig(), description="Replicas, sharding and gateway replicas on Ray Serve "
                                                    "(used by trinity serve --ray).")

    @field_validator("data_dir")
    @classmethod
    def _expand(cls, v: Path) -> Path:
        return Path(v).expanduser()

    @field_validator("api_keys", mode="before")
    @classmethod
    def _split_keys(cls, v: Any) -> Any:
        if isinstance(v, str):
            v = [k.strip() for k in v.split(",") if k.strip()]
        keys = frozenset(v)
        if any(len(k) < 8 for k in keys):
            raise ValueError("api_keys: every key needs at least 8 characters")
        return keys

    @property
    def auth_enabled(self) -> bool:
        return bool(self.api_keys)

    def check_bind(self) -> None:
        """Refuse to expose an unauthenticated server beyond this machine."""
        if not self.auth_enabled and not is_loopback(self.host):
            raise ValueError(
                f"host: refusing to bind {self.host!r} without API keys; set TRINITY_API_KEYS "
                "(or --api-key) or bind a loopback address such as 127.0.0.1")
