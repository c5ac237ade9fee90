"""The slot arrays' priority order must always agree with a sort by the policy's key."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from trinity.engine import SearchRequest, Stage
from trinity.engine.slots import RequestSlots

AGING_S = 0.05


def priority_key(req: SearchRequest, now: float, stage_aware: bool, aging_s: float, urgent_s: float) -> tuple:
    """The policy's key, one request at a time (the reference): ``(aged level, deadline, arrival)``."""
    if not stage_aware:
        return (req.arrival_time,)
    tight = req.deadline is not None and req.deadline - req.arrival_time <= urgent_s
    aged = max(0, (0 if tight else int(req.stage)) - int((now - req.arrival_time) / aging_s))
    deadline = req.arrival_time + aging_s * (int(req.stage) + 1) if req.deadline is None else req.deadline
    return (aged, deadline, req.arrival_time)


op = st.one_of(
    st.tuples(st.just("push"), st.sampled_from(list(Stage)), st.one_of(st.none(), st.floats(0.0, 0.3))),
    st.tuples(st.just("remove"), st.integers(0, 1 << 16), st.none()),
    st.tuples(st.just("join"), st.integers(0, 1 << 16), st.none()),
    st.tuples(st.just("advance"), st.floats(0.0, 0.08), st.none()),
)


@settings(max_examples=150, deadline=None)
@given(ops=st.lists(op, max_size=80), stage_aware=st.booleans(), urgent_s=st.sampled_from([0.0, 0.1]),
       head=st.sampled_from([1, 3, 1000]))
def test_order_matches_a_full_sort_at_any_time(ops, stage_aware, urgent_s, head):
    slots = RequestSlots(AGING_S, urgent_s, stage_aware, capacity=4)
    now, seq, live = 0.0, 0, {}
    for kind, a, b in ops:
        if kind == "push":
            req = SearchRequest("c", np.zeros(2, np.float32), 1, stage=a, arrival_time=now,
                                deadline=None if b is None else now + b)
            live[req.request_id] = (seq, req, slots.add(req, seq, 0, 0))
            seq += 1
        elif kind in ("remove", "join") and live:
            rid = sorted(live)[a % len(live)]
            if kind == "remove":
                slots.release(live.pop(rid)[2])
            elif not slots.joined[live[rid][2]]:
                slots.joined[live[rid][2]] = True
                slots.num_joined += 1
        else:
            now += a
        keyed = sorted(((priority_key(r, now, stage_aware, AGING_S, urgent_s), s), r.request_id, slot)
                       for s, r, slot in live.values())
        joined = [k for k in keyed if slots.joined[k[2]]]
        waiting = [k for k in keyed if not slots.joined[k[2]]][:head]
        want = [rid for _, rid, _ in sorted(joined + waiting)]
        got = [slots.ids[s] for s in slots.order(now, head).tolist()]
        assert got == want and slots.num_active == len(live)
        assert slots.num_joined == sum(bool(slots.joined[slot]) for _, _, slot in live.values())


def test_aging_promotes_a_waiting_request_past_newer_urgent_ones():
    slots = RequestSlots(AGING_S, 0.0)
    bg = SearchRequest("c", np.zeros(2, np.float32), 1, stage=Stage.BACKGROUND, arrival_time=0.0)
    slots.add(bg, 0, 0, 0)
    for i in range(1, 4):
        t = 2.5 * AGING_S + i * 1e-3
        slots.add(SearchRequest("c", np.zeros(2, np.float32), 1, stage=Stage.PREFILL, arrival_time=t), i, 0, 0)
    now = 2.5 * AGING_S + 0.01
    first = slots.order(now, 1)
    assert slots.reqs[first[0]] is bg and slots.aged(first, now)[0] == 0  # aged two stages: ahead of fresh prefill


def test_a_tight_deadline_ranks_with_decode_work_whatever_its_stage():
    def req(stage, deadline_s, t):
        return SearchRequest("c", np.zeros(2, np.float32), 1, stage=stage, arrival_time=t, deadline=t + deadline_s)

    decode = req(Stage.DECODE, 0.025, 0.0)  # a decode-stage lookup, 25 ms deadline
    cache = req(Stage.PREFILL, 0.020, 0.001)  # a cache lookup before a prefill, 20 ms: due first
    rag = req(Stage.PREFILL, 0.150, 0.0)  # RAG: a loose deadline keeps its stage
    for urgent_s, want in ((0.030, [cache, decode, rag]), (0.0, [decode, cache, rag])):
        slots = RequestSlots(AGING_S, urgent_s)
        for i, r in enumerate((decode, cache, rag)):
            slots.add(r, i, 0, 0)
        assert [slots.reqs[s] for s in slots.order(0.001, 3).tolist()] == want
