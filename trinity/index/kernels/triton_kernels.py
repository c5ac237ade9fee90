"""Triton device code of the scan: the jitted helpers (order-preserving keys, bitonic
sorting networks on (key, id) pairs, reductions) and the two kernels, the in-place
blocked IVF scan with fused k-selection and the merge into the running top-k.  Host
code lives in :mod:`trinity.index.kernels.triton_launch`; this module imports triton at
import time, so it is only imported lazily (via :mod:`trinity.index.kernels.triton_scan`).

Two launches per call:

1. ``_scan_kernel``, one program per (subgroup, segment) item of a
   :class:`~trinity.index.kernels.plan.ScanPlan`: it loads the subgroup's query rows and
   walks the segment's vectors **in place** (block table -> pool block -> row), a tile of
   ``tile_n`` vectors at a time; ``tl.dot`` scores the tile against all ``qm`` query rows
   (inputs in the storage dtype, fp32 accumulation; ``ieee`` precision for fp32 storage),
   adds the ``-||x||^2`` term for L2, masks each pair's block range, drops candidates that
   cannot beat the row's current k-th result (its running row's, the best k-th any
   program of the call has published with ``atomic_max``, or its own), and keeps a
   running per-row top-``kp`` in registers: survivors are merged one by one (row
   reductions) when no row has more than ``fast_m`` of them, else through a bitonic top-k
   (sort runs of ``kp``, fold halves with ``max``, bitonic merge).  It writes one sorted
   run of ``kp`` candidates per (pair, segment).
2. ``_merge_kernel``, one program per query row: folds the row's runs into its running
   top-k row in place (bitonic merge of two sorted runs), skipping runs whose best cannot
   enter, and writes back ``k`` results (per-row ``k``, padding ``-inf`` / ``-1``).

Candidates are ordered by the total order of :mod:`trinity.index.topk` (higher score,
then smaller id): scores are mapped to order-preserving int32 keys, and every compare
of the sorting networks compares (key, id) pairs, so results do not depend on how a
query's pairs are chunked, exactly like the CPU kernel.  (Unlike the CPU kernel, an id
that reaches a row twice -- only possible if the index changed mid-scan -- is not
de-duplicated; neither does the torch path.)

There is no host sync: grid sizes come from the host plan, and every program first checks
its index against the counts in the metadata, so a launch may also be padded to a fixed
capacity (what a CUDA graph of the scan needs).
"""

from __future__ import annotations

import os

import triton
import triton.language as tl


def _interpreting() -> bool:
    """Whether ``triton.jit`` gives interpreted kernels (read when a kernel is decorated)."""
    try:
        from triton import knobs  # triton >= 3.3
    except ImportError:  # pragma: no cover - older triton
        return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")
    return bool(knobs.runtime.interpret)


def _device(fn):
    """``triton.jit`` for device helpers; under the interpreter, the plain function.

    NOTE: the interpreter re-patches ``triton.language`` on every call of a jitted device
    function (~0.4 ms each); plain Python helpers run the same ``tl`` ops without that.
    """
    return fn if _interpreting() else triton.jit(fn)


_EMPTY_KEY = tl.constexpr(-(2**31))  # below the key of any float, -inf included
_NEG_INF = tl.constexpr(float("-inf"))
_BIG_ID = tl.constexpr(2**63 - 1)


# --------------------------------------------------------------------------- helpers (device)
@_device
def _better(ka, ia, kb, ib):
    """(ka, ia) strictly before (kb, ib): a higher key, or the same key and a smaller id."""
    return (ka > kb) | ((ka == kb) & (ia < ib))


@_device
def _to_key(s):
    """fp32 -> int32 with the same order (and +0 == -0)."""
    b = s.to(tl.int32, bitcast=True)
    k = tl.where(b < 0, b ^ 0x7FFFFFFF, b)
    return tl.where(s == 0.0, 0, k)


