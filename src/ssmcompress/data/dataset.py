"""The `Dataset` container shared by every data source, and `DataError`.

A dataset is three splits (train / val / test) of sequences with labels:

* real-valued data: ``x`` float32 of shape ``(samples, length, features)``,
  standardised per feature with mean/std of the *training* split only;
* token data: ``x`` int64 of shape ``(samples, length)``, right-padded with
  ``pad_id`` (0), the valid length of every sequence in ``len_*``.

``y`` is int64 class labels ``0 .. n_classes-1`` (classification) or float32
targets (regression, only for a user's ``.npz`` that asks for it).

The ``NAME:DIR`` loaders of benchmark files hand out ``x`` as a
:class:`~ssmcompress.data.stored.StoredSequences` instead of an array: the
stored uint8 / int16 data, indexed by rows like an array (``x[rows]``,
``x[i:j]``, ``len(x)``, ``x.shape``) and converted to the float32 (or int64
token) batch only for the rows asked for; ``np.asarray(x)`` converts all.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import numpy as np

SPLITS = ("train", "val", "test")


class DataError(ValueError):
    """Bad data or a bad data request; the message is one sentence naming the problem."""


@dataclass
class Dataset:
    """Train / val / test splits of one sequence task.

    Attributes
    ----------
    name : str
        Built-in name, or the file name of a user's ``.npz``.
    x_train, x_val, x_test : np.ndarray or StoredSequences
        float32 ``(samples, length, features)``, or int64 tokens ``(samples, length)``
        (converted per batch for a StoredSequences).
    y_train, y_val, y_test : np.ndarray
        int64 ``(samples,)`` class labels, or float32 ``(samples,)`` /
        ``(samples, targets)`` regression targets.
    len_train, len_val, len_test : np.ndarray or None
        int64 ``(samples,)`` valid lengths (tokens after them are padding), or
        None when every sequence has the full length ``seq_len``.
    task : str
        ``"classification"`` or ``"regression"``.
    n_classes : int or None
        Number of classes (None for regression).
    d_input : int or None
        Features per time step for real-valued data, None for tokens.
    vocab_size : int or None
        Token ids are ``0 .. vocab_size-1`` for token data, None otherwise.
    seq_len : int
        Length of the (padded) sequences.
    pad_id : int or None
        Token id used for padding (0) for token data, None otherwise.
    normalization : dict or None
        ``{"mean": (features,), "std": (features,)}`` float64, computed on the
        training split only and already applied to all three splits; None for
        token data.
    vocab : tuple of str or None
        Token strings indexed by id (token data), None otherwise.
    info : dict
        Free-form facts about the source (split seed, generator options, ...).
    """

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    task: str = "classification"
    n_classes: Optional[int] = None
    d_input: Optional[int] = None
    vocab_size: Optional[int] = None
    seq_len: int = 0
    pad_id: Optional[int] = None
    len_train: Optional[np.ndarray] = None
    len_val: Optional[np.ndarray] = None
    len_test: Optional[np.ndarray] = None
    normalization: Optional[dict] = None
    vocab: Optional[tuple] = None
    info: dict = field(default_factory=dict)

    @property
    def is_tokens(self) -> bool:
        """True for integer token sequences (use an embedding), False for real features."""
        return self.vocab_size is not None

    def split(self, name: str):
        """Return ``(x, y, lengths)`` of split ``name`` ("train", "val" or "test").

        ``lengths`` is None when all sequences have the full length.
        """
        if name not in SPLITS:
            raise DataError(f"Unknown split {name!r}; use one of {', '.join(SPLITS)}.")
        return (getattr(self, f"x_{name}"), getattr(self, f"y_{name}"),
                getattr(self, f"len_{name}"))

    def model_shape(self) -> dict:
        """The ``SequenceModel`` arguments this data fixes: d_input, d_output, task, l_max, vocab_size."""
        return dict(d_input=self.d_input if self.d_input is not None else 1,
                    d_output=self.n_classes if self.task == "classification" else 1,
                    task=self.task, l_max=self.seq_len, vocab_size=self.vocab_size)

    def sizes(self) -> dict:
        """Number of samples per split, ``{"train": n, "val": n, "test": n}``."""
        return {s: int(len(getattr(self, f"y_{s}"))) for s in SPLITS}

    def describe(self) -> str:
        """One-line summary, e.g. for logs and the CLI."""
        n = self.sizes()
        if self.is_tokens:
            inputs = f"tokens (vocab {self.vocab_size}, pad {self.pad_id})"
        else:
            inputs = f"{self.d_input} feature{'s' if self.d_input != 1 else ''}"
        if self.task == "classification":
            target = f"{self.n_classes} classes"
        else:
            shape = self.y_train.shape[1:]
            target = f"regression ({shape[0] if shape else 1} target{'s' if shape and shape[0] != 1 else ''})"
        return (f"{self.name}: {n['train']}/{n['val']}/{n['test']} train/val/test sequences "
                f"of length {self.seq_len}, {inputs}, {target}")

    def __repr__(self) -> str:  # the arrays would flood the console
        return f"Dataset({self.describe()})"
