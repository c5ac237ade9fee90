"""A runner that executes :class:`IterationPlan` s by bookkeeping alone.

``FakeRunner`` keeps the same per-request state the real :class:`SearchRunner` keeps
(joined requests, IVF probe lists with their costs, a probe cursor; flat chunks seen) but
never reads index data: IVF probe costs come from a deterministic per-collection
list-size table, flat chunk costs from a per-collection chunk-size table.  It honours
the contract of :mod:`trinity.engine.plan`:

* ``new_requests`` join (an IVF newcomer reports its ``unit_costs`` and ``unit_ids``);
* an IVF newcomer's work (``max_vectors``) scans the longest best-first prefix of its
  probes that fits -- at least one unit when ``allow_overshoot`` (the progress guarantee
  of an iteration's first item), possibly none (``0``: join only); ``units_end`` reports it;
* joined work scans exactly the planned ``units`` (positions), none of them twice;
* a result comes back iff ``returns_result`` and every unit has been scanned, and for
  every ``finish_partial`` id;
* ``free`` drops state.

It records every plan and every scanned range, asserts that no unit is scanned twice and
no probe is skipped, and reports a deterministic duration ``overhead_s + vectors / rate``
(optionally advancing a fake clock by it) so budget adaptation and deadlines can be
tested without real time.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field

import numpy as np

from trinity.engine import Collections, IterationPlan, RunnerOutput
from trinity.engine.plan import prefix_end
from trinity.index import IVFIndex


@dataclass
class FakeState:
    collection: str
    k: int
    probes: np.ndarray | None = None  # IVF: list ids, best first
    probe_costs: np.ndarray | None = None
    seen: set[int] = field(default_factory=set)  # positions (IVF) / chunks (flat) scanned so far
    num_chunks: int = 0


def _seed(request_id: str) -> int:
    return zlib.crc32(request_id.encode())


class FakeRunner:
    """``run(plan) -> RunnerOutput`` without touching index data.

    Args:
        collections: used only for each collection's kind and sizes (metadata).
        list_sizes: optional ``{collection: sizes}`` table of IVF list sizes / flat chunk
            sizes; by default it is read once per collection from the index metadata.
        rate: vectors per second of the fake device.
        overhead_s: fixed cost of a non-empty iteration.
        clock: a ``FakeClock`` to advance by each iteration's duration.
    """

    def __init__(self, collections: Collections, *, list_sizes: dict[str, np.ndarray] | None = None,
                 rate: float = 1e6, overhead_s: float = 0.0, clock=None) -> None:
        self.collections = collections
        self.tables: dict[str, np.ndarray] = dict(list_sizes or {})
        self.rate = float(rate)
        self.overhead_s = float(overhead_s)
        self.clock = clock
        self.states: dict[str, FakeState] = {}
        self.plans: list[IterationPlan] = []
        self.outputs: list[RunnerOutput] = []
        self.scans: dict[str, list] = {}  # id -> [positions (IVF) / chunks (flat)] per iteration
        self.joined_order: list[str] = []
        self.kinds: dict[str, str] = {}  # id -> "ivf" / "flat"
        self.freed: list[str] = []

    def reset(self) -> None:
        """Drop every request's state (the engine calls this after a failed iteration)."""
        self.states.clear()

    # ------------------------------------------------------------------ tables
    def table(self, name: str) -> np.ndarray:
        if name not in self.tables:
            idx = self.collections.get(name)
            if isinstance(idx, IVFIndex):
                self.tables[name] = idx.list_sizes().astype(np.int64)
            else:
                self.tables[name] = np.array([idx.chunk_num_vectors(c) for c in range(idx.num_chunks)], dtype=np.int64)
        return self.tables[name]

    def is_ivf(self, name: str) -> bool:
        return isinstance(self.collections.get(name), IVFIndex)

    def probes_for(self, request_id: str, collection: str, num_probes: int) -> np.ndarray:
        """Deterministic pseudo-random best-first probe list of a request."""
        nlist = self.table(collection).size
        rng = np.random.default_rng(_seed(request_id))
        return rng.permutation(nlist)[: min(num_probes, nlist)].astype(np.int64)

    @staticmethod
    def fake_result(request_id: str, k: int) -> tuple[np.ndarray, np.ndarray]:
        ids = (np.arange(k, dtype=np.int64) + _seed(request_id) % 1000)
        return -np.arange(k, dtype=np.float32), ids

    # ------------------------------------------------------------------ run
    def run(self, plan: IterationPlan, on_early=None) -> RunnerOutput:
        """Bookkeeping only: nothing is delivered early (``on_early`` is never called)."""
        assert not self.plans or plan.iteration > self.plans[-1].iteration, "iterations must increase"
        self.plans.append(plan)
        out = RunnerOutput()
        for rid in plan.free:
            self.states.pop(rid, None)
            self.freed.append(rid)
        for r in plan.new_requests:
            assert r.request_id not in self.states, f"{r.request_id} joined twice"
            if r.collection not in self.collections:
                out.errors[r.request_id] = f"unknown collection {r.collection!r}"
                continue
            st = FakeState(r.collection, r.k)
            if self.is_ivf(r.collection):
                st.probes = self.probes_for(r.request_id, r.collection, r.num_probes)
                st.probe_costs = self.table(r.collection)[st.probes].copy()
                out.unit_costs[r.request_id] = st.probe_costs.copy()
                out.unit_ids[r.request_id] = st.probes.copy()
            else:
                st.num_chunks = self.table(r.collection).size
            self.states[r.request_id] = st
            self.kinds[r.request_id] = "ivf" if st.probes is not None else "flat"
            self.joined_order.append(r.request_id)
        new_ids = {r.request_id for r in plan.new_requests}
        seen_in_plan: set[str] = set()
        ride_of: dict[str, tuple[str, int]] = {}  # rider -> (collection, index in its ride)
        for ride in plan.rides:
            out.ride_vectors_scanned[ride.collection] = np.zeros(len(ride.request_ids), dtype=np.int64)
            ride_of.update((rid, (ride.collection, i)) for i, rid in enumerate(ride.request_ids))
        for w in plan.items():
            rid = w.request_id
            assert rid not in seen_in_plan, f"{rid} twice in one plan"
            seen_in_plan.add(rid)
            st = self.states.get(rid)
            if st is None:
                assert rid in out.errors, f"work for {rid}, which holds no runner state"
                continue
            if w.collection not in self.collections:
                out.errors[rid] = f"unknown collection {w.collection!r}"
                self.states.pop(rid)
                continue
            assert w.collection == st.collection
            if st.probes is not None and w.max_vectors is not None:
                assert rid in new_ids and not st.seen, f"{rid}: max_vectors only for newcomers"
                end = prefix_end(st.probe_costs, w.max_vectors, w.allow_overshoot)
                units = tuple(range(end))
                out.units_end[rid] = end
            else:
                assert rid not in new_ids or st.probes is None, f"{rid}: an IVF newcomer needs max_vectors"
                units = tuple(w.units)
                assert units or st.probes is None, f"{rid}: empty IVF work"
            chunks = set(units)
            assert len(chunks) == len(units), f"{rid}: duplicate unit in one plan"
            assert not chunks & st.seen, f"{rid}: units {sorted(chunks & st.seen)} scanned twice"
            st.seen |= chunks
            costs = st.probe_costs if st.probes is not None else self.table(w.collection)
            vectors = int(costs[list(units)].sum()) if units else 0
            if rid in ride_of:
                assert st.probes is not None and rid not in new_ids, f"{rid}: only joined IVF requests ride"
                col, i = ride_of[rid]
                out.ride_vectors_scanned[col][i] = vectors
            else:
                out.vectors_scanned[rid] = vectors
            self.scans.setdefault(rid, []).append(units)
            total = len(st.probes) if st.probes is not None else st.num_chunks
            if w.returns_result and len(st.seen) == total:
                out.results[rid] = self.fake_result(rid, st.k)
                del self.states[rid]
            elif w.returns_result:
                assert st.probes is not None and w.max_vectors is not None, f"{rid}: result asked before every unit was scanned"
        for rid in plan.finish_partial:
            st = self.states.pop(rid, None)
            if st is not None:
                out.results[rid] = self.fake_result(rid, st.k)
        vectors = out.num_vectors_scanned
        out.duration_s = self.overhead_s + vectors / self.rate
        if self.clock is not None:
            self.clock.advance(out.duration_s)
        self.outputs.append(out)
        return out

    # ------------------------------------------------------------------ helpers for tests
    def scanned_units(self, rid: str) -> list[int]:
        """Every unit ``rid`` scanned, in scan order (IVF probe positions or flat chunks)."""
        units: list[int] = []
        for item in self.scans.get(rid, []):
            units.extend(item)
        return units

    def iteration_vectors(self) -> list[int]:
        """Vectors actually scanned per iteration."""
        return [o.num_vectors_scanned for o in self.outputs]
