"""The one-host demo-stack model: processor-sharing CPU, and a measured run replayed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import simpy

from trinity.sim.demo import EmbedLanes, EmuDecode, simulate_demo
from trinity.sim.host import HostCpu
from trinity.sim.llm import Seq
from trinity.sim.profiles import load_model
from trinity.sim.validate import background_steps, demo_config, fit_costs, measured_metrics, run_workload

CALIBRATION = Path(__file__).parents[2] / "benchmarks/results/sim-validation-2/demo-rate1-calibration.json"


def _finish_times(cores: int, jobs: list[tuple[str, float]], steps=None, background: float = 0.0) -> list[float]:
    env = simpy.Environment()
    cpu = HostCpu(env, cores, background, steps)
    threads = {name: cpu.thread(name) for name, _ in jobs}
    done: list[float] = []
    for name, s in jobs:
        threads[name].run(s).callbacks.append(lambda _: done.append(env.now))
    env.run(until=100)
    return done


def test_processor_sharing_fifo_per_thread_and_background():
    assert _finish_times(1, [("a", 1.0), ("b", 1.0)]) == pytest.approx([2.0, 2.0])
    assert _finish_times(2, [("a", 1.0), ("b", 1.0)]) == pytest.approx([1.0, 1.0])
    assert _finish_times(2, [("a", 1.0), ("a", 1.0)]) == pytest.approx([1.0, 2.0])
    assert _finish_times(1, [("a", 1.0), ("b", 3.0)]) == pytest.approx([2.0, 4.0])
    assert _finish_times(1, [("a", 1.0)], background=1.0) == pytest.approx([2.0])
    # one background thread during [0, 1): half speed, then full speed
    assert _finish_times(1, [("a", 1.0)], steps=([0.0, 1.0], [1.0, 0.0])) == pytest.approx([1.5])


def test_embed_lanes_batch_per_lane_and_take_turns_on_the_model_lock():
    env = simpy.Environment()
    lanes = EmbedLanes(env, HostCpu(env, 2).thread("embed"), lambda lane: 1.0 if lane == "prefill" else 0.5,
                       batch_share=0.5)
    done: dict[str, float] = {}

    def submit(at: float, name: str, lane: str):
        yield env.timeout(at)
        yield lanes.embed(lane)
        done[name] = env.now

    for at, name, lane in ((0.0, "p1", "prefill"), (0.1, "p2", "prefill"), (0.1, "p3", "prefill"),
                           (0.2, "d1", "decode")):
        env.process(submit(at, name, lane))
    env.run(until=10)
    # d1 waits only for the batch being encoded (p1); p2 + p3 then go as one batch (2 x 1.0 x 0.5)
    assert done == pytest.approx({"p1": 1.0, "d1": 1.5, "p2": 2.5, "p3": 2.5})


def test_emulated_decode_kv_ready_leg_decodes_at_once_and_a_continuation_prefills_its_passage():
    env, model = simpy.Environment(), load_model("llama-3-8b-h100")
    times: list[float] = []
    node = EmuDecode(env, "d0", model, 8, 10**9, HostCpu(env, 2).thread("decode"), 0.0,
                     lambda s: times.append(env.now))
    node.decode(Seq(100, 2, env.event(), generated=0))
    env.run(until=1)
    first = model.decode.ms(1, 100) / 1e3
    assert times == pytest.approx([first, first + model.decode.ms(1, 101) / 1e3])
    node.decode(Seq(100, 1, env.event(), generated=0, extra_prefill=40))
    env.run(until=2)
    assert times[-1] == pytest.approx(1.0 + model.prefill.ms([40]) / 1e3)


@pytest.mark.skipif(not CALIBRATION.exists(), reason="no measured calibration run")
def test_a_measured_run_replays_without_loss_and_matches_its_own_medians():
    d = json.loads(CALIBRATION.read_text())
    costs = fit_costs(d)
    assert min(costs.client_request_ms, costs.gateway_call_ms, costs.pool_call_ms, costs.prefill_leg_ms) > 0
    w = run_workload(d)
    a = simulate_demo(demo_config(costs), w, costs, background_steps(d))
    b = simulate_demo(demo_config(costs), w, costs, background_steps(d))
    assert [r.ttft_s for r in a.records] == [r.ttft_s for r in b.records]
    assert {r.status for r in a.records} <= {"ok", "cache_hit"}
    assert sum(r.status == "cache_hit" for r in a.records) == sum(r["cache"] == "hit" for r in d["requests"])
    assert {s for r in a.records for s, _, _ in r.searches} == {"prefill", "decode"}
    ttft = sorted(r.ttft_s * 1e3 for r in a.records)
    assert ttft[len(ttft) // 2] == pytest.approx(measured_metrics(d)["p50_ttft_ms"], rel=0.25)
