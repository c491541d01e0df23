"""Numerics of batched diagonal LTI systems (numpy, float64 / complex128; never torch).

``DiagonalSSM`` stores SISO channels as half-conjugate modes; ``gramians`` gives
their Gramians in closed form and factors that cannot fail; ``balanced`` does
Hankel singular values and square-root balanced truncation on the real system;
``diagonalize`` turns a dense reduced system back into diagonal modes.
"""
from .balanced import BalancedTruncationResult, balanced_truncation, hankel_singular_values
from .diagonalize import diagonalize
from .gramians import (
    cauchy_cholesky,
    conjugate_closure,
    controllability_gramian,
    gramian_factors,
    observability_gramian,
    pivoted_cholesky,
)
from .system import DiagonalSSM

__all__ = [
    "DiagonalSSM",
    "hankel_singular_values",
    "balanced_truncation",
    "BalancedTruncationResult",
    "controllability_gramian",
    "observability_gramian",
    "gramian_factors",
    "conjugate_closure",
    "cauchy_cholesky",
    "pivoted_cholesky",
    "diagonalize",
]
