"""Triton kernels vs the torch reference (under TRITON_INTERPRET=1 on CPU; see conftest).

Small shapes and small tiles, so that every path runs: several tiles and segments per
pair, multi-tile subgroups, block ranges, empty lists and pairs, mixed k, running rows
that already hold results (thresholds), the sorting network and the one-by-one path.
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

pytest.importorskip("triton")

from trinity.index import FlatIndex, ProbeChunk, RunningTopK, scan  # noqa: E402
from trinity.index.kernels import (  # noqa: E402
    TritonScanConfig, flat_scan_triton, plan_scan, scan_reference, scan_triton,
)
from trinity.index.kernels.reference import flat_reference  # noqa: E402
from trinity.index.scan import resolve_backend  # noqa: E402

from .conftest import COMPILED, DEVICE  # noqa: E402
from .helpers import assert_topk_equal, clone, make_lists, queries_for, random_chunk  # noqa: E402

#: Small tiles: more tiles, segments and subgroups per call on tiny data.
SMALL = TritonScanConfig(tile_n=32, block_d=16, seg_tiles=1)
FP16_TOL = dict(rtol=2e-3, atol=2e-3)  # kernel and reference differ in summation order only


@pytest.mark.parametrize("metric, dtype", [("ip", torch.float16), ("l2", torch.float16), ("ip", torch.bfloat16),
                                           ("l2", torch.float32)])
def test_ivf_scan_matches_reference(metric, dtype):
    rng = np.random.default_rng(0)
    dim, nlist = 24, 6
    lists, _ = make_lists(rng, n=330, dim=dim, nlist=nlist, block_size=8, metric=metric, dtype=dtype,
                          device=DEVICE, empty=(2,))
    nq = 7
    q = queries_for(rng, nq, dim, metric, DEVICE)
    ks = np.array([1, 3, 10, 17, 5, 2, 12])
    # rows 0-3 already hold results from other lists (so thresholds prune), rows 4-6 start empty
    warm = random_chunk(rng, lists, [[4], [5, 0], [1], [3], [], [], []], ranged=False)
    probes = [[0, 1], [2, 3, 4], [5], [0, 2, 5, 1], [1, 3], [], [4, 0, 3]]
    chunk = random_chunk(rng, lists, probes, ranged=True)
    got = RunningTopK.empty(nq, ks, device=DEVICE)
    scan_reference(lists, q, warm, got)
    want = clone(got)
    scan_triton(lists, q, chunk, got, SMALL)
    scan_reference(lists, q, chunk, want)
    tol = FP16_TOL if dtype != torch.bfloat16 else dict(rtol=2e-2, atol=2e-2)
    assert_topk_equal(got, want, **(tol if dtype != torch.float32 else dict(rtol=1e-5, atol=1e-5)))
    # padding past each row's k, and rows without pairs untouched
    ids = got.ids.cpu().numpy()
    for r, k in enumerate(ks):
        assert np.all(ids[r, k:] == -1)
    assert np.all(ids[5] == -1)


def test_chunking_invariance_ties_and_numba_agreement():
    """Integer data (exact scores, many exact ties): one call, any split of the pairs into
    calls and block ranges, and the CPU numba kernel all return bitwise the same rows."""
    rng = np.random.default_rng(1)
    dim, nlist = 8, 4
    lists, _ = make_lists(rng, n=260, dim=dim, nlist=nlist, block_size=4, metric="l2", dtype=torch.float32,
                          device=DEVICE, integer=True)
    nq = 5
    q = queries_for(rng, nq, dim, "l2", DEVICE, integer=True)
    ks = np.array([4, 16, 1, 9, 30])
    full = ProbeChunk.from_probes(np.array([[0, 1, 2, 3], [1, 3, -1, -1], [2, -1, -1, -1], [3, 0, 2, -1],
                                            [0, 1, 2, 3]]))
    one = RunningTopK.empty(nq, ks, device=DEVICE)
    scan_triton(lists, q, full, one, SMALL)
    # split: every pair cut at a random block into two halves scanned by separate calls
    nb = lists.num_list_blocks(full.list_ids)
    cut = rng.integers(0, nb + 1)
    parts = RunningTopK.empty(nq, ks, device=DEVICE)
    scan_triton(lists, q, ProbeChunk(full.query_ptr, full.list_ids, cut, nb), parts, SMALL)
    scan_triton(lists, q, ProbeChunk(full.query_ptr, full.list_ids, np.zeros_like(cut), cut), parts,
                TritonScanConfig(tile_n=32, block_d=16, seg_tiles=2, fast_m=0))
    want = RunningTopK.empty(nq, ks, device=DEVICE)
    scan_reference(lists, q, full, want)
    for t in (one, parts):
        np.testing.assert_array_equal(t.ids.cpu().numpy(), want.ids.cpu().numpy())
        np.testing.assert_array_equal(t.scores.cpu().numpy(), want.scores.cpu().numpy())
    if not COMPILED:  # the CPU list-major numba kernel: same total order, same rows
        ref = RunningTopK.empty(nq, ks)
        scan(lists, q, full, ref, backend="numba")
        np.testing.assert_array_equal(one.ids.numpy(), ref.ids.numpy())
        np.testing.assert_array_equal(one.scores.numpy(), ref.scores.numpy())


def test_selection_paths_agree():
    """The sorting network, the one-by-one path and no pruning give the same rows."""
    rng = np.random.default_rng(2)
    dim = 16
    lists, _ = make_lists(rng, n=420, dim=dim, nlist=2, block_size=16, metric="ip", dtype=torch.float16,
                          device=DEVICE)
    nq = 3
    q = queries_for(rng, nq, dim, "ip", DEVICE)
    ks = np.array([5, 1, 16])
    chunk = ProbeChunk.from_probes(np.array([[0, 1], [1, -1], [0, -1]]))
    outs = []
    for cfg in (TritonScanConfig(tile_n=16, block_d=16, seg_tiles=8),
                TritonScanConfig(tile_n=16, block_d=16, seg_tiles=8, fast_m=0),
                TritonScanConfig(tile_n=16, block_d=16, seg_tiles=8, use_threshold=False),
                TritonScanConfig(tile_n=64, block_d=16, seg_tiles=1, fast_m=1)):
        t = RunningTopK.empty(nq, ks, device=DEVICE)
        scan_triton(lists, q, chunk, t, cfg)
        outs.append(t)
    want = RunningTopK.empty(nq, ks, device=DEVICE)
    scan_reference(lists, q, chunk, want)
    for t in outs:
        np.testing.assert_array_equal(t.ids.cpu().numpy(), outs[0].ids.cpu().numpy())
        assert_topk_equal(t, want, **FP16_TOL)


def test_flat_scan_matches_reference_and_flat_index():
    rng = np.random.default_rng(3)
    dim = 20
    lists, _ = make_lists(rng, n=200, dim=dim, nlist=1, block_size=16, metric="l2", dtype=torch.float16,
                          device=DEVICE)
    nq = 20  # > 16: two query subgroups share every tile
    q = queries_for(rng, nq, dim, "l2", DEVICE)
    ks = rng.integers(1, 12, nq)
    got = RunningTopK.empty(nq, ks, device=DEVICE)
    want = RunningTopK.empty(nq, ks, device=DEVICE)
    for b0, b1 in ((3, 7), (7, 40), (0, 3)):  # a circular scan in three chunks
        flat_scan_triton(lists, q, b0, b1, got, SMALL)
        flat_reference(lists, q, b0, b1, want)
    assert_topk_equal(got, want, **FP16_TOL)
    # FlatIndex with the triton backend == with the default backend (fp32 storage)
    x = rng.standard_normal((300, dim)).astype(np.float32)
    qs = rng.standard_normal((6, dim)).astype(np.float32)
    device = "cuda" if COMPILED else "cpu"
    a = FlatIndex(dim, metric="ip", device=device, block_size=16, chunk_blocks=8, scan_backend="triton")
    b = FlatIndex(dim, metric="ip", device=device, block_size=16, chunk_blocks=8, scan_backend="torch")
    a.add(x)
    b.add(x)
    Da, Ia = a.search(qs, 7)
    Db, Ib = b.search(qs, 7)
    np.testing.assert_array_equal(Ia, Ib)
    np.testing.assert_allclose(Da, Db, rtol=1e-5, atol=1e-5)


def test_padded_grid_matches_exact_grid():
    """Launches padded to a capacity (what a CUDA graph replays) do the same work."""
    from trinity.index.kernels import triton_scan

    rng = np.random.default_rng(4)
    lists, _ = make_lists(rng, n=120, dim=16, nlist=3, block_size=8, metric="ip", dtype=torch.float16,
                          device=DEVICE)
    q = queries_for(rng, 4, 16, "ip", DEVICE)
    chunk = ProbeChunk.from_probes(np.array([[0, 1], [2, -1], [-1, -1], [1, 2]]))
    ks = np.array([3, 1, 2, 8])
    b0, b1 = chunk.block_ranges(lists)
    outs = []
    for pad in (0, 5):
        t = RunningTopK.empty(4, ks, device=DEVICE)
        plan = plan_scan(lists.list_len, lists.block_size, chunk.query_ptr, chunk.list_ids, b0, b1, t.max_k, SMALL)
        ws = triton_scan._workspace(lists.device)
        meta = ws.upload(plan)
        ck, ci = ws.scratch(plan.total_cand)
        triton_scan.launch(lists, q.to(lists.dtype).contiguous(), plan, t, SMALL, meta, ck, ci,
                           grid_items=plan.num_items + pad, grid_rows=plan.num_rows + pad)
        outs.append(t)
    np.testing.assert_array_equal(outs[0].ids.cpu().numpy(), outs[1].ids.cpu().numpy())
    np.testing.assert_array_equal(outs[0].scores.cpu().numpy(), outs[1].scores.cpu().numpy())
    assert (outs[0].ids >= 0).sum() > 0


def test_scan_dispatch(monkeypatch):
    rng = np.random.default_rng(5)
    lists, _ = make_lists(rng, n=80, dim=16, nlist=2, block_size=8, metric="ip", dtype=torch.float32, device=DEVICE)
    q = queries_for(rng, 2, 16, "ip", DEVICE)
    chunk = ProbeChunk.from_probes(np.array([[0, 1], [1, -1]]))
    a = RunningTopK.empty(2, 4, device=DEVICE)
    b = RunningTopK.empty(2, 4, device=DEVICE)
    scan(lists, q, chunk, a, backend="triton")
    scan(lists, q, chunk, b, backend="torch")
    np.testing.assert_array_equal(a.ids.cpu().numpy(), b.ids.cpu().numpy())
    # the CPU default is unchanged; CUDA picks triton when it imports
    assert resolve_backend(torch.device("cpu"), torch.float32) == "numba"
    assert resolve_backend(torch.device("cpu"), torch.float16) == "torch"
    assert resolve_backend(torch.device("cuda"), torch.float16) == "triton"
    monkeypatch.setenv("TRINITY_CUDA_SCAN_BACKEND", "torch")  # the escape hatch
    assert resolve_backend(torch.device("cuda"), torch.float16) == "torch"
    with pytest.raises(ValueError, match="unknown scan backend"):
        FlatIndex(16, scan_backend="cuda-magic")


def test_kernels_package_imports_without_triton():
    code = ("import sys; sys.modules['triton'] = None\n"
            "import numpy as np, torch\n"
            "import trinity.index.kernels as k\n"
            "from trinity.index import IVFIndex\n"
            "from trinity.index.scan import resolve_backend\n"
            "assert not k.triton_available()\n"
            "assert resolve_backend(torch.device('cuda'), torch.float16) == 'torch'\n"
            "x = np.random.default_rng(0).standard_normal((64, 8)).astype(np.float32)\n"
            "i = IVFIndex(8, 2); i.train(x, niter=2); i.add(x); i.search(x[:2], 3)\n")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_scan_graph_replays_any_plan_within_capacity():
    """ScanGraph (capacity grids, static buffers, header-addressed metadata) returns what an
    eager scan returns, across chunks of different sizes and after the lists grow.  On CPU
    the graph is emulated by re-running the captured launch; capture itself needs CUDA."""
    from trinity.index.kernels.triton_scan import ScanGraph

    rng = np.random.default_rng(6)
    lists, _ = make_lists(rng, n=150, dim=16, nlist=4, block_size=8, metric="l2", dtype=torch.float16,
                          device=DEVICE)
    cfg = TritonScanConfig(qm=16, tile_n=32, block_d=16, seg_tiles=1)
    graph = ScanGraph(lists, max_rows=6, max_k=8, max_pairs=16, max_items=24, config=cfg)
    q = queries_for(rng, 6, 16, "l2", DEVICE)
    cases = [(ProbeChunk.from_probes(np.array([[0, 1], [2, 3], [1, -1]])), np.array([3, 8, 1])),
             (ProbeChunk.from_probes(np.array([[3], [0], [1], [2], [0], [3]])), np.array([2, 2, 5, 1, 8, 4]))]
    for step in range(2):
        for chunk, ks in cases:
            n = ks.size
            got = RunningTopK.empty(n, ks, device=DEVICE)
            want = RunningTopK.empty(n, ks, device=DEVICE)
            graph.run(q[:n], chunk, got)
            scan_triton(lists, q[:n], chunk, want, cfg)
            np.testing.assert_array_equal(got.ids.cpu().numpy(), want.ids.cpu().numpy())
            np.testing.assert_array_equal(got.scores.cpu().numpy(), want.scores.cpu().numpy())
        # the lists grow (new blocks, a new block-table version): the next replays see it
        x = torch.from_numpy(rng.standard_normal((40, 16)).astype(np.float32)).to(DEVICE)
        lists.append(rng.integers(0, 4, 40), x, -(x.to(torch.float16).float() ** 2).sum(1),
                     np.arange(40, dtype=np.int64) + 10**13 + step * 100)
    too_big = ProbeChunk.from_probes(np.zeros((7, 1), dtype=np.int64))
    with pytest.raises(ValueError, match="capacity"):
        graph.run(q[:1].expand(7, -1), too_big, RunningTopK.empty(7, 1, device=DEVICE))


def test_kernels_compile_for_sm90_without_a_gpu():
    """The interpreter does not run the Triton compiler; compile both kernels for sm_90
    ahead of time (frontend, lowering, ptxas) so compile-only errors fail here, not on
    the GPU.  Needs triton's bundled NVIDIA backend."""
    import os

    import triton

    if not os.path.exists(os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "ptxas")):
        pytest.skip("triton without its NVIDIA backend (ptxas)")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    out = subprocess.run([sys.executable, "-m", "trinity.index.kernels.compile_check"], env=env, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "scan" in out.stdout and "merge" in out.stdout
