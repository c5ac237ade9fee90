"""Wire models (pydantic) with the request limits of the pool's HTTP API.

Limits: ``k`` 1..1024, <= 256 queries per search, <= 10,000 vectors (or 1,024 texts) per
upsert, <= 10,000 ids per get/delete, dim <= 4096, payloads and cache values <= 64 KiB of
JSON each, request bodies <= 64 MiB (enforced by middleware).  Every model forbids
unknown fields so that a typo (``"vector"`` for ``"vectors"``) is a 422 naming the field,
not a silently ignored option, and types are strict: ``"3"`` is not a ``k``.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

from trinity.errors import InvalidArgument
from trinity.index.inputs import MAX_ID
from trinity.pool.storage.spec import DEFAULT_EMBEDDER, EMBEDDER_DIMS

MAX_K = 1024
MAX_QUERIES = 256
MAX_UPSERT = 10_000
MAX_TEXTS = 1_024
MAX_IDS = 10_000
MAX_DIM = 4096
MAX_JSON_VALUE_BYTES = 64 << 10
INT64_MAX = (1 << 63) - 1


def _no_surrogates(s: str) -> str:
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("must be valid unicode (no lone surrogates)") from None
    return s


def compact_json(value: Any, what: str = "value") -> str:
    """``value`` as compact ASCII JSON; rejects NaN/inf and values over 64 KiB."""
    try:
        text = json.dumps(value, separators=(",", ":"), ensure_ascii=True, allow_nan=False)
    except (ValueError, TypeError, RecursionError) as e:
        raise ValueError(f"{what} must be plain JSON without NaN or infinity ({e})") from None
    if len(text) > MAX_JSON_VALUE_BYTES:
        raise ValueError(f"{what} is {len(text)} bytes of JSON; the limit is {MAX_JSON_VALUE_BYTES}")
    return text


def _json_value(v: Any) -> Any:
    compact_json(v, "payload")
    return v


Name = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$", description="1-64 of [A-Za-z0-9_.-]")]
Tenant = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:@\-]{0,127}$", description="1-128 of [A-Za-z0-9_.:@-]")]
Id = Annotated[int, Field(ge=0, le=MAX_ID)]
Float = Annotated[float, Field(allow_inf_nan=False)]
Vector = Annotated[list[Float], Field(min_length=1, max_length=MAX_DIM)]
Text = Annotated[str, Field(min_length=1, max_length=20_000), AfterValidator(_no_surrogates)]
JsonValue = Annotated[Any, AfterValidator(_json_value)]
Stage = Literal["decode", "prefill", "background"]
Metric = Literal["cosine", "ip", "l2"]
Embedder = Literal["all-MiniLM-L6-v2", "none"]


class _Model(BaseModel):
    # NOTE: strict: "3" is not a k, true is not a 1, ["7"] are not ids (JSON numbers still fill floats).
    model_config = ConfigDict(extra="forbid", strict=True)


def _resolve_embedder(dim: int | None, embedder: str | None) -> tuple[int, str | None]:
    """Default: the bundled MiniLM embedder when ``dim`` is omitted or 384."""
    if embedder is None:
        embedder = DEFAULT_EMBEDDER if dim in (None, EMBEDDER_DIMS[DEFAULT_EMBEDDER]) else "none"
    if embedder == "none":
        if dim is None:
            raise InvalidArgument("required when the collection has no embedder", "dim")
        return dim, None
    want = EMBEDDER_DIMS[embedder]
    if dim not in (None, want):
        raise InvalidArgument(f"embedder {embedder} produces {want}-d vectors, got dim={dim}", "dim")
    return want, embedder


class CreateCollection(_Model):
    name: Name
    dim: int | None = Field(None, ge=1, le=MAX_DIM, description="Omit to take the embedder's dimension.")
    metric: Metric = "cosine"
    index: Literal["flat", "ivf", "graph"] = "flat"
    nlist: int | None = Field(None, ge=1, le=65_536, description="IVF lists (default 1024).")
    nprobe: int | None = Field(None, ge=1, le=65_536, description="IVF default probes (default 8).")
    train_size: int | None = Field(None, ge=1, le=100_000_000,
                                   description="IVF: vectors buffered (searchable, exact) before k-means "
                                               "training; default 39 * nlist.")
    embedder: Embedder | None = Field(None, description="Embeds `texts`; default all-MiniLM-L6-v2 when dim is "
                                                        "omitted or 384, else none.")
    graph_degree: int | None = Field(None, ge=4, le=128, description="Graph out-degree (default 40); a search's "
                                                                     "nprobe is its itopk.")

    @model_validator(mode="after")
    def _check(self) -> CreateCollection:
        if self.index != "ivf" and (self.nlist or self.nprobe or self.train_size):
            raise InvalidArgument("nlist, nprobe and train_size only apply to index='ivf'", "nlist")
        if self.index != "graph" and self.graph_degree:
            raise InvalidArgument("graph_degree only applies to index='graph'", "graph_degree")
        if self.index == "ivf" and self.train_size is not None and self.train_size < (self.nlist or 1024):
            raise InvalidArgument("must be at least nlist", "train_size")
        self.dim, self.embedder = _resolve_embedder(self.dim, self.embedder)
        return self


class UpsertVectors(_Model):
    ids: list[Id] | None = Field(None, max_length=MAX_UPSERT, description="Omit to let the server assign ids.")
    vectors: list[Vector] | None = Field(None, min_length=1, max_length=MAX_UPSERT)
    vectors_b64: str | None = Field(None, min_length=1, max_length=60 << 20,
                                    description="Alternative to `vectors`: base64 of little-endian float32, "
                                                "row-major (n x dim).")
    texts: list[Text] | None = Field(None, min_length=1, max_length=MAX_TEXTS)
    payloads: list[JsonValue | None] | None = Field(None, max_length=MAX_UPSERT,
                                                    description="One JSON value (or null) per vector.")

    @model_validator(mode="after")
    def _one_source(self) -> UpsertVectors:
        given = [n for n in ("vectors", "vectors_b64", "texts") if getattr(self, n) is not None]
        if len(given) != 1:
            raise InvalidArgument("give exactly one of vectors, vectors_b64 or texts", "vectors")
        return self


class IdsRequest(_Model):
    ids: list[Id] = Field(min_length=1, max_length=MAX_IDS)


class GetVectors(IdsRequest):
    with_payloads: bool = True
    with_vectors: bool = False


class SearchBody(_Model):
    vector: Vector | None = None
    vectors: list[Vector] | None = Field(None, min_length=1, max_length=MAX_QUERIES)
    text: Text | None = None
    texts: list[Text] | None = Field(None, min_length=1, max_length=MAX_QUERIES)
    k: int = Field(10, ge=1, le=MAX_K)
    nprobe: int | None = Field(None, ge=1, le=65_536, description="IVF lists probed, or a graph collection's itopk.")
    search_width: int = Field(1, ge=1, le=8, description="Graph collections: nodes one hop expands.")
    stage: Stage = "prefill"
    deadline_ms: float | None = Field(None, gt=0, le=600_000)
    with_payloads: bool = True

    @model_validator(mode="after")
    def _one_source(self) -> SearchBody:
        given = [n for n in ("vector", "vectors", "text", "texts") if getattr(self, n) is not None]
        if len(given) != 1:
            raise InvalidArgument("give exactly one of vector, vectors, text or texts", "vectors")
        return self


class CreateCache(_Model):
    name: Name
    kind: Literal["prompt", "answer"] = "answer"
    threshold: float | None = Field(None, ge=-1.0, le=1.0, description="Default 0.95 (prompt) / 0.90 (answer).")
    ttl_s: float = Field(3600.0, gt=0, le=30 * 86400)
    max_entries: int = Field(10_000, ge=1, le=1_000_000, description="Per tenant (LRU beyond it).")
    dim: int | None = Field(None, ge=1, le=MAX_DIM)
    embedder: Embedder | None = None

    @model_validator(mode="after")
    def _check(self) -> CreateCache:
        self.dim, self.embedder = _resolve_embedder(self.dim, self.embedder)
        if self.threshold is None:
            self.threshold = 0.95 if self.kind == "prompt" else 0.90
        return self


class _CacheKey(_Model):
    tenant: Tenant
    text: Text | None = Field(None, description="The prompt; embedded by the cache's embedder unless `vector` "
                                                "is given too (then it is only the entry's key text).")
    vector: Vector | None = None

    @model_validator(mode="after")
    def _some_key(self) -> _CacheKey:
        if self.text is None and self.vector is None:
            raise InvalidArgument("give text, vector, or both", "text")
        return self


class CacheLookup(_CacheKey):
    threshold: float | None = Field(None, ge=-1.0, le=1.0)
    stage: Stage = "prefill"
    deadline_ms: float | None = Field(None, gt=0, le=600_000)


class CacheInsert(_CacheKey):
    value: JsonValue = Field(description="What a hit returns: the answer, a KV handle, ...")
    key: Text | None = Field(None, description="Dedupe key (default: text); re-inserting it replaces the entry.")
    ttl_s: float | None = Field(None, gt=0, le=30 * 86400)


class ErrorDetail(BaseModel):
    code: str
    field: str | None
    message: str


class ErrorBody(BaseModel):
    error: ErrorDetail


class QueryResult(BaseModel):
    ids: list[int]
    scores: list[float]
    payloads: list[Any] | None = None
    status: Literal["complete", "partial", "rejected"]
    partial: bool
    fraction_scanned: float
    timings: dict[str, float]


class SearchResponse(BaseModel):
    results: list[QueryResult]
    timings: dict[str, float]


class UpsertResponse(BaseModel):
    ids: list[int]
    count: int
    lsn: int


class GetResponse(BaseModel):
    ids: list[int]
    payloads: list[Any] | None = None
    vectors: list[list[float]] | None = None
    missing: list[int]


class DeleteResponse(BaseModel):
    deleted: int
    lsn: int


class LookupResponse(BaseModel):
    hit: bool
    similarity: float | None
    value: Any = None
    key: str | None = None
    entry_id: int | None = None
    age_s: float | None = None
