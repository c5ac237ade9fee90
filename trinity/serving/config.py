"""Server configuration: one frozen dataclass, built from flags and the environment.

Secrets never come from the command line by default: ``TRINITY_API_KEYS`` (comma
separated) is the normal way to give keys; ``--api-key`` exists for tests and local use.
"""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass, field
from pathlib import Path

#: Request body cap (the upsert limit of 10k x 384-d vectors as JSON fits comfortably).
DEFAULT_MAX_BODY_BYTES = 64 << 20
#: Server-side deadline of a search or cache lookup sent without one: decode, prefill, background.
DEFAULT_DEADLINES_MS = (100.0, 1000.0, 10_000.0)


def default_data_dir() -> Path:
    """``$TRINITY_DATA_DIR`` if set, else ``~/.local/share/trinity``."""
    env = os.environ.get("TRINITY_DATA_DIR")
    return Path(env).expanduser() if env else Path.home() / ".local" / "share" / "trinity"


def keys_from_env(value: str | None = None) -> frozenset[str]:
    """Parse ``TRINITY_API_KEYS`` (comma separated; blanks ignored)."""
    raw = os.environ.get("TRINITY_API_KEYS", "") if value is None else value
    return frozenset(k.strip() for k in raw.split(",") if k.strip())


_STAGES = ("decode", "prefill", "background")


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
        return False  # a hostname that could resolve anywhere: treat as public


@dataclass(frozen=True)
class ServerConfig:
    """Everything the HTTP server and its durable store need.

    Attributes:
        host / port: where uvicorn listens.
        data_dir: collections, WAL and catalog live here (one server per directory).
        api_keys: accepted keys; empty means no auth, which is only allowed on loopback.
        max_inflight: searches in flight at the HTTP layer; beyond it requests get 429.
        max_queue: the engine's admission queue bound (``max_num_waiting``).
        snapshot_every: WAL records per collection between automatic snapshots.
        snapshot_wal_bytes: ... or WAL bytes, whichever comes first.
        fsync: fsync the WAL before acknowledging writes (never turn off in production).
        max_body_bytes: request body cap (413 beyond it).
        embed_device: torch device for the text embedder (``None`` = auto).
        cache_sweep_s: period of the semantic-cache TTL sweeper.
        retry_after_s: the ``Retry-After`` hint sent with 429s.
        switch_interval_ms: ``sys.setswitchinterval`` of the server process (``None`` keeps
            Python's 5 ms); see ``server.run`` for why the server lowers it.
        default_deadline_ms: deadline per stage (decode, prefill, background) of a search or
            lookup sent without ``deadline_ms``: no search outlives its usefulness.
        admission_share: a request is refused (429) when its stage's recent sojourn time
            exceeds this share of its deadline (``trinity.engine.admission``).
        body_timeout_s: time allowed to receive a whole request body (408 beyond it).
    """

    host: str = "127.0.0.1"
    port: int = 8077
    data_dir: Path = field(default_factory=default_data_dir)
    api_keys: frozenset[str] = frozenset()
    max_inflight: int = 1024
    max_queue: int = 20_000
    snapshot_every: int = 10_000
    snapshot_wal_bytes: int = 256 << 20
    fsync: bool = True
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    embed_device: str | None = None
    cache_sweep_s: float = 1.0
    retry_after_s: int = 1
    switch_interval_ms: float | None = 0.5
    log_level: str = "info"
    default_deadline_ms: tuple[float, float, float] = DEFAULT_DEADLINES_MS
    admission_share: float = 0.25
    body_timeout_s: float = 10.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "data_dir", Path(self.data_dir).expanduser())
        object.__setattr__(self, "api_keys", frozenset(self.api_keys))
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port: must be in [0, 65535], got {self.port}")
        for name in ("max_inflight", "max_queue", "snapshot_every", "snapshot_wal_bytes", "max_body_bytes"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}: must be >= 1")
        if self.switch_interval_ms is not None and not 0.01 <= self.switch_interval_ms <= 100:
            raise ValueError("switch_interval_ms: must be in [0.01, 100]")
        if self.cache_sweep_s <= 0 or self.retry_after_s < 0:
            raise ValueError("cache_sweep_s must be > 0 and retry_after_s >= 0")
        object.__setattr__(self, "default_deadline_ms", tuple(float(d) for d in self.default_deadline_ms))
        if len(self.default_deadline_ms) != 3 or not all(0 < d <= 3_600_000 for d in self.default_deadline_ms):
            raise ValueError("default_deadline_ms: need decode, prefill and background deadlines in (0, 3600000] ms")
        if not 0 < self.admission_share <= 10 or self.body_timeout_s <= 0:
            raise ValueError("admission_share must be in (0, 10] and body_timeout_s > 0")
        if any(len(k) < 8 for k in self.api_keys):
            raise ValueError("api_keys: every key needs at least 8 characters")

    @property
    def auth_enabled(self) -> bool:
        return bool(self.api_keys)

    def check_bind(self) -> None:
        """Refuse to expose an unauthenticated server beyond this machine."""
        if not self.auth_enabled and not is_loopback(self.host):
            raise ValueError(
                f"host: refusing to bind {self.host!r} without API keys; set TRINITY_API_KEYS "
                "(or --api-key) or bind a loopback address such as 127.0.0.1")
