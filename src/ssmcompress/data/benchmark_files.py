"""``NAME:DIR`` data specs: the field's benchmark files, read from a folder the user names.

>>> load_dataset("mnist:~/data/MNIST/raw")                      # doctest: +SKIP
>>> load_dataset("cifar10:~/data/cifar-10-batches-bin", channels=3)  # doctest: +SKIP

Nothing is downloaded. :data:`LOADERS` lists every source with the folder layout
it expects (``ssmcompress data`` prints it); the formats and splits are documented
in :mod:`~ssmcompress.data.image_files`, :mod:`~ssmcompress.data.text_files` and
:mod:`~ssmcompress.data.speech`.
"""
from __future__ import annotations

import os
import re

from . import image_files, speech, text_files
from .dataset import DataError, Dataset


def _mnist(folder, val_fraction, data_seed, **opts):
    return image_files.load_mnist(folder, val_fraction, data_seed, **opts)


def _pmnist(folder, val_fraction, data_seed, **opts):
    return image_files.load_mnist(folder, val_fraction, data_seed, permute=True, **opts)


def _cifar(folder, val_fraction, data_seed, **opts):
    return image_files.load_cifar10(folder, val_fraction, data_seed, **opts)


def _lra_image(folder, val_fraction, data_seed, **opts):
    return image_files.load_cifar10(folder, val_fraction, data_seed, channels=1, name="lra-image", **opts)


def _pathfinder(folder, val_fraction, data_seed, **opts):
    return image_files.load_pathfinder(folder, val_fraction, data_seed, **opts)


def _listops(folder, val_fraction, data_seed, **opts):
    return text_files.load_lra_listops(folder, data_seed, **opts)


def _text(folder, val_fraction, data_seed, **opts):
    return text_files.load_lra_text(folder, val_fraction, data_seed, **opts)


def _speech(folder, val_fraction, data_seed, **opts):
    return speech.load_speechcommands(folder, data_seed, **opts)


# name -> (description, folder layout, loader, options)
LOADERS = {
    "mnist": ("sequential MNIST from IDX files (gzipped or not), length 784, 54000/6000/10000, 10 classes",
              image_files.MNIST_LAYOUT, _mnist, ("scale",)),
    "pmnist": ("permuted sequential MNIST: the mnist files, pixels in the fixed order "
               "numpy.random.default_rng(permutation_seed=0).permutation(784)",
               image_files.MNIST_LAYOUT, _pmnist, ("permutation_seed", "scale")),
    "cifar10": ("sCIFAR from the CIFAR-10 binary files: LRA grayscale length 1024 (channels=3: RGB), "
                "45000/5000/10000, 10 classes", image_files.CIFAR_LAYOUT, _cifar, ("channels", "scale")),
    "lra-image": ("LRA Image: the cifar10 loader, grayscale", image_files.CIFAR_LAYOUT, _lra_image, ("scale",)),
    "lra-listops": ("LRA ListOps from the release's TSV files, tokens, max_length 2000, 96000/2000/2000, "
                    "10 classes", text_files.LISTOPS_LAYOUT, _listops, ("max_length",)),
    "lra-text": ("LRA Text: byte-level IMDB reviews, max_length 4096, 22500/2500/25000, 2 classes",
                 text_files.TEXT_LAYOUT, _text, ("max_length",)),
    "lra-pathfinder": ("LRA Pathfinder from its PNG images, length S*S (1024 for pathfinder32), 80/10/10 %, "
                       "2 classes", image_files.PATHFINDER_LAYOUT, _pathfinder, ("difficulty",)),
    "speechcommands": ("Speech Commands, raw 16 kHz waveforms of length 16000, the dataset's own split, "
                       "10 words (words=all: every word folder)", speech.SPEECH_LAYOUT, _speech,
                       ("words", "max_length")),
}

_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_-]*")


def loader_names() -> dict:
    """``{name: {"description": ..., "layout": ...}}`` of every ``NAME:DIR`` source."""
    return {name: {"description": d, "layout": layout} for name, (d, layout, _, _) in LOADERS.items()}


def parse_spec(spec: str):
    """``(name, folder)`` for a ``NAME:DIR`` spec of a known loader, else None.

    Raises DataError for ``NAME:DIR`` with an unknown NAME (when no such file
    exists) and for a loader name given without a folder.
    """
    if spec in LOADERS:
        raise DataError(f"{spec} reads files from a folder: give --data {spec}:DIR with {LOADERS[spec][1]}.")
    name, sep, folder = spec.partition(":")
    if not sep or not _NAME.fullmatch(name):
        return None
    if name in LOADERS:
        if not folder:
            raise DataError(f"{spec} names no folder: give --data {name}:DIR with {LOADERS[name][1]}.")
        return name, folder
    if not os.path.exists(spec):
        raise DataError(f"Unknown data source {name!r} in {spec!r}; folder loaders are "
                        f"{', '.join(LOADERS)} (NAME:DIR).")
    return None


def load_from_folder(name: str, folder: str, val_fraction: float, data_seed: int, **options) -> Dataset:
    """Load the benchmark ``name`` from ``folder`` (see :data:`LOADERS`)."""
    _, _, loader, allowed = LOADERS[name]
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        valid = ", ".join(("data_seed", "val_fraction") + allowed)
        raise DataError(f"Unknown option {unknown[0]!r} for data source {name!r}; valid options: {valid}.")
    ds = loader(folder, val_fraction, data_seed, **options)
    ds.info["spec"] = f"{name}:{folder}"
    return ds
