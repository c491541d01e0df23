"""Speech Commands from the user's folder: raw 16 kHz waveforms, read per batch.

``speechcommands`` -- the Speech Commands folder (v0.02: 35 words; v0.01: 30)::

    DIR/validation_list.txt     relative paths, e.g. "right/bb05582b_nohash_3.wav"
    DIR/testing_list.txt
    DIR/<word>/<speaker>_nohash_<k>.wav      16 kHz, mono, 16-bit PCM
    DIR/_background_noise_/                  ignored

Classes: by default the usual 10-word subset (SC10: yes, no, up, down, left,
right, on, off, stop, go, in that order = labels 0..9); option ``words=all``
takes every word folder, sorted by name (35 classes for v0.02); option
``words=a,b,c`` any list. Splits: the files named in ``validation_list.txt``
and ``testing_list.txt`` are validation and test, every other file of the
chosen words is training data (the dataset's own split).

Inputs: the raw waveform, sample s as ``s / 32768`` (torchaudio's scaling; no
statistics over the corpus), shape ``(max_length, 1)`` with ``max_length``
16000 (one second) by default; shorter clips are zero-padded and their true
length is in ``len_*`` (the model pools over it), longer ones are cut. Only
the wav headers are read when the data set is loaded (every file is
checked); the samples are read from disk one batch at a time, so memory does
not grow with the corpus (several GB as float32).
"""
from __future__ import annotations

import os
import wave

import numpy as np

from .dataset import DataError, Dataset
from .stored import StoredSequences

SC10_WORDS = ("yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go")
SAMPLE_RATE = 16000
SPEECH_LAYOUT = ("DIR/validation_list.txt, DIR/testing_list.txt and DIR/<word>/*.wav "
                 "(16 kHz mono 16-bit; the speech_commands_v0.02 folder)")
_LISTS = {"val": "validation_list.txt", "test": "testing_list.txt"}


def _wav_frames(path: str) -> int:
    """Number of samples of a 16 kHz mono 16-bit wav file, checking its header."""
    try:
        with wave.open(path, "rb") as w:
            rate, channels, width, frames = w.getframerate(), w.getnchannels(), w.getsampwidth(), w.getnframes()
    except (wave.Error, EOFError, OSError) as e:
        raise DataError(f"{path} cannot be read as a wav file ({type(e).__name__}: {e}); expected 16 kHz "
                        "mono 16-bit PCM.") from None
    if (rate, channels, width) != (SAMPLE_RATE, 1, 2):
        raise DataError(f"{path} is {rate} Hz, {channels} channel(s), {8 * width}-bit; expected 16 kHz mono "
                        "16-bit PCM.")
    size = os.path.getsize(path)
    if size < 44 + 2 * frames:
        raise DataError(f"{path} has {size} bytes but its header announces {frames} samples "
                        f"({44 + 2 * frames} bytes with the header); the file is truncated.")
    if frames == 0:
        raise DataError(f"{path} holds no samples; every clip needs at least one.")
    return frames


def read_wav(path: str, max_length: int) -> np.ndarray:
    """The first ``max_length`` samples of a 16-bit wav file as int16."""
    try:
        with wave.open(path, "rb") as w:
            want = min(w.getnframes(), max_length)
            data = w.readframes(want)
    except (wave.Error, EOFError, OSError) as e:
        raise DataError(f"{path} cannot be read as a wav file ({type(e).__name__}: {e}); expected 16 kHz "
                        "mono 16-bit PCM.") from None
    if len(data) != 2 * want:
        raise DataError(f"{path} ends after {len(data) // 2} of the {want} samples its header announces; "
                        "the file is truncated.")
    return np.frombuffer(data, dtype="<i2")


def _read_list(root: str, split: str) -> set:
    path = os.path.join(root, _LISTS[split])
    if not os.path.isfile(path):
        raise DataError(f"{path} is missing; speechcommands expects {SPEECH_LAYOUT}.")
    with open(path, encoding="utf-8") as f:
        return {line.strip().replace("\\", "/") for line in f if line.strip()}


