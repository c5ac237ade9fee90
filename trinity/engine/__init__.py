"""Continuous-batching, stage-aware vector search engine."""

from trinity.engine.admission import OverloadedError
from trinity.engine.collections import Collections, CollectionStats, UnknownCollectionError
from trinity.engine.config import SchedulerConfig
from trinity.engine.engine import EngineClosedError, SearchEngine
from trinity.engine.heap import GcPauses, freeze_heap
from trinity.engine.plan import IterationPlan, NewRequest, RunnerOutput, ScanWork
from trinity.engine.request import RequestStatus, SearchRequest, SearchResult, Stage
from trinity.engine.runner import SearchRunner
from trinity.engine.scheduler import Scheduler

__all__ = [
    "CollectionStats", "Collections", "EngineClosedError", "GcPauses", "IterationPlan", "NewRequest", "OverloadedError",
    "RequestStatus",
    "RunnerOutput", "ScanWork", "Scheduler", "SchedulerConfig", "SearchEngine", "SearchRequest",
    "SearchResult", "SearchRunner", "Stage", "UnknownCollectionError", "freeze_heap",
]
