"""Host-side planning of a Triton scan (numpy only; no triton, no device).

The kernel works **list-major**: the probe pairs of one call are grouped by list, and
each group is cut into *subgroups* of at most ``qm`` pairs (the rows of one ``tl.dot``
tile).  A subgroup's block range (the union of its pairs' ranges) is cut into
*segments* of ``seg_blocks`` blocks; one program scans one (subgroup, segment) item
(items of subgroups of one list are ordered segment-major, for L2 reuse):
every tile of vectors it loads through the block table is scored against all the
subgroup's queries at once, so a list probed by many queries of the batch is read once
per subgroup, not once per query.  Each item leaves, per pair, a sorted run of ``kp``
candidates in a scratch buffer; the merge kernel folds a query's runs into its running
top-k row.

Everything the kernels need is packed into one int64 array (one host-to-device copy).
A field that is empty in a call still has a (zero-length) place in it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

#: Sort key of an empty candidate (below the key of any float); see triton_scan.
EMPTY_KEY = -(2**31)

#: Order of the int64 metadata arrays in the packed buffer.
META_FIELDS = ("counts", "item_sub", "item_seg", "sub_list", "sub_start", "sub_n", "sub_lo", "sub_hi",
               "sp_q", "sp_b0", "sp_b1", "sp_cand", "query_ptr", "pair_cand", "pair_nch", "thr")


@dataclass(frozen=True)
class TritonScanConfig:
    """Tuning knobs (``None`` = pick automatically).

    Attributes:
        qm: query rows per ``tl.dot`` tile (a power of two >= 16).
        qm_max: cap for the automatic ``qm``.
        tile_n: vectors per tile (a power of two >= ``kp``).
        block_d: dimensions per ``tl.dot`` step (a power of two >= 16).
        seg_tiles: tiles per program (the automatic choice aims at ``target_programs``).
        target_programs: programs per launch the automatic ``seg_tiles`` aims at.
        kp_min: smallest candidate run (``kp = max(kp_min, next_pow2(max_k))``).
        use_threshold: drop candidates that cannot beat a row's current k-th result (its
            running row's, or the best k-th any program of the call has published).
        fast_m: when no row of a tile has more than ``fast_m`` surviving candidates, merge
            them one by one (row reductions) instead of running the sorting network
            (0 = always the network).
        num_warps, num_stages: launch options of the scan kernel (``num_warps=None``:
            4, or 8 for big tiles).
        merge_num_warps: launch option of the merge kernel.
    """

    qm: int | None = None
    qm_max: int = 64
    tile_n: int | None = None
    block_d: int | None = None
    seg_tiles: int | None = None
    target_programs: int = 1024
    kp_min: int = 16
    use_threshold: bool = True
    fast_m: int = 4
    num_warps: int | None = None
    num_stages: int = 2
    merge_num_warps: int = 1


def next_pow2(n: int) -> int:
    return 1 << max(0, int(n) - 1).bit_length()


@dataclass
class ScanPlan:
    """The work of one scan call (numpy arrays; see the module docstring)."""

    qm: int
    tile_n: int
    kp: int
    seg_blocks: int
    num_items: int
    num_rows: int
    total_cand: int
    arrays: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def packed_size(self) -> int:
        return len(META_FIELDS) + sum(self.arrays[f].size for f in META_FIELDS)

    def pack(self, out: np.ndarray | None = None) -> np.ndarray:
        """One int64 buffer (a prefix of ``out`` if it is big enough): a header holding each
        field's offset, in :data:`META_FIELDS` order, then the fields.  The kernels find the
        fields through the header, so their arguments do not change from call to call
        (which is what lets a CUDA graph replay them)."""
        total = self.packed_size
        buf = out[:total] if out is not None and out.size >= total else np.empty(total, dtype=np.int64)
        pos = len(META_FIELDS)
        for j, f in enumerate(META_FIELDS):
            a = self.arrays[f]
            buf[j] = pos
            buf[pos:pos + a.size] = a
            pos += a.size
        return buf


def plan_scan(list_len: np.ndarray, block_size: int, query_ptr: np.ndarray, list_ids: np.ndarray,
              b0: np.ndarray, b1: np.ndarray, max_k: int, config: TritonScanConfig | None = None) -> ScanPlan:
    """Plan a scan of CSR pairs (``query_ptr``, ``list_ids``) over block ranges ``[b0, b1)``
    (already clipped to the lists' sizes) for running rows of width ``max_k``."""
    cfg = config or TritonScanConfig()
    nq = query_ptr.size - 1
    num_pairs = list_ids.size
    kp = max(next_pow2(cfg.kp_min), next_pow2(max_k))
    tile_n = cfg.tile_n or max(kp, 64)
    if tile_n < kp or tile_n & (tile_n - 1):
        raise ValueError(f"tile_n={tile_n} must be a power of two >= kp={kp}")
    b0 = np.asarray(b0, dtype=np.int64)
    b1 = np.asarray(b1, dtype=np.int64)
    active = np.nonzero(b1 > b0)[0]
    lids = list_ids[active]
    # NOTE: a stable argsort of small ints is a radix sort in numpy (linear time).
    key = lids.astype(np.int16) if list_len.size <= np.iinfo(np.int16).max else lids
    order = active[np.argsort(key, kind="stable")]
    n = order.size
    sl = list_ids[order]
    new_list = np.ones(n, dtype=bool)
    new_list[1:] = sl[1:] != sl[:-1]
    grp_first = np.nonzero(new_list)[0]
    grp_id = np.cumsum(new_list) - 1
    if cfg.qm is not None:
        qm = int(cfg.qm)
    else:
        biggest = int(np.diff(np.append(grp_first, n)).max()) if n else 1
        qm = min(max(16, next_pow2(biggest)), max(16, cfg.qm_max))
    if qm < 16 or qm & (qm - 1):
        raise ValueError(f"qm={qm} must be a power of two >= 16")
    rank = np.arange(n) - grp_first[grp_id] if n else np.zeros(0, dtype=np.int64)
    new_sub = new_list | (rank % qm == 0)
    sub_start = np.nonzero(new_sub)[0]
    sub_n = np.diff(np.append(sub_start, n))
    sub_list = sl[sub_start]
    if n:
        sub_lo = np.minimum.reduceat(b0[order], sub_start)
        sub_hi = np.maximum.reduceat(b1[order], sub_start)
    else:
        sub_lo = sub_hi = np.zeros(0, dtype=np.int64)
    sub_blocks = sub_hi - sub_lo
    if cfg.seg_tiles is not None:
        seg_tiles = int(cfg.seg_tiles)
    else:
        tiles = int(np.ceil(sub_blocks * block_size / tile_n).sum()) if n else 0
        seg_tiles = 1 << int(np.clip(np.log2(max(1.0, tiles / max(1, cfg.target_programs))), 0, 6))
    seg_blocks = max(1, seg_tiles * tile_n // block_size)
    nseg = (sub_blocks + seg_blocks - 1) // seg_blocks
    num_items = int(nseg.sum())
    item_sub = np.repeat(np.arange(sub_start.size, dtype=np.int64), nseg)
    item_seg = np.arange(num_items, dtype=np.int64) - np.repeat(np.cumsum(nseg) - nseg, nseg)
    if sub_start.size > grp_first.size:
        # Several subgroups share a list: order their items segment-major, so that the
        # programs scanning one segment for different subgroups run side by side and all
        # but the first read it from L2 (the swizzle of a tiled GEMM).
        sub_grp = grp_id[sub_start]
        key = sub_grp[item_sub] * (int(nseg.max()) + 1) + item_seg
        perm = np.argsort(key, kind="stable")
        item_sub, item_seg = item_sub[perm], item_seg[perm]
    pair_nch = np.zeros(num_pairs, dtype=np.int64)
    pair_nch[order] = nseg[np.cumsum(new_sub) - 1] if n else 0
    pair_cand = kp * (np.cumsum(pair_nch) - pair_nch)
    total_cand = int(kp * pair_nch.sum())
    arrays = {
        "counts": np.array([num_items, nq], dtype=np.int64),
        "item_sub": item_sub, "item_seg": item_seg,
        "sub_list": sub_list, "sub_start": sub_start, "sub_n": sub_n, "sub_lo": sub_lo, "sub_hi": sub_hi,
        "sp_q": np.repeat(np.arange(nq, dtype=np.int64), np.diff(query_ptr))[order],
        "sp_b0": b0[order], "sp_b1": b1[order], "sp_cand": pair_cand[order],
        "query_ptr": np.asarray(query_ptr, dtype=np.int64),
        "pair_cand": pair_cand, "pair_nch": pair_nch,
        "thr": np.full(nq, EMPTY_KEY, dtype=np.int64),
    }
    return ScanPlan(qm=qm, tile_n=tile_n, kp=kp, seg_blocks=seg_blocks, num_items=num_items, num_rows=nq,
                    total_cand=total_cand, arrays=arrays)
