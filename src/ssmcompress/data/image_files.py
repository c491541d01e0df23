"""Image benchmarks from the user's files: MNIST (IDX), CIFAR-10 (binary version), LRA Pathfinder (PNG).

Nothing is downloaded; every loader takes the folder that holds the files and
returns a :class:`~ssmcompress.data.Dataset` whose inputs stay in their stored
form (uint8, memory-mapped where the format allows) and are converted to
float per batch (:mod:`ssmcompress.data.stored`).

``mnist``  -- sequential MNIST: every 28x28 image read row by row as 784 pixels
    ``(784, 1)``. Files as torchvision stores them (``MNIST/raw``):
    ``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``,
    ``t10k-images-idx3-ubyte``, ``t10k-labels-idx1-ubyte``, each optionally
    gzipped (``.gz``); uncompressed files are memory-mapped. Any IDX image set
    of the same layout works (e.g. Fashion-MNIST). Test: the t10k files;
    validation: a stratified ``val_fraction`` (default 10 %) of the training
    files drawn with ``data_seed``, i.e. 54000 / 6000 / 10000. Pixels are
    standardised with the training rows' mean and std; option ``scale=unit``
    gives pixels / 255 instead (state-spaces/s4 ``example.py``'s MNIST input).
``pmnist`` -- permuted sequential MNIST: the same pixels in a fixed order,
    ``np.random.default_rng(permutation_seed).permutation(784)`` with
    ``permutation_seed = 0`` unless given (option).
``cifar10`` / ``lra-image`` -- CIFAR-10, *binary* version
    (``cifar-10-batches-bin``: ``data_batch_1.bin`` .. ``data_batch_5.bin``,
    ``test_batch.bin``; 10000 records of 3073 bytes each: the label, then the
    1024 red, 1024 green and 1024 blue pixels row by row). Default: LRA's
    grayscale sequences of length 1024 ``(1024, 1)``, gray computed as
    ``tf.image.rgb_to_grayscale`` does (float32 weights 0.2989, 0.5870, 0.1140
    on pixels / 255, then ``int(gray * 255.5)``). Option ``channels=3``:
    ``(1024, 3)`` RGB sequences (the S4 papers' sCIFAR). Validation: a
    stratified 10 % of the five training batches (45000 / 5000 / 10000);
    LRA's own split took the last 10 % of TFDS's order instead. Standardised
    per channel with the training rows' statistics (``scale=unit``: / 255).
``lra-pathfinder`` -- LRA Pathfinder: the folder of one difficulty, e.g.
    ``lra_release/pathfinder32/curv_contour_length_14`` (or the
    ``pathfinder32`` folder, then option ``difficulty``, default
    ``curv_contour_length_14``) holding ``metadata/*.npy`` -- text files
    despite the extension, one image per line: ``imgs/0 sample_0.png 0 1 ...``
    (folder, file, -, label) -- and ``imgs/*/*.png`` (grayscale, all of one
    size S x S). Sequences of S*S pixels, read from the PNG files per batch,
    scaled as ``(p / 255 - 0.5) / 0.5`` (the S4 code's normalisation; no
    statistics over 200,000 files). Empty image files (the LRA release has
    one) are left out, as LRA and the S4 code do. Splits: stratified
    80 / 10 / 10 % drawn with ``data_seed`` (LRA and S4 split 80/10/10 too,
    in their own orders).

Every missing, truncated or malformed file is reported as a DataError with one
sentence naming the file and what was expected.
"""
from __future__ import annotations

import gzip
import os
import zlib

import numpy as np

from .dataset import DataError, Dataset
from .splits import split_indices
from .stored import StoredSequences, affine_rows, feature_moments

