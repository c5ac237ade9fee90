"""A runner that executes :class:`IterationPlan` s by bookkeeping alone.

``FakeRunner`` keeps what the real :class:`SearchRunner` keeps -- a state per joined
request -- but never reads vectors: a unit's cost is its size in the collection's stats.
It honours the contract of :mod:`trinity.engine.plan` and asserts it:

* ``new_requests`` join (once each) before anything scans;
* a rider scans exactly its planned positions, none twice, and a position always names
  the same unit;
* a result comes back for every rider whose work ``completes`` and every ``finish_partial``.

It records every plan and scanned range and reports a deterministic duration
``overhead_s + vectors / rate`` (optionally advancing a fake clock by it), so budget
adaptation and deadlines can be tested without real time.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field

import numpy as np

from trinity.engine import Collections, IterationPlan, RunnerOutput


@dataclass
class FakeState:
    collection: str
    k: int
    slot: int
    seen: dict[int, int] = field(default_factory=dict)  # position -> unit id scanned there


class FakeRunner:
    """``run(plan) -> RunnerOutput`` without touching vectors."""

    def __init__(self, collections: Collections, *, rate: float = 1e6, overhead_s: float = 0.0, clock=None) -> None:
        self.collections = collections
        self.rate = float(rate)
        self.overhead_s = float(overhead_s)
        self.clock = clock
        self.states: dict[str, FakeState] = {}
        self.plans: list[IterationPlan] = []
        self.outputs: list[RunnerOutput] = []
        self.scans: dict[str, list] = {}  # id -> [positions] per plan
        self.iterations_of: dict[str, set[int]] = {}  # id -> iterations that gave it work
        self.joined_order: list[str] = []

    def reset(self) -> None:
        self.states.clear()

    @staticmethod
    def fake_result(request_id: str, k: int) -> tuple[np.ndarray, np.ndarray]:
        ids = np.arange(k, dtype=np.int64) + zlib.crc32(request_id.encode()) % 1000
        return -np.arange(k, dtype=np.float32), ids

    def run(self, plan: IterationPlan) -> RunnerOutput:
        assert not self.plans or plan.iteration > self.plans[-1].iteration or self.plans[-1].is_head, \
            "iterations must increase"
        self.plans.append(plan)
        self._iteration = plan.iteration
        out = RunnerOutput()
        for r in plan.new_requests:
            assert r.request_id not in self.states, f"{r.request_id} joined twice"
            if r.collection not in self.collections:
                out.errors[r.request_id] = f"unknown collection {r.collection!r}"
                continue
            self.states[r.request_id] = FakeState(r.collection, r.k, r.slot)
            self.joined_order.append(r.request_id)
        for ride in plan.rides:
            out.vectors_scanned[ride.collection] = self._ride(ride, out)
        for e in plan.finish_partial:
            st = self.states.pop(e.request_id, None)
            if st is not None:
                out.results[e.request_id] = self.fake_result(e.request_id, st.k)
        out.duration_s = self.overhead_s + out.num_vectors_scanned / self.rate
        if self.clock is not None:
            self.clock.advance(out.duration_s)
        self.outputs.append(out)
        return out

    def _ride(self, ride, out: RunnerOutput) -> np.ndarray:
        vectors = np.zeros(len(ride.request_ids), dtype=np.int64)
        if ride.collection not in self.collections:
            out.errors.update((rid, f"unknown collection {ride.collection!r}") for rid in ride.request_ids)
            return vectors
        sizes = self.collections.stats(ride.collection).unit_sizes
        assert len(set(ride.request_ids)) == len(ride.request_ids), "a rider twice in one ride"
        for i, rid in enumerate(ride.request_ids):
            st = self.states.get(rid)
            assert st is not None, f"work for {rid}, which holds no runner state"
            assert st.collection == ride.collection and st.slot == int(ride.slots[i])
            lo, hi = int(ride.ptr[i]), int(ride.ptr[i + 1])
            positions, units = ride.units[lo:hi].tolist(), ride.unit_ids[lo:hi].tolist()
            assert positions or not ride.completes[i] or st.seen, f"{rid}: empty work"
            assert len(set(positions)) == len(positions), f"{rid}: duplicate position in one plan"
            assert not set(positions) & st.seen.keys(), f"{rid}: positions scanned twice"
            st.seen.update(zip(positions, units))
            vectors[i] = int(sizes[units].sum()) if units else 0
            self.scans.setdefault(rid, []).append(tuple(positions))
            self.iterations_of.setdefault(rid, set()).add(self._iteration)
            if ride.completes[i]:
                out.results[rid] = self.fake_result(rid, st.k)
                del self.states[rid]
        return vectors

    def scanned_units(self, rid: str) -> list[int]:
        """Every position ``rid`` scanned, in scan order."""
        return [u for item in self.scans.get(rid, []) for u in item]

    def iteration_vectors(self) -> list[int]:
        """Vectors actually scanned per plan."""
        return [o.num_vectors_scanned for o in self.outputs]