@_device
def _from_key(k):
    b = tl.where(k < 0, k ^ 0x7FFFFFFF, k)
    return b.to(tl.float32, bitcast=True)


@_device
def _indicator(N_DIMS: tl.constexpr, J: tl.constexpr):
    ar = tl.arange(0, 2)
    return tl.reshape(ar, [1] * (N_DIMS - J - 1) + [2] + [1] * J)


@_device
def _rsum(x, AX: tl.constexpr, KEEP: tl.constexpr):
    """``tl.sum`` of an int32/int64 tensor without dtype promotion.

    NOTE: tl.sum / tl.max are jitted library functions, and the interpreter re-patches
    triton.language on every call of one (~0.3 ms); tl.reduce with the library's sum
    combine is a builtin it runs as one numpy sum, and compiles to the same reduction.
    """
    return tl.reduce(x, AX, tl.standard._sum_combine, keep_dims=KEEP)


@_device
def _rmax(x, AX: tl.constexpr):
    return tl.reduce(x, AX, tl.standard._elementwise_max)


@_device
def _rmin(x, AX: tl.constexpr):
    return tl.reduce(x, AX, tl.standard._elementwise_min)


@_device
def _partner(x, AX: tl.constexpr):
    """The other entry along axis AX (of size 2) of an integer tensor."""
    # NOTE: sum - self wraps around in two's complement, so int32 overflow is harmless; a
    # builtin sum rather than xor_sum, which the interpreter runs element by element.
    return _rsum(x, AX, True) - x


@_device
def _cas(k, i, flip, J: tl.constexpr, N_DIMS: tl.constexpr):
    """Compare-and-swap of (key, id) pairs on the J-th innermost axis of a [2]*N_DIMS cube."""
    ax: tl.constexpr = N_DIMS - 1 - J
    pk = _partner(k, ax)
    pi = _partner(i, ax)
    is_right = _indicator(N_DIMS, J)
    swap = _better(k, i, pk, pi) != (flip ^ is_right).to(tl.int1)
    return tl.where(swap, pk, k), tl.where(swap, pi, i)


@_device
def _merge_cube(k, i, STAGE: tl.constexpr, ORDER: tl.constexpr, N_DIMS: tl.constexpr):
    """Bitonic merge of the innermost STAGE axes (ORDER 0: worst first, 1: best first, 2: alternating)."""
    if ORDER == 2:
        flip = _indicator(N_DIMS, STAGE)
    else:
        flip = ORDER
    for s in tl.static_range(STAGE):
        k, i = _cas(k, i, flip, STAGE - 1 - s, N_DIMS)
    return k, i


@_device
def _best_of(k1, i1, k2, i2):
    b = _better(k1, i1, k2, i2)
    return tl.where(b, k1, k2), tl.where(b, i1, i2)


@_device
def _fold(k, i, AX: tl.constexpr, N_DIMS: tl.constexpr):
    """Best of the two entries along axis AX (of size 2), dropping the axis."""
    # NOTE: keeps the left entry with a sum (see _rsum), not tl.reduce with a custom combine.
    mk, mi = _best_of(k, i, _partner(k, AX), _partner(i, AX))
    left = _indicator(N_DIMS, N_DIMS - 1 - AX) == 0
    return _rsum(tl.where(left, mk, 0), AX, False), _rsum(tl.where(left, mi, 0), AX, False)


@_device
def _topk_rows(k, i, LOG_R: tl.constexpr, LOG_N: tl.constexpr, LOG_K: tl.constexpr, DESC: tl.constexpr):
    """Best 2**LOG_K of each row of [2**LOG_R, 2**LOG_N] (key, id), sorted (DESC: best first)."""
    N_DIMS: tl.constexpr = LOG_R + LOG_N
    hk = tl.reshape(k, [2] * N_DIMS)
    hi = tl.reshape(i, [2] * N_DIMS)
    for s in tl.static_range(1, LOG_K + 1):
        hk, hi = _merge_cube(hk, hi, s, 2 if s < LOG_N else DESC, N_DIMS)
    for s in tl.static_range(LOG_K + 1, LOG_N + 1):
        # the cube has N_DIMS + LOG_K + 1 - s axes; fold the one above the runs of 2**LOG_K
        hk, hi = _fold(hk, hi, N_DIMS - s, N_DIMS + LOG_K + 1 - s)
        hk, hi = _merge_cube(hk, hi, LOG_K, 2 if s < LOG_N else DESC, N_DIMS + LOG_K - s)
    return tl.reshape(hk, [2**LOG_R, 2**LOG_K]), tl.reshape(hi, [2**LOG_R, 2**LOG_K])


