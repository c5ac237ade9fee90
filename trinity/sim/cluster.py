"""The simulated PD cluster: gateway routing, retrieval, prefill, KV transfer, decode."""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import simpy

from trinity.engine import SchedulerConfig
from trinity.sim.config import SimConfig
from trinity.sim.llm import DecodeNode, PrefillNode, Seq
from trinity.sim.metrics import Record, summarize
from trinity.sim.profiles import ModelProfile, SearchProfile, load_model, load_search
from trinity.sim.vector import ShellIndex, size_biased_assign
from trinity.sim.vnode import GpuShare, StaticNode, VectorNode
from trinity.sim.workload import Workload, build_workload


class Router:
    """The gateway's pick: least in-flight requests, round robin among ties."""

    def __init__(self, nodes: list) -> None:
        self.nodes, self._rr = nodes, itertools.count()

    def pick(self):
        low = min(n.in_flight for n in self.nodes)
        ties = [n for n in self.nodes if n.in_flight == low]
        return ties[next(self._rr) % len(ties)]


@dataclass
class SimResult:
    config: SimConfig
    records: list[Record]
    summary: dict[str, Any]
    sim_s: float
    wall_s: float
    num_gpus: int
    utilisation: dict[str, float]


class Cluster:
    """Nodes of one :class:`SimConfig`; :meth:`run` replays a workload through them."""

    def __init__(self, cfg: SimConfig, model: ModelProfile | None = None, search: SearchProfile | None = None) -> None:
        self.cfg, c = cfg, cfg.cluster
        self.env = env = simpy.Environment()
        self.model = model or load_model(c.model)
        self.search = search or load_search(c.cpu_search if c.placement == "cpu" else c.search)
        self.index = (ShellIndex.flat(c.corpus_vectors) if c.index == "flat"
                      else ShellIndex.synthetic(c.corpus_vectors, c.nlist, seed=cfg.seed))
        self.assign = size_biased_assign(self.index.list_len, cfg.seed)
        index_gb = c.corpus_vectors * self.search.bytes_per_vector / 1e9
        shares = {role: [GpuShare(self.model.colocation[role]) if c.placement == role else None
                         for _ in range(n)] for role, n in (("prefill", c.num_prefill), ("decode", c.num_decode))}
        self.prefill = [PrefillNode(env, f"p{i}", self.model, c.max_num_batched_tokens, s)
                        for i, s in enumerate(shares["prefill"])]
        kv = self.model.kv_capacity_tokens(index_gb if c.placement == "decode" else 0.0)
        self.decode = [DecodeNode(env, f"d{i}", self.model, c.max_num_seqs, kv, s)
                       for i, s in enumerate(shares["decode"])]
        hosts = shares[c.placement] if c.placement in shares else [None] * c.num_vector
        cost = self.search.node_cost(c.cpu_cores if c.placement == "cpu" else None)
        self.vector = [self._vector_node(f"v{i}", cost, s) for i, s in enumerate(hosts)]
        self.num_done, self.last_done = 0, 0.0
        self.gateway_cpu = simpy.Resource(env, capacity=1)
        self.rng = np.random.default_rng([cfg.seed, 7])
        self.host = simpy.Resource(env, capacity=c.host_cores) if c.host_cores else None
        if self.host is not None and c.host_background > 0:
            env.process(self._background(c.host_background))
        self.routers = {"prefill": Router(self.prefill), "decode": Router(self.decode), "vector": Router(self.vector)}

    def _vector_node(self, name: str, cost, share: GpuShare | None):
        c = self.cfg.cluster
        if c.policy == "static":
            return StaticNode(self.env, name, cost, self.index, self.assign, c.static_max_batch,
                              c.static_max_wait_ms / 1e3, share)
        target = c.target_iteration_ms if self.search.device == "gpu" else max(c.target_iteration_ms, 4.0)
        sched = SchedulerConfig(target_iteration_ms=target, stage_aware=c.policy == "stage")
        return VectorNode(self.env, name, cost, sched, self.index, self.assign, share)

    @property
    def index_fits(self) -> bool:
        """A co-located replica must fit next to the weights (TP instances: on one GPU's share)."""
        c, m = self.cfg.cluster, self.model
        if c.placement not in ("prefill", "decode"):
            return True
        index_gb = c.corpus_vectors * self.search.bytes_per_vector / 1e9
        free_gb = 0.9 * m.hbm_gb - m.weights_gb / m.gpus_per_instance
        return index_gb <= free_gb and m.kv_capacity_tokens(index_gb) >= c.max_num_batched_tokens

    @property
    def num_gpus(self) -> int:
        c = self.cfg.cluster
        return (c.num_prefill + c.num_decode) * self.model.gpus_per_instance + c.num_vector_gpus

    def _overhead(self, mean_ms: float) -> float:
        cv = self.cfg.cluster.overhead_cv
        if not cv:
            return mean_ms / 1e3
        sigma = np.sqrt(np.log1p(cv * cv))
        return float(self.rng.lognormal(np.log(mean_ms / 1e3) - sigma * sigma / 2, sigma))

    def _hop(self):
        if self.cfg.cluster.hop_ms:
            yield from self._host_work(self._overhead(self.cfg.cluster.hop_ms))

    def _embed(self, decode: bool = False):
        ms = self.cfg.cluster.decode_embed_ms if decode else self.cfg.cluster.embed_ms
        if ms:
            with self.gateway_cpu.request() as req:
                yield req
                yield from self._host_work(self._overhead(ms))

    def _host_work(self, seconds: float):
        seconds *= self.cfg.cluster.host_stretch
        if self.host is None:
            yield self.env.timeout(seconds)
            return
        with self.host.request() as req:
            yield req
            yield self.env.timeout(seconds)

    def _background(self, share: float, job_s: float = 0.005):
        """Other processes on the host: Poisson jobs keeping ``share`` of its cores busy."""
        gap = job_s / (share * self.host.capacity)
        while True:
            yield self.env.timeout(self.rng.exponential(gap))
            self.env.process(self._host_work(job_s))

    def _token_hook(self, rec: Record, i: int, w: Workload):
        decode = self._decode_hook(rec, i) if w.decode_rag[i] else None
        per = self.cfg.cluster.host_ms_per_token / 1e3
        if not per or self.host is None:
            return decode

        def hook(seq: Seq):
            self.env.process(self._host_work(per))
            return decode(seq) if decode is not None else None
        return hook

    def _search(self, rec: Record, rid: str, stage: str, k: int, nprobe: int, deadline_ms: float,
                embed: bool = False):
        t0 = self.env.now
        if embed:  # NOTE: a decode-time search embeds the text so far first
            yield from self._embed(decode=True)
        yield from self._hop()
        done = yield self.routers["vector"].pick().search(rid, k, nprobe, stage, deadline_ms)
        rec.searches.append((stage, done.status, self.env.now - t0))

    def _decode_hook(self, rec: Record, i: int):
        mix, n = self.cfg.workload.retrieval, itertools.count()
        k = mix.decode_k or mix.k
        pending: list[simpy.Event] = []

        def on_token(seq: Seq):
            g = seq.generated
            if g % mix.decode_every == max(mix.decode_every - mix.prefetch_tokens, 0) and g + mix.prefetch_tokens < seq.max_tokens:
                pending.append(self.env.process(self._search(rec, f"{i}.d{next(n)}", "decode", k,
                                                             mix.decode_nprobe, mix.decode_deadline_ms, True)))
            if g % mix.decode_every or not pending:
                return None
            ev = pending.pop()
            if ev.processed and not self.cfg.cluster.hop_ms:
                seq.extra_prefill += k * mix.passage_tokens
                return None

            def continuation():  # NOTE: the continuation leg leaves once the passages are in
                if not ev.processed:
                    yield ev
                seq.extra_prefill += k * mix.passage_tokens
                yield from self._hop()
            return self.env.process(continuation())

        return on_token

    def _request(self, w: Workload, i: int, rec: Record):
        yield from self._serve(w, i, rec)
        self.num_done += 1
        self.last_done = self.env.now

    def _serve(self, w: Workload, i: int, rec: Record):
        env, mix = self.env, self.cfg.workload.retrieval
        t0 = env.now
        if w.cache[i] or w.rag[i]:
            yield from self._embed()
        if w.cache[i]:
            yield from self._search(rec, f"{i}.c", "prefill", 1, mix.cache_nprobe, mix.cache_deadline_ms)
            if w.cache_hit[i]:
                rec.status, rec.ttft_s, rec.tpot_s, rec.e2e_s = "cache_hit", env.now - t0, 0.0, env.now - t0
                return
        prompt = int(w.prompt[i])
        if w.rag[i]:
            yield from self._search(rec, f"{i}.r", "prefill", mix.k, mix.nprobe, mix.rag_deadline_ms)
            prompt += mix.k * mix.passage_tokens
        yield from self._hop()
        yield self.routers["prefill"].pick().prefill(prompt)
        rec.ttft_s = env.now - t0
        out = int(w.output[i])
        if out > 1:
            node = self.routers["decode"].pick()
            node.in_flight += 1  # NOTE: counted from the pick, as the gateway counts a leg
            yield from self._hop()
            yield from node.transfer(prompt)
            node.in_flight -= 1
            seq = Seq(prompt, out, env.event(), on_token=self._token_hook(rec, i, w))
            yield node.decode(seq)
        rec.e2e_s = env.now - t0
        rec.tpot_s = (rec.e2e_s - rec.ttft_s) / (out - 1) if out > 1 else 0.0
        rec.status = "ok"

    def _arrivals(self, w: Workload, records: list[Record]):
        for i in range(len(w)):
            yield self.env.timeout(max(float(w.arrival[i]) - self.env.now, 0.0))
            self.env.process(self._request(w, i, records[i]))

    def run(self, workload: Workload | None = None, progress=None) -> SimResult:
        cfg, env = self.cfg, self.env
        w = workload or build_workload(cfg.workload, cfg.seed)
        records = [Record(i, float(w.arrival[i]), int(w.prompt[i]), int(w.output[i])) for i in range(len(w))]
        t = time.perf_counter()
        env.process(self._arrivals(w, records))
        horizon = (float(w.arrival[-1]) if len(w) else 0.0) + cfg.max_drain_s
        step = max(horizon / 100, 1.0)
        while env.now < horizon and self.num_done < len(w) and env.peek() < float("inf"):
            env.run(until=min(env.now + step, horizon))
            if progress is not None:
                progress(min(env.now, self.last_done))
        wall = time.perf_counter() - t
        sim_s = self.last_done if self.num_done == len(w) else env.now
        return SimResult(cfg, records, summarize(records, cfg.slo), sim_s, wall, self.num_gpus, self._util(sim_s))

    def _util(self, sim_s: float) -> dict[str, float]:
        def mean(xs):
            return sum(xs) / max(len(xs), 1) / max(sim_s, 1e-9)
        vec = [getattr(v, "runner", v) for v in self.vector]
        return {"prefill": mean([n.busy_s for n in self.prefill]), "decode": mean([n.busy_s for n in self.decode]),
                "vector": mean([v.busy_s for v in vec])}


def simulate(cfg: SimConfig, workload: Workload | None = None, progress=None) -> SimResult:
    return Cluster(cfg).run(workload, progress)

