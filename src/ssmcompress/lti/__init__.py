"""Numerics of batched diagonal LTI systems (numpy, float64 / complex128; never torch).

``DiagonalSSM`` stores SISO channels as half-conjugate modes; ``gramians`` gives
their Gramians in closed form and factors that cannot fail; ``balanced`` does
Hankel singular values, square-root balanced truncation and balanced singular
perturbation on the real system; ``h2`` H2-optimal reduction (IRKA); ``modal``
modal truncation by per-mode H-infinity or H2 scores; ``diagonalize`` turns a
dense reduced system back into diagonal modes.
"""
from .balanced import (BalancedReductionResult, BalancedTruncationResult, balanced_singular_perturbation,
                       balanced_truncation, hankel_singular_values)
from .diagonalize import diagonalize
from .gramians import (
    cauchy_cholesky,
    conjugate_closure,
    controllability_gramian,
    gramian_factors,
    observability_gramian,
    pivoted_cholesky,
)
from .h2 import H2Result, h2_optimal
from .modal import ModalTruncationResult, modal_truncation, mode_scores
from .system import DiagonalSSM

__all__ = [
    "DiagonalSSM",
    "hankel_singular_values",
    "balanced_truncation",
    "balanced_singular_perturbation",
    "BalancedReductionResult",
    "BalancedTruncationResult",
    "h2_optimal",
    "H2Result",
    "modal_truncation",
    "mode_scores",
    "ModalTruncationResult",
    "controllability_gramian",
    "observability_gramian",
    "gramian_factors",
    "conjugate_closure",
    "cauchy_cholesky",
    "pivoted_cholesky",
    "diagonalize",
]