@_device
def _merge_runs(ak, ai, bk, bi, LOG_R: tl.constexpr, LOG_K: tl.constexpr):
    """Best 2**LOG_K of run a (best first) and run b (worst first), per row, best first."""
    mk, mi = _best_of(ak, ai, bk, bi)  # bitonic, and holds the best 2**LOG_K of a | b
    N_DIMS: tl.constexpr = LOG_R + LOG_K
    hk = tl.reshape(mk, [2] * N_DIMS)
    hi = tl.reshape(mi, [2] * N_DIMS)
    hk, hi = _merge_cube(hk, hi, LOG_K, 1, N_DIMS)
    return tl.reshape(hk, ak.shape), tl.reshape(hi, ak.shape)


@_device
def _col(x, cols, c):
    """Column ``c`` (a scalar) of each row of the int tensor x."""
    return _rsum(tl.where(cols[None, :] == c, x, 0), 1, False)


@_device
def _col_rows(x, cols, c):
    """Column ``c[r]`` of each row ``r`` of the int tensor x."""
    return _rsum(tl.where(cols[None, :] == c[:, None], x, 0), 1, False)


# --------------------------------------------------------------------------- kernels
@triton.jit
def _scan_kernel(
    Q, stride_q, V, AUX, SID, BT, stride_bt, LLEN, META,
    TOP_S, TOP_I, TOP_K, stride_top, CK, CI, SEG_BLOCKS,
    D: tl.constexpr, BS: tl.constexpr,
    QM: tl.constexpr, TN: tl.constexpr, BD: tl.constexpr, KP: tl.constexpr,
    LOG_QM: tl.constexpr, LOG_TN: tl.constexpr, LOG_KP: tl.constexpr, FAST_M: tl.constexpr,
    HAS_AUX: tl.constexpr, IEEE: tl.constexpr, UPCAST: tl.constexpr, USE_THRESH: tl.constexpr,
):
    item = tl.program_id(0)
    # metadata fields through the header (plan.META_FIELDS order)
    if item >= tl.load(META + tl.load(META + 0)):
        return
    ITEM_SUB = META + tl.load(META + 1)
    ITEM_SEG = META + tl.load(META + 2)
    SUB_LIST = META + tl.load(META + 3)
    SUB_START = META + tl.load(META + 4)
    SUB_N = META + tl.load(META + 5)
    SUB_LO = META + tl.load(META + 6)
    SUB_HI = META + tl.load(META + 7)
    SP_Q = META + tl.load(META + 8)
    SP_B0 = META + tl.load(META + 9)
    SP_B1 = META + tl.load(META + 10)
    SP_CAND = META + tl.load(META + 11)
    THR = META + tl.load(META + 15)
    sub = tl.load(ITEM_SUB + item)
    seg = tl.load(ITEM_SEG + item)
    lst = tl.load(SUB_LIST + sub)
    ps = tl.load(SUB_START + sub)
    pn = tl.load(SUB_N + sub)
    blo = tl.load(SUB_LO + sub) + seg * SEG_BLOCKS
    bhi = tl.minimum(blo + SEG_BLOCKS, tl.load(SUB_HI + sub))
    start = blo * BS
    end = tl.minimum(bhi * BS, tl.load(LLEN + lst))

    rows = tl.arange(0, QM)
    rvalid = rows < pn
    qrow = tl.load(SP_Q + ps + rows, mask=rvalid, other=0)
    pb0 = tl.load(SP_B0 + ps + rows, mask=rvalid, other=0)
    pb1 = tl.load(SP_B1 + ps + rows, mask=rvalid, other=0)
    kk = tl.load(TOP_K + qrow, mask=rvalid, other=1)
    empty_k = tl.full([QM, TN], _EMPTY_KEY, tl.int32)
    empty_i = tl.full([QM, TN], -1, tl.int64)
    # A candidate that does not beat the row's current k-th result cannot enter it:
    # t_* is the running row's k-th (from earlier calls), THR the best k-th any program
    # of this call has published for the row, own_* this program's own k-th.
    if USE_THRESH:
        t_s = tl.load(TOP_S + qrow * stride_top + kk - 1, mask=rvalid, other=0.0)
        t_i = tl.load(TOP_I + qrow * stride_top + kk - 1, mask=rvalid, other=-1)
        t_k = tl.where(t_i >= 0, _to_key(t_s), _EMPTY_KEY)
    else:
        t_k = tl.full([QM], _EMPTY_KEY, tl.int32)
        t_i = tl.full([QM], -1, tl.int64)

    kcols = tl.arange(0, KP)
    last_col = kcols[None, :] == KP - 1
    r_k = tl.full([QM, KP], _EMPTY_KEY, tl.int32)
    r_i = tl.full([QM, KP], -1, tl.int64)
    vcols = tl.arange(0, TN)
    dcols = tl.arange(0, BD)
    for t0 in range(start, end, TN):
        pos = t0 + vcols
        vmask = pos < end
        bcol = pos // BS
        blk = tl.load(BT + lst * stride_bt + bcol, mask=vmask, other=0).to(tl.int64)
        slot = blk * BS + pos % BS
        acc = tl.zeros([QM, TN], dtype=tl.float32)
        for d0 in range(0, D, BD):
            dd = d0 + dcols
            dmask = dd < D
            qt = tl.load(Q + qrow[:, None] * stride_q + dd[None, :], mask=rvalid[:, None] & dmask[None, :], other=0.0)
            xt = tl.load(V + slot[:, None] * D + dd[None, :], mask=vmask[:, None] & dmask[None, :], other=0.0)
            if UPCAST:  # the interpreter has no bf16 matmul: exact products in fp32 instead
                acc = tl.dot(qt.to(tl.float32), tl.trans(xt.to(tl.float32)), acc, input_precision="ieee")
            elif IEEE:
                acc = tl.dot(qt, tl.trans(xt), acc, input_precision="ieee")
            else:
                acc = tl.dot(qt, tl.trans(xt), acc)
        if HAS_AUX:
            acc += tl.load(AUX + slot, mask=vmask, other=0.0)[None, :]
        sid = tl.load(SID + slot, mask=vmask, other=-1)
        c_k = _to_key(acc)
        c_i = tl.broadcast_to(sid[None, :], [QM, TN])
        own_k = _col_rows(r_k, kcols, kk - 1)
        own_i = _col_rows(r_i, kcols, kk - 1)
        if USE_THRESH:
            g = tl.load(THR + qrow, mask=rvalid, other=_EMPTY_KEY)
        else:
            g = tl.full([QM], _EMPTY_KEY, tl.int64)
        keep = (rvalid[:, None] & vmask[None, :] & (bcol[None, :] >= pb0[:, None]) & (bcol[None, :] < pb1[:, None])
                & _better(c_k, c_i, t_k[:, None], t_i[:, None]) & _better(c_k, c_i, own_k[:, None], own_i[:, None])
                & (c_k >= g[:, None]))
        most = _rmax(_rsum(keep.to(tl.int32), 1, False), 0)
        if most > 0:
            if most <= FAST_M:
                # Few survivors per row (the steady state): pull them out one at a time with
                # row reductions and merge each as a run of one -- no sorting network.
                for m in tl.static_range(FAST_M):
                    if most > m:
                        bk = _rmax(tl.where(keep, c_k, empty_k), 1)
                        bi = _rmin(tl.where(keep & (c_k == bk[:, None]), c_i, _BIG_ID), 1)
                        one = last_col & (bk > _EMPTY_KEY)[:, None]
                        r_k, r_i = _merge_runs(r_k, r_i, tl.where(one, bk[:, None], _EMPTY_KEY),
                                               tl.where(one, bi[:, None], -1), LOG_QM, LOG_KP)
                        keep = keep & (c_i != bi[:, None])
            else:
                c_k = tl.where(keep, c_k, empty_k)
                c_i = tl.where(keep, c_i, empty_i)
                b_k, b_i = _topk_rows(c_k, c_i, LOG_QM, LOG_TN, LOG_KP, 0)
                r_k, r_i = _merge_runs(r_k, r_i, b_k, b_i, LOG_QM, LOG_KP)
            if USE_THRESH:
                own_k = _col_rows(r_k, kcols, kk - 1)
                own_i = _col_rows(r_i, kcols, kk - 1)
                tl.atomic_max(THR + qrow, own_k.to(tl.int64), mask=rvalid & (own_i >= 0))

    cand = tl.load(SP_CAND + ps + rows, mask=rvalid, other=0) + seg * KP
    out = cand[:, None] + kcols[None, :]
    tl.store(CK + out, r_k, mask=rvalid[:, None])
    tl.store(CI + out, r_i, mask=rvalid[:, None])


