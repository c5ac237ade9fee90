"""The search engine: a loop thread running ``schedule -> run -> update`` iterations.

Callers submit from any thread (``submit`` / ``search_sync``) or from asyncio
(``await engine.search(...)``); submissions and aborts go through an inbox that the loop
drains at each iteration boundary, so the scheduler and runner are single-threaded.
"""

from __future__ import annotations

import asyncio
import logging
import math
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from queue import SimpleQueue

import numpy as np

from trinity.engine.admission import OverloadedError, SojournAdmission
from trinity.engine.collections import Collections
from trinity.engine.config import SchedulerConfig
from trinity.engine.graph_rows import GRAPH_MAX_SEARCH_WIDTH
from trinity.engine.heap import freeze_heap
from trinity.engine.metrics import EngineMetrics
from trinity.engine.request import RequestStatus, SearchRequest, SearchResult, Stage
from trinity.engine.runner import SearchRunner, compile_runner
from trinity.engine.scheduler import Finished, Scheduler, compile_kernels
from trinity.errors import ErrorCode, InvalidInput, TrinityError
from trinity.index.base import BaseIndex
from trinity.index.inputs import as_query, check_k

_log = logging.getLogger(__name__)


class EngineClosedError(TrinityError):
    """The engine is shut down (or shutting down) and takes no new requests."""

    code = ErrorCode.ENGINE_CLOSED