IDX_UBYTE = 0x08
MNIST_FILES = {  # split -> (images, labels) base names as torchvision stores them
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
MNIST_LAYOUT = ("DIR/train-images-idx3-ubyte[.gz], DIR/train-labels-idx1-ubyte[.gz], "
                "DIR/t10k-images-idx3-ubyte[.gz], DIR/t10k-labels-idx1-ubyte[.gz] (torchvision's MNIST/raw)")
CIFAR_TRAIN = tuple(f"data_batch_{i}.bin" for i in range(1, 6))
CIFAR_TEST = "test_batch.bin"
CIFAR_RECORD = 3073
CIFAR_LAYOUT = ("DIR/data_batch_1.bin .. DIR/data_batch_5.bin and DIR/test_batch.bin "
                "(the CIFAR-10 binary version, cifar-10-batches-bin)")
GRAY_WEIGHTS = np.array([0.2989, 0.5870, 0.1140], dtype=np.float32)  # tf.image.rgb_to_grayscale
PATHFINDER_DIFFICULTIES = ("curv_baseline", "curv_contour_length_9", "curv_contour_length_14")
PATHFINDER_LAYOUT = ("DIR/metadata/*.npy (text lines 'imgs/K sample_J.png _ LABEL') and DIR/imgs/K/sample_J.png, "
                     "DIR being e.g. lra_release/pathfinder32/curv_contour_length_14")
PATHFINDER_TEST_FRACTION = 0.1


def _rng(data_seed: int, stream: int) -> np.random.Generator:
    return np.random.default_rng([int(data_seed), stream])


def check_folder(folder, name: str, layout: str) -> str:
    """Expand ``~`` and make sure ``folder`` is a directory, else one sentence naming the layout."""
    path = os.path.expanduser(os.fspath(folder))
    if not os.path.isdir(path):
        what = "is a file" if os.path.exists(path) else "does not exist"
        raise DataError(f"{name}:{folder} names no folder ({path} {what}); {name} expects {layout}.")
    return path


# ----------------------------------------------------------------------------- MNIST (IDX)

def _find_idx(folder: str, base: str) -> str:
    """The file of ``base`` in ``folder`` (plain preferred, then .gz; '-idx' or '.idx' spelling)."""
    for stem in (base, base.replace("-idx", ".idx")):
        for name in (stem, stem + ".gz"):
            path = os.path.join(folder, name)
            if os.path.isfile(path):
                return path
    raise DataError(f"{os.path.join(folder, base)}[.gz] is missing; mnist expects {MNIST_LAYOUT}.")


def _parse_idx_header(path: str, head: bytes, ndim: int, total: int):
    """Dimensions from an IDX header, checking magic number, dtype and size (``total`` bytes)."""
    if len(head) < 4:
        raise DataError(f"{path} is too short for an IDX header ({len(head)} bytes); expected an IDX file "
                        f"starting with the magic number 0x0000080{ndim}.")
    magic = int.from_bytes(head[:4], "big")
    expected = (IDX_UBYTE << 8) | ndim
    if magic != expected:
        raise DataError(f"{path} has magic number 0x{magic:08x}, not 0x{expected:08x} (IDX, unsigned bytes, "
                        f"{ndim} dimension{'s' if ndim > 1 else ''}); it is not the expected MNIST file.")
    header = 4 + 4 * ndim
    if len(head) < header:
        raise DataError(f"{path} is truncated inside its IDX header ({len(head)} of {header} bytes).")
    dims = tuple(int.from_bytes(head[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim))
    need = header + int(np.prod(dims, dtype=np.int64))
    if total != need:
        shape = " x ".join(map(str, dims))
        raise DataError(f"{path} has {total} bytes but its IDX header announces {shape} values "
                        f"({need} bytes); the file is {'truncated' if total < need else 'longer than announced'}.")
    return dims, header


def read_idx(path: str, ndim: int) -> np.ndarray:
    """An IDX file of unsigned bytes with ``ndim`` dimensions; memory-mapped unless gzipped."""
    if path.endswith(".gz"):
        try:
            with gzip.open(path, "rb") as f:
                data = f.read()
        except (OSError, EOFError, zlib.error) as e:
            raise DataError(f"{path} cannot be decompressed ({type(e).__name__}: {e}); expected a "
                            "complete gzipped IDX file.") from None
        dims, header = _parse_idx_header(path, data[:4 + 4 * ndim], ndim, len(data))
        return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims)
    with open(path, "rb") as f:
        head = f.read(4 + 4 * ndim)
    dims, header = _parse_idx_header(path, head, ndim, os.path.getsize(path))
    if int(np.prod(dims)) == 0:
        return np.zeros(dims, dtype=np.uint8)
    return np.memmap(path, dtype=np.uint8, mode="r", offset=header, shape=dims)


def _mnist_split(folder: str, split: str):
    img_path, lab_path = (_find_idx(folder, b) for b in MNIST_FILES[split])
    images = read_idx(img_path, 3)
    labels = np.array(read_idx(lab_path, 1), dtype=np.int64)
    if images.shape[0] != labels.shape[0]:
        raise DataError(f"{img_path} holds {images.shape[0]} images but {lab_path} holds "
                        f"{labels.shape[0]} labels; the two files must belong together.")
    if images.shape[0] == 0:
        raise DataError(f"{img_path} holds no images; expected the MNIST {split} images.")
    return images.reshape(images.shape[0], -1), labels, img_path


SCALES = ("standard", "unit")


def pixel_statistics(scale: str, name: str, storage, decode, rows, n_features: int):
    """Mean and std that the pixels are normalised with: the training rows' (standard) or 0 and 255 (unit)."""
    if scale == "standard":
        return feature_moments(storage, decode, rows, n_features)
    if scale == "unit":
        return np.zeros(n_features), np.full(n_features, 255.0)
    raise DataError(f"{name} option scale must be 'standard' (training mean and std) or 'unit' (pixels / 255), "
                    f"got {scale!r}.")


def load_mnist(folder, val_fraction: float, data_seed: int, permute: bool = False,
               permutation_seed: int = 0, scale: str = "standard") -> Dataset:
    """Sequential (or permuted) MNIST from IDX files in ``folder`` (see the module docstring)."""
    name = "pmnist" if permute else "mnist"
    path = check_folder(folder, name, MNIST_LAYOUT)
    x_tr, y_tr, tr_path = _mnist_split(path, "train")
    x_te, y_te, te_path = _mnist_split(path, "test")
    if x_tr.shape[1] != x_te.shape[1]:
        raise DataError(f"{te_path} holds images of {x_te.shape[1]} pixels but {tr_path} of "
                        f"{x_tr.shape[1]}; training and test images must have one size.")
    length = x_tr.shape[1]
    if isinstance(permutation_seed, bool) or not isinstance(permutation_seed, (int, np.integer)) \
            or permutation_seed < 0:
        raise DataError(f"pmnist option permutation_seed must be a non-negative integer, got {permutation_seed!r}.")
    perm = np.random.default_rng(int(permutation_seed)).permutation(length) if permute else None

    def decode(raw):
        raw = raw if perm is None else raw[:, perm]
        return raw.reshape(raw.shape[0], length, 1)

    keep, val = split_indices(y_tr, val_fraction, _rng(data_seed, 2))
    mean, std = pixel_statistics(scale, name, x_tr, decode, keep, 1)
    train_all = affine_rows(x_tr, decode, mean, std, (length, 1))
    test = affine_rows(x_te, decode, mean, std, (length, 1))
    info = {"source": path, "data_seed": int(data_seed), "val_fraction": val_fraction,
            "memory_mapped": isinstance(x_tr, np.memmap)}
    if permute:
        info["permutation"] = f"numpy.random.default_rng({int(permutation_seed)}).permutation({length})"
    n_classes = int(max(y_tr.max(), y_te.max())) + 1
    return Dataset(name=name, x_train=train_all.subset(keep), y_train=y_tr[keep], x_val=train_all.subset(val),
                   y_val=y_tr[val], x_test=test, y_test=y_te, task="classification", n_classes=n_classes,
                   d_input=1, seq_len=length, normalization={"mean": mean, "std": std}, info=info)


# ----------------------------------------------------------------------------- CIFAR-10 (binary)

def _cifar_file(folder: str, name: str) -> np.ndarray:
    path = os.path.join(folder, name)
    if not os.path.isfile(path):
        raise DataError(f"{path} is missing; cifar10 expects {CIFAR_LAYOUT}.")
    size = os.path.getsize(path)
    if size == 0 or size % CIFAR_RECORD:
        raise DataError(f"{path} has {size} bytes, not a whole number of 3073-byte CIFAR-10 records "
                        "(label byte + 3072 pixels); it is truncated or not the binary version.")
    records = np.memmap(path, dtype=np.uint8, mode="r", shape=(size // CIFAR_RECORD, CIFAR_RECORD))
    bad = int(np.count_nonzero(records[:, 0] > 9))
    if bad:
        raise DataError(f"{path} has {bad} record{'s' if bad > 1 else ''} whose label byte is not 0..9; "
                        "expected the CIFAR-10 binary version (CIFAR-100's has two label bytes).")
    return records


def rgb_to_gray(rgb: np.ndarray) -> np.ndarray:
    """uint8 (..., 3) -> uint8 (...) as ``tf.image.rgb_to_grayscale`` computes it (float32)."""
    f = rgb.astype(np.float32) * np.float32(1.0 / 255.0)
    gray = f[..., 0] * GRAY_WEIGHTS[0] + f[..., 1] * GRAY_WEIGHTS[1] + f[..., 2] * GRAY_WEIGHTS[2]
    return (gray * np.float32(255.5)).astype(np.uint8)


def load_cifar10(folder, val_fraction: float, data_seed: int, channels: int = 1,
                 name: str = "cifar10", scale: str = "standard") -> Dataset:
    """sCIFAR from the CIFAR-10 binary files in ``folder`` (see the module docstring)."""
    if channels not in (1, 3) or isinstance(channels, bool):
        raise DataError(f"{name} option channels must be 1 (grayscale, LRA) or 3 (RGB), got {channels!r}.")
    path = check_folder(folder, name, CIFAR_LAYOUT)
    train_parts = [_cifar_file(path, f) for f in CIFAR_TRAIN]
    test_part = _cifar_file(path, CIFAR_TEST)
    sizes = np.cumsum([0] + [len(p) for p in train_parts])
    y_tr = np.concatenate([np.asarray(p[:, 0], dtype=np.int64) for p in train_parts])
    y_te = np.asarray(test_part[:, 0], dtype=np.int64)

    class _Records:  # the five training files as one row-indexable storage, without copying
        shape = (int(sizes[-1]), CIFAR_RECORD)
        dtype = np.uint8

        def __len__(self):
            return self.shape[0]

        def __getitem__(self, rows):
            rows = np.asarray(rows, dtype=np.int64)
            part = np.searchsorted(sizes, rows, side="right") - 1
            out = np.empty((len(rows), CIFAR_RECORD), dtype=np.uint8)
            for p in np.unique(part):
                sel = part == p
                out[sel] = train_parts[p][rows[sel] - sizes[p]]
            return out

    def decode(raw):  # (b, 3073) records -> (b, 1024, channels)
        rgb = raw[:, 1:].reshape(len(raw), 3, 1024).transpose(0, 2, 1)
        return rgb_to_gray(rgb)[:, :, None] if channels == 1 else rgb

    keep, val = split_indices(y_tr, val_fraction, _rng(data_seed, 2))
    records = _Records()
    mean, std = pixel_statistics(scale, name, records, decode, keep, channels)
    train_all = affine_rows(records, decode, mean, std, (1024, channels))
    test = affine_rows(test_part, decode, mean, std, (1024, channels))
    info = {"source": path, "data_seed": int(data_seed), "val_fraction": val_fraction, "channels": channels,
            "grayscale": "tf.image.rgb_to_grayscale" if channels == 1 else None}
    return Dataset(name=name, x_train=train_all.subset(keep), y_train=y_tr[keep], x_val=train_all.subset(val),
                   y_val=y_tr[val], x_test=test, y_test=y_te, task="classification", n_classes=10,
                   d_input=channels, seq_len=1024, normalization={"mean": mean, "std": std}, info=info)


# ----------------------------------------------------------------------------- LRA Pathfinder (PNG)

def _pathfinder_root(path: str, difficulty: str) -> str:
    if os.path.isdir(os.path.join(path, "metadata")):
        return path
    if difficulty not in PATHFINDER_DIFFICULTIES:
        raise DataError(f"lra-pathfinder option difficulty must be one of {', '.join(PATHFINDER_DIFFICULTIES)}, "
                        f"got {difficulty!r}.")
    sub = os.path.join(path, difficulty)
    if os.path.isdir(os.path.join(sub, "metadata")):
        return sub
    raise DataError(f"{os.path.join(path, 'metadata')} and {os.path.join(sub, 'metadata')} are missing; "
                    f"lra-pathfinder expects {PATHFINDER_LAYOUT}.")


def _png_side(path: str) -> int:
    """Side length of the square PNG image ``path``."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            width, height = im.size
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as e:
        raise DataError(f"{path} cannot be read as a PNG image ({type(e).__name__}: {e}); "
                        "expected a grayscale Pathfinder image.") from None
    if width != height:
        raise DataError(f"{path} is {width}x{height} pixels; Pathfinder images are square.")
    return width


def _read_png(path: str, size: int) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            a = np.asarray(im.convert("L"), dtype=np.uint8)
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as e:
        raise DataError(f"{path} cannot be read as a PNG image ({type(e).__name__}: {e}); "
                        "expected a grayscale Pathfinder image.") from None
    if a.shape != (size, size):
        raise DataError(f"{path} is {a.shape[1]}x{a.shape[0]} pixels but the first image is {size}x{size}; "
                        "all Pathfinder images of one folder must have one size.")
    return a.reshape(-1)


def load_pathfinder(folder, val_fraction: float, data_seed: int,
                    difficulty: str = "curv_contour_length_14") -> Dataset:
    """LRA Pathfinder from its PNG folder layout (see the module docstring)."""
    root = _pathfinder_root(check_folder(folder, "lra-pathfinder", PATHFINDER_LAYOUT), difficulty)
    meta_dir = os.path.join(root, "metadata")
    metas = [f for f in os.listdir(meta_dir) if f.endswith(".npy")]
    if not metas:
        raise DataError(f"{meta_dir} holds no *.npy metadata files; lra-pathfinder expects {PATHFINDER_LAYOUT}.")
    metas.sort(key=lambda f: (int(f[:-4]) if f[:-4].isdigit() else float("inf"), f))
    paths, labels, skipped = [], [], 0
    for meta in metas:
        meta_path = os.path.join(meta_dir, meta)
        try:
            with open(meta_path, encoding="ascii") as f:
                lines = f.read().splitlines()
        except UnicodeDecodeError:
            raise DataError(f"{meta_path} is not a text file; LRA's Pathfinder metadata/*.npy files hold "
                            "lines 'imgs/K sample_J.png _ LABEL'.") from None
        for no, line in enumerate(lines, 1):
            parts = line.split()
            if not parts:
                continue
            if len(parts) < 4 or parts[3] not in ("0", "1"):
                raise DataError(f"{meta_path} line {no} reads {line[:60]!r}; expected 'imgs/K sample_J.png _ LABEL' "
                                "with LABEL 0 or 1.")
            img = os.path.join(root, parts[0], parts[1])
            try:
                size = os.path.getsize(img)
            except OSError:
                raise DataError(f"{img} (listed in {meta_path} line {no}) is missing; lra-pathfinder expects "
                                f"{PATHFINDER_LAYOUT}.") from None
            if size == 0:  # LRA's release has an empty image; LRA and S4 leave it out
                skipped += 1
                continue
            paths.append(img)
            labels.append(int(parts[3]))
    if len(paths) < 3:
        raise DataError(f"{meta_dir} lists {len(paths)} readable images; Pathfinder needs at least 3 "
                        "(train, validation and test).")
    side = _png_side(paths[0])
    length = side * side
    y = np.asarray(labels, dtype=np.int64)
    path_arr = np.asarray(paths, dtype=object)

    def fetch(rows):
        x = np.stack([_read_png(path_arr[r], side) for r in rows]).astype(np.float32)
        return ((x * np.float32(1.0 / 255.0) - np.float32(0.5)) * np.float32(2.0))[:, :, None]

    rest, test = split_indices(y, PATHFINDER_TEST_FRACTION, _rng(data_seed, 1))
    train, val = split_indices(y[rest], val_fraction / (1.0 - PATHFINDER_TEST_FRACTION), _rng(data_seed, 2))
    train, val = rest[train], rest[val]
    x_all = StoredSequences(fetch, len(paths), (length, 1), np.float32)
    info = {"source": root, "data_seed": int(data_seed), "val_fraction": val_fraction,
            "test_fraction": PATHFINDER_TEST_FRACTION, "empty_images_skipped": skipped,
            "scaling": "(pixel / 255 - 0.5) / 0.5"}
    return Dataset(name="lra-pathfinder", x_train=x_all.subset(train), y_train=y[train],
                   x_val=x_all.subset(val), y_val=y[val], x_test=x_all.subset(test), y_test=y[test],
                   task="classification", n_classes=2, d_input=1, seq_len=length,
                   normalization={"mean": np.array([127.5]), "std": np.array([127.5])}, info=info)
