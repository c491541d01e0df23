"""Long Range Arena token tasks from the user's files: ListOps (TSV) and byte-level IMDB text.

``lra-listops`` -- the LRA release's ``listops-1000`` folder: ``basic_train.tsv``,
    ``basic_val.tsv``, ``basic_test.tsv`` (96000 / 2000 / 2000 rows), each a
    header line ``Source<TAB>Target`` and rows like
    ``( ( [MAX 2 9 ) ] )<TAB>9``. Tokenisation as the S4 code repairs LRA's:
    parentheses are dropped (they only repeat the tree that the brackets
    already give), and ``[MIN [MAX [MED [SM``, the digits and ``]`` are the
    tokens. (LRA's own TFDS tokenizer kept alphanumeric pieces only, so it lost
    every ``]``; the S4 code maps ``]`` to a token instead, as we do.) Token ids
    are those of the built-in ``listops`` generator (``VOCAB``, 16 ids, 0 = pad),
    sequences are cut to ``max_length`` (LRA: 2000, the option) and
    right-padded; the files' own splits are used.
``lra-text`` -- byte-level IMDB from the ``aclImdb`` folder:
    ``aclImdb/{train,test}/{pos,neg}/*.txt`` (the folder itself or its parent).
    Every review's UTF-8 bytes are its tokens: byte b is id b + 1 (0 = pad,
    vocabulary 257, as TFDS's ByteTextEncoder that LRA used), cut to
    ``max_length`` (LRA: 4096, the option). Labels: neg 0, pos 1. Test: the
    test folder (25000); validation: a stratified ``val_fraction`` (10 %) of
    the training reviews drawn with ``data_seed`` (LRA validated on the test
    set itself; we do not).

Sequences are kept as flat uint8 arrays with offsets (about 1 byte per token)
and padded per batch (:mod:`ssmcompress.data.stored`).
"""
from __future__ import annotations

import csv
import os
import re

import numpy as np

from .dataset import DataError, Dataset
from .listops import CLOSE_ID, DIGIT_ID0, OP_ID0, OPERATORS, PAD_ID, VOCAB
from .splits import split_indices
from .stored import ragged_lengths, ragged_tokens

LISTOPS_FILES = {"train": "basic_train.tsv", "val": "basic_val.tsv", "test": "basic_test.tsv"}
LISTOPS_LAYOUT = "DIR/basic_train.tsv, DIR/basic_val.tsv, DIR/basic_test.tsv (LRA's listops-1000 folder)"
LISTOPS_MAX_LENGTH = 2000
TEXT_LAYOUT = "DIR/train/pos/*.txt, DIR/train/neg/*.txt, DIR/test/pos/*.txt, DIR/test/neg/*.txt (the aclImdb folder)"
TEXT_MAX_LENGTH = 4096

_LISTOPS_ALLOWED = re.compile(r"[\s()\[\]0-9MINAXEDS]*")
_GLUED = re.compile(r"\S\S")
# one placeholder character per multi-character token, so that every token is one byte
_PLACEHOLDER = {op: chr(1 + i) for i, op in enumerate(OPERATORS)}
_PLACEHOLDER["]"] = chr(1 + len(OPERATORS))
_LISTOPS_LUT = np.full(256, 255, dtype=np.uint8)
for _d in range(10):
    _LISTOPS_LUT[ord(str(_d))] = DIGIT_ID0 + _d
for _i, _op in enumerate(OPERATORS):
    _LISTOPS_LUT[ord(_PLACEHOLDER[_op])] = OP_ID0 + _i
_LISTOPS_LUT[ord(_PLACEHOLDER["]"])] = CLOSE_ID


def listops_token_ids(source: str):
    """Token ids (uint8) of one LRA ListOps expression, or None when it holds a foreign token."""
    if not _LISTOPS_ALLOWED.fullmatch(source):
        return None
    s = source.replace("(", " ").replace(")", " ")
    for token, mark in _PLACEHOLDER.items():
        s = s.replace(token, mark)
    if _GLUED.search(s):  # e.g. "12" or "[MINX": not single tokens
        return None
    ids = _LISTOPS_LUT[np.frombuffer("".join(s.split()).encode("latin-1"), dtype=np.uint8)]
    return None if (ids == 255).any() else ids


def _read_listops(path: str):
    if not os.path.isfile(path):
        raise DataError(f"{path} is missing; lra-listops expects {LISTOPS_LAYOUT}.")
    seqs, labels = [], []
    try:
        with open(path, encoding="utf-8", newline="") as f:
            rows = csv.reader(f, delimiter="\t")
            header = next(rows, None)
            if header != ["Source", "Target"]:
                raise DataError(f"{path} starts with {str(header)[:60]}; expected LRA's header line "
                                "'Source<TAB>Target'.")
            for no, row in enumerate(rows, 2):
                if not row:
                    continue
                if len(row) != 2:
                    raise DataError(f"{path} line {no} has {len(row)} tab-separated fields; expected 2 "
                                    "(Source, Target).")
                ids = listops_token_ids(row[0])
                if ids is None or len(ids) == 0:
                    raise DataError(f"{path} line {no} holds {'no tokens' if ids is not None else 'a token'} "
                                    "outside the ListOps vocabulary; expected [MIN [MAX [MED [SM, digits 0-9, "
                                    "] and parentheses separated by spaces.")
                target = row[1].strip()
                if not (len(target) == 1 and target.isdigit()):
                    raise DataError(f"{path} line {no} has target {row[1][:20]!r}; expected a digit 0-9.")
                seqs.append(ids)
                labels.append(int(target))
    except UnicodeDecodeError:
        raise DataError(f"{path} is not UTF-8 text; expected LRA's ListOps TSV file.") from None
    except csv.Error as e:
        raise DataError(f"{path} is not a readable TSV file ({e}); expected LRA's ListOps TSV file.") from None
    if not seqs:
        raise DataError(f"{path} has a header but no rows; expected LRA's ListOps examples.")
    offsets = np.zeros(len(seqs) + 1, dtype=np.int64)
    np.cumsum([len(s) for s in seqs], out=offsets[1:])
    return np.concatenate(seqs), offsets, np.asarray(labels, dtype=np.int64)


