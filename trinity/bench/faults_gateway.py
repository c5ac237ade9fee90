"""Gateway scenarios of ``trinity bench faults``: the decode leg stalled (SIGSTOP) and killed (SIGKILL).

A local stack (``trinity.stack.launcher``): emulated prefill and decode engines and
the PD gateway as real processes on loopback. No pool: the requests use neither
retrieval nor caches, so only the LLM legs are measured. Every request carries
``x-slo-ttft-ms`` (and ``x-slo-tpot-ms``); the gateway must answer each by its
SLO-derived deadline (``trinity.gateway.deadline``) with a clear error, cancel the
upstream work, and serve normally once the engine is back.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from trinity.stack.launcher import Stack, StackConfig
from trinity.stack.process import ManagedProcess, free_port

MARGIN_S = 1.0
TTFT_MS, TPOT_MS = 500.0, 50.0


@dataclass
class Answer:
    """What one client saw: HTTP status, SSE error event (if any), seconds to the end, its deadline."""

    status: int
    seconds: float
    deadline_s: float
    error: dict[str, Any] | None = None
    tokens: int = 0

    @property
    def ok(self) -> bool:
        return self.status == 200 and self.error is None

    @property
    def code(self) -> int:
        return int(self.error.get("code") or self.status) if self.error else self.status


def _row(scenario: str, check: str, value: Any, expect: str, ok: bool) -> dict:
    return {"scenario": scenario, "check": check, "value": value, "expect": expect, "ok": bool(ok)}


def _stack(workdir: Path) -> Stack:
    cfg = StackConfig(
        served_model_names=("m",), pool_url=f"http://127.0.0.1:{free_port()}", gateway_port=0, prefill_ports=(0,),
                      decode_ports=(0,), log_dir=workdir / "logs", gateway_args=("--embed", "pool", "--no-answer-cache"))
    return Stack(cfg)


async def _ask(client: httpx.AsyncClient, i: int, max_tokens: int, stream: bool, rid: str, tpot_ms: float,
               deadline_s: float, seen: dict[str, int]) -> Answer:
    """One request; ``seen[rid]`` counts its streamed tokens as they arrive."""
    headers = {"x-slo-ttft-ms": str(TTFT_MS), "x-slo-tpot-ms": str(tpot_ms), "X-Request-Id": rid}
    body = {"model": "m", "prompt": f"fault scenario request {i}", "max_tokens": max_tokens, "stream": stream}
    t0 = time.perf_counter()
    try:
        async with client.stream("POST", "/v1/completions", json=body, headers=headers) as resp:
            if resp.status_code != 200:
                error = json.loads(await resp.aread()).get("error") or {}
                return Answer(resp.status_code, time.perf_counter() - t0, deadline_s, error)
            error = None
            async for line in resp.aiter_lines():
                if not line.startswith("data:") or line.strip() == "data: [DONE]":
                    continue
                obj = json.loads(line[5:])
                if "error" in obj:
                    error = obj["error"]
                seen[rid] = seen.get(rid, 0) + sum(1 for c in obj.get("choices") or () if c.get("text"))
            return Answer(resp.status_code, time.perf_counter() - t0, deadline_s, error, seen.get(rid, 0))
    except (httpx.HTTPError, ValueError) as exc:
        return Answer(0, time.perf_counter() - t0, deadline_s, {"message": f"{type(exc).__name__}: {exc}"})


async def _burst(url: str, n: int, spread_s: float, max_tokens: int, tag: str, first_token: bool = False,
                 tpot_ms: float = TPOT_MS, streamed: bool | None = None, seen: dict[str, int] | None = None,
                 ) -> list[Answer]:
    """``n`` requests (half streamed unless ``streamed`` says) started evenly over ``spread_s`` seconds.

    Each is judged against its TTFT deadline (``first_token``) or its end deadline.
    """
    end_s = (TTFT_MS + (0 if first_token else tpot_ms * (max_tokens - 1))) / 1e3
    seen = {} if seen is None else seen
    async with httpx.AsyncClient(base_url=url, timeout=60.0, limits=httpx.Limits(max_connections=None)) as client:
        async def one(i: int) -> Answer:
            await asyncio.sleep(spread_s * i / max(n, 1))
            stream = i % 2 == 1 if streamed is None else streamed
            return await _ask(client, i, max_tokens, stream, f"{tag}-{i}", tpot_ms, end_s, seen)

        return await asyncio.gather(*(one(i) for i in range(n)))


def _probe(url: str, n: int = 4) -> int:
    return sum(a.ok for a in asyncio.run(_burst(url, n, 0.0, 4, "probe")))


def _recovery_s(url: str, limit_s: float = 30.0) -> float:
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < limit_s:
        if _probe(url, 1):
            return time.perf_counter() - t0
        time.sleep(0.05)
    return float("inf")


def _errors(answers: list[Answer]) -> str:
    counts = Counter(str(a.code) for a in answers if not a.ok)
    return ", ".join(f"{k}: {v}" for k, v in sorted(counts.items())) or "none"


def _timing_rows(name: str, answers: list[Answer]) -> list[dict]:
    n = max(len(answers), 1)
    within = sum(a.seconds <= a.deadline_s + MARGIN_S for a in answers) / n
    p99 = float(np.percentile([a.seconds for a in answers], 99)) if answers else float("nan")
    deadline = max((a.deadline_s for a in answers), default=0.0)
    return [
        _row(name, "requests", len(answers), "> 0", len(answers) > 0),
        _row(name, f"share answered within deadline + {MARGIN_S:g} s", round(within, 3), "== 1.0", within == 1.0),
        _row(name, "p99 answer time (s) vs deadline", round(p99, 3), f"<= {deadline:g} + {MARGIN_S:g}",
             p99 <= deadline + MARGIN_S),
    ]


def _completed(engine: ManagedProcess, prefix: str) -> int:
    seen = httpx.get(engine.url + "/debug/requests", timeout=10).json()
    return sum(1 for e in seen if (e["request_id"] or "").startswith(prefix) and e["outcome"] == "completed")


def stall(workdir: Path, quick: bool) -> list[dict]:
    """SIGSTOP the decode engine mid-stream and while requests arrive; each must end by its deadline."""
    name, n, stall_s = "gateway-stall", 8 if quick else 48, 2.5 if quick else 8.0
    num_running, running_tokens, running_tpot_ms = 4, 100, 10.0
    rows: list[dict] = []
    with _stack(workdir) as stack:
        decode = stack.engines[1]
        assert decode.popen is not None
        before = _probe(stack.gateway_url)
        rows.append(_row(name, "served before the stall", f"{before}/4", "4/4", before == 4))

        async def stalled() -> tuple[list[Answer], list[Answer]]:
            seen: dict[str, int] = {}
            running = asyncio.ensure_future(_burst(stack.gateway_url, num_running, 0.0, running_tokens, "running",
                                                   tpot_ms=running_tpot_ms, streamed=True, seen=seen))
            t0 = time.perf_counter()
            while sum(v >= 2 for v in seen.values()) < num_running and time.perf_counter() - t0 < 10:
                await asyncio.sleep(0.005)
            os.kill(decode.popen.pid, signal.SIGSTOP)
            arriving = await _burst(stack.gateway_url, n, stall_s / 2, 16, "stall", first_token=True)
            return await running, arriving

        t0 = time.perf_counter()
        try:
            running, answers = asyncio.run(stalled())
            time.sleep(max(0.0, stall_s - (time.perf_counter() - t0)))
        finally:
            os.kill(decode.popen.pid, signal.SIGCONT)
        recovery = _recovery_s(stack.gateway_url)
        served = _probe(stack.gateway_url, 8)
        time.sleep(0.5)  # NOTE: let the resumed engine drain what it had received
        completed = _completed(decode, "stall-") + _completed(decode, "running-")
        cut = sum(1 for a in running if a.status == 200 and a.tokens and a.code == 504)
        late = max(a.seconds - a.deadline_s for a in running)
        rows += [
            _row(name, "streams running at SIGSTOP ended by an SSE error event (504)", f"{cut}/{num_running}",
                 f"{num_running}/{num_running}", cut == num_running),
            _row(name, "their latest end past the end deadline (s)", round(late, 3), f"<= {MARGIN_S:g}",
                 late <= MARGIN_S),
        ]
        rows += _timing_rows(name, answers)
        named = sum(1 for a in answers if a.error and "decode" in str(a.error.get("message"))) / max(n, 1)
        rows += [
            _row(name, "errors by status", _errors(answers), f"504: {n}", _errors(answers) == f"504: {n}"),
            _row(name, "share of errors naming the decode leg", round(named, 3), "== 1.0", named == 1.0),
            _row(name, "stalled requests the engine completed after SIGCONT", completed, "== 0", completed == 0),
            _row(name, "seconds from SIGCONT to a served request", round(recovery, 3), "<= 2",
                 recovery <= 2.0),
            _row(name, "served after SIGCONT", f"{served}/8", "8/8", served == 8),
        ]
    return rows


def kill(workdir: Path, quick: bool) -> list[dict]:
    """SIGKILL the decode engine under load: clear errors by each deadline; serving again after a restart."""
    name, n, max_tokens = "gateway-kill", 8 if quick else 48, 400
    rows: list[dict] = []
    with _stack(workdir) as stack:
        decode = stack.engines[1]

        async def load() -> tuple[list[Answer], float]:
            task = asyncio.ensure_future(_burst(stack.gateway_url, n, 1.0, max_tokens, "kill"))
            await asyncio.sleep(0.5)
            decode.kill()
            killed = time.perf_counter()
            answers = await task
            return answers, time.perf_counter() - killed

        answers, drained_s = asyncio.run(load())
        after = asyncio.run(_burst(stack.gateway_url, 4, 0.0, 4, "dead"))
        rows += _timing_rows(name, answers)
        rows.append(_row(name, "seconds from SIGKILL to the last answer (arrivals run 0.5 s past it)",
                         round(drained_s, 3), f"<= {0.5 + MARGIN_S:g}", drained_s <= 0.5 + MARGIN_S))
        clear = sum(1 for a in answers if not a.ok and a.code in (502, 504) and "decode" in str(a.error)) / max(n, 1)
        rows += [
            _row(name, "errors by status", _errors(answers), f"502/504: {n}", clear == 1.0),
            _row(name, "streams cut mid-answer that got an SSE error event",
                 sum(1 for a in answers if a.status == 200 and a.tokens and a.error), "> 0",
                 any(a.status == 200 and a.tokens and a.error for a in answers)),
            _row(name, "share answered with a clear error naming the decode leg", round(clear, 3), "== 1.0",
                 clear == 1.0),
            _row(name, "requests while the engine is down", _errors(after), "502: 4", _errors(after) == "502: 4"),
            _row(name, "max seconds to an answer while down", round(max(a.seconds for a in after), 3), "<= 1",
                 max(a.seconds for a in after) <= 1.0),
        ]
        t0 = time.perf_counter()
        decode.start()
        decode.wait_ready(60)
        recovery = _recovery_s(stack.gateway_url)
        served = _probe(stack.gateway_url, 8)
        rows += [
            _row(name, "seconds from the restarted engine's health to a served request", round(recovery, 3), "<= 2",
                 recovery <= 2.0),
            _row(name, "restart to serving (s, includes the engine's start-up)", round(time.perf_counter() - t0, 1),
                 "-", True),
            _row(name, "served after the restart", f"{served}/8", "8/8", served == 8),
        ]
    return rows


SCENARIOS = {"gateway-stall": stall, "gateway-kill": kill}
