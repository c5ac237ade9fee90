"""``RayConfig`` as the ``ray`` section of the pool's one config tree (file < env < flags), the gateway
replicas' config, and the URLs on the proxy; none of it imports Ray."""

from __future__ import annotations

import subprocess
import sys

import pytest
from typer.testing import CliRunner

from trinity.cli import app
from trinity.pool.cli import load_pool_config
from trinity.pool.config import PoolConfig
from trinity.pool.ray import gateway_url, pool_url
from trinity.pool.ray.config import RayConfig
from trinity.pool.ray.endpoints import load_gateway_config

GATEWAY_TOML = """
[backend]
kind = "emulated"
prefill_urls = ["http://10.0.0.1:8100"]
decode_urls = ["http://10.0.0.2:8200"]
[retrieval]
embed = "pool"
"""


def test_ray_section_file_then_env_then_flags(tmp_path, monkeypatch):
    path = tmp_path / "pool.toml"
    path.write_text('port = 9001\n[ray]\nnum_replicas = 3\nplacement = "sharded"\nnum_routers = 2\n'
                    'gateway_replicas = 2\n')
    monkeypatch.setenv("TRINITY_RAY__NUM_ROUTERS", "3")
    monkeypatch.setenv("TRINITY_RAY__NUM_REPLICAS", "5")
    cfg = load_pool_config(path, {"ray": {"num_replicas": 4}})
    assert cfg.port == 9001
    assert (cfg.ray.num_replicas, cfg.ray.num_routers, cfg.ray.placement, cfg.ray.gateway_replicas) == \
        (4, 3, "sharded", 2)
    path.write_text("[ray]\nreplicas = 3\n")
    with pytest.raises(ValueError, match="unknown keys"):
        load_pool_config(path, {})


def test_route_prefixes_and_urls():
    with pytest.raises(ValueError, match="gateway_route_prefix"):
        RayConfig(route_prefix="/v", gateway_route_prefix="/v")
    with pytest.raises(ValueError):
        RayConfig(gateway_route_prefix="/gw/")
    pool = PoolConfig(host="0.0.0.0", port=8077, api_keys={"k1-xxxxxxxx"},
                      ray=RayConfig(route_prefix="/pool", gateway_route_prefix="/"))
    assert pool_url(pool) == "http://0.0.0.0:8077/pool"
    assert pool_url(pool, internal=True) == "http://127.0.0.1:8077/pool"
    assert gateway_url(pool) == "http://0.0.0.0:8077"


def test_gateway_config_from_its_own_file(tmp_path):
    path = tmp_path / "gateway.toml"
    path.write_text(GATEWAY_TOML)
    gw = load_gateway_config(RayConfig(gateway_replicas=2, gateway_config=path))
    assert gw.backend.kind == "emulated" and gw.backend.decode_urls == ("http://10.0.0.2:8200",)
    path.write_text("[backend]\nkind = 'emulated'\n")
    result = CliRunner().invoke(app, ["serve", "--ray", "--ray-gateway-replicas", "2", "--ray-gateway-config",
                                      str(path), "--data-dir", str(tmp_path / "data")])
    assert result.exit_code == 2 and "gateway replicas" in result.output, result.output


def test_the_config_tree_loads_without_ray(tmp_path):
    path = tmp_path / "gateway.toml"
    path.write_text(GATEWAY_TOML)
    ray = {"gateway_replicas": 2, "gateway_config": str(path)}
    code = ("import sys; from trinity.pool.cli import load_pool_config; "
            "from trinity.pool.ray.endpoints import load_gateway_config; "
            f"c = load_pool_config(None, {{'ray': {ray!r}}}); "
            "load_gateway_config(c.ray); assert 'ray' not in sys.modules, 'ray imported'")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
