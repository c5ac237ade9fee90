"""OpenAPI-driven fuzzing: request bodies generated from the server's own ``/openapi.json``
with hypothesis, plus raw garbage; no input may produce a 5xx.

NOTE: hypothesis-jsonschema 0.23.1 breaks on object schemas with current hypothesis
(``'many' object has no attribute 'more'``), so :func:`from_schema` below covers the
JSON-schema subset pydantic emits (types, anyOf, enum/const, bounds, lengths, patterns,
properties/required/additionalProperties).  Values outside the schema are mixed in on
purpose: a fuzz that only sends valid bodies tests little.

Bounded to roughly a minute: a fixed number of examples per operation, small generated
sizes, and text inputs capped so that embedding stays cheap.
"""

from __future__ import annotations

import copy
import time
import urllib.parse

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

DIM = 4
NAMES = ["fz-flat", "fz-ivf", "fz-text", "fz-cache", "fz-tcache", "fz-missing"]
_BUDGET_S = 75.0
_started = [0.0]


@pytest.fixture(scope="module")
def spec(client):
    _fixtures(client)
    _started[0] = time.monotonic()
    return client.get("/openapi.json").json()


def _resolve(node, components):
    if isinstance(node, dict):
        if "$ref" in node:
            return _resolve(copy.deepcopy(components[node["$ref"].rsplit("/", 1)[1]]), components)
        return {k: _resolve(v, components) for k, v in node.items()}
    if isinstance(node, list):
        return [_resolve(v, components) for v in node]
    return node


def from_schema(schema: dict, valid: bool = True) -> st.SearchStrategy:
    """Instances of a resolved JSON schema; ``valid=False`` also draws out-of-bounds values."""
    if "const" in schema:
        return st.just(schema["const"])
    if "enum" in schema:
        return st.sampled_from(schema["enum"]) if valid else st.sampled_from(schema["enum"]) | st.text(max_size=8)
    if "anyOf" in schema or "oneOf" in schema:
        return st.one_of([from_schema(s, valid) for s in schema.get("anyOf", schema.get("oneOf"))])
    kind = schema.get("type")
    if isinstance(kind, list):
        return st.one_of([from_schema({**schema, "type": k}, valid) for k in kind])
    if kind == "null":
        return st.none()
    if kind == "boolean":
        return st.booleans()
    if kind == "integer":
        lo = schema.get("minimum", schema.get("exclusiveMinimum", -(2**63)))
        hi = schema.get("maximum", schema.get("exclusiveMaximum", 2**63))
        ints = st.integers(int(lo), int(min(hi, lo + 50))) | st.integers(int(lo), int(hi))
        return ints if valid else ints | st.sampled_from([lo - 1, hi + 1, 2**64, -(2**64)])
    if kind == "number":
        if valid:
            lo = schema.get("minimum", schema.get("exclusiveMinimum", -1e6))
            hi = schema.get("maximum", schema.get("exclusiveMaximum", 1e6))
            return st.floats(lo, hi, exclude_min="exclusiveMinimum" in schema, exclude_max="exclusiveMaximum" in schema)
        return st.floats(allow_nan=False, allow_infinity=False)
    if kind == "string":
        if "pattern" in schema:
            regex = st.from_regex(schema["pattern"], fullmatch=True)
            return regex if valid else regex | st.text(max_size=12)
        return st.text(min_size=schema.get("minLength", 0), max_size=min(schema.get("maxLength", 40), 40))
    if kind == "array":
        items = from_schema(schema.get("items", {}), valid)
        lo = schema.get("minItems", 0)
        return st.lists(items, min_size=lo, max_size=min(schema.get("maxItems", 6), lo + 6))
    if kind == "object" or "properties" in schema:
        props = schema.get("properties", {})
        required = [k for k in schema.get("required", []) if k in props]
        optional = {k: from_schema(v, valid) for k, v in props.items() if k not in required}
        return st.fixed_dictionaries({k: from_schema(props[k], valid) for k in required}, optional=optional)
    return json_values  # {} (any JSON), e.g. payloads and cache values


def _operations(spec) -> list[tuple[str, str, dict | None, list[str]]]:
    comps = spec["components"]["schemas"]
    ops = []
    for path, item in spec["paths"].items():
        for method, op in item.items():
            body = op.get("requestBody", {}).get("content", {}).get("application/json", {}).get("schema")
            params = [p["name"] for p in op.get("parameters", []) if p["in"] == "path"]
            ops.append((path, method.upper(), _resolve(body, comps) if body else None, params))
    return ops