class SearchEngine:
    """Continuous-batching vector search over several collections.

    Args:
        config: scheduler configuration.
        runner: anything with ``run(plan) -> RunnerOutput`` (default :class:`SearchRunner`; the simulator's cost model).
        start: start the loop thread now (``False`` lets tests drive :meth:`step`).
    """

    def __init__(self, config: SchedulerConfig | None = None, *, collections: Collections | None = None,
                 runner=None, clock=time.monotonic, start: bool = True) -> None:
        self.config = config or SchedulerConfig()
        self.collections = collections or Collections()
        self.clock = clock
        self.scheduler = Scheduler(self.config, self.collections, clock)
        self.runner = runner or SearchRunner(self.collections)
        self.metrics = EngineMetrics()
        self.metrics.bind_queue_depth(lambda: list(self.scheduler.requests.values()))
        self.admission = None if self.config.admission_share is None else SojournAdmission(
            self.config.admission_share, self.config.admission_interval_ms / 1e3, clock)
        self._inbox: deque[tuple[str, object]] = deque()
        self._futures: dict[str, Future] = {}
        self._cv = threading.Condition()
        self._closing = False
        self._stop = False
        self._thread: threading.Thread | None = None
        self._outbox: SimpleQueue[list[Finished] | None] = SimpleQueue()  # finished, for the resolver thread
        self._resolver: threading.Thread | None = None
        if start:
            self.start()

    # ------------------------------------------------------------------ collections
    def add_collection(self, name: str, index: BaseIndex) -> None:
        self.collections.add(name, index)

    def drop_collection(self, name: str) -> BaseIndex:
        """Remove a collection; its in-flight requests finish with an error."""
        return self.collections.remove(name)

    # ------------------------------------------------------------------ submission
    def submit(self, collection: str, query, k: int, *, nprobe: int | None = None,
               stage: str | Stage = Stage.PREFILL, deadline_ms: float | None = None,
               request_id: str | None = None, search_width: int = 1) -> Future:
        """Queue one query; the future resolves to a :class:`SearchResult`.

        ``nprobe``: IVF lists, or a graph collection's itopk; ``search_width``: nodes a graph
        hop expands.  Without ``deadline_ms`` the stage's ``default_deadline_ms`` applies.  Raises
        ``ValueError`` (bad input, unknown collection), :class:`OverloadedError` (refused by
        sojourn admission) or :class:`EngineClosedError`.
        """
        index = self.collections.get(collection)
        k = check_k(k)
        nprobe = None if nprobe is None else check_k(nprobe, name="nprobe", max_k=1 << 20)
        search_width = check_k(search_width, name="search_width", max_k=GRAPH_MAX_SEARCH_WIDTH)
        if deadline_ms is not None and (not math.isfinite(deadline_ms) or deadline_ms <= 0):
            raise InvalidInput(f"deadline_ms: must be a positive number, got {deadline_ms}", "deadline_ms")
        stage = Stage.parse(stage)
        if deadline_ms is None:
            deadline_ms = self.config.default_deadline_ms[stage]
        vec = as_query(query, index.dim)
        now = self.clock()
        req = SearchRequest(collection, vec, k, nprobe, stage, None if deadline_ms is None else now + deadline_ms / 1e3,
                            arrival_time=now, search_width=search_width)
        req.request_id = request_id or req.request_id
        fut: Future = Future()
        with self._cv:
            if self._closing:
                raise EngineClosedError("engine is shutting down")
            if req.request_id in self._futures:
                raise InvalidInput(f"request_id: {req.request_id!r} is already in flight", "request_id",
                                      code=ErrorCode.CONFLICT)
            if self.admission is not None:
                try:
                    self.admission.admit(stage, None if deadline_ms is None else deadline_ms / 1e3, now)
                except OverloadedError:
                    self.metrics.admission_rejected.labels(stage.name.lower()).inc()
                    raise
            self._futures[req.request_id] = fut
            self._inbox.append(("add", req))
            self._cv.notify()
        fut.request_id = req.request_id  # type: ignore[attr-defined]
        return fut

    def search_sync(self, collection: str, query, k: int, **kwargs) -> SearchResult:
        """Blocking search."""
        return self.submit(collection, query, k, **kwargs).result()

    async def search(self, collection: str, query, k: int, **kwargs) -> SearchResult:
        """Async search; cancelling the awaiting task aborts the request."""
        fut = self.submit(collection, query, k, **kwargs)
        try:
            return await asyncio.wrap_future(fut)
        except asyncio.CancelledError:
            self.abort(fut.request_id)  # type: ignore[attr-defined]
            raise

    def abort(self, request_id: str) -> None:
        """Abort a request; its future resolves with status ``aborted``."""
        with self._cv:
            self._inbox.append(("abort", request_id))
            self._cv.notify()

    # ------------------------------------------------------------------ the loop
    def step(self) -> list[SearchResult]:
        """Run one iteration (drain inbox, schedule, run, update); return finished results."""
        results: list[SearchResult] = []
        self._iterate(lambda finished: results.extend(self._resolve(f) for f in finished))
        return results

    def _iterate(self, deliver: Callable[[list[Finished]], None]) -> None:
        """One iteration; every batch of finished requests goes to ``deliver`` as soon as it is known.

        Requests that finish without the runner (rejections, aborts, expiries before any
        scan) leave before the scan runs, and a plan's head is run and updated before the
        rest of it, so neither waits for the rest of the iteration.
        """
        with self._cv:
            inbox, self._inbox = self._inbox, deque()
        new = [item for kind, item in inbox if kind == "add"]
        if new:
            self.scheduler.add_requests(new)
        for kind, item in inbox:
            if kind == "abort":
                self.scheduler.abort(item)
        preempted_before = self.scheduler.num_preemptions
        plan = self.scheduler.schedule()
        if finished := self.scheduler.pop_finished():
            deliver(finished)
        if plan.is_empty and plan.head is None:
            return
        outs = []
        for part in plan.parts:
            outs.append(out := self.runner.run(part))
            if finished := self.scheduler.update_from_output(part, out):
                deliver(finished)
        self.metrics.observe_iteration(outs, self.scheduler.budget_vectors,
                                       self.scheduler.num_preemptions - preempted_before)

    def _resolve(self, finished: Finished) -> SearchResult:
        req, scores, ids = finished
        if ids is None:
            ids = np.full(req.k, -1, dtype=np.int64)
            sentinel = self.collections.get(req.collection).metric.sentinel if req.collection in self.collections else math.nan
            scores = np.full(req.k, sentinel, dtype=np.float32)
        result = SearchResult.of(req, scores, ids)
        self.metrics.observe_finished(req, result.deadline_missed)
        if self.admission is not None:
            answered = req.status in (RequestStatus.FINISHED_COMPLETE, RequestStatus.FINISHED_PARTIAL)
            self.admission.observe(req.stage, req.arrival_time, req.finish_time if answered else None, self.clock())
        with self._cv:
            fut = self._futures.pop(req.request_id, None)
        if fut is not None and not fut.done():
            fut.set_result(result)
        return result

    def start(self) -> None:
        """Compile the CPU kernels, freeze the start-up heap, then start the loop thread."""
        if self._thread is None:
            compile_kernels()
            compile_runner()
            freeze_heap()
            sys.setswitchinterval(self.config.switch_interval_ms / 1e3)
            self._resolver = threading.Thread(target=self._resolve_loop, name="trinity-resolver", daemon=True)
            self._resolver.start()
            self._thread = threading.Thread(target=self._loop, name="trinity-engine", daemon=True)
            self._thread.start()

    def _loop(self) -> None:
        while True:
            with self._cv:
                if self._stop:
                    return
                if not self._inbox and not self.scheduler.has_work:
                    self._cv.wait(self.config.idle_wait_ms / 1e3)
                    continue
            try:
                self._iterate(self._outbox.put)
            except Exception as exc:  # noqa: BLE001 - fail what is in flight, loudly, and keep serving
                _log.exception("engine iteration failed; failing %d in-flight requests", len(self._futures))
                self._fail_all(f"engine iteration failed: {type(exc).__name__}: {exc}")

    def _resolve_loop(self) -> None:
        """Futures, callbacks and metrics, off the loop thread (mostly while it is in a kernel)."""
        while (finished := self._outbox.get()) is not None:
            for f in finished:
                try:
                    self._resolve(f)
                except Exception:  # noqa: BLE001 - one bad callback must not stop the others
                    _log.exception("resolving request %s failed", f[0].request_id)

    def _fail_all(self, message: str) -> None:
        for req in list(self.scheduler.requests.values()):
            self.scheduler.abort(req.request_id)
        for req, _, _ in self.scheduler.pop_finished():
            req.status, req.message, req.code = RequestStatus.FINISHED_ERROR, message, ErrorCode.INTERNAL
            self._resolve((req, None, None))
        if hasattr(self.runner, "reset"):  # the runner's state may be inconsistent now
            self.runner.reset()

    def shutdown(self, drain: bool = True, timeout_s: float = 10.0) -> None:
        """Stop taking requests; drain (up to ``timeout_s``) or fail what is pending."""
        with self._cv:
            self._closing = True
            self._cv.notify()
        end = time.monotonic() + timeout_s
        while drain and self._thread is not None and time.monotonic() < end:
            with self._cv:
                if not self._inbox and not self.scheduler.has_work:
                    break
            time.sleep(0.001)
        with self._cv:
            self._stop = True
            self._cv.notify()
        if self._thread is not None:
            self._thread.join(timeout=5.0)
            self._thread = None
        if self._resolver is not None:
            self._outbox.put(None)  # after everything the loop delivered
            self._resolver.join(timeout=5.0)
            self._resolver = None
        with self._cv:
            pending, self._futures = self._futures, {}
            self._inbox.clear()
        for fut in pending.values():
            if not fut.done():
                fut.set_exception(EngineClosedError("engine shut down before the request finished"))

    def __enter__(self) -> SearchEngine:
        return self

    def __exit__(self, *exc) -> None:
        self.shutdown()
