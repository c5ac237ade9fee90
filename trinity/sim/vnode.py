"""Vector-search nodes as SimPy processes: the real engine on a cost-model runner, or a
static dynamic batcher (the baseline), on a dedicated GPU, a CPU node or a shared LLM GPU."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np
import simpy

from trinity.engine import SchedulerConfig, SearchEngine
from trinity.sim.profiles import Colocation, SearchCost
from trinity.sim.vector import COLLECTION, Assign, CostRunner, ShellIndex, SimCollections


class GpuShare:
    """One GPU shared by an LLM engine and a vector engine: while the LLM steps, a search's
    device time stretches, and the LLM's next step pays ``llm_loss`` of it."""

    def __init__(self, coloc: Colocation) -> None:
        self.coloc, self.llm_busy, self.debt_s = coloc, False, 0.0

    def stretch(self) -> float:
        return self.coloc.search_stretch if self.llm_busy else 1.0

    def charge(self, device_s: float) -> None:
        if self.llm_busy:
            self.debt_s += device_s * self.coloc.llm_loss

    def take_debt(self) -> float:
        debt, self.debt_s = self.debt_s, 0.0
        return debt


@dataclass
class SearchDone:
    status: str  # complete | partial | rejected | ...
    latency_s: float


class VectorNode:
    """The real :class:`SearchEngine` (scheduler, cost model, policies) stepping on virtual time."""

    def __init__(self, env: simpy.Environment, name: str, cost: SearchCost, config: SchedulerConfig,
                 index: ShellIndex, assign: Assign, share: GpuShare | None = None) -> None:
        self.env, self.name, self.share = env, name, share
        self.clock, self.in_step = [0.0], False
        collections = SimCollections(assign)
        collections.add(COLLECTION, index)
        self.runner = CostRunner(collections, cost, self.clock, share.stretch if share else lambda: 1.0)
        self.engine = SearchEngine(config, collections=collections, runner=self.runner, clock=self.now, start=False)
        self.query = np.zeros(index.dim, dtype=np.float32)
        self.in_flight, self.num_searches = 0, 0
        self._wake: simpy.Event | None = None
        self._done: list[tuple[simpy.Event, object, float]] = []
        self.plans: list | None = None  # tests: every plan, in order
        env.process(self._loop())

    def record_plans(self) -> list:
        """Keep every plan the scheduler makes (tests)."""
        self.plans, inner = [], self.engine.scheduler.schedule
        self.engine.scheduler.schedule = lambda: self.plans.append(inner()) or self.plans[-1]
        return self.plans

    def now(self) -> float:
        return self.clock[0] if self.in_step else self.env.now

    def search(self, rid: str, k: int, nprobe: int, stage: str, deadline_ms: float | None) -> simpy.Event:
        ev = self.env.event()
        fut = self.engine.submit(COLLECTION, self.query, k, nprobe=nprobe, stage=stage, deadline_ms=deadline_ms,
                                 request_id=rid)
        self.in_flight += 1
        self.num_searches += 1
        fut.add_done_callback(lambda f: self._done.append((ev, f.result(), self.now())))
        if self._wake is not None and not self._wake.triggered:
            self._wake.succeed()
        return ev

    def _flush(self) -> None:
        for ev, res, t in self._done:
            self.in_flight -= 1
            done = SearchDone(res.status.value, res.total_ms / 1e3)
            delay = max(t - self.env.now, 0.0)
            if delay == 0.0:
                ev.succeed(done)
            else:
                self.env.timeout(delay).callbacks.append(lambda _, ev=ev, done=done: ev.succeed(done))
        self._done.clear()

    def _loop(self):
        env, sched = self.env, self.engine.scheduler
        while True:
            if self.in_flight == 0 and not sched.has_work:
                self._wake = env.event()
                yield self._wake
                self._wake = None
                continue
            self.in_step, self.clock[0] = True, env.now
            before = self.runner.num_iterations
            device = self.runner.device_s
            self.engine.step()
            self.in_step = False
            if self.share is not None:
                self.share.charge(self.runner.device_s - device)
            self._flush()
            dt = self.clock[0] - env.now if self.runner.num_iterations > before else self.runner.cost.fixed_s
            yield env.timeout(max(dt, 1e-9))


class StaticNode:
    """The baseline: a dynamic batcher per search signature ``(k, nprobe)``, dispatched at
    ``max_batch`` requests or when its oldest waited ``max_wait_s``; one batch at a time,
    run to completion (no stages, no deadlines)."""

    def __init__(self, env: simpy.Environment, name: str, cost: SearchCost, index: ShellIndex, assign: Assign,
                 max_batch: int, max_wait_s: float, share: GpuShare | None = None) -> None:
        self.env, self.name, self.cost, self.index, self.assign, self.share = env, name, cost, index, assign, share
        self.max_batch, self.max_wait_s = max_batch, max_wait_s
        self.groups: dict[tuple[int, int], deque] = {}
        self.in_flight, self.num_searches, self.busy_s = 0, 0, 0.0
        self._wake: simpy.Event | None = None
        env.process(self._loop())

    def search(self, rid: str, k: int, nprobe: int, stage: str, deadline_ms: float | None) -> simpy.Event:
        ev = self.env.event()
        self.groups.setdefault((k, nprobe), deque()).append((rid, nprobe, self.env.now, ev))
        self.in_flight += 1
        self.num_searches += 1
        if self._wake is not None and not self._wake.triggered:
            self._wake.succeed()
        return ev

    def _ready(self) -> tuple[deque | None, float]:
        """The group to run now (full, or its oldest waited long enough), else the next due time."""
        best, due = None, float("inf")
        for g in self.groups.values():
            if not g:
                continue
            t = g[0][2] + self.max_wait_s if len(g) < self.max_batch else g[0][2]
            if t < due:
                best, due = g, t
        return (best, due) if due <= self.env.now + 1e-12 else (None, due)

    def _loop(self):
        env = self.env
        while True:
            group, due = self._ready()
            if group is None:
                self._wake = env.event()
                yield self._wake | env.timeout(due - env.now) if due < float("inf") else self._wake
                self._wake = None
                continue
            batch = [group.popleft() for _ in range(min(self.max_batch, len(group)))]
            lists = [self.assign(rid, nprobe) for rid, nprobe, _, _ in batch]
            flat = np.concatenate(lists)
            pairs = int(self.index.list_len[flat].sum())
            reads = int(self.index.list_len[np.unique(flat)].sum())
            stretch = self.share.stretch() if self.share else 1.0
            device = self.cost.device_seconds(pairs, reads) * stretch
            dt = self.cost.fixed_s + len(batch) * self.cost.per_item_s + device
            if self.share is not None:
                self.share.charge(device)
            yield env.timeout(dt)
            self.busy_s += dt
            for _, _, t0, ev in batch:
                self.in_flight -= 1
                ev.succeed(SearchDone("complete", env.now - t0))
