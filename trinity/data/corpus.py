"""Real English passages mined from Python docstrings (no network, no downloads).

Module, class and function docstrings are read by parsing (never importing) the
``.py`` files of the standard library with :mod:`ast`. Sources are consumed in a
fixed order until the quota is met: stdlib paragraphs, stdlib sentences,
site-packages paragraphs, site-packages sentences. Hence ``stdlib_passages(n)``
is always a prefix of ``stdlib_passages(m)`` for ``n < m``; the embedding cache
relies on this.
"""

from __future__ import annotations

import ast
import functools
import gc
import os
import random
import re
import sysconfig
import warnings
from collections.abc import Iterable, Iterator
from pathlib import Path

__all__ = ["CORPUS_VERSION", "SKIP_DIRS", "sample_queries", "stdlib_passages"]

#: Bump whenever extraction rules change so that on-disk caches are invalidated.
CORPUS_VERSION = 1

#: Directory names never descended into.
# NOTE: ``encodings`` holds ~100 generated codec modules with near-identical
# boilerplate docstrings that exact dedupe cannot catch, so it is skipped too.
SKIP_DIRS = frozenset({"test", "tests", "idlelib", "lib2to3", "site-packages", "encodings"})

_DOC_NODES = (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)
# Statements that can (transitively) contain a def/class; everything else is skipped.
_COMPOUND = _DOC_NODES + (ast.If, ast.For, ast.AsyncFor, ast.While, ast.With, ast.AsyncWith,
                          ast.Try, ast.TryStar, ast.Match, ast.match_case, ast.ExceptHandler)
_NOT_LETTER = re.compile(r"[\W\d_]+")
_RST_UNDERLINE = re.compile(r"^[ \t]*([-=~^*#])\1{2,}[ \t]*$", re.MULTILINE)  # "-----" etc.
_WS = re.compile(r"\s+")
_DOCTEST = re.compile(r"^[ \t]*>>>", re.MULTILINE)
# Sentence boundary: terminal punctuation, whitespace, then something that can
# start a sentence. Deliberately simple; "e.g. Foo" splits are harmless here.
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9(\"'`])")
_CODE_PREFIXES = (">>>", "...", "$ ", "%")


def _source_files(root: Path) -> Iterator[Path]:
    """Yield ``*.py`` files under ``root`` in a deterministic (sorted) order."""
    for dirpath, dirnames, filenames in os.walk(root):
        # NOTE: sorting in place makes os.walk itself visit directories in order;
        # non-identifier dirs (site-packages, *.dist-info, *.libs) are never packages.
        dirnames[:] = sorted(d for d in dirnames if d not in SKIP_DIRS and d.isidentifier())
        for name in sorted(filenames):
            if name.endswith(".py"):
                yield Path(dirpath, name)


def _docstrings(root: Path) -> Iterator[str]:
    """Yield every module/class/function docstring under ``root``, in source order."""
    for path in _source_files(root):
        try:
            with warnings.catch_warnings():
                # NOTE: old files trigger SyntaxWarning (invalid escapes); irrelevant here.
                warnings.simplefilter("ignore")
                tree = ast.parse(path.read_bytes(), filename=str(path))
        except (OSError, SyntaxError, ValueError):
            continue
        # NOTE: docstrings only live on statements, so walk statement lists only;
        # ast.walk would also visit every expression node (~5x more work).
        stack: list[ast.AST] = [tree]
        while stack:
            node = stack.pop()
            if isinstance(node, _DOC_NODES) and (doc := ast.get_docstring(node, clean=True)):
                yield doc
            for field in ("cases", "handlers", "finalbody", "orelse", "body"):
                children = getattr(node, field, ())
                stack.extend(ch for ch in reversed(children) if isinstance(ch, _COMPOUND))


def _looks_like_code(paragraph: str) -> bool:
    """Heuristic: doctest/shell blocks, indented literal blocks, symbol soup."""
    lines = [ln for ln in paragraph.splitlines() if ln.strip()]
    if not lines:
        return True
    code = sum(ln.lstrip().startswith(_CODE_PREFIXES) for ln in lines)
    if code * 2 >= len(lines):
        return True
    if all(ln.startswith((" ", "\t")) for ln in lines):  # rST literal block
        return True
    visible = _WS.sub("", paragraph)
    return len(_NOT_LETTER.sub("", visible)) < 0.7 * len(visible)


