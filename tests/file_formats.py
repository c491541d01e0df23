"""Writers of the benchmark files in exactly their published formats, for the loader tests.

Each writer follows the format's specification, not our reader:
IDX (LeCun's MNIST page): big-endian magic ``0x00000803`` / ``0x00000801``, big-endian
uint32 dimensions, then the bytes; CIFAR-10 binary: 3073-byte records (label, 1024 R,
1024 G, 1024 B, rows first); LRA ListOps TSV as LRA's generator writes it
(``csv.writer(delimiter='\\t')``, header ``Source, Target``, parenthesised trees);
aclImdb text files; Speech Commands wav files written by the ``wave`` module;
LRA Pathfinder PNG images (pillow) with text metadata in ``metadata/*.npy``.
"""
from __future__ import annotations

import csv
import gzip
import os
import wave

import numpy as np

from ssmcompress.data.listops import apply_operator


def idx_bytes(array: np.ndarray) -> bytes:
    """An unsigned-byte IDX file of ``array`` (any number of dimensions)."""
    a = np.ascontiguousarray(array, dtype=np.uint8)
    header = bytes([0, 0, 0x08, a.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in a.shape)
    return header + a.tobytes()


def write_mnist(folder, train_images, train_labels, test_images, test_labels, gz=False):
    """torchvision's MNIST/raw layout."""
    os.makedirs(folder, exist_ok=True)
    files = {"train-images-idx3-ubyte": train_images, "train-labels-idx1-ubyte": train_labels,
             "t10k-images-idx3-ubyte": test_images, "t10k-labels-idx1-ubyte": test_labels}
    for name, a in files.items():
        data = idx_bytes(a)
        if gz:
            with gzip.open(os.path.join(folder, name + ".gz"), "wb") as f:
                f.write(data)
        else:
            with open(os.path.join(folder, name), "wb") as f:
                f.write(data)


def digit_images(labels, rng, side=28):
    """Images whose bright rectangle position depends on the label (learnable, uint8)."""
    n = len(labels)
    img = rng.integers(0, 40, size=(n, side, side), dtype=np.uint8)
    for k, lab in enumerate(labels):
        r, c = 2 + 2 * (lab % 5), 3 + 10 * (lab // 5)
        img[k, r:r + 6, c:c + 8] = 200 + rng.integers(0, 55)
    return img


def cifar_records(labels, images) -> bytes:
    """CIFAR-10 binary records: label byte, then the red, green and blue 32x32 planes."""
    out = bytearray()
    for lab, im in zip(labels, images):  # im (32, 32, 3)
        out.append(int(lab))
        for ch in range(3):
            out += np.ascontiguousarray(im[:, :, ch], dtype=np.uint8).tobytes()
    return bytes(out)


def write_cifar(folder, per_file, rng, test=None):
    """``data_batch_1..5.bin`` with ``per_file`` records each and ``test_batch.bin``.

    Returns ``{file name: (labels, images (n, 32, 32, 3))}``.
    """
    os.makedirs(folder, exist_ok=True)
    written = {}
    for name in [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]:
        n = per_file if name != "test_batch.bin" or test is None else test
        labels = np.arange(n) % 10
        images = rng.integers(0, 256, size=(n, 32, 32, 3), dtype=np.uint8)
        with open(os.path.join(folder, name), "wb") as f:
            f.write(cifar_records(labels, images))
        written[name] = (labels, images)
    return written


def listops_tree(rng, depth=1, max_depth=3, max_args=4):
    """A random expression as ``[op, arg, ...]`` with digit leaves."""
    op = ("[MIN", "[MAX", "[MED", "[SM")[rng.integers(4)]
    args = []
    for _ in range(rng.integers(2, max_args + 1)):
        if depth < max_depth and rng.random() < 0.3:
            args.append(listops_tree(rng, depth + 1, max_depth, max_args))
        else:
            args.append(int(rng.integers(10)))
    return [op] + args


def listops_value(tree):
    if isinstance(tree, int):
        return tree
    return apply_operator(tree[0], [listops_value(a) for a in tree[1:]])


def listops_lra_string(tree) -> str:
    """LRA's ``to_string``: the left-nested pairs ((((op, a0), a1), ...), ']') in parentheses."""
    def pair(t):
        return (t if isinstance(t, str) else str(t)) if not isinstance(t, tuple) else \
            "( " + pair(t[0]) + " " + pair(t[1]) + " )"

    def nest(t):
        if isinstance(t, int):
            return t
        acc = (t[0], nest(t[1]))
        for a in t[2:]:
            acc = (acc, nest(a))
        return (acc, "]")
    return pair(nest(tree))


def listops_plain_tokens(tree) -> list:
    if isinstance(tree, int):
        return [str(tree)]
    return [tree[0]] + [tok for a in tree[1:] for tok in listops_plain_tokens(a)] + ["]"]


def write_listops_tsv(path, rows, header=("Source", "Target")):
    """As LRA's ``write_to_file``: csv.writer with a tab delimiter (lines end in \\r\\n)."""
    with open(path, "w", newline="") as f:
        w = csv.writer(f, delimiter="\t")
        if header is not None:
            w.writerow(list(header))
        w.writerows(rows)


def write_listops(folder, rng, counts=(30, 8, 8)):
    """basic_{train,val,test}.tsv; returns ``{split: [(tree, value), ...]}``."""
    os.makedirs(folder, exist_ok=True)
    out = {}
    for split, n in zip(("train", "val", "test"), counts):
        trees = [listops_tree(rng) for _ in range(n)]
        write_listops_tsv(os.path.join(folder, f"basic_{split}.tsv"),
                          [(listops_lra_string(t), listops_value(t)) for t in trees])
        out[split] = trees
    return out


def write_imdb(root, reviews):
    """``reviews[split][cls]`` = list of texts -> aclImdb/split/cls/<id>_<rating>.txt (UTF-8)."""
    for split, by_class in reviews.items():
        for cls, texts in by_class.items():
            folder = os.path.join(root, split, cls)
            os.makedirs(folder, exist_ok=True)
            for i, text in enumerate(texts):
                rating = 8 if cls == "pos" else 2
                with open(os.path.join(folder, f"{i}_{rating}.txt"), "wb") as f:
                    f.write(text.encode("utf-8"))


def write_wav(path, samples, rate=16000, channels=1, width=2):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with wave.open(path, "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(width)
        w.setframerate(rate)
        w.writeframes(np.asarray(samples, dtype="<i2").tobytes())


def write_speech(root, words, per_word, rng, val_every=4, test_every=5, short=()):
    """Word folders of wav clips plus validation_list.txt / testing_list.txt.

    Clip j of a word goes to the validation list when ``j % val_every == 1`` and to the
    testing list when ``j % test_every == 2``; clips listed in ``short`` (relative paths)
    are 0.5 s long. Returns ``{relative path: samples}``.
    """
    clips, val, test = {}, [], []
    for w_i, word in enumerate(words):
        for j in range(per_word):
            rel = f"{word}/{j:08x}_nohash_0.wav"
            n = 8000 if rel in short else 16000
            t = np.arange(n) / 16000.0
            s = (8000 * np.sin(2 * np.pi * (200 + 100 * w_i) * t) + rng.normal(0, 500, n)).astype(np.int16)
            write_wav(os.path.join(root, rel), s)
            clips[rel] = s
            if j % val_every == 1:
                val.append(rel)
            elif j % test_every == 2:
                test.append(rel)
    os.makedirs(os.path.join(root, "_background_noise_"), exist_ok=True)
    write_wav(os.path.join(root, "_background_noise_", "white_noise.wav"), rng.integers(-100, 100, 32000))
    with open(os.path.join(root, "validation_list.txt"), "w") as f:
        f.write("\n".join(val) + "\n")
    with open(os.path.join(root, "testing_list.txt"), "w") as f:
        f.write("\n".join(test) + "\n")
    return clips


def write_pathfinder(root, images, labels, per_meta=10, empty=()):
    """LRA Pathfinder: imgs/<k>/sample_<j>.png and metadata/<k>.npy text lines.

    Image i goes to folder k = i // per_meta as sample_<i % per_meta>.png; the indices in
    ``empty`` become 0-byte files (as one file of LRA's release).
    """
    from PIL import Image

    lines = {}
    for i, (im, lab) in enumerate(zip(images, labels)):
        k, j = divmod(i, per_meta)
        folder = os.path.join(root, "imgs", str(k))
        os.makedirs(folder, exist_ok=True)
        path = os.path.join(folder, f"sample_{j}.png")
        if i in empty:
            open(path, "wb").close()
        else:
            Image.fromarray(np.asarray(im, dtype=np.uint8), mode="L").save(path)
        lines.setdefault(k, []).append(f"imgs/{k} sample_{j}.png {i} {int(lab)} 2 0.5\n")
    os.makedirs(os.path.join(root, "metadata"), exist_ok=True)
    for k, ls in lines.items():
        with open(os.path.join(root, "metadata", f"{k}.npy"), "w") as f:
            f.writelines(ls)


def data_error(spec, **options) -> str:
    """The message of the DataError that ``load_dataset(spec, **options)`` raises, checked to be one sentence."""
    import pytest

    from ssmcompress.data import DataError, load_dataset

    with pytest.raises(DataError) as e:
        load_dataset(spec, **options)
    msg = str(e.value)
    assert "\n" not in msg and msg.endswith("."), msg
    return msg


def cli_error(capsys, *argv) -> str:
    """Run the command line, expect exit code 2 and one line on stderr without a traceback; return it."""
    from ssmcompress.cli import main

    capsys.readouterr()
    assert main([str(a) for a in argv]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


def missing_file_error(src, dest, loader: str, relpath: str) -> str:
    """Copy the folder ``src`` to ``dest`` without ``relpath``; the one-sentence error of ``loader:dest``."""
    import os
    import shutil

    shutil.copytree(src, dest)
    os.remove(os.path.join(dest, relpath))
    return data_error(f"{loader}:{dest}")
