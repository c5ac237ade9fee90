"""Tests for the real-data layer: docstring passages, embedder and embedding cache."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from trinity.data import corpus
from trinity.data.corpus import sample_queries, stdlib_passages
from trinity.data.embed import Embedder, default_cache_dir, load_embedded_corpus


@pytest.fixture(scope="module")
def embedder() -> Embedder:
    return Embedder(device="cpu")


class CountingEmbedder:
    """Duck-typed Embedder proxy that records how many texts it was asked to embed."""

    def __init__(self, inner: Embedder) -> None:
        self.inner, self.encoded = inner, 0

    @property
    def dim(self) -> int:
        return self.inner.dim

    def encode(self, texts: list[str], **kwargs: object) -> np.ndarray:
        self.encoded += len(texts)
        return self.inner.encode(texts, **kwargs)


def test_passages_bounds_dedupe_and_prose() -> None:
    passages = stdlib_passages(20_000)
    assert len(passages) == 20_000  # needs the stdlib plus a little site-packages
    assert all(isinstance(p, str) and 40 <= len(p) <= 600 for p in passages)
    assert len(set(passages)) == len(passages)
    assert all(p == " ".join(p.split()) for p in passages)  # whitespace normalised
    assert not any(p.startswith((">>>", "...")) for p in passages)


def test_passages_are_deterministic_prefixes() -> None:
    big = stdlib_passages(3_000)
    corpus._extract.cache_clear()  # force a real re-extraction, not the memo
    assert stdlib_passages(1_000) == big[:1_000]
    assert stdlib_passages(1_000, min_chars=100) != big[:1_000]
    assert all(len(p) >= 100 for p in stdlib_passages(500, min_chars=100))
    assert stdlib_passages(0) == []


def test_sample_queries_deterministic() -> None:
    passages = stdlib_passages(1_000)
    q1, q2 = sample_queries(passages, 20, seed=7), sample_queries(passages, 20, seed=7)
    assert q1 == q2 and len(q1) == 20
    assert q1 != sample_queries(passages, 20, seed=8)
    assert all(q and any(q in p for p in passages) for q in q1)
    with pytest.raises(ValueError):
        sample_queries(passages, len(passages) + 1, seed=0)


def test_embedder_shape_norm_and_semantics(embedder: Embedder) -> None:
    assert embedder.dim == 384
    vecs = embedder.encode(
        [
            "Open the file and read its contents into memory.",
            "Read all the data from a file on disk.",
            "The cat sat quietly on the warm windowsill.",
        ]
    )
    assert vecs.shape == (3, 384) and vecs.dtype == np.float32 and vecs.flags.c_contiguous
    np.testing.assert_allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-5)
    assert vecs[0] @ vecs[1] > vecs[0] @ vecs[2] + 0.2
    with pytest.raises(ValueError):
        embedder.encode([])
    with pytest.raises(TypeError):
        embedder.encode("not a list")  # type: ignore[arg-type]


def test_cache_round_trip_and_prefix_reuse(tmp_path: Path, embedder: Embedder) -> None:
    counting = CountingEmbedder(embedder)
    kw = {"cache_dir": tmp_path, "progress": False, "embedder": counting}
    texts, emb = load_embedded_corpus(160, **kw)  # type: ignore[arg-type]
    assert texts == stdlib_passages(160) and emb.shape == (160, 384)
    assert emb.dtype == np.float32 and counting.encoded == 160

    (entry,) = tmp_path.glob("corpus-*")
    assert {p.name for p in entry.iterdir()} == {"texts.json", "embeddings.npy", "meta.json"}
    np.testing.assert_array_equal(np.load(entry / "embeddings.npy", allow_pickle=False), emb)
    assert not list(tmp_path.glob(".tmp-*"))  # atomic write left nothing behind

    # Exact hit and smaller request: served from disk, nothing re-embedded.
    again, emb_again = load_embedded_corpus(160, **kw)  # type: ignore[arg-type]
    small, emb_small = load_embedded_corpus(120, **kw)  # type: ignore[arg-type]
    assert counting.encoded == 160
    assert again == texts and small == texts[:120]
    np.testing.assert_array_equal(emb_again, emb)
    np.testing.assert_array_equal(emb_small, emb[:120])

    # Bigger request: the cached 160 are reused, only the 32 new passages are embedded.
    big, emb_big = load_embedded_corpus(192, **kw)  # type: ignore[arg-type]
    assert counting.encoded == 192 and big[:160] == texts
    np.testing.assert_array_equal(emb_big[:160], emb)
    np.testing.assert_allclose(np.linalg.norm(emb_big, axis=1), 1.0, atol=1e-5)
    assert len(list(tmp_path.glob("corpus-*"))) == 2


def test_cache_dir_from_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("TRINITY_CACHE_DIR", str(tmp_path))
    assert default_cache_dir() == tmp_path
    monkeypatch.delenv("TRINITY_CACHE_DIR")
    assert default_cache_dir() == Path.home() / ".cache" / "trinity"
    with pytest.raises(ValueError):
        load_embedded_corpus(0, cache_dir=tmp_path)
