"""Fixtures: one local Ray cluster with the pool deployed on two replicas, and a single-process
pool server to compare against.  Package-scoped, so the cluster is gone before other tests run;
tests that need Ray skip (with the reason) where it is missing."""

from __future__ import annotations

import json
import signal
from dataclasses import dataclass

import httpx
import pytest

from trinity.pool.config import PoolConfig
from trinity.pool.ray import MISSING_RAY
from trinity.stack.process import ServerProcess, free_port

APP = "trinity-pool"


@dataclass
class RayPool:
    url: str
    client: httpx.Client
    config: PoolConfig

    def replica(self, i: int, method: str, path: str, body: dict | None = None) -> tuple[int, dict]:
        """Ask replica ``i`` directly (its own pool app), past the router."""
        from ray import serve

        handle = serve.get_deployment_handle(f"pool-replica-{i}", app_name=APP).options(method_name="handle")
        raw = b"" if body is None else json.dumps(body).encode()
        ex = handle.remote(method, path, b"", [(b"content-type", b"application/json")], raw).result(timeout_s=60)
        return ex.status, json.loads(ex.body)


@pytest.fixture(scope="package")
def ray_pool(tmp_path_factory):
    try:
        import ray
        from ray import serve
    except ImportError:
        pytest.skip(MISSING_RAY)
    from trinity.pool.ray import deploy
    from trinity.pool.ray.config import RayConfig

    root = tmp_path_factory.mktemp("raypool")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        cfg = PoolConfig(data_dir=root / "data", port=free_port(), log_level="warning",
                         ray=RayConfig(num_replicas=2, num_cpus_per_replica=0.5, app_name=APP,
                                       num_cpus_per_gateway=0.25))
        url = deploy(cfg)
        with httpx.Client(base_url=url, timeout=60.0) as client:
            yield RayPool(url, client, cfg)
    finally:
        serve.shutdown()
        ray.shutdown()


@pytest.fixture(scope="package")
def single(tmp_path_factory):
    """The single-process pool, for answers to compare with."""
    root = tmp_path_factory.mktemp("single")
    proc = ServerProcess(root / "data", log_path=root / "server.log").start()
    with httpx.Client(base_url=proc.url, timeout=60.0) as client:
        yield client
    assert proc.stop() in (0, -signal.SIGTERM), proc.log()
