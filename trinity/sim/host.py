"""A shared host CPU: processor sharing over ``cores`` among the threads that have work.

Each :class:`Thread` is one OS thread of a process (an asyncio loop, an embedding thread)
and serves its jobs FIFO; the runnable threads and ``background`` runnable threads of other
processes share the cores equally: each progresses at ``min(1, cores / demand)`` of its
uncontended speed, ``demand`` = the runnable threads' weights (a thread running ``w`` OS
threads, e.g. a 2-thread torch encode, weighs ``w``) plus the background.  The background is
a step function of time (runnable threads measured on the host) or a constant.

A thread that ``yields_to`` another of its process (an embedding thread next to the
process's asyncio loop: they share the GIL) runs at ``yield_speed`` while that one has work
-- it waits for the GIL at every return to Python -- and then takes no core.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence

import numpy as np
import simpy


class Thread:
    def __init__(self, host: HostCpu, name: str, weight: float = 1.0, yields_to: Thread | None = None,
                 yield_speed: float = 1.0) -> None:
        self.host, self.name, self.weight = host, name, weight
        self.yields_to, self.yield_speed = yields_to, yield_speed
        self.rate = 1.0
        self.jobs: deque[list] = deque()  # [remaining seconds, done event]
        self.busy_s = 0.0

    def run(self, seconds: float) -> simpy.Event:
        """A job of ``seconds`` uncontended CPU; the event fires when it is done."""
        ev = self.host.env.event()
        if seconds <= 0:
            ev.succeed()
            return ev
        self.host.advance()
        self.jobs.append([seconds, ev])
        self.busy_s += seconds
        if len(self.jobs) == 1:
            self.host.changed()
        return ev


class HostCpu:
    def __init__(self, env: simpy.Environment, cores: int, background: float = 0.0,
                 steps: tuple[Sequence[float], Sequence[float]] | None = None) -> None:
        self.env, self.cores, self.background = env, cores, background
        self.threads: list[Thread] = []
        self._t, self._wake = env.now, env.event()
        self._steps = (np.asarray(steps[0], float), np.asarray(steps[1], float)) if steps else None
        env.process(self._loop())

    def thread(self, name: str, weight: float = 1.0, yields_to: Thread | None = None,
               yield_speed: float = 1.0) -> Thread:
        t = Thread(self, name, weight, yields_to, yield_speed)
        self.threads.append(t)
        return t

    def _background_at(self, t: float) -> tuple[float, float]:
        """(runnable background threads at ``t``, time of the next change)."""
        if self._steps is None:
            return self.background, float("inf")
        times, values = self._steps
        i = int(np.searchsorted(times, t, side="right")) - 1
        nxt = float(times[i + 1]) if i + 1 < times.size else float("inf")
        return (float(values[i]) if i >= 0 else self.background), nxt

    @staticmethod
    def _yielding(t: Thread) -> bool:
        return t.yields_to is not None and bool(t.yields_to.jobs)

    def set_rates(self) -> None:
        running = [t for t in self.threads if t.jobs]
        demand = sum(t.weight for t in running if not self._yielding(t)) + self._background_at(self.env.now)[0]
        r = min(1.0, self.cores / demand) if demand > 0 else 1.0
        for t in running:
            t.rate = r * (t.yield_speed if self._yielding(t) else 1.0)

    def advance(self) -> None:
        """Charge the time since the last change to every running job (at its rate then)."""
        dt = self.env.now - self._t
        if dt > 0:
            for t in self.threads:
                if t.jobs:
                    t.jobs[0][0] -= dt * t.rate
        self._t = self.env.now

    def changed(self) -> None:
        if not self._wake.triggered:
            self._wake.succeed()

    def _loop(self):
        env = self.env
        while True:
            self.advance()
            for t in self.threads:
                while t.jobs and t.jobs[0][0] <= 1e-12:
                    t.jobs.popleft()[1].succeed()
            self.set_rates()
            head = [t.jobs[0][0] / t.rate for t in self.threads if t.jobs and t.rate > 0]
            until = min(head) if head else float("inf")
            until = min(until, self._background_at(env.now)[1] - env.now)
            self._wake = env.event()
            if until == float("inf"):
                yield self._wake
            else:
                yield env.any_of([self._wake, env.timeout(max(until, 0.0))])
