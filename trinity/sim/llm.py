"""Prefill and decode instances as SimPy processes, stepping like the emulated engines
(``trinity/emulator/engine.py``): continuous batching, ``max_num_seqs``, a token budget per
prefill step, step durations from the emulator's latency model (a :class:`ModelProfile`)."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import simpy

from trinity.sim.profiles import ModelProfile
from trinity.sim.vnode import GpuShare


@dataclass(eq=False)
class Seq:
    """One sequence on a decode instance."""

    prompt_tokens: int
    max_tokens: int
    done: simpy.Event
    generated: int = 1  # the prefill instance sampled the first token
    extra_prefill: int = 0  # continuation tokens (retrieved passages) to prefill at the next step
    on_token: object = None  # callable(seq) after each token; returns an Event to stall on, or None
    stalled: bool = False
    token_times: list[float] = field(default_factory=list)

    @property
    def context(self) -> int:
        return self.prompt_tokens + self.generated + self.extra_prefill


class _Node:
    def __init__(self, env: simpy.Environment, name: str, model: ModelProfile, share: GpuShare | None) -> None:
        self.env, self.name, self.model, self.share = env, name, model, share
        self.in_flight, self.busy_s, self.num_steps = 0, 0.0, 0
        self._wake: simpy.Event | None = None

    def _kick(self) -> None:
        if self._wake is not None and not self._wake.triggered:
            self._wake.succeed()

    def _idle(self):
        self._wake = self.env.event()
        yield self._wake
        self._wake = None

    def _step(self, seconds: float):
        """Hold the GPU ``seconds`` plus what co-located searches took from it."""
        if self.share is not None:
            self.share.llm_busy = True
            seconds += self.share.take_debt()
        yield self.env.timeout(seconds)
        if self.share is not None:
            self.share.llm_busy = False
            seconds += self.share.take_debt()  # NOTE: searches during this step delay the next
        self.busy_s += seconds
        self.num_steps += 1


class PrefillNode(_Node):
    """Prefill-only instance: batches waiting prompts up to ``max_num_batched_tokens``."""

    def __init__(self, env, name, model, max_num_batched_tokens: int, share: GpuShare | None = None) -> None:
        super().__init__(env, name, model, share)
        self.max_num_batched_tokens = max_num_batched_tokens
        self.waiting: deque[tuple[int, simpy.Event]] = deque()
        env.process(self._loop())

    def prefill(self, tokens: int) -> simpy.Event:
        ev = self.env.event()
        self.waiting.append((tokens, ev))
        self.in_flight += 1
        self._kick()
        return ev

    def _loop(self):
        while True:
            if not self.waiting:
                yield from self._idle()
                continue
            batch, tokens, budget = [], [], self.max_num_batched_tokens
            while self.waiting and (not batch or self.waiting[0][0] <= budget):
                n, ev = self.waiting.popleft()
                batch.append(ev)
                tokens.append(n)
                budget -= n
            yield from self._step(self.model.prefill.ms(tokens) / 1e3)
            for ev in batch:
                self.in_flight -= 1
                ev.succeed(self.env.now)


class DecodeNode(_Node):
    """Decode instance: sequences join after their KV transfer while ``max_num_seqs`` and the
    KV capacity allow; every step emits one token per running sequence."""

    def __init__(self, env, name, model, max_num_seqs: int, kv_capacity_tokens: int,
                 share: GpuShare | None = None) -> None:
        super().__init__(env, name, model, share)
        self.max_num_seqs, self.kv_capacity = max_num_seqs, kv_capacity_tokens
        self.waiting: deque[Seq] = deque()
        self.running: list[Seq] = []
        self.link = simpy.Resource(env, capacity=1)  # the instance's KV-transfer NIC
        env.process(self._loop())

    def transfer(self, tokens: int):
        """Pull a prompt's KV cache over this instance's link (process generator)."""
        kv = self.model.kv_transfer
        with self.link.request() as req:
            yield req
            yield self.env.timeout(kv.bytes_per_token * tokens / (kv.bandwidth_gb_s * 1e9))
        yield self.env.timeout(kv.a_ms / 1e3)

    def decode(self, seq: Seq) -> simpy.Event:
        self.waiting.append(seq)
        self.in_flight += 1
        self._kick()
        return seq.done

    def resume(self, seq: Seq) -> None:
        seq.stalled = False
        self.running.append(seq)
        self._kick()

    def _admit(self) -> None:
        used = sum(s.context for s in self.running)
        while self.waiting and len(self.running) < self.max_num_seqs:
            s = self.waiting[0]
            if self.running and used + s.context + s.max_tokens > self.kv_capacity:
                break
            self.running.append(self.waiting.popleft())
            used += s.context

    def _loop(self):
        env, lat = self.env, self.model
        while True:
            self._admit()
            if not self.running:
                yield from self._idle()
                continue
            batch = list(self.running)
            extra = [s.extra_prefill for s in batch if s.extra_prefill]
            ms = lat.decode.ms(len(batch), sum(s.context for s in batch)) + lat.prefill.ms(extra)
            yield from self._step(ms / 1e3)
            for s in batch:
                s.prompt_tokens += s.extra_prefill
                s.extra_prefill = 0
                s.generated += 1
                s.token_times.append(env.now)
                self._after_token(s)

    def _after_token(self, s: Seq) -> None:
        """``s`` emitted a token: it finishes, stalls on a decode-time retrieval, or runs on."""
        if s.generated >= s.max_tokens:
            self.running.remove(s)
            self.in_flight -= 1
            s.done.succeed(self.env.now)
        elif s.on_token is not None:
            stall = s.on_token(s)
            if stall is not None:
                s.stalled = True
                self.running.remove(s)
                stall.callbacks.append(lambda _, s=s: self.resume(s))
