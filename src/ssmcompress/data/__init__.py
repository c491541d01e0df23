"""Data: built-in offline datasets, the ListOps generator, and a user's ``.npz``.

>>> from ssmcompress.data import load_dataset, builtin_names
>>> ds = load_dataset("digits")            # or "smnist", "mnist1d", "listops", "my.npz", "mnist:DIR"
>>> x, y, lengths = ds.split("train")

See `load_dataset` for the options and `Dataset` for what comes back.
"""
from .benchmark_files import loader_names
from .catalog import builtin_names, load_dataset
from .dataset import DataError, Dataset
from .listops import VOCAB as LISTOPS_VOCAB
from .splits import DEFAULT_DATA_SEED
from .stored import StoredSequences

__all__ = ["load_dataset", "builtin_names", "loader_names", "Dataset", "DataError", "LISTOPS_VOCAB",
           "DEFAULT_DATA_SEED", "StoredSequences"]
