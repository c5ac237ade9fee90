"""The ``make demo`` stack on one host: every process's CPU work on a shared :class:`HostCpu`.

Processes (threads of the host model): the load driver (``client``), the gateway's asyncio
loop and its embedding thread, the pool, the emulated prefill and decode engines.  A request
walks the gateway's path -- embed, answer-cache lookup, RAG search, prefill leg, decode leg,
decode-time retrievals and continuation legs -- and each step is a job on the thread that
does it (costs: :class:`HostCosts`, from one calibration run); embeddings go through the
gateway's batcher (:class:`EmbedLanes`); the emulated engines sleep their latency model and
step on a virtual timeline like ``trinity/emulator/engine.py``; every token is relayed by the
gateway and parsed by the client.  TTFT and TPOT are the client's.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import simpy

from trinity.sim.cluster import Cluster, Router
from trinity.sim.host import HostCpu
from trinity.sim.llm import DecodeNode, PrefillNode, Seq
from trinity.sim.metrics import Record
from trinity.sim.workload import Workload


@dataclass(frozen=True)
class HostCosts:
    """CPU milliseconds per operation and process (uncontended), and the host."""

    cores: int = 2
    embed_ms: tuple[float, ...] = (10.0,)  # samples: one prefill-stage embedding (the query)
    decode_embed_ms: tuple[float, ...] = (15.0,)  # samples: the answer tail, before a decode-time search
    client_request_ms: float = 2.0
    client_token_ms: float = 0.1
    gateway_request_ms: float = 2.0
    gateway_call_ms: float = 1.0  # one pool call or LLM leg (send + answer)
    gateway_token_ms: float = 0.1
    pool_call_ms: float = 1.0
    prefill_leg_ms: float = 1.0
    decode_leg_ms: float = 1.0
    decode_token_ms: float = 0.1
    embed_gil_speed: float = 0.04  # embedding speed while the gateway's loop has work (measured: GIL)
    embed_batch_share: float = 0.7  # a batch of n > 1 texts costs this share of n single encodes (docs/gateway.md)
    passage_tokens: int = 34
    background: float = 0.0  # runnable threads of other processes (without a measured trace)


class EmbedLanes:
    """The gateway's ``EmbedBatcher`` with one local model: a decode and a prefill lane, each taking
    its queued texts (at most ``max_batch``) as one batch, then the model's lock (FIFO across the
    lanes), then one encode on the embedding thread; a batch's texts are all done at its end."""

    def __init__(self, env: simpy.Environment, thread, cost, max_batch: int = 8, batch_share: float = 1.0) -> None:
        self.env, self.thread, self.cost, self.max_batch, self.batch_share = env, thread, cost, max_batch, batch_share
        self.lock = simpy.Resource(env, capacity=1)
        self.queues = {lane: simpy.Store(env) for lane in ("decode", "prefill")}
        for lane in self.queues:
            env.process(self._run(lane))

    def embed(self, lane: str) -> simpy.Event:
        done = self.env.event()
        self.queues[lane].put(done)
        return done

    def _run(self, lane: str):
        queue = self.queues[lane]
        while True:
            batch = [(yield queue.get())]
            while queue.items and len(batch) < self.max_batch:
                batch.append((yield queue.get()))
            seconds = sum(self.cost(lane) for _ in batch) * (self.batch_share if len(batch) > 1 else 1.0)
            with self.lock.request() as req:
                yield req
                yield self.thread.run(seconds)
            for done in batch:
                done.succeed()


class EmuPrefill(PrefillNode):
    def __init__(self, env, name, model, max_num_batched_tokens, cpu) -> None:
        self.cpu = cpu
        super().__init__(env, name, model, max_num_batched_tokens)

    def leg(self, tokens: int, cost_s: float):
        yield self.cpu.run(cost_s)
        yield self.prefill(tokens)


class EmuDecode(DecodeNode):
    """The emulator's loop: a continuation leg prefills its passage in the step, a leg whose KV
    arrived decodes at once (nothing uncached); steps sleep on a virtual timeline; tokens are
    emitted (CPU)."""

    def __init__(self, env, name, model, max_num_seqs, kv, cpu, token_s: float, on_emit) -> None:
        self.cpu, self.token_s, self.on_emit, self._clock = cpu, token_s, on_emit, 0.0
        super().__init__(env, name, model, max_num_seqs, kv)

    def _loop(self):
        env, lat = self.env, self.model
        while True:
            self._admit()
            if not self.running:
                yield from self._idle()
                continue
            batch = list(self.running)
            new = [s.extra_prefill for s in batch if s.extra_prefill]
            old = [s for s in batch if not s.extra_prefill]
            ms = lat.prefill.ms(new) + lat.decode.ms(len(old), sum(s.context for s in old))
            now = env.now
            base = self._clock if 0.0 <= now - self._clock < 0.005 else now
            self._clock = base + ms / 1e3
            yield env.timeout(max(0.0, self._clock - now))
            self.busy_s += ms / 1e3
            yield self.cpu.run(self.token_s * len(batch))
            for s in batch:
                s.prompt_tokens += s.extra_prefill
                s.extra_prefill = 0
                s.generated += 1
                self.on_emit(s)
                self._after_token(s)


