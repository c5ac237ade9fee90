"""Continuous-batching engine loop of the emulated prefill/decode instances.

One asyncio task runs steps like vLLM's scheduler: each step takes the running batch
(at most ``max_num_seqs`` sequences, one token each) plus newly admitted prompts (up
to ``max_num_batched_tokens`` uncached tokens) and sleeps for the modelled duration
``prefill_ms(new prompts) + decode_ms(batch, context)``. Nothing is computed; only
the timing, token counts and the PD protocol are real.

PD behaviour (vLLM NixlConnector semantics):

* ``kv_transfer_params.do_remote_decode``: prefill only -- one token, then finish
  and return ``kv_transfer_params`` pointing at this engine's "blocks".
* ``kv_transfer_params.do_remote_prefill`` with block ids: skip the prefill, wait the
  modelled KV-transfer time, then decode.
* Neither: prefill locally. A decode-role engine counts these
  (``trinity_emulator_requests_without_kv_transfer``): silent re-prefill is the classic PD
  misconfiguration, but also what a deliberate continuation leg looks like.

A block-hash prefix cache (16-token blocks, LRU) makes repeated or extended prompts
(continuation legs) prefill only their new suffix.
"""

from __future__ import annotations

import asyncio
import itertools
import time
import uuid
from collections import OrderedDict
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from trinity.emulator.latency import LatencyModel
from trinity.emulator.metrics import EmulatorMetrics
from trinity.emulator.text import filler_tokens, tokenize

__all__ = ["EmulatedEngine", "EngineConfig", "Finished", "PrefixCache", "Sequence", "TokenEvent"]


@dataclass(frozen=True)
class EngineConfig:
    """Shape of one emulated instance (``max_num_seqs`` etc. mirror vLLM's flags)."""

    role: str = "both"  # prefill | decode | both
    model: str = "trinity-emulated-llama-3-8b"
    max_num_seqs: int = 256
    max_num_batched_tokens: int = 8192
    max_model_len: int = 8192
    block_size: int = 16
    prefix_cache_blocks: int = 65_536
    host: str = "127.0.0.1"
    port: int = 0
    latency: LatencyModel = field(default_factory=LatencyModel)

    def __post_init__(self) -> None:
        if self.role not in ("prefill", "decode", "both"):
            raise ValueError(f"role: expected prefill, decode or both, got {self.role!r}")
        if min(self.max_num_seqs, self.max_num_batched_tokens, self.max_model_len, self.block_size) < 1:
            raise ValueError("max_num_seqs, max_num_batched_tokens, max_model_len, block_size must be >= 1")


@dataclass(frozen=True)
class TokenEvent:
    text: str


@dataclass(frozen=True)
class Finished:
    reason: str  # "length" | "abort"
    prompt_tokens: int
    completion_tokens: int
    kv_transfer_params: dict[str, Any] | None = None
    stop_reason: str | None = None


class PrefixCache:
    """LRU set of chained block hashes; ``match`` returns how many leading tokens are cached."""

    def __init__(self, block_size: int, capacity_blocks: int) -> None:
        self.block_size, self.capacity = block_size, capacity_blocks
        self._blocks: OrderedDict[int, None] = OrderedDict()

    def _hashes(self, tokens: list[str]) -> list[int]:
        out, h, bs = [], 0, self.block_size
        for i in range(0, len(tokens) - bs + 1, bs):
            h = hash((h, tuple(tokens[i : i + bs])))
            out.append(h)
        return out

    def match(self, tokens: list[str]) -> int:
        n = 0
        for h in self._hashes(tokens):
            if h not in self._blocks:
                break
            self._blocks.move_to_end(h)
            n += self.block_size
        return n

    def insert(self, tokens: list[str]) -> None:
        for h in self._hashes(tokens):
            self._blocks[h] = None
            self._blocks.move_to_end(h)
        while len(self._blocks) > self.capacity:
            self._blocks.popitem(last=False)