_SOURCES = ("vector", "vectors", "vectors_b64", "text", "texts")


def _tame(body, valid: bool, pick: int, path: str):
    """Keep inputs cheap (<= 8 texts of <= 300 chars).  For ``valid`` bodies also make them
    pass cross-field checks -- one query source, DIM-long vectors, matching id/payload
    counts -- so that the fuzz reaches the store, the engine and the caches."""
    if not isinstance(body, dict):
        return body
    out = dict(body)
    if isinstance(out.get("texts"), list):
        out["texts"] = [t[:300] if isinstance(t, str) else t for t in out["texts"][:8]]
    if isinstance(out.get("text"), str):
        out["text"] = out["text"][:300]
    if not valid:
        return out
    given = [k for k in _SOURCES if out.get(k) is not None]
    for k in given:
        if k != given[pick % len(given)]:
            del out[k]
    if not given and path.endswith(("/search", "/lookup", "/insert")):
        out["vector"] = [0.25 * pick - 0.5] * DIM
    elif not given and path.endswith("/vectors"):
        out["vectors"] = [[0.25 * pick - 0.5] * DIM]
    fit = lambda v: (v[:DIM] + [0.5] * DIM)[:DIM]  # noqa: E731
    if isinstance(out.get("vector"), list):
        out["vector"] = fit(out["vector"])
    if isinstance(out.get("vectors"), list):
        out["vectors"] = [fit(v) for v in out["vectors"] if isinstance(v, list)] or [[0.5] * DIM]
    n = len(out.get("vectors") or out.get("texts") or [])
    for k in ("ids", "payloads"):
        if isinstance(out.get(k), list) and n:
            out[k] = (out[k] + [None if k == "payloads" else 10**6 + i for i in range(n)])[:n]
            if k == "ids":
                out[k] = list(dict.fromkeys(out[k])) if len(set(out[k])) == n else list(range(n))
    return out


def _check(resp: httpx.Response, what: str) -> None:
    assert resp.status_code < 500, f"{what} -> {resp.status_code}: {resp.text[:500]}"
    if resp.status_code >= 400:
        body = resp.json()
        assert set(body) == {"error"} and {"field", "message"} <= set(body["error"]), f"{what}: {resp.text[:300]}"


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12)


def _fixtures(client) -> None:
    client.post("/v1/collections", json={"name": "fz-flat", "dim": DIM, "metric": "l2"})
    client.post("/v1/collections", json={"name": "fz-ivf", "dim": DIM, "index": "ivf", "nlist": 2, "train_size": 8})
    client.post("/v1/collections", json={"name": "fz-text"})
    client.post("/v1/caches", json={"name": "fz-cache", "dim": DIM, "embedder": "none", "max_entries": 50})
    client.post("/v1/caches", json={"name": "fz-tcache", "max_entries": 50})


