"""A user's arrays in an ``.npz`` file, validated at the boundary.

Keys: ``x_train, y_train, x_test, y_test`` and optionally ``x_val, y_val``
(both or neither; without them a validation split is carved from the training
split, stratified by class for classification). Other keys are ignored.

* ``x``: ``(samples, length)`` or ``(samples, length, features)``, numeric.
  Real-valued by default (integer arrays are cast to float32) and
  standardised per feature with the training split's mean and std. With the
  option ``tokens=True``, ``x`` holds non-negative integer token ids of shape
  ``(samples, length)``; ``vocab_size`` is the largest id + 1 and id 0 is the
  padding id (every sequence is taken as full length unless lengths are given).
* ``y``: ``(samples,)`` integer class labels ``0 .. C-1`` (float arrays with
  whole-number values are accepted). With ``task="regression"``, real-valued
  targets ``(samples,)`` or ``(samples, targets)`` instead.

* ``lengths_train, lengths_test`` (and ``lengths_val`` with ``x_val``), optional:
  the true length of every sequence in a right-padded ``x``, integers in
  ``1 .. length``. Give them for every split or for none. Only the valid
  steps are checked for NaN/inf and enter the normalisation statistics;
  padded steps become 0 (pad id 0 for tokens), whatever the file holds there,
  and the model pools over the valid steps only (``Dataset.len_*``).

Every problem is reported as a DataError with one sentence; nothing is
unpickled (``allow_pickle=False``).
"""
from __future__ import annotations

import os
import zipfile

import numpy as np

from .dataset import DataError, Dataset
from .splits import DEFAULT_DATA_SEED, split_indices, standardize

REQUIRED_KEYS = ("x_train", "y_train", "x_test", "y_test")
OPTIONAL_KEYS = ("x_val", "y_val")
LENGTH_KEYS = ("lengths_train", "lengths_val", "lengths_test")
NPZ_OPTIONS = ("task", "tokens", "data_seed")
TASKS = ("classification", "regression")
_EXPECTED = "x_train, y_train, x_test, y_test (and optionally x_val, y_val)"


def _read(path: str) -> dict:
    """Read the arrays we need from ``path`` without unpickling anything."""
    name = os.path.basename(path)
    try:
        f = np.load(path, allow_pickle=False)
    except ValueError:  # numpy's words for "neither zip nor .npy": it refuses to unpickle
        raise DataError(f"{name} is not a valid .npz file; save the arrays with numpy.savez "
                        "(pickled data are never loaded).") from None
    except (OSError, EOFError, zipfile.BadZipFile) as e:
        raise DataError(f"{name} cannot be read as an .npz file ({type(e).__name__}: {e}); "
                        "save the arrays with numpy.savez.") from None
    if isinstance(f, np.ndarray):
        raise DataError(f"{name} holds a single array (.npy format), not named arrays; save them "
                        "with numpy.savez(path, x_train=..., y_train=..., x_test=..., y_test=...).")
    with f:
        keys = set(f.files)
        for key in REQUIRED_KEYS:
            if key not in keys:
                raise DataError(f"{name} has no array {key!r}; expected keys {_EXPECTED}, "
                                f"found {', '.join(sorted(keys)) or 'none'}.")
        has_val = [k in keys for k in OPTIONAL_KEYS]
        if any(has_val) and not all(has_val):
            present, absent = (OPTIONAL_KEYS if has_val[0] else OPTIONAL_KEYS[::-1])
            raise DataError(f"{name} has {present!r} but no {absent!r}; give both x_val and y_val, "
                            "or neither to carve validation data from the training split.")
        given = [k for k in LENGTH_KEYS if k in keys]
        if given:
            needed = ("lengths_train", "lengths_test") + (("lengths_val",) if all(has_val) else ())
            for k in needed:
                if k not in keys:
                    raise DataError(f"{name} has {given[0]!r} but no {k!r}; give the lengths of every split "
                                    "(lengths_train, lengths_test and, with x_val, lengths_val) or of none.")
            if "lengths_val" in keys and not all(has_val):
                raise DataError(f"{name} has 'lengths_val' but no x_val; drop lengths_val or add x_val, y_val.")
        arrays = {}
        for key in REQUIRED_KEYS + (OPTIONAL_KEYS if all(has_val) else ()) + tuple(given):
            try:
                arrays[key] = f[key]
            except ValueError as e:
                if "pickle" in str(e) or "Object arrays" in str(e):
                    raise DataError(f"Array {key!r} in {name} holds Python objects (dtype object), "
                                    "which are not loaded; save plain numeric arrays.") from None
                raise DataError(f"Array {key!r} in {name} cannot be read ({e}).") from None
            except (OSError, EOFError, zipfile.BadZipFile, KeyError) as e:
                raise DataError(f"Array {key!r} in {name} cannot be read "
                                f"({type(e).__name__}: {e}); the file may be damaged.") from None
            if not isinstance(arrays[key], np.ndarray):  # numpy hands back raw bytes
                raise DataError(f"Array {key!r} in {name} cannot be read (not in .npy format); "
                                "save the arrays with numpy.savez.")
    return arrays