def _check_max_length(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise DataError(f"{name} option max_length must be a positive integer, got {value!r}.")
    return int(value)


def load_lra_listops(folder, data_seed: int, max_length: int = LISTOPS_MAX_LENGTH) -> Dataset:
    """LRA ListOps from its TSV files (see the module docstring)."""
    from .image_files import check_folder

    max_length = _check_max_length("lra-listops", max_length)
    path = check_folder(folder, "lra-listops", LISTOPS_LAYOUT)
    parts, truncated = {}, 0
    for split, fname in LISTOPS_FILES.items():
        flat, offsets, y = _read_listops(os.path.join(path, fname))
        truncated += int((np.diff(offsets) > max_length).sum())
        parts[split] = (ragged_tokens(flat, offsets, max_length), y, ragged_lengths(offsets, max_length))
    (x_tr, y_tr, l_tr), (x_va, y_va, l_va), (x_te, y_te, l_te) = parts["train"], parts["val"], parts["test"]
    return Dataset(name="lra-listops", x_train=x_tr, y_train=y_tr, x_val=x_va, y_val=y_va, x_test=x_te,
                   y_test=y_te, len_train=l_tr, len_val=l_va, len_test=l_te, task="classification",
                   n_classes=10, vocab_size=len(VOCAB), seq_len=max_length, pad_id=PAD_ID, vocab=VOCAB,
                   info={"source": path, "data_seed": int(data_seed), "max_length": max_length,
                         "truncated_sequences": truncated})


def _imdb_root(path: str) -> str:
    for root in (path, os.path.join(path, "aclImdb")):
        if all(os.path.isdir(os.path.join(root, s, c)) for s in ("train", "test") for c in ("pos", "neg")):
            return root
    for s in ("train", "test"):
        for c in ("neg", "pos"):
            if not os.path.isdir(os.path.join(path, s, c)):
                raise DataError(f"{os.path.join(path, s, c)} is missing; lra-text expects {TEXT_LAYOUT}.")
    raise AssertionError("unreachable")


def _read_reviews(root: str, split: str):
    chunks, labels = [], []
    for label, cls in ((0, "neg"), (1, "pos")):
        folder = os.path.join(root, split, cls)
        names = sorted(f for f in os.listdir(folder) if f.endswith(".txt"))
        if not names:
            raise DataError(f"{folder} holds no .txt reviews; lra-text expects {TEXT_LAYOUT}.")
        for name in names:
            p = os.path.join(folder, name)
            with open(p, "rb") as f:
                data = f.read()
            if not data:
                raise DataError(f"{p} is empty; every review needs at least one byte.")
            chunks.append(np.frombuffer(data, dtype=np.uint8))
            labels.append(label)
    offsets = np.zeros(len(chunks) + 1, dtype=np.int64)
    np.cumsum([len(c) for c in chunks], out=offsets[1:])
    return np.concatenate(chunks), offsets, np.asarray(labels, dtype=np.int64)


def load_lra_text(folder, val_fraction: float, data_seed: int, max_length: int = TEXT_MAX_LENGTH) -> Dataset:
    """Byte-level IMDB from the aclImdb folder (see the module docstring)."""
    from .image_files import check_folder

    max_length = _check_max_length("lra-text", max_length)
    root = _imdb_root(check_folder(folder, "lra-text", TEXT_LAYOUT))
    flat_tr, off_tr, y_all = _read_reviews(root, "train")
    flat_te, off_te, y_te = _read_reviews(root, "test")
    train_all = ragged_tokens(flat_tr, off_tr, max_length, offset_id=1)
    l_all = ragged_lengths(off_tr, max_length)
    keep, val = split_indices(y_all, val_fraction, np.random.default_rng([int(data_seed), 2]))
    truncated = int((np.diff(off_tr) > max_length).sum() + (np.diff(off_te) > max_length).sum())
    return Dataset(name="lra-text", x_train=train_all.subset(keep), y_train=y_all[keep],
                   x_val=train_all.subset(val), y_val=y_all[val],
                   x_test=ragged_tokens(flat_te, off_te, max_length, offset_id=1), y_test=y_te,
                   len_train=l_all[keep], len_val=l_all[val], len_test=ragged_lengths(off_te, max_length),
                   task="classification", n_classes=2, vocab_size=257, seq_len=max_length, pad_id=0,
                   info={"source": root, "data_seed": int(data_seed), "val_fraction": val_fraction,
                         "max_length": max_length, "truncated_sequences": truncated,
                         "tokens": "UTF-8 byte b -> id b + 1, 0 = pad"})