@dataclass(eq=False)
class Sequence:
    """Engine-side state of one request."""

    request_id: str
    prompt: list[str]
    max_tokens: int
    seed: int | None = None
    stop: tuple[str, ...] = ()
    prefill_only: bool = False  # do_remote_decode: return KV params after one token
    kv_ready_at: float | None = None  # remote prefill: monotonic time the KV has arrived
    arrival: float = field(default_factory=time.monotonic)
    events: asyncio.Queue = field(default_factory=asyncio.Queue)
    generated: list[str] = field(default_factory=list)
    text: str = ""
    first_token_at: float | None = None
    last_token_at: float | None = None
    scheduled_at: float | None = None
    stop_reason: str | None = None
    uncached: int = 0
    scheduled: bool = False
    finished: bool = False

    def __post_init__(self) -> None:
        self._filler = filler_tokens(" ".join(self.prompt), self.seed)

    def next_token(self) -> str:
        """The next token's text; cut before a stop string, which then sets ``stop_reason``."""
        tok = next(self._filler)
        self.generated.extend(tokenize(tok))
        before, self.text = len(self.text), self.text + tok
        for s in self.stop:
            at = self.text.find(s, max(0, before - len(s) + 1))
            if at >= 0:
                self.stop_reason, self.text = s, self.text[:at]
                return self.text[before:] if at > before else ""
        return tok