def _check_numeric(key: str, a: np.ndarray) -> None:
    if a.dtype == object:
        raise DataError(f"Array {key!r} holds Python objects (dtype object); save plain numeric arrays.")
    if not (np.issubdtype(a.dtype, np.number) or a.dtype == np.bool_):
        raise DataError(f"Array {key!r} has dtype {a.dtype}, not numbers; save it as integers or floats.")
    if np.iscomplexobj(a):
        raise DataError(f"Array {key!r} is complex; save real-valued arrays.")


def _count_nonfinite(a: np.ndarray) -> int:
    if np.issubdtype(a.dtype, np.floating):
        return int(a.size - np.count_nonzero(np.isfinite(a)))
    return 0


def _check_lengths(split: str, lengths: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Validate ``lengths_<split>`` against its padded ``x``; return int64 (samples,)."""
    key = f"lengths_{split}"
    _check_numeric(key, lengths)
    if lengths.ndim != 1 or lengths.shape[0] != x.shape[0]:
        raise DataError(f"{key} has shape {lengths.shape}; expected ({x.shape[0]},), one length per "
                        f"sequence of x_{split}.")
    if np.issubdtype(lengths.dtype, np.floating) and not np.isfinite(lengths).all():
        raise DataError(f"{key} contains NaN or infinite values; lengths must be integers.")
    li = lengths.astype(np.int64)
    if not np.array_equal(li, lengths):
        raise DataError(f"{key} holds non-integer values; lengths must be integers 1..{x.shape[1]}.")
    if li.size and (li.min() < 1 or li.max() > x.shape[1]):
        raise DataError(f"{key} holds lengths from {li.min()} to {li.max()}; every length must lie in "
                        f"1..{x.shape[1]}, the padded length of x_{split}.")
    return li


def valid_steps(lengths: np.ndarray, length: int) -> np.ndarray:
    """Boolean (samples, length) mask of the steps before each sequence's length."""
    return np.arange(length)[None, :] < np.asarray(lengths)[:, None]


def _check_split(split: str, x: np.ndarray, y: np.ndarray, tokens: bool, task: str, lengths=None):
    """Validate one split; return x (float64 or int64) and y (int64 or float32).

    With ``lengths`` (validated int64), only the valid steps are checked and the
    padded steps of the returned x are 0.
    """
    xk, yk = f"x_{split}", f"y_{split}"
    _check_numeric(xk, x)
    _check_numeric(yk, y)
    if tokens:
        if x.ndim == 3 and x.shape[2] == 1:
            x = x[:, :, 0]
        if x.ndim != 2:
            raise DataError(f"{xk} has shape {x.shape}; token data (tokens=True) must have "
                            "shape (samples, length).")
    elif x.ndim not in (2, 3):
        raise DataError(f"{xk} has shape {x.shape}; expected (samples, length) or "
                        "(samples, length, features).")
    if x.shape[0] == 0:
        raise DataError(f"{xk} is empty (0 samples); every split needs at least one sample.")
    if x.shape[1] == 0 or (x.ndim == 3 and x.shape[2] == 0):
        raise DataError(f"{xk} has shape {x.shape}; sequences need a length and a feature count of at least 1.")
    if task == "classification" and y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if task == "classification" and y.ndim != 1:
        raise DataError(f"{yk} has shape {y.shape}; class labels must have shape (samples,).")
    if task == "regression" and y.ndim not in (1, 2):
        raise DataError(f"{yk} has shape {y.shape}; regression targets must have shape "
                        "(samples,) or (samples, targets).")
    if y.shape[0] != x.shape[0]:
        raise DataError(f"{xk} has {x.shape[0]} samples but {yk} has {y.shape[0]}; "
                        "each sample needs exactly one label.")
    if lengths is not None:
        x = np.where(valid_steps(lengths, x.shape[1]).reshape(x.shape[:2] + (1,) * (x.ndim - 2)), x, 0)
    for key, a in ((xk, x), (yk, y)):
        bad = _count_nonfinite(a)
        if bad:
            raise DataError(f"{key} contains {bad} NaN or infinite value{'s' if bad != 1 else ''}; "
                            "remove or impute them.")
    if tokens:
        xi = x.astype(np.int64)
        if not np.array_equal(xi, x):
            raise DataError(f"{xk} holds non-integer values, but tokens=True needs integer token ids.")
        if xi.min() < 0:
            raise DataError(f"{xk} holds negative token ids (smallest {xi.min()}); "
                            "token ids must be 0 or larger.")
        x = xi
    else:
        x = x.astype(np.float64)
        if x.ndim == 2:
            x = x[:, :, None]
    if task == "classification":
        with np.errstate(invalid="ignore"):
            yi = y.astype(np.int64)
        if not np.array_equal(yi, y):
            example = y[yi != y][0]
            raise DataError(f"{yk} holds non-integer labels (e.g. {example!r}); class labels must be "
                            "integers 0..C-1 (pass task='regression' for real-valued targets).")
        if yi.min() < 0:
            raise DataError(f"{yk} holds negative labels (smallest {yi.min()}); "
                            "class labels must be integers 0..C-1.")
        y = yi
    else:
        y = y.astype(np.float32)
    return x, y


def load_npz(path, val_fraction: float = 0.1, data_seed: int = DEFAULT_DATA_SEED,
             task: str = "classification", tokens: bool = False) -> Dataset:
    """Load and validate a user's ``.npz`` (see the module docstring)."""
    if task not in TASKS:
        raise DataError(f"task must be 'classification' or 'regression', got {task!r}.")
    if not isinstance(tokens, (bool, np.bool_)):
        raise DataError(f"tokens must be True or False, got {tokens!r}.")
    path = os.fspath(path)
    raw = _read(path)
    splits = [s for s in ("train", "val", "test") if f"x_{s}" in raw]
    lengths = {}
    if "lengths_train" in raw:
        for s in splits:
            if raw[f"x_{s}"].ndim < 2:
                raise DataError(f"x_{s} has shape {raw[f'x_{s}'].shape}; expected (samples, length) or "
                                "(samples, length, features).")
            lengths[s] = _check_lengths(s, raw[f"lengths_{s}"], raw[f"x_{s}"])
    data = {s: _check_split(s, raw[f"x_{s}"], raw[f"y_{s}"], bool(tokens), task, lengths.get(s))
            for s in splits}

    x_tr, y_tr = data["train"]
    for s in splits[1:]:
        x, y = data[s]
        if x.shape[1] != x_tr.shape[1]:
            raise DataError(f"x_{s} has sequences of length {x.shape[1]} but x_train has length "
                            f"{x_tr.shape[1]}; all splits need the same length.")
        if x.shape[2:] != x_tr.shape[2:]:
            raise DataError(f"x_{s} has {x.shape[2]} features per step but x_train has "
                            f"{x_tr.shape[2]}; all splits need the same feature count.")
        if y.shape[1:] != y_tr.shape[1:]:
            raise DataError(f"y_{s} has shape {y.shape} but y_train has shape {y_tr.shape}; "
                            "all splits need the same number of targets per sample.")

    if task == "classification" and len(np.unique(y_tr)) < 2:
        raise DataError(f"y_train has a single class ({y_tr[0]}); classification needs at "
                        "least two classes (pass task='regression' for real-valued targets).")
    info = {"source": path, "data_seed": int(data_seed)}
    if "val" not in data:
        keep, val = split_indices(y_tr, val_fraction, np.random.default_rng([int(data_seed), 2]),
                                  stratify=(task == "classification"))
        data["val"] = (x_tr[val], y_tr[val])
        data["train"] = (x_tr[keep], y_tr[keep])
        info["val_fraction"] = val_fraction
        if lengths:
            lengths["val"], lengths["train"] = lengths["train"][val], lengths["train"][keep]
    (x_tr, y_tr), (x_va, y_va), (x_te, y_te) = data["train"], data["val"], data["test"]

    n_classes = None
    if task == "classification":
        n_classes = int(max(y_tr.max(), y_va.max(), y_te.max())) + 1

    common = dict(name=os.path.splitext(os.path.basename(path))[0], y_train=y_tr, y_val=y_va,
                  y_test=y_te, task=task, n_classes=n_classes, seq_len=int(x_tr.shape[1]), info=info,
                  len_train=lengths.get("train"), len_val=lengths.get("val"), len_test=lengths.get("test"))
    if tokens:
        vocab_size = int(max(x_tr.max(), x_va.max(), x_te.max())) + 1
        return Dataset(x_train=x_tr, x_val=x_va, x_test=x_te, vocab_size=vocab_size, pad_id=0,
                       **common)
    (x_tr, x_va, x_te), norm = standardize(x_tr, x_va, x_te, lengths=(
        (lengths["train"], lengths["val"], lengths["test"]) if lengths else None))
    return Dataset(x_train=x_tr, x_val=x_va, x_test=x_te, d_input=int(x_tr.shape[2]),
                   normalization=norm, **common)