class DemoCluster(Cluster):
    def __init__(self, cfg, costs: HostCosts, background: tuple | None = None) -> None:
        super().__init__(cfg)
        self.costs, env, c = costs, self.env, cfg.cluster
        self.cpu = HostCpu(env, costs.cores, costs.background, background)
        t = {n: self.cpu.thread(n) for n in ("client", "gateway", "pool", "prefill", "decode")}
        t["embed"] = self.cpu.thread("embed", yields_to=t["gateway"], yield_speed=costs.embed_gil_speed)
        self.t = t
        self.lanes = EmbedLanes(env, t["embed"], self._embed_s, batch_share=costs.embed_batch_share)
        self.prefill = [EmuPrefill(env, "p0", self.model, c.max_num_batched_tokens, t["prefill"])]
        self.decode = [EmuDecode(env, "d0", self.model, c.max_num_seqs, 10**9, t["decode"],
                                 costs.decode_token_ms / 1e3, self._emitted)]
        self.routers["prefill"], self.routers["decode"] = Router(self.prefill), Router(self.decode)
        self.sample_rng = np.random.default_rng([cfg.seed, 11])
        self._client_tokens: dict[int, list[float]] = {}
        self._want: dict[int, tuple[int, simpy.Event]] = {}

    def _ms(self, name: str) -> float:
        return getattr(self.costs, name) / 1e3

    def _embed_s(self, lane: str) -> float:
        samples = self.costs.decode_embed_ms if lane == "decode" else self.costs.embed_ms
        return float(samples[self.sample_rng.integers(len(samples))]) / 1e3

    def _embed(self, decode: bool = False):
        yield self.lanes.embed("decode" if decode else "prefill")

    def _call(self):
        yield self.t["gateway"].run(self._ms("gateway_call_ms") / 2)
        yield self.t["pool"].run(self._ms("pool_call_ms"))

    def _answer(self):
        yield self.t["gateway"].run(self._ms("gateway_call_ms") / 2)

    def _hop(self):
        yield self.t["gateway"].run(self._ms("gateway_call_ms"))

    def _search(self, rec: Record, rid: str, stage: str, k: int, nprobe: int, deadline_ms: float,
                embed: bool = False):
        t0 = self.env.now
        if embed:
            yield from self._embed(decode=True)
        yield from self._call()
        done = yield self.routers["vector"].pick().search(rid, k, nprobe, stage, deadline_ms)
        yield from self._answer()
        rec.searches.append((stage, done.status, self.env.now - t0))

    def _token(self, rec: Record):
        yield self.t["gateway"].run(self._ms("gateway_token_ms"))
        yield self.t["client"].run(self._ms("client_token_ms"))
        times = self._client_tokens.setdefault(rec.index, [])
        times.append(self.env.now)
        want = self._want.get(rec.index)
        if want is not None and len(times) == want[0]:
            want[1].succeed()

    def _emitted(self, seq: Seq) -> None:
        self.env.process(self._token(seq.record))

    def _decode_hook(self, rec: Record, i: int):
        hook = super()._decode_hook(rec, i)
        mix = self.cfg.workload.retrieval

        def on_token(seq: Seq):
            stall = hook(seq)
            if seq.generated % mix.decode_every or stall is None:
                return stall

            def leg():  # NOTE: the continuation leg: gateway, then the decode engine's admission
                yield stall
                yield self.t["decode"].run(self._ms("decode_leg_ms"))
            return self.env.process(leg())
        return on_token

    def _serve(self, w: Workload, i: int, rec: Record):
        env, mix = self.env, self.cfg.workload.retrieval
        t0 = env.now
        yield self.t["client"].run(self._ms("client_request_ms"))
        yield self.t["gateway"].run(self._ms("gateway_request_ms"))
        out = int(w.output[i])
        if w.cache[i]:
            yield from self._embed()
            yield from self._search(rec, f"{i}.c", "prefill", 1, mix.cache_nprobe, mix.cache_deadline_ms)
            if w.cache_hit[i]:
                for _ in range(out):
                    yield env.process(self._token(rec))
                return self._finish(rec, t0, "cache_hit")
        if w.rag[i]:
            yield from self._search(rec, f"{i}.r", "prefill", mix.k, mix.nprobe, mix.rag_deadline_ms)
        prompt = int(w.prompt[i])
        yield from self._hop()
        yield from self.prefill[0].leg(prompt, self._ms("prefill_leg_ms"))
        yield from self._hop()
        node = self.decode[0]
        node.in_flight += 1
        yield self.t["decode"].run(self._ms("decode_leg_ms"))
        kv = self.model.kv_transfer
        yield env.timeout((kv.a_ms + kv.bytes_per_token * prompt / (kv.bandwidth_gb_s * 1e9) * 1e3) / 1e3)
        node.in_flight -= 1
        self._want[i] = (out, env.event())
        hook = self._decode_hook(rec, i) if w.decode_rag[i] else None
        seq = Seq(prompt, out, env.event(), generated=0, on_token=hook)
        seq.record = rec
        yield node.decode(seq)
        yield self._want[i][1]
        del self._want[i]
        if w.cache[i]:
            env.process(self._call())  # NOTE: the answer-cache insert, off the critical path
        self._finish(rec, t0, "ok")

    def _finish(self, rec: Record, t0: float, status: str) -> None:
        times = self._client_tokens.pop(rec.index, [self.env.now])
        rec.status, rec.ttft_s, rec.e2e_s = status, times[0] - t0, times[-1] - t0
        rec.tpot_s = (times[-1] - times[0]) / (len(times) - 1) if len(times) > 1 else 0.0


def simulate_demo(cfg, workload: Workload, costs: HostCosts, background: tuple | None = None):
    return DemoCluster(cfg, costs, background).run(workload)


__all__ = ["DemoCluster", "EmbedLanes", "EmuDecode", "EmuPrefill", "HostCosts", "simulate_demo"]