class EmulatedEngine:
    """The step loop; create inside a running event loop and ``start()`` it."""

    def __init__(self, config: EngineConfig, metrics: EmulatorMetrics | None = None) -> None:
        self.config = config
        self.metrics = metrics or EmulatorMetrics(config.role, config.model, config.max_model_len)
        self.engine_id = uuid.uuid4().hex
        self.cache = PrefixCache(config.block_size, config.prefix_cache_blocks)
        self._waiting: list[Sequence] = []  # need a local prefill
        self._transferring: list[Sequence] = []  # waiting for remote KV
        self._running: list[Sequence] = []
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._block_ids = itertools.count()
        self._clock = 0.0  # end of the last step on the virtual timeline

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._loop(), name="emulator-engine")

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    @property
    def num_running(self) -> int:
        return len(self._running)

    @property
    def num_waiting(self) -> int:
        return len(self._waiting) + len(self._transferring)

    def add(self, seq: Sequence, kv_transfer_params: dict[str, Any] | None) -> None:
        """Queue ``seq``; remote-prefill params with block ids skip the local prefill."""
        m, role = self.metrics, self.config.role
        m.prompt_tokens.inc(len(seq.prompt))
        m.req_prompt_tokens.observe(len(seq.prompt))
        m.req_max_tokens.observe(seq.max_tokens)
        kv = kv_transfer_params or {}
        seq.prefill_only = bool(kv.get("do_remote_decode"))
        remote = kv.get("do_remote_prefill") and (kv.get("remote_block_ids") is not None
                                                  or kv.get("bootstrap_server_host") or kv.get("p2p"))
        if remote:
            # NOTE: blocks the prefill instance did not send (a ragged tail) are computed here.
            blocks = kv.get("remote_block_ids")
            sent = len(seq.prompt) if blocks is None else min(len(seq.prompt), len(blocks) * self.config.block_size)
            seq.uncached = len(seq.prompt) - sent
            delay = self.config.latency.kv_transfer.ms(sent) * self.config.latency.time_scale / 1e3
            seq.kv_ready_at = time.monotonic() + delay
            self.cache.insert(seq.prompt)
            m.kv_received.inc()
            self._transferring.append(seq)
        else:
            if role == "decode":
                m.no_kv.inc()
            cached = min(self.cache.match(seq.prompt), max(len(seq.prompt) - 1, 0))
            seq.uncached = len(seq.prompt) - cached
            m.prefix_queries.inc(len(seq.prompt))
            m.prefix_hit_tokens.inc(cached)
            self._waiting.append(seq)
        self._wake.set()

    def abort(self, seq: Sequence) -> None:
        """Drop ``seq`` (client went away); it leaves the batch at the next step boundary."""
        if not seq.finished:
            seq.finished = True
            self.metrics.success["abort"].inc()
            seq.events.put_nowait(Finished("abort", len(seq.prompt), len(seq.generated)))

    async def events(self, seq: Sequence) -> AsyncIterator[TokenEvent | Finished]:
        while True:
            ev = await seq.events.get()
            yield ev
            if isinstance(ev, Finished):
                return

    # -- step loop ---------------------------------------------------------------------------------
    def _kv_params(self, seq: Sequence) -> dict[str, Any]:
        nblocks = -(-len(seq.prompt) // self.config.block_size)
        return {
            "do_remote_prefill": True, "do_remote_decode": False,
            "remote_block_ids": [next(self._block_ids) for _ in range(nblocks)],
            "remote_engine_id": self.engine_id, "remote_host": self.config.host,
            "remote_port": self.config.port, "tp_size": 1,
        }

    def _finish(self, seq: Sequence, kv: dict[str, Any] | None = None) -> None:
        seq.finished = True
        m, now = self.metrics, time.monotonic()
        self.cache.insert(seq.prompt + seq.generated)
        reason = "stop" if seq.stop_reason is not None else "length"
        m.success[reason].inc()
        m.e2e.observe(now - seq.arrival)
        m.req_gen_tokens.observe(len(seq.generated))
        if seq.scheduled_at is not None and seq.first_token_at is not None:
            m.prefill_time.observe(seq.first_token_at - seq.scheduled_at)
            m.decode_time.observe(now - seq.first_token_at)
        if len(seq.generated) > 1 and seq.first_token_at is not None:
            m.tpot.observe((now - seq.first_token_at) / (len(seq.generated) - 1))
        if kv:
            m.kv_sent.inc()
        seq.events.put_nowait(Finished(reason, len(seq.prompt), len(seq.generated), kv, seq.stop_reason))

    def _emit(self, seq: Sequence) -> None:
        m, now = self.metrics, time.monotonic()
        if not seq.generated:
            m.ttft.observe(now - seq.arrival)
            seq.first_token_at = now
        elif seq.last_token_at is not None:
            m.itl.observe(now - seq.last_token_at)
        seq.last_token_at = now
        seq.events.put_nowait(TokenEvent(seq.next_token()))
        m.generation_tokens.inc()

    def _schedule(self, now: float) -> list[Sequence]:
        """Drop finished sequences, admit ready transfers and a prefill batch; return the prefills."""
        cfg = self.config
        self._running = [s for s in self._running if not s.finished]
        self._waiting = [s for s in self._waiting if not s.finished]
        self._transferring = [s for s in self._transferring if not s.finished]
        for s in [s for s in self._transferring if s.kv_ready_at <= now]:
            if len(self._running) >= cfg.max_num_seqs:
                break
            self._transferring.remove(s)
            if s.uncached:  # partial transfer: compute the rest locally
                self._waiting.insert(0, s)
            else:
                self._running.append(s)
        batch, budget = [], cfg.max_num_batched_tokens
        for s in self._waiting:
            if len(self._running) + len(batch) >= cfg.max_num_seqs or (batch and s.uncached > budget):
                break
            batch.append(s)
            budget -= s.uncached
        for s in batch:
            self._waiting.remove(s)
        return batch

    def _kv_usage(self, active: list[Sequence]) -> float:
        bs = self.config.block_size
        used = sum(-(-(len(s.prompt) + len(s.generated)) // bs) for s in active + self._transferring)
        return min(1.0, used / self.config.prefix_cache_blocks)

    async def _loop(self) -> None:
        lat, m = self.config.latency, self.metrics
        while True:
            now = time.monotonic()
            prefills = self._schedule(now)
            decodes = list(self._running)
            m.running.set(len(decodes) + len(prefills))
            m.waiting.set(self.num_waiting)
            m.kv_usage.set(self._kv_usage(prefills + decodes))
            if not prefills and not decodes:
                self._wake.clear()
                timeout = min((s.kv_ready_at for s in self._transferring), default=None)
                try:
                    await asyncio.wait_for(self._wake.wait(), None if timeout is None else max(0.0, timeout - now))
                except TimeoutError:
                    pass
                continue
            for s in prefills + decodes:
                if not s.scheduled:
                    s.scheduled, s.scheduled_at = True, now
                    m.queue.observe(now - s.arrival)
            p_ms = lat.prefill.ms([s.uncached for s in prefills])
            ctx = sum(len(s.prompt) + len(s.generated) for s in decodes)
            d_ms = lat.decode.ms(len(decodes), ctx)
            step_s = (p_ms + d_ms) * lat.time_scale / 1e3
            # NOTE: steps run on a virtual timeline (target = previous target + step) so that
            # epoll's 1 ms timeout rounding and Python overhead do not accumulate per step;
            # after an idle gap (or when far behind) the timeline restarts at ``now``.
            base = self._clock if 0.0 <= now - self._clock < 0.005 else now
            self._clock = base + step_s
            await asyncio.sleep(max(0.0, self._clock - time.monotonic()))
            m.step_observe("mixed" if prefills and decodes else "prefill" if prefills else "decode",
                           time.monotonic() - now)
            for s in prefills:
                m.prefill_tokens.inc(s.uncached)
                if s.finished:
                    continue
                self._emit(s)  # the prefill step samples the first token
                if s.prefill_only:
                    self._finish(s, self._kv_params(s))
                elif len(s.generated) >= s.max_tokens or s.stop_reason is not None:
                    self._finish(s)
                else:
                    self._running.append(s)
            for s in decodes:
                if s.finished:
                    continue
                self._emit(s)
                if len(s.generated) >= s.max_tokens or s.stop_reason is not None:
                    self._finish(s)
