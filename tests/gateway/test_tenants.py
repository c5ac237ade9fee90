"""Tenants at the gateway: decided by API keys, never self-declared by a header or the body."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import httpx
import pytest

from trinity.errors import TrinityError
from trinity.gateway.auth import TENANT_HEADER, resolve_tenant
from trinity.gateway.cli import build_config
from trinity.gateway.config import GatewayConfig
from trinity.gateway.keys import merge_api_keys, parse_api_keys

from .conftest import E2E, _gateway
from .test_units import PD

KEY_A, KEY_B = "key-aaaa-1111", "key-bbbb-2222"


@pytest.fixture(scope="module")
def gateway_keys(e2e: E2E, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Key A from the ``--api-key`` flag, key B from ``TRINITY_GATEWAY_API_KEYS``."""
    config = tmp_path_factory.mktemp("gateway-keys") / "gateway.toml"
    config.write_text("[cache]\nlookup_deadline_ms = 2000\n")  # NOTE: tenancy, not lookup latency, is tested
    yield from _gateway(e2e, "gateway-keys", e2e.pool, "--config", str(config), "--api-key", f"{KEY_A}=tenant-a",
                        env={"TRINITY_GATEWAY_API_KEYS": f"{KEY_B}=tenant-b"})


def _ask(url: str, prompt: str, key: str | None = None, **kw: object) -> httpx.Response:
    headers = dict(kw.pop("headers", {}) or {})  # type: ignore[arg-type]
    if key:
        headers["Authorization"] = f"Bearer {key}"
    return httpx.post(url + "/v1/completions", json={"model": "m", "prompt": prompt, "max_tokens": 3, **kw},
                      headers=headers, timeout=60)


def _cache(url: str, prompt: str, key: str | None = None, want: str = "miss", **kw: object) -> str:
    """The answer cache's verdict for ``prompt``, asked again while it is not ``want`` (inserts run in the
    background; a lookup past its 50 ms deadline on a busy CPU is an ``error``), for up to 10 s."""
    deadline = time.monotonic() + 10
    while True:
        r = _ask(url, prompt, key, **kw)
        assert r.status_code == 200, r.text
        if r.headers["x-trinity-cache"] == want or time.monotonic() > deadline:
            return r.headers["x-trinity-cache"]
        time.sleep(0.1)


def _stored_for(pool: str, tenant: str, prompt: str, wait_s: float = 10.0) -> bool:
    """Whether the pool's answer cache holds ``prompt`` for ``tenant`` (inserts run in the background)."""
    deadline = time.monotonic() + wait_s
    while True:
        r = httpx.post(pool + "/v1/caches/answers/lookup", json={"tenant": tenant, "text": prompt}, timeout=30)
        if r.json()["hit"] or time.monotonic() > deadline:
            return bool(r.json()["hit"])
        time.sleep(0.1)


def test_the_key_decides_the_tenant(e2e: E2E, gateway_keys: str) -> None:
    prompt = f"Tenant question {uuid.uuid4().hex[:8]}"
    assert _ask(gateway_keys, prompt, KEY_A, user="tenant-b").status_code == 200  # the body's user is no tenant
    assert _stored_for(e2e.pool, "tenant-a", prompt)
    assert not _stored_for(e2e.pool, "tenant-b", prompt, wait_s=0)
    assert _cache(gateway_keys, prompt, KEY_B) == "miss"  # the env key: tenant-b
    assert _cache(gateway_keys, prompt, KEY_A, want="hit") == "hit"


def test_a_header_cannot_override_the_key(gateway_keys: str) -> None:
    r = _ask(gateway_keys, "override", KEY_A, headers={TENANT_HEADER: "tenant-b"})
    assert r.status_code == 403 and r.json()["error"]["param"] == TENANT_HEADER, r.text
    assert _ask(gateway_keys, "same tenant", KEY_A, headers={TENANT_HEADER: "tenant-a"}).status_code == 200
    for key in (None, "wrong-key-123"):
        r = _ask(gateway_keys, "who am I", key)
        assert r.status_code == 401 and r.json()["error"]["param"] == "authorization", r.text


@pytest.mark.parametrize("value", ["", "default", "acme"])
def test_without_keys_a_header_cannot_pick_a_tenant(e2e: E2E, value: str) -> None:
    r = _ask(e2e.gateway, "pick a tenant", headers={TENANT_HEADER: value})
    assert r.status_code == 403, r.text
    assert r.json()["error"]["param"] == TENANT_HEADER and "api key" in r.json()["error"]["message"].lower()


def test_without_keys_the_body_user_is_not_a_tenant(e2e: E2E) -> None:
    prompt = f"Anonymous question {uuid.uuid4().hex[:8]}"
    assert _ask(e2e.gateway, prompt, user="alice").status_code == 200
    assert _stored_for(e2e.pool, "default", prompt)  # stored for the one anonymous tenant
    assert _cache(e2e.gateway, prompt, user="bob", want="hit") == "hit"


def test_trusted_tenant_header_is_an_opt_in() -> None:
    cfg = GatewayConfig(trust_tenant_header=True, **PD)
    assert resolve_tenant(cfg, {}) == "default"
    acme = resolve_tenant(cfg, {TENANT_HEADER: "acme"})
    assert acme.startswith("t-") and acme != resolve_tenant(cfg, {TENANT_HEADER: "acme2"})
    assert resolve_tenant(cfg, {TENANT_HEADER: "default"}) != "default"  # cannot reach the anonymous tenant
    with pytest.raises(TrinityError) as exc:
        resolve_tenant(cfg, {TENANT_HEADER: ""})
    assert (exc.value.status, exc.value.field) == (400, TENANT_HEADER)
    with pytest.raises(ValueError, match="trust_tenant_header"):
        GatewayConfig(trust_tenant_header=True, api_keys={KEY_A: "a"}, **PD)


def test_api_key_specs_flags_and_environment() -> None:
    assert parse_api_keys([f"{KEY_A}=tenant-a", "bWFueSBzZWNyZXRz=="]) == {
        KEY_A: "tenant-a", "bWFueSBzZWNyZXRz==": "default"}  # base64 padding is part of the key
    assert parse_api_keys(["c2VjcmV0LWtleQ==tenant-c"]) == {"c2VjcmV0LWtleQ=": "tenant-c"}
    for bad, match in (([f"{KEY_A}=a", f"{KEY_A}=b"], "exactly one tenant"), (["short=a"], "8 characters"),
                       ([f"{KEY_A}=bad tenant!"], "8 characters|tenant")):
        with pytest.raises(ValueError, match=match):
            parse_api_keys(bad)
    assert merge_api_keys({KEY_A: "a"}, {KEY_B: "b"}, {KEY_A: "a"}) == {KEY_A: "a", KEY_B: "b"}
    with pytest.raises(ValueError, match="exactly one tenant"):
        merge_api_keys({KEY_A: "a"}, {KEY_A: "b"})
    cfg = build_config(None, api_keys={KEY_A: "tenant-a"}, prefill_urls=["http://p"], decode_urls=["http://d"])
    assert cfg.api_keys == {KEY_A: "tenant-a"}
