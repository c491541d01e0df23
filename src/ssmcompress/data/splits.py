"""Seeded (stratified) splits and train-only standardisation."""
from __future__ import annotations

import numpy as np

from .dataset import DataError

# Splits of the built-in data use this seed unless the caller passes ``data_seed``:
# the training seed never changes which samples are in train, val or test.
DEFAULT_DATA_SEED = 0


def check_fraction(value, what: str) -> float:
    """Return ``value`` as a float in (0, 1), or raise DataError naming ``what``."""
    try:
        f = float(value)
    except (TypeError, ValueError):
        raise DataError(f"{what} must be a number between 0 and 1 (exclusive), got {value!r}.") from None
    if not 0.0 < f < 1.0:
        raise DataError(f"{what} must be between 0 and 1 (exclusive), got {value!r}.")
    return f


def _allocate(counts: np.ndarray, total: int) -> np.ndarray:
    """Split the integer ``total`` over groups in proportion to ``counts``.

    Largest-remainder rounding, so the result sums to ``total`` exactly and
    each group gets floor or ceil of its proportional share (ties go to the
    earlier group).
    """
    share = counts * (total / counts.sum())
    take = np.floor(share).astype(np.int64)
    remainder = share - take
    order = np.argsort(-remainder, kind="stable")
    take[order[: total - take.sum()]] += 1
    return take


def split_indices(y: np.ndarray, fraction: float, rng: np.random.Generator,
                  stratify: bool = True):
    """Split ``range(len(y))`` into ``(kept, taken)`` index arrays.

    ``taken`` holds ``round(fraction * len(y))`` samples (at least 1, at most
    ``len(y) - 1``); with ``stratify`` every class contributes in proportion to
    its frequency (largest-remainder rounding). Both arrays come in a seeded
    random order.
    """
    n = len(y)
    if n < 2:
        raise DataError(f"Cannot split {n} sample{'s' if n != 1 else ''} in two; "
                        "provide more training samples or an explicit validation split.")
    n_take = min(max(int(round(fraction * n)), 1), n - 1)
    if not stratify:
        perm = rng.permutation(n)
        return perm[n_take:], perm[:n_take]
    classes, inverse, counts = np.unique(y, return_inverse=True, return_counts=True)
    take_per_class = _allocate(counts, n_take)
    kept, taken = [], []
    for c in range(len(classes)):
        members = rng.permutation(np.flatnonzero(inverse == c))
        taken.append(members[: take_per_class[c]])
        kept.append(members[take_per_class[c]:])
    kept = np.concatenate(kept)
    taken = np.concatenate(taken)
    return kept[rng.permutation(len(kept))], taken[rng.permutation(len(taken))]


def standardize(x_train: np.ndarray, *others: np.ndarray, lengths=None):
    """Standardise float data per feature with the mean and std of ``x_train`` only.

    Parameters
    ----------
    x_train : (samples, length, features) array
    *others : arrays of the same feature count (val, test)
    lengths : sequence of int arrays (samples,), optional
        One per array (``x_train`` first): only the steps before each length
        enter the statistics, and the padded steps of the result are 0.

    Returns
    -------
    (x_train, *others) as float32, and ``{"mean": (features,), "std": (features,)}``
    (float64). A constant feature gets std 1, so it maps to 0.
    """
    xt = np.asarray(x_train, dtype=np.float64)
    arrays = (xt,) + others
    masks = [None] * len(arrays) if lengths is None else \
        [np.arange(x.shape[1])[None, :] < np.asarray(n)[:, None] for x, n in zip(arrays, lengths)]
    steps = xt.reshape(-1, xt.shape[2]) if masks[0] is None else xt[masks[0]]
    mean = steps.mean(axis=0)
    std = steps.std(axis=0)
    std = np.where(std > 1e-12 * max(1.0, float(np.abs(mean).max(initial=0.0))), std, 1.0)
    out = []
    for x, mask in zip(arrays, masks):
        z = ((np.asarray(x, dtype=np.float64) - mean) / std).astype(np.float32)
        if mask is not None:
            z[~mask] = 0.0
        out.append(z)
    return out, {"mean": mean, "std": std}
