"""``RayConfig``: how the pool (and optional gateway replicas) are laid out on a Ray cluster.

A section of the pool's own tree (``PoolConfig.ray``): sources, highest first, ``--ray-*`` flags,
``TRINITY_RAY__*`` variables (``TRINITY_RAY__NUM_REPLICAS=4``), the ``[ray]`` table of
``--config FILE``, defaults.  Importing this module does not import Ray.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from trinity.config import Section

__all__ = ["RayConfig"]

_PREFIX = r"^/(\S*[^/])?$"


class RayConfig(Section):
    """The pool's Ray Serve deployments: replicas, routers, resources, write and deadline policy."""

    address: str | None = Field(None, description="Ray cluster to join ('auto': the one this node belongs to); "
                                                   "unset: start a local one.")
    num_replicas: int = Field(2, ge=1, le=256, description="Pool replicas (one per GPU or CPU worker); shard i of "
                                                           "a sharded collection lives on replica i.")
    num_routers: int = Field(1, ge=1, le=64, description="Router (HTTP ingress) replicas behind Ray Serve's proxy.")
    num_cpus_per_replica: float = Field(1.0, ge=0, description="Ray CPUs reserved by each pool replica.")
    num_gpus_per_replica: float = Field(0.0, ge=0, description="Ray GPUs reserved by each pool replica.")
    num_local_cpus: int | None = Field(None, ge=1, description="Logical CPUs of a local cluster (default: all).")
    placement: Literal["replicated", "sharded"] = Field("replicated", description="Placement of a collection "
                                                        "created without one.")
    app_name: str = Field("trinity-pool", min_length=1, description="Ray Serve application name.")
    route_prefix: str = Field("/", pattern=_PREFIX, description="HTTP route prefix of the pool on the proxy.")
    write_timeout_s: float = Field(30.0, gt=0, description="How long a write waits for every replica that holds "
                                                           "the collection (a restarting one included) before 503.")
    deadline_grace_ms: float = Field(50.0, ge=0, description="Time past a search's deadline a replica's answer is "
                                                             "awaited before it counts as missing (partial).")
    health_check_period_s: float = Field(2.0, gt=0, description="Ray Serve health-check period of a replica.")
    access_log: bool = Field(False, description="Ray Serve's per-request access log lines (CPU per request).")
    max_ongoing_requests: int = Field(1024, ge=1, description="Requests in flight per replica (Ray Serve).")
    gateway_replicas: int = Field(0, ge=0, le=256, description="PD gateway replicas behind the same proxy "
                                                               "(0: none; run the gateway yourself).")
    gateway_config: Path | None = Field(None, description="The gateway replicas' TOML/JSON config (as trinity "
                                                          "gateway --config; TRINITY_GATEWAY_* override it).")
    gateway_route_prefix: str = Field("/gateway", pattern=_PREFIX, description="HTTP route prefix of the gateway "
                                                                                "replicas on the proxy.")
    gateway_app_name: str = Field("trinity-gateway", min_length=1, description="Ray Serve application name of "
                                                                               "the gateway replicas.")
    num_cpus_per_gateway: float = Field(1.0, ge=0, description="Ray CPUs reserved by each gateway replica.")

    @model_validator(mode="after")
    def _distinct(self) -> RayConfig:
        if self.gateway_route_prefix == self.route_prefix:
            raise ValueError("gateway_route_prefix: must differ from the pool's route_prefix")
        if self.gateway_app_name == self.app_name:
            raise ValueError("gateway_app_name: must differ from the pool's app_name")
        return self
