"""Iterations in parts: the scan in slices, and decode-level arrivals run between them (express)."""

from __future__ import annotations

from trinity.engine import RequestStatus, SearchEngine

from .helpers import FakeClock, assert_matches, fixed_budget, make_collections, queries, reference_many
from .test_no_loss import TimedRunner

IVF = "ivf_ip"


class PartsRunner(TimedRunner):
    """Records each part as run: (iteration, is the last part, new request ids, results)."""

    def __init__(self, collections, clock) -> None:
        super().__init__(collections, clock)
        self.log: list[tuple[int, bool, set[str], set[str]]] = []

    def run(self, plan):
        out = super().run(plan)
        self.log.append((plan.iteration, not plan.is_head, {r.request_id for r in plan.new_requests}, set(out.results)))
        return out


def engine_with_backlog(num_prefill: int = 12):
    clock = FakeClock()
    cols = make_collections(IVF)
    runner = PartsRunner(cols, clock)
    engine = SearchEngine(fixed_budget(30_000, part_ms=0.5, min_express_arrivals=0), collections=cols, runner=runner,
                          clock=clock, start=False)
    futures = [engine.submit(IVF, queries(IVF)[i], 10, nprobe=64, stage="prefill") for i in range(num_prefill)]
    return engine, runner, futures


def test_a_long_scan_runs_in_parts_and_answers_like_one_shot_search():
    engine, runner, futures = engine_with_backlog()
    while engine.scheduler.has_work or engine._inbox:
        engine.step()
    parts_per_iteration = {}
    for iteration, *_ in runner.log:
        parts_per_iteration[iteration] = parts_per_iteration.get(iteration, 0) + 1
    assert max(parts_per_iteration.values()) > 2, parts_per_iteration
    assert max(parts_per_iteration.values()) <= 1 + engine.config.max_num_parts
    refs = reference_many(IVF, queries(IVF)[:len(futures)], [10] * len(futures), [64] * len(futures))
    for i, (fut, ref) in enumerate(zip(futures, refs)):
        res = fut.result(timeout=0)
        assert res.status is RequestStatus.FINISHED_COMPLETE and res.num_iterations >= 1
        assert_matches(IVF, res.scores, res.ids, ref, query=queries(IVF)[i])


def test_decode_arrivals_run_between_parts_and_leave_before_the_iteration_ends():
    engine, runner, futures = engine_with_backlog()
    decodes = []
    runner.meanwhile.append(lambda: decodes.extend(
        engine.submit(IVF, queries(IVF)[40 + i], 4, nprobe=8, stage="decode") for i in range(3)))
    engine.step()
    ids = {f.request_id for f in decodes}
    assert len(decodes) == 3
    (express,) = [i for i, (_, last, new, _) in enumerate(runner.log) if new and new <= ids]
    iteration, last, new, results = runner.log[express]
    assert new == ids and results == ids, "the express plan joins and answers all of them at once"
    assert not last and any(it == iteration for it, *_ in runner.log[express + 1:]), "more parts followed"
    refs = reference_many(IVF, queries(IVF)[40:43], [4] * 3, [8] * 3)
    for i, (fut, ref) in enumerate(zip(decodes, refs)):
        res = fut.result(timeout=0)  # resolved within the step that was running when it arrived
        assert res.status is RequestStatus.FINISHED_COMPLETE and res.num_iterations == 1
        assert_matches(IVF, res.scores, res.ids, ref, query=queries(IVF)[40 + i])
    while engine.scheduler.has_work or engine._inbox:
        engine.step()
    assert all(f.result(timeout=0).status is RequestStatus.FINISHED_COMPLETE for f in futures)


def test_without_decode_traffic_the_scan_runs_whole():
    engine, runner, futures = engine_with_backlog()
    engine.config = engine.scheduler.config = fixed_budget(30_000, part_ms=0.5)  # no decode-level arrival yet
    engine.step()
    assert [last for it, last, *_ in runner.log if it == 1] == [True]
