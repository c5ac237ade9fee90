"""The incrementally ordered waiting queue must always agree with a full re-sort."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from trinity.engine import SearchRequest, Stage
from trinity.engine.queue import WaitQueue, priority_key

AGING_S = 0.05

op = st.one_of(
    st.tuples(st.just("push"), st.sampled_from(list(Stage)), st.one_of(st.none(), st.floats(0.0, 0.3))),
    st.tuples(st.just("remove"), st.integers(0, 1 << 16), st.none()),
    st.tuples(st.just("advance"), st.floats(0.0, 0.08), st.none()),
)


@settings(max_examples=150, deadline=None)
@given(ops=st.lists(op, max_size=80), stage_aware=st.booleans(), urgent_s=st.sampled_from([0.0, 0.1]))
def test_order_matches_a_full_sort_at_any_time(ops, stage_aware, urgent_s):
    q = WaitQueue(stage_aware, AGING_S, urgent_s)
    now, seq, live, expired = 0.0, 0, {}, set()
    for kind, a, b in ops:
        if kind == "push":
            req = SearchRequest("c", np.zeros(2, np.float32), 1, stage=a, arrival_time=now,
                                deadline=None if b is None else now + b)
            q.push(req, seq, now)
            live[req.request_id] = (seq, req)
            seq += 1
        elif kind == "remove" and live:
            rid = sorted(live)[a % len(live)]
            q.remove(rid)
            del live[rid]
        else:
            now += a
        # expiring() hands out each request whose deadline passed, exactly once
        for req in q.expiring(now):
            assert req.request_id in live and req.request_id not in expired and req.deadline <= now
            expired.add(req.request_id)
        q.refresh(now)
        want = sorted(((priority_key(r, now, stage_aware, AGING_S, urgent_s), s), r.request_id)
                      for s, r in live.values())
        got = [(entry, r.request_id) for entry, r in q.head(len(live) + 1)]
        assert got == want and len(q) == len(live)
    due = {rid for rid, (_, r) in live.items() if r.deadline is not None and r.deadline <= now}
    assert due <= expired


def test_aging_promotes_a_waiting_request_past_newer_urgent_ones():
    q = WaitQueue(True, AGING_S)
    bg = SearchRequest("c", np.zeros(2, np.float32), 1, stage=Stage.BACKGROUND, arrival_time=0.0)
    q.push(bg, 0, 0.0)
    for i in range(1, 4):
        t = 2.5 * AGING_S + i * 1e-3
        q.push(SearchRequest("c", np.zeros(2, np.float32), 1, stage=Stage.PREFILL, arrival_time=t), i, t)
    q.refresh(2.5 * AGING_S + 0.01)
    (key, _), first = q.head(1)[0]
    assert first is bg and key[0] == 0  # aged two stages: decode level, ahead of fresh prefill work


def test_deadline_heap_stays_bounded_when_requests_join_long_before_their_deadline():
    q = WaitQueue(True, AGING_S)
    for i in range(20_000):
        req = SearchRequest("c", np.zeros(2, np.float32), 1, stage=Stage.DECODE, arrival_time=0.0, deadline=60.0)
        q.push(req, i, 0.0)
        q.remove(req.request_id)  # joined at once
    assert len(q) == 0 and len(q._deadlines) <= 1024 + 1


def test_a_tight_deadline_ranks_with_decode_work_whatever_its_stage():
    def req(stage, deadline_s, t):
        return SearchRequest("c", np.zeros(2, np.float32), 1, stage=stage, arrival_time=t, deadline=t + deadline_s)

    decode = req(Stage.DECODE, 0.025, 0.0)  # a decode-stage lookup, 25 ms deadline
    cache = req(Stage.PREFILL, 0.020, 0.001)  # a cache lookup before a prefill, 20 ms: due first
    rag = req(Stage.PREFILL, 0.150, 0.0)  # RAG: a loose deadline keeps its stage
    for urgent_s, want in ((0.030, [cache, decode, rag]), (0.0, [decode, cache, rag])):
        q = WaitQueue(True, AGING_S, urgent_s)
        for i, r in enumerate((decode, cache, rag)):
            q.push(r, i, 0.001)
        assert [r for _, r in q.head(3)] == want
