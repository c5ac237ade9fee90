"""The Grafana dashboard (deploy/grafana/trinity-dashboard.json) against a REAL Prometheus that
scrapes the running e2e stack: every panel's every query must return data.

Needs the ``prometheus`` binary (Debian's ``prometheus`` package; ``.ci/run`` installs it);
skipped with a message where it is not installed.
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from trinity.stack.process import free_port

from .conftest import E2E

DASHBOARD = Path(__file__).resolve().parents[2] / "deploy" / "grafana" / "trinity-dashboard.json"
SCRAPE_S = 1


def _queries() -> list[tuple[str, str]]:
    panels = json.loads(DASHBOARD.read_text())["panels"]
    return [(p["title"], t["expr"]) for p in panels if p["type"] != "row" for t in p["targets"]]


@pytest.fixture(scope="module")
def prometheus(e2e: E2E, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.skip("prometheus is not installed (apt-get install prometheus; .ci/run does it): dashboard untested")
    work = Path(tmp_path_factory.mktemp("prometheus"))
    jobs = {"trinity-gateway": e2e.gateway, "trinity-pool": e2e.pool, "vllm-prefill": e2e.prefill,
            "vllm-decode": e2e.decode}
    scrape = [{"job_name": job, "static_configs": [{"targets": [urlsplit(u).netloc]}]} for job, u in jobs.items()]
    (work / "prometheus.yml").write_text(json.dumps({"global": {"scrape_interval": f"{SCRAPE_S}s"},
                                                     "scrape_configs": scrape}))  # NOTE: JSON is YAML
    url = f"http://127.0.0.1:{free_port()}"
    with open(work / "prometheus.log", "wb") as log:
        proc = subprocess.Popen([binary, f"--config.file={work / 'prometheus.yml'}",
                                 f"--storage.tsdb.path={work / 'data'}",
                                 f"--web.listen-address={urlsplit(url).netloc}"],
                                stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(url + "/-/ready", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert proc.poll() is None, (work / "prometheus.log").read_text()[-2000:]
            time.sleep(0.2)
        while time.monotonic() < deadline:  # NOTE: targets are applied a few seconds after /-/ready
            up = httpx.get(url + "/api/v1/query", params={"query": "up == 1"}).json()["data"]["result"]
            if len(up) == len(jobs):
                break
            time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        proc.wait(10)


def _traffic(e2e: E2E) -> None:
    """RAG with decode-time retrieval, plain, and repeats (answer-cache hits), streamed and not."""
    for i in range(4):
        prompt = f"How does the decode phase work? {uuid.uuid4().hex[:6]}"
        body = {"model": "m", "prompt": prompt, "max_tokens": 8, "stream": bool(i % 2),
                "trinity": {"collection": "docs", "k": 2, "retrieval_interval": 4}}
        for _ in range(2):  # NOTE: the second one is an answer-cache hit
            httpx.post(e2e.gateway + "/v1/completions", json=body, timeout=30).raise_for_status()
        time.sleep(SCRAPE_S)


def test_every_dashboard_query_returns_data(e2e: E2E, prometheus: str) -> None:
    _traffic(e2e)
    queries = _queries()
    assert len(queries) >= 30
    missing: list[str] = []
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        missing = []
        for title, expr in queries:
            r = httpx.get(prometheus + "/api/v1/query", params={"query": expr.replace("$__rate_interval", "1m")})
            assert r.status_code == 200, f"{title}: {expr}: {r.text}"  # NOTE: a PromQL syntax error is a 400
            values = [float(s["value"][1]) for s in r.json()["data"]["result"]]
            if not any(math.isfinite(v) for v in values):
                missing.append(f"{title}: {expr}")
        if not missing:
            return
        time.sleep(SCRAPE_S)
    pytest.fail("dashboard queries without data:\n" + "\n".join(missing))


def test_every_series_has_the_expected_labels(e2e: E2E, prometheus: str) -> None:
    """vLLM's ``model_name`` label on the engines' series; no exported ``instance`` label anywhere
    (it would be renamed ``exported_instance``: Prometheus sets ``instance`` itself)."""
    r = httpx.get(prometheus + "/api/v1/query", params={"query": "vllm:num_requests_running"}).json()
    assert {s["metric"]["model_name"] for s in r["data"]["result"]} == {"m"}
    r = httpx.get(prometheus + "/api/v1/series", params={"match[]": '{exported_instance!=""}'}).json()
    assert r["data"] == []