@triton.jit
def _merge_kernel(
    TOP_S, TOP_I, TOP_K, stride_top, max_k, META, CK, CI,
    KP: tl.constexpr, LOG_KP: tl.constexpr,
):
    r = tl.program_id(0)
    if r >= tl.load(META + tl.load(META + 0) + 1):
        return
    QPTR = META + tl.load(META + 12)
    P_CAND = META + tl.load(META + 13)
    P_NCH = META + tl.load(META + 14)
    p0 = tl.load(QPTR + r)
    p1 = tl.load(QPTR + r + 1)
    if p0 == p1:
        return
    k = tl.load(TOP_K + r)
    cols = tl.arange(0, KP)
    cm = cols < max_k
    s = tl.load(TOP_S + r * stride_top + cols, mask=cm, other=0.0)
    i = tl.load(TOP_I + r * stride_top + cols, mask=cm, other=-1)
    valid = i >= 0
    r_k = tl.where(valid, _to_key(s), _EMPTY_KEY)
    r_i = tl.where(valid, i, -1)
    # NOTE: sort the row once (rows written by other backends may order ties differently).
    r_k, r_i = _topk_rows(r_k[None, :], r_i[None, :], 0, LOG_KP, LOG_KP, 1)
    for p in range(p0, p1):
        c0 = tl.load(P_CAND + p)
        nch = tl.load(P_NCH + p)
        for c in range(0, nch):
            base = c0 + c * KP
            kth_k = _rsum(_col(r_k, cols, k - 1), 0, False)
            kth_i = _rsum(_col(r_i, cols, k - 1), 0, False)
            if _better(tl.load(CK + base), tl.load(CI + base), kth_k, kth_i):
                b_k = tl.load(CK + base + (KP - 1 - cols))  # reversed: worst first
                b_i = tl.load(CI + base + (KP - 1 - cols))
                r_k, r_i = _merge_runs(r_k, r_i, b_k[None, :], b_i[None, :], 0, LOG_KP)
    keep = (cols[None, :] < k) & (r_i >= 0)
    out_s = tl.where(keep, _from_key(r_k), _NEG_INF)
    out_i = tl.where(keep, r_i, -1)
    tl.store(TOP_S + r * stride_top + cols[None, :], out_s, mask=cm[None, :])
    tl.store(TOP_I + r * stride_top + cols[None, :], out_i, mask=cm[None, :])

