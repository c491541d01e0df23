"""Inputs kept in their stored form and converted to model inputs one batch at a time.

A 60,000-image sequential MNIST is 47 MB as uint8 but 188 MB as float32, and
Speech Commands is several GB as float32. The loaders for files on the user's
disk therefore hand out a :class:`StoredSequences` instead of a float array:
it holds the raw data (a memory-mapped uint8 file, uint8 arrays, flat token
bytes with offsets, or file paths), and indexing it with a batch of row
numbers returns only those rows, decoded and normalised::

    x = ds.x_train                 # StoredSequences, len(x) == 54000
    xb = x[np.array([5, 17, 3])]   # float32 (3, 784, 1) -- only these rows are converted

The training loop and ``evaluate`` index splits exactly this way, so a plain
numpy array and a ``StoredSequences`` are interchangeable there.
``np.asarray(x)`` converts everything (chunk by chunk) for small data and tests.
"""
from __future__ import annotations

import numpy as np

from .dataset import DataError

# rows converted at once by np.asarray() and by the chunked statistics
CHUNK_ROWS = 1024


class StoredSequences:
    """A split's inputs: ``fetch(rows)`` decodes the stored rows ``rows`` (int64 indices) on demand.

    Parameters
    ----------
    fetch : callable
        ``fetch(rows) -> np.ndarray`` of shape ``(len(rows),) + item_shape`` and dtype ``dtype``
        (a new array each call). ``rows`` index the underlying storage.
    n_rows : int
        Rows in the storage (``rows`` ranges over ``0 .. n_rows-1``).
    item_shape : tuple
        Shape of one sequence, ``(length, features)`` or ``(length,)`` for tokens.
    dtype : numpy dtype of what ``fetch`` returns (float32 inputs or int64 tokens).
    rows : int array, optional
        The storage rows that make up this split, in order (default: all of them).
    """

    def __init__(self, fetch, n_rows: int, item_shape: tuple, dtype, rows=None):
        self._fetch = fetch
        self.item_shape = tuple(int(s) for s in item_shape)
        self.dtype = np.dtype(dtype)
        self.rows = np.arange(int(n_rows), dtype=np.int64) if rows is None else np.asarray(rows, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def shape(self) -> tuple:
        return (len(self.rows),) + self.item_shape

    @property
    def ndim(self) -> int:
        return 1 + len(self.item_shape)

    def _positions(self, index) -> np.ndarray:
        if isinstance(index, slice):
            return np.arange(len(self.rows))[index]
        pos = np.asarray(index)
        if pos.dtype == np.bool_:
            if pos.shape != (len(self.rows),):
                raise IndexError(f"boolean index of shape {pos.shape} does not match {len(self.rows)} rows")
            return np.flatnonzero(pos)
        if not np.issubdtype(pos.dtype, np.integer):
            raise IndexError(f"rows must be indexed by integers, a slice or a boolean mask, got {pos.dtype}")
        pos = pos.astype(np.int64)
        n = len(self.rows)
        if pos.size and (pos.min() < -n or pos.max() >= n):
            raise IndexError(f"row index out of range for {n} rows")
        return np.where(pos < 0, pos + n, pos)

    def __getitem__(self, index) -> np.ndarray:
        """Decoded rows: an int gives one sequence, a slice / int array / mask a batch."""
        if isinstance(index, (int, np.integer)):
            return self[np.array([index])][0]
        if isinstance(index, tuple):
            raise IndexError("StoredSequences is indexed by rows only; index the returned array further")
        pos = self._positions(index)
        if pos.ndim != 1:
            raise IndexError("rows must be a one-dimensional index")
        if pos.size == 0:
            return np.zeros((0,) + self.item_shape, dtype=self.dtype)
        return self._fetch(self.rows[pos])

    def subset(self, positions) -> "StoredSequences":
        """The rows at ``positions`` of this split as a new split (no data copied)."""
        return StoredSequences(self._fetch, 0, self.item_shape, self.dtype, rows=self.rows[self._positions(positions)])

    def __array__(self, dtype=None, copy=None):
        out = np.empty(self.shape, dtype=self.dtype)
        for s in range(0, len(self.rows), CHUNK_ROWS):
            out[s:s + CHUNK_ROWS] = self._fetch(self.rows[s:s + CHUNK_ROWS])
        return out if dtype is None else out.astype(dtype)

    def __repr__(self) -> str:
        return f"StoredSequences(shape={self.shape}, dtype={self.dtype})"


def affine_rows(storage, decode, mean, std, item_shape) -> StoredSequences:
    """Rows of ``storage`` (an array or memmap) decoded by ``decode`` and standardised per feature.

    ``decode(raw_rows) -> float (rows, length, features)``; the result is
    ``((decode(raw) - mean) / std)`` as float32.
    """
    mean = np.asarray(mean, dtype=np.float64)
    std = np.asarray(std, dtype=np.float64)
    scale = 1.0 / std

    def fetch(rows):
        order = np.argsort(rows, kind="stable")          # sequential reads from a memory map
        raw = np.empty((len(rows),) + storage.shape[1:], dtype=storage.dtype)
        raw[order] = storage[rows[order]]
        x = decode(raw).astype(np.float32)
        x -= mean.astype(np.float32)
        x *= scale.astype(np.float32)
        return x

    return StoredSequences(fetch, len(storage), item_shape, np.float32)


def feature_moments(storage, decode, rows, n_features: int):
    """Mean and std per feature of ``decode(storage[rows])`` in float64, CHUNK_ROWS rows at a time.

    A constant feature gets std 1 (it maps to 0), as in ``splits.standardize``.
    """
    total = np.zeros(n_features)
    total_sq = np.zeros(n_features)
    count = 0
    rows = np.sort(np.asarray(rows, dtype=np.int64))
    for s in range(0, len(rows), CHUNK_ROWS):
        x = decode(storage[rows[s:s + CHUNK_ROWS]]).astype(np.float64).reshape(-1, n_features)
        total += x.sum(0)
        total_sq += (x * x).sum(0)
        count += x.shape[0]
    if count == 0:
        raise DataError("Cannot compute normalisation statistics of an empty training split.")
    mean = total / count
    var = np.maximum(total_sq / count - mean * mean, 0.0)
    std = np.sqrt(var)
    std = np.where(std > 1e-12 * max(1.0, float(np.abs(mean).max(initial=0.0))), std, 1.0)
    return mean, std


def ragged_tokens(flat, offsets, max_length: int, offset_id: int = 0) -> StoredSequences:
    """Token sequences stored back to back: row i is ``flat[offsets[i]:offsets[i+1]] + offset_id``.

    Every fetched row is cut to ``max_length`` and right-padded with 0 (the padding id),
    int64 of shape (rows, max_length).
    """
    flat = np.asarray(flat)
    offsets = np.asarray(offsets, dtype=np.int64)

    def fetch(rows):
        out = np.zeros((len(rows), max_length), dtype=np.int64)
        for k, r in enumerate(rows):
            seq = flat[offsets[r]:min(offsets[r + 1], offsets[r] + max_length)]
            out[k, :len(seq)] = seq
            out[k, :len(seq)] += offset_id
        return out

    return StoredSequences(fetch, len(offsets) - 1, (max_length,), np.int64)


def ragged_lengths(offsets, max_length: int) -> np.ndarray:
    """Valid length of every row of :func:`ragged_tokens`, int64."""
    return np.minimum(np.diff(np.asarray(offsets, dtype=np.int64)), max_length)