@pytest.mark.parametrize("index", range(16))
def test_fuzz_operation_from_openapi(client, spec, index):
    ops = _operations(spec)
    if index >= len(ops):
        pytest.skip("fewer operations than fuzz slots")
    path, method, body_schema, params = ops[index]
    if path in ("/metrics",):
        pytest.skip("no input")
    _fixtures(client)  # an earlier DELETE may have dropped them
    mine = [n for n in NAMES if ("cache" in n) == path.startswith("/v1/caches") or n == "fz-missing"]
    names = st.sampled_from(mine) | st.sampled_from(mine) | st.from_regex(r"\A[A-Za-z0-9][A-Za-z0-9_.\-]{0,8}\Z") \
        | st.text(max_size=10)
    valid = st.sampled_from([True, True, True, False])
    bodies = valid.flatmap(lambda v: st.tuples(st.just(v), from_schema(body_schema, v) | json_values)) \
        if body_schema else st.just((True, None))

    @settings(max_examples=250, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    @given(path_values=st.fixed_dictionaries({p: names for p in params}), body=bodies, pick=st.integers(0, 4))
    def run(path_values, body, pick):
        if time.monotonic() - _started[0] > _BUDGET_S:
            return  # the whole fuzz run is time-bounded
        url = path
        for p, v in path_values.items():
            url = url.replace("{" + p + "}", urllib.parse.quote(v, safe="") or "x")
        kwargs = {"json": _tame(body[1], body[0], pick, path)} if body_schema else {}
        try:
            resp = client.request(method, url, **kwargs)
        except (httpx.InvalidURL, UnicodeEncodeError):
            return  # not expressible as an HTTP request
        _check(resp, f"{method} {url} {str(kwargs)[:200]}")

    run()


@settings(max_examples=150, deadline=None, derandomize=True, database=None, suppress_health_check=list(HealthCheck))
@given(raw=st.binary(max_size=200) | st.text(max_size=200).map(str.encode),
       target=st.sampled_from(["/v1/collections", "/v1/collections/fz-flat/search", "/v1/collections/fz-flat/vectors",
                               "/v1/caches/fz-cache/lookup", "/v1/caches/fz-cache/insert"]),
       method=st.sampled_from(["POST", "PUT"]),
       ctype=st.sampled_from(["application/json", "text/plain", "application/x-www-form-urlencoded", ""]))
def test_fuzz_raw_bodies(client, spec, raw, target, method, ctype):
    resp = client.request(method, target, content=raw, headers={"content-type": ctype} if ctype else {})
    _check(resp, f"{method} {target} {raw[:80]!r}")


def test_fuzz_adversarial_json(client, spec):
    deep = "[" * 5000 + "]" * 5000
    cases = [
        ("POST", "/v1/collections/fz-flat/search", '{"vector": [1e400, 0, 0, 0]}'),
        ("POST", "/v1/collections/fz-flat/search", '{"vector": [Infinity, 0, 0, 0]}'),
        ("POST", "/v1/collections/fz-flat/search", '{"vector": [1, 0, 0, 0], "k": 1e400}'),
        ("POST", "/v1/collections/fz-flat/search", '{"vector": [1, 0, 0, 0], "k": 99999999999999999999999}'),
        ("PUT", "/v1/collections/fz-flat/vectors", '{"ids": [9223372036854775808], "vectors": [[1,0,0,0]]}'),
        ("PUT", "/v1/collections/fz-flat/vectors", '{"vectors": [[1,0,0,0]], "payloads": [' + deep + ']}'),
        ("PUT", "/v1/collections/fz-flat/vectors", '{"vectors": [[1,0,0,0]], "payloads": [{"a": NaN}]}'),
        ("PUT", "/v1/collections/fz-flat/vectors", '{"vectors": [[1,0,0,0]], "payloads": [{"a": "\\ud800"}]}'),
        ("PUT", "/v1/collections/fz-flat/vectors", '{"vectors_b64": "AAAA"}'),
        ("PUT", "/v1/collections/fz-flat/vectors", '{"vectors_b64": "not base64!"}'),
        ("PUT", "/v1/collections/fz-flat/vectors", '{"vectors_b64": "AACAfwAAAAAAAAAAAAAAAA=="}'),  # NaN
        ("PUT", "/v1/collections/fz-text/vectors", '{"texts": ["\\ud800"]}'),
        ("POST", "/v1/collections/fz-flat/vectors/get", '{"ids": [1, 1, 1]}'),
        ("POST", "/v1/caches/fz-cache/insert", '{"tenant": "t", "vector": [1,0,0,0], "value": ' + deep + '}'),
        ("POST", "/v1/collections", '{"name": "fz-x", "dim": 4, "index": "ivf", "nlist": 65536}'),
        ("POST", "/v1/collections/fz-x/train", ""),
        ("POST", "/v1/collections", '"just a string"'),
        ("POST", "/v1/collections", deep),
        ("DELETE", "/v1/collections/%2e%2e", ""),
        ("GET", "/v1/collections/" + "a" * 5000, ""),
    ]
    for method, url, body in cases:
        resp = client.request(method, url, content=body.encode(), headers={"content-type": "application/json"})
        _check(resp, f"{method} {url} {body[:80]}")
    # the server is still healthy and still serves after the fuzzing
    assert client.get("/health").json()["status"] == "ok"
    client.post("/v1/collections", json={"name": "fz-after", "dim": DIM})
    client.put("/v1/collections/fz-after/vectors", json={"ids": [1], "vectors": [[1, 0, 0, 0]]})
    r = client.post("/v1/collections/fz-after/search", json={"vector": [1, 0, 0, 0], "k": 3})
    assert r.status_code == 200 and r.json()["results"][0]["ids"] == [1]
