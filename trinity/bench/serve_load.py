"""The async client side of ``trinity bench serve``: prompts, arrivals, streamed requests."""

from __future__ import annotations

import asyncio
import json
import random
import time
from typing import Any

import httpx

from trinity.bench.serve_config import Outcome, ServeBenchConfig

__all__ = ["build_prompts", "drive", "first_model"]


def build_prompts(n: int, corpus_passages: int, seed: int) -> list[str]:
    """``n`` real English queries (first sentences of docstring passages), cycled if needed."""
    from trinity.data import sample_queries, stdlib_passages

    passages = stdlib_passages(max(corpus_passages, 1))
    picks = sample_queries(passages, min(n, len(passages)), seed=seed)
    return [picks[i % len(picks)] for i in range(n)]


def _options(cls: str, cfg: ServeBenchConfig) -> dict[str, Any] | None:
    opts: dict[str, Any] = {} if cfg.answer_cache else {"answer_cache": False}
    if cls == "rag":
        opts.update(collection=cfg.collection, k=cfg.k)
    if cls == "rag_decode":
        opts.update(collection=cfg.collection, k=cfg.k, retrieval_interval=cfg.retrieval_interval)
    return opts or None


async def _one(client: httpx.AsyncClient, cfg: ServeBenchConfig, model: str, cls: str, prompt: str,
               opts: dict[str, Any] | None) -> Outcome:
    out = Outcome(cls)
    body: dict[str, Any] = {"model": model, "max_tokens": cfg.output_len, "stream": True,
                            "stream_options": {"include_usage": True}}
    if cfg.endpoint == "chat":
        body["messages"] = [{"role": "user", "content": prompt}]
    else:
        body["prompt"] = prompt
    if opts:
        body["trinity"] = opts
    headers = {}
    if cfg.slo_headers:
        headers = {f"x-slo-{k}-ms": str(v) for k, v in cfg.goodput.items() if k in ("ttft", "tpot")}
    path = "/v1/chat/completions" if cfg.endpoint == "chat" else "/v1/completions"
    out.start = last = time.perf_counter()
    try:
        async with client.stream("POST", path, json=body, headers=headers) as resp:
            if resp.status_code != 200:
                out.error = f"HTTP {resp.status_code}: {(await resp.aread()).decode(errors='replace')[:200]}"
                return out
            async for line in resp.aiter_lines():
                if not line.startswith("data:") or line[5:].strip() == "[DONE]":
                    continue
                obj = json.loads(line[5:])
                if "error" in obj and "choices" not in obj:
                    out.error = str(obj["error"].get("message", obj["error"]))[:200]
                    return out
                for ch in obj.get("choices") or ():
                    text = ch.get("text") if cfg.endpoint == "completions" else (ch.get("delta") or {}).get("content")
                    if text:
                        out.text += text
                        now = time.perf_counter()
                        if out.ttft == 0.0:
                            out.ttft = now - out.start
                        else:
                            out.itl.append(now - last)
                        last = now
                if obj.get("usage"):
                    out.output_tokens = int(obj["usage"]["completion_tokens"])
                    out.prompt_len = int(obj["usage"]["prompt_tokens"])
                if "trinity" in obj:
                    out.trinity = obj["trinity"]
        out.latency = time.perf_counter() - out.start
        out.success = out.ttft > 0.0
        if not out.success:
            out.error = "no tokens received"
    except (httpx.HTTPError, ValueError) as exc:
        out.error = f"{type(exc).__name__}: {exc}"[:200]
    return out


async def first_model(client: httpx.AsyncClient, base_url: str) -> str:
    """The first model of ``/v1/models``; a one-line :class:`ValueError` when the server is not one."""
    try:
        resp = await client.get("/v1/models", timeout=10.0)
    except httpx.HTTPError as exc:
        raise ValueError(f"--base-url {base_url}: cannot reach {base_url}/v1/models ({type(exc).__name__}: "
                         f"{exc or 'no answer'})") from None
    try:
        return str(resp.json()["data"][0]["id"])
    except (ValueError, KeyError, IndexError, TypeError):
        raise ValueError(f"--base-url {base_url}: {base_url}/v1/models answered HTTP {resp.status_code} without "
                         "a model list (give the server's root URL, without /v1, or --model)") from None


async def drive(cfg: ServeBenchConfig) -> tuple[list[Outcome], float, str]:
    """Send ``num_prompts`` requests with Poisson/gamma arrivals; return outcomes, duration, model."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    rng = random.Random(cfg.seed)
    prompts = build_prompts(cfg.num_prompts, cfg.corpus_passages, cfg.seed)
    names, weights = zip(*cfg.mix.items())
    classes = rng.choices(names, weights, k=cfg.num_prompts)
    done_prompts: list[tuple[str, dict[str, Any] | None]] = []  # completed (prompt, options): repeat sources
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=512)
    sem = asyncio.Semaphore(cfg.max_concurrency) if cfg.max_concurrency else None
    async with httpx.AsyncClient(base_url=cfg.base_url, timeout=cfg.timeout_s, limits=limits) as client:
        model = cfg.model or await first_model(client, cfg.base_url)
        columns = (TextColumn("[bold]bench serve"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
        with Progress(*columns, disable=not cfg.progress, transient=False) as bar:
            task_id = bar.add_task("requests", total=cfg.num_prompts)

            async def run(cls: str, prompt: str, opts: dict[str, Any] | None) -> Outcome:
                if sem is not None:
                    async with sem:
                        out = await _one(client, cfg, model, cls, prompt, opts)
                else:
                    out = await _one(client, cfg, model, cls, prompt, opts)
                if out.success and cls != "repeat":
                    done_prompts.append((prompt, opts))
                bar.advance(task_id)
                return out

            tasks = []
            start = time.perf_counter()
            for i, cls in enumerate(classes):
                if i and cfg.rate != float("inf"):
                    # NOTE: vLLM's arrivals: gamma(shape=burstiness, mean=1/rate); burstiness 1 is Poisson.
                    await asyncio.sleep(rng.gammavariate(cfg.burstiness, 1.0 / (cfg.rate * cfg.burstiness)))
                if cls == "repeat" and done_prompts:
                    prompt, opts = rng.choice(done_prompts)
                else:
                    prompt, opts = prompts[i], _options(cls, cfg)
                tasks.append(asyncio.create_task(run(cls, prompt, opts)))
            outcomes = list(await asyncio.gather(*tasks))
            duration = time.perf_counter() - start
    return outcomes, duration, model
