"""Benchmark: batched balanced truncation (ssmcompress.lti) vs a python-control/slycot loop.

Reduces every channel of a 6-layer, 256-channel model (1536 SISO systems, Skew-HiPPO-like
modes perturbed as by training, continuous time) from state size N to r = 16 in ONE
vectorised call, and the same systems one by one with slycot's ab09ad (square-root
balanced truncation, the routine behind ``control.balred``) on ``control.ss(*sys.to_real())``.
Also times python-control's ``balred`` loop.  Prints the times, the speed ratios and the
largest relative Hankel-singular-value difference (over values >= 1e-12 of each
channel's largest).

    python benchmarks/bench_reduce.py [--n-state 64 256] [--slycot-max 1536] [--workers 2]
"""
from __future__ import annotations

import argparse
import os
import time

import numpy as np

from ssmcompress.lti import DiagonalSSM, balanced_truncation, hankel_singular_values


def skew_hippo_modes(N):
    """Eigenvalues (Im > 0 half) of the normal part of HiPPO-LegS of size N: -1/2 + i w."""
    q = np.sqrt(2.0 * np.arange(N) + 1.0)
    skew = 0.5 * (np.tril(np.outer(q, q), -1) - np.triu(np.outer(q, q), 1))  # S + I/2, skew-symmetric
    w = np.linalg.eigvalsh(-1j * skew)                                     # eigenvalues of skew are i w
    w = np.sort(w[w > 0])
    return -0.5 + 1j * w[: N // 2]


def trained_like_model(n_state, layers=6, channels=256, seed=0):
    rng = np.random.default_rng(seed)
    H, n = layers * channels, n_state // 2
    lam0 = skew_hippo_modes(n_state)
    re = -0.5 * np.exp(rng.normal(0.0, 0.7, (H, n)))                      # trained real parts spread out
    im = lam0.imag * (1.0 + 0.05 * rng.normal(size=(H, n)))
    B = rng.normal(size=(H, n)) + 1j * rng.normal(size=(H, n))
    C = (rng.normal(size=(H, n)) + 1j * rng.normal(size=(H, n))) * np.exp(rng.normal(0, 1, (H, 1)))
    dt = np.exp(rng.uniform(np.log(1e-3), np.log(1e-1), H))
    return DiagonalSSM(re + 1j * im, B, C, D=rng.normal(size=H), dt=dt)


def slycot_loop(sys, r):
    """slycot ab09ad (square-root balanced truncation) per system, on control.ss(*to_real())."""
    import control
    import slycot

    A, B, C, D = sys.to_real()
    hsv = np.zeros((A.shape[0], A.shape[-1]))
    for h in range(A.shape[0]):
        G = control.ss(A[h], B[h], C[h], D[h])
        out = slycot.ab09ad("C", "B", "N", G.nstates, 1, 1, G.A.copy(), G.B.copy(), G.C.copy(), nr=r)
        hsv[h, : len(out[-1])] = out[-1]
    return hsv


def balred_loop(sys, r):
    """python-control's balred (which calls slycot ab09ad) plus its hsvd, per system."""
    import control

    A, B, C, D = sys.to_real()
    for h in range(A.shape[0]):
        control.balred(control.ss(A[h], B[h], C[h], D[h]), r, method="truncate")


def chunked_products(sys, workers):
    """The chunks ``balanced_truncation`` uses and each chunk's products ``Fq^T Fp``, keyed by start."""
    from ssmcompress.lti import balanced

    chunks = balanced._chunks(sys.batch_shape[0], sys.order, workers)
    return chunks, {sl.start: balanced._real_factors(sys[sl], None)[2] for sl in chunks}


def lapack_svd_time(sys, workers, repeats):
    """Seconds for numpy's batched LAPACK SVD alone (full, and values only) of the products
    ``Fq^T Fp`` of all channels, on the same worker threads and chunks as balanced_truncation."""
    from ssmcompress.lti import balanced

    flat, m = sys.batch_shape[0], sys.order
    _, Ms = chunked_products(sys, workers)
    full = _best_of(lambda: balanced._map_chunks(lambda sl: np.linalg.svd(Ms[sl.start]), flat, m, workers),
                    repeats)[0]
    values = _best_of(lambda: balanced._map_chunks(lambda sl: np.linalg.svd(Ms[sl.start], compute_uv=False),
                                                   flat, m, workers), repeats)[0]
    return full, values


def _best_of(fn, repeats):
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n-state", type=int, nargs="+", default=[64, 256])
    ap.add_argument("--order", type=int, default=16)
    ap.add_argument("--workers", type=int, default=None, help="threads for ssmcompress (default: all CPUs)")
    ap.add_argument("--repeats", type=int, default=3, help="best of this many runs of the vectorised call")
    ap.add_argument("--slycot-max", type=int, default=None,
                    help="systems in the reference loops (time scaled up); default all for N<=64, 128 above")
    args = ap.parse_args()
    import control  # noqa: F401  (imported here so that no loop pays for the import)
    import slycot  # noqa: F401

    for N in args.n_state:
        sys = trained_like_model(N)
        H = sys.batch_shape[0]
        k = min(H, args.slycot_max or (H if N <= 64 else 128))
        balanced_truncation(sys[:8], order=args.order, workers=args.workers)    # warm-up, not timed
        slycot_loop(sys[:2], args.order)
        balred_loop(sys[:2], args.order)
        t_ours, res = _best_of(lambda: balanced_truncation(sys, order=args.order, workers=args.workers),
                               args.repeats)
        t_ref, ref = _best_of(lambda: slycot_loop(sys[:k], args.order), 1)
        t_ref *= H / k
        t_balred, _ = _best_of(lambda: balred_loop(sys[:k], args.order), 1)
        t_balred *= H / k
        # the LAPACK floor of any SVD-based method: the singular values alone of the 1536 products
        # Fq^T Fp, on the same worker threads (no factors, no vectors, no reduced systems)
        t_floor, _ = _best_of(lambda: hankel_singular_values(sys, workers=args.workers), args.repeats)
        t_svd = lapack_svd_time(sys, args.workers, args.repeats) if N <= 128 else None
        ours = res.hsv[:k]
        keep = ref >= 1e-12 * ref[:, :1]
        rel = np.abs(ours - ref) / np.where(keep, ref, 1.0)
        scaled = "" if k == H else f" (loops timed on {k} systems, scaled to {H})"
        load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
        print(f"N={N:4d}, {H} systems, r={args.order}{scaled}; {os.cpu_count()} CPUs, "
              f"workers={args.workers or os.cpu_count()}, load average {load:.1f}:")
        print(f"  ssmcompress balanced_truncation (one call) {t_ours:8.3f} s   (best of {args.repeats})")
        print(f"  slycot ab09ad loop                         {t_ref:8.3f} s   ratio {t_ref / t_ours:6.1f}x")
        print(f"  control.balred loop                        {t_balred:8.3f} s   ratio {t_balred / t_ours:6.1f}x")
        print(f"  ssmcompress hankel_singular_values only    {t_floor:8.3f} s   ratio {t_ref / t_floor:6.1f}x "
              f"(values only: factors + values-only SVD)")
        if t_svd is not None:
            print(f"  LAPACK SVD alone of the {H} products Fq^T Fp: full (gesdd) {t_svd[0]:.3f} s -> at most "
                  f"{t_ref / t_svd[0]:.1f}x for any method using it; values only {t_svd[1]:.3f} s -> at most "
                  f"{t_ref / t_svd[1]:.1f}x")
        print(f"  max rel HSV diff vs slycot (values >= 1e-12 of largest) {rel[keep].max():.2e}; "
              f"largest abs diff / largest HSV {np.max(np.abs(ours - ref) / ref[:, :1]):.1e}; "
              f"reduced stable: {bool(res.system.is_stable().all())}; stored modes {res.system.n_modes}")


if __name__ == "__main__":
    main()
