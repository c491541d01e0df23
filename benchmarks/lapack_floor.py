"""The LAPACK floor of SVD-based balanced truncation at N = 64 (context for bench_reduce.py).

Any square-root balanced truncation of the 1536 channels must at least (per channel)
bidiagonalise the 64 x 64 product ``Fq^T Fp`` (``dgebrd``), get all its singular values to
relative accuracy (``dlasq1``, dqds), turn r bidiagonal singular vectors on each side into
vectors of the product (``dormbr`` twice) and eigen-decompose the r x r reduced A
(``geev``).  This script times exactly these LAPACK calls (scipy's ``cython_lapack`` entry
points through ctypes, no Python work in between that would not be needed) on the same
worker threads as ``balanced_truncation`` and prints the largest speed-up over the slycot
loop that ANY such implementation could reach if factors, bidiagonal vectors, projections
and checks cost nothing.

    python benchmarks/lapack_floor.py [--workers 2]
"""
from __future__ import annotations

import argparse
import ctypes
import os
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from scipy.linalg import cython_lapack
from threadpoolctl import threadpool_limits

from bench_reduce import chunked_products, slycot_loop, trained_like_model

_ptr = ctypes.pythonapi.PyCapsule_GetPointer
_ptr.restype, _ptr.argtypes = ctypes.c_void_p, [ctypes.py_object, ctypes.c_char_p]
_name = ctypes.pythonapi.PyCapsule_GetName
_name.restype, _name.argtypes = ctypes.c_char_p, [ctypes.py_object]


def lapack(name, nargs):
    cap = cython_lapack.__pyx_capi__[name]
    return ctypes.CFUNCTYPE(None, *([ctypes.c_void_p] * nargs))(_ptr(cap, _name(cap)))


dgebrd, dlasq1, dormbr = lapack("dgebrd", 11), lapack("dlasq1", 5), lapack("dormbr", 14)


def floor_chunk(M, r):
    """dgebrd + dlasq1 + 2 x dormbr (r vectors) for every matrix of M (F, m, m)."""
    F, m, _ = M.shape
    A = np.array(M.swapaxes(1, 2), order="C")                 # row-major M^T = column-major M
    d, e, tq, tp = (np.zeros((F, m)) for _ in range(4))
    lwork = 64 * m
    work = np.empty(lwork)
    ref = ctypes.byref
    mm, rr, lw, info = ctypes.c_int(m), ctypes.c_int(r), ctypes.c_int(lwork), ctypes.c_int(0)
    X = np.zeros((r, m))
    for f in range(F):
        dgebrd(ref(mm), ref(mm), A[f].ctypes.data, ref(mm), d[f].ctypes.data, e[f].ctypes.data,
               tq[f].ctypes.data, tp[f].ctypes.data, work.ctypes.data, ref(lw), ref(info))
        dlasq1(ref(mm), d[f].ctypes.data, e[f].ctypes.data, work.ctypes.data, ref(info))
        for vect, tau in ((b"Q", tq[f]), (b"P", tp[f])):
            dormbr(vect, b"L", b"N", ref(mm), ref(rr), ref(mm), A[f].ctypes.data, ref(mm), tau.ctypes.data,
                   X.ctypes.data, ref(mm), work.ctypes.data, ref(lw), ref(info))
    return d


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workers", type=int, default=os.cpu_count())
    ap.add_argument("--order", type=int, default=16)
    args = ap.parse_args()
    sys = trained_like_model(64)
    H, r = sys.batch_shape[0], args.order
    chunks, products = chunked_products(sys, args.workers)
    Ms = list(products.values())
    Ar = np.random.default_rng(0).normal(size=(H, r, r))
    with threadpool_limits(1), ThreadPoolExecutor(args.workers) as pool:
        list(pool.map(lambda M: floor_chunk(M[:4], r), Ms))                         # warm-up
        t0 = time.perf_counter()
        list(pool.map(lambda M: floor_chunk(M, r), Ms))
        t_svd = time.perf_counter() - t0
        t0 = time.perf_counter()
        list(pool.map(lambda sl: np.linalg.eig(Ar[sl]), chunks))
        t_eig = time.perf_counter() - t0
    slycot_loop(sys[:2], r)
    t0 = time.perf_counter()
    slycot_loop(sys, r)
    t_ref = time.perf_counter() - t0
    floor = t_svd + t_eig
    print(f"N=64, {H} systems, r={r}, {args.workers} workers:")
    print(f"  dgebrd + dlasq1 + 2 x dormbr (r vectors) per system  {t_svd:7.3f} s")
    print(f"  eig of the r x r reduced A per system               {t_eig:7.3f} s")
    print(f"  LAPACK floor {floor:.3f} s; slycot ab09ad loop {t_ref:.3f} s -> at most {t_ref / floor:.1f}x "
          f"for any SVD-based balanced truncation with nothing else to do")


if __name__ == "__main__":
    main()