def _words(root: str, words) -> tuple:
    found = sorted(d for d in os.listdir(root)
                   if os.path.isdir(os.path.join(root, d)) and not d.startswith(("_", ".")))
    if words in (10, "10", "sc10", None):
        chosen = SC10_WORDS
    elif words in ("all", 35, "35"):
        chosen = tuple(found)
    elif isinstance(words, str) and words.strip():
        chosen = tuple(w.strip() for w in words.split(",") if w.strip())
    else:
        raise DataError(f"speechcommands option words must be 10, all, or a comma-separated list of words, "
                        f"got {words!r}.")
    for w in chosen:
        if w not in found:
            raise DataError(f"{os.path.join(root, w)} is missing; speechcommands expects {SPEECH_LAYOUT} "
                            f"with a folder for every word.")
    if len(chosen) < 2 or len(set(chosen)) != len(chosen):
        raise DataError(f"speechcommands needs at least two distinct words, got {', '.join(chosen)}.")
    return chosen


def load_speechcommands(folder, data_seed: int, words="10", max_length: int = SAMPLE_RATE) -> Dataset:
    """Speech Commands as raw 16 kHz sequences (see the module docstring)."""
    from tqdm.auto import tqdm

    from .image_files import check_folder

    if isinstance(max_length, bool) or not isinstance(max_length, (int, np.integer)) or max_length < 1:
        raise DataError(f"speechcommands option max_length must be a positive integer, got {max_length!r}.")
    max_length = int(max_length)
    root = check_folder(folder, "speechcommands", SPEECH_LAYOUT)
    lists = {s: _read_list(root, s) for s in _LISTS}
    chosen = _words(root, words)
    files = [(f"{w}/{name}", label) for label, w in enumerate(chosen)
             for name in sorted(os.listdir(os.path.join(root, w))) if name.endswith(".wav")]
    for split, names in lists.items():  # every listed file of a chosen word must exist
        for rel in sorted(names):
            if rel.split("/")[0] in chosen and not os.path.isfile(os.path.join(root, rel)):
                raise DataError(f"{os.path.join(root, rel)} (listed in {_LISTS[split]}) is missing; "
                                f"speechcommands expects {SPEECH_LAYOUT}.")
    frames = np.array([_wav_frames(os.path.join(root, rel))
                       for rel, _ in tqdm(files, desc="speechcommands: wav headers", leave=False,
                                          disable=len(files) < 5000)], dtype=np.int64)
    paths = np.array([os.path.join(root, rel) for rel, _ in files], dtype=object)
    labels = np.array([lab for _, lab in files], dtype=np.int64)
    split_of = np.array(["test" if rel in lists["test"] else "val" if rel in lists["val"] else "train"
                         for rel, _ in files])

    def fetch(rows):
        out = np.zeros((len(rows), max_length, 1), dtype=np.float32)
        for k, r in enumerate(rows):
            s = read_wav(paths[r], max_length)
            out[k, :len(s), 0] = s.astype(np.float32) * np.float32(1.0 / 32768.0)
        return out

    x_all = StoredSequences(fetch, len(files), (max_length, 1), np.float32)
    lengths = np.minimum(frames, max_length)
    parts = {}
    for split in ("train", "val", "test"):
        idx = np.flatnonzero(split_of == split)
        if len(idx) == 0:
            raise DataError(f"speechcommands found no {split} files among the words {', '.join(chosen)}; check "
                            f"{_LISTS.get(split, 'the word folders')} in {root}.")
        parts[split] = (x_all.subset(idx), labels[idx], lengths[idx])
    (x_tr, y_tr, l_tr), (x_va, y_va, l_va), (x_te, y_te, l_te) = parts["train"], parts["val"], parts["test"]
    return Dataset(name="speechcommands", x_train=x_tr, y_train=y_tr, x_val=x_va, y_val=y_va, x_test=x_te,
                   y_test=y_te, len_train=l_tr, len_val=l_va, len_test=l_te, task="classification",
                   n_classes=len(chosen), d_input=1, seq_len=max_length,
                   normalization={"mean": np.zeros(1), "std": np.array([32768.0])},
                   info={"source": root, "data_seed": int(data_seed), "words": list(chosen),
                         "max_length": max_length, "scaling": "sample / 32768",
                         "truncated_sequences": int((frames > max_length).sum())})