def _paragraphs(doc: str) -> Iterator[str]:
    """Split a docstring on blank lines, dropping code-like paragraphs."""
    for para in re.split(r"\n\s*\n", _RST_UNDERLINE.sub("", doc)):
        # NOTE: doctest output lines outnumber the ">>>" lines, so the line-ratio test
        # alone misses them: keep only the prose before the first prompt.
        para = _DOCTEST.split(para, maxsplit=1)[0]
        if not _looks_like_code(para):
            yield _WS.sub(" ", para).strip()


def _sentences(paragraph: str) -> Iterator[str]:
    yield from (s.strip() for s in _SENTENCE_END.split(paragraph))


def stdlib_passages(
    max_passages: int | None = None, min_chars: int = 40, max_chars: int = 600
) -> list[str]:
    """Return deterministic, exactly-deduplicated English passages from docstrings.

    Args:
        max_passages: Stop after this many passages. ``None`` returns every
            *stdlib* passage (paragraph + sentence level) but never falls back
            to site-packages, whose contents vary between environments.
        min_chars: Drop passages shorter than this (after whitespace normalisation).
        max_chars: Drop passages longer than this.

    Measured on CPython 3.11.7, 2 shared cores, default bounds: the stdlib
    alone gives 9,806 paragraph passages, 15,958 with sentence splits (~1.1 s);
    20k takes ~1.6 s; 200k needs the site-packages fallback and takes 20-30 s,
    almost all of it in ``ast.parse``. Results are memoised per process.

    Returns:
        A new list in a fixed order; shorter than ``max_passages`` only when
        every source ran dry.
    """
    if max_passages is not None and max_passages <= 0:
        return []
    # NOTE: AST nodes are acyclic and freed by refcounting, but allocating millions
    # of them triggers needless full GC passes (~30% of the runtime at 200k).
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        return list(_extract(max_passages, min_chars, max_chars))
    finally:
        if gc_was_enabled:
            gc.enable()


@functools.lru_cache(maxsize=4)
def _extract(max_passages: int | None, min_chars: int, max_chars: int) -> tuple[str, ...]:
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    purelib = Path(sysconfig.get_paths()["purelib"])
    roots = [stdlib] if max_passages is None or purelib == stdlib else [stdlib, purelib]
    seen: set[str] = set()
    out: list[str] = []

    def add(texts: Iterable[str]) -> bool:
        """Append in-bounds unseen passages; return True once the quota is met."""
        for text in texts:
            if min_chars <= len(text) <= max_chars and text not in seen:
                seen.add(text)
                out.append(text)
                if max_passages is not None and len(out) >= max_passages:
                    return True
        return False

    for root in roots:
        paragraphs: list[str] = []  # every paragraph seen, kept for the sentence pass

        def lazy_paragraphs(root: Path = root) -> Iterator[str]:
            # NOTE: lazy so that a small quota stops parsing early (site-packages is big).
            for doc in _docstrings(root):
                for para in _paragraphs(doc):
                    paragraphs.append(para)
                    yield para

        if add(lazy_paragraphs()):
            break
        # NOTE: sentences are split from *all* paragraphs, including those too long
        # to be passages themselves -- that is where most new sentences come from.
        if add(s for para in paragraphs for s in _sentences(para)):
            break
    return tuple(out)


def sample_queries(passages: list[str], n: int, seed: int = 0) -> list[str]:
    """Pick ``n`` deterministic query texts: the first sentence of random passages.

    For out-of-corpus queries pass a held-out slice, e.g.
    ``stdlib_passages(N + k)[N:]`` while indexing only the first ``N``.

    Raises:
        ValueError: if ``n`` exceeds ``len(passages)`` or is negative.
    """
    if not 0 <= n <= len(passages):
        raise ValueError(f"cannot sample {n} queries from {len(passages)} passages")
    picks = random.Random(seed).sample(range(len(passages)), n)
    return [next(_sentences(passages[i])) for i in picks]
